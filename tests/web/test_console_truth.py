"""The console shows what the log says: the code the scorer ran, the verdict that stands,
the counts, costs and states as the events have them (a daemon of its own: two problem
sets that both have a problem ``twin``, with different entry points)."""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch import events as e
from rollwatch.events import rollout_stream, run_stream
from rollwatch.scoring.extract import code_sha256
from rollwatch.store.sqlite import SQLiteEventStore
from tests.test_daemon import events, free_port, wait_until
from tests.web.opsd import Daemon, running_daemon

TWIN_ANSWER = (
    "Two helpers, one per entry point:\n\n"
    "```python\ndef left_fn(x):\n    return x + 1\n```\n\n"
    "```python\ndef right_fn(x):\n    return x + 2\n```\n"
)
"""Both blocks define an entry point: the left set's problem takes the first, the right's the second."""
LEFT_BLOCK = "def left_fn(x):\n    return x + 1\n"
RIGHT_BLOCK = "def right_fn(x):\n    return x + 2\n"


def _twin(root: Path, entry: str, add: int) -> Path:
    d = root / "twin"
    d.mkdir(parents=True)
    (d / "problem.toml").write_text(
        f'title = "Twin ({entry})"\nreleased = 2026-01-01\n'
        f"prompt = '''\nWrite {entry}(x) returning x + {add}.\n'''\n"
        f'[scorer]\nkind = "python-function"\nentry_point = "{entry}"\ntests = "tests.py"\ntimeout = "5s"\n'
        '[reference]\nsolution = "solution.py"\n'
    )
    (d / "tests.py").write_text(f"def check(candidate):\n    assert candidate(1) == {1 + add}\n")
    (d / "solution.py").write_text(f"def {entry}(x):\n    return x + {add}\n")
    return root


def _setup(tmp: Path, fake_url: str) -> tuple[Path, Path]:
    left = _twin(tmp / "left", "left_fn", 1)
    right = _twin(tmp / "right", "right_fn", 2)
    # The problem a test edits (its entry point changes): no other test reads it.
    (right / "twin").rename(right / "shifty")
    _twin(right, "right_fn", 2)
    toml = right / "shifty" / "problem.toml"
    toml.write_text(toml.read_text().replace('title = "Twin', 'id = "shifty"\ntitle = "Shifty'))
    cfg = tmp / "rollwatch.toml"
    # "left" first: a console that takes the first set having the problem takes the wrong one.
    cfg.write_text(f"""
node = "console-truth"
[store]
url = "sqlite:{tmp / "events.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[scoring]
workers = 1
[[problem_sets]]
name = "left"
path = "{left}"
[[problem_sets]]
name = "right"
path = "{right}"
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake_url}"
api_key_env = "FAKE_PROVIDER_KEY"
max_concurrency = 1
[providers.prices]
"m1" = {{ input = 1.0, output = 2.0 }}
[[schedules]]
name = "twins-right"
provider = "fake"
models = ["m1"]
problem_set = "right"
rollouts = 1
every = "1h"
""")
    return cfg, right


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose one run asked the right set's ``twin`` and ``shifty`` and scored the answers."""
    with running_daemon(tmp_path_factory.mktemp("twins"), setup=_setup, answer=TWIN_ANSWER, runs=1) as d:
        yield d


def _marked(html: str) -> list[str]:
    """The highlighted (scored) parts of a rollout page's answer, as text."""
    answer = html.split('id="answer">', 1)[1].split("</pre>", 1)[0]
    return [
        re.sub(r"<[^>]+>", "", m) for m in re.findall(r'<mark class="code"[^>]*>(.*?)</mark>', answer, re.S)
    ]


def _rollout(d: Daemon, problem_id: str) -> str:
    (rid,) = [
        x["rollout_id"] for _, _, x in events(d.db, "RolloutRequested") if x["problem_id"] == problem_id
    ]
    return str(rid)


def _page(d: Daemon, rid: str) -> str:
    r = httpx.get(d.url + f"/ops/rollouts/{rid}")
    assert r.status_code == 200, r.text
    return r.text


def _text(html: str, element_id: str) -> str:
    """The text of the element with ``element_id`` (tags dropped, entities left)."""
    m = re.search(rf'<(\w+)[^>]* id="{element_id}"[^>]*>(.*?)</\1>', html, re.S)
    assert m, f"no #{element_id}"
    return re.sub(r"<[^>]+>", "", m.group(2))


def _hash_of(d: Daemon, problem_id: str) -> str:
    return str(_requested(d, problem_id)["problem_hash"])


def _requested(d: Daemon, problem_id: str) -> dict[str, object]:
    return next(x for _, _, x in events(d.db, "RolloutRequested") if x["problem_id"] == problem_id)


def append_run(
    d: Daemon,
    rollouts: Sequence[Sequence[e.Event]],
    *,
    problem_set: str = "right",
    problem_id: str = "twin",
    problem_hash: str = "sha256:" + "0" * 64,
    run_id: str | None = None,
) -> tuple[str, list[str]]:
    """A finished run of the right set written into the daemon's log as an older daemon
    (or another node) wrote it: for each entry of ``rollouts`` a rollout requested under
    ``problem_hash``, then those events (an answer, verdicts...) on its stream. The
    rollouts' ids are set on the events given."""
    run_id = run_id or f"legacy-{uuid.uuid4().hex[:12]}"
    rids = [str(uuid.uuid4()) for _ in rollouts]

    async def go() -> None:
        async with SQLiteEventStore(d.db) as store:
            await store.append(
                run_stream(run_id),
                [
                    e.RunStarted(
                        run_id=run_id, schedule="legacy", provider="fake", models=["m1"],
                        problem_set=problem_set, node="older-node", rollouts=1, problems=[problem_id],
                    )
                ],
            )  # fmt: skip

            async def one(i: int, rid: str) -> None:
                request = e.RolloutRequested(
                    rollout_id=rid, run_id=run_id, provider="fake", model="m1", problem_id=problem_id,
                    problem_hash=problem_hash, sample=i, attempt=1, request={"messages": []}, node="older-node",
                )  # fmt: skip
                more = [_with_id(ev, rid) for ev in rollouts[i]]
                await store.append(rollout_stream(rid), [request, *more])

            async with anyio.create_task_group() as tg:  # concurrent: one group commit for many
                for i, rid in enumerate(rids):
                    tg.start_soon(one, i, rid)
            await store.append(
                run_stream(run_id),
                [
                    e.RunFinished(
                        run_id=run_id, status="completed", rollouts=len(rids), passed=0, cost_usd=0.0
                    )
                ],
            )

    anyio.run(go)
    return run_id, rids


def append_to(d: Daemon, rid: str, evs: Sequence[e.Event]) -> None:
    """More events of rollout ``rid``, appended to its stream."""

    async def go() -> None:
        async with SQLiteEventStore(d.db) as store:
            await store.append(rollout_stream(rid), [_with_id(ev, rid) for ev in evs])

    anyio.run(go)


def _with_id(ev: e.Event, rid: str) -> e.Event:
    from dataclasses import replace

    return replace(ev, rollout_id=rid)  # type: ignore[type-var]


def _answered(text: str = TWIN_ANSWER, attempt: int = 1) -> e.RolloutResponded:
    return e.RolloutResponded(rollout_id="", attempt=attempt, text=text, cost_usd=0.001)


def _scored(
    extraction: str, *, problem_hash: str | None, code: str | None = None, passed: bool = True
) -> e.RolloutScored:
    """A run's verdict; with ``code``, recording that code's hash as verdicts do now."""
    detail: dict[str, object] = {"extraction_blocks": 2}
    if code is not None:
        detail["code_sha256"] = code_sha256(code)
    return e.RolloutScored(
        rollout_id="", passed=passed, score=float(passed), scorer="python-function",
        reason="passed" if passed else "wrong answer", extraction=extraction, detail=detail,
        problem_hash=problem_hash,
    )  # fmt: skip


class TestScoredCode:
    def test_the_highlighted_block_is_the_one_the_run_s_problem_set_scored(self, twins: Daemon) -> None:
        """Two configured sets both have ``twin`` (entry points ``left_fn`` and ``right_fn``);
        the run asked the right set's. The answer defines both in two blocks: the page
        highlights the block the scorer ran (``right_fn``), not the one the first
        configured set's entry point would pick."""
        rid = _rollout(twins, "twin")
        (scored,) = [d for _, _, d in events(twins.db, "RolloutScored") if d["rollout_id"] == rid]
        assert scored["passed"]
        assert scored["extraction"] == "fenced-entry-point"
        # the verdict names the code it ran by its hash
        assert scored["detail"]["code_sha256"] == code_sha256(RIGHT_BLOCK)
        html = _page(twins, rid)
        assert _marked(html) == [RIGHT_BLOCK.rstrip("\n")]
        assert "the verdict&#39;s hash of the code it ran" in _text(html, "scored-how")
        assert "(problem set right)" in _text(html, "problem-version")

    def test_an_older_verdict_is_read_under_the_run_s_problem_set(self, twins: Daemon) -> None:
        """A verdict from before code hashes (``fenced-entry-point``, no ``code_sha256``) in a
        run of the right set: the page takes the entry point of the version it names from
        the run's set (``right_fn``), not from the first set that has the problem."""
        _, (rid,) = append_run(
            twins,
            [[_answered(), _scored("fenced-entry-point", problem_hash=None)]],
            problem_hash=_hash_of(twins, "twin"),
        )
        html = _page(twins, rid)
        assert _marked(html) == [RIGHT_BLOCK.rstrip("\n")]
        assert "&#39;right_fn&#39;" in _text(html, "scored-how")

    def test_an_older_verdict_under_a_version_no_longer_configured_is_not_guessed(
        self, twins: Daemon
    ) -> None:
        """The version such a verdict names is configured nowhere any more: the page says so
        and highlights nothing, rather than the block today's configuration would take."""
        gone = "sha256:" + "ab" * 32
        _, (rid,) = append_run(
            twins, [[_answered(), _scored("fenced-entry-point", problem_hash=gone)]], problem_hash=gone
        )
        html = _page(twins, rid)
        assert _marked(html) == []
        assert "<h3>Scored code</h3>" not in html
        warning = _text(html, "scored-warning")
        assert f"problem version {gone} is no longer configured" in warning
        assert "(no longer configured)" in _text(html, "problem-version")

    @pytest.mark.parametrize(
        ("extraction", "expected"),
        [("fenced-last", RIGHT_BLOCK), ("none", None)],
        ids=["fenced-last", "none"],
    )
    def test_an_older_verdict_whose_rule_needs_no_problem(
        self, twins: Daemon, extraction: str, expected: str | None
    ) -> None:
        """``fenced-last`` (the last Python block) and ``none`` (no code) do not depend on the
        problem: even under a version no longer configured the page shows what ran."""
        gone = "sha256:" + "cd" * 32
        _, (rid,) = append_run(
            twins, [[_answered(), _scored(extraction, problem_hash=gone)]], problem_hash=gone
        )
        html = _page(twins, rid)
        assert _marked(html) == ([expected.rstrip("\n")] if expected else [])
        assert 'id="scored-warning"' not in html

    def test_the_newest_verdict_is_the_one_shown(self, twins: Daemon) -> None:
        """The run passed the answer (``right_fn``); a re-score under a newer version failed
        it, running ``left_fn``. The page's result, its scorer section and its highlight are
        the re-score's (as the read models and the report count it), the run's verdict is
        listed under earlier verdicts."""
        old, new = _hash_of(twins, "twin"), "sha256:" + "ef" * 32
        rescore = e.RolloutRescored(
            rollout_id="", problem_id="twin", passed=False, score=0.0, scorer="python-function",
            problem_hash=new, scorer_version="v-test", rescore_id="rs-1234", previous_passed=True,
            previous_problem_hash=old, reason="exception: AssertionError", extraction="fenced-entry-point",
            detail={"code_sha256": code_sha256(LEFT_BLOCK)},
        )  # fmt: skip
        _, (rid,) = append_run(
            twins,
            [[_answered(), _scored("fenced-entry-point", problem_hash=old, code=RIGHT_BLOCK), rescore]],
            problem_hash=old,
        )
        html = _page(twins, rid)
        assert _marked(html) == [LEFT_BLOCK.rstrip("\n")]
        verdict = _text(html, "verdict")
        assert "failed" in verdict
        assert "re-score rs-1234" in verdict
        assert "exception: AssertionError" in verdict
        earlier = _text(html, "earlier-verdicts")
        assert "passed" in earlier
        assert old in earlier
        # the result at the top is the same verdict
        assert '<span class="fail">failed</span>' in html.split("<dt>Result</dt>")[1].split("</dd>")[0]

    def test_a_problem_whose_entry_point_changed_still_shows_the_code_that_ran(self, twins: Daemon) -> None:
        """``shifty``'s answer was scored with entry point ``right_fn``; then its entry point
        becomes ``left_fn`` (a new version, recorded on SIGHUP). Its page still highlights
        the ``right_fn`` block, and names the version it was scored under as no longer
        configured."""
        rid = _rollout(twins, "shifty")
        scored_under = _hash_of(twins, "shifty")
        toml = twins.problems / "shifty" / "problem.toml"
        toml.write_text(toml.read_text().replace('entry_point = "right_fn"', 'entry_point = "left_fn"'))
        (twins.problems / "shifty" / "solution.py").write_text("def left_fn(x):\n    return x + 2\n")
        os.kill(twins.pid, signal.SIGHUP)
        wait_until(
            lambda: [x for _, _, x in events(twins.db, "ProblemVersioned") if x["problem_id"] == "shifty"],
            30,
            "the new version of shifty",
        )
        html = _page(twins, rid)
        assert _marked(html) == [RIGHT_BLOCK.rstrip("\n")]
        version = _text(html, "problem-version")
        assert scored_under in version
        assert "(no longer configured)" in version


TROJAN = (
    "Here:\n\n```python\ndef right_fn(x):\n"
    "    return x + 2  # \u202e\u2066 ;1 - x nruter\u2069 \u2066\n"
    "    \u3164 = 1\u200b\n```\n"
)
"""A block whose comment a right-to-left override and isolates make read as other code,
a Hangul filler (a letter to Python, blank on screen) and a zero-width space."""
HIDDEN = ("\u202e", "\u2066", "\u2069", "\u3164", "\u200b")


class TestWhatElseIsShown:
    def test_hidden_and_bidi_characters_are_shown_as_code_points(self, twins: Daemon) -> None:
        """Characters that reorder or hide text (Trojan Source) in the answer, the reasoning,
        the scorer's reason and a provider's error message reach the page as visible
        ``⟨U+XXXX⟩`` marks, never as themselves: the operator reads the code that ran."""
        code = TROJAN.split("```python\n")[1].split("```")[0]
        failed = e.RolloutFailed(
            rollout_id="", attempt=1, kind="server_error", status=500, retryable=True,
            message="upstream \u202eerror",
        )  # fmt: skip
        answered = e.RolloutResponded(rollout_id="", attempt=1, text=TROJAN, reasoning="plan\u2066 it\u2069")
        verdict = e.RolloutScored(
            rollout_id="", passed=False, score=0.0, scorer="python-function", reason="NameError: \u3164",
            extraction="fenced-entry-point", detail={"code_sha256": code_sha256(code)},
            problem_hash=_hash_of(twins, "twin"),
        )  # fmt: skip
        _, (rid,) = append_run(twins, [[failed, answered, verdict]], problem_hash=_hash_of(twins, "twin"))
        html = _page(twins, rid)
        for ch in HIDDEN:
            assert ch not in html, f"U+{ord(ch):04X} reached the page"
        marked = _marked(html)
        assert len(marked) == 1
        assert "⟨U+202E⟩⟨U+2066⟩ ;1 - x nruter⟨U+2069⟩ ⟨U+2066⟩" in marked[0]
        assert "⟨U+3164⟩ = 1⟨U+200B⟩" in marked[0]
        assert "plan⟨U+2066⟩ it⟨U+2069⟩" in _text(html, "reasoning")
        assert "NameError: ⟨U+3164⟩" in _text(html, "verdict")
        assert "upstream ⟨U+202E⟩error" in _text(html, "attempts")

    def test_a_failure_that_was_retried_is_not_shown_as_the_state_s_cause(self, twins: Daemon) -> None:
        """Attempt 1 failed (HTTP 500, retryable), attempt 2 was answered and scored: the
        rollout's state is ``scored``, on its page and in its run's list, without the
        earlier attempt's failure beside it (the attempts table keeps it); a rollout that
        finally failed keeps its cause."""
        run_id = f"legacy-{uuid.uuid4().hex[:12]}"
        retried = [
            e.RolloutFailed(rollout_id="", attempt=1, kind="server_error", status=500, retryable=True, message="x"),
            e.RolloutRequested(
                rollout_id="", run_id=run_id, provider="fake", model="m1", problem_id="twin",
                problem_hash=_hash_of(twins, "twin"), sample=0, attempt=2, request={}, node="older-node",
            ),
            _answered(attempt=2),
            _scored("fenced-entry-point", problem_hash=None, code=RIGHT_BLOCK),
        ]  # fmt: skip
        final = [
            e.RolloutFailed(
                rollout_id="",
                attempt=1,
                kind="bad_request",
                status=400,
                retryable=False,
                message="y",
                final=True,
            )
        ]
        _, (rid, failed_rid) = append_run(
            twins, [retried, final], problem_hash=_hash_of(twins, "twin"), run_id=run_id
        )
        html = _page(twins, rid)
        assert _text(html, "state") == "scored"
        assert "failed: server_error" in html  # the attempt's own row
        assert _text(_page(twins, failed_rid), "state") == "failed (bad_request)"
        run = httpx.get(twins.url + f"/ops/runs/{run_id}").text
        rows = {r: run.split(f"/ops/rollouts/{r}")[1].split("</tr>")[0] for r in (rid, failed_rid)}
        assert "<td>scored</td>" in rows[rid]
        assert "<td>failed (bad_request)</td>" in rows[failed_rid]
        assert "<dt>Started (UTC)</dt>" in run

    def test_a_rollout_page_shows_the_state_its_events_have_now(self, twins: Daemon) -> None:
        """A rollout's page opened while it waits for its answer, then again once it has
        been answered and scored (no other page opened in between): the second visit shows
        it scored and passed, as its events say, not the state the first visit saw."""
        _, (rid,) = append_run(twins, [[]], problem_hash=_hash_of(twins, "twin"))
        assert _text(_page(twins, rid), "state") == "requested"
        append_to(
            twins, rid, [_answered(), _scored("fenced-entry-point", problem_hash=None, code=RIGHT_BLOCK)]
        )
        html = _page(twins, rid)
        assert _text(html, "state") == "scored"
        assert _text(html, "result").startswith("passed")
        assert _text(html, "cost") == "$0.0010"
        assert _marked(html) == [RIGHT_BLOCK.rstrip("\n")]

    def test_a_run_with_more_rollouts_than_its_page_lists_says_so(self, twins: Daemon) -> None:
        """A run of 2,001 rollouts: its page lists 2,000 and says they are the first 2,000 of
        2,001, rather than passing the list off as the whole run."""
        run_id, _ = append_run(twins, [[] for _ in range(2001)], problem_hash=_hash_of(twins, "twin"))
        html = httpx.get(twins.url + f"/ops/runs/{run_id}").text
        listed = html.split("<h2>Rollouts</h2>")[1]
        assert listed.count('<a href="/ops/rollouts/') == 2000
        assert "The first 2000 of the run's 2001 rollouts" in _text(html, "rollouts-cut")
        # a run whose rollouts are all listed says nothing of the kind
        small = next(
            x["run_id"] for _, _, x in events(twins.db, "RunStarted") if x["schedule"] == "twins-right"
        )
        assert 'id="rollouts-cut"' not in httpx.get(twins.url + f"/ops/runs/{small}").text
