"""Which part of a model's answer a verdict ran: what the rollout page highlights.

The page must show the code the scorer judged, not what extraction would take today.
A verdict names how the code was found (``extraction``) and, since verdicts record it,
the code's hash (``detail.code_sha256``): the code is the part of the answer with that
hash, whatever the configuration has become. For an older verdict without the hash,
``fenced-last``, ``whole-text`` and ``none`` need nothing more; only ``fenced-entry-point``
depends on the problem, and then on the version the verdict was under (its entry
point): when that version is no longer configured the page says so rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollwatch.scoring.extract import Candidate, candidates, code_sha256, extract_code


@dataclass(frozen=True, slots=True)
class ScoredPart:
    """The code a verdict ran and where it lies in the answer, or why the page cannot tell."""

    code: str | None
    span: tuple[int, int] | None = None
    """Offsets in the answer as recorded; None: the code is shown apart, below it."""
    how: str = ""
    """How the page knows (shown to the operator)."""
    warning: str | None = None
    """Why nothing is highlighted although the verdict ran some code."""


@dataclass(frozen=True, slots=True)
class Version:
    """The problem version a verdict was under, as far as the configuration still has it."""

    problem_hash: str | None
    problem_set: str | None = None
    """The configured set holding that version (None: no set holds it any more)."""
    entry_point: str | None = None


def scored_part(answer: str, extraction: str, code_hash: str | None, version: Version) -> ScoredPart:
    """The part of ``answer`` a verdict with ``extraction`` (and ``code_hash``, when it
    recorded one) ran, under ``version``."""
    if extraction == "none":
        return ScoredPart(None, how="the scorer found no code in this answer")
    found = candidates(answer)
    blocks = [c for c in found if not c.whole_text]
    if code_hash:
        # The last that matches: extraction takes the last block that fits its rule, and
        # two blocks of the same text both fit it.
        for c in reversed(found):
            if code_sha256(c.code) == code_hash:
                return _at(answer, c, "the verdict's hash of the code it ran")
        return ScoredPart(
            None, warning=f"the code the verdict ran ({code_hash}) is not in this answer as recorded"
        )
    # A verdict from before code hashes: its rule, and for one rule the problem version.
    if extraction == "fenced-last" and blocks:
        return _at(answer, blocks[-1], "the verdict's rule: the last Python block")
    if extraction == "whole-text" and not blocks:
        return _at(answer, found[-1], "the verdict's rule: the whole answer")
    if extraction == "fenced-entry-point" and blocks:
        if version.problem_set is None:
            return ScoredPart(
                None,
                warning=f"problem version {version.problem_hash or '(not recorded)'} is no longer "
                "configured: which block defines its entry point cannot be told, so none is highlighted",
            )
        ex = extract_code(answer, version.entry_point)
        if ex.method == extraction:
            for c in reversed(blocks):
                if c.code == ex.code:
                    return _at(
                        answer,
                        c,
                        f"the verdict's rule: the last block defining {version.entry_point!r}, the entry "
                        f"point of problem version {version.problem_hash} (problem set {version.problem_set!r})",
                    )
    if not extraction:
        return ScoredPart(
            None, warning="the verdict records no extraction (a scorer error): nothing is highlighted"
        )
    return ScoredPart(
        None,
        warning=f"the verdict's extraction {extraction!r} does not fit this answer as recorded: "
        "nothing is highlighted",
    )


def _at(answer: str, c: Candidate, how: str) -> ScoredPart:
    if c.span is not None:
        return ScoredPart(c.code, c.span, how)
    # Extraction read a tidied copy (reasoning dropped, CRLF): the code is where its text
    # is, when it is there exactly once; else it is shown apart.
    body = c.code.rstrip("\n")
    i = answer.find(body)
    if body and i >= 0 and answer.find(body, i + 1) < 0:
        return ScoredPart(c.code, (i, i + len(body)), how)
    return ScoredPart(c.code, None, how)


def split_answer(answer: str, span: tuple[int, int] | None) -> list[tuple[bool, str]]:
    """The answer cut into (is the scored code, text) pieces, for highlighting that part."""
    if span is None:
        return [(False, answer)]
    i, j = span
    return [(False, answer[:i]), (True, answer[i:j]), (False, answer[j:])]
