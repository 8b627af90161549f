"""Several daemons on one PostgreSQL log: one leader fires the schedules, every node
claims chunks of the runs, and a dead or stopped node's work goes to the others."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from rollwatch.events import parse_rfc3339
from tests.helpers import rollwatch
from tests.pg import ADMIN_URL, scratch_database
from tests.publication.test_clock import LIBFAKETIME
from tests.test_daemon import ROOT, _provider, free_port

pytestmark = pytest.mark.anyio

ENV = {**os.environ, "FAKE_PROVIDER_KEY": "k"}


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
    retry: str = "60s",
    problems: Path | None = None,
    scoring: str = "",
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
retry = "{retry}"
[server]
listen = "127.0.0.1:{free_port()}"
[scoring]
workers = 1
{scoring}
[[problem_sets]]
name = "favorites"
path = "{problems or ROOT / "config" / "problems"}"
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


@dataclass
class Cluster:
    """Daemons on one scratch database, with their configs and stderr logs."""

    url: str
    cfgs: dict[str, Path]
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]]
    served: Path
    """One line per request the fake provider answered."""

    async def events(self, *types: str) -> list[dict[str, Any]]:
        """The data of every event of ``types``, in seq order (with its ``type``)."""
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(
                "SELECT type, data FROM events WHERE type = ANY($1::text[]) ORDER BY seq", list(types)
            )
        except asyncpg.UndefinedTableError:
            return []  # no daemon has created the log yet
        finally:
            await conn.close()
        return [{"type": r["type"], **json.loads(r["data"])} for r in rows]

    async def until(self, timeout: float, *types: str, enough: Any = bool) -> list[dict[str, Any]]:
        """Poll the events of ``types`` until ``enough(events)`` holds; return them. On a
        timeout, the failure shows what each node logged last (a flake under load, named)."""
        try:
            with anyio.fail_after(timeout):
                while not enough(evs := await self.events(*types)):
                    await anyio.sleep(0.1)
        except TimeoutError:
            tails = "\n".join(
                f"--- {name}:\n{log.read_text(errors='replace')[-2500:] if log.exists() else '(no log)'}"
                for name, log in self.logs.items()
            )
            raise AssertionError(
                f"no {types} enough after {timeout} s; the nodes' logs end:\n{tails}"
            ) from None
        return evs

    def release(self) -> None:
        """Let the provider answer the requests it holds (``hold_after``), and all later ones."""
        self.served.with_name(self.served.name + ".release").touch()

    async def both_at_work(self, each: int = 3) -> None:
        """Wait until every node has requested at least ``each`` rollouts."""

        def enough(evs: list[dict[str, Any]]) -> bool:
            return all(sum(e["node"] == n for e in evs) >= each for n in self.procs)

        await self.until(90, "RolloutRequested", enough=enough)

    async def health(self, node: str, enough: Callable[[httpx.Response], bool], timeout: float = 30) -> None:
        """Poll ``node``'s /healthz until ``enough(response)``."""
        port = re.search(r'listen = "127.0.0.1:(\d+)"', self.cfgs[node].read_text())
        assert port is not None
        async with httpx.AsyncClient(timeout=5) as client:
            r: httpx.Response | None = None
            refused = ""
            with anyio.move_on_after(timeout):
                while True:
                    try:
                        r = await client.get(f"http://127.0.0.1:{port[1]}/healthz")
                    except httpx.TransportError as e:  # not listening (exited?): its log says why
                        refused = f"{type(e).__name__}: {e}"
                        if self.procs[node].poll() is not None:
                            break
                    else:
                        refused = ""
                        if enough(r):
                            assert r.json()["status"] in ("ok", "degraded"), r.text
                            return
                    await anyio.sleep(0.1)
        last = refused or ("no answer" if r is None else f"{r.status_code} {r.text}")
        if (code := self.procs[node].poll()) is not None:
            last += f" (the process exited with {code})"
        # Its log without the access lines (the polling above fills the tail with them).
        lines = self.logs[node].read_text(errors="replace").splitlines() if node in self.logs else []
        log = "\n".join(x for x in lines if '"http_request"' not in x)[-6000:]
        raise AssertionError(f"{node}'s /healthz within {timeout} s: last {last}\n{node}'s log:\n{log}")

    def kill(self, node: str) -> None:
        self.procs[node].kill()
        self.procs[node].wait()

    async def stop(self, node: str) -> int:
        self.procs[node].send_signal(signal.SIGTERM)
        return await anyio.to_thread.run_sync(lambda: self.procs[node].wait(30))

    async def cli(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        return await anyio.to_thread.run_sync(
            lambda: rollwatch("--config", str(self.cfgs[node]), *args, env=ENV, timeout=60)
        )


@asynccontextmanager
async def cluster(
    tmp_path: Path,
    *,
    delay: float,
    grace: str = "2",
    nodes: tuple[str, ...] = ("node-a", "node-b"),
    edit: Callable[[str, str], str] | None = None,
    prefix: dict[str, list[str]] | None = None,
    hold_after: int | None = None,
    **cfg: Any,
) -> AsyncIterator[Cluster]:
    """A fake provider answering after ``delay`` s and ``nodes`` running ``serve`` on a new
    database (``cfg``: see ``node_config``); everything is killed on exit. ``edit(node,
    toml)`` returns a node's config text as it is to be; ``prefix[node]`` is a command
    put before that node's ``python`` (faketime, say). ``hold_after``: the provider holds
    every request after that many answers until ``served`` + ``.release`` exists."""
    gen = _provider(tmp_path, delay, hold_after)
    base_url, served = next(gen)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with scratch_database() as url:
            cfgs = {n: node_config(tmp_path, n, url, base_url, **cfg) for n in nodes}
            if edit is not None:
                for n, path in cfgs.items():
                    path.write_text(edit(n, path.read_text()))
            logs = {n: tmp_path / f"{n}.log" for n in nodes}
            for n in nodes:
                with logs[n].open("wb") as err:
                    procs[n] = subprocess.Popen(
                        [
                            *(prefix or {}).get(n, []),
                            sys.executable,
                            "-m",
                            "rollwatch",
                            "--config",
                            str(cfgs[n]),
                            "serve",
                            "--grace",
                            grace,
                        ],
                        env=ENV,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
            yield Cluster(url, cfgs, logs, procs, served)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for _ in gen:
            pass


def answered_once(evs: list[dict[str, Any]], n: int) -> None:
    ids = [e["rollout_id"] for e in evs]
    assert len(ids) == len(set(ids)) == n


FAST_LEASE = '[cluster]\nlease = "2s"\nchunk = 1'


async def test_one_leader_fires_and_another_takes_over(tmp_path: Path) -> None:
    """Two daemons, one schedule: one run per period; kill the node that started it, and
    a trigger is fired by the other, which took the leadership over."""
    async with cluster(tmp_path, delay=0.05) as c:
        await c.until(90, "RunFinished")
        [run] = await c.events("RunStarted")
        leader = str(run["node"])
        other = "node-b" if leader == "node-a" else "node-a"
        c.kill(leader)
        res = await c.cli(other, "schedules", "trigger", "fake-often")
        assert res.returncode == 0, res.stderr
        runs = await c.until(60, "RunStarted", enough=lambda evs: len(evs) >= 2)
        assert [r["node"] for r in runs] == [leader, other]
        assert await c.stop(other) == 0


async def test_a_stopped_leader_loses_the_leadership_after_the_lease(tmp_path: Path) -> None:
    """The leader stopped (SIGSTOP: a frozen VM keeps its TCP connection open): after
    ``cluster.lease`` the database ends its idle session, the other node takes the
    leadership over and fires a trigger. Woken up, the old leader finds it lost and fires
    nothing more. Before, a stopped leader led until it resumed: nothing fired meanwhile."""
    async with cluster(tmp_path, delay=0.05, cluster='[cluster]\nlease = "3s"') as c:
        await c.until(90, "RunFinished")
        [run] = await c.events("RunStarted")
        leader = str(run["node"])
        other = "node-b" if leader == "node-a" else "node-a"
        c.procs[leader].send_signal(signal.SIGSTOP)
        try:
            res = await c.cli(other, "schedules", "trigger", "fake-often")
            assert res.returncode == 0, res.stderr
            runs = await c.until(60, "RunStarted", enough=lambda evs: len(evs) >= 2)
            assert [r["node"] for r in runs] == [leader, other]
        finally:
            c.procs[leader].send_signal(signal.SIGCONT)
        with anyio.fail_after(30):
            while "leadership_lost" not in c.logs[leader].read_text():
                await anyio.sleep(0.1)
        await c.until(60, "RunFinished", enough=lambda evs: len(evs) >= 2)
        assert [r["node"] for r in await c.events("RunStarted")] == [leader, other]
        assert await c.stop(leader) == 0
        assert await c.stop(other) == 0
        assert "Traceback" not in c.logs[leader].read_text()


async def test_a_node_that_lost_the_lead_while_its_signer_failed_says_ok_again(tmp_path: Path) -> None:
    """The checkpoint signer of the node leading "checkpoints" fails (its state folder, on
    a tmpfs of its own, turns read-only: the witness file cannot be written), so its
    /healthz says no checkpoint can be signed. It is stopped past the lease, the other node
    takes the lead and signs; woken, it no longer signs, so it no longer says so: its
    /healthz is ok again. Before, it said it for as long as it ran (what the database
    outage test met now and then, when the outage moved the lead to the other node)."""
    states = {n: tmp_path / f"{n}-state" for n in ("node-a", "node-b")}
    mounted: list[Path] = []
    try:
        for d in states.values():
            d.mkdir()
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True
            )
            if done.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
            mounted.append(d)
        prefix = {n: ["env", f"STATE_DIRECTORY={d}"] for n, d in states.items()}
        async with cluster(
            tmp_path, delay=0.2, rollouts=4, concurrency=2, cluster=FAST_LEASE, prefix=prefix
        ) as c:
            signed = await c.until(90, "CheckpointSigned")
            leader = str(signed[0]["node"])
            other = "node-b" if leader == "node-a" else "node-a"
            remount = ["mount", "-o", "remount,{}", str(states[leader])]
            subprocess.run([x.format("ro") for x in remount], check=True)
            await c.health(
                leader, lambda r: r.status_code == 503 and "no checkpoint can be signed" in r.text, timeout=60
            )
            c.procs[leader].send_signal(signal.SIGSTOP)
            try:
                before = len(await c.events("CheckpointSigned"))
                await c.until(
                    60, "CheckpointSigned", enough=lambda evs: any(e["node"] == other for e in evs[before:])
                )
                subprocess.run([x.format("rw") for x in remount], check=True)
            finally:
                c.procs[leader].send_signal(signal.SIGCONT)
            with anyio.fail_after(30):
                while "leadership_lost" not in c.logs[leader].read_text():
                    await anyio.sleep(0.1)
            await c.health(leader, lambda r: r.status_code == 200, timeout=30)
            await c.until(90, "RunFinished")
            for node in c.procs:
                assert await c.stop(node) == 0
    finally:
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)], check=False)


async def test_rollouts_spread_over_nodes_and_a_dead_nodes_work_is_taken_over(tmp_path: Path) -> None:
    """Two daemons, one run of 40 rollouts: both nodes request rollouts; one is killed
    mid-run, the other takes its chunks over once their lease runs out and finishes the
    run; no rollout is answered or scored twice, and RunFinished is recorded once."""
    victim, survivor = "node-a", "node-b"
    # Requests held until both nodes are at work (hold_after=0): under load one node could
    # otherwise ask for every rollout before the other had started.
    async with cluster(tmp_path, delay=0.3, rollouts=4, concurrency=2, cluster=FAST_LEASE, hold_after=0) as c:
        await c.both_at_work(each=2)
        c.kill(victim)
        c.release()
        killed_at = len(await c.events("RolloutRequested"))
        await c.until(90, "RunFinished")
        assert len(await c.events("RunStarted")) == 1
        [fin] = await c.events("RunFinished")
        assert fin["status"] == "completed", fin
        assert fin["rollouts"] == fin["scored"] == fin["planned"] == 40
        requested = await c.events("RolloutRequested")
        assert {e["node"] for e in requested} == {victim, survivor}
        # The survivor requested rollouts after the kill: its own and the victim's.
        assert len(requested) > killed_at
        answered_once(await c.events("RolloutResponded"), 40)
        answered_once(await c.events("RolloutScored"), 40)
        # The provider answered each rollout once, plus at most the victim's requests
        # in flight when it died (its concurrency limit).
        assert 40 <= len(c.served.read_text().splitlines()) <= 40 + 2
        assert await c.stop(survivor) == 0
        survivor_log = c.logs[survivor].read_text()
        assert "chunk_taken_over" in survivor_log
        # One series of checkpoints, signed by whichever node led, under the shared
        # key: verify checks the chain, the tree and every signature.
        assert "checkpoint_foreign_key" not in survivor_log + c.logs[victim].read_text()
        signers = [e["node"] for e in await c.events("CheckpointSigned")]
        assert signers
        assert set(signers) <= {victim, survivor}
        # One signer at a time: the series changes hands at most once (at the kill).
        assert sum(a != b for a, b in itertools.pairwise(signers)) <= 1, signers
        res = await c.cli(survivor, "verify")
        assert res.returncode == 0, res.stdout + res.stderr


async def test_a_node_stopped_with_sigterm_hands_its_chunks_over_at_once(tmp_path: Path) -> None:
    """SIGTERM to one of two daemons mid-run: it hands back its chunks and exits 0; the
    other finishes the run long before the (30 s) lease would have run out."""
    lease = '[cluster]\nlease = "30s"\nchunk = 1'
    async with cluster(
        tmp_path, delay=0.3, grace="0", rollouts=4, concurrency=2, cluster=lease, hold_after=0
    ) as c:
        await c.both_at_work(each=2)
        assert await c.stop("node-a") == 0
        c.release()
        [fin] = await c.until(25, "RunFinished")
        assert fin["status"] == "completed"
        assert fin["scored"] == 40
        [interrupted] = await c.events("RunInterrupted")
        assert interrupted["node"] == "node-a"
        answered_once(await c.events("RolloutResponded"), 40)
        assert await c.stop("node-b") == 0


async def test_a_budget_holds_across_nodes(tmp_path: Path) -> None:
    """Two daemons share one run with a budget: together they stop at it, one node
    records the run's end (partial: budget_exhausted), and neither is left waiting for the other."""
    async with cluster(tmp_path, delay=0.1, rollouts=5, concurrency=2, budget=0.006, cluster=FAST_LEASE) as c:
        [fin] = await c.until(90, "RunFinished")
        assert fin["status"] == "partial", fin  # SPEC §7
        assert fin["message"].startswith("budget_exhausted: "), fin
        assert fin["failures"]["budget_exhausted"] > 0, fin
        assert 0 < int(fin["rollouts"]) < int(fin["planned"]) == 50
        costs = [float(e["cost_usd"]) for e in await c.events("RolloutResponded")]
        assert float(fin["cost_usd"]) == pytest.approx(sum(costs))
        assert sum(costs) <= 0.006
        for node in ("node-a", "node-b"):
            assert await c.stop(node) == 0, c.logs[node].read_text()[-3000:]
        assert len(await c.events("RunFinished")) == 1


@pytest.mark.parametrize("outage", ["blips", "down"])
async def test_runs_survive_the_database_going_away(tmp_path: Path, outage: str) -> None:
    """Mid-run, the database drops every connection: again and again for a second
    ("blips", which the retries ride out), or refuses all of them for four seconds
    ("down", which outlasts a 1 s retry: operations fail, runs crash and are resumed from
    the log, background loops wait; /healthz answers 503 saying the database is out of
    reach, then 200 again). The daemons stay up, and the run completes with every rollout
    answered once."""
    retry = "60s" if outage == "blips" else "1s"
    async with cluster(
        tmp_path, delay=0.2, rollouts=4, concurrency=2, cluster=FAST_LEASE, retry=retry, hold_after=0
    ) as c:
        await c.both_at_work(each=2)
        c.release()
        db = c.url.rpartition("/")[2]
        terminate = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()"
        )
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            if outage == "blips":
                with anyio.move_on_after(1.0):
                    while True:
                        await admin.execute(terminate, db)
                        await anyio.sleep(0.05)
            else:
                await admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
                try:
                    await admin.execute(terminate, db)
                    down = anyio.current_time()
                    # /healthz says what is wrong while it lasts (it said ok before).
                    for node in c.procs:
                        await c.health(node, lambda r: r.status_code == 503 and "out of reach" in r.text)
                    await anyio.sleep(max(0.0, 4.0 - (anyio.current_time() - down)))
                finally:
                    await admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        finally:
            await admin.close()
        if outage == "down":
            # The signer tries again 5 s after each failure; under a full suite's load a node
            # once stayed 503 past 30 s (its signer's outage error): 90 s, then its log if not.
            for node in c.procs:
                await c.health(node, lambda r: r.status_code == 200, timeout=90)
        [fin] = await c.until(90, "RunFinished")
        assert fin["status"] == "completed", fin
        assert fin["scored"] == 40
        answered_once(await c.events("RolloutResponded"), 40)
        answered_once(await c.events("RolloutScored"), 40)
        for node in c.procs:
            assert c.procs[node].poll() is None, f"{node} exited"
            assert await c.stop(node) == 0
        res = await c.cli("node-a", "verify")
        assert res.returncode == 0, res.stdout + res.stderr


async def test_only_the_leader_rescores_a_changed_problem(tmp_path: Path) -> None:
    """Two daemons with ``scoring.rescore = "auto"``; a problem's tests change after a
    run and both get SIGHUP: the leader records the new version and re-scores the
    problem's rollout once; the other node leaves it to the leader (no duplicate)."""
    problems = tmp_path / "problems"
    shutil.copytree(ROOT / "config" / "problems", problems)
    async with cluster(tmp_path, delay=0.05, problems=problems, scoring='rescore = "auto"') as c:
        [fin] = await c.until(90, "RunFinished")
        assert fin["status"] == "completed", fin
        [run] = await c.events("RunStarted")
        leader = str(run["node"])
        other = "node-b" if leader == "node-a" else "node-a"
        tests = problems / "lis-length" / "tests.py"
        tests.write_text(tests.read_text() + "\n    assert candidate([]) == 0\n")
        for p in c.procs.values():
            p.send_signal(signal.SIGHUP)

        def logged(node: str, event: str) -> bool:
            lines = (json.loads(x) for x in c.logs[node].read_text().splitlines() if x.startswith("{"))
            return any(e.get("event") == event and e.get("trigger") == "sighup" for e in lines)

        with anyio.fail_after(90):
            while not (logged(leader, "problems_checked") and logged(other, "problems_check_left_to_leader")):
                await anyio.sleep(0.1)
        versioned = await c.events("ProblemVersioned")
        assert [(e["problem_id"], e["node"]) for e in versioned] == [("lis-length", leader)]
        rescored = await c.events("RolloutRescored")
        assert [e["problem_id"] for e in rescored] == ["lis-length"]
        for node in c.procs:
            assert c.procs[node].poll() is None, f"{node} exited"


def passing_problems(tmp_path: Path) -> Path:
    """Two problems that the fake provider's answer (``solve() -> 42``) passes."""
    problems = tmp_path / "problems"
    for name in ("p1", "p2"):
        d = problems / name
        d.mkdir(parents=True)
        (d / "problem.toml").write_text(
            f'title = "{name}"\nreleased = 2026-01-01\nprompt = "def solve() -> int: ..."\n'
            '[scorer]\nkind = "python-function"\nentry_point = "solve"\ntests = "tests.py"\n'
            '[reference]\nsolution = "solution.py"\n'
        )
        (d / "tests.py").write_text("def check(candidate):\n    assert candidate() == 42\n")
        (d / "solution.py").write_text("def solve():\n    return 42\n")
    return problems


async def exited(c: Cluster, node: str, timeout: float = 60) -> int:
    """Wait for ``node`` to exit on its own; its exit status."""
    with anyio.fail_after(timeout):
        while (code := c.procs[node].poll()) is None:
            await anyio.sleep(0.1)
    return code


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
@pytest.mark.parametrize("offset", ["+100d", "-100d"])
async def test_a_node_whose_clock_is_off_the_databases_does_not_start(tmp_path: Path, offset: str) -> None:
    """Two daemons, one with its clock 100 days ahead or behind (faketime), passes to
    release after a 90-day embargo: the skewed node refuses to start (exit 2, saying
    why), so nothing is released early. (Before, a node 100 days ahead released the
    other's passes at once, and one behind decided embargoes that had ended already.)"""
    prefix = {"node-b": ["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", offset]}
    async with cluster(
        tmp_path, delay=0.05, rollouts=4, problems=passing_problems(tmp_path), prefix=prefix
    ) as c:
        assert await exited(c, "node-b") == 2
        err = c.logs["node-b"].read_text()
        assert "clock of the log's database server" in err, err[-2000:]
        assert "Traceback" not in err
        [fin] = await c.until(90, "RunFinished")
        assert fin["status"] == "completed", fin
        assert fin["passed"] == 8, fin
        decided = await c.events("PublicationDecided")
        assert len([d for d in decided if d["audience"] == "public"]) == 8
        assert {e["node"] for e in await c.events("RolloutRequested")} == {"node-a"}
        assert await c.stop("node-a") == 0
        assert await c.events("PublicReleased") == []


def signing_keys(cps: list[dict[str, Any]]) -> set[str]:
    """The key IDs whose signatures the checkpoints' notes carry."""
    out = set()
    for cp in cps:
        for line in str(cp["note"]).splitlines():
            if line.startswith("\u2014 "):
                out.add(base64.b64decode(line.split()[-1])[:4].hex())
    return out


@pytest.mark.parametrize("start", ["later", "together"])
async def test_a_node_with_another_checkpoint_key_signs_nothing(tmp_path: Path, start: str) -> None:
    """node-b holds another checkpoint key than node-a. Started once node-a has signed,
    or at the same time and then left to lead once node-a (which signed first) is
    killed: node-b exits 2 naming the key, never signs (one series, one key), and does
    not call the log tampered. (Before: started later, it called node-a's checkpoints
    forgeries and stopped as if tampered with; started together, it took over and
    signed a second series under its own key.)"""
    gate = tmp_path / "start-b"
    prefix = {"node-b": ["sh", "-c", f'until [ -e "{gate}" ]; do sleep 0.1; done; exec "$@"', "sh"]}

    def edit(node: str, toml: str) -> str:
        return toml.replace("checkpoint.key", "b.key") if node == "node-b" else toml

    async with cluster(
        tmp_path, delay=0.05, edit=edit, prefix=prefix if start == "later" else None, cluster=FAST_LEASE
    ) as c:
        if start == "later":
            await c.until(60, "CheckpointSigned")
            gate.touch()
            assert await exited(c, "node-b") == 2
        else:
            # Whichever node signed first holds the log's key; the other is the odd one.
            [first, *_] = await c.until(60, "CheckpointSigned")
            signer = str(first["node"])
            odd = "node-b" if signer == "node-a" else "node-a"
            c.kill(signer)
            assert await exited(c, odd) == 2
        odd = "node-b" if start == "later" else odd
        err = c.logs[odd].read_text()
        assert "needs the same checkpoint key" in err, err[-3000:]
        assert "tampered" not in err
        assert "Traceback" not in err
        cps = await c.events("CheckpointSigned")
        assert odd not in {cp["node"] for cp in cps}
        assert len(signing_keys(cps)) == 1


async def test_a_node_with_a_shorter_embargo_decides_the_runs_verdicts_with_the_runs(tmp_path: Path) -> None:
    """node-b is configured with no embargo, node-a (which starts the run) with 90 days.
    node-b joins the run and scores its share: every verdict's decisions carry the 90
    days the run was started with, and nothing is released. (Before, node-b decided its
    passes public at once, and its release job published them.)"""
    gate = tmp_path / "start-b"
    prefix = {"node-b": ["sh", "-c", f'until [ -e "{gate}" ]; do sleep 0.1; done; exec "$@"', "sh"]}

    def edit(node: str, toml: str) -> str:
        return toml + '[publication]\nembargo = "0s"\n' if node == "node-b" else toml

    # node-a's answers after its first two are held until node-b has requested a rollout
    # of the run: node-b scores a share however slowly it starts (with answers merely
    # slowed, a loaded machine once left it nothing to score).
    async with cluster(
        tmp_path,
        delay=0.05,
        rollouts=20,
        concurrency=2,
        problems=passing_problems(tmp_path),
        cluster=FAST_LEASE,
        edit=edit,
        prefix=prefix,
        hold_after=2,
    ) as c:
        [started] = await c.until(60, "RunStarted")
        assert started["node"] == "node-a"
        assert started["embargo_s"] == 90 * 86400
        gate.touch()
        await c.until(90, "RolloutRequested", enough=lambda evs: any(e["node"] == "node-b" for e in evs))
        c.served.with_name(c.served.name + ".release").touch()
        [fin] = await c.until(120, "RunFinished")
        assert fin["status"] == "completed", fin
        by = {e["rollout_id"]: e["node"] for e in await c.events("RolloutRequested")}
        assert set(by.values()) == {"node-a", "node-b"}, "node-b scored nothing: widen the run"
        decided = [d for d in await c.events("PublicationDecided") if d["audience"] != "subscribers"]
        assert len(decided) == 40
        assert {d["embargo_s"] for d in decided} == {90 * 86400}
        assert {d["audience"] for d in decided if by[d["rollout_id"]] == "node-b"} == {"public"}
        assert await c.stop("node-b") == 0
        assert await c.stop("node-a") == 0
        assert await c.events("PublicReleased") == []
        assert "run_embargo_differs" in c.logs["node-b"].read_text()


@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed")
async def test_a_node_whose_clock_steps_back_mid_run_decides_no_embargo_early(tmp_path: Path) -> None:
    """Two daemons on one log, a 90-day embargo; node-b's wall clock steps 100 days back
    once it is at work (after its checks at start). Every pass, node-b's too, is decided
    public no sooner than 90 days from now, and nothing is released. Before, node-b decided
    its passes public from 10 days ago, and node-a (right clock) released them at once."""
    offset = tmp_path / "faketime-b"
    offset.write_text("+0\n")
    prefix = {
        "node-b": [
            "env",
            f"LD_PRELOAD={LIBFAKETIME}",
            f"FAKETIME_TIMESTAMP_FILE={offset}",
            "FAKETIME_CACHE_DURATION=1",  # the step is seen within a second (see test_clock.serve)
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
        ]
    }
    before = datetime.now(UTC)
    async with cluster(
        tmp_path,
        delay=1.2,
        rollouts=16,
        concurrency=2,
        problems=passing_problems(tmp_path),
        cluster=FAST_LEASE,
        prefix=prefix,
        # Every request held until both nodes are at work: node-b (slower to start under
        # libfaketime) once joined after node-a had asked for every rollout (CI under load).
        hold_after=0,
    ) as c:
        await c.both_at_work(each=1)
        tmp = offset.with_suffix(".tmp")
        tmp.write_text("-100d\n")
        os.replace(tmp, offset)
        c.release()
        [fin] = await c.until(120, "RunFinished")
        assert fin["status"] == "completed", fin
        by = {e["rollout_id"]: e["node"] for e in await c.events("RolloutRequested")}
        public = [d for d in await c.events("PublicationDecided") if d["audience"] == "public"]
        assert len(public) == 32
        late_b = [d for d in public if by[d["rollout_id"]] == "node-b"]
        assert len(late_b) > 2, "node-b scored too little after its step: widen the run"
        early = [d for d in public if parse_rfc3339(d["not_before"]) < before + timedelta(days=90)]
        # A few of node-a's release passes.
        await anyio.sleep(2)
        released = {e["rollout_id"] for e in await c.events("PublicReleased")}
        assert not released, f"{len(released)} released, scored by {sorted({by[r] for r in released})}"
        assert not early, f"{len(early)} decided public early, by {[by[d['rollout_id']] for d in early]}"
        assert await c.stop("node-a") == 0
        assert await c.stop("node-b") == 0
