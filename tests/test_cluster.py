"""Several daemons on one PostgreSQL log: one leader fires the schedules; another takes over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.pg import scratch_database
from tests.test_daemon import ROOT, _provider, free_port

pytestmark = pytest.mark.anyio


def node_config(tmp_path: Path, name: str, url: str, base_url: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    cfg = d / "rollwatch.toml"
    cfg.write_text(f"""
node = "{name}"
[store]
url = "{url}"
projections = "{d / "projections.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[scoring]
workers = 1
[[problem_sets]]
name = "favorites"
path = "{ROOT / "config" / "problems"}"
[[providers]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_PROVIDER_KEY"
max_concurrency = 4
[[schedules]]
name = "fake-often"
provider = "fake"
models = ["m1"]
problem_set = "favorites"
rollouts = 1
every = "1h"
""")
    return cfg


async def started_runs(url: str) -> list[dict[str, object]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT data FROM events WHERE type = 'RunStarted' ORDER BY seq")
        fin = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'RunFinished'")
    except asyncpg.UndefinedTableError:
        return []  # the first daemon has not created the log yet
    finally:
        await conn.close()
    return [{**json.loads(r["data"]), "_finished": fin} for r in rows]


async def test_one_leader_fires_and_another_takes_over(tmp_path: Path) -> None:
    """Two daemons, one schedule: one run, by one node; kill that node, and a trigger is
    fired by the other, which took the leadership over."""
    gen = _provider(tmp_path, 0.05)
    base_url, _ = next(gen)
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with scratch_database() as url:
            cfgs = {n: node_config(tmp_path, n, url, base_url) for n in ("node-a", "node-b")}
            for n, cfg in cfgs.items():
                procs[n] = subprocess.Popen(
                    [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "2"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            with anyio.fail_after(90):
                while True:
                    runs = await started_runs(url)
                    if runs and runs[0]["_finished"]:
                        break
                    await anyio.sleep(0.2)
            runs = await started_runs(url)
            assert len(runs) == 1
            leader = str(runs[0]["node"])
            other = "node-b" if leader == "node-a" else "node-a"
            procs[leader].kill()
            procs[leader].wait()
            res = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "rollwatch",
                        "--config",
                        str(cfgs[other]),
                        "schedules",
                        "trigger",
                        "fake-often",
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=60,
                )
            )
            assert res.returncode == 0, res.stderr
            with anyio.fail_after(60):
                while len(runs := await started_runs(url)) < 2:
                    await anyio.sleep(0.2)
            assert runs[1]["node"] == other
            assert len(runs) == 2
            procs[other].send_signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(lambda: procs[other].wait(30)) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for _ in gen:
            pass
