"""Crash consistency (session 27): the real daemon killed (SIGKILL, SIGTERM, SIGINT) at
points found by polling its log, then restarted; the invariants are read from the log
alone (and checked against the report, ``verify`` and a clean rebuild)."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollwatch.runs.pipeline import rollout_id
from tests.helpers import rollwatch
from tests.test_daemon import _provider, bundled, daemon_toml, events, serve, wait_until

PROBLEMS = ("lis-length", "merge-intervals", "n-queens")


@pytest.fixture
def quick_provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The loopback provider answering after 200 ms."""
    yield from _provider(tmp_path, 0.2)


@pytest.fixture
def held_provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The loopback provider holding every request until ``<request log>.release`` exists."""
    yield from _provider(tmp_path, 0.05, hold_after=0)


def crash_config(tmp_path: Path, base_url: str, *, rollouts: int, extra: str = "") -> Path:
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        daemon_toml(tmp_path, bundled(tmp_path, *PROBLEMS))
        + f"""
[integrity]
checkpoint_every = 7
[[providers]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_PROVIDER_KEY"
max_concurrency = 4
[providers.prices]
"m1" = {{ input = 1.0, output = 2.0 }}
[[schedules]]
name = "fake-often"
provider = "fake"
models = ["m1"]
problem_set = "favorites"
rollouts = {rollouts}
every = "1h"
{extra}"""
    )
    return cfg


def newer(db: Path, after: int) -> list[tuple[int, str]]:
    """(seq, type) of the events after ``after`` (cheap enough to poll every few ms)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT seq, type FROM events WHERE seq > ? ORDER BY seq", (after,)).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def kill_at(db: Path, base: int, grow: int, after: str | None, proc: subprocess.Popen[str]) -> None:
    """Return once the log grew by ``grow`` events past ``base`` (with ``after``: by
    ``grow // 3`` events of that type, at least one), the run finished, the daemon exited,
    or 20 s passed."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        grown = newer(db, base)
        if grown and grown[-1][1] == "RunFinished":
            return
        if after is None and len(grown) >= grow:
            return
        if after is not None and sum(t == after for _, t in grown) >= max(1, grow // 3):
            return
        time.sleep(0.003)


def last_seq(db: Path) -> int:
    evs = events(db)
    return evs[-1][0] if evs else 0


def stop(proc: subprocess.Popen[str], sig: int) -> str:
    """Send ``sig``; the daemon's stderr once it is gone (SIGKILLed after 60 s)."""
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def check_run(db: Path, cfg: Path, *, budget: float | None = None) -> dict:
    """The invariants of one finished run, from the log alone, then against the report,
    ``verify`` and a clean rebuild. The run's RunFinished data."""
    started = events(db, "RunStarted")
    assert len(started) == 1, "a restart started a second run"
    run = started[0][2]
    finished = events(db, "RunFinished")
    assert len(finished) == 1, finished
    fin = finished[0][2]
    assert fin["run_id"] == run["run_id"]
    planned = {
        rollout_id(run["run_id"], m, p, k)
        for m in run["models"]
        for p in run["problems"]
        for k in range(run["rollouts"])
    }
    assert fin["planned"] == len(planned)
    answered = Counter(e[2]["rollout_id"] for e in events(db, "RolloutResponded"))
    scored = Counter(e[2]["rollout_id"] for e in events(db, "RolloutScored"))
    failed = {e[2]["rollout_id"] for e in events(db, "RolloutFailed") if e[2].get("final")}
    assert set(answered) <= planned
    assert max(answered.values(), default=1) == 1, "a rollout was answered (and billed) twice"
    assert max(scored.values(), default=1) == 1, "a rollout was scored twice"
    assert set(scored) == set(answered), "an answer left unscored, or a verdict without an answer"
    assert not failed & set(answered)
    if fin["status"] == "completed":
        assert set(scored) == planned
    unscored = planned - set(scored)
    assert sum(fin["failures"].values()) == len(unscored), fin
    cost = sum(e[2]["cost_usd"] or 0.0 for e in events(db, "RolloutResponded"))
    assert fin["cost_usd"] == pytest.approx(cost, abs=1e-6)
    assert fin["rollouts"] == len(answered)
    assert fin["scored"] == len(scored)
    assert fin["passed"] == sum(e[2]["passed"] for e in events(db, "RolloutScored"))
    if budget is not None:
        assert fin["cost_usd"] <= budget
    # The log checks, and the report from the projections the crashes left equals the
    # one from a clean rebuild, and both the log's figures.
    v = rollwatch("--config", str(cfg), "verify")
    assert v.returncode == 0, v.stdout + v.stderr
    before = rollwatch("--config", str(cfg), "report", "--format", "json")
    assert before.returncode == 0, before.stderr
    r = rollwatch("--config", str(cfg), "rebuild")
    assert r.returncode == 0, r.stderr
    after = rollwatch("--config", str(cfg), "report", "--format", "json")
    assert json.loads(before.stdout) == json.loads(after.stdout)
    rows = [row for row in json.loads(after.stdout) if row["provider"] == "fake"]
    assert sum(row["rollouts"] for row in rows) == len(scored)
    assert sum(row["passed"] for row in rows) == fin["passed"]
    assert sum(row["cost_usd"] or 0.0 for row in rows) == pytest.approx(cost, abs=1e-6)
    return fin


#: Where a kill lands: just after the log's newest events of this type (polled).
KILL_AFTER = ("RolloutRequested", "RolloutResponded", "RolloutScored", "CheckpointSigned", "RunStarted", None)
SIGNALS = (signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def test_a_run_killed_again_and_again_at_random_points_ends_once_with_every_rollout_once(
    tmp_path: Path, quick_provider: tuple[str, Path]
) -> None:
    """A fixed-seed loop (at most 45 s of kills): start the daemon, wait for the log to
    grow past a random point (or to end on a chosen event type), kill it there with
    SIGKILL, SIGTERM or SIGINT, start it again; then let it finish. One run, one
    RunFinished, every planned rollout answered and scored exactly once, the costs
    counted once in RunFinished and the report, verify passes, a rebuild changes nothing."""
    base_url, req_log = quick_provider
    cfg = crash_config(tmp_path, base_url, rollouts=10)
    db = tmp_path / "events.db"
    rng = random.Random(27)
    deadline = time.monotonic() + 45
    kills: list[tuple[str, str | None, int]] = []
    while time.monotonic() < deadline and not events(db, "RunFinished"):
        sig = rng.choice(SIGNALS)
        after = rng.choice(KILL_AFTER)
        grow = rng.randint(1, 8)
        base = last_seq(db)
        proc = serve(cfg)
        try:
            kill_at(db, base, grow, after, proc)
        finally:
            stop(proc, sig)
        kills.append((signal.Signals(sig).name, after, last_seq(db)))
    if not events(db, "RunFinished"):
        proc = serve(cfg)
        try:
            wait_until(lambda: events(db, "RunFinished"), 120, "the run to finish after the kills")
        finally:
            err = stop(proc, signal.SIGTERM)
        assert proc.returncode == 0, err[-2000:]
    fin = check_run(db, cfg)
    assert len(kills) >= 5, kills
    assert fin["status"] == "completed", (fin, kills)
    # Each kill loses at most the requests in flight (max_concurrency) to the provider.
    served = len(req_log.read_text().splitlines())
    assert fin["rollouts"] <= served <= fin["rollouts"] + 4 * len(kills)


def worst(request: dict) -> float:
    """The most one request of the budget test could cost (``runs/budget.py``: a generous
    token count for the prompt at $1/M, ``max_tokens = 50`` at $2/M)."""
    prompt = request["messages"][-1]["content"]
    return ((len(prompt) // 2 + 1000) * 1.0 + 50 * 2.0) / 1e6


def may_have_cost(db: Path) -> float:
    """What the run's attempts may have cost, from the log alone: an answer its cost (or
    its ``budget_usd`` when more), a failed attempt its ``budget_usd``, and an attempt with
    no outcome (in flight when the daemon died: the provider may have answered, and
    billed, it) the most it could cost."""
    outcome: dict[tuple[str, int], float] = {}
    for _, t, d in events(db):
        if t == "RolloutResponded":
            outcome[d["rollout_id"], d["attempt"]] = max(d["cost_usd"] or 0.0, d.get("budget_usd") or 0.0)
        elif t == "RolloutFailed":
            outcome[d["rollout_id"], d["attempt"]] = d.get("budget_usd") or 0.0
    asked = {
        (d["rollout_id"], d["attempt"]): worst(d["request"]) for _, _, d in events(db, "RolloutRequested")
    }
    return sum(outcome.get(a, most) for a, most in asked.items())


def test_requests_in_flight_at_each_kill_count_against_the_budget_after_the_restart(
    tmp_path: Path, held_provider: tuple[str, Path]
) -> None:
    """A daemon killed while its requests are at the provider (which may answer, and bill,
    them all the same) and restarted, three times: the attempts with no outcome count
    their reservation against the run's budget, as a timed-out attempt's does, so the run
    never has more requests out than its budget could pay for. Before, each restart
    started from the recorded costs alone and sent a window of requests again."""
    base_url, req_log = held_provider
    cfg = crash_config(
        tmp_path, base_url, rollouts=20, extra="budget_usd = 0.01\n[schedules.params]\nmax_tokens = 50\n"
    )
    db = tmp_path / "events.db"
    for _ in range(3):
        base = last_seq(db)
        proc = serve(cfg)
        try:
            # Every request is held: wait for the window to fill (or the budget to stop it).
            kill_at(db, base, 4, "RolloutRequested", proc)
            time.sleep(0.5)
        finally:
            stop(proc, signal.SIGKILL)
    asked = events(db, "RolloutRequested")
    assert asked
    assert 0.01 / worst(asked[0][2]["request"]) < 12, "the budget must be less than three windows"
    assert may_have_cost(db) <= 0.01 + 1e-9
    Path(str(req_log) + ".release").touch()
    proc = serve(cfg)
    try:
        wait_until(lambda: events(db, "RunFinished"), 60, "the run to finish")
    finally:
        stop(proc, signal.SIGTERM)
    fin = check_run(db, cfg, budget=0.01)
    assert fin["status"] == "partial"
    assert may_have_cost(db) <= 0.01 + 1e-9
