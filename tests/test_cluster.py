"""Several daemons on one PostgreSQL log: one leader fires the schedules; another takes over."""

from __future__ import annotations

import itertools
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


def node_config(
    tmp_path: Path,
    name: str,
    url: str,
    base_url: str,
    *,
    rollouts: int = 1,
    concurrency: int = 4,
    cluster: str = "",
    budget: float | None = None,
) -> Path:
    d = tmp_path / name
    d.mkdir()
    cfg = d / "rollwatch.toml"
    cfg.write_text(f"""
node = "{name}"
{cluster}
[integrity]
key_file = "{tmp_path / "checkpoint.key"}"
checkpoint_every = 10
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
max_concurrency = {concurrency}
[providers.prices]
"m1" = {{ input = 1.0, output = 2.0 }}
[[schedules]]
name = "fake-often"
provider = "fake"
models = ["m1"]
problem_set = "favorites"
rollouts = {rollouts}
every = "1h"
{f"budget_usd = {budget}" if budget is not None else ""}
[schedules.params]
max_tokens = 50
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


async def events_of(url: str, *types: str) -> list[dict[str, object]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT type, data FROM events WHERE type = ANY($1::text[]) ORDER BY seq", list(types)
        )
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()
    return [{"type": r["type"], **json.loads(r["data"])} for r in rows]


async def test_rollouts_spread_over_nodes_and_a_dead_nodes_work_is_taken_over(tmp_path: Path) -> None:
    """Two daemons, one run of 40 rollouts: both nodes request rollouts; one is killed
    mid-run, the other takes its chunks over once their lease runs out and finishes the
    run; no rollout is answered or scored twice, and RunFinished is recorded once."""
    gen = _provider(tmp_path, 0.3)
    base_url, served = next(gen)
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {n: tmp_path / f"{n}.log" for n in ("node-a", "node-b")}
    try:
        async with scratch_database() as url:
            cfgs = {
                n: node_config(
                    tmp_path,
                    n,
                    url,
                    base_url,
                    rollouts=4,
                    concurrency=2,
                    cluster='[cluster]\nlease = "2s"\nchunk = 1',
                )
                for n in logs
            }
            for n, cfg in cfgs.items():
                with logs[n].open("wb") as err:
                    procs[n] = subprocess.Popen(
                        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "2"],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
            # Both nodes at work on the one run: then kill one of them.
            with anyio.fail_after(90):
                while True:
                    requested = await events_of(url, "RolloutRequested")
                    by_node = {n: sum(1 for e in requested if e["node"] == n) for n in logs}
                    if min(by_node.values()) >= 3:
                        break
                    await anyio.sleep(0.1)
            victim, survivor = "node-a", "node-b"
            procs[victim].kill()
            procs[victim].wait()
            killed_at = len(await events_of(url, "RolloutRequested"))
            with anyio.fail_after(90):
                while not await events_of(url, "RunFinished"):
                    await anyio.sleep(0.2)
            runs = await events_of(url, "RunStarted")
            finished = await events_of(url, "RunFinished")
            assert len(runs) == 1
            assert len(finished) == 1
            fin = finished[0]
            assert fin["status"] == "completed", fin
            assert fin["rollouts"] == fin["scored"] == fin["planned"] == 40
            requested = await events_of(url, "RolloutRequested")
            assert {e["node"] for e in requested} == {victim, survivor}
            # The survivor requested rollouts after the kill: its own and the victim's.
            assert len(requested) > killed_at
            answered = [e["rollout_id"] for e in await events_of(url, "RolloutResponded")]
            scored = [e["rollout_id"] for e in await events_of(url, "RolloutScored")]
            assert len(answered) == len(set(answered)) == 40
            assert len(scored) == len(set(scored)) == 40
            # The provider answered each rollout once, plus at most the victim's requests
            # in flight when it died (its concurrency limit).
            lines = served.read_text().splitlines()
            assert 40 <= len(lines) <= 40 + 2
            procs[survivor].send_signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(lambda: procs[survivor].wait(30)) == 0
            survivor_log = logs[survivor].read_text()
            assert "chunk_taken_over" in survivor_log
            # One series of checkpoints, signed by whichever node led, under the shared
            # key: verify checks the chain, the tree and every signature.
            assert "checkpoint_foreign_key" not in survivor_log + logs[victim].read_text()
            signers = [e["node"] for e in await events_of(url, "CheckpointSigned")]
            assert signers, signers
            assert set(signers) <= {victim, survivor}
            # One signer at a time: the series changes hands at most once (at the kill).
            assert sum(a != b for a, b in itertools.pairwise(signers)) <= 1, signers
            res = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [sys.executable, "-m", "rollwatch", "--config", str(cfgs[survivor]), "verify"],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=60,
                )
            )
            assert res.returncode == 0, res.stdout + res.stderr
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for _ in gen:
            pass


async def test_a_budget_holds_across_nodes(tmp_path: Path) -> None:
    """Two daemons share one run with a budget: together they stop at it, one node
    records budget_exhausted, and neither is left waiting for the other."""
    gen = _provider(tmp_path, 0.1)
    base_url, _ = next(gen)
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with scratch_database() as url:
            for n in ("node-a", "node-b"):
                cfg = node_config(
                    tmp_path,
                    n,
                    url,
                    base_url,
                    rollouts=5,
                    concurrency=2,
                    budget=0.006,
                    cluster='[cluster]\nlease = "2s"\nchunk = 1',
                )
                procs[n] = subprocess.Popen(
                    [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "2"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            with anyio.fail_after(90):
                while not (finished := await events_of(url, "RunFinished")):
                    await anyio.sleep(0.2)
            [fin] = finished
            assert fin["status"] == "budget_exhausted", fin
            assert 0 < int(fin["rollouts"]) < int(fin["planned"]) == 50
            costs = [float(e["cost_usd"]) for e in await events_of(url, "RolloutResponded")]
            assert float(fin["cost_usd"]) == pytest.approx(sum(costs))
            assert sum(costs) <= 0.006
            for p in procs.values():
                p.send_signal(signal.SIGTERM)
            for p in procs.values():
                assert await anyio.to_thread.run_sync(lambda p=p: p.wait(30)) == 0
            assert len(await events_of(url, "RunFinished")) == 1
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for _ in gen:
            pass


async def test_a_node_stopped_with_sigterm_hands_its_chunks_over_at_once(tmp_path: Path) -> None:
    """SIGTERM to one of two daemons mid-run: it finishes or hands back its chunks and
    exits 0; the other finishes the run long before the (30 s) lease would have run out."""
    gen = _provider(tmp_path, 0.3)
    base_url, _ = next(gen)
    env = {**os.environ, "FAKE_PROVIDER_KEY": "k"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with scratch_database() as url:
            for n in ("node-a", "node-b"):
                cfg = node_config(
                    tmp_path,
                    n,
                    url,
                    base_url,
                    rollouts=4,
                    concurrency=2,
                    cluster='[cluster]\nlease = "30s"\nchunk = 1',
                )
                procs[n] = subprocess.Popen(
                    [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "0"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            with anyio.fail_after(90):
                while True:
                    requested = await events_of(url, "RolloutRequested")
                    if min(sum(1 for e in requested if e["node"] == n) for n in procs) >= 3:
                        break
                    await anyio.sleep(0.1)
            procs["node-a"].send_signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(lambda: procs["node-a"].wait(30)) == 0
            with anyio.fail_after(25):
                while not await events_of(url, "RunFinished"):
                    await anyio.sleep(0.2)
            [fin] = await events_of(url, "RunFinished")
            assert fin["status"] == "completed"
            assert fin["scored"] == 40
            [interrupted] = await events_of(url, "RunInterrupted")
            assert interrupted["node"] == "node-a"
            answered = [e["rollout_id"] for e in await events_of(url, "RolloutResponded")]
            assert len(answered) == len(set(answered)) == 40
            procs["node-b"].send_signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(lambda: procs["node-b"].wait(30)) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for _ in gen:
            pass
