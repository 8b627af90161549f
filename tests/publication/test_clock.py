"""A wall clock that lies releases nothing early (``rollwatch.publication.clock``).

A real ``rollwatch serve`` runs under libfaketime, whose offset (a file) the test changes
while the daemon runs: the wall clock jumps, the steady clock does not
(``FAKETIME_DONT_FAKE_MONOTONIC``, which also leaves ``CLOCK_BOOTTIME`` alone).
"""

from __future__ import annotations

import glob
import os
import signal
import socket
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

from rollwatch.abc import EventStore
from rollwatch.events import PublicReleased
from rollwatch.store.postgres import PostgresEventStore
from rollwatch.store.sqlite import SQLiteEventStore
from tests.pg import scratch_database
from tests.publication.helpers import add_rollout, add_subscriber, finish_run, new_run_id, start_run

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (apt-get install faketime; `make system` does)"
)


async def seed_into(store: EventStore) -> dict[str, str]:
    """Three passing rollouts: ``due`` (its embargo over an hour ago), ``later`` (due in 30
    days) and ``forged`` (due in 30 days, yet with a ``PublicReleased``, as a node whose clock
    ran ahead would have appended)."""
    now = datetime.now(UTC)
    run_id = new_run_id()
    await start_run(store, run_id)
    ids = {
        "due": await add_rollout(store, run_id, passed=True, not_before=now - timedelta(hours=1)),
        "later": await add_rollout(store, run_id, passed=True, not_before=now + timedelta(days=30)),
        "forged": await add_rollout(store, run_id, passed=True, not_before=now + timedelta(days=30)),
    }
    await store.append(f"rollout-{ids['forged']}", [PublicReleased(rollout_id=ids["forged"])])
    await finish_run(store, run_id, rollouts=3, passed=3)
    return ids


def seed(path: Path) -> dict[str, str]:
    """A log at ``path`` holding :func:`seed_into`'s rollouts."""

    async def go() -> dict[str, str]:
        async with SQLiteEventStore(path) as store:
            return await seed_into(store)

    return anyio.run(go)


def seed_old(path: Path) -> str:
    """A log whose one passing rollout's embargo ended three days before its events' time."""

    async def go() -> str:
        async with SQLiteEventStore(path) as store:
            run_id = new_run_id()
            await start_run(store, run_id)
            rid = await add_rollout(
                store, run_id, passed=True, not_before=datetime.now(UTC) - timedelta(days=3)
            )
            await finish_run(store, run_id, rollouts=1, passed=1)
            return rid

    return anyio.run(go)


def released(path: Path) -> set[str]:
    """The rollouts the log holds a ``PublicReleased`` for."""

    async def go() -> set[str]:
        async with SQLiteEventStore(path) as store:
            return {r.data["rollout_id"] async for r in store.read(types=["PublicReleased"])}

    return anyio.run(go)


class Served:
    def __init__(self, client: httpx.Client, proc: subprocess.Popen[bytes], err: Path, offset: Path) -> None:
        self.client, self.proc, self.err, self.offset = client, proc, err, offset

    def set_clock(self, offset: str) -> None:
        """Move the daemon's wall clock to real time plus ``offset`` (libfaketime's "+40d", "-2d", "+0")."""
        tmp = self.offset.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        os.replace(tmp, self.offset)

    def public(self, rid: str) -> bool:
        r = self.client.get(f"/public/rollouts/{rid}.json")
        assert r.status_code in (200, 404), r.text
        return r.status_code == 200

    def until(self, what: Callable[[], object], why: str, seconds: float = 30) -> object:
        """Poll ``what`` until it is truthy (the daemon still running)."""
        deadline = time.monotonic() + seconds
        while not (got := what()):
            assert self.proc.poll() is None, self.err.read_text()
            assert time.monotonic() < deadline, f"{why} within {seconds} s\n{self.err.read_text()[-3000:]}"
            time.sleep(0.05)
        return got


@contextmanager
def serve(tmp_path: Path, offset: str) -> Iterator[Served]:
    """``rollwatch serve`` under libfaketime, its wall clock at real time + ``offset``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        '[publication]\nrelease_check = "200ms"\n'
    )
    clock = tmp_path / "faketime"
    clock.write_text(offset + "\n")
    err_path = tmp_path / "serve.err"
    env = {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        # The offset file is read at most once a second (FAKETIME_NO_CACHE read it at every
        # clock call: a daemon took 1.5 s longer to start and stop); a step is seen within
        # that second, and every wait on one here has a deadline of seconds.
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
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

                served.until(current, "no current projections", 60)
                yield served
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, err_path.read_text()
    assert "Traceback" not in err_path.read_text()


def held_for(s: Served, reason: str) -> Callable[[], bool]:
    def check() -> bool:
        r = s.client.get("/healthz")
        return r.status_code == 503 and any(reason in x for x in r.json().get("reasons", []))

    return check


def test_a_wall_clock_jump_holds_releases_until_the_clocks_agree(tmp_path: Path) -> None:
    """The wall clock stepped 40 days ahead while the daemon runs: nothing due in 30 days is
    released or shown (not even a result another node released early), ``/healthz`` is
    degraded naming ``clock_jumped``, one ERROR says it; once stepped back, the clocks agree
    and health is ok again. A step back (40 days behind) releases nothing either."""
    ids = seed(tmp_path / "events.db")
    with serve(tmp_path, "+0") as s:
        s.until(lambda: s.public(ids["due"]), "the due result is not released")
        assert not s.public(ids["later"])
        assert not s.public(ids["forged"])
        assert s.client.get("/healthz").status_code == 200

        s.set_clock("+40d")
        # Held (health says so) or released early (what happened before the guard).
        s.until(
            lambda: held_for(s, "clock_jumped")() or s.public(ids["later"]) or s.public(ids["forged"]),
            "neither held nor released",
            15,
        )
        assert not s.public(ids["forged"]), "a release ahead of its date shown on a jumped clock"
        # Several release passes (every 200 ms) on the jumped clock release nothing.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert not s.public(ids["later"]), "released early on a jumped clock"
            time.sleep(0.1)
        assert ids["later"] not in released(tmp_path / "events.db")
        assert held_for(s, "clock_jumped")()

        s.set_clock("+0")
        s.until(lambda: s.client.get("/healthz").status_code == 200, "health not ok once the clocks agree")

        s.set_clock("-40d")
        s.until(held_for(s, "clock_jumped"), "a step back not noticed", 15)
        assert not s.public(ids["later"])
        assert not s.public(ids["forged"])
        s.set_clock("+0")
        s.until(lambda: s.client.get("/healthz").status_code == 200, "health not ok once the clocks agree")
        assert not s.public(ids["later"])
        assert not s.public(ids["forged"])
        assert s.public(ids["due"])
    assert released(tmp_path / "events.db") == {ids["due"], ids["forged"]}
    errors = [x for x in s.err.read_text().splitlines() if "clock_jumped" in x]
    assert len(errors) == 2, errors  # one per jump, however often checked
    assert "clock_agrees" in s.err.read_text()


def test_a_clock_behind_the_log_releases_nothing(tmp_path: Path) -> None:
    """Started with a clock two days behind the log's newest event, the daemon releases
    nothing, even a result whose date that clock has passed: ERROR ``clock_behind_log``,
    ``/healthz`` degraded naming it."""
    rid = seed_old(tmp_path / "events.db")
    with serve(tmp_path, "-2d") as s:
        s.until(lambda: held_for(s, "clock_behind_log")() or s.public(rid), "neither held nor released", 15)
        assert not s.public(rid), "released on a clock behind the log"
        assert rid not in released(tmp_path / "events.db")
    assert "clock_behind_log" in s.err.read_text()


def test_a_clock_far_ahead_of_the_log_is_said_at_start(tmp_path: Path) -> None:
    """Started with a clock 100 days ahead of the log's newest event: believed (the daemon
    may have been down that long), but a WARNING names the gap."""
    ids = seed(tmp_path / "events.db")
    with serve(tmp_path, "+100d") as s:
        s.until(lambda: s.public(ids["later"]), "not released on a clock believed")
        s.until(lambda: "clock_ahead_of_log" in s.err.read_text(), "no warning of the gap", 10)
        assert s.client.get("/healthz").status_code == 200
    line = next(x for x in s.err.read_text().splitlines() if "clock_ahead_of_log" in x)
    assert "ahead_s" in line
    assert "warning" in line.lower()


def test_publish_export_refuses_a_clock_behind_the_log(tmp_path: Path) -> None:
    """What an export files is never rewritten: on a clock two days behind the log's newest
    event it exits 2 and writes nothing; on the right clock it exports."""
    seed_old(tmp_path / "events.db")
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:{tmp_path / "events.db"}"\n')
    clock = tmp_path / "faketime"
    clock.write_text("-2d\n")
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(clock)}
    out = tmp_path / "site"
    cmd = [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2, p.stderr
    assert "behind the log's newest event" in p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists() or not any(out.iterdir())
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (out / "releases.json").is_file()


@pytest.mark.anyio
async def test_publish_export_on_a_shared_log_refuses_a_clock_off_the_databases(tmp_path: Path) -> None:
    """On a PostgreSQL log the database's clock is the one every node goes by: ``serve`` and
    ``run`` refuse a host clock off it, ``publish export`` did not. On a host 40 days ahead it
    filed, for good, a result another node had released ahead of its date (due in 30 days).
    Now it exits 2 naming the database's clock and files nothing; on the right clock it
    exports, without that result (the log releases nothing else: no release job ran)."""
    async with scratch_database() as url:
        async with PostgresEventStore(url) as store:
            ids = await seed_into(store)
        cfg = tmp_path / "rollwatch.toml"
        cfg.write_text(f'[store]\nurl = "{url}"\n')
        out = tmp_path / "site"
        cmd = [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(out)]
        ahead = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+40d"}

        def export(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

        p = await anyio.to_thread.run_sync(export, ahead)
        filed = (out / "results.jsonl").read_text() if (out / "results.jsonl").exists() else ""
        assert ids["forged"] not in filed, "filed ahead of its date on a clock off the database's"
        assert p.returncode == 2, p.stderr
        assert "database server" in p.stderr
        assert "Traceback" not in p.stderr
        p = await anyio.to_thread.run_sync(export, dict(os.environ))
        assert p.returncode == 0, p.stderr
        assert (out / "releases.json").is_file()
        assert ids["forged"] not in (out / "results.jsonl").read_text()


def test_a_clock_stepped_back_opens_no_expired_key(tmp_path: Path) -> None:
    """A subscriber's key stops working at its ``expires``, checked against the wall clock: a
    clock stepped back two days (while the daemon runs) let a key that had expired read the
    feed again, results under embargo included. Keys now expire by the latest time the daemon
    knows has passed (as decisions are dated): the step back changes nothing."""
    ids = seed(tmp_path / "events.db")

    async def add_key() -> str:
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            return await add_subscriber(store, "ending", expires=datetime.now(UTC) + timedelta(seconds=2))

    key = anyio.run(add_key)
    with serve(tmp_path, "+0") as s:
        feed = {"Authorization": f"Bearer {key}"}
        s.until(lambda: s.client.get("/v1/feed", headers=feed).status_code == 401, "the key never expired")
        s.set_clock("-2d")
        s.until(held_for(s, "clock_jumped"), "a step back not noticed", 15)
        r = s.client.get("/v1/feed", headers=feed)
        assert r.status_code == 401, "an expired key read the feed on a clock stepped back"
        assert ids["later"] not in r.text
        assert "expired" in r.json()["message"]
        s.set_clock("+0")
