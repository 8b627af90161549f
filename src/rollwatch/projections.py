"""Projections: read models derived from the log only, rebuildable at any time.

They live in their own SQLite file (``store.projections``), apart from the log:
dropping that file loses nothing. Each projection keeps its tables and the last
``seq`` it applied, and both change in the same transaction, so an event is applied
exactly once even across crashes and even when two processes (the daemon and a CLI
command) catch up at the same time: ``BEGIN IMMEDIATE`` serialises them and each
re-reads the checkpoint under the lock.

``synchronous=NORMAL`` is enough here (unlike the log): after a power loss a
projection may lose its last transactions, together with their checkpoint, and
simply applies those events again.

Projection code is plain synchronous SQL run through ``anyio.to_thread`` on one
connection per role (writer, reader), each behind an ``anyio.Lock``.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from rollwatch import events as e
from rollwatch._sqlite import ThreadConnection
from rollwatch.abc import EventStore, Projection
from rollwatch.errors import ServiceUnavailable
from rollwatch.events import Recorded, canonical_json
from rollwatch.log import get_logger

__all__ = ["CatchUpProgress", "Projection", "ProjectionDB", "RunsProjection", "SchedulesProjection"]

log = get_logger(__name__)

Row = tuple[Any, ...]
_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=30000")
# The writer keeps up to 64 MB of the file's pages: a catch-up updates rows all over the
# rollout tables' B-trees, and the default 2 MB cache re-reads them from the OS per event.
_WRITER_PRAGMAS = (*_PRAGMAS, "PRAGMA cache_size=-65536")


class ProjectionDB:
    """The projections' SQLite file, and the catch-up loop that feeds it from the log."""

    def __init__(self, path: Path | str, projections: Sequence[Projection], *, setup: bool = True) -> None:
        """``setup=False``: opening does not touch the file's tables (which may wait for
        another process's transaction, or drop a projection of an older version); the
        owner calls :meth:`build` later, and :attr:`ready` stays False until it is done."""
        self.path = Path(path)
        self.projections = list(projections)
        self._w: ThreadConnection | None = None
        self._r: ThreadConnection | None = None
        self._setup_on_open = setup
        self.applied = 0  # the seq up to which every projection is current (in this process)
        self.ready = False
        """True once the tables are set up and (after :meth:`build`) caught up with the log."""
        self.progress: CatchUpProgress | None = None
        """While :meth:`build` runs: how far it is."""

    async def __aenter__(self) -> ProjectionDB:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._w = await ThreadConnection.open(self.path, _WRITER_PRAGMAS)
        self._r = await ThreadConnection.open(self.path, _PRAGMAS)
        if self._setup_on_open:
            await self._run(self._setup)
            self.ready = True
        return self

    async def build(self, store: EventStore) -> int:
        """Set the tables up and catch up with the log, keeping :attr:`progress` current;
        :attr:`ready` once done. For a daemon that serves while its projections build.

        Safe to call again after it failed: each batch is committed with its checkpoint.
        """
        self.progress = CatchUpProgress(
            first=0, target=0, done=0, started=time.monotonic(), phase="setting up"
        )
        try:
            await self._run(self._setup)
            await self.belongs_to(store)
            cps = await self.checkpoints()
            first = min((cps.get(p.name, 0) for p in self.projections), default=0)
            head = await store.head()
            self.progress = CatchUpProgress(first=first, target=head, done=first, started=time.monotonic())
            progress = self.progress

            def seen(done: int, _head: int) -> None:
                progress.done = done

            head = await self.catch_up(store, until=head, progress=seen)
            # Events appended meanwhile: a short second pass before switching over.
            head = await self.catch_up(store)
            self.ready = True
            return head
        finally:
            self.progress = None

    def not_building(self) -> None:
        """ServiceUnavailable (503, ``Retry-After``, how far) while :meth:`build` runs: the
        tables would answer with data that is not current. Every route that reads them
        (feed, report, public page, console) calls this first."""
        if self.ready:
            return
        prog = self.progress
        f = prog.figures() if prog is not None else {}
        eta = f.get("eta_s")
        eta_s = math.ceil(eta) if isinstance(eta, float | int) else None
        retry = min(60, max(1, eta_s)) if eta_s is not None else 5
        if f.get("phase") == "catching up":
            rate = f.get("events_per_s")
            state = (
                f"{f['percent']}% (seq {f['seq']} of {f['head']}"
                + (f", {rate} events/s, about {eta_s} s left" if rate and eta_s is not None else "")
                + ")"
            )
        else:
            state = "setting up"
        raise ServiceUnavailable(
            f"the read models are being built from the log: {state}; retry in {retry} s",
            {"Retry-After": str(retry)},
        )

    async def __aexit__(self, *exc: object) -> None:
        for db in (self._w, self._r):
            if db is not None:
                await db.close()
        self._w = self._r = None

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        assert self._w is not None, "use ProjectionDB with `async with`"
        return await self._w.run(fn)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a read query on the reader connection."""
        assert self._r is not None, "use ProjectionDB with `async with`"
        return await self._r.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    # -- schema and checkpoints ---------------------------------------------------------

    def _setup(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS projection_state "
                "(name TEXT PRIMARY KEY, version INTEGER NOT NULL, seq INTEGER NOT NULL)"
            )
            state = {r[0]: r[1] for r in db.execute("SELECT name, version FROM projection_state")}
            for p in self.projections:
                if state.get(p.name) not in (None, p.version):
                    log.info("projection_version_changed", projection=p.name, rebuild=True)
                    self._drop(db, p)
                for stmt in filter(str.strip, p.ddl.split(";")):
                    db.execute(stmt)
                db.execute(
                    "INSERT OR IGNORE INTO projection_state (name, version, seq) VALUES (?, ?, 0)",
                    (p.name, p.version),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _drop(db: sqlite3.Connection, p: Projection) -> None:
        for t in p.tables:
            db.execute(f"DROP TABLE IF EXISTS {t}")
        db.execute("DELETE FROM projection_state WHERE name = ?", (p.name,))

    async def rebuild(self) -> None:
        """Drop every projection's tables and checkpoint; the next catch-up starts from seq 0."""

        def drop(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            for p in self.projections:
                self._drop(db, p)
            db.execute("COMMIT")

        await self._run(drop)
        await self._run(self._setup)
        self.applied = 0

    async def belongs_to(self, store: EventStore) -> bool:
        """Make sure these projections are of ``store``'s log; False if another log's were dropped.

        The file records the chain hash of the log's event 1. Projections of another
        log (a folder reused for another database) are dropped with one WARNING and
        rebuilt by the next catch-up, rather than shown as this log's.
        """
        first: str | None = None
        async for page in store.read_batches(until=1, batch=1):
            first = page[0].hash if page[0].seq == 1 else None
        if first is None:
            return True

        def check(db: sqlite3.Connection) -> str | None:
            db.execute(
                "CREATE TABLE IF NOT EXISTS projection_log (id INTEGER PRIMARY KEY CHECK (id = 1), first_hash TEXT)"
            )
            row = db.execute("SELECT first_hash FROM projection_log").fetchone()
            if row is None:
                db.execute("INSERT INTO projection_log VALUES (1, ?)", (first,))
                return None
            return str(row[0])

        recorded = await self._run(check)
        if recorded is None or recorded == first:
            return True
        log.warning(
            "projections_of_another_log",
            path=str(self.path),
            its_log_first_hash=recorded,
            this_log_first_hash=first,
            action="rebuilding from this log",
        )
        await self.rebuild()
        await self._run(lambda db: db.execute("UPDATE projection_log SET first_hash = ?", (first,)))
        return False

    async def checkpoints(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT name, seq FROM projection_state")
        return {r[0]: r[1] for r in rows}

    # -- catching up -----------------------------------------------------------------------

    async def catch_up(
        self,
        store: EventStore,
        *,
        until: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Apply every event not yet applied, in one pass over the log; return the seq now applied.

        One pass for every projection: each event is read once, decoded once (however
        many projections read it) and handed to each projection that wants its type.
        Pages are read while the previous one is applied (two connections, two threads:
        SQLite works outside the GIL), and each transaction applies about
        ``_TXN_EVENTS`` events. Memory stays flat whatever the log's size: about
        ``_TXN_EVENTS`` events and two pages are held at a time.
        """
        cps = await self.checkpoints()
        start = min((cps.get(p.name, 0) for p in self.projections), default=0)
        head = until if until is not None else await store.head()
        types = set().union(*(p.types for p in self.projections))
        if start < head:
            pages = store.read_batches(after=start, types=types, until=head, batch=_PAGE)
            send, receive = anyio.create_memory_object_stream[list[Recorded]](1)
            # Errors are caught in both tasks and raised after the task group as they
            # are: callers catch StoreError (a database away), not an ExceptionGroup.
            failed: list[Exception] = []

            async def reader() -> None:
                async with send:
                    try:
                        async for page in pages:
                            await send.send(page)
                    except Exception as exc:
                        failed.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                try:
                    pending: list[Recorded] = []
                    async with receive:
                        async for page in receive:
                            pending.extend(page)
                            if len(pending) >= _TXN_EVENTS:
                                await self._w_apply(pending, None)
                                if progress is not None:
                                    progress(pending[-1].seq, head)
                                pending = []
                    if pending and not failed:
                        await self._w_apply(pending, None)
                except Exception as exc:
                    failed.insert(0, exc)
                    tg.cancel_scope.cancel()
            if failed:
                raise failed[0]
        await self._w_apply([], head)
        if progress is not None:
            progress(head, head)
        self.applied = max(self.applied, head)
        return head

    async def _w_apply(self, events: list[Recorded], upto: int | None) -> None:
        assert self._w is not None, "use ProjectionDB with `async with`"
        await self._w.run(self._apply, events, upto)

    def _apply(self, db: sqlite3.Connection, events: list[Recorded], upto: int | None) -> None:
        if not events and upto is None:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            cps = {r[0]: r[1] for r in db.execute("SELECT name, seq FROM projection_state")}
            done = {p.name: cps.get(p.name, 0) for p in self.projections}
            floor = min(done.values(), default=0)
            by_type = self._by_type
            for rec in events:
                seq = rec.seq
                if seq <= floor:
                    continue
                wants = by_type.get(rec.type)
                if not wants:
                    continue
                once = tuple.__new__(_DecodedOnce, rec)
                for p in wants:
                    if seq > done[p.name]:
                        p.apply(db, once)
            last = events[-1].seq if events else 0
            if upto is not None:
                last = max(last, upto)
            for p in self.projections:
                if last > done[p.name]:
                    db.execute("UPDATE projection_state SET seq = ? WHERE name = ?", (last, p.name))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @functools.cached_property
    def _by_type(self) -> dict[str, list[Projection]]:
        """Event type -> the projections that read it, in the projections' order."""
        out: dict[str, list[Projection]] = {}
        for p in self.projections:
            for t in p.types:
                out.setdefault(t, []).append(p)
        return out


@dataclass(slots=True)
class CatchUpProgress:
    """How far a :meth:`ProjectionDB.build` is: applied up to ``done`` of ``first``..``target``."""

    first: int
    target: int
    done: int
    started: float  # time.monotonic()
    phase: str = "catching up"

    def figures(self, now: float | None = None) -> dict[str, str | float | int | None]:
        """phase, seq, head, percent, events_per_s and eta_s (None until a first batch is applied)."""
        now = time.monotonic() if now is None else now
        total = max(self.target - self.first, 0)
        did = max(self.done - self.first, 0)
        elapsed = max(now - self.started, 1e-6)
        rate = did / elapsed if did else None
        left = (total - did) / rate if rate else None
        return {
            "phase": self.phase,
            "seq": self.done,
            "head": self.target,
            "percent": round(100.0 * did / total, 1)
            if total
            else (0.0 if self.phase != "catching up" else 100.0),
            "events_per_s": round(rate) if rate else None,
            "eta_s": round(left, 1) if left is not None else None,
        }


_PAGE = 2000
"""Events per read of the log during a catch-up."""
_TXN_EVENTS = 5000
"""About this many events are applied per projection transaction (bounded memory: a few MB)."""


class _DecodedOnce(Recorded):
    """A :class:`Recorded` whose :meth:`event` decodes once however many projections call it.

    Made from a row with ``tuple.__new__`` (no ``__init__``); the decoded event is kept in
    the instance's ``__dict__`` for as long as the event is being applied.
    """

    def event(self) -> e.Event:
        d = self.__dict__
        ev: e.Event | None = d.get("_ev")
        if ev is None:
            ev = d["_ev"] = Recorded.event(self)
        return ev


def _j(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


# --- the read models ------------------------------------------------------------------


class RunsProjection(Projection):
    """Runs and their rollouts: what the daemon resumes, what the report counts.

    A rollout's ``passed``/``score`` are its newest verdict (a re-score's, once there is
    one; ``verdict_hash`` names the problem version it was under). Every verdict stays
    in ``verdicts``; ``problem_versions`` dates each version of a problem by the first
    event that named it (a ``ProblemVersioned`` dates it anew), so the newest is known.
    """

    name = "runs"
    # 2: verdicts, problem_versions, rollouts.verdict_hash (re-scores); 3: rollouts.served_model;
    # 4: rollouts.list_cost_usd (batched answers at list prices)
    version = 4
    tables = ("runs", "rollouts", "verdicts", "problem_versions")
    types = frozenset(
        {
            "RunStarted",
            "RunFinished",
            "RolloutRequested",
            "RolloutResponded",
            "RolloutFailed",
            "RolloutScored",
            "RolloutRescored",
            "ProblemVersioned",
        }
    )
    ddl = """
    CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, schedule TEXT, provider TEXT, models TEXT, problem_set TEXT,
        node TEXT, trigger TEXT, rollouts INTEGER, budget_usd REAL, started_seq INTEGER,
        started_at TEXT, finished_at TEXT, status TEXT, passed INTEGER, cost_usd REAL, summary TEXT
    );
    CREATE INDEX IF NOT EXISTS runs_schedule ON runs (schedule, started_seq);
    CREATE TABLE IF NOT EXISTS rollouts (
        rollout_id TEXT PRIMARY KEY, run_id TEXT, provider TEXT, model TEXT, problem_id TEXT,
        problem_hash TEXT, sample INTEGER, attempts INTEGER DEFAULT 0, state TEXT,
        requested_at TEXT, answered_at TEXT, answer_seq INTEGER, cost_usd REAL,
        fail_kind TEXT, passed INTEGER, score REAL, scored_at TEXT, scored_seq INTEGER, reason TEXT,
        verdict_hash TEXT,
        served_model TEXT,
        list_cost_usd REAL
    );
    CREATE TABLE IF NOT EXISTS verdicts (
        seq INTEGER PRIMARY KEY, rollout_id TEXT NOT NULL, problem_id TEXT, problem_hash TEXT,
        scorer_version TEXT, passed INTEGER NOT NULL, score REAL, rescore INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS verdicts_rollout ON verdicts (rollout_id, seq);
    CREATE INDEX IF NOT EXISTS verdicts_hash ON verdicts (problem_hash);
    CREATE TABLE IF NOT EXISTS problem_versions (
        problem_id TEXT NOT NULL, problem_hash TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (problem_id, problem_hash)
    );
    CREATE INDEX IF NOT EXISTS rollouts_run ON rollouts (run_id, state);
    CREATE INDEX IF NOT EXISTS rollouts_model ON rollouts (provider, model, problem_id)
    """

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        ev = rec.event()
        if isinstance(ev, e.RunStarted):
            db.execute(
                "INSERT OR IGNORE INTO runs (run_id, schedule, provider, models, problem_set, node, trigger,"
                " rollouts, budget_usd, started_seq, started_at, status, passed, cost_usd)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?, 'running', 0, 0)",
                (
                    ev.run_id,
                    ev.schedule,
                    ev.provider,
                    _j(ev.models),
                    ev.problem_set,
                    ev.node,
                    ev.trigger,
                    ev.rollouts,
                    ev.budget_usd,
                    rec.seq,
                    rec.at,
                ),
            )
        elif isinstance(ev, e.RunFinished):
            db.execute(
                "UPDATE runs SET finished_at=?, status=?, passed=?, cost_usd=?, summary=? WHERE run_id=?",
                (rec.at, ev.status, ev.passed, ev.cost_usd, canonical_json(ev.to_data()), ev.run_id),
            )
        elif isinstance(ev, e.RolloutRequested):
            db.execute(
                "INSERT INTO rollouts (rollout_id, run_id, provider, model, problem_id, problem_hash, sample,"
                " attempts, state, requested_at) VALUES (?,?,?,?,?,?,?,1,'requested',?)"
                " ON CONFLICT (rollout_id) DO UPDATE SET attempts = attempts + 1,"
                " state = CASE WHEN state IN ('answered','scored') THEN state ELSE 'requested' END",
                (
                    ev.rollout_id,
                    ev.run_id,
                    ev.provider,
                    ev.model,
                    ev.problem_id,
                    ev.problem_hash,
                    ev.sample,
                    rec.at,
                ),
            )
            db.execute(
                "INSERT OR IGNORE INTO problem_versions (problem_id, problem_hash, seq) VALUES (?,?,?)",
                (ev.problem_id, ev.problem_hash, rec.seq),
            )
        elif isinstance(ev, e.RolloutResponded):
            db.execute(
                "UPDATE rollouts SET state = CASE WHEN state = 'scored' THEN state ELSE 'answered' END,"
                " answered_at=?, answer_seq=?, cost_usd=?, served_model=?, list_cost_usd=? WHERE rollout_id=?",
                (rec.at, rec.seq, ev.cost_usd, ev.model, ev.list_cost_usd, ev.rollout_id),
            )
            if ev.cost_usd:
                db.execute(
                    "UPDATE runs SET cost_usd = cost_usd + ? WHERE run_id ="
                    " (SELECT run_id FROM rollouts WHERE rollout_id=?)",
                    (ev.cost_usd, ev.rollout_id),
                )
        elif isinstance(ev, e.RolloutFailed):
            db.execute(
                "UPDATE rollouts SET fail_kind=?, state = CASE WHEN ? AND state = 'requested'"
                " THEN 'failed' ELSE state END WHERE rollout_id=?",
                (ev.kind, bool(ev.final), ev.rollout_id),
            )
        elif isinstance(ev, e.RolloutScored):
            row = db.execute(
                "SELECT problem_id, problem_hash FROM rollouts WHERE rollout_id=?", (ev.rollout_id,)
            ).fetchone()
            pid, requested_hash = row if row is not None else (None, None)
            vhash = ev.problem_hash or requested_hash
            db.execute(
                "UPDATE rollouts SET state='scored', passed=?, score=?, scored_at=?, scored_seq=?, reason=?,"
                " verdict_hash=? WHERE rollout_id=?",
                (int(bool(ev.passed)), ev.score, rec.at, rec.seq, ev.reason, vhash, ev.rollout_id),
            )
            self._verdict(db, rec.seq, ev.rollout_id, pid, vhash, ev.scorer_version, ev.passed, ev.score, 0)
            if ev.passed:
                db.execute(
                    "UPDATE runs SET passed = passed + 1 WHERE run_id ="
                    " (SELECT run_id FROM rollouts WHERE rollout_id=?)",
                    (ev.rollout_id,),
                )

        elif isinstance(ev, e.RolloutRescored):
            db.execute(
                "UPDATE rollouts SET passed=?, score=?, reason=?, verdict_hash=? WHERE rollout_id=?",
                (int(bool(ev.passed)), ev.score, ev.reason, ev.problem_hash, ev.rollout_id),
            )
            self._verdict(
                db,
                rec.seq,
                ev.rollout_id,
                ev.problem_id,
                ev.problem_hash,
                ev.scorer_version,
                ev.passed,
                ev.score,
                1,
            )
        elif isinstance(ev, e.ProblemVersioned):
            db.execute(
                "INSERT INTO problem_versions (problem_id, problem_hash, seq) VALUES (?,?,?)"
                " ON CONFLICT (problem_id, problem_hash) DO UPDATE SET seq = excluded.seq",
                (ev.problem_id, ev.problem_hash, rec.seq),
            )

    @staticmethod
    def _verdict(
        db: sqlite3.Connection,
        seq: int,
        rid: str,
        pid: str | None,
        vhash: str | None,
        scorer_version: str | None,
        passed: bool,
        score: float,
        rescore: int,
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO verdicts (seq, rollout_id, problem_id, problem_hash, scorer_version,"
            " passed, score, rescore) VALUES (?,?,?,?,?,?,?,?)",
            (seq, rid, pid, vhash, scorer_version, int(bool(passed)), score, rescore),
        )
        if pid is not None and vhash is not None:
            db.execute(
                "INSERT OR IGNORE INTO problem_versions (problem_id, problem_hash, seq) VALUES (?,?,?)",
                (pid, vhash, seq),
            )


class SchedulesProjection(Projection):
    """Each schedule's pause state, pending triggers, last run and skip/miss counts."""

    name = "schedules"
    version = 1
    tables = ("schedules",)
    types = frozenset(
        {
            "SchedulePaused",
            "ScheduleResumed",
            "ScheduleTriggered",
            "ScheduleSkipped",
            "ScheduleMissed",
            "RunStarted",
            "RunFinished",
        }
    )
    ddl = """
    CREATE TABLE IF NOT EXISTS schedules (
        name TEXT PRIMARY KEY, paused INTEGER DEFAULT 0, note TEXT DEFAULT '',
        triggered_seq INTEGER DEFAULT 0, handled_trigger_seq INTEGER DEFAULT 0, last_fire_at TEXT,
        last_run_id TEXT, last_started_at TEXT,
        last_finished_at TEXT, last_status TEXT, skipped INTEGER DEFAULT 0, missed INTEGER DEFAULT 0
    )
    """

    def _ensure(self, db: sqlite3.Connection, name: str) -> None:
        db.execute("INSERT OR IGNORE INTO schedules (name) VALUES (?)", (name,))

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        ev = rec.event()
        if isinstance(ev, e.RunFinished):
            db.execute(
                "UPDATE schedules SET last_finished_at=?, last_status=? WHERE last_run_id=?",
                (rec.at, ev.status, ev.run_id),
            )
            return
        if not isinstance(
            ev,
            e.SchedulePaused
            | e.ScheduleResumed
            | e.ScheduleTriggered
            | e.ScheduleSkipped
            | e.ScheduleMissed
            | e.RunStarted,
        ):
            return
        name = ev.schedule
        self._ensure(db, name)
        if isinstance(ev, e.SchedulePaused):
            db.execute("UPDATE schedules SET paused=1, note=? WHERE name=?", (ev.note, name))
        elif isinstance(ev, e.ScheduleResumed):
            db.execute("UPDATE schedules SET paused=0, note=? WHERE name=?", (ev.note, name))
        elif isinstance(ev, e.ScheduleTriggered):
            db.execute("UPDATE schedules SET triggered_seq=? WHERE name=?", (rec.seq, name))
        elif isinstance(ev, e.ScheduleSkipped):
            db.execute(
                "UPDATE schedules SET skipped = skipped + 1, last_fire_at = max(coalesce(last_fire_at, ''), ?),"
                " handled_trigger_seq = max(handled_trigger_seq, ?) WHERE name=?",
                (ev.fire_time, ev.trigger_seq or 0, name),
            )
        elif isinstance(ev, e.ScheduleMissed):
            db.execute("UPDATE schedules SET missed = missed + ? WHERE name=?", (ev.missed, name))
        else:
            db.execute(
                "UPDATE schedules SET last_run_id=?, last_started_at=?, last_finished_at=NULL,"
                " last_status='running', last_fire_at = max(coalesce(last_fire_at, ''), ?),"
                " handled_trigger_seq = max(handled_trigger_seq, ?) WHERE name=?",
                (ev.run_id, rec.at, ev.fire_time or rec.at, ev.trigger_seq or 0, name),
            )
