"""A wall clock that lies decides no embargo that ends early (``rollwatch.publication.clock``).

The release job and the public routes guard against a clock that jumps; these tests go at
the other end: the *decision*, whose ``not_before`` is the scoring node's clock plus the
embargo. A clock 100 days behind decides a 90-day embargo that ended 10 days ago, and any
node with the right clock (or this one, once its clock is put right) releases it at once.
Real ``rollwatch run`` and ``rollwatch serve`` under libfaketime.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.events import parse_rfc3339
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import write_config
from tests.publication.helpers import finish_run, new_run_id, start_run
from tests.publication.test_clock import LIBFAKETIME
from tests.test_daemon import ROOT, free_port

pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (apt-get install faketime; `make system` does)"
)

EMBARGO = timedelta(days=90)


def one_problem(tmp_path: Path) -> Path:
    """A problem set of one bundled problem (its reference solution passes)."""
    problems = tmp_path / "problems"
    shutil.copytree(ROOT / "config" / "problems" / "lis-length", problems / "lis-length")
    return problems


SCHEDULE = (
    '[[schedules]]\nname = "ref"\nprovider = "reference"\nmodels = ["reference"]\n'
    'problem_set = "favorites"\nrollouts = 2\ncron = "0 3 1 1 *"\n'
)


def seed_now(path: Path) -> None:
    """A log whose newest event is of now (real time): a finished run of nothing."""

    async def go() -> None:
        async with SQLiteEventStore(path) as store:
            run_id = new_run_id()
            await start_run(store, run_id)
            await finish_run(store, run_id)

    anyio.run(go)


def public_decisions(path: Path) -> list[datetime]:
    """The ``not_before`` of every public decision in the log."""

    async def go() -> list[datetime]:
        async with SQLiteEventStore(path) as store:
            out = []
            async for r in store.read(types=["PublicationDecided"]):
                if r.data["audience"] == "public":
                    out.append(parse_rfc3339(r.data["not_before"]))
            return out

    return anyio.run(go)


def faketime_env(offset_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_CACHE_DURATION": "1",  # a step is seen within a second (see test_clock.serve)
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def test_rollwatch_run_on_a_clock_behind_the_log_decides_no_embargo_early(tmp_path: Path) -> None:
    """``rollwatch run`` on a host whose clock is 100 days behind the log's newest event
    refuses (exit 2, naming the gap) before it appends anything. Before,
    ``run`` never compared its clock with anything: its passes were decided public from 10
    days ago, and the daemon (right clock) released them at its next pass."""
    cfg = write_config(tmp_path, SCHEDULE, problems=str(one_problem(tmp_path)))
    seed_now(tmp_path / "events.db")
    clock = tmp_path / "faketime"
    clock.write_text("-100d\n")
    before = datetime.now(UTC)
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "ref"],
        capture_output=True,
        text=True,
        timeout=300,
        env=faketime_env(clock),
    )
    assert "Traceback" not in p.stderr, p.stderr
    decided = public_decisions(tmp_path / "events.db")
    early = [d for d in decided if d < before + EMBARGO]
    assert not early, f"decided public {before + EMBARGO - min(early)} early: {early}"
    assert p.returncode == 2, p.stderr
    assert "behind the log's newest event" in p.stderr, p.stderr
    assert decided == []
    # On the right clock, the same command runs and decides 90 days from now.
    p = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "ref"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    decided = public_decisions(tmp_path / "events.db")
    assert len(decided) == 2, decided
    assert min(decided) >= before + EMBARGO, decided


class Served:
    def __init__(self, client: httpx.Client, proc: subprocess.Popen[bytes], err: Path, offset: Path) -> None:
        self.client, self.proc, self.err, self.offset = client, proc, err, offset

    def set_clock(self, offset: str) -> None:
        tmp = self.offset.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        os.replace(tmp, self.offset)

    def until(self, what: Callable[[], object], why: str, seconds: float = 30) -> object:
        deadline = time.monotonic() + seconds
        while not (got := what()):
            assert self.proc.poll() is None, self.err.read_text()
            assert time.monotonic() < deadline, f"{why} within {seconds} s\n{self.err.read_text()[-3000:]}"
            time.sleep(0.05)
        return got


@contextmanager
def serve(tmp_path: Path, cfg: Path, offset: str) -> Iterator[Served]:
    clock = tmp_path / "faketime"
    clock.write_text(offset + "\n")
    err_path = tmp_path / "serve.err"
    port = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "2"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=faketime_env(clock),
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                served = Served(c, proc, err_path, clock)

                def current() -> bool:
                    try:
                        r = c.get("/healthz")
                    except httpx.TransportError:
                        return False
                    return r.json().get("projections", {}).get("state") == "current"

                served.until(current, "no current projections", 90)
                yield served
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, err_path.read_text()
    assert "Traceback" not in err_path.read_text()


def test_a_daemon_whose_clock_steps_back_mid_run_decides_no_embargo_early(tmp_path: Path) -> None:
    """The daemon's wall clock steps 100 days back while it runs (a VM restored from a
    snapshot, a ``date -s``), then a run is triggered: every pass is decided public at least
    90 days from now (real time), and once the clock is put right nothing is released.
    Before, the daemon held its releases while the clocks disagreed but decided each pass
    by the stepped clock (public 10 days ago), and released them all once the clocks agreed."""
    cfg = write_config(
        tmp_path,
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[publication]\nrelease_check = "200ms"\n' + SCHEDULE,
        problems=str(one_problem(tmp_path)),
    )
    before = datetime.now(UTC)
    with serve(tmp_path, cfg, "+0") as s:
        s.set_clock("-100d")

        def jumped() -> bool:
            r = s.client.get("/healthz")
            return r.status_code == 503 and any("clock_jumped" in x for x in r.json().get("reasons", []))

        s.until(jumped, "the step back not noticed", 15)
        p = subprocess.run(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "schedules", "trigger", "ref"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        s.until(
            lambda: len(public_decisions(tmp_path / "events.db")) == 2, "the run's passes not decided", 120
        )
        s.set_clock("+0")
        s.until(lambda: s.client.get("/healthz").status_code == 200, "health not ok once the clocks agree")
        # Several release passes (every 200 ms) on the right clock.
        deadline = time.monotonic() + 2
        released = False
        while time.monotonic() < deadline and not released:
            released = bool(s.client.get("/public/feed.json").json()["items"])
            time.sleep(0.1)
    decided = public_decisions(tmp_path / "events.db")
    early = [d for d in decided if d < before + EMBARGO]
    assert not early, f"decided public {before + EMBARGO - min(early)} early: {early}"
    assert not released, "a pass scored minutes ago released under a 90-day embargo"
