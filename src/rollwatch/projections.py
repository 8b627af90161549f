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

A rebuild never drops tables under a reader: ``store.projections`` is a link to one
file per complete build (``<name>.gen/``); a rebuild writes a new one beside it (no
journal, no syncs, a batch of events per projection call), syncs it, and renames a new
link over the old. Other processes follow at their next catch-up; a file is deleted
once no process holds its shared ``flock``. A file of an older release (no link) is
used as it is until the first rebuild.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import gc
import json
import math
import operator
import os
import pickle
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import anyio
import msgspec
import orjson

from rollwatch import _child
from rollwatch import events as e
from rollwatch._sqlite import ThreadConnection, rollback
from rollwatch.abc import EventStore, Projection
from rollwatch.errors import IntegrityError, ServiceUnavailable, StoreError, UnknownEventType
from rollwatch.events import GENESIS, Recorded, canonical_json, chain_hash
from rollwatch.log import get_logger

__all__ = [
    "ROLLOUT_TYPES",
    "CatchUpProgress",
    "Projection",
    "ProjectionDB",
    "RowBatch",
    "RunsProjection",
    "SchedulesProjection",
]

log = get_logger(__name__)

Row = tuple[Any, ...]
_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=30000")
# The writer keeps up to 64 MB of the file's pages: a catch-up updates rows all over the
# rollout tables' B-trees, and the default 2 MB cache re-reads them from the OS per event.
_WRITER_PRAGMAS = (*_PRAGMAS, "PRAGMA cache_size=-65536")


SPLIT_FROM = 20_000
"""A build beside of a log this long (events) or longer is split in two processes; below,
a second Python starting costs more than it saves."""
_START_WEIGHT = 0.35
"""What starting the second process costs, in ``build_weight`` units (seconds)."""


class ProjectionDB:
    """The projections' SQLite file, and the catch-up loop that feeds it from the log."""

    def __init__(
        self,
        path: Path | str,
        projections: Sequence[Projection],
        *,
        setup: bool = True,
        split_from: int | None = SPLIT_FROM,
    ) -> None:
        """``setup=False``: opening does not touch the file's tables (which may wait for
        another process's transaction, or drop a projection of an older version); the
        owner calls :meth:`build` later, and :attr:`ready` stays False until it is done.

        ``split_from``: a build beside of a log of at least this many events is split
        between this process and a second one (None: never), see :meth:`rebuild_beside`.
        """
        self.path = Path(path)
        self.projections = list(projections)
        self.split_from = split_from
        self.split_grace = 60.0
        """How long (at least) a split build waits for the second process once its own
        half is done (or twice that half's time, if longer), before killing it."""
        self._w: ThreadConnection | None = None
        self._r: ThreadConnection | None = None
        self._setup_on_open = setup
        self.applied = 0  # the seq up to which every projection is current (in this process)
        self.ready = False
        """True once the tables are set up and (after :meth:`build`) caught up with the log."""
        self.progress: CatchUpProgress | None = None
        """While :meth:`build` runs: how far it is."""
        self.file = self.path
        """The file in use: ``path`` itself, or the generation ``path`` links to."""
        self._hold: int | None = None  # a shared flock on ``file``: "in use, keep it"
        self._retired: list[ThreadConnection] = []
        self._switching = anyio.Lock()
        self._found: list[str] = []  # what the writer's thread found, for on_distrusted
        self._schema_seen: tuple[int, int] | None = None
        """(writer connection, its file's schema version) last found holding no trigger or view."""
        self.on_distrusted: Callable[[str], None] | None = None
        """Called with why when a reader finds the file in use contradicting the log (see
        :meth:`distrusted`); a daemon builds the file again from the log."""

    @property
    def generations(self) -> Path:
        """The folder of the files ``path`` links to, one per complete build."""
        return (
            self.path.with_name(self.path.name + ".gen")
            if not self.path.suffix
            else self.path.with_suffix(".gen")
        )

    def _linked(self) -> Path:
        """The file ``path`` stands for now: the generation it links to, or itself."""
        try:
            return self.path.parent / os.readlink(self.path)
        except OSError:  # not a link (a file of an older release, or none yet)
            return self.path

    async def __aenter__(self) -> ProjectionDB:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            file = self._linked()
            if file == self.path and not file.exists():
                # None yet: start with a generation, which later builds replace.
                await self._open(await anyio.to_thread.run_sync(self._new_generation))
                await anyio.to_thread.run_sync(self._point_at, self.file)
            else:
                await self._open(file)
        except sqlite3.DatabaseError as exc:
            # Not a database (an edited or truncated file): never trusted, never
            # repaired. A new, empty generation takes its place; the log fills it.
            log.warning(
                "projections_unreadable",
                path=str(self.path),
                error=str(exc),
                action="rebuilding from the log",
            )
            await self._open(await anyio.to_thread.run_sync(self._new_generation))
            await anyio.to_thread.run_sync(self._point_at, self.file)
        if self._setup_on_open:
            await self._run(self._setup)
            self.ready = True
        return self

    async def _open(self, file: Path) -> None:
        w = await ThreadConnection.open(file, _WRITER_PRAGMAS)
        try:
            r = await ThreadConnection.open(file, _PRAGMAS)
            await r.fetchall("SELECT count(*) FROM sqlite_master")
        except BaseException:
            await w.close()
            raise
        self._w, self._r = w, r
        await anyio.to_thread.run_sync(self._use, file)

    def _use(self, file: Path) -> None:
        """Hold a shared lock on ``file`` while it is in use, so no rebuild deletes it."""
        fd = _hold(file)
        if self._hold is not None:
            os.close(self._hold)
        self.file, self._hold = file, fd

    def _new_generation(self) -> Path:
        gens = self.generations
        gens.mkdir(exist_ok=True)
        return gens / f"{time.time_ns()}.{os.getpid()}.db"

    @contextlib.asynccontextmanager
    async def _build_lock(self) -> AsyncIterator[None]:
        """One build beside at a time across processes (a daemon starting, ``rollwatch rebuild``)."""
        self.generations.mkdir(exist_ok=True)
        fd = os.open(self.generations / "build.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self.progress is not None:
                        self.progress.phase = "waiting for another process's build"
                    await anyio.sleep(0.2)
            yield
        finally:
            os.close(fd)

    def _point_at(self, file: Path) -> None:
        """Switch ``path`` to ``file`` atomically (a new link renamed over the old one)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(file, self.path.parent), tmp)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        log.info("projections_switched", path=str(self.path), file=str(file))

    def _collect(self) -> None:
        """Delete every generation but the current one that no process holds any more."""
        current = self._linked()
        for f in self.generations.glob("*.db"):
            if f == current or f == self.file:
                continue
            try:
                # Not blocking: a named pipe called ``*.db`` put here waited for a writer for
                # good (a rebuild, a catch-up never ended). Only a regular file is a generation.
                fd = os.open(f, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except FileNotFoundError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # still in use: its user deletes it once it has switched
            else:
                _remove(f)
            finally:
                os.close(fd)

    async def build(
        self,
        store: EventStore,
        *,
        progress: Callable[[int, int], None] | None = None,
        planned: Callable[[bool], None] | None = None,
    ) -> int:
        """Set the tables up and catch up with the log, keeping :attr:`progress` current
        (and telling ``progress``, when given, events done of the head); :attr:`ready` once
        done. For a daemon that serves while its projections build, and for commands that
        read them (a file that does not match the log is rebuilt beside, see :meth:`distrust`).
        ``planned``, when given, is told once how: True when it builds beside (the whole
        log read again, in two processes), False when it catches up in place.

        Safe to call again after it failed: each batch is committed with its checkpoint.
        """
        plan = planned if planned is not None else lambda beside: None
        self.progress = CatchUpProgress(
            first=0, target=0, done=0, started=time.monotonic(), phase="setting up"
        )

        def show(done: int, head: int) -> None:
            self._show(done, head)
            if progress is not None:
                progress(done, head)

        try:
            why, stale = await self._assess(store)
            if why is not None:
                kept = [p.name for p in self.projections if p.name not in stale] if stale else []
                log.info(
                    "projections_building_beside",
                    path=str(self.path),
                    reason=why,
                    **({"building": sorted(stale), "keeping": kept} if stale else {}),
                )
                plan(True)
                head = await self.rebuild_beside(store, progress=show, only=stale or None)
                self.ready = True
                return head
            try:
                return await self._build_in_place(store, show, plan)
            except sqlite3.DatabaseError as e:
                if type(e) is not sqlite3.DatabaseError:
                    raise
                # Garbage written over the file ("malformed"): built again from the log.
                log.error(
                    "projections_file_damaged", file=str(self.file), error=str(e), action="rebuilding it"
                )
                head = await self.rebuild_beside(store, progress=show)
                self.ready = True
                return head
        finally:
            self.progress = None

    async def _build_in_place(
        self, store: EventStore, show: Callable[[int, int], None], plan: Callable[[bool], None]
    ) -> int:
        """:meth:`build` on the file in use, which :meth:`distrust` did not find wanting."""
        await self._run(self._setup)
        first_hash = await _event_hash(store, 1)
        await self._run(lambda db: _record_log(db, first_hash))
        cps = await self.checkpoints()
        first = min((cps.get(p.name, 0) for p in self.projections), default=0)
        head = await store.head()
        if self._sooner_beside(first, head):
            # A file far behind (a daemon down for long, an old copy): building the
            # whole log beside, in two processes, is done sooner than catching it up.
            log.info(
                "projections_building_beside",
                path=str(self.path),
                reason=f"{head - first} of the log's {head} events to apply: sooner built beside",
            )
            plan(True)
            head = await self.rebuild_beside(store, progress=show)
            self.ready = True
            return head
        plan(False)
        self.progress = CatchUpProgress(first=first, target=head, done=first, started=time.monotonic())
        head = await self.catch_up(store, until=head, progress=show)
        # Events appended meanwhile: a short second pass before switching over.
        head = await self.catch_up(store, progress=show)
        self.ready = True
        return head

    def _sooner_beside(self, applied: int, head: int) -> bool:
        """Whether building the whole log beside (split in two processes) beats applying
        the events after ``applied`` here: a split build costs about two thirds of a
        catch-up per event (bench_scale, 200k), so when three quarters are left."""
        return self.split_from is not None and head >= self.split_from and (head - applied) * 4 >= head * 3

    def not_building(self, *, detail: bool = True) -> None:
        """ServiceUnavailable (503, ``Retry-After``, how far) while :meth:`build` runs: the
        tables would answer with data that is not current. Every route that reads them
        (feed, report, public page, console) calls this first.

        ``detail=False`` (the public routes): how far in percent only, not the seq applied and
        the log's head (its live length: how many events were appended under embargo since
        the latest checkpoint), nor the rate (times the time left, the same)."""
        if self.ready:
            return
        prog = self.progress
        f = prog.figures() if prog is not None else {}
        eta = f.get("eta_s")
        eta_s = math.ceil(eta) if isinstance(eta, float | int) else None
        retry = min(60, max(1, eta_s)) if eta_s is not None else 5
        if f.get("phase") == "catching up" and not detail:
            state = f"{f['percent']}%" + (f", about {eta_s} s left" if eta_s is not None else "")
        elif f.get("phase") == "catching up":
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

    def _show(self, done: int, head: int) -> None:
        if self.progress is None or self.progress.phase != "catching up":
            self.progress = CatchUpProgress(first=0, target=head, done=done, started=time.monotonic())
        self.progress.done = done

    async def distrust(self, store: EventStore) -> str | None:
        """Why the file in use cannot simply be caught up (so a build beside it is due), or None.

        A projection missing or of another version; the file made from another log (its
        event 1 differs); a checkpoint beyond the log's head, or whose event's hash is
        not the log's (an edited file, or a log rewritten under it); a trigger or view,
        which rollwatch never makes there. Row edits that keep the checkpoints are not
        detected: nothing short of a rebuild would.
        """
        return (await self._assess(store))[0]

    async def _assess(self, store: EventStore) -> tuple[str | None, list[str]]:
        """:meth:`distrust`'s why, and the projections to build when that is all a build
        beside needs to do: when the only fault is projections new or of another version
        (a release that changed them) in a file that is otherwise this log's, at its
        anchor, the others are kept (copied into the new file) rather than built again."""
        first = await _event_hash(store, 1)

        def read(db: sqlite3.Connection) -> tuple[str | None, list[str], str | None, dict[str, int]]:
            schema = db.execute("SELECT type, name FROM sqlite_master").fetchall()
            # rollwatch makes no trigger or view here; one added can change or drop rows as
            # they are written or read (a public result deleted as it is released, each time).
            if added := [f"{kind} {name}" for kind, name in schema if kind in ("trigger", "view")]:
                return f"it holds what rollwatch never makes there: {', '.join(added)}", [], None, {}
            tables = {name for kind, name in schema if kind == "table"}
            if "projection_state" not in tables:
                return "no projections yet", [], None, {}
            state = {
                r[0]: (r[1], r[2]) for r in db.execute("SELECT name, version, seq FROM projection_state")
            }
            stale: list[str] = []
            reasons: list[str] = []
            for p in self.projections:
                if p.name not in state:
                    stale.append(p.name)
                    reasons.append(f"projection {p.name} is new")
                elif state[p.name][0] != p.version:
                    stale.append(p.name)
                    reasons.append(f"projection {p.name} is of version {state[p.name][0]}, now {p.version}")
            anchor = None
            if "projection_log" in tables:
                row = db.execute("SELECT first_hash, anchor_seq, anchor_hash FROM projection_log").fetchone()
                if row is not None and None not in (row[0], first) and row[0] != first:
                    return "made from another log", [], None, {}
                if row is not None and row[1]:
                    anchor = f"{row[1]}:{row[2]}"
            applied = {
                p.name: state[p.name][1] for p in self.projections if p.name in state and p.name not in stale
            }
            return ("; ".join(reasons) or None), stale, anchor, applied

        try:
            why, stale, anchor, applied = await self._run(read)
        except sqlite3.DatabaseError as exc:
            return f"unreadable ({exc})", []
        # The log's head is read after the file: every seq the file holds is then within it,
        # while a daemon goes on appending and catching the file up (the log only grows). Read
        # before, an event appended and applied in between made the file "beyond the log's
        # head" and the command (a report, an export) built every projection again from the
        # whole log, when the file only held an event the head it read did not.
        head = await store.head()
        for name, seq in applied.items():
            if seq > head:
                return f"projection {name} is at seq {seq}, beyond the log's head {head}", []
        if anchor is not None:
            seq, recorded = anchor.split(":", 1)
            if await _event_hash(store, int(seq)) != recorded:
                return (
                    f"the hash of its event {seq} is not the log's (an edited file, or a rewritten log)",
                    [],
                )
        if len(stale) == len(self.projections):
            stale = []  # nothing to keep: a whole build
        return why, stale

    def distrusted(self, why: str) -> None:
        """A reader found the file in use saying what the log does not (a row edited by
        someone holding the file): hand it to :attr:`on_distrusted`, if anyone listens."""
        if self.on_distrusted is not None:
            self.on_distrusted(why)

    async def rebuild_beside(
        self,
        store: EventStore,
        *,
        progress: Callable[[int, int], None] | None = None,
        only: Collection[str] | None = None,
    ) -> int:
        """Build every projection from the log into a new file beside the one in use, then
        switch ``path`` to it atomically; return the seq it is current to.

        Until the switch, this process and any other keep reading (and catching up) the
        previous file; a process killed meanwhile leaves it untouched (the unfinished
        file is deleted by the next build). The new file is written without a journal
        and without syncs (it is derived from the log; a crash only means building it
        again) and synced once complete. Other processes follow the switch at their next
        catch-up; a previous file is deleted once no process holds it.

        ``only``: build just these projections from the log, and copy every other one (its
        tables and checkpoint) from the file in use, then catch those up. For a release that
        changed some projections: :meth:`build` passes the ones :meth:`distrust` found new or
        of another version in a file it otherwise trusts. A copy that cannot be made (a kept
        table missing or of another shape in the file in use) means a whole build.
        """
        async with self._switching, self._build_lock():
            await anyio.to_thread.run_sync(self._collect)
            new = await anyio.to_thread.run_sync(self._new_generation)
            # Held from its creation: no other process's collect deletes it meanwhile.
            building = await anyio.to_thread.run_sync(_hold, new)
            try:
                w = await ThreadConnection.open(new, _BUILD_PRAGMAS)
                try:
                    first = await _event_hash(store, 1)
                    # A whole build fills tables with no secondary index (no projection
                    # reads one while it applies events: each reads and writes by primary
                    # key), and indexes them once full: a sort per index instead of an
                    # index entry moved for every row written.
                    indexes_later = only is None
                    await w.run(functools.partial(self._setup, indexes=not indexes_later))
                    await w.run(_record_log, first)
                    head = await store.head()
                    if progress is not None:
                        progress(0, head)
                    kept = [p for p in self.projections if only is not None and p.name not in only]
                    if kept and not await w.run(_copy_kept, self.file, kept):
                        log.warning(
                            "projections_not_kept",
                            file=str(self.file),
                            projections=[p.name for p in kept],
                            reason="their tables in the file in use are not what this release makes",
                            action="building every projection",
                        )
                        kept = []
                    if kept:
                        built = ProjectionDB(
                            new, [p for p in self.projections if p not in kept], split_from=self.split_from
                        )
                        head = await built._fill(store, new, w, head, progress)
                        # The kept ones, from the checkpoints they were copied with.
                        head = await self.catch_up(store, until=head, writer=w)
                    else:
                        head = await self._fill(store, new, w, head, progress)
                    if indexes_later:
                        await w.run(self._index)
                    await w.run(_finish_build)
                finally:
                    await w.close()
                await anyio.to_thread.run_sync(_fsync, new)
                await anyio.to_thread.run_sync(self._point_at, new)
                await self._switch_to(new, store)
            except BaseException as e:
                # A full disk (sqlite3.Error), or cancelled (Ctrl-C on `rollwatch rebuild`,
                # SIGTERM while serve builds): the file in use (or, once switched, the new one)
                # stays as it was; the unfinished one goes at once (it takes the space of a
                # whole build, which the next attempt needs). Shielded: a cancelled build
                # still removes it, in a thread rather than on the event loop.
                os.close(building)
                building = -1
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._collect)
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"cannot build the projections in {new}: {e}") from e
                raise
            finally:
                if building >= 0:
                    os.close(building)
            await anyio.to_thread.run_sync(self._collect)
            return head

    async def _fill(
        self,
        store: EventStore,
        new: Path,
        w: ThreadConnection,
        head: int,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        """Build every projection into ``new`` (set up, empty) up to ``head``.

        A large log is split between two processes (the cores a rebuild can use): the
        heavier half of the projections is built here, the other by a second Python
        process into a file of its own, whose tables are then copied in (SQLite copies a
        table into an empty one of the same schema page by page). Both read the log up to
        the same ``head``. If the second process fails, or is not done long after this
        half (:attr:`split_grace`), it is killed and its half built here after all.
        """
        split = self._split(store, head)
        if split is None:
            return await self.catch_up(store, until=head, progress=progress, writer=w)
        here, there, opener = split
        part = new.with_name(new.name.removesuffix(".db") + ".part.db")
        held = await anyio.to_thread.run_sync(_hold, part)  # no other process collects it
        try:
            failed: list[str] = []

            t0 = time.monotonic()
            took: dict[str, float] = {}
            ended = anyio.Event()

            async def beside() -> None:
                try:
                    why = await _build_in_process(opener, there, part, head)
                finally:
                    ended.set()
                took["beside_s"] = round(time.monotonic() - t0, 2)
                if why is not None:
                    failed.append(why)

            async with anyio.create_task_group() as tg:
                tg.start_soon(beside)
                await ProjectionDB(new, here, split_from=None).catch_up(
                    store, until=head, progress=progress, writer=w
                )
                here_s = took["here_s"] = round(time.monotonic() - t0, 2)
                # This half's tables are indexed while the other process finishes (the
                # build indexes every table once full; those are then there already).
                await w.run(ProjectionDB(new, here, split_from=None)._index)
                # The halves take about as long: one that takes far longer than ours is
                # stuck (a lock it waits for, say), and is killed rather than waited for.
                limit = max(self.split_grace, 2 * here_s)
                with anyio.move_on_after(limit):
                    await ended.wait()
                if not ended.is_set():
                    failed.append(f"not done {limit:.0f} s after this process's half: killed")
                    tg.cancel_scope.cancel()
            if failed:
                log.warning(
                    "projections_split_failed",
                    projections=[p.name for p in there],
                    error=failed[0],
                    action="building them in this process",
                )
                await ProjectionDB(new, there, split_from=None).catch_up(store, until=head, writer=w)
            else:
                t1 = time.monotonic()
                await w.run(_merge, part, there, head)
                took["copy_s"] = round(time.monotonic() - t1, 2)
            log.info(
                "projections_built_split",
                here=[p.name for p in here],
                beside=[p.name for p in there],
                **took,
            )
        finally:
            os.close(held)
            with anyio.CancelScope(shield=True):  # cancelled too (the process is killed by now)
                await anyio.to_thread.run_sync(_remove, part)
        return head

    def _split(
        self, store: EventStore, head: int
    ) -> tuple[list[Projection], list[Projection], Callable[[], EventStore]] | None:
        """The projections to build here and in a second process, and how it opens the log;
        None when a build is better done in one (a small log, one projection, a store or a
        projection that cannot be sent to another process)."""
        if self.split_from is None or head < self.split_from or len(self.projections) < 2:
            return None
        opener = store.opener()
        if opener is None:
            return None
        # Heaviest first, each to the lighter half; the other process starts Python first.
        here: list[Projection] = []
        there: list[Projection] = []
        load = [0.0, _START_WEIGHT]
        for p in sorted(self.projections, key=lambda p: -p.build_weight):
            side = 0 if load[0] <= load[1] else 1
            (here, there)[side].append(p)
            load[side] += p.build_weight
        if not there:
            return None
        try:
            pickle.dumps((opener, there))
        except Exception as exc:  # a projection of a plug-in holding a lock, say
            log.info("projections_not_split", reason=f"cannot send them to another process: {exc}")
            return None
        return here, there, opener

    async def _switch_to(self, file: Path, store: EventStore) -> None:
        """Use ``file`` from now on, once caught up with the log (never an older state)."""
        w = await ThreadConnection.open(file, _WRITER_PRAGMAS)
        r = await ThreadConnection.open(file, _PRAGMAS)
        try:
            await self.catch_up(store, writer=w)
        except BaseException:
            await w.close()
            await r.close()
            raise
        old = [c for c in (self._w, self._r) if c is not None]
        self._w, self._r = w, r
        await anyio.to_thread.run_sync(self._use, file)
        # A unit may still be queued on the old connections: they are closed later.
        for c in self._retired:
            await c.close()
        self._retired = old

    async def _follow(self, store: EventStore) -> None:
        """Switch to the file another process's rebuild linked ``path`` to, if any."""
        async with self._switching:
            linked = self._linked()
            if linked == self.file or not linked.exists():
                return
            log.info("projections_following_rebuild", file=str(linked))
            try:
                await self._switch_to(linked, store)
                damaged = None
            except sqlite3.DatabaseError as e:
                damaged = e
        if damaged is not None:
            # Not a projections file (garbage copied over ``path``, say): the one in use
            # stays until a new one, built from the log, replaces both.
            log.error("projections_file_unusable", file=str(linked), error=str(damaged), action="rebuilding")
            await self.rebuild_beside(store)
            return
        await anyio.to_thread.run_sync(self._collect)

    async def __aexit__(self, *exc: object) -> None:
        for db in (self._w, self._r, *self._retired):
            if db is not None:
                await db.close()
        self._w = self._r = None
        self._retired = []
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None

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

    async def fetchall_applied(
        self, sql: str, params: Sequence[Any], projection: str
    ) -> tuple[list[Row], int]:
        """:meth:`fetchall`, and the seq ``projection`` had applied the log up to, read in the same
        snapshot: what the rows say, they say of the log's events up to that seq. The file moves
        on under a reader (the daemon catches it up, in this process or another), so :attr:`applied`
        (this process's last catch-up) may be behind what a row already holds."""
        assert self._r is not None, "use ProjectionDB with `async with`"

        def read(db: sqlite3.Connection) -> tuple[list[Row], int]:
            db.execute("BEGIN")
            try:
                rows = db.execute(sql, params).fetchall()
                seq = db.execute("SELECT seq FROM projection_state WHERE name = ?", (projection,)).fetchone()
            finally:
                rollback(db)
            return rows, int(seq[0]) if seq is not None and isinstance(seq[0], int) else 0

        return await self._r.run(read)

    # -- schema and checkpoints ---------------------------------------------------------

    def _setup(self, db: sqlite3.Connection, *, indexes: bool = True) -> None:
        """Create the tables (and, ``indexes``, their secondary indexes) and checkpoints that
        are missing; drop a projection's tables made by another of its versions first."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS projection_state "
                "(name TEXT PRIMARY KEY, version INTEGER NOT NULL, seq INTEGER NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS projection_log (id INTEGER PRIMARY KEY CHECK (id = 1),"
                " first_hash TEXT, anchor_seq INTEGER, anchor_hash TEXT)"
            )
            have = {r[1] for r in db.execute("PRAGMA table_info(projection_log)")}
            for col in ("anchor_seq INTEGER", "anchor_hash TEXT"):  # a file of an older release
                if col.split()[0] not in have:
                    db.execute(f"ALTER TABLE projection_log ADD COLUMN {col}")
            db.execute("INSERT OR IGNORE INTO projection_log (id) VALUES (1)")
            state = {r[0]: r[1] for r in db.execute("SELECT name, version FROM projection_state")}
            for p in self.projections:
                if state.get(p.name) not in (None, p.version):
                    log.info("projection_version_changed", projection=p.name, rebuild=True)
                    self._drop(db, p)
                for stmt in filter(str.strip, p.ddl.split(";")):
                    if indexes or not _is_index(stmt):
                        db.execute(stmt)
                db.execute(
                    "INSERT OR IGNORE INTO projection_state (name, version, seq) VALUES (?, ?, 0)",
                    (p.name, p.version),
                )
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise

    def _index(self, db: sqlite3.Connection) -> None:
        """Create the secondary indexes :meth:`_setup` left out (``indexes=False``)."""
        db.execute("BEGIN")
        try:
            for p in self.projections:
                for stmt in filter(_is_index, p.ddl.split(";")):
                    db.execute(stmt)
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
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

    async def checkpoints(self, conn: ThreadConnection | None = None) -> dict[str, int]:
        """Each projection's last applied seq (in the file ``conn`` writes, by default the one in use)."""
        if conn is None:
            rows = await self.fetchall("SELECT name, seq FROM projection_state")
        else:
            rows = await conn.fetchall("SELECT name, seq FROM projection_state")
        return {r[0]: r[1] for r in rows}

    # -- catching up -----------------------------------------------------------------------

    async def catch_up(
        self,
        store: EventStore,
        *,
        until: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        writer: ThreadConnection | None = None,
    ) -> int:
        """:meth:`_catch_up`; a file in use found damaged (garbage written over it: SQLite
        says "malformed" or "not a database") is rebuilt from the log beside it."""
        try:
            return await self._catch_up(store, until=until, progress=progress, writer=writer)
        except UnknownEventType as e:
            # A type or schema this release cannot read, or a row edited to look so (a
            # schema column raised to say "upgrade rollwatch", hiding the edit): an event
            # whose stored hash is not that of its content is named as tampering.
            if e.seq is not None and (edited := await _edited(store, e.seq)) is not None:
                raise edited from e
            raise
        except sqlite3.DatabaseError as e:
            if writer is not None or type(e) is not sqlite3.DatabaseError:
                raise
            log.error("projections_file_damaged", file=str(self.file), error=str(e), action="rebuilding it")
            await self.rebuild_beside(store)
            return await self._catch_up(store, until=until, progress=progress)

    async def _catch_up(
        self,
        store: EventStore,
        *,
        until: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        writer: ThreadConnection | None = None,
    ) -> int:
        """Apply every event not yet applied, in one pass over the log; return the seq now applied.

        ``writer``: into that file (a build beside) instead of the one in use. Without it,
        a switch another process's rebuild made is followed first.

        One pass for every projection: each event is read once, decoded once (however
        many projections read it) and handed to each projection that wants its type.
        Pages are read and applied in turn, each transaction applying about
        ``_TXN_EVENTS`` events. Memory stays flat whatever the log's size: about
        ``_TXN_EVENTS`` events are held at a time.
        """
        if writer is None and self._linked() != self.file:
            await self._follow(store)
        cps = await self.checkpoints(writer or self._w)
        start = min((cps.get(p.name, 0) for p in self.projections), default=0)
        head = until if until is not None else await store.head()
        types = set().union(*(p.types for p in self.projections))
        if start < head:
            # Read, then apply, in turn: a reader thread running beside the writer cost more
            # than it overlapped (both drop and take the GIL on every row SQLite steps
            # through): 200k events in one process took 7.1-7.4 s so, 6.0-6.5 s in turn.
            # Closed when done or failed, not left to the garbage collector (a store may
            # hold a connection between pages).
            # A build beside (``writer``) pauses the cyclic garbage collector from the first
            # page of a batch until the batch is applied, as ``_apply`` does while applying:
            # each page is thousands of new rows held until then, and the collector walked
            # them (and, at each full collection, the whole heap) again and again for
            # nothing, 3-4% of a build's instructions. It runs between batches.
            paused = False
            pending: list[Recorded] = []
            pages = store.read_batches(after=start, types=types, until=head, batch=_PAGE, lean=True)
            try:
                async with contextlib.aclosing(pages):  # type: ignore[type-var]  # an async generator
                    async for page in pages:
                        if writer is not None and not paused:
                            _gc_pause()
                            paused = True
                        pending.extend(page)
                        if len(pending) >= _TXN_EVENTS:
                            await self._w_apply(pending, None, writer)
                            if progress is not None:
                                progress(pending[-1][0], head)
                            pending = []
                            if paused:
                                _gc_resume()
                                paused = False
                if pending:
                    await self._w_apply(pending, None, writer)
            finally:
                if paused:
                    _gc_resume()
        await self._w_apply([], head, writer)
        if progress is not None:
            progress(head, head)
        if writer is None:
            self.applied = max(self.applied, head)
        return head

    async def _w_apply(
        self, events: list[Recorded], upto: int | None, writer: ThreadConnection | None
    ) -> None:
        conn = writer or self._w
        assert conn is not None, "use ProjectionDB with `async with`"
        try:
            await conn.run(self._apply, events, upto)
        finally:
            while self._found:
                self.distrusted(self._found.pop(0))

    def _apply(self, db: sqlite3.Connection, events: list[Recorded], upto: int | None) -> None:
        if not events and upto is None:
            return
        with _gc_paused() if len(events) >= _PAUSE_GC_FROM else contextlib.nullcontext():
            self._apply_in_txn(db, events, upto)

    def _apply_in_txn(self, db: sqlite3.Connection, events: list[Recorded], upto: int | None) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            self._no_foreign_schema(db)
            cps = {r[0]: r[1] for r in db.execute("SELECT name, seq FROM projection_state")}
            done = {p.name: cps.get(p.name, 0) for p in self.projections}
            floor = min(done.values(), default=0)
            # Each projection gets its share of the batch in one call (its order among
            # the projections is no contract: none reads another's tables); each event
            # is decoded once however many projections read it.
            by_type = self._by_type
            slim = self._slim
            shares: dict[str, list[Recorded]] = {p.name: [] for p in self.projections}
            if all(d == floor for d in done.values()):
                # Every projection at one checkpoint (a build, a daemon's catch-up): each
                # event after it goes to every projection of its type, unchecked.
                adds = {t: [shares[p.name].append for p in ps] for t, ps in by_type.items()}
                for rec in events:
                    if rec[0] > floor and (to := adds.get(rec[4])):
                        once = _decoded(rec, slim)
                        for add in to:
                            add(once)
            else:
                for rec in events:
                    seq = rec[0]
                    if seq <= floor:
                        continue
                    wants = by_type.get(rec[4])
                    if not wants:
                        continue
                    once = _decoded(rec, slim)
                    for p in wants:
                        if seq > done[p.name]:
                            shares[p.name].append(once)
            for p in self.projections:
                if shares[p.name]:
                    try:
                        p.apply_batch(db, shares[p.name])
                    except _BAD_VALUE as exc:
                        raise _naming_the_event(shares[p.name], exc) from exc
            last = events[-1][0] if events else 0
            if upto is not None:
                last = max(last, upto)
            for p in self.projections:
                if last > done[p.name]:
                    db.execute("UPDATE projection_state SET seq = ? WHERE name = ?", (last, p.name))
            if events:
                # An event this file has applied, with its hash: a later start checks the
                # log still has it (see ``distrust``).
                db.execute(
                    "UPDATE projection_log SET anchor_seq = ?, anchor_hash = ?",
                    (events[-1][0], events[-1][8]),
                )
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise

    def _no_foreign_schema(self, db: sqlite3.Connection) -> None:
        """Drop a trigger or view someone added to the file while it is in use, before this
        transaction writes a row, and have the file built again from the log.

        rollwatch makes none there. One added under a running daemon (an ``AFTER INSERT`` that
        deletes each new public row of a problem) acted on every write until the next start,
        which builds such a file again (:meth:`distrust`). The schema's version moves with any
        such change, so it is looked at only when it moved: one PRAGMA a transaction. The
        file is not trusted after that (what the trigger did before cannot be told apart), so
        it is handed to :attr:`on_distrusted` (from the event loop): a daemon builds it again beside.
        """
        version = db.execute("PRAGMA schema_version").fetchone()[0]
        if self._schema_seen == (id(db), version):
            return
        added = db.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
        ).fetchall()
        for kind, name in added:
            db.execute(f'DROP {kind.upper()} IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')
        if added:
            why = f"it holds what rollwatch never makes there: {', '.join(f'{k} {n}' for k, n in added)}"
            log.error("projections_tampered", file=str(self.file), reason=why, action="dropped; rebuilding")
            self._found.append(why)  # handed on from the event loop (this is the writer's thread)
            version = db.execute("PRAGMA schema_version").fetchone()[0]
        self._schema_seen = (id(db), version)

    @functools.cached_property
    def _slim(self) -> dict[str, frozenset[str]]:
        """Event type -> the fields none of the projections reading it reads
        (:attr:`Projection.unread`): the catch-up leaves them unparsed (:func:`_decoded`)."""
        out: dict[str, frozenset[str]] = {}
        for t, ps in self._by_type.items():
            unread = frozenset.intersection(*(frozenset(p.unread.get(t, ())) for p in ps))
            if unread:
                out[t] = unread
        return out

    @functools.cached_property
    def _by_type(self) -> dict[str, list[Projection]]:
        """Event type -> the projections that read it, in the projections' order."""
        out: dict[str, list[Projection]] = {}
        for p in self.projections:
            for t in p.types:
                out.setdefault(t, []).append(p)
        return out


_BAD_VALUE = (
    TypeError,
    ValueError,
    AttributeError,
    KeyError,
    OverflowError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)
"""What a projection raises on an event whose field holds a value of another type (an
``"abc"`` cost, an object for a name): no writer of ours makes one."""


def _naming_the_event(recs: Sequence[Recorded], exc: Exception) -> Exception:
    """The error to raise for ``exc``, raised by a projection applying ``recs``: the first
    event among them with a field of the wrong type, named as an unreadable event is (the
    read models stop there, as on a field missing), else ``exc`` itself (a bug of ours)."""
    for rec in recs:
        # Decoded whole (the catch-up left the bodies as JSON text: see ``_decoded``).
        why = e.wrong_field(Recorded.event(rec))
        if why is not None:
            return UnknownEventType(
                f"event {rec.seq}: its {rec.type} data is not what rollwatch writes ({why})"
            )
    return exc


_BUILD_PRAGMAS = ("PRAGMA journal_mode=OFF", "PRAGMA synchronous=OFF", "PRAGMA cache_size=-32768")
"""A file built beside the one in use: no journal, no syncs until it is complete (it is
derived from the log: a crash means building it again, never repairing it). A 32 MB cache
holds the indexes' hot pages; more only grows a rebuild's memory."""


def _is_index(stmt: str) -> bool:
    """Whether a DDL statement creates a (non-unique) secondary index."""
    return stmt.lstrip().upper().startswith("CREATE INDEX")


def _hold(file: Path) -> int:
    """A descriptor of ``file`` with a shared flock: "in use, do not delete" (see ``_collect``)."""
    fd = os.open(file, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _record_log(db: sqlite3.Connection, first: str | None) -> None:
    db.execute("UPDATE projection_log SET first_hash = coalesce(first_hash, ?)", (first,))


async def _build_in_process(
    opener: Callable[[], EventStore], projections: list[Projection], file: Path, head: int
) -> str | None:
    """Build ``projections`` into ``file`` up to ``head`` in a second Python process; None
    once done, else why it failed. Cancelled, it kills the process.

    Its log (warnings and errors, as JSON lines or for a terminal like ours) goes to our
    stderr, so to the journal under systemd; its stdout carries only why it failed.
    """
    request = pickle.dumps((opener, projections, str(file), head))
    env = _child.env()
    # The process imports rollwatch from where this process did.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (_SRC, env.get("PYTHONPATH"))))
    try:
        done = await anyio.run_process(
            [
                sys.executable,
                "-c",
                "from rollwatch.projections import build_part; build_part()",
            ],
            input=request,
            check=False,
            env=env,
            stderr=None,
            start_new_session=True,
        )
    except OSError as exc:
        return f"could not start {sys.executable}: {exc}"
    if done.returncode != 0:
        why = done.stdout[-2000:].decode(errors="replace").strip()
        return f"exit status {done.returncode}: {why or 'no message'}"
    return None


_SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _remove(db: Path) -> None:
    """Delete a database file with its journals."""
    for extra in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{extra}").unlink(missing_ok=True)


def build_part() -> None:
    """The second process of a split build: read what to build from stdin (pickled by
    :func:`_build_in_process`), build it, exit 0; else log the error (stderr), write its
    message to stdout and exit 1."""
    _child.die_with_parent()
    opener, projections, file, head = pickle.load(sys.stdin.buffer)  # noqa: S301 (our own parent's)
    # What importing made lives as long as the process: the collector need not walk it.
    gc.freeze()

    async def build() -> None:
        async with opener() as store:
            part = ProjectionDB(file, projections, split_from=None)
            w = await ThreadConnection.open(Path(file), _BUILD_PRAGMAS)
            try:
                # Its tables are copied into the new file, which is indexed once complete.
                await w.run(functools.partial(part._setup, indexes=False))
                await part.catch_up(store, until=head, writer=w)
            finally:
                await w.close()

    from rollwatch.log import configure_logging

    configure_logging("warning")
    try:
        anyio.run(build)
    except Exception as exc:
        log.error("projections_part_failed", error=f"{type(exc).__name__}: {exc}")
        print(f"{type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)


def _merge(db: sqlite3.Connection, part: Path, projections: list[Projection], head: int) -> None:
    """Copy the tables of ``projections`` from ``part`` (built by another process up to
    ``head``) into this file's empty ones, with their checkpoints. Everything is checked
    before a row is copied: this file has no journal to roll back with."""
    db.execute("ATTACH DATABASE ? AS part", (str(part),))
    try:
        state = dict(db.execute("SELECT name, seq FROM part.projection_state").fetchall())
        made = {r[0] for r in db.execute("SELECT name FROM part.sqlite_master WHERE type = 'table'")}
        tables = {t for p in projections for t in p.tables}
        if missing := made - tables - {"projection_state", "projection_log"}:
            raise RuntimeError(f"tables no projection names were built beside: {sorted(missing)}")
        for p in projections:
            if state.get(p.name) != head:
                raise RuntimeError(f"projection {p.name} was built to seq {state.get(p.name)}, not {head}")
        db.execute("BEGIN")
        for p in projections:
            for t in p.tables:
                if t in made:
                    db.execute(f"INSERT INTO main.{t} SELECT * FROM part.{t}")
            db.execute("UPDATE main.projection_state SET seq = ? WHERE name = ?", (head, p.name))
        db.execute("COMMIT")
    finally:
        rollback(db)
        db.execute("DETACH DATABASE part")


def _copy_kept(db: sqlite3.Connection, current: Path, kept: list[Projection]) -> bool:
    """Copy the tables and checkpoints of ``kept`` from ``current`` (the file in use) into
    this new file's empty ones, in one read of ``current`` (a consistent state, whatever
    another process commits meanwhile). False, copying nothing, when a kept table or index
    in ``current`` is missing or not defined as this release defines it."""
    db.execute("ATTACH DATABASE ? AS cur", (str(current),))
    try:
        db.execute("BEGIN")
        names = [t for p in kept for t in p.tables]
        schema = "SELECT type, name, tbl_name, sql FROM {}.sqlite_master WHERE tbl_name IN ({}) ORDER BY name"
        marks = ", ".join("?" * len(names))
        if (
            db.execute(schema.format("main", marks), names).fetchall()
            != db.execute(schema.format("cur", marks), names).fetchall()
        ):
            return False
        state = dict(db.execute("SELECT name, seq FROM cur.projection_state").fetchall())
        if any(p.name not in state for p in kept):
            return False
        for p in kept:
            for t in p.tables:
                db.execute(f"INSERT INTO main.{t} SELECT * FROM cur.{t}")
            db.execute("UPDATE main.projection_state SET seq = ? WHERE name = ?", (state[p.name], p.name))
        db.execute("COMMIT")
        return True
    finally:
        rollback(db)
        db.execute("DETACH DATABASE cur")


def _finish_build(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _edited(store: EventStore, seq: int) -> IntegrityError | None:
    """The error naming event ``seq`` when its stored hash is not the hash of its content
    and the previous event's hash (a row edited after it was appended), else None."""
    recs = await store.read_at([seq - 1, seq] if seq > 1 else [seq])
    rec = recs.get(seq)
    if rec is None or (seq > 1 and seq - 1 not in recs):
        return None  # a gap: the integrity checks name it
    prev = bytes.fromhex(recs[seq - 1].hash) if seq > 1 else GENESIS
    try:
        if chain_hash(prev, rec.canonical()).hex() == rec.hash:
            return None
    except (ValueError, TypeError):  # a hash or field no writer of ours makes
        pass
    return IntegrityError(
        seq,
        f"its hash does not match its content and the previous hash (the row was edited): "
        f"its {rec.type!r} schema {rec.schema} is no newer release's event",
    )


async def _event_hash(store: EventStore, seq: int) -> str | None:
    """The chain hash of the log's event ``seq``, or None if there is none."""
    async for page in store.read_batches(after=seq - 1, until=seq, batch=1):
        if page and page[0].seq == seq:
            return page[0].hash
    return None


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
_PAUSE_GC_FROM = 500
"""A batch of at least this many events is applied with the cyclic garbage collector paused."""
_gc_lock = threading.Lock()
_gc_pausers = 0


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large batch is applied (and so in this process).

    A batch's decoded events and rows are thousands of young containers that live until
    the batch ends: the collector would walk them again and again for nothing (a fifth
    of a rebuild's CPU). Reference counting still frees everything it can; cycles made
    meanwhile are collected once the last pauser is done. Nested and concurrent pauses
    (two catch-ups in one process) count: the collector is enabled again only by the last,
    and only if it was enabled before the first.
    """
    _gc_pause()
    try:
        yield
    finally:
        _gc_resume()


def _gc_pause() -> None:
    """One more pauser of the cyclic garbage collector (see :func:`_gc_paused`)."""
    global _gc_pausers
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_state[0] = gc.isenabled()
            gc.disable()
        _gc_pausers += 1


def _gc_resume() -> None:
    """One pauser fewer: the last enables the collector again if it was enabled before."""
    global _gc_pausers
    with _gc_lock:
        _gc_pausers -= 1
        if _gc_pausers == 0 and _gc_state[0]:
            gc.enable()


_gc_state = [True]
_TXN_EVENTS = 5000
"""About this many events are applied per projection transaction (bounded memory: a few MB)."""


class _Decoded(Recorded):
    """A :class:`Recorded` carrying its typed event, decoded once however many projections
    read it: the row's nine fields and the event as a tenth, so :meth:`event` is an index.

    A tuple with no ``__dict__`` (one ``tuple.__new__``, no ``__init__``): a dict per event
    and a lookup per call cost a catch-up a fifth of its decoding.
    """

    __slots__ = ()

    def event(self) -> e.Event:
        return self[9]  # type: ignore[no-any-return,misc]


def _decoded(rec: Recorded, slim: Mapping[str, frozenset[str]]) -> _Decoded:
    """``rec`` with its event, decoded as :meth:`Recorded.event` would (with orjson), but
    for the fields ``slim`` names for its type (those no read model of the catch-up reads),
    which hold their JSON text unparsed (:func:`_slim_loads`)."""
    try:
        unread = slim.get(rec[4])
        data = fast_loads(rec[7]) if unread is None else _slim_loads(rec[4], rec[5], unread, rec[7])
        ev = e.decode(rec[4], rec[5], data)
    except (ValueError, RecursionError, UnknownEventType) as exc:
        raise e.unreadable(rec[0], rec[4], exc) from None
    return tuple.__new__(_Decoded, (*rec, ev))


def _slim_loads(type_: str, schema: int, unread: frozenset[str], text: str) -> Any:
    """An event's data as :func:`fast_loads` reads it, but with the fields ``unread`` left
    as their JSON text (``msgspec.Raw``): found, skipped over, never made into objects.

    An answer's text, its reasoning and the request are most of a log's bytes, and no read
    model reads them: parsing them into strings and dicts was two thirds of a catch-up's
    parsing (200k events: 0.36 s of parsing in each process of a build, 0.18 s so).
    The other fields are parsed as they are (no type is checked, as :func:`fast_loads`).
    Data of an older schema (which an upcaster may rewrite whole), and any document that
    msgspec refuses (not an object, NaN, a lone surrogate, a number out of range, nesting
    deeper than the recursion limit) are read by :func:`fast_loads` as before.
    """
    cls = e.event_class(type_)
    if cls is None or schema != cls.SCHEMA:
        return fast_loads(text)
    decode = _SLIM_DECODERS.get((cls, unread))
    if decode is None:
        decode = _SLIM_DECODERS[(cls, unread)] = _slim_decoder(cls, unread)
    try:
        return decode(text)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included; msgspec's depth is
        return fast_loads(text)  # the interpreter's recursion limit, orjson's 1,024 levels


_SLIM_DECODERS: dict[tuple[type[e.Event], frozenset[str]], Callable[[str], Any]] = {}


def _slim_decoder(cls: type[e.Event], unread: frozenset[str]) -> Callable[[str], Any]:
    """A msgspec decoder of ``cls``'s data into a dict: every field as it is (``Any``),
    ``unread`` ones as ``msgspec.Raw``; keys it does not name, and missing ones, as the
    document has them (an object of another shape still decodes, then fails as before)."""
    fields_ = {f.name: (msgspec.Raw if f.name in unread else Any) for f in dataclasses.fields(cls)}
    shape = TypedDict(f"{cls.__name__}Data", fields_, total=False)  # type: ignore[misc]
    return msgspec.json.Decoder(shape).decode


def fast_loads(text: str) -> Any:
    """``json.loads`` for the read models, in about half its time (orjson).

    The two agree on every document rollwatch writes. Where orjson refuses one (NaN, a
    lone surrogate, nesting deeper than 1024), ``json`` decides, as it always did. One
    difference remains: an integer beyond 64 bits (none of our writers makes one; a
    provider's usage figures could) reads as the nearest float here. Only the catch-up
    decodes this way (what read models keep); the feed, exports and ``verify`` read
    events with ``json``.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _j(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


NULL = math.nan
"""Binds as SQL NULL, like ``None`` (SQLite stores a NaN as NULL), but several times
cheaper: Python's ``sqlite3`` (3.11) looks an adapter up for every ``None`` it binds
(about 0.7 us each, most of the cost of writing a row of mostly empty columns)."""


class RowBatch:
    """One table's rows that a batch of events touches, each read once and written once.

    For :meth:`Projection.apply_batch`: instead of an ``UPDATE`` per event, a row is
    read (by primary key; :meth:`prefetch` reads many in one query), changed in memory
    as each event says, and written back with one ``executemany`` at :meth:`flush`. A
    row is a dict of every column; ``None`` stands for a row that does not exist.
    """

    __slots__ = ("_changed", "_db", "_load", "_load_many", "_save", "columns", "key", "rows")

    def __init__(self, db: sqlite3.Connection, table: str, columns: Sequence[str], key: int = 1) -> None:
        """``columns``: every column of ``table``; its first ``key`` of them are the primary key."""
        self._db = db
        self.columns = tuple(columns)
        self.key = key
        cols = ", ".join(self.columns)
        where = " AND ".join(f"{c} = ?" for c in self.columns[:key])
        self._load = f"SELECT {cols} FROM {table} WHERE {where}"
        self._load_many = f"SELECT {cols} FROM {table} WHERE {self.columns[0]} IN " if key == 1 else ""
        self._save = f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({', '.join('?' * len(self.columns))})"
        self.rows: dict[Any, dict[str, Any] | None] = {}
        self._changed: dict[Any, None] = {}

    def prefetch(self, keys: Iterable[Any]) -> None:
        """Read the rows of ``keys`` (a one-column key) not read yet, a few hundred per query."""
        want = [k for k in dict.fromkeys(keys) if k not in self.rows]
        for i in range(0, len(want), 500):
            chunk = want[i : i + 500]
            self.rows.update(dict.fromkeys(chunk))
            sql = self._load_many + f"({', '.join('?' * len(chunk))})"
            for r in self._db.execute(sql, chunk):
                self.rows[r[0]] = dict(zip(self.columns, r, strict=True))

    def get(self, key: Any) -> dict[str, Any] | None:
        """The row of ``key`` as it stands in this batch (read, not to be changed), or None."""
        try:
            return self.rows[key]
        except KeyError:
            params = key if self.key > 1 else (key,)
            r = self._db.execute(self._load, params).fetchone()
            row = self.rows[key] = dict(zip(self.columns, r, strict=True)) if r is not None else None
            return row

    def change(self, key: Any) -> dict[str, Any] | None:
        """The row of ``key``, to change in place (written back at :meth:`flush`); None if none."""
        row = self.get(key)
        if row is not None:
            self._changed[key] = None
        return row

    def insert_or_ignore(self, key: Any, values: dict[str, Any]) -> bool:
        """``INSERT OR IGNORE``: a new row of ``values`` (other columns NULL) unless ``key`` has one."""
        if self.get(key) is not None:
            return False
        row = dict.fromkeys(self.columns)
        row.update(values)
        self.rows[key] = row
        self._changed[key] = None
        return True

    def flush(self) -> None:
        """Write every changed row back."""
        if self._changed:
            rows = self.rows
            values = operator.itemgetter(*self.columns)
            self._db.executemany(self._save, [values(r) for k in self._changed if (r := rows[k]) is not None])
            self._changed.clear()


# --- the read models ------------------------------------------------------------------


class RunsProjection(Projection):
    """Runs and their rollouts: what the daemon resumes, what the report counts.

    A rollout's ``passed``/``score`` are its newest verdict (a re-score's, once there is
    one; ``verdict_hash`` names the problem version it was under). Every verdict stays
    in ``verdicts``; ``problem_versions`` dates each version of a problem by the first
    event that named it (a ``ProblemVersioned`` dates it anew), so the newest is known.
    """

    name = "runs"
    build_weight = 1.0
    unread = e.BODIES  # reads no request, answer or scorer's findings
    # 2: verdicts, problem_versions, rollouts.verdict_hash (re-scores); 3: rollouts.served_model;
    # 4: rollouts.list_cost_usd (batched answers at list prices); 5: rollouts.budget_extra_usd;
    # 6: rollouts.open_budget_usd (the reservation of an attempt with no outcome yet)
    version = 6
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
        list_cost_usd REAL,
        budget_extra_usd REAL,
        open_budget_usd REAL
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

    _RUN_COLUMNS = (
        "run_id", "schedule", "provider", "models", "problem_set", "node", "trigger", "rollouts",
        "budget_usd", "started_seq", "started_at", "finished_at", "status", "passed", "cost_usd", "summary",
    )  # fmt: skip
    _ROLLOUT_COLUMNS = (
        "rollout_id", "run_id", "provider", "model", "problem_id", "problem_hash", "sample", "attempts",
        "state", "requested_at", "answered_at", "answer_seq", "cost_usd", "fail_kind", "passed", "score",
        "scored_at", "scored_seq", "reason", "verdict_hash", "served_model", "list_cost_usd",
        "budget_extra_usd", "open_budget_usd",
    )  # fmt: skip

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Apply one event (a batch of one)."""
        self.apply_batch(db, [rec])

    def apply_batch(self, db: sqlite3.Connection, recs: Sequence[Recorded]) -> None:
        """Apply events in order; each touched row is read once and written once."""
        runs = RowBatch(db, "runs", self._RUN_COLUMNS)
        rollouts = RowBatch(db, "rollouts", self._ROLLOUT_COLUMNS)
        versions = RowBatch(db, "problem_versions", ("problem_id", "problem_hash", "seq"), key=2)
        verdicts: list[tuple[Any, ...]] = []
        evs = [(rec, rec.event()) for rec in recs]
        rollouts.prefetch(ev.rollout_id for _, ev in evs if isinstance(ev, ROLLOUT_TYPES))

        def version_seen(pid: str | None, vhash: str | None, seq: int) -> None:
            # INSERT OR IGNORE, which also ignores a row its NOT NULL columns refuse.
            if pid is not None and vhash is not None:
                versions.insert_or_ignore(
                    (pid, vhash), {"problem_id": pid, "problem_hash": vhash, "seq": seq}
                )

        def add_to_run(rollout: dict[str, Any] | None, column: str, amount: float) -> None:
            run = runs.change(rollout["run_id"]) if rollout is not None else None
            if run is not None and run[column] is not None:
                run[column] += amount

        for rec, ev in evs:
            if isinstance(ev, e.RunStarted):
                runs.insert_or_ignore(
                    ev.run_id,
                    {
                        "run_id": ev.run_id,
                        "schedule": ev.schedule,
                        "provider": ev.provider,
                        "models": _j(ev.models),
                        "problem_set": ev.problem_set,
                        "node": ev.node,
                        "trigger": ev.trigger,
                        "rollouts": ev.rollouts,
                        "budget_usd": ev.budget_usd,
                        "started_seq": rec.seq,
                        "started_at": rec.at,
                        "status": "running",
                        "passed": 0,
                        "cost_usd": 0.0,
                    },
                )
            elif isinstance(ev, e.RunFinished):
                if (run := runs.change(ev.run_id)) is not None:
                    run.update(
                        finished_at=rec.at,
                        status=ev.status,
                        passed=ev.passed,
                        cost_usd=ev.cost_usd,
                        summary=canonical_json(ev.to_data()),
                    )
            elif isinstance(ev, e.RolloutRequested):
                row = rollouts.change(ev.rollout_id)
                if row is None:
                    rollouts.insert_or_ignore(
                        ev.rollout_id,
                        {
                            "rollout_id": ev.rollout_id,
                            "run_id": ev.run_id,
                            "provider": ev.provider,
                            "model": ev.model,
                            "problem_id": ev.problem_id,
                            "problem_hash": ev.problem_hash,
                            "sample": ev.sample,
                            "attempts": 1,
                            "state": "requested",
                            "requested_at": rec.at,
                            "open_budget_usd": ev.budget_usd,
                        },
                    )
                else:
                    row["attempts"] += 1
                    if row["open_budget_usd"]:  # the attempt before got no outcome: it may be billed
                        row["budget_extra_usd"] = (row["budget_extra_usd"] or 0.0) + row["open_budget_usd"]
                    row["open_budget_usd"] = ev.budget_usd
                    if row["state"] not in ("answered", "scored"):
                        row["state"] = "requested"
                version_seen(ev.problem_id, ev.problem_hash, rec.seq)
            elif isinstance(ev, e.RolloutResponded):
                if (row := rollouts.change(ev.rollout_id)) is not None:
                    if row["state"] != "scored":
                        row["state"] = "answered"
                    row.update(
                        open_budget_usd=None,
                        answered_at=rec.at,
                        answer_seq=rec.seq,
                        cost_usd=ev.cost_usd,
                        served_model=ev.model,
                        list_cost_usd=ev.list_cost_usd,
                    )
                    if ev.budget_usd:  # counted against the budget beyond its cost
                        extra = max(0.0, ev.budget_usd - (ev.cost_usd or 0.0))
                        row["budget_extra_usd"] = (row["budget_extra_usd"] or 0.0) + extra
                if ev.cost_usd:
                    add_to_run(row, "cost_usd", ev.cost_usd)
            elif isinstance(ev, e.RolloutFailed):
                if (row := rollouts.change(ev.rollout_id)) is not None:
                    row["fail_kind"] = ev.kind
                    row["open_budget_usd"] = None
                    if ev.final and row["state"] == "requested":
                        row["state"] = "failed"
                    if ev.budget_usd:  # an attempt that may have been billed
                        row["budget_extra_usd"] = (row["budget_extra_usd"] or 0.0) + ev.budget_usd
            elif isinstance(ev, e.RolloutScored):
                row = rollouts.change(ev.rollout_id)
                pid, requested_hash = (
                    (row["problem_id"], row["problem_hash"]) if row is not None else (None, None)
                )
                vhash = ev.problem_hash or requested_hash
                if row is not None:
                    row.update(
                        state="scored",
                        passed=int(bool(ev.passed)),
                        score=ev.score,
                        scored_at=rec.at,
                        scored_seq=rec.seq,
                        reason=ev.reason,
                        verdict_hash=vhash,
                    )
                verdicts.append(
                    (rec.seq, ev.rollout_id, pid, vhash, ev.scorer_version, int(bool(ev.passed)), ev.score, 0)
                )
                version_seen(pid, vhash, rec.seq)
                if ev.passed:
                    add_to_run(row, "passed", 1)
            elif isinstance(ev, e.RolloutRescored):
                if (row := rollouts.change(ev.rollout_id)) is not None:
                    row.update(
                        passed=int(bool(ev.passed)),
                        score=ev.score,
                        reason=ev.reason,
                        verdict_hash=ev.problem_hash,
                    )
                verdicts.append(
                    (
                        rec.seq,
                        ev.rollout_id,
                        ev.problem_id,
                        ev.problem_hash,
                        ev.scorer_version,
                        int(bool(ev.passed)),
                        ev.score,
                        1,
                    )
                )
                version_seen(ev.problem_id, ev.problem_hash, rec.seq)
            elif isinstance(ev, e.ProblemVersioned):
                key = (ev.problem_id, ev.problem_hash)
                if (pv := versions.change(key)) is not None:
                    pv["seq"] = rec.seq
                else:
                    version_seen(ev.problem_id, ev.problem_hash, rec.seq)
        runs.flush()
        rollouts.flush()
        versions.flush()
        if verdicts:
            db.executemany(
                "INSERT OR IGNORE INTO verdicts (seq, rollout_id, problem_id, problem_hash, scorer_version,"
                " passed, score, rescore) VALUES (?,?,?,?,?,?,?,?)",
                verdicts,
            )


ROLLOUT_TYPES = (
    e.RolloutRequested,
    e.RolloutResponded,
    e.RolloutFailed,
    e.RolloutScored,
    e.RolloutRescored,
    e.PublicationDecided,
    e.PublicReleased,
)
"""The events of one rollout (each has a ``rollout_id``)."""


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
                "UPDATE schedules SET skipped = skipped + ?, last_fire_at = max(coalesce(last_fire_at, ''), ?),"
                " handled_trigger_seq = max(handled_trigger_seq, ?) WHERE name=?",
                (max(1, ev.fires), ev.due or ev.fire_time, ev.trigger_seq or 0, name),
            )
        elif isinstance(ev, e.ScheduleMissed):
            db.execute("UPDATE schedules SET missed = missed + ? WHERE name=?", (ev.missed, name))
        else:
            db.execute(
                "UPDATE schedules SET last_run_id=?, last_started_at=?, last_finished_at=NULL,"
                " last_status='running', last_fire_at = max(coalesce(last_fire_at, ''), ?),"
                " handled_trigger_seq = max(handled_trigger_seq, ?) WHERE name=?",
                (ev.run_id, rec.at, ev.due or ev.fire_time or rec.at, ev.trigger_seq or 0, name),
            )
