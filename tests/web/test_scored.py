"""Which part of an answer a verdict ran (``rollwatch.web.scored``): found by the verdict's
code hash, or by its rule under the problem version it names; located in the answer as
recorded, or shown apart when it cannot be located exactly."""

from __future__ import annotations

from rollwatch.scoring.extract import code_sha256, extract_code
from rollwatch.web.scored import Version, scored_part, split_answer

A = "def f(x):\n    return 1\n"
B = "def g(x):\n    return 2\n"
TWO = f"First:\n```python\n{A}```\nThen:\n```python\n{B}```\n"
CONFIGURED = Version("sha256:v1", "set", "f")
GONE = Version("sha256:v0")


def _marked(answer: str, span: tuple[int, int] | None) -> str | None:
    parts = [t for is_code, t in split_answer(answer, span) if is_code]
    return parts[0] if parts else None


class TestScoredPart:
    def test_the_hash_finds_the_block_whatever_the_configuration(self) -> None:
        """With the code's hash, the block is found even when the version is gone."""
        part = scored_part(TWO, "fenced-entry-point", code_sha256(A), GONE)
        assert part.code == A
        assert part.warning is None
        assert _marked(TWO, part.span) == A.rstrip("\n")

    def test_a_hash_found_nowhere_is_said_not_guessed(self) -> None:
        """A hash that no block nor the whole text has: a warning, nothing highlighted."""
        part = scored_part(TWO, "fenced-entry-point", code_sha256("print(1)\n"), CONFIGURED)
        assert part.code is None
        assert part.span is None
        assert part.warning
        assert "is not in this answer" in part.warning

    def test_without_a_hash_the_entry_point_of_the_named_version(self) -> None:
        """fenced-entry-point under a configured version: that version's entry point's block."""
        part = scored_part(TWO, "fenced-entry-point", None, CONFIGURED)
        assert part.code == A
        part = scored_part(TWO, "fenced-entry-point", None, Version("sha256:v1", "set", "g"))
        assert part.code == B

    def test_without_a_hash_a_version_no_longer_configured_is_said(self) -> None:
        part = scored_part(TWO, "fenced-entry-point", None, GONE)
        assert part.code is None
        assert part.warning
        assert "sha256:v0 is no longer configured" in part.warning

    def test_rules_that_need_no_problem(self) -> None:
        """fenced-last, whole-text and none are read without the problem."""
        assert scored_part(TWO, "fenced-last", None, GONE).code == B
        whole = "def f(x):\n    return 1\n"
        part = scored_part(whole, "whole-text", None, GONE)
        assert part.code == whole
        assert part.span == (0, len(whole))
        assert scored_part(TWO, "none", None, GONE).code is None

    def test_a_rule_that_does_not_fit_the_answer_is_said(self) -> None:
        """A verdict saying fenced-last of an answer without blocks, or a scorer error
        (no extraction): a warning, nothing highlighted."""
        assert scored_part("no code here", "fenced-last", None, CONFIGURED).warning
        part = scored_part(TWO, "", None, CONFIGURED)
        assert part.code is None
        assert part.warning
        assert "scorer error" in part.warning

    def test_two_identical_blocks_mark_the_last(self) -> None:
        """Extraction takes the last block that fits its rule: of two equal blocks, the second."""
        answer = f"```python\n{A}```\nagain:\n```python\n{A}```\n"
        part = scored_part(answer, "fenced-entry-point", code_sha256(A), GONE)
        assert part.span is not None
        assert part.span[0] > answer.index("again")

    def test_reasoning_inline_is_not_where_the_code_is_marked(self) -> None:
        """An answer with inline ``<think>`` (dropped before extraction): the mark is on the
        scored block, found by its text when that occurs once in the answer; when the
        reasoning quotes the same code, the code is shown apart rather than marked in the
        wrong place."""
        answer = f"<think>draft:\n```python\n{B}```\n</think>\nAnswer:\n```python\n{A}```\n"
        ex = extract_code(answer, "f")
        part = scored_part(answer, ex.method, code_sha256(ex.code or ""), GONE)
        assert part.code == A
        assert _marked(answer, part.span) == A.rstrip("\n")
        assert part.span is not None
        assert part.span[0] > answer.index("Answer:")
        twice = f"<think>I will write:\n{A}</think>\n```python\n{A}```\n"
        part = scored_part(twice, "fenced-entry-point", code_sha256(A), GONE)
        assert part.code == A
        assert part.span is None

    def test_crlf_answers_are_located_by_text(self) -> None:
        """Line ends of CRLF: extraction reads LF; the block is located by its text when it
        has one line (no CR inside), else shown apart."""
        answer = "Here:\r\n```python\r\nx = 1\r\n```\r\n"
        part = scored_part(answer, "fenced-last", None, GONE)
        assert part.code == "x = 1\n"
        assert _marked(answer, part.span) == "x = 1"
