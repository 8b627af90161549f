"""The publication read models: subscribers, the subscriber feed, the public release.

Each keeps its own copy of the rollout context it needs (run, provider, model,
problem) rather than reading another projection's tables: projections are rebuilt
independently, and their order inside one catch-up is not a contract.

Decisions are read from the events, never recomputed: ``not_before`` is the one in
the ``PublicationDecided`` event, so a later change of ``publication.embargo`` only
affects decisions made after it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rollwatch import events as e
from rollwatch.abc import EventStore
from rollwatch.events import Recorded, add_cost, date_length, parse_rfc3339, restored_date
from rollwatch.projections import NULL, Projection, ProjectionDB, RowBatch
from rollwatch.projections import ROLLOUT_TYPES as _ROLLOUT_TYPES

if TYPE_CHECKING:
    from rollwatch.publication.public import EventCheck

_ROLLOUT_EVENTS = frozenset(
    {
        "RolloutRequested",
        "RolloutResponded",
        "RolloutFailed",
        "RolloutScored",
        "RolloutRescored",
        "PublicationDecided",
        "PublicReleased",
    }
)


def _epoch(at: str) -> float:
    return parse_rfc3339(at).timestamp()


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
"""``json.dumps`` with these options, without building an encoder per call (a feed item
is rendered for most events a catch-up applies)."""


def _j(v: Any) -> str:
    return _ENCODE(v)


def _read_rows(db: sqlite3.Connection, select: str, keys: Iterable[str]) -> dict[str, list[Any] | None]:
    """The rows of ``keys`` (``select`` ends with ``WHERE <key> IN ``), as lists by key; None
    for a key without a row. A few hundred keys per query.

    An empty column is :data:`NULL` in these lists (never ``None``): a row is written back
    as it is, without a ``None`` to bind (the costly kind); ``x != x`` tells an empty one.
    """
    want = list(dict.fromkeys(keys))
    rows: dict[str, list[Any] | None] = dict.fromkeys(want)
    for i in range(0, len(want), 500):
        chunk = want[i : i + 500]
        for r in db.execute(select + f"({', '.join('?' * len(chunk))})", chunk):
            rows[r[0]] = [NULL if v is None else v for v in r]
    return rows


def _kinds(of: Callable[[e.Event], int]) -> Callable[[Sequence[e.Event]], list[int]]:
    """The kinds of a batch's events, ``of`` (an event's kind, by ``isinstance``) asked
    once per event class: a batch looks each event's class up in a dict rather than run
    a chain of ``isinstance``. The same answers as ``of`` (a class that
    ``events.register`` puts in place of another is a key of its own)."""
    known: dict[type, int] = {}

    def kinds(events: Sequence[e.Event]) -> list[int]:
        get = known.get
        ks = [get(type(ev), -1) for ev in events]
        if -1 in ks:  # a class not seen yet
            for i, ev in enumerate(events):
                if ks[i] == -1:
                    cls = type(ev)
                    ks[i] = known[cls] if cls in known else known.setdefault(cls, of(ev))
        return ks

    return kinds


class SubscribersProjection(Projection):
    """Every subscriber: key prefix and hash, scopes, expiry, revocation."""

    name = "subscribers"
    version = 1
    tables = ("pub_subscribers",)
    types = frozenset({"SubscriberAdded", "SubscriberRevoked"})
    ddl = """
    CREATE TABLE IF NOT EXISTS pub_subscribers (
        name TEXT PRIMARY KEY, key_prefix TEXT NOT NULL, key_hash TEXT NOT NULL,
        scopes TEXT NOT NULL, expires TEXT, added_at TEXT NOT NULL, added_seq INTEGER NOT NULL,
        revoked_at TEXT, revoked_seq INTEGER, note TEXT
    )
    """

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Add a subscriber, or mark one revoked."""
        ev = rec.event()
        if isinstance(ev, e.SubscriberAdded):
            db.execute(
                "INSERT OR IGNORE INTO pub_subscribers (name, key_prefix, key_hash, scopes, expires,"
                " added_at, added_seq) VALUES (?,?,?,?,?,?,?)",
                (ev.name, ev.key_prefix, ev.key_hash, _j(ev.scopes or []), ev.expires, rec.at, rec.seq),
            )
        elif isinstance(ev, e.SubscriberRevoked):
            db.execute(
                "UPDATE pub_subscribers SET revoked_at = coalesce(revoked_at, ?),"
                " revoked_seq = coalesce(revoked_seq, ?), note = ? WHERE name = ?",
                (rec.at, rec.seq, ev.note, ev.name),
            )


# --- the subscriber feed ------------------------------------------------------------------

FEED_TYPES = frozenset(
    {
        "RunStarted",
        "RunFinished",
        "RolloutScored",
        "RolloutRescored",
        "RolloutFailed",
        "PublicationDecided",
        "PublicReleased",
    }
)
"""Event types a subscriber sees in ``/v1/feed`` (``RolloutFailed`` only when final,
``PublicationDecided`` not with audience "none")."""

FEED_ITEM_KEYS = (
    "seq",
    "id",
    "type",
    "at",
    "hash",
    "run_id",
    "rollout_id",
    "provider",
    "model",
    "problem_id",
    "sample",
    "passed",
    "score",
    "cost_usd",
    "audience",
    "not_before",
    "status",
    "detail",
)
"""Every feed item has exactly these keys (``null`` where they do not apply)."""


# What the feed does with an event, by its class (the kinds of rollouts' events first).
_F_REQUESTED, _F_RESPONDED, _F_ITEM, _F_DECIDED, _F_FAILED, _F_OTHER = range(6)


@_kinds
def _feed_kinds(ev: e.Event) -> int:
    if isinstance(ev, e.RolloutRequested):
        return _F_REQUESTED
    if isinstance(ev, e.RolloutResponded):
        return _F_RESPONDED
    if isinstance(ev, e.RunStarted | e.RunFinished):
        return _F_OTHER
    if isinstance(ev, e.RolloutFailed):
        return _F_FAILED  # an item when final
    if isinstance(ev, e.PublicationDecided):
        return _F_DECIDED  # an item unless its audience is "none"
    return _F_ITEM if isinstance(ev, _ROLLOUT_TYPES) else _F_OTHER


class FeedProjection(Projection):
    """The items of ``/v1/feed``, keyed by ``seq`` (the cursor); rendered when read.

    A subscriber sees each run's start and end, every rollout's score (with its run,
    provider, model, problem, sample and cost joined in), final failures, and every
    publication decision and public release. Requests and answers are not feed items
    (``/v1/rollouts/{id}`` has them in full); schedule and subscriber events never are.
    Nor is a decision with audience "none" (appended beside a verdict that does not go
    to the public, so that every verdict makes as many events): it tells a subscriber
    nothing the verdict's own item does not, and leaving it out keeps the feed's items
    and their ``audience`` values (subscribers, public) what they were before it.

    An item is not stored: the log has the event, ``feed_rollouts`` the rollout's
    context (fixed by its first request), and ``feed_items`` what may change after the
    item: the rollout's cost as it stood then, and whether its context was known.
    :func:`feed_page` renders a page from these (a full copy of every item made this
    table 59% of the file, and JSON-encoding it most of a rebuild's feed work).
    """

    name = "feed"
    build_weight = 0.55
    unread = e.BODIES  # reads no request, answer or scorer's findings
    # 2: RolloutRescored items; 3: items rendered when read; 4: feed_rollouts WITHOUT ROWID (one
    # b-tree, not a table and its key's index: a third less time writing them)
    version = 4
    tables = ("feed_rollouts", "feed_items")
    types = FEED_TYPES | _ROLLOUT_EVENTS
    ddl = """
    CREATE TABLE IF NOT EXISTS feed_rollouts (
        rollout_id TEXT PRIMARY KEY, run_id TEXT, provider TEXT, model TEXT, problem_id TEXT,
        sample INTEGER, cost_usd REAL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS feed_items (seq INTEGER PRIMARY KEY, known INTEGER NOT NULL, cost_usd REAL)
    """

    _CONTEXT = ("run_id", "provider", "model", "problem_id", "sample", "cost_usd")

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Keep the rollout context; record a feed item for the visible types."""
        self.apply_batch(db, [rec])

    def apply_batch(self, db: sqlite3.Connection, recs: Sequence[Recorded]) -> None:
        """Apply events in order: each rollout's context read once (one query for a few
        hundred) and written once, the items inserted with one statement."""
        # Any: the kinds, not isinstance, say which event each is (and so its fields).
        events: list[Any] = [rec.event() for rec in recs]
        kinds = _feed_kinds(events)
        ctx = _read_rows(
            db,
            "SELECT rollout_id, run_id, provider, model, problem_id, sample, cost_usd FROM feed_rollouts"
            " WHERE rollout_id IN ",
            [ev.rollout_id for k, ev in zip(kinds, events, strict=True) if k <= _F_FAILED],
        )
        changed: dict[str, None] = {}
        items: list[tuple[int, int, Any]] = []
        append = items.append
        for k, rec, ev in zip(kinds, recs, events, strict=True):
            if k == _F_ITEM or (k == _F_DECIDED and ev.audience != "none") or (k == _F_FAILED and ev.final):
                row = ctx[ev.rollout_id]
                if row is None:
                    append((rec.seq, 0, NULL))
                else:
                    append((rec.seq, 1, row[6]))
            elif k == _F_REQUESTED:
                rid = ev.rollout_id
                if ctx[rid] is None:
                    ctx[rid] = [rid, ev.run_id, ev.provider, ev.model, ev.problem_id, ev.sample, NULL]
                    changed[rid] = None
            elif k == _F_RESPONDED:
                if ev.cost_usd is not None and (row := ctx[ev.rollout_id]) is not None:
                    row[6] = add_cost(row[6], ev.cost_usd)
                    changed[ev.rollout_id] = None
            elif k == _F_OTHER:
                append((rec.seq, 0, NULL))
        if changed:
            db.executemany(
                "INSERT OR REPLACE INTO feed_rollouts (rollout_id, run_id, provider, model, problem_id, sample,"
                " cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [r for rid in changed if (r := ctx[rid]) is not None],
            )
        if items:
            db.executemany("INSERT OR IGNORE INTO feed_items (seq, known, cost_usd) VALUES (?, ?, ?)", items)

    @classmethod
    def render(cls, rec: Recorded, context: dict[str, Any] | None) -> dict[str, Any]:
        """The item of one visible event; ``context``: its rollout's, with the cost as of the item."""
        ev = rec.event()
        item: dict[str, Any] = dict.fromkeys(FEED_ITEM_KEYS)
        item.update(seq=rec.seq, id=rec.id, type=rec.type, at=rec.at, hash=rec.hash, detail={})
        if isinstance(ev, e.RunStarted):
            item["run_id"] = ev.run_id
            item["provider"] = ev.provider
            item["detail"] = {
                "schedule": ev.schedule,
                "models": ev.models,
                "problem_set": ev.problem_set,
                "rollouts": ev.rollouts,
                "trigger": ev.trigger,
                "budget_usd": ev.budget_usd,
                "problems": len(ev.problems or []),
            }
        elif isinstance(ev, e.RunFinished):
            item["run_id"] = ev.run_id
            item["status"] = ev.status
            item["cost_usd"] = ev.cost_usd
            item["detail"] = {
                "rollouts": ev.rollouts,
                "passed": ev.passed,
                "scored": ev.scored,
                "planned": ev.planned,
                "failures": ev.failures,
                "message": ev.message,
            }
        elif isinstance(
            ev,
            e.RolloutScored | e.RolloutRescored | e.RolloutFailed | e.PublicationDecided | e.PublicReleased,
        ):
            item["rollout_id"] = ev.rollout_id
            if context is not None:
                for k in cls._CONTEXT:
                    item[k] = context[k]
            if isinstance(ev, e.RolloutScored | e.RolloutRescored):
                item["passed"] = bool(ev.passed)
                item["score"] = ev.score
                item["detail"] = {
                    "scorer": ev.scorer,
                    "reason": ev.reason,
                    "problem_hash": ev.problem_hash,
                    "scorer_version": ev.scorer_version,
                }
                if isinstance(ev, e.RolloutRescored):
                    item["detail"] |= {
                        "previous_passed": ev.previous_passed,
                        "previous_problem_hash": ev.previous_problem_hash,
                        "rescore_id": ev.rescore_id,
                    }
            elif isinstance(ev, e.RolloutFailed):
                item["status"] = "failed"
                item["detail"] = {
                    "attempt": ev.attempt,
                    "kind": ev.kind,
                    "status": ev.status,
                    "message": ev.message,
                }
            elif isinstance(ev, e.PublicationDecided):
                item["audience"] = ev.audience
                item["not_before"] = ev.not_before
                item["detail"] = {"embargo_s": ev.embargo_s}
            else:
                item["audience"] = "public"
        return item


async def feed_page(
    store: EventStore,
    pdb: ProjectionDB,
    *,
    after: int,
    until: int,
    limit: int,
    check: EventCheck | None = None,
) -> tuple[list[str], int | None]:
    """Up to ``limit`` feed items after seq ``after`` up to ``until``, as JSON texts, and the
    seq of the last (None if there is none): the events read from the log, the contexts
    from ``feed_rollouts``, one query each. With ``check``, a page holding an event changed
    since it was appended raises :class:`IntegrityError` naming it (nothing of it is served)."""
    rows = await pdb.fetchall(
        "SELECT seq, known, cost_usd FROM feed_items WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
        (after, until, limit),
    )
    if not rows:
        return [], None
    want = {r[0]: r for r in rows}
    recs: list[Recorded] = []
    async for page in store.read_batches(
        after=rows[0][0] - 1, until=rows[-1][0], types=FEED_TYPES, batch=max(2 * len(rows), 100)
    ):
        recs.extend(r for r in page if r.seq in want)
    if check is not None:
        changed, _ = await check.changed(recs, prove=False)
        if changed:
            from rollwatch.integrity.tree import changed_error

            raise changed_error(changed[0])
    events = [(rec, rec.event()) for rec in recs]
    rids = sorted({ev.rollout_id for _, ev in events if isinstance(ev, _ROLLOUT_TYPES)})
    contexts: dict[str, tuple[Any, ...]] = {}
    for i in range(0, len(rids), 500):
        chunk = rids[i : i + 500]
        for r in await pdb.fetchall(
            "SELECT rollout_id, run_id, provider, model, problem_id, sample FROM feed_rollouts"
            f" WHERE rollout_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            contexts[r[0]] = r[1:]
    out = []
    for rec, ev in events:
        _, known, cost = want[rec.seq]
        context = None
        if known and isinstance(ev, _ROLLOUT_TYPES) and (c := contexts.get(ev.rollout_id)) is not None:
            context = dict(zip(FeedProjection._CONTEXT, (*c, cost), strict=True))
        out.append(_j(FeedProjection.render(rec, context)))
    return out, rows[-1][0]


# --- the public release ---------------------------------------------------------------------


# What the public release does with an event, by its class (rollouts' events from _P_REQUESTED).
_P_NONE, _P_RUN_STARTED, _P_RUN_FINISHED, _P_REQUESTED = range(4)
_P_RESPONDED, _P_SCORED, _P_RESCORED, _P_DECIDED, _P_RELEASED, _P_FAILED = range(4, 10)


@_kinds
def _public_kinds(ev: e.Event) -> int:
    if isinstance(ev, e.RunStarted):
        return _P_RUN_STARTED
    if isinstance(ev, e.RunFinished):
        return _P_RUN_FINISHED
    if isinstance(ev, e.RolloutRequested):
        return _P_REQUESTED
    if not isinstance(ev, _ROLLOUT_TYPES):
        return _P_NONE
    if isinstance(ev, e.RolloutResponded):
        return _P_RESPONDED
    if isinstance(ev, e.RolloutScored):
        return _P_SCORED
    if isinstance(ev, e.RolloutRescored):
        return _P_RESCORED
    if isinstance(ev, e.PublicationDecided):
        return _P_DECIDED
    if isinstance(ev, e.PublicReleased):
        return _P_RELEASED
    return _P_FAILED  # changes nothing


class PublicProjection(Projection):
    """Each rollout's result, public decision and release, and each run's end.

    ``passed`` is 1 once any verdict passed the rollout (a superseded result keeps it,
    marked by ``superseded_*``), so a re-score's flip to pass is released like a pass.

    The release job reads pending decisions from it; the public routes and the export
    read released results (``released_seq`` set *and* ``not_before`` passed *and*
    passed) and the figures behind the pass-rate chart.
    """

    name = "public"
    build_weight = 0.6
    unread = e.BODIES  # reads no request, answer or scorer's findings
    # 2: scored_seq (the event a released item's inclusion proof is for); 3: superseded;
    # 4: a re-score's flip to pass makes a positive result; 5: public_rollouts WITHOUT ROWID (one
    # b-tree, not a table and its key's index: a quarter less time writing them); 6: embargo_s is
    # the largest of every decision's, "none" included; 7: a re-score of any verdict moves scored_ts;
    # 8: a pass withdrawn before its release and restored is dated from the restore (date_s, restored_seq)
    version = 8
    tables = ("public_rollouts", "public_runs")
    types = frozenset({"RunStarted", "RunFinished"}) | _ROLLOUT_EVENTS
    ddl = """
    CREATE TABLE IF NOT EXISTS public_rollouts (
        rollout_id TEXT PRIMARY KEY, run_id TEXT, provider TEXT, model TEXT, problem_id TEXT,
        sample INTEGER, requested_at TEXT, cost_usd REAL, answer_seq INTEGER,
        passed INTEGER, score REAL, scorer TEXT, scored_at TEXT, scored_ts REAL, scored_seq INTEGER,
        not_before TEXT, not_before_ts REAL, embargo_s REAL, decided_seq INTEGER,
        released_at TEXT, released_seq INTEGER,
        superseded_at TEXT, superseded_seq INTEGER, superseded_hash TEXT,
        date_s REAL, restored_seq INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS public_rollouts_pending ON public_rollouts (not_before_ts)
        WHERE released_seq IS NULL AND not_before_ts IS NOT NULL;
    CREATE INDEX IF NOT EXISTS public_rollouts_released ON public_rollouts (released_seq)
        WHERE released_seq IS NOT NULL;
    CREATE INDEX IF NOT EXISTS public_rollouts_run ON public_rollouts (run_id);
    CREATE INDEX IF NOT EXISTS public_rollouts_superseded ON public_rollouts (superseded_seq)
        WHERE superseded_seq IS NOT NULL;
    CREATE TABLE IF NOT EXISTS public_runs (
        run_id TEXT PRIMARY KEY, provider TEXT, started_at TEXT, finished_at TEXT, status TEXT
    )
    """

    _COLUMNS = (
        "rollout_id", "run_id", "provider", "model", "problem_id", "sample", "requested_at", "cost_usd",
        "answer_seq", "passed", "score", "scorer", "scored_at", "scored_ts", "scored_seq", "not_before",
        "not_before_ts", "embargo_s", "decided_seq", "released_at", "released_seq", "superseded_at",
        "superseded_seq", "superseded_hash", "date_s", "restored_seq",
    )  # fmt: skip

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        """Record context, score, public decision and release of each rollout."""
        self.apply_batch(db, [rec])

    def apply_batch(self, db: sqlite3.Connection, recs: Sequence[Recorded]) -> None:
        """Apply events in order; each touched row is read once (one query for a few hundred)
        and written once. A rollout's row is a list of its columns (``_COLUMNS``' order)."""
        # Any: the kinds, not isinstance, say which event each is (and so its fields).
        events: list[Any] = [rec.event() for rec in recs]
        kinds = _public_kinds(events)
        runs = RowBatch(db, "public_runs", ("run_id", "provider", "started_at", "finished_at", "status"))
        rollouts = _read_rows(
            db,
            f"SELECT {', '.join(self._COLUMNS)} FROM public_rollouts WHERE rollout_id IN ",
            [ev.rollout_id for k, ev in zip(kinds, events, strict=True) if k >= _P_REQUESTED],
        )
        changed: dict[str, None] = {}
        epochs: dict[str, float] = {}
        for k, rec, ev in zip(kinds, recs, events, strict=True):
            if k == _P_REQUESTED:
                rid = ev.rollout_id
                if rollouts[rid] is None:
                    rollouts[rid] = [
                        rid, ev.run_id, ev.provider, ev.model, ev.problem_id, ev.sample, rec.at, *_EMPTY_TAIL
                    ]  # fmt: skip
                    changed[rid] = None
            elif k > _P_REQUESTED:
                rid = ev.rollout_id
                row = rollouts[rid]
                if row is None:
                    continue
                changed[rid] = None
                if k == _P_RESPONDED:
                    row[_ANSWER_SEQ] = rec.seq
                    if ev.cost_usd is not None:
                        row[_COST] = add_cost(row[_COST], ev.cost_usd)
                elif k == _P_SCORED:
                    at = rec.at
                    row[_PASSED:_SCORED_SEQ + 1] = (
                        int(bool(ev.passed)), ev.score, ev.scorer, at, _epoch(at), rec.seq
                    )  # fmt: skip
                elif k == _P_RESCORED:
                    # A result that fails its problem's newest version is superseded: never
                    # released, and marked (never removed) where it already is. A later
                    # re-score that passes it again lifts the mark. One that failed until now
                    # becomes a positive result standing for this verdict (its score, its date,
                    # the event its inclusion proof is for); its public decision is appended
                    # with it.
                    if ev.passed:
                        # A pass withdrawn before its release (decided, failed since, never
                        # released) is restored with a new date: an embargo after this event
                        # (events.PublicDate; its own public decision, appended
                        # with it by this release, dates it instead). Before, its first date
                        # stood, and a restore after that date was released at once.
                        if (
                            (sup := row[_SUPERSEDED_SEQ]) == sup
                            and (d := row[_DECIDED_SEQ]) == d
                            and (r := row[_RELEASED_SEQ]) != r
                        ):
                            length = row[_DATE_S]
                            nb = restored_date(rec.at, length if length == length and length else 0.0)
                            row[_NOT_BEFORE] = nb
                            row[_NOT_BEFORE + 1] = _epoch(nb)
                            row[_RESTORED_SEQ] = rec.seq
                        row[_SUPERSEDED_AT : _SUPERSEDED_AT + 3] = (NULL, NULL, NULL)
                        if row[_PASSED] != 1:
                            at = rec.at
                            row[_PASSED : _SCORED_SEQ + 1] = (1, ev.score, ev.scorer, at, _epoch(at), rec.seq)
                    else:
                        row[_SUPERSEDED_AT : _SUPERSEDED_AT + 3] = (rec.at, rec.seq, ev.problem_hash)
                    # Whatever it says, a re-score is its run's newest verdict: the run's pass
                    # rate waits an embargo after it (``scored_ts`` dates only that). Before, a
                    # flip to pass alone took a disclosed run off the chart, and anyone could
                    # tell which run held a new pass under embargo.
                    rescored = _epoch(rec.at)
                    if (old := row[_SCORED_TS]) is not None and old == old and rescored > old:
                        row[_SCORED_TS] = rescored
                elif k == _P_DECIDED:
                    # The first public decision stands; a later one cannot move a release date
                    # that readers may already rely on, except a restore's own (a pass withdrawn
                    # before its release and restored: see events.PublicDate).
                    if ev.audience == "public" and (
                        (d := row[_DECIDED_SEQ]) != d  # no decision yet
                        or (
                            (rs := row[_RESTORED_SEQ]) == rs
                            and (sup := row[_SUPERSEDED_SEQ]) != sup
                            and (r := row[_RELEASED_SEQ]) != r
                        )
                    ):
                        nb = ev.not_before
                        if (ts := epochs.get(nb)) is None:
                            ts = epochs[nb] = _epoch(nb)
                        row[_NOT_BEFORE : _DECIDED_SEQ + 1] = (
                            nb,
                            ts,
                            _larger(row[_EMBARGO], ev.embargo_s),
                            rec.seq,
                        )
                        row[_DATE_S] = date_length(ev, rec.at)
                        row[_RESTORED_SEQ] = NULL
                    elif ev.audience == "none" and ev.embargo_s:
                        # The embargo in force when a verdict was decided not public (none
                        # before 2026-12: 0): the run's disclosure waits for the largest.
                        row[_EMBARGO] = _larger(row[_EMBARGO], ev.embargo_s)
                elif k == _P_RELEASED and (r := row[_RELEASED_SEQ]) != r:  # not released yet
                    row[_RELEASED_AT : _RELEASED_SEQ + 1] = (rec.at, rec.seq)
            elif k == _P_RUN_STARTED:
                runs.insert_or_ignore(
                    ev.run_id, {"run_id": ev.run_id, "provider": ev.provider, "started_at": rec.at}
                )
            elif k == _P_RUN_FINISHED and (run := runs.change(ev.run_id)) is not None:
                run.update(finished_at=rec.at, status=ev.status)
        runs.flush()
        if changed:
            db.executemany(
                f"INSERT OR REPLACE INTO public_rollouts ({', '.join(self._COLUMNS)})"
                f" VALUES ({', '.join('?' * len(self._COLUMNS))})",
                [r for rid in changed if (r := rollouts[rid]) is not None],
            )


# Positions in a public_rollouts row (PublicProjection._COLUMNS).
_COST, _ANSWER_SEQ, _PASSED, _SCORED_TS, _SCORED_SEQ = 7, 8, 9, 13, 14
_NOT_BEFORE, _EMBARGO, _DECIDED_SEQ, _RELEASED_AT, _RELEASED_SEQ, _SUPERSEDED_AT = 15, 17, 18, 19, 20, 21
_SUPERSEDED_SEQ, _DATE_S, _RESTORED_SEQ = 22, 24, 25
_EMPTY_TAIL = (NULL,) * 19
"""A new row's columns after ``requested_at``."""
assert PublicProjection._COLUMNS[_COST] == "cost_usd"
assert PublicProjection._COLUMNS[_ANSWER_SEQ] == "answer_seq"
assert PublicProjection._COLUMNS[_PASSED : _SCORED_SEQ + 1] == (
    "passed", "score", "scorer", "scored_at", "scored_ts", "scored_seq"
)  # fmt: skip
assert PublicProjection._COLUMNS[_NOT_BEFORE : _DECIDED_SEQ + 1] == (
    "not_before", "not_before_ts", "embargo_s", "decided_seq"
)  # fmt: skip
assert PublicProjection._COLUMNS[_SCORED_TS] == "scored_ts"
assert PublicProjection._COLUMNS[_EMBARGO] == "embargo_s"
assert PublicProjection._COLUMNS[_RELEASED_AT : _RELEASED_SEQ + 1] == ("released_at", "released_seq")
assert PublicProjection._COLUMNS[_SUPERSEDED_AT : _SUPERSEDED_AT + 3] == (
    "superseded_at", "superseded_seq", "superseded_hash"
)  # fmt: skip
assert PublicProjection._COLUMNS[_SUPERSEDED_SEQ] == "superseded_seq"
assert PublicProjection._COLUMNS[_DATE_S:] == ("date_s", "restored_seq")
assert len(PublicProjection._COLUMNS) == 7 + len(_EMPTY_TAIL)


def _larger(have: Any, embargo: Any) -> Any:
    """The larger of a row's embargo (NULL: none yet) and a decision's."""
    return embargo if have != have or have is None or embargo > have else have


def publication_projections() -> list[Projection]:
    """The read models publication needs (``rollwatch.readmodels`` lists them with the others)."""
    return [SubscribersProjection(), FeedProjection(), PublicProjection()]
