"""The daemon as operators run it: a real `rollwatch serve` process, a loopback provider."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def wait_until(pred, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``pred`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def events(db: Path, type_: str | None = None) -> list[tuple[int, str, dict]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        sql = "SELECT seq, type, data FROM events"
        rows = con.execute(
            sql + (" WHERE type = ?" if type_ else "") + " ORDER BY seq", (type_,) if type_ else ()
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()
    return [(s, t, json.loads(d)) for s, t, d in rows]


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback OpenAI-compatible server in its own process; yields (base_url, request log)."""
    yield from _provider(tmp_path, 0.1)


@pytest.fixture
def slow_provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same, answering after a second: runs last long enough to overlap."""
    yield from _provider(tmp_path, 1.0)


@pytest.fixture
def held_provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same, holding every answer until the file `<request log>.release` exists."""
    yield from _provider(tmp_path, 0.05, hold_after=0)


def _provider(tmp_path: Path, delay: float, hold_after: int | None = None) -> Iterator[tuple[str, Path]]:
    port_file, log = tmp_path / "port", tmp_path / "requests.jsonl"
    log.touch()
    hold = [] if hold_after is None else [str(hold_after)]
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "fake_provider.py"),
            str(port_file),
            str(log),
            str(delay),
            *hold,
        ]
    )
    try:
        port = wait_until(lambda: port_file.exists() and port_file.read_text(), 20, "the fake provider")
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        proc.kill()
        proc.wait()


def one_problem(tmp_path: Path, name: str = "lis-length") -> Path:
    """A problem set of one bundled problem (its reference solution passes)."""
    return bundled(tmp_path, name)


QUICK = ("closest-pair", "dijkstra", "expression-eval", "lis-length", "merge-intervals", "n-queens")
"""The bundled problems whose reference solutions score in well under a second each, of
every scorer kind (stdio, python-function, command): 3 s of scoring for all six, against
15 s for the ten (topo-order alone is 6 s)."""


def bundled(tmp_path: Path, *names: str) -> Path:
    """A problem set (``tmp_path/problems``) of the bundled problems ``names``."""
    problems = tmp_path / "problems"
    for name in names:
        shutil.copytree(ROOT / "config" / "problems" / name, problems / name)
    return problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_toml(tmp_path: Path, problems: Path | None = None) -> str:
    """The start of a test daemon's config: its node, a log in ``tmp_path``, a free port,
    two scoring workers and the problem set ``favorites`` (``problems``, by default the
    bundled problems)."""
    return f"""
node = "test-node"
[store]
url = "sqlite:{tmp_path / "events.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[scoring]
workers = 2
[[problem_sets]]
name = "favorites"
path = "{problems or ROOT / "config" / "problems"}"
"""


def config(tmp_path: Path, base_url: str, *, rollouts: int = 6, every: str = "1h") -> Path:
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        daemon_toml(tmp_path)
        + f"""
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
every = "{every}"
"""
    )
    return cfg


def serve(cfg: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FAKE_PROVIDER_KEY": "sk-test-secret-123", **env},
    )


def test_fires_by_itself_and_survives_sigkill(tmp_path: Path, provider: tuple[str, Path]) -> None:
    """The schedule fires on its own; SIGKILL mid-run and a restart finish the run with
    no rollout answered twice and no more provider answers than rollouts plus those in flight."""
    base_url, req_log = provider
    cfg = config(tmp_path, base_url, rollouts=6)
    db = tmp_path / "events.db"
    proc = serve(cfg)
    try:
        started = wait_until(lambda: events(db, "RunStarted"), 60, "the first run to start by itself")
        total = started[0][2]["rollouts"] * len(started[0][2]["problems"])
        assert total >= 40
        wait_until(lambda: len(events(db, "RolloutResponded")) >= 10, 60, "some answers")
    finally:
        proc.kill()
        proc.communicate()
    assert not events(db, "RunFinished")

    proc = serve(cfg)
    try:
        fin = wait_until(lambda: events(db, "RunFinished"), 120, "the resumed run to finish")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    run_id = started[0][2]["run_id"]
    assert [f[2]["run_id"] for f in fin] == [run_id]
    assert fin[0][2]["status"] == "completed"
    answered = Counter(e[2]["rollout_id"] for e in events(db, "RolloutResponded"))
    assert len(answered) == total
    assert max(answered.values()) == 1, "a rollout was answered twice"
    scored = Counter(e[2]["rollout_id"] for e in events(db, "RolloutScored"))
    assert set(scored) == set(answered)
    assert max(scored.values()) == 1
    served = len(req_log.read_text().splitlines())
    # Requests in flight at the kill were answered by the provider but never recorded;
    # there are at most max_concurrency of them.
    assert total <= served <= total + 4
    # The restart did not start a second run: the last fire is recent, the next is in 1h.
    assert len(events(db, "RunStarted")) == 1
    assert b"sk-test-secret-123" not in db.read_bytes()
    assert "sk-test-secret-123" not in out + err


def test_sigterm_notify_and_json_logs(tmp_path: Path, provider: tuple[str, Path]) -> None:
    """READY=1, WATCHDOG=1 and STOPPING=1 reach NOTIFY_SOCKET; SIGTERM exits 0 promptly;
    every line of output off a terminal is a JSON object."""
    base_url, _ = provider
    cfg = config(tmp_path, base_url, rollouts=50)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    received: list[str] = []

    def expect(word: str) -> None:
        while not any(word in m for m in received):
            received.append(sock.recv(4096).decode())

    proc = serve(cfg, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    try:
        expect("READY=1")
        expect("WATCHDOG=1")
        wait_until(lambda: events(tmp_path / "events.db", "RolloutScored"), 60, "rollouts in flight")
        listen = next(ln for ln in cfg.read_text().splitlines() if ln.startswith("listen")).split('"')[1]
        assert httpx.get(f"http://{listen}/healthz").status_code == 200
        metrics = wait_until(
            lambda: (
                (m := httpx.get(f"http://{listen}/metrics").text)
                and "rollwatch_rollouts_total{outcome=" in m
                and m
            ),
            30,
            "rollout metrics",
        )
        assert httpx.get(f"http://{listen}/public/checkpoint").text.count("\n") >= 4
        for name in (
            "rollwatch_runs_started_total 1",
            "rollwatch_request_latency_seconds_count",
            "rollwatch_append_latency_seconds_bucket",
            "rollwatch_scoring_queue_depth",
        ):
            assert name in metrics, name
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        expect("STOPPING=1")
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0, err[-2000:]
    assert took < 15
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        assert isinstance(json.loads(ln), dict), ln
    names = [json.loads(ln)["event"] for ln in lines]
    assert "daemon_ready" in names
    assert "daemon_stopped" in names
    assert "run_interrupted" in names
    # A final checkpoint is signed at shutdown, after the runs' last events.
    checkpoints = events(tmp_path / "events.db", "CheckpointSigned")
    assert checkpoints
    assert checkpoints[-1][0] >= events(tmp_path / "events.db", "RunInterrupted")[-1][0]
    # The run was interrupted, not finished: it resumes at the next start.
    assert not events(tmp_path / "events.db", "RunFinished")
    assert events(tmp_path / "events.db", "RunInterrupted")


def test_budget_stops_starting_rollouts(tmp_path: Path, provider: tuple[str, Path]) -> None:
    """`rollwatch run` with a small budget ends `partial` (budget_exhausted) without
    passing the budget, and exits 1."""
    base_url, _ = provider
    cfg = config(tmp_path, base_url, rollouts=5)
    cfg.write_text(cfg.read_text() + "budget_usd = 0.003\n[schedules.params]\nmax_tokens = 50\n")
    res = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "fake-often"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FAKE_PROVIDER_KEY": "k"},
    )
    # SPEC §7: a run that ends with rollouts unscored is `partial` (the cause in the
    # message and in the counts), and `rollwatch run` exits 1.
    assert res.returncode == 1, res.stderr[-2000:]
    fin = events(tmp_path / "events.db", "RunFinished")
    assert len(fin) == 1
    d = fin[0][2]
    assert d["status"] == "partial"
    assert d["message"].startswith("budget_exhausted: ")
    assert d["failures"]["budget_exhausted"] == sum(d["failures"].values()) == d["planned"] - d["scored"]
    assert 0 < d["rollouts"] < d["planned"]
    assert d["cost_usd"] <= 0.003
    assert "budget_exhausted" in res.stdout


def test_schedules_are_steered_through_the_log(tmp_path: Path) -> None:
    """pause, trigger, resume from the CLI act on a running daemon; a fire during a run is skipped and recorded."""
    # The first run's ten answers come at once; the triggered run's are held until the
    # second trigger's skip is in the log, so that run outlasts it however slow the machine
    # (it used to take three rounds of one-second answers, 30 s a test, for the same end).
    first_run = len([p for p in (ROOT / "config" / "problems").iterdir() if p.is_dir()])
    gen = _provider(tmp_path, 0.05, hold_after=first_run)
    base_url, _ = next(gen)
    cfg = config(tmp_path, base_url, rollouts=1)
    db = tmp_path / "events.db"
    env = {"FAKE_PROVIDER_KEY": "k"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )

    proc = serve(cfg)
    try:
        wait_until(lambda: events(db, "RunFinished"), 60, "the first run")
        assert cli("schedules", "pause", "fake-often", "--note", "maintenance").returncode == 0
        listed = json.loads(cli("schedules", "list", "--json").stdout)
        assert listed[0]["state"] == "paused"
        assert listed[0]["note"] == "maintenance"
        # A trigger is an explicit order: it runs even while paused.
        assert cli("schedules", "trigger", "fake-often").returncode == 0
        wait_until(lambda: len(events(db, "RunStarted")) == 2, 30, "the triggered run")
        # A second trigger while that run goes (its answers are held) is skipped
        # and recorded, never queued.
        assert cli("schedules", "trigger", "fake-often").returncode == 0
        wait_until(lambda: events(db, "ScheduleSkipped"), 30, "the skipped fire")
        assert not events(db, "RunFinished")[1:], "the triggered run ended before the second trigger"
        (tmp_path / "requests.jsonl.release").touch()
        wait_until(lambda: len(events(db, "RunFinished")) == 2, 60, "the triggered run to finish")
        started = events(db, "RunStarted")
        assert started[1][2]["trigger"] == "trigger"
        assert len(started) == 2
        assert cli("schedules", "resume", "fake-often").returncode == 0
        listed = json.loads(cli("schedules", "list", "--json").stdout)
        assert listed[0]["state"] == "active"
        assert listed[0]["last_status"] == "completed"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        gen.close()
    assert proc.returncode == 0


def test_a_fire_during_a_cli_run_of_the_schedule_is_skipped(
    tmp_path: Path, held_provider: tuple[str, Path]
) -> None:
    """`rollwatch run` of a schedule in another process counts as its run going: a
    trigger the daemon takes meanwhile is skipped, not a second run. The provider holds
    every answer until the skip is seen, so the CLI run cannot end first however
    slow the machine."""
    base_url, request_log = held_provider
    cfg = config(tmp_path, base_url, rollouts=1)
    db = tmp_path / "events.db"
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "rollwatch", "--config", str(cfg), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    assert cli("schedules", "pause", "fake-often").returncode == 0
    daemon = serve(cfg)
    run = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "fake-often"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_until(lambda: events(db, "RolloutRequested"), 60, "the CLI run to request")
        assert cli("schedules", "trigger", "fake-often").returncode == 0
        wait_until(lambda: events(db, "ScheduleSkipped"), 30, "the skipped fire")
        Path(f"{request_log}.release").touch()
        assert run.wait(60) == 0
        started = events(db, "RunStarted")
        assert [d["trigger"] for _, _, d in started] == ["manual"]
    finally:
        for p in (run, daemon):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=30)
    assert daemon.returncode == 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_an_interrupted_run_exits_non_zero(
    tmp_path: Path, slow_provider: tuple[str, Path], sig: signal.Signals, code: int
) -> None:
    """`rollwatch run` stopped by SIGINT (Ctrl-C, sent to its whole process group as a terminal
    does) or SIGTERM mid-run exits 128 + the signal, says the run resumes, prints no traceback,
    and records no RunFinished (the run is unfinished, for `serve` to resume)."""
    base_url, _ = slow_provider
    cfg = config(tmp_path, base_url, rollouts=20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "fake-often"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FAKE_PROVIDER_KEY": "sk-test-secret-123"},
        start_new_session=True,
    )
    try:
        wait_until(lambda: events(tmp_path / "events.db", "RolloutRequested"), 60, "rollouts in flight")
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, (out, err)
    assert "stopped before its end" in out
    assert "Traceback" not in err
    assert not events(tmp_path / "events.db", "RunFinished")


def test_schedules_list_shows_when_the_schedule_really_fires(tmp_path: Path) -> None:
    """With jitter, two `schedules list` calls after the first fire show the same NEXT, and
    the daemon's following fire (its RunStarted or ScheduleSkipped) is at that instant."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f"""
[store]
url = "sqlite:{tmp_path / "events.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[[problem_sets]]
name = "favorites"
path = "{one_problem(tmp_path)}"
[[providers]]
name = "reference"
kind = "reference"
[[schedules]]
name = "jittery"
provider = "reference"
models = ["reference"]
problem_set = "favorites"
rollouts = 1
every = "12s"
jitter = "4s"
""")
    db = tmp_path / "events.db"

    def fires() -> list[str]:
        return [
            d["fire_time"]
            for _, t, d in events(db)
            if t in ("RunStarted", "ScheduleSkipped") and d.get("fire_time")
        ]

    def next_shown() -> str:
        p = subprocess.run(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "schedules", "list", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        [row] = json.loads(p.stdout)
        return str(row["next"])

    proc = serve(cfg)
    try:
        wait_until(lambda: len(fires()) >= 1, 60, "the first fire")
        before = len(fires())
        shown = [next_shown(), next_shown()]
        assert len(fires()) == before, "the next fire came before both calls ended; widen every"
        assert shown[0] == shown[1] != "-"
        wait_until(lambda: len(fires()) > before, 60, "the next fire")
        fired = fires()[before]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert fired[:19] + "Z" == shown[0]


def test_schedules_that_cannot_run_degrade_health_and_refuse_triggers(
    tmp_path: Path, provider: tuple[str, Path]
) -> None:
    """A schedule whose problem folder is a typo, one whose provider has no key, and one whose
    provider rejected its key (401) make /healthz 503 "degraded" naming each with why;
    `schedules list` shows them as "cannot run" with the same reason; `schedules trigger` on
    the first two exits 2 with the reason and records nothing (on the third it tries the key
    again, and says it is still refused). An `optional` schedule without a key is
    only inactive, and the healthy schedule runs and can be triggered."""
    base_url, _ = provider
    cfg = tmp_path / "rollwatch.toml"
    listen = f"127.0.0.1:{free_port()}"

    def schedule(name: str, provider: str, problem_set: str = "favorites", extra: str = "") -> str:
        return (
            f'[[schedules]]\nname = "{name}"\nprovider = "{provider}"\nmodels = ["m1"]\n'
            f'problem_set = "{problem_set}"\nevery = "1h"\n{extra}'
        )

    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n[server]\nlisten = "{listen}"\n'
        f'[[problem_sets]]\nname = "favorites"\npath = "{ROOT / "config" / "problems"}"\n'
        f'[[problem_sets]]\nname = "typo"\npath = "{ROOT / "config" / "problemz"}"\n'
        f'[[problem_sets]]\nname = "one"\npath = "{one_problem(tmp_path)}"\n'
        '[[providers]]\nname = "reference"\nkind = "reference"\n'
        '[[providers]]\nname = "keyless"\nkind = "openai"\napi_key_env = "ROLLWATCH_TEST_NEVER_SET"\n'
        f'[[providers]]\nname = "fake"\nkind = "openai"\nbase_url = "{base_url}"\n'
        'api_key_env = "FAKE_PROVIDER_KEY"\nmax_attempts = 2\n'
        # The healthy one runs a problem, not the ten bundled (two runs of 15 s of scoring).
        + schedule("good", "reference", "one")
        + schedule("typo", "reference", "typo")
        + schedule("nokey", "keyless")
        + schedule("maybe", "keyless", extra="optional = true\n")
        + schedule("rejected", "fake")
    )
    db = tmp_path / "events.db"
    env = {**os.environ, "FAKE_PROVIDER_KEY": "sk-rejected"}
    env.pop("ROLLWATCH_TEST_NEVER_SET", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    def health() -> httpx.Response | None:
        try:
            return httpx.get(f"http://{listen}/healthz", timeout=5)
        except httpx.HTTPError:
            return None

    proc = serve(cfg, FAKE_PROVIDER_KEY="sk-rejected")
    try:
        r = wait_until(
            lambda: (h := health()) is not None and "rejected" in h.json().get("schedules", {}) and h,
            60,
            "the 401 to degrade /healthz",
        )
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "degraded"
        assert set(body["schedules"]) == {"typo", "nokey", "rejected"}
        assert "problem set 'typo'" in body["schedules"]["typo"]
        assert "ROLLWATCH_TEST_NEVER_SET" in body["schedules"]["nokey"]
        assert "disabled" in body["schedules"]["rejected"]
        assert len(body["reasons"]) == 3
        assert "sk-rejected" not in r.text
        # From outside, degraded with a count: which schedules (a name may say which unreleased
        # model is evaluated) and why (a provider's words) are the operator's.
        outside = httpx.get(f"http://{listen}/healthz", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5)
        assert outside.status_code == 503
        assert outside.json()["status"] == "degraded"
        assert outside.json()["reasons"] == ["3 schedule(s) cannot run (the operator's /healthz names them)"]
        for name in ("typo", "nokey", "rejected", "ROLLWATCH_TEST_NEVER_SET", "keyless", "problemz"):
            assert name not in outside.text, (name, outside.text)

        rows = {row["schedule"]: row for row in json.loads(cli("schedules", "list", "--json").stdout)}
        for name in ("typo", "nokey"):
            assert rows[name]["state"] == "cannot run", rows[name]
            assert rows[name]["why"] == body["schedules"][name]
            assert rows[name]["next"] == "-"
        # A disabled provider's schedule still fires (each fire tries the key): its next fire shows.
        assert rows["rejected"]["state"] == "cannot run", rows["rejected"]
        assert (
            rows["rejected"]["why"]
            == body["schedules"]["rejected"] + "; its key is tried again at the next fire"
        )
        assert rows["rejected"]["next"] != "-"
        assert rows["maybe"]["state"] == "inactive (no API key)"
        assert rows["good"]["state"] == "active"
        assert rows["good"]["why"] == ""

        for name in ("typo", "nokey"):
            p = cli("schedules", "trigger", name)
            assert p.returncode == 2, (name, p.stdout, p.stderr)
            assert f"schedule {name!r} cannot run" in p.stderr
            assert body["schedules"][name] in p.stderr
        assert not events(db, "ScheduleTriggered")
        # A disabled provider is the one reason a trigger goes on: it tries the key now
        # (tests/test_provider_recovery.py), here refused again.
        p = cli("schedules", "trigger", "rejected")
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "provider 'fake' is still disabled" in p.stderr, p.stderr
        assert [d["schedule"] for _, _, d in events(db, "ScheduleTriggered")] == ["rejected"]
        good = {d["run_id"] for _, _, d in events(db, "RunStarted") if d["schedule"] == "good"}
        wait_until(lambda: {d["run_id"] for _, _, d in events(db, "RunFinished")} >= good, 60, "good's run")
        assert cli("schedules", "trigger", "good").returncode == 0
        wait_until(
            lambda: [d for _, _, d in events(db, "RunStarted") if d["schedule"] == "good"][1:],
            60,
            "the triggered run",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
