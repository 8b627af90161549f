"""The daemon under storage faults: a real `rollwatch serve` whose log, projections and state
live on a small tmpfs that fills up, is locked by another process, or turns read-only mid-run.

"Nothing may be lost ... a run goes on, the daemon stays up": while the log cannot take
appends the daemon says so (one clear ERROR, /healthz 503) and stays up; once the storage
is back the run finishes, `rollwatch verify` passes and no acknowledged event is gone.
Mounting needs root; the tests skip, saying so, where mount is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import rollwatch, write_config
from tests.test_daemon import QUICK, _provider, bundled, config, events, serve, wait_until


@pytest.fixture
def slowish_provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The loopback provider answering after 0.3 s: a run lasts long enough to break it."""
    yield from _provider(tmp_path, 0.3)


@pytest.fixture
def fast_provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The loopback provider answering after 0.05 s."""
    yield from _provider(tmp_path, 0.05)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for the test (skipped, saying why, where mount is refused)."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` to the last byte with one big file, then free ``leave`` bytes; returns it."""
    big = disk / "big.fill"
    fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 512):  # big chunks, then the last few bytes
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    return big


def health(cfg: Path) -> tuple[int, dict]:
    listen = re.search(r'listen = "([^"]+)"', cfg.read_text())
    assert listen
    try:
        r = httpx.get(f"http://{listen.group(1)}/healthz", timeout=5)
    except httpx.HTTPError:
        return 0, {}
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"text": r.text}


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def snapshot(db: Path) -> list[tuple[int, str, str]]:
    """Every event in the log as (seq, id, hash), read with a plain read-only connection."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [tuple(r) for r in con.execute("SELECT seq, id, hash FROM events ORDER BY seq")]
    finally:
        con.close()


def check_finished_run(db: Path, cfg: Path) -> None:
    """The run finished completed, each rollout answered and scored once, the log verifies."""
    fin = events(db, "RunFinished")
    assert [f[2]["status"] for f in fin] == ["completed"], fin
    answered = Counter(e[2]["rollout_id"] for e in events(db, "RolloutResponded"))
    scored = Counter(e[2]["rollout_id"] for e in events(db, "RolloutScored"))
    assert set(answered) == set(scored)
    assert max(scored.values()) == 1
    requested = Counter(e[2]["rollout_id"] for e in events(db, "RolloutRequested"))
    # An unfinished rollout is re-requested at most once because of the outage.
    assert max(requested.values()) <= 2, requested.most_common(3)
    done = rollwatch("--config", str(cfg), "verify")
    assert done.returncode == 0, done.stdout + done.stderr


def stderr_reader(proc: subprocess.Popen[str]) -> list[str]:
    """Collect the daemon's stderr lines in a thread (so a full pipe never blocks it)."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_disk_full_mid_run(small_disk: Path, slowish_provider: tuple[str, Path]) -> None:
    base_url, _ = slowish_provider
    cfg = config(small_disk, base_url, rollouts=6, every="1h")
    db = small_disk / "events.db"
    proc = serve(cfg)
    err_lines = stderr_reader(proc)
    big = None
    try:
        wait_until(lambda: len(events(db, "RolloutScored")) >= 5, 90, "some scored rollouts")
        before = snapshot(db)
        big = fill(small_disk)
        status = wait_until(
            lambda: health(cfg)[0] == 503 and health(cfg), 30, "/healthz to say the log is failing"
        )
        # The outage lasts: the run crashes (and is retried after a pause that doubles: how many
        # times within the wait depends on the machine's load). The Merkle tree's worker fails
        # too only if an event reached the log before the disk was full and not its tree: the
        # order of those two writes is the machine's, so it is not waited for.
        try:
            wait_until(
                lambda: '"run_crashed"' in "".join(err_lines),
                60,  # the retry's backoff, and on a loaded machine more
                "the daemon to retry in the outage",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}; the daemon said:\n" + "".join(err_lines)[-6000:]) from None
        assert proc.poll() is None, "the daemon exited on a full disk:\n" + "".join(err_lines)[-3000:]
        during = "".join(err_lines)
        big.unlink()
        wait_until(lambda: events(db, "RunFinished"), 120, "the run to finish once space is back")
        wait_until(lambda: health(cfg)[0] == 200, 30, "/healthz to be ok again")
        assert proc.poll() is None
    finally:
        if big is not None and big.exists():
            big.unlink()
        stop(proc)
    assert "the log refuses appends" in " ".join(status[1]["reasons"]), status
    after = snapshot(db)
    assert after[: len(before)] == before, "an acknowledged event was lost or changed"
    check_finished_run(db, cfg)
    assert [s for s, _, _ in events(db, "CheckpointSigned") if s > len(before)], (
        "no checkpoint after the outage"
    )
    quiet_outage(during)


def quiet_outage(stderr: str) -> None:
    """The outage was said in a few ERROR lines, none with a traceback."""
    lines = [json.loads(ln) for ln in stderr.splitlines() if ln.startswith("{")]
    errors = [d for d in lines if d.get("level") == "error"]
    assert errors, "no ERROR said the log is failing:\n" + stderr[-3000:]
    assert not [d for d in lines if "exception" in d], [d["event"] for d in lines if "exception" in d]
    assert "Traceback" not in stderr
    assert len(errors) <= 15, Counter(d["event"] for d in errors)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("{")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: "), lines
    return lines[0]


def digests(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


def test_disk_full_during_rebuild_and_export(small_disk: Path) -> None:
    """`rollwatch rebuild` and `publish export` on a full disk: one line, exit non-zero, the
    projections and the export in use untouched, no half-built file left taking space;
    once space is back both succeed."""
    cfg = write_config(
        small_disk,
        '[[schedules]]\nname = "ref"\nprovider = "reference"\nmodels = ["reference"]\n'
        'problem_set = "favorites"\nrollouts = 2\nevery = "24h"\n',
        problems=str(bundled(small_disk / "set", *QUICK)),
    )
    done = rollwatch("--config", str(cfg), "run", "ref", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    export = small_disk / "export"
    done = rollwatch("--config", str(cfg), "publish", "export", str(export))
    assert done.returncode == 0, done.stderr[-3000:]
    exported = digests(export)
    projections = small_disk / "events.projections.db"
    in_use = projections.resolve()
    before = in_use.read_bytes()

    # Room to open the log, not to build the projections beside the file in use.
    big = fill(small_disk, leave=150 * 1024)
    line = one_line_error(rollwatch("--config", str(cfg), "rebuild"))
    assert "disk is full" in line, line
    assert projections.resolve() == in_use
    assert in_use.read_bytes() == before
    assert [f for f in in_use.parent.glob("*.db") if f != in_use] == [], "a half-built file was left"

    big.unlink()
    big = fill(small_disk)
    one_line_error(rollwatch("--config", str(cfg), "publish", "export", str(export)))
    assert digests(export) == exported
    assert projections.resolve() == in_use
    assert in_use.read_bytes() == before

    big.unlink()
    done = rollwatch("--config", str(cfg), "rebuild")
    assert done.returncode == 0, done.stderr[-3000:]
    assert projections.resolve() != in_use
    done = rollwatch("--config", str(cfg), "publish", "export", str(export))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(digests(export)) == sorted(exported)
    done = rollwatch("--config", str(cfg), "verify")
    assert done.returncode == 0, done.stdout + done.stderr


def serve_without_dac(cfg: Path) -> subprocess.Popen[str]:
    """`rollwatch serve` as root without CAP_DAC_OVERRIDE: file modes bind it as they bind
    an operator's service user (a read-only file or folder refuses its writes)."""
    return subprocess.Popen(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
            sys.executable,
            "-m",
            "rollwatch",
            "--config",
            str(cfg),
            "serve",
            "--grace",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FAKE_PROVIDER_KEY": "sk-test-secret-123"},
    )


def test_log_read_only_then_locked_mid_run(small_disk: Path, tmp_path: Path) -> None:
    """Mid-run, the log file and its folder made read-only (a checkpoint falls due and its
    witness file cannot be written), then restored; then the log locked by another process
    for longer than the daemon's busy timeout (``store.busy_timeout``, 5 s here), then released. The daemon stays up,
    /healthz is 503 while appends fail, the run finishes, nothing acknowledged is lost."""
    gen = _provider(tmp_path, 1.0)
    base_url, _ = next(gen)
    cfg = config(small_disk, base_url, rollouts=6, every="1h")
    # A busy timeout of 5 s (the default is 30 s): the lock is held past it all the same.
    text = cfg.read_text().replace("[store]\n", '[store]\nbusy_timeout = "5s"\n', 1)
    cfg.write_text(text + "[integrity]\ncheckpoint_every = 40\n")
    db = small_disk / "events.db"
    proc = serve_without_dac(cfg)
    err_lines = stderr_reader(proc)
    holder = None
    try:
        wait_until(lambda: len(events(db, "RolloutScored")) >= 3, 90, "some scored rollouts")
        before = snapshot(db)
        db.chmod(0o444)
        small_disk.chmod(0o555)
        try:
            wait_until(
                lambda: "checkpoint_failed" in "".join(err_lines) or proc.poll() is not None,
                60,
                "a checkpoint to fail",
            )
            assert proc.poll() is None, (
                "the daemon exited on a read-only folder:\n" + "".join(err_lines)[-3000:]
            )
            # Nothing more is signed meanwhile: /healthz says so, not the journal alone.
            unsigned = wait_until(
                lambda: any("no checkpoint can be signed" in r for r in health(cfg)[1].get("reasons", [])),
                30,
                "/healthz to name the signer",
            )
            assert unsigned
        finally:
            db.chmod(0o644)
            small_disk.chmod(0o1777)

        holder = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, text=True)
        assert holder.stdin is not None
        holder.stdin.write("BEGIN EXCLUSIVE;\nSELECT 'held';\n")
        holder.stdin.flush()
        status = wait_until(
            lambda: (
                (h := health(cfg))[0] == 503
                and any("database is locked" in r for r in h[1].get("reasons", []))
                and h
            ),
            60,
            "/healthz to say the log is locked",
        )
        assert proc.poll() is None
        holder.stdin.write("COMMIT;\n.quit\n")
        holder.stdin.close()
        holder.wait(timeout=10)
        during = "".join(err_lines)
        wait_until(lambda: events(db, "RunFinished"), 120, "the run to finish once the lock is gone")
        wait_until(lambda: health(cfg)[0] == 200, 30, "/healthz to be ok again")
        assert proc.poll() is None
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        small_disk.chmod(0o1777)
        db.chmod(0o644)
        stop(proc)
        gen.close()
    assert "database is locked" in " ".join(status[1]["reasons"]), status
    after = snapshot(db)
    assert after[: len(before)] == before, "an acknowledged event was lost or changed"
    check_finished_run(db, cfg)
    quiet_outage(during)


def get(cfg: Path, route: str, key: str | None = None) -> httpx.Response:
    listen = re.search(r'listen = "([^"]+)"', cfg.read_text())
    assert listen
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"http://{listen.group(1)}{route}", headers=headers, timeout=30)


ROUTES = ("/healthz", "/public/", "/public/feed.json", "/public/feed.atom", "/ops/", "/v1/report")


def answers(cfg: Path, key: str) -> dict[str, httpx.Response]:
    """Every route's answer: 200, or 503 with Retry-After; never a 500."""
    got = {r: get(cfg, r, key) for r in ROUTES}
    for route, r in got.items():
        assert r.status_code in (200, 503), f"{route}: {r.status_code} {r.text[:300]}"
        if r.status_code == 503 and route != "/healthz":
            assert r.headers.get("retry-after"), route
    return got


def test_projections_deleted_or_garbage_while_serving(
    tmp_path: Path, fast_provider: tuple[str, Path]
) -> None:
    """The projections file deleted while the daemon serves, then garbage written over the
    file in use and over ``events.projections.db``: every route answers 200 or 503 with
    Retry-After (never 500), the daemon rebuilds from the log, a new run is projected,
    and its report says what the log says."""
    base_url, _ = fast_provider
    cfg = config(tmp_path, base_url, rollouts=2, every="1h")
    db = tmp_path / "events.db"
    key = rollwatch("--config", str(cfg), "subscribers", "add", "alice").stdout.split()[0]
    proc = serve(cfg)
    err_lines = stderr_reader(proc)
    link = tmp_path / "events.projections.db"
    try:
        wait_until(lambda: events(db, "RunFinished"), 90, "the first run to finish")
        wait_until(lambda: get(cfg, "/v1/report", key).json(), 30, "the first run in the report")
        report = get(cfg, "/v1/report", key).json()

        held = link.resolve()
        link.unlink()
        held.unlink()
        got = answers(cfg, key)
        assert got["/v1/report"].json() == report  # served from the file it holds

        link.write_bytes(b"not a database\n" * 4096)
        trig = rollwatch(
            "--config", str(cfg), "schedules", "trigger", "fake-often", env={"FAKE_PROVIDER_KEY": "k"}
        )
        assert trig.returncode == 0, trig.stderr
        wait_until(lambda: len(events(db, "RunFinished")) == 2, 90, "the second run to finish")
        answers(cfg, key)
        # A file in use with garbage written over it.
        held = link.resolve()
        assert held != link, "events.projections.db is a link again"
        with open(held, "r+b") as f:
            f.write(os.urandom(64 * 1024))
        trig = rollwatch(
            "--config", str(cfg), "schedules", "trigger", "fake-often", env={"FAKE_PROVIDER_KEY": "k"}
        )
        assert trig.returncode == 0, trig.stderr
        wait_until(lambda: len(events(db, "RunFinished")) == 3, 90, "the third run to finish")
        wait_until(
            lambda: all(r.status_code == 200 for r in answers(cfg, key).values()),
            30,
            "every route to answer 200",
        )
        served = get(cfg, "/v1/report", key).json()
        assert proc.poll() is None
    finally:
        stop(proc)
    from_log = json.loads(rollwatch("--config", str(cfg), "report", "--format", "json").stdout)
    fields = ("provider", "model", "rollouts", "passed")
    assert [{k: r[k] for k in fields} for r in served] == [{k: r[k] for k in fields} for r in from_log]
    assert sum(r["rollouts"] for r in served) == len(events(db, "RolloutScored"))
    stderr = "".join(err_lines)
    assert "Traceback" not in stderr
    assert not [ln for ln in stderr.splitlines() if ln.startswith("{") and "exception" in json.loads(ln)], (
        stderr[-3000:]
    )
    done = rollwatch("--config", str(cfg), "verify")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_fire_while_the_log_is_locked_is_tried_again_and_the_daemon_stays_up(tmp_path: Path) -> None:
    """A schedule falls due while another process holds the log locked past the busy
    timeout: its ``RunStarted`` cannot be appended. The scheduler tries again once the
    lock is gone and the run starts; the daemon stays up. Before, the append's error
    reached the scheduler's task group after the fire had reported started, and took
    the scheduler (and with it the daemon) down."""
    gen = _provider(tmp_path, 0.0)
    base_url, _ = next(gen)
    cfg = config(tmp_path, base_url, rollouts=1, every="3s")
    text = cfg.read_text().replace("[store]\n", '[store]\nbusy_timeout = "1s"\n', 1)
    cfg.write_text(text)
    db = tmp_path / "events.db"
    proc = serve(cfg)
    err_lines = stderr_reader(proc)
    holder = None
    try:
        wait_until(lambda: events(db, "RunFinished"), 60, "the first run to finish")
        holder = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, text=True)
        assert holder.stdin is not None
        holder.stdin.write("BEGIN EXCLUSIVE;\nSELECT 'held';\n")
        holder.stdin.flush()
        wait_until(
            lambda: "schedule_loop_failed" in "".join(err_lines) or proc.poll() is not None,
            30,
            "a fire to fail on the locked log",
        )
        assert proc.poll() is None, "the daemon exited:\n" + "".join(err_lines)[-3000:]
        runs = len(events(db, "RunStarted"))
        holder.stdin.write("COMMIT;\n.quit\n")
        holder.stdin.close()
        holder.wait(timeout=10)
        wait_until(lambda: len(events(db, "RunStarted")) > runs, 30, "the next fire once the lock is gone")
        assert proc.poll() is None
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        stop(proc)
        gen.close()
    assert proc.returncode == 0, "".join(err_lines)[-3000:]
