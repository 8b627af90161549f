"""Schedules and runs of a long-running daemon, over weeks: a real ``rollwatch serve``, its
log read as it goes. Each case ends with a recorded outcome and the daemon still up (it
stops on SIGTERM with exit 0 and no traceback)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx

from rollwatch.events import RunFinished, RunStarted, rfc3339, run_stream
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.test_clock_decisions import faketime_env
from tests.test_daemon import ROOT, _provider, events, free_port, one_problem


def write_config(tmp_path: Path, schedules: str, *, problems: Path | None = None, extra: str = "") -> Path:
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'node = "test-node"\n[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n'
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[scoring]\nworkers = 1\n'
        f'[[problem_sets]]\nname = "favorites"\npath = "{problems or one_problem(tmp_path)}"\n'
        '[[providers]]\nname = "reference"\nkind = "reference"\n' + extra + schedules
    )
    return cfg


def schedule(name: str, trigger: str, **more: object) -> str:
    """A ``[[schedules]]`` table of one reference rollout per problem."""
    lines = [
        f'name = "{name}"',
        'provider = "reference"',
        'models = ["reference"]',
        'problem_set = "favorites"',
        "rollouts = 1",
        trigger,
        *(f"{k} = {v!r}".replace("'", '"') for k, v in more.items()),
    ]
    return "[[schedules]]\n" + "\n".join(lines) + "\n"


class Daemon:
    """A ``rollwatch serve`` in a subprocess, its stderr in a file."""

    def __init__(self, cfg: Path, env: dict[str, str] | None = None, args: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.db = cfg.parent / "events.db"
        self.err = cfg.parent / f"serve-{time.monotonic_ns()}.err"
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, **(env or {})},
            )

    def until(self, what: Callable[[], Any], why: str, seconds: float = 60) -> Any:
        """Poll ``what`` until it is truthy, the daemon still up."""
        deadline = time.monotonic() + seconds
        while not (got := what()):
            assert self.proc.poll() is None, f"the daemon exited: {self.err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{why} within {seconds} s\n{self.err.read_text()[-3000:]}"
            time.sleep(0.05)
        return got

    def events(self, type_: str | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        return events(self.db, type_)

    def stop(self) -> str:
        """SIGTERM; the daemon must exit 0 without a traceback. Its log lines."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        text = self.err.read_text()
        assert code == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        return text


@contextmanager
def serving(cfg: Path, env: dict[str, str] | None = None, args: Sequence[str] = ()) -> Iterator[Daemon]:
    d = Daemon(cfg, env, args)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()


def seed_fires(db: Path, fired: dict[str, datetime]) -> None:
    """A finished run of each schedule, fired at the time given (as a daemon down since
    then leaves its log)."""

    async def go() -> None:
        async with SQLiteEventStore(db) as store:
            for i, (name, at) in enumerate(fired.items()):
                run_id = f"seed-{i}"
                await store.append(
                    run_stream(run_id),
                    [
                        RunStarted(
                            run_id=run_id,
                            schedule=name,
                            provider="reference",
                            models=["reference"],
                            problem_set="favorites",
                            node="test-node",
                            rollouts=1,
                            problems=[],
                            trigger="schedule",
                            fire_time=rfc3339(at),
                        ),
                        RunFinished(run_id=run_id, status="completed", rollouts=0, passed=0, cost_usd=0.0),
                    ],
                    expected_version=0,
                )

    anyio.run(go)


def test_a_week_down_makes_one_missed_and_one_catch_up_per_schedule(tmp_path: Path) -> None:
    """Started after a week down, each schedule records one ScheduleMissed with the count and
    starts one catch-up run, then fires as usual. A schedule of 5 s with a catch-up window
    (120,960 fires missed) recorded a ScheduleMissed again and again before."""
    cfg = write_config(
        tmp_path,
        schedule("hourly", 'every = "1h"')
        + schedule("cron-hourly", 'cron = "0 * * * *"')
        + schedule("often", 'every = "5s"', catch_up="1m"),
    )
    week_ago = datetime.now(UTC) - timedelta(days=7)
    seed_fires(tmp_path / "events.db", dict.fromkeys(("hourly", "cron-hourly", "often"), week_ago))
    with serving(cfg) as d:

        def caught_up() -> bool:
            started = [e[2] for e in d.events("RunStarted") if not e[2]["run_id"].startswith("seed-")]
            kinds = Counter((s["schedule"], s["trigger"]) for s in started)
            return kinds[("hourly", "catch_up")] == kinds[("cron-hourly", "catch_up")] == 1 and bool(
                kinds[("often", "schedule")]
            )

        d.until(caught_up, "a catch-up run of each schedule, then a usual fire of the 5 s one", 90)
        # Every run started ends, the daemon up.
        d.until(
            lambda: (
                {e[2]["run_id"] for e in d.events("RunFinished")}
                >= {e[2]["run_id"] for e in d.events("RunStarted")}
            ),
            "every run started to finish",
        )
        d.stop()
    missed: dict[str, list[int]] = {}
    for e in d.events("ScheduleMissed"):
        missed.setdefault(e[2]["schedule"], []).append(e[2]["missed"])
    assert len(missed["hourly"]) == len(missed["cron-hourly"]) == 1, missed
    assert 167 <= missed["hourly"][0] <= 168
    assert 167 <= missed["cron-hourly"][0] <= 169
    # A loop slower than the 5 s period on a loaded machine may miss one fire now and then.
    assert [m for m in missed["often"] if m > 1] == [10_000], missed
    started = Counter((e[2]["schedule"], e[2]["trigger"]) for e in d.events("RunStarted"))
    assert started[("hourly", "catch_up")] == started[("cron-hourly", "catch_up")] == 1
    assert started[("hourly", "schedule")] == 1  # the seed


def test_a_schedule_keeps_firing_through_wall_clock_jumps(tmp_path: Path) -> None:
    """The wall clock steps 40 days ahead, then back, while the daemon runs a 3 s
    schedule (libfaketime). Ahead: one ScheduleMissed (the fires in between counted up to
    10,000) and fires go on. Back: fires
    again within seconds; it waited for the 40 days to pass again before."""
    cfg = write_config(tmp_path, schedule("often", 'every = "3s"', catch_up="1m"))
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")

    def set_clock(offset: str) -> None:
        (tmp_path / "faketime.tmp").write_text(offset + "\n")
        os.replace(tmp_path / "faketime.tmp", clock)

    with serving(cfg, faketime_env(clock)) as d:

        def fires_after(seq: int, n: int = 2) -> Callable[[], bool]:
            return lambda: len([e for e in d.events("RunStarted") if e[0] > seq]) >= n

        d.until(fires_after(0), "two fires on the right clock")
        set_clock("+40d")
        head = d.events()[-1][0]
        d.until(fires_after(head), "two fires after the step ahead")
        set_clock("+0")
        head = d.events()[-1][0]
        d.until(fires_after(head), "two fires after the step back", 30)
        d.until(
            lambda: (
                {e[2]["run_id"] for e in d.events("RunFinished")}
                >= {e[2]["run_id"] for e in d.events("RunStarted")}
            ),
            "every run started to finish",
        )
        d.stop()
    # One count of the fires stepped over (a loop slower than the 3 s period on a loaded
    # machine may miss one fire now and then).
    assert [m for e in d.events("ScheduleMissed") if (m := e[2]["missed"]) > 1] == [10_000]


def fake_config(tmp_path: Path, base_url: str, problems: Path, *, rollouts: int, extra: str = "") -> Path:
    """A daemon on the loopback provider ``fake`` (``tests/fake_provider.py``), one hourly
    schedule of ``rollouts`` per problem."""
    return write_config(
        tmp_path,
        '[[schedules]]\nname = "fake-hourly"\nprovider = "fake"\nmodels = ["m1"]\n'
        f'problem_set = "favorites"\nrollouts = {rollouts}\nevery = "1h"\n',
        problems=problems,
        extra=f'[[providers]]\nname = "fake"\nkind = "openai"\nbase_url = "{base_url}"\n'
        'api_key_env = "FAKE_PROVIDER_KEY"\nmax_concurrency = 2\n' + extra,
    )


def test_a_run_whose_problem_set_is_gone_at_a_restart_waits_for_it(tmp_path: Path) -> None:
    """The daemon stops mid-run; its problem set's folder is moved away before the next
    start. The run is not resumed and not closed: the log says why and /healthz is
    degraded; once the folder is back (SIGHUP), the run resumes and completes, each
    rollout answered once; a schedule whose problem set did not load at start fires once it
    does. Before, the restart closed the run as `failed` ("problem set 'favorites' is not
    configured (or has no API key)"), its unanswered rollouts never asked; and a schedule
    whose set loaded only at a SIGHUP never fired until a restart."""
    gen = _provider(tmp_path, 0.05, hold_after=3)
    base_url, requests = next(gen)
    problems = one_problem(tmp_path)
    late = tmp_path / "late"
    cfg = fake_config(
        tmp_path,
        base_url,
        problems,
        rollouts=8,
        extra=f'[[problem_sets]]\nname = "late"\npath = "{late}"\n'
        + schedule("late-ref", 'every = "1h"').replace('"favorites"', '"late"'),
    )
    env = {"FAKE_PROVIDER_KEY": "k"}
    try:
        with serving(cfg, env) as d:
            d.until(lambda: len(d.events("RolloutResponded")) >= 3, "three answers")
            d.stop()
        assert d.events("RunInterrupted")
        problems.rename(tmp_path / "moved")
        with serving(cfg, env) as d:
            d.until(lambda: "run_cannot_resume" in d.err.read_text(), "the run said to wait")
            health = httpx.get(f"http://{listen(cfg)}/healthz")
            assert health.status_code == 503
            assert "favorites" in health.text
            (tmp_path / "moved").rename(problems)
            shutil.copytree(problems, late)
            Path(f"{requests}.release").touch()
            d.proc.send_signal(signal.SIGHUP)
            d.until(lambda: len(d.events("RunFinished")) == 2, "the run and the late schedule's to finish")
            d.stop()
    finally:
        gen.close()
    fin = {e[2]["run_id"]: e[2] for e in d.events("RunFinished")}
    assert [e[2]["schedule"] for e in d.events("RunStarted")] == ["fake-hourly", "late-ref"]
    assert {f["status"] for f in fin.values()} == {"completed"}, fin
    answered = Counter(e[2]["rollout_id"] for e in d.events("RolloutResponded"))
    assert len(answered) == 8 + 1  # and the late schedule's one
    assert set(answered.values()) == {1}
    assert len(requests.read_text().splitlines()) == 8  # what the provider served (and billed)


def listen(cfg: Path) -> str:
    return next(ln for ln in cfg.read_text().splitlines() if ln.startswith("listen")).split('"')[1]


def test_a_provider_gone_mid_run_ends_it_partial_with_counts_and_the_daemon_up(tmp_path: Path) -> None:
    """The provider's process dies mid-run (every later request: connection refused). The
    run ends `partial`: the answers it had scored, the rest counted by cause (`connection`),
    the log saying so; /healthz answers, and the next fire (a trigger) runs again."""
    gen = _provider(tmp_path, 0.05, hold_after=4)
    base_url, requests = next(gen)
    cfg = fake_config(
        tmp_path,
        base_url,
        one_problem(tmp_path),
        rollouts=10,
        extra='max_attempts = 2\nbackoff_base = "50ms"\nbackoff_max = "100ms"\n',
    )
    try:
        with serving(cfg, {"FAKE_PROVIDER_KEY": "k"}) as d:
            d.until(lambda: len(d.events("RolloutScored")) >= 4, "four verdicts")
            gen.close()  # the provider's process is killed: held requests cut, the port closed
            (fin,) = d.until(lambda: d.events("RunFinished"), "the run to end")
            assert httpx.get(f"http://{listen(cfg)}/healthz").status_code == 200
            trigger = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "rollwatch",
                    "--config",
                    str(cfg),
                    "schedules",
                    "trigger",
                    "fake-hourly",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "FAKE_PROVIDER_KEY": "k"},
            )
            assert trigger.returncode == 0, trigger.stderr
            d.until(lambda: len(d.events("RunFinished")) == 2, "the triggered run to end")
            log = d.stop()
    finally:
        gen.close()
    f = fin[2]
    assert f["status"] == "partial", f
    assert f["scored"] == 4
    assert sum(f["failures"].values()) == f["planned"] - f["scored"] == 6
    assert f["failures"].get("connection", 0) >= 1, f
    assert set(f["failures"]) <= {"connection", "server_error", "bad_response", "cancelled"}, f
    assert '"run_finished"' in log
    assert len(requests.read_text().splitlines()) == 4
    (second,) = [e[2] for e in d.events("RunFinished")][1:]
    assert second["status"] == "partial"
    assert second["failures"] == {"connection": 10}


def test_rollwatch_run_of_a_schedule_the_daemon_is_running_leaves_it_to_the_daemon(tmp_path: Path) -> None:
    """`rollwatch run SCHEDULE` while the daemon drives that schedule's run: it would resume
    the run, finds it driven, says so and exits 1, appending nothing; the daemon's run
    completes with each rollout answered once."""
    gen = _provider(tmp_path, 0.05, hold_after=2)
    base_url, requests = next(gen)
    cfg = fake_config(tmp_path, base_url, one_problem(tmp_path), rollouts=6)
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    try:
        with serving(cfg, env) as d:
            d.until(lambda: len(d.events("RolloutResponded")) >= 2, "two answers")
            cli = subprocess.run(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "fake-hourly"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert cli.returncode == 1, cli.stderr[-2000:]
            assert "being driven by another rollwatch process" in cli.stderr
            assert "Traceback" not in cli.stderr
            Path(f"{requests}.release").touch()
            (fin,) = d.until(lambda: d.events("RunFinished"), "the daemon's run to finish")
            d.stop()
    finally:
        gen.close()
    assert fin[2]["status"] == "completed"
    assert len(d.events("RunStarted")) == 1
    for kind in ("RolloutRequested", "RolloutResponded"):
        seen = Counter(e[2]["rollout_id"] for e in d.events(kind))
        assert len(seen) == 6
        assert set(seen.values()) == {1}
    assert len(requests.read_text().splitlines()) == 6


def test_a_run_whose_schedule_was_removed_before_a_restart_still_completes(tmp_path: Path) -> None:
    """The daemon stops mid-run; the schedule is removed from the config (its provider kept).
    At the next start the run resumes from its RunStarted and completes, each rollout answered
    once; `schedules list` shows the schedules configured, without a traceback."""
    gen = _provider(tmp_path, 0.05, hold_after=3)
    base_url, requests = next(gen)
    problems = one_problem(tmp_path)
    cfg = fake_config(tmp_path, base_url, problems, rollouts=8)
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    try:
        with serving(cfg, env) as d:
            d.until(lambda: len(d.events("RolloutResponded")) >= 3, "three answers")
            d.stop()
        text = cfg.read_text()
        cfg.write_text(text[: text.index("[[schedules]]")])
        assert "fake-hourly" not in cfg.read_text()
        Path(f"{requests}.release").touch()
        with serving(cfg, env) as d:
            (fin,) = d.until(lambda: d.events("RunFinished"), "the resumed run to finish")
            listed = subprocess.run(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "schedules", "list"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            d.stop()
    finally:
        gen.close()
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    assert fin[2]["status"] == "completed", fin
    seen = Counter(e[2]["rollout_id"] for e in d.events("RolloutResponded"))
    assert len(seen) == 8
    assert set(seen.values()) == {1}


def test_a_jittered_schedule_counts_each_fire_from_the_last_ones_own_time(tmp_path: Path) -> None:
    """`every = "2s"`, `jitter = "1s"`: each fire records the time it was due before its jitter
    (`due`), and the next is due one period after it, so the fires keep to the schedule's
    own times (they drifted later by half the jitter each fire before)."""
    cfg = write_config(tmp_path, schedule("jittery", 'every = "2s"', jitter="1s"))
    with serving(cfg) as d:

        def fires() -> list[dict[str, Any]]:
            return [e[2] for e in d.events() if e[1] in ("RunStarted", "ScheduleSkipped")]

        d.until(lambda: len(fires()) >= 5, "five fires")
        d.until(
            lambda: (
                {e[2]["run_id"] for e in d.events("RunFinished")}
                >= {e[2]["run_id"] for e in d.events("RunStarted")}
            ),
            "every run started to finish",
        )
        d.stop()
    got = fires()
    first = datetime.fromisoformat(got[0]["fire_time"])
    dues = [datetime.fromisoformat(f.get("due") or f["fire_time"]) for f in got]
    assert [due - first for due in dues] == [timedelta(seconds=2 * k) for k in range(len(dues))]
    for f, due in zip(got[1:], dues[1:], strict=True):
        assert due <= datetime.fromisoformat(f["fire_time"]) < due + timedelta(seconds=1)


def _hold_the_run_lock(locks: str, holders: Any, most: Any, until: float) -> None:
    from rollwatch.runs import RunLock

    while time.time() < until:
        lock = RunLock(Path(locks), "r1")
        if lock.acquire():
            with holders.get_lock():
                holders.value += 1
                most.value = max(most.value, holders.value)
            time.sleep(0.0005)
            with holders.get_lock():
                holders.value -= 1
            lock.release()


def test_a_run_lock_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    """Four processes take and let go of one run's lock as fast as they can: never two hold
    it at once. The holder deleted the lock file after letting go, so a process that had
    opened it meanwhile held a lock on a deleted file while the next made and locked a new
    one: all four held the run at once (a probe of the daemon's, `rollwatch run` and a
    resume could each drive it)."""
    import multiprocessing

    holders, most = multiprocessing.Value("i", 0), multiprocessing.Value("i", 0)
    until = time.time() + 1.5
    procs = [
        multiprocessing.Process(target=_hold_the_run_lock, args=(str(tmp_path), holders, most, until))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4
    assert most.value == 1


def test_a_problem_removed_before_a_run_resumes_is_counted_in_its_end(tmp_path: Path) -> None:
    """A run of two problems stops before asking anything of the second; that problem's
    folder is removed before the next start. The resumed run ends `partial`, its planned
    rollouts all there, the removed problem's counted under `problem_missing`, the message
    naming it. Before, the run ended `completed`, planning half its rollouts (the removed
    problem's were gone from its record)."""
    gen = _provider(tmp_path, 0.05, hold_after=2)
    base_url, requests = next(gen)
    problems = one_problem(tmp_path)
    shutil.copytree(ROOT / "config" / "problems" / "topo-order", problems / "topo-order")
    # Two in flight at the provider, four places in the run: the first problem's six
    # samples fill them.
    cfg = fake_config(tmp_path, base_url, problems, rollouts=6)
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    try:
        with serving(cfg, env) as d:
            d.until(lambda: len(d.events("RolloutScored")) >= 2, "two verdicts")
            d.stop()
        requested = {e[2]["problem_id"] for e in d.events("RolloutRequested")}
        (gone,) = {"lis-length", "topo-order"} - requested
        shutil.rmtree(problems / gone)
        Path(f"{requests}.release").touch()
        with serving(cfg, env) as d:
            (fin,) = d.until(lambda: d.events("RunFinished"), "the resumed run to finish")
            log = d.stop()
    finally:
        gen.close()
    f = fin[2]
    assert f["planned"] == 12, f
    assert f["scored"] == 6, f
    assert f["status"] == "partial", f
    assert f["failures"] == {"problem_missing": 6}, f
    assert gone in f["message"]
    assert '"problem_missing"' in log


def test_fires_that_pass_while_a_schedule_is_paused_are_not_caught_up_on_resume(tmp_path: Path) -> None:
    """A 2 s schedule paused for a few periods, then resumed: one ScheduleSkipped says the
    fires passed while it was paused, and the next run is the schedule's usual fire. Before,
    the resume counted them as missed (ScheduleMissed) and started a catch-up run at once."""
    cfg = write_config(tmp_path, schedule("often", 'every = "2s"'))
    env = {**os.environ}

    def cli(*args: str) -> None:
        p = subprocess.run(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "schedules", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert p.returncode == 0, p.stderr

    with serving(cfg) as d:
        d.until(lambda: d.events("RunFinished"), "a first run")
        cli("pause", "often")
        time.sleep(5)  # two periods and more pass, paused
        cli("resume", "often")
        resumed = d.events("ScheduleResumed")[0][0]
        d.until(lambda: [e for e in d.events("RunStarted") if e[0] > resumed], "a run after the resume")
        d.until(
            lambda: (
                {e[2]["run_id"] for e in d.events("RunFinished")}
                >= {e[2]["run_id"] for e in d.events("RunStarted")}
            ),
            "every run started to finish",
        )
        d.stop()
    # (A loop slower than the 2 s period on a loaded machine may miss one fire now and then.)
    assert not [e for e in d.events("ScheduleMissed") if e[2]["missed"] > 1]
    skipped = [e[2] for e in d.events("ScheduleSkipped") if e[0] > resumed]
    assert [s["reason"] for s in skipped][:1] == ["fires passed while the schedule was paused"]
    after = [e[2]["trigger"] for e in d.events("RunStarted") if e[0] > resumed]
    assert after[:1] == ["schedule"]
