"""Serve at once, catch up behind: a real `rollwatch serve` on a log whose read models
are not built yet.

Another process holds the projections file's write lock (as a `rollwatch rebuild` in
another terminal would) until the test lets go: the daemon must listen, say on
/healthz and to systemd how far it is, and answer the routes that read the read models
with 503 and Retry-After, never with what they hold meanwhile; once it is let go, the
same routes give the log's figures.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx

from rollwatch.events import (
    PublicationDecided,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    RunFinished,
    RunStarted,
    SubscriberAdded,
    rollout_stream,
    run_stream,
    subscriber_stream,
)
from rollwatch.publication.keys import hash_key, key_prefix, new_key
from rollwatch.store.sqlite import SQLiteEventStore

ROLLOUTS = 2000
MODELS = ("m1", "m2")


async def build_log(db: Path, key: str) -> int:
    """One run of ROLLOUTS rollouts (every third passes), appended by 20 writers."""
    async with SQLiteEventStore(db) as store:
        await store.append(
            subscriber_stream("reader"),
            [
                SubscriberAdded(
                    name="reader", key_hash=hash_key(key), key_prefix=key_prefix(key), scopes=["report"]
                )
            ],
        )
        await store.append(
            run_stream("run-1"),
            [
                RunStarted(
                    run_id="run-1",
                    schedule="weekly",
                    provider="p",
                    models=list(MODELS),
                    problem_set="favorites",
                    node="n",
                    rollouts=ROLLOUTS,
                )
            ],
        )

        async def writer(w: int) -> None:
            for n in range(w, ROLLOUTS, 20):
                rid = f"r{n:06d}"
                passed = n % 3 == 0
                await store.append(
                    rollout_stream(rid),
                    [
                        RolloutRequested(
                            rollout_id=rid,
                            run_id="run-1",
                            provider="p",
                            model=MODELS[n % 2],
                            problem_id=f"p{n % 10}",
                            problem_hash="h",
                            sample=n // 10,
                            attempt=1,
                            request={"messages": [{"role": "user", "content": "solve it " * 40}]},
                            node="n",
                        ),
                        RolloutResponded(
                            rollout_id=rid, attempt=1, text="def f(): pass\n" * 30, cost_usd=0.01
                        ),
                        RolloutScored(
                            rollout_id=rid, passed=passed, score=float(passed), scorer="python-function"
                        ),
                        PublicationDecided(
                            rollout_id=rid, audience="subscribers", not_before="2026-01-01T00:00:00.000000Z"
                        ),
                    ],
                )

        async with anyio.create_task_group() as tg:
            for w in range(20):
                tg.start_soon(writer, w)
        await store.append(
            run_stream("run-1"),
            [
                RunFinished(
                    run_id="run-1",
                    status="completed",
                    rollouts=ROLLOUTS,
                    passed=(ROLLOUTS + 2) // 3,
                    cost_usd=0.01 * ROLLOUTS,
                )
            ],
        )
        return await store.head()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fn, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Call ``fn`` until it returns something truthy (exceptions count as not yet); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            v = fn()
        except httpx.TransportError as e:
            v, last = None, e
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def test_listens_and_reports_progress_before_the_read_models_are_built(tmp_path: Path) -> None:
    key = new_key()
    db = tmp_path / "events.db"
    head = anyio.run(build_log, db, key)
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    projections = tmp_path / "projections.db"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\nprojections = "{projections}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
    )
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {key}"}

    # Another process builds the projections (it holds the build lock), and holds the
    # write lock of the file in use.
    holder = sqlite3.connect(projections, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    builder = tmp_path / "projections.gen" / "build.lock"
    builder.parent.mkdir()
    building = builder.open("w")
    fcntl.flock(building, fcntl.LOCK_EX)

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    received: list[str] = []

    def expect(word: str) -> str:
        while not any(word in m for m in received):
            received.append(sock.recv(4096).decode())
        return next(m for m in received if word in m)

    err_file = tmp_path / "serve.err"
    with err_file.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
        )
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            first = poll(lambda: c.get("/healthz"), 60, "the first /healthz")
            assert first.status_code == 200
            body = first.json()
            assert body["status"] == "ok"
            assert body["projections"]["state"] == "building", body
            # READY=1 came with the server listening, before the read models are built;
            # the progress follows in STATUS= lines.
            assert "READY=1" in expect("READY=1")
            assert "read models" in expect("STATUS=listening; read models")

            for path, headers in (
                ("/v1/report?by=model", auth),
                ("/v1/feed", auth),
                ("/public/", {}),
                ("/public/results.jsonl", {}),
                # the operator's console (loopback: the operator) reads the same read models
                ("/ops/", {}),
                ("/ops/runs/run-1", {}),
                ("/ops/problems", {}),
                ("/ops/schedules", {}),
                ("/ops/subscribers", {}),
                ("/ops/progress", {}),
            ):
                r = c.get(path, headers=headers)
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert r.headers["retry-after"].isdigit(), path
                assert 1 <= int(r.headers["retry-after"]) <= 60
                assert r.json()["error"] == "unavailable"
                assert "being built" in r.json()["message"]
            # A key that is not valid is still 503, not 401: nothing is decided on read
            # models that are not there yet.
            assert c.get("/v1/report", headers={"authorization": "Bearer rw_nope"}).status_code == 503
            assert c.get("/healthz").json()["projections"]["state"] == "building"

            holder.execute("ROLLBACK")
            holder.close()
            building.close()

            poll(
                lambda: c.get("/healthz").json()["projections"]["state"] == "current",
                120,
                "the read models to be current",
            )
            r = c.get("/v1/report?by=model", headers=auth)
            assert r.status_code == 200, r.text
            rows = {row["model"]: row for row in r.json()}
            assert set(rows) == set(MODELS)
            assert sum(row["rollouts"] for row in rows.values()) == ROLLOUTS
            assert sum(row["passed"] for row in rows.values()) == (ROLLOUTS + 2) // 3
            assert c.get("/public/").status_code == 200
            assert c.get("/ops/runs/run-1").status_code == 200
            feed = c.get("/v1/feed", headers=auth)
            assert feed.status_code == 403  # the key's scope is report only: authorised as usual again
        assert "serving on" in expect("STATUS=serving")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    lines = [json.loads(ln) for ln in err_file.read_text().splitlines() if ln.startswith("{")]
    names = [ln["event"] for ln in lines]
    assert names.index("daemon_listening") < names.index("projections_current") < names.index("daemon_ready")
    progress = [ln for ln in lines if ln["event"] == "projections_catching_up"]
    assert progress, "no progress line while the read models were locked"
    assert {"phase", "seq", "head", "percent", "events_per_s", "eta_s"} <= progress[0].keys()
    done = next(ln for ln in lines if ln["event"] == "projections_current")
    assert done["seq"] >= head
    # The reports' first answers were made once the read models were current.
    primed = next(ln for ln in lines if ln["event"] == "reports_primed")
    assert names.index("projections_current") < names.index("reports_primed")
    assert primed["head"] >= head
    # And the public view, once the log passed the check at start, before daemon_ready.
    assert names.index("projections_current") < names.index("public_primed") < names.index("daemon_ready")
    assert "public_not_primed" not in names


def test_progress_figures() -> None:
    """The figures /healthz, the log and STATUS= show: percent of the events to apply, rate, time left."""
    from rollwatch.projections import CatchUpProgress

    p = CatchUpProgress(first=100, target=1100, done=100, started=0.0)
    assert p.figures(now=5.0) == {
        "phase": "catching up",
        "seq": 100,
        "head": 1100,
        "percent": 0.0,
        "events_per_s": None,
        "eta_s": None,
    }
    p.done = 600
    f = p.figures(now=10.0)
    assert (f["percent"], f["events_per_s"], f["eta_s"]) == (50.0, 50, 10.0)
    p.done = 1100
    assert p.figures(now=20.0)["percent"] == 100.0
    assert p.figures(now=20.0)["eta_s"] == 0.0
    setting_up = CatchUpProgress(first=0, target=0, done=0, started=0.0, phase="setting up")
    assert setting_up.figures(now=1.0)["percent"] == 0.0
    # An empty log caught up at once is complete, not stuck at 0%.
    assert CatchUpProgress(first=0, target=0, done=0, started=0.0).figures(now=1.0)["percent"] == 100.0
