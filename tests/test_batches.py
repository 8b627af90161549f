"""Runs through provider batch APIs (``batch = true``): OpenAI Batch, Anthropic
Message Batches and Gemini batch mode, against a loopback server speaking each; then
SIGKILL of a ``rollwatch run`` at each stage of a batch's life, and a restart.

Real parts: the loopback batch server (``tests/providers/batch_server.py``), the
provider client, the SQLite log and projections, the sandboxed scoring pool, and for
the kill tests the ``rollwatch`` command in a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from rollwatch.config import Config, load_config
from rollwatch.daemon import open_services
from rollwatch.events import (
    BatchEnded,
    BatchPolled,
    BatchPrepared,
    BatchSubmitted,
    Event,
    Recorded,
    RolloutFailed,
    RolloutRequested,
    RolloutResponded,
    RunFinished,
    batch_stream,
)
from rollwatch.metrics import Metrics
from rollwatch.providers import ProviderClient, Usage
from rollwatch.runs import Run, unfinished_runs
from rollwatch.runs.services import BatchProgress, RunState
from rollwatch.store.postgres import PostgresEventStore
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.work import Chunk, LocalBoard
from tests.pg import scratch_database
from tests.providers.batch_server import Fate, batch_provider
from tests.providers.fakes import KEY, KEY_ENV
from tests.test_daemon import ROOT, daemon_toml, free_port
from tests.test_runs import events_of, wait_for

pytestmark = pytest.mark.anyio

MODEL = "gpt-x"
KINDS = ["openai", "anthropic", "gemini"]
#: Per kind: the states the first batch's polls record, and each batch's final state
#: (the first has an expired request, the second not).
STATES = {
    "openai": (["in_progress", "finalizing", "completed"], ["completed", "completed"]),
    "anthropic": (["in_progress", "ended"], ["ended", "ended"]),
    "gemini": (
        ["BATCH_STATE_RUNNING", "BATCH_STATE_EXPIRED"],
        ["BATCH_STATE_EXPIRED", "BATCH_STATE_SUCCEEDED"],
    ),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def write_config(
    tmp_path: Path,
    kind: str,
    url: str,
    *,
    poll: str = "20ms",
    enabled: bool = True,
    max_requests: int = 10000,
    timeout: str = "60s",
    models: tuple[str, ...] = (MODEL,),
) -> Path:
    """One rollout per favorites problem, batched, on a ``kind`` provider at ``url``."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        daemon_toml(tmp_path)
        + f"""
[[providers]]
name = "acme"
kind = "{kind}"
base_url = "{url}"
api_key_env = "{KEY_ENV}"
max_attempts = 3
backoff_base = "10ms"
backoff_max = "50ms"
batch_poll = "{poll}"
batch_linger = "300ms"
batch_max_requests = {max_requests}
timeout = "{timeout}"
[providers.prices]
"{MODEL}" = {{ input = 2.0, output = 10.0 }}
[[schedules]]
name = "nightly"
provider = "acme"
models = {json.dumps(list(models))}
problem_set = "favorites"
rollouts = 1
every = "24h"
batch = true
enabled = {"true" if enabled else "false"}
"""
    )
    return cfg


def first_batch_errs_and_expires(batch: int, index: int, custom_id: str) -> Fate:
    """In the first batch, request 0 gets an error and request 1 expires; all else answers."""
    if batch == 1 and index == 0:
        return "error"
    if batch == 1 and index == 1:
        return "expire"
    return "ok"


async def run_once(config: Config) -> RunFinished:
    async with open_services(config) as svc:
        run = await Run.start(svc, config.schedule("nightly"), trigger="manual")
        with anyio.fail_after(120):
            fin = await run.drive(grace=5)
    assert fin is not None
    return fin


class TestBatchRun:
    @pytest.mark.parametrize("kind", KINDS)
    async def test_batch_through_every_state_with_an_error_and_an_expiry(
        self, kind: str, tmp_path: Path
    ) -> None:
        """All rollouts go in one batch that moves through every state; its results
        answer all but two: an errored request fails for good, an expired one goes
        into a second batch (alone) and is answered there. Every step is in the log:
        BatchSubmitted (ids and attempts), BatchPolled per state change, BatchEnded
        with the unanswered rollout; answers cost batch prices (half); /metrics counts
        the ended batches by state."""
        async with batch_provider(kind, first_batch_errs_and_expires) as server:
            config = load_config(write_config(tmp_path, kind, server.url))
            fin = await run_once(config)
            assert server.creates == 2
            assert [len(b.requests) for b in server.batches.values()] == [10, 1]
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            submitted = await events_of(store, BatchSubmitted)
            polled = await events_of(store, BatchPolled)
            ended = await events_of(store, BatchEnded)
            answers = await events_of(store, RolloutResponded)
            failures = await events_of(store, RolloutFailed)
            requests = await events_of(store, RolloutRequested)
            metrics = Metrics()
            async for rec in store.read():
                metrics.observe_event(rec)
        text = metrics.render()[0].decode()
        polled_states, finals = STATES[kind]
        for final, n in Counter(finals).items():
            assert f'rollwatch_batches_ended_total{{state="{final}"}} {n}.0' in text
        assert "rollwatch_batches{" not in text  # none open
        assert fin.status == "partial"
        assert fin.failures == {"invalid_request": 1}
        first, second = submitted
        assert len(first.rollouts) == 10
        assert set(first.rollouts.values()) == {1}
        (expired,) = second.rollouts
        assert second.rollouts[expired] == 2
        states = [p.state for p in polled if p.batch_id == first.batch_id]
        assert states == polled_states
        assert [(e.batch_id, e.state, e.answered, e.failed, e.unanswered) for e in ended] == [
            (first.batch_id, finals[0], 8, 1, [expired]),
            (second.batch_id, finals[1], 1, 0, []),
        ]
        assert Counter(a.rollout_id for a in answers) == Counter(set(first.rollouts) - {_errored(failures)})
        assert [(f.rollout_id, f.attempt, f.kind, f.final) for f in failures if f.rollout_id == expired] == [
            (expired, 1, "batch_unanswered", False)
        ]
        assert [(r.attempt) for r in requests if r.rollout_id == expired] == [1, 2]
        usage = answers[0].usage
        price_full = ProviderClient(config.provider("acme")).cost(MODEL, Usage(**usage))
        assert price_full is not None
        assert answers[0].cost_usd == pytest.approx(price_full / 2)
        assert answers[0].list_cost_usd == pytest.approx(price_full)
        # The report shows what batch mode saved: list price minus paid (here half).
        cfg = str(tmp_path / "rollwatch.toml")
        res = await anyio.run_process(
            [sys.executable, "-m", "rollwatch", "--config", cfg, "report", "--format", "json"]
        )
        (row,) = json.loads(res.stdout)
        paid = sum(a.cost_usd or 0.0 for a in answers)
        assert row["cost_usd"] == pytest.approx(paid)
        assert row["list_cost_usd"] == pytest.approx(2 * paid)
        assert row["batch_saved_usd"] == pytest.approx(paid)
        res = await anyio.run_process(
            [sys.executable, "-m", "rollwatch", "--config", cfg, "report", "--format", "table"]
        )
        assert "BATCH SAVED" in res.stdout.decode()

    async def test_batches_are_cut_at_the_request_limit(self, tmp_path: Path) -> None:
        """With ``batch_max_requests = 4`` the ten rollouts go in batches of 4, 4 and 2,
        and each rollout is in exactly one of them."""
        async with batch_provider("openai", lambda b, i, c: "ok") as server:
            config = load_config(write_config(tmp_path, "openai", server.url, max_requests=4))
            fin = await run_once(config)
            sizes = sorted(len(b.requests) for b in server.batches.values())
            ids = Counter(r["custom_id"] for b in server.batches.values() for r in b.requests)
        assert fin.status == "completed"
        assert sizes == [2, 4, 4]
        assert len(ids) == 10
        assert set(ids.values()) == {1}

    @pytest.mark.parametrize("kind", KINDS)
    async def test_a_lost_create_answer_is_found_not_repeated(self, kind: str, tmp_path: Path) -> None:
        """The provider makes the batch but its answer never arrives (the client times
        out): before trying again the client finds the batch (OpenAI: by its key in the
        metadata; Gemini: in the display name; Anthropic: the batch created since, of
        ten requests, whose results' custom ids are the rollout ids) and follows it; one
        batch is created, the run completes."""
        async with batch_provider(kind, lambda b, i, c: "ok") as server:
            server.stall_creates = 1
            config = load_config(write_config(tmp_path, kind, server.url, timeout="1s"))
            fin = await run_once(config)
            assert server.creates == 1
            (made,) = server.batches
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            submitted = await events_of(store, BatchSubmitted)
            answers = await events_of(store, RolloutResponded)
        assert fin.status == "completed"
        assert [s.batch_id for s in submitted] == [made]
        assert Counter(a.rollout_id for a in answers) == Counter(set(submitted[0].rollouts))

    @pytest.mark.parametrize("kind", KINDS)
    async def test_one_model_per_batch(self, kind: str, tmp_path: Path) -> None:
        """A run of two models makes a batch per model (OpenAI refuses a file that mixes
        models), each rollout in exactly one."""
        async with batch_provider(kind, lambda b, i, c: "ok") as server:
            config = load_config(write_config(tmp_path, kind, server.url, models=("m-a", "m-b")))
            fin = await run_once(config)
            models = sorted({_model_of(r) for r in b.requests} for b in server.batches.values())
            ids = Counter(r["custom_id"] for b in server.batches.values() for r in b.requests)
        assert fin.status == "completed"
        assert models == [{"m-a"}, {"m-b"}]
        assert len(ids) == 20
        assert set(ids.values()) == {1}

    async def test_a_rejected_key_disables_the_provider(self, tmp_path: Path) -> None:
        """A 401 on the batch create fails that batch's rollouts for good (``auth``) and
        disables the provider: no further batch is tried, the run ends."""
        async with batch_provider("openai", lambda b, i, c: "ok") as server:
            server.reject_creates = 401
            config = load_config(write_config(tmp_path, "openai", server.url, max_requests=4))
            fin = await run_once(config)
            assert server.server is not None
            creates = [s for s in server.server.seen if s.method == "POST" and s.target == "/batches"]
        # The two full batches went out together; the third, still forming when the
        # first 401 came back, never did.
        assert len(creates) <= 2
        assert fin.status == "partial"
        assert set(fin.failures) <= {"auth", "not_requested"}
        assert fin.failures.get("auth", 0) >= 4


def _model_of(request: dict[str, Any]) -> str:
    body = request.get("body") or request["params"]  # OpenAI JSONL line, or Anthropic request
    return str(body["model"])


def _errored(failures: list[RolloutFailed]) -> str:
    (final,) = [f for f in failures if f.final]
    assert final.kind == "invalid_request"
    return final.rollout_id


# --- SIGKILL and restart --------------------------------------------------------------------


async def _rollwatch(cfg: Path, *args: str) -> anyio.abc.Process:
    env = {**os.environ, KEY_ENV: KEY}
    return await anyio.open_process(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), *args], env=env, stdout=None, stderr=None
    )


async def _wait_until(cond: object, timeout: float = 60) -> None:
    assert callable(cond)
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.02)


class TestBatchKill:
    @pytest.mark.parametrize(
        ("kind", "stage"),
        [
            ("openai", "creating"),
            ("openai", "submitted"),
            ("openai", "polling"),
            ("openai", "downloading"),
            ("openai", "created"),
            ("anthropic", "created"),
            ("anthropic", "submitted"),
            ("anthropic", "downloading"),
            ("gemini", "created"),
            ("gemini", "polling"),
            ("gemini", "downloading"),
        ],
    )
    async def test_sigkill_at_each_stage_then_restart(self, kind: str, stage: str, tmp_path: Path) -> None:
        """``rollwatch run`` killed with SIGKILL while its batch create was unanswered
        (the provider made the batch), right after the provider answered the create
        (before the answer reached the log: a fault hook in the server kills it), after
        its batch was submitted (the first poll arrived), while polling, or while
        downloading results, then started again: the restarted daemon (``rollwatch
        serve``, the schedule disabled so that only the resumed run can create a batch)
        resumes the run by polling the same batch — found at the provider and adopted
        when the log had only the intent (Anthropic: by the batch's contents). The
        provider saw exactly one batch created, and every rollout is answered exactly
        once."""
        async with batch_provider(kind, lambda b, i, c: "ok", polls_in_progress=10**9) as server:
            cfg = write_config(tmp_path, kind, server.url, poll="50ms")
            if stage == "downloading":
                server.hold_results = True
            if stage == "creating":
                server.stall_creates = 1
            procs: list[anyio.abc.Process] = []
            if stage == "created":
                server.after_create = lambda: os.kill(procs[0].pid, signal.SIGKILL)
            proc = await _rollwatch(cfg, "run", "nightly")
            procs.append(proc)
            try:
                if stage == "created":
                    with anyio.fail_after(60):
                        await proc.wait()
                elif stage == "creating":
                    await _wait_until(lambda: server.creates >= 1)
                elif stage == "submitted":
                    await _wait_until(lambda: server.polls >= 1)
                elif stage == "polling":
                    await _wait_until(lambda: server.polls >= 3)
                else:
                    server.polls_in_progress = 1
                    with anyio.fail_after(60):
                        await server.result_requested.wait()
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
            assert proc.returncode == -signal.SIGKILL
            server.after_create = None
            server.hold_results = False
            server.polls_in_progress = 1
            write_config(tmp_path, kind, server.url, poll="50ms", enabled=False)
            daemon = await _rollwatch(cfg, "serve", "--grace", "5")
            try:
                async with SQLiteEventStore(tmp_path / "events.db") as store:
                    await wait_for(store, RunFinished, bool, timeout=120)
            finally:
                daemon.send_signal(signal.SIGTERM)
                with anyio.fail_after(60):
                    code = await daemon.wait()
            assert code == 0
            assert server.creates == 1
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            answers = await events_of(store, RolloutResponded)
            submitted = await events_of(store, BatchSubmitted)
            finished = await events_of(store, RunFinished)
        assert len(submitted) == 1
        # Killed before the log knew the batch's id: the restart found and adopted it.
        assert submitted[0].adopted == (stage in ("creating", "created"))
        counts = Counter(a.rollout_id for a in answers)
        assert set(counts) == set(submitted[0].rollouts)
        assert set(counts.values()) == {1}
        assert [f.status for f in finished] == ["completed"]


class _HookedBoard(LocalBoard):
    """A process's own board that runs ``hook`` before it hands out its first chunks:
    after the run read its batch stream, before any rollout of it goes on."""

    def __init__(self, hook: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.hook: Callable[[], Awaitable[None]] | None = hook

    async def claim(self, run_id: str, n: int) -> list[Chunk]:
        hook, self.hook = self.hook, None
        if hook is not None:
            await hook()
        return await super().claim(run_id, n)


class TestBatchRecordedOnce:
    @pytest.mark.parametrize("when", ["after_the_read", "during_the_lookup", "before_the_append"])
    async def test_a_batch_recorded_meanwhile_is_followed_not_recorded_again(
        self, when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A node's batch create is made but unanswered when it is killed: the log has the
        intent (``BatchPrepared``) and no ``BatchSubmitted``. Another process resumes the
        run and reads the batch stream; then the first node's ``BatchSubmitted`` for that
        batch lands (this test appends it, as that node's late append): right after the
        read (before any rollout goes on), while the resuming process looks the batch up
        at the provider by its key (the provider holds the lookup until the record is in),
        or after the lookup, just before the resuming process appends its adoption (the
        last moment: only the append's expected stream version can see it). Each time the
        resuming process follows the recorded batch: the log records
        the batch once (not again as adopted), the provider made one batch, every rollout
        is answered once, the run completes. Recorded before the lookup, the provider is
        not even asked."""
        async with batch_provider("openai", lambda b, i, c: "ok", polls_in_progress=10**9) as server:
            cfg = write_config(tmp_path, "openai", server.url, poll="50ms")
            server.stall_creates = 1
            proc = await _rollwatch(cfg, "run", "nightly")
            try:
                await _wait_until(lambda: server.creates >= 1)
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            (made,) = server.batches
            server.polls_in_progress = 1
            async with open_services(load_config(cfg)) as svc:
                (prep,) = await events_of(svc.store, BatchPrepared)
                assert not await events_of(svc.store, BatchSubmitted)
                late = BatchSubmitted(
                    run_id=prep.run_id,
                    provider=prep.provider,
                    batch_id=made,
                    rollouts=dict(prep.rollouts),
                    node=prep.node,
                    key=prep.key,
                )

                real_append = svc.store.append

                async def record_late() -> None:
                    await real_append(batch_stream(prep.run_id), [late])

                (run_id,) = await unfinished_runs(svc)
                if when == "after_the_read":
                    svc = dataclasses.replace(svc, board=_HookedBoard(record_late))
                elif when == "during_the_lookup":
                    server.hold_lists = 1
                else:
                    pending = [record_late]

                    async def append_after_the_late_record(
                        stream: str, events: Sequence[Event], *, expected_version: int | None = None
                    ) -> list[Recorded]:
                        if stream == batch_stream(prep.run_id) and any(
                            isinstance(e, BatchSubmitted) for e in events
                        ):
                            while pending:
                                await pending.pop()()
                        return await real_append(stream, events, expected_version=expected_version)

                    monkeypatch.setattr(svc.store, "append", append_after_the_late_record)
                run = await Run.load(svc, run_id)
                async with anyio.create_task_group() as tg:
                    if when == "during_the_lookup":

                        async def record_during_the_lookup() -> None:
                            await server.listed.wait()
                            await record_late()
                            assert server.server is not None
                            server.server.release.set()

                        tg.start_soon(record_during_the_lookup)
                    with anyio.fail_after(120):
                        fin = await run.drive(grace=5)
                assert fin is not None
                submitted = await events_of(svc.store, BatchSubmitted)
                answers = await events_of(svc.store, RolloutResponded)
        assert server.creates == 1
        assert submitted == [late]
        # Recorded before the lookup: the provider was not even asked.
        assert server.lists == (0 if when == "after_the_read" else 1)
        counts = Counter(a.rollout_id for a in answers)
        assert set(counts) == set(prep.rollouts)
        assert set(counts.values()) == {1}
        assert fin.status == "completed"

    async def test_a_batch_adopted_before_its_submitter_records_it_is_recorded_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The other order: the node that submitted a batch stalls after the provider's
        answer, and before its ``BatchSubmitted`` is in, another node that took its
        rollouts over finds the batch by its key and records it (adopted; this test
        appends that record). The submitter then does not record the batch a second time;
        it follows it to its end, and every rollout is answered once."""
        async with batch_provider("openai", lambda b, i, c: "ok") as server:
            config = load_config(write_config(tmp_path, "openai", server.url))
            async with open_services(config) as svc:
                real_append = svc.store.append
                adoptions: list[BatchSubmitted] = []

                async def adopted_first(
                    stream: str, events: Sequence[Event], *, expected_version: int | None = None
                ) -> list[Recorded]:
                    if not adoptions and any(isinstance(e, BatchSubmitted) for e in events):
                        (prep,) = await events_of(svc.store, BatchPrepared)
                        (made,) = server.batches
                        adoptions.append(
                            BatchSubmitted(
                                run_id=prep.run_id,
                                provider=prep.provider,
                                batch_id=made,
                                rollouts=dict(prep.rollouts),
                                node="node-b",
                                key=prep.key,
                                adopted=True,
                            )
                        )
                        await real_append(stream, adoptions)
                    return await real_append(stream, events, expected_version=expected_version)

                monkeypatch.setattr(svc.store, "append", adopted_first)
                run = await Run.start(svc, config.schedule("nightly"), trigger="manual")
                with anyio.fail_after(120):
                    fin = await run.drive(grace=5)
                submitted = await events_of(svc.store, BatchSubmitted)
                ended = await events_of(svc.store, BatchEnded)
                answers = await events_of(svc.store, RolloutResponded)
        assert fin is not None
        assert fin.status == "completed"
        assert server.creates == 1
        assert submitted == adoptions
        assert [e.batch_id for e in ended] == [submitted[0].batch_id]
        counts = Counter(a.rollout_id for a in answers)
        assert set(counts) == set(submitted[0].rollouts)
        assert set(counts.values()) == {1}


# --- two daemons on one PostgreSQL log --------------------------------------------------------


def _pg_node_config(tmp_path: Path, name: str, db_url: str, provider_url: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    cfg = d / "rollwatch.toml"
    cfg.write_text(f"""
node = "{name}"
[cluster]
lease = "2s"
chunk = 1
[integrity]
key_file = "{tmp_path / "checkpoint.key"}"
[store]
url = "{db_url}"
projections = "{d / "projections.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[scoring]
workers = 1
[[problem_sets]]
name = "favorites"
path = "{ROOT / "config" / "problems"}"
[[providers]]
name = "acme"
kind = "openai"
base_url = "{provider_url}"
api_key_env = "{KEY_ENV}"
batch = true
batch_poll = "50ms"
batch_linger = "300ms"
backoff_base = "10ms"
[[schedules]]
name = "nightly"
provider = "acme"
models = ["{MODEL}"]
problem_set = "favorites"
rollouts = 2
every = "1h"
""")
    return cfg


class TestBatchCluster:
    async def test_a_dead_nodes_batch_is_followed_not_resubmitted(self, tmp_path: Path) -> None:
        """Two daemons on one PostgreSQL log share a batched run and submit batches of
        the chunks they claim. A node that submitted a batch is killed while it is in
        progress; the other takes its chunks over, finds the dead node's batch in the
        log and polls it. At the
        provider every rollout was in exactly one batch, and every rollout is answered
        once; the run completes."""
        async with (
            batch_provider("openai", lambda b, i, c: "ok", polls_in_progress=10**9) as server,
            scratch_database() as db_url,
        ):
            cfgs = {n: _pg_node_config(tmp_path, n, db_url, server.url) for n in ("node-a", "node-b")}
            procs = {n: await _rollwatch(cfg, "serve", "--grace", "2") for n, cfg in cfgs.items()}
            try:

                async def submitted() -> list[dict[str, Any]]:
                    conn = await asyncpg.connect(db_url)
                    try:
                        rows = await conn.fetch("SELECT data FROM events WHERE type = 'BatchSubmitted'")
                    except asyncpg.UndefinedTableError:
                        return []
                    finally:
                        await conn.close()
                    return [json.loads(r["data"]) for r in rows]

                with anyio.fail_after(120):
                    while True:
                        subs = await submitted()
                        covered = {rid for s in subs for rid in s["rollouts"]}
                        # Every rollout in a batch (which node took which chunks is
                        # the board's business: one node may have taken them all).
                        if len(covered) == 20:
                            break
                        await anyio.sleep(0.1)
                victim = subs[0]["node"]
                procs[victim].kill()
                await procs[victim].wait()
                server.polls_in_progress = 1  # now every batch may end
                survivor = "node-b" if victim == "node-a" else "node-a"
                async with PostgresEventStore(db_url) as store:
                    await wait_for(store, RunFinished, bool, timeout=120)
                    answers = await events_of(store, RolloutResponded)
                    finished = await events_of(store, RunFinished)
                    all_subs = await events_of(store, BatchSubmitted)
            finally:
                for p in procs.values():
                    if p.returncode is None:
                        p.kill()
                        await p.wait()
            in_batches = Counter(r["custom_id"] for b in server.batches.values() for r in b.requests)
        assert len(in_batches) == 20
        assert set(in_batches.values()) == {1}
        # One create per batch, and one record of each: a survivor that read the batch stream
        # before the dead node's BatchSubmitted landed follows that record, it does not record
        # the batch again (TestBatchRecordedOnce forces that order).
        assert server.creates == len(all_subs)
        assert len({s.batch_id for s in all_subs}) == len(all_subs)
        assert Counter(a.rollout_id for a in answers) == Counter(set(in_batches))
        assert [f.status for f in finished] == ["completed"]
        assert survivor


# --- progress -------------------------------------------------------------------------------


class TestBatchProgress:
    def test_figures_name_states_counts_and_the_expected_end(self) -> None:
        """Open batches by state with requests done, the ended count, and when the last
        open batch should end at its pace so far; ``-`` while a batch reported none."""
        st = RunState(total=30)
        st.batches["a"] = BatchProgress("in_progress", 10, submitted_at=1000.0, done=5)
        st.batches["b"] = BatchProgress("in_progress", 10, submitted_at=1030.0, done=2)
        st.batches_ended.add("c")
        # a: 5 of 10 in 60 s → ends at 1120; b: 2 of 10 in 30 s → ends at 1180.
        assert st.batch_figures(1060.0) == {"batches": "2 in_progress 7/20, 1 ended", "batch_eta": "2m00s"}
        st.batches["d"] = BatchProgress("submitted", 4, submitted_at=1060.0)
        assert st.batch_figures(1060.0)["batch_eta"] == ">2m00s"
        st.batches.clear()
        assert st.batch_figures(1060.0) == {"batches": "1 ended", "batch_eta": "done"}
        assert RunState().batch_figures(0.0) == {}

    async def test_run_on_a_terminal_shows_batch_states_and_metrics_count_them(self, tmp_path: Path) -> None:
        """``rollwatch run`` on a terminal (a pty) draws the batch's state, its requests
        done and the expected end as the provider reports progress, then the batch as
        ended; meanwhile the log read by /metrics' collector counts the batch as open
        ``in_progress``."""
        async with batch_provider("openai", lambda b, i, c: "ok", polls_in_progress=10**9) as server:
            server.partial_counts = True
            cfg = write_config(tmp_path, "openai", server.url, poll="100ms")
            master, slave = os.openpty()
            env = {**os.environ, KEY_ENV: KEY}
            proc = await anyio.open_process(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "nightly"],
                env=env,
                stdout=None,
                stderr=slave,
            )
            os.close(slave)
            out = bytearray()
            seen_open = ""
            async with await anyio.open_file(master, "rb", buffering=0, closefd=True) as term:

                async def read() -> None:
                    while True:
                        try:
                            chunk = await term.read(4096)
                        except OSError:  # EIO: the child closed the terminal
                            return
                        if not chunk:
                            return
                        out.extend(chunk)

                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(read)
                        with anyio.fail_after(60):
                            while b"in_progress 3/10" not in out:
                                await anyio.sleep(0.05)
                        async with SQLiteEventStore(tmp_path / "events.db") as store:
                            metrics = Metrics()
                            async for rec in store.read():
                                metrics.observe_event(rec)
                        seen_open = metrics.render()[0].decode()
                        server.polls_in_progress = 1  # now let it end
                        with anyio.fail_after(60):
                            code = await proc.wait()
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
        text = out.decode(errors="replace")
        assert code == 0, text
        bars = [seg for seg in text.split("\r") if seg.startswith("nightly [")]
        progressing = [seg for seg in bars if "batches 1 in_progress 3/10" in seg]
        # Some requests done: the expected end is known (a duration, not "-").
        assert progressing, bars
        assert re.search(r"batch_eta \d+s", progressing[0]), progressing[0]
        assert "0/10 passed" in progressing[0]  # no rollout answered yet: all in the batch
        assert "10/10" in bars[-1]
        assert "batches 1 ended" in bars[-1]
        assert "batch_eta done" in bars[-1]
        assert 'rollwatch_batches{state="in_progress"} 1.0' in seen_open
