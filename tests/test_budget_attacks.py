"""A run's budget against a provider whose token counts cannot be trusted: ``rollwatch run``
on a loopback OpenAI-compatible provider (``tests/fake_provider.py``) that sends each answer
with the ``usage`` a case gives. The run must end, without a traceback, having counted no
more against its budget than ``budget_usd``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_daemon import _provider, config, events, wait_until

#: USD per million tokens in ``config``: input 1.0, output 2.0; the params allow 50 output tokens.
BUDGET_TAIL = "[schedules.params]\nmax_tokens = 50\n"


def run(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "fake-often"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "FAKE_PROVIDER_KEY": "k"},
    )


@pytest.mark.parametrize(
    "usage",
    [
        "null",
        '{"prompt_tokens": 100}',
        '{"prompt_tokens": 100, "completion_tokens": NaN}',
        '{"prompt_tokens": 100, "completion_tokens": "20"}',
        '{"prompt_tokens": 100, "completion_tokens": 1e400}',
        '{"completion_tokens": 20}',
        '{"prompt_tokens": null, "completion_tokens": 20}',
        '{"prompt_tokens": 0, "completion_tokens": 20}',
    ],
    ids=["null", "missing", "nan", "string", "infinite", "no-prompt", "null-prompt", "zero-prompt"],
)
def test_answers_without_a_count_of_their_tokens_count_the_most_they_could_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usage: str
) -> None:
    """An answer whose usage gives no output count cost what its tokens cost, unknown: the
    budget counts the most it could have (the reservation). Counted as nothing before, every
    rollout of the run was requested whatever the budget. The same for an answer with no
    count of its prompt's tokens (left out, null or 0: every request has a prompt): its
    input was free before (session 28), 40 micro-dollars an answer."""
    monkeypatch.setenv("FAKE_PROVIDER_USAGE", usage)
    gen = _provider(tmp_path, 0.05)
    base_url, requests = next(gen)
    try:
        cfg = config(tmp_path, base_url, rollouts=5)
        cfg.write_text(cfg.read_text() + "budget_usd = 0.01\n" + BUDGET_TAIL)
        res = run(cfg)
    finally:
        gen.close()
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 1, res.stderr[-3000:]
    (fin,) = [e[2] for e in events(tmp_path / "events.db", "RunFinished")]
    assert fin["status"] == "partial"
    assert fin["message"].startswith("budget_exhausted: ")
    # Each answer counts at least its prompt's reservation (over 1,000 input tokens at $1
    # per million): no more than ten fit $0.01.
    assert 0 < fin["rollouts"] <= 10 < fin["planned"]
    assert len(requests.read_text().splitlines()) == fin["rollouts"]
    assert "usage_unknown" in res.stderr


def test_answers_costing_more_than_their_params_allow_stop_the_run_at_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that bills 5,000 output tokens where the params allow 50 (each answer
    $0.0101, its reservation about $0.002): once one such answer is in, rollouts reserve what
    the dearest answer cost. Before, they went on reserving $0.002 each, and those in
    flight when the budget came near passed it."""
    monkeypatch.setenv("FAKE_PROVIDER_USAGE", '{"prompt_tokens": 100, "completion_tokens": 5000}')
    gen = _provider(tmp_path, 0.05)
    base_url, _ = next(gen)
    try:
        cfg = config(tmp_path, base_url, rollouts=5)
        cfg.write_text(cfg.read_text() + "budget_usd = 0.2\n" + BUDGET_TAIL)
        res = run(cfg)
    finally:
        gen.close()
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 1, res.stderr[-3000:]
    (fin,) = [e[2] for e in events(tmp_path / "events.db", "RunFinished")]
    assert fin["status"] == "partial"
    assert fin["message"].startswith("budget_exhausted: ")
    assert 0.15 < fin["cost_usd"] <= 0.2


def test_answers_that_cannot_be_read_count_against_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer comes back with a negative token count: each attempt is a `bad_response`
    (retried), yet the provider answered it and bills it. Each such attempt counts the
    rollout's reservation. Counted as nothing before, every rollout was asked twice over
    whatever the budget."""
    monkeypatch.setenv("FAKE_PROVIDER_USAGE", '{"prompt_tokens": 100, "completion_tokens": -1}')
    gen = _provider(tmp_path, 0.05)
    base_url, requests = next(gen)
    try:
        cfg = config(tmp_path, base_url, rollouts=5)
        cfg.write_text(
            cfg.read_text().replace(
                "max_concurrency = 4", 'max_concurrency = 4\nmax_attempts = 2\nbackoff_base = "10ms"'
            )
            + "budget_usd = 0.01\n"
            + BUDGET_TAIL
        )
        res = run(cfg)
    finally:
        gen.close()
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 1, res.stderr[-3000:]
    (fin,) = [e[2] for e in events(tmp_path / "events.db", "RunFinished")]
    assert fin["status"] == "partial"
    assert fin["message"].startswith("budget_exhausted: ")
    assert fin["failures"]["bad_response"] >= 1
    # Each attempt counts over $0.001 (its reservation): the eight that the run's window
    # holds at once, and then no more than ten fit $0.01.
    served = len(requests.read_text().splitlines())
    assert served <= 2 * 8 + 10 < 2 * fin["planned"], served


@pytest.mark.parametrize(
    ("usage", "outcome", "more"),
    [
        ("null", "RolloutResponded", ""),
        ('{"prompt_tokens": 100, "completion_tokens": -1}', "RolloutFailed", "\nmax_attempts = 1"),
    ],
    ids=["usage_unknown", "unreadable"],
)
def test_what_the_budget_counted_beyond_the_costs_counts_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usage: str, outcome: str, more: str
) -> None:
    """Four answers without a count of their tokens (or four that cannot be read, each
    the rollout's one attempt) each count their reservation against a $0.01 budget; the
    provider then holds every request and the run is killed (SIGKILL). ``rollwatch run``
    resumes it: the four reservations count again (the events record them as
    ``budget_usd``), so the run stops at its budget, counting both lives: with each
    rollout counting at least $0.0011 (1,000 prompt tokens at $1 per million and 50
    output tokens at $2), the provider answered no more than nine requests. Before, the
    resumed run counted only the recorded costs ($0 here) and started up to nine more.
    The requests held at the kill count theirs too (``RolloutRequested.budget_usd``, an
    attempt with no outcome: the provider may have answered and billed it), so the
    resumed run may start none."""
    monkeypatch.setenv("FAKE_PROVIDER_USAGE", usage)
    gen = _provider(tmp_path, 0.05, hold_after=4)
    base_url, requests = next(gen)
    db = tmp_path / "events.db"
    try:
        cfg = config(tmp_path, base_url, rollouts=5)
        cfg.write_text(
            cfg.read_text().replace("max_concurrency = 4", "max_concurrency = 4" + more)
            + "budget_usd = 0.01\n"
            + BUDGET_TAIL
        )
        first = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "fake-often"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "FAKE_PROVIDER_KEY": "k"},
        )
        try:
            wait_until(lambda: len(events(db, outcome)) >= 4, 120, f"four {outcome}")
        finally:
            first.kill()
            first.wait()
        assert not events(db, "RunFinished")
        counted = [e[2]["budget_usd"] for e in events(db, outcome)]
        assert all(c and c >= 0.0011 for c in counted), counted
        Path(f"{requests}.release").touch()
        res = run(cfg)
    finally:
        gen.close()
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 1, res.stderr[-3000:]
    (fin,) = [e[2] for e in events(db, "RunFinished")]
    assert fin["status"] == "partial"
    assert fin["message"].startswith("budget_exhausted: ")
    served = len(requests.read_text().splitlines())
    assert 4 <= served <= 9, served
    counted = [e[2].get("budget_usd") or 0.0 for e in events(db, outcome)]
    assert len(counted) == served
    assert sum(counted) <= 0.01
