"""What the public may see: released results, and the figures of the pass-rate chart.

Released means all three of: a ``PublicReleased`` event (``released_seq``), a public
decision whose ``not_before`` has passed by this process's clock, and a passing
score. Each check alone would do in a healthy log; together they keep an early or
forged release, or a clock ahead on another node, from showing anything early.

The chart needs rates, so it needs the rollouts that failed too (never shown one by
one). A run's figures for one model are disclosed once the run has finished, every
public decision among its rollouts has been released, and its last score is older
than the embargo: the largest ``embargo_s`` its decisions carry, "none" decisions
included (each carries the embargo in force, so a run of failures waits as long as one
with a pass decided the same day: when a run shows tells nothing of its verdicts), or,
where no decision carries one (a log from before), the configured embargo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from rollwatch.abc import EventStore
from rollwatch.errors import StoreError
from rollwatch.events import (
    Event,
    PublicationDecided,
    PublicReleased,
    Recorded,
    RolloutRescored,
    RolloutResponded,
    RolloutScored,
    date_length,
    parse_rfc3339,
    restored_date,
    rollout_stream,
)
from rollwatch.log import get_logger
from rollwatch.projections import ProjectionDB
from rollwatch.web.render import natural_key

_COLUMNS = (
    "rollout_id, run_id, provider, model, problem_id, sample, score, cost_usd, scored_at,"
    " not_before, released_at, released_seq, answer_seq, scored_seq, superseded_at, superseded_hash, decided_seq,"
    " restored_seq, superseded_seq"
)
log = get_logger(__name__)

_RELEASED = "released_seq IS NOT NULL AND not_before_ts IS NOT NULL AND not_before_ts <= ? AND passed = 1"
_PUBLIC = "public"
"""The projection that writes ``public_rollouts`` (:class:`~rollwatch.publication.projections.PublicProjection`)."""


class EventCheck(Protocol):
    """Checks events read from the log before a public route serves on their word: the
    daemon's :class:`rollwatch.integrity.service.Integrity`, or a
    :class:`rollwatch.integrity.tree.MerkleTree` (``publish export``)."""

    async def changed(
        self, records: Iterable[Recorded], *, prove: bool = True
    ) -> tuple[list[int], list[int]]:
        """(the seqs of events changed since they were appended, the seqs it cannot tell yet);
        ``prove``: against a signed root where it can, not the stored leaves alone."""
        ...


@dataclass(frozen=True, slots=True)
class Released:
    """One publicly released result."""

    rollout_id: str
    run_id: str
    provider: str
    model: str
    problem_id: str
    sample: int
    score: float | None
    cost_usd: float | None
    scored_at: str
    not_before: str
    released_at: str
    released_seq: int
    answer_seq: int | None
    scored_seq: int | None
    """The verdict the result stands for (its inclusion proof's leaf): its ``RolloutScored``,
    or the ``RolloutRescored`` that flipped it to a pass."""
    superseded_at: str | None = None
    """When a re-score found the answer failing its problem's newest version (it stays
    public, marked)."""
    superseded_hash: str | None = None
    """The problem version it fails."""
    answer: str | None = None

    @property
    def updated(self) -> str:
        """When this result last changed: its release, or its being superseded."""
        return max(self.released_at, self.superseded_at or "")

    def to_json(self) -> dict[str, Any]:
        """The result as one line of ``results.jsonl`` (and ``/public/rollouts/{id}.json``)."""
        return {
            "rollout_id": self.rollout_id,
            "run_id": self.run_id,
            "provider": self.provider,
            "model": self.model,
            "problem_id": self.problem_id,
            "sample": self.sample,
            "passed": True,
            "score": self.score,
            "cost_usd": self.cost_usd,
            "scored_at": self.scored_at,
            "not_before": self.not_before,
            "released_at": self.released_at,
            "released_seq": self.released_seq,
            "superseded": self.superseded_at is not None,
            "superseded_at": self.superseded_at,
            "superseded_by_problem_version": self.superseded_hash,
            "answer": self.answer,
        }


async def _with_answers(
    store: EventStore,
    pdb: ProjectionDB,
    rows: Sequence[tuple[Any, ...]],
    now: datetime,
    check: EventCheck | None = None,
    applied: int = 0,
) -> list[Released]:
    """The results of ``rows`` (``_COLUMNS`` and ``decided_seq``) with their answers, read
    from the log in one query, and each checked against the log's events there: the
    release, the verdict, the public decision (its date passed by ``now``) and the answer
    must be of this rollout and say what the row says. A row that does not (the
    projections file edited: a failure made a pass, a date moved earlier, a release
    added) is left out and logged as ERROR ``projections_tampered``: a public route never
    serves a result the log does not release. The file is then no longer trusted: a daemon
    builds it again from the log (:meth:`ProjectionDB.distrusted`).

    With ``check``, those events must also be the ones appended (the log itself edited: a
    decision's date moved, a failure made a pass, with the projections built again from
    it): a result resting on a changed event is left out and logged as ERROR
    ``public_withheld`` (the daemon's check also marks the log tampered with).

    ``applied``: the seq the public projection had applied when ``rows`` were read, in the
    same snapshot (:meth:`ProjectionDB.fetchall_applied`)."""
    found = [(Released(*row[:-3]), row[-3], row[-2], row[-1]) for row in rows]
    want: list[int] = []
    for r, decided, restored, superseded in found:
        seqs = (r.answer_seq, r.released_seq, r.scored_seq, decided, restored, superseded)
        want += [s for s in seqs if s is not None]
    events = _Events(await store.read_at(want))
    changed = set((await check.changed(events.values()))[0]) if check is not None and events else set()
    unmarked = [
        r.rollout_id for r, _d, _r, superseded in found if superseded is None and r.superseded_at is None
    ]
    # Each row's newest re-score in the log as far as the row says: up to what the file had
    # applied when the rows were read, not only what this process applied. The daemon (or this
    # process's own catch-up, between its commit and ``applied``) moves the file on: a row that
    # a later re-score restored (its mark lifted) was judged by the failing one before it, and
    # left out as ERROR projections_tampered (an export without a released result, the read
    # models built again). Never below this process's own: a checkpoint moved back in the file
    # must not hide from the check a re-score that failed the result.
    rescored = await _latest_rescores(store, unmarked, max(pdb.applied, applied))
    out = []
    for r, decided, restored, superseded in found:
        bad = sorted(
            changed.intersection((r.answer_seq, r.released_seq, r.scored_seq, decided, restored, superseded))
        )
        if bad:
            log.error(
                "public_withheld",
                rollout_id=r.rollout_id,
                seq=bad[0],
                reason=f"the log's event {bad[0]} was changed since it was appended",
                consequence="left out of the public release",
            )
            continue
        why = _not_released_by_log(r, decided, restored, events, now)
        if why is None:
            why = _mark_not_the_logs(r, superseded, events)
        if why is None and (latest := rescored.get(r.rollout_id)) is not None:
            why = _mark_lifted(r, latest)
            if why is not None:
                # The rows were read before a catch-up that applied the re-score (the file
                # moved on meanwhile): the file marks it now, so this is no edit.
                now_row = await pdb.fetchone(
                    "SELECT superseded_seq FROM public_rollouts WHERE rollout_id = ?", (r.rollout_id,)
                )
                if now_row is not None and now_row[0] is not None and now_row[0] >= latest.seq:
                    why = None
        if why is None:
            why = await _cost_not_the_logs(store, r, events)
        if why is not None:
            log.error(
                "projections_tampered",
                rollout_id=r.rollout_id,
                reason=why,
                consequence="left out of the public release; the read models are built again",
            )
            pdb.distrusted(f"rollout {r.rollout_id}: {why}")
            continue
        ev = events.event(r.answer_seq)
        answer = None if ev is None else ev.text  # type: ignore[attr-defined]
        out.append(dataclasses.replace(r, answer=answer))
    return out


class _Events(dict[int, Recorded]):
    """The log's events at a page of rows' seqs, each decoded at most once: a row's answer
    (kilobytes of JSON) was decoded three times, for its release, its cost and its text."""

    def __init__(self, recs: dict[int, Recorded]) -> None:
        super().__init__(recs)
        self._decoded: dict[int, Event] = {}

    def event(self, seq: int | None) -> Event | None:
        """The event at ``seq`` (None when not read); raises what :meth:`Recorded.event` raises."""
        rec = self.get(seq) if seq is not None else None
        if rec is None:
            return None
        ev = self._decoded.get(rec.seq)
        if ev is None:
            ev = self._decoded[rec.seq] = rec.event()
        return ev


def _not_released_by_log(
    r: Released, decided: int | None, restored: int | None, events: _Events, now: datetime
) -> str | None:
    """Why the log's events at the row's seqs do not release ``r`` as the row says, or None.

    ``restored``: the re-score that restored a pass withdrawn before its release, which dates
    it (an embargo as long as the decision ``decided``'s after it) when no decision came with
    it (a log written before this rule; see :class:`rollwatch.events.PublicDate`)."""

    def of_rollout(seq: int | None, kinds: tuple[type[Event], ...], what: str) -> Any:
        ev = events.event(seq)
        if not isinstance(ev, kinds) or getattr(ev, "rollout_id", None) != r.rollout_id:
            raise _Mismatch(f"the log's event {seq} is not this rollout's {what}")
        return ev

    try:
        of_rollout(r.released_seq, (PublicReleased,), "release")
        if (at := events[r.released_seq].at) != r.released_at:
            return f"its release (event {r.released_seq}) was logged at {at}, not {r.released_at}"
        verdict = of_rollout(r.scored_seq, (RolloutScored, RolloutRescored), "verdict")
        if not verdict.passed:
            return f"its verdict (event {r.scored_seq}) did not pass"
        if (at := events[r.scored_seq].at) != r.scored_at or not _same(verdict.score, r.score):  # type: ignore[index]  # found: of_rollout read it
            return (
                f"its verdict (event {r.scored_seq}, logged at {at}, score {verdict.score})"
                f" is not the row's ({r.scored_at}, score {r.score})"
            )
        decision = of_rollout(decided, (PublicationDecided,), "public decision")
        date = decision.not_before
        if restored is not None:
            restore = of_rollout(restored, (RolloutRescored,), "restoring verdict")
            if not restore.passed or decided is None or restored < decided or r.released_seq < restored:
                return f"its restore (event {restored}) does not date it"
            date = restored_date(events[restored].at, date_length(decision, events[decided].at))
        if decision.audience != "public" or date != r.not_before:
            return f"its decision (event {decided}) does not release it to the public on {r.not_before}"
        if parse_rfc3339(date) > now:
            return f"its decision (event {decided}) holds it until {date}"
        if r.answer_seq is not None:
            of_rollout(r.answer_seq, (RolloutResponded,), "answer")
    except _Mismatch as e:
        return str(e)
    except StoreError as e:  # an event that does not decode (UnknownEventType)
        return str(e)
    return None


def _mark_not_the_logs(r: Released, superseded: int | None, events: _Events) -> str | None:
    """Why the row's superseded mark is not the log's re-score at ``superseded``, or None.

    A mark the row does not have is checked by :func:`_mark_lifted`, against the rollout's
    newest re-score (read from its stream)."""
    if superseded is None and r.superseded_at is None and r.superseded_hash is None:
        return None
    rec = events.get(superseded) if superseded is not None else None
    try:
        ev = events.event(superseded)
    except StoreError as e:
        return str(e)
    if (
        not isinstance(ev, RolloutRescored)
        or ev.rollout_id != r.rollout_id
        or ev.passed
        or rec.at != r.superseded_at  # type: ignore[union-attr]  # not None: ev is
        or ev.problem_hash != r.superseded_hash
    ):
        return f"its superseded mark (event {superseded}) is not a re-score of this rollout failing it then"
    return None


async def _latest_rescores(store: EventStore, rids: Sequence[str], upto: int) -> dict[str, Recorded]:
    """Each of ``rids``'s newest re-score in the log up to ``upto`` (what the read models
    applied), for those with any: the rollouts' streams read in one query (their index).
    One read per stream took 11 ms of the 18 a public view took at a million events."""
    out: dict[str, Recorded] = {}
    if upto <= 0 or not rids:
        return out
    streams = {rollout_stream(rid): rid for rid in rids}
    for rec in await store.read_streams(streams, types=("RolloutRescored",), until=upto):
        if (rid := streams.get(rec.stream)) is not None:  # oldest first: the newest is kept
            out[rid] = rec
    return out


def _mark_lifted(r: Released, latest: Recorded) -> str | None:
    """Why a row with no superseded mark is not the log's, given the rollout's newest
    re-score ``latest``: one that failed it marks it (the public projection's rule), or None.

    A mark lifted in the projections file from a result a re-score failed since its release
    was served as standing (session 32)."""
    try:
        ev = latest.event()
    except StoreError as e:
        return str(e)
    if isinstance(ev, RolloutRescored) and ev.rollout_id == r.rollout_id and not ev.passed:
        return f"a re-score (event {latest.seq}) failed it, and the row has no superseded mark"
    return None


def _same(a: float | None, b: float | None) -> bool:
    """Two figures alike, an unknown one (None or NaN: a NaN is stored as NULL) like another."""
    return a == b or ((a is None or a != a) and (b is None or b != b))


async def _cost_not_the_logs(store: EventStore, r: Released, events: _Events) -> str | None:
    """Why the row's cost is not the sum of its rollout's answers' costs in the log, or None.

    Its answer's own cost (one answer: the usual case) is read already; only when that is
    not the row's are the rollout's events read to add its answers up as the read model does."""
    ev = events.event(r.answer_seq)
    if ev is None:
        return None if _same(r.cost_usd, None) else f"its cost {r.cost_usd} has no answer in the log"
    if isinstance(ev, RolloutResponded) and _same(ev.cost_usd, r.cost_usd):
        return None
    cost: float | None = None
    try:
        async for rec in store.read(stream=rollout_stream(r.rollout_id)):
            if rec.seq > r.answer_seq:  # type: ignore[operator]  # not None: read above
                break
            if rec.type == "RolloutResponded" and (c := rec.event().cost_usd) is not None:  # type: ignore[attr-defined]
                cost = (cost if cost is not None and cost == cost and cost else 0) + c
    except StoreError as e:  # an event that does not decode
        return str(e)
    if _same(cost, r.cost_usd):
        return None
    return f"its cost {r.cost_usd} is not its answers' in the log ({cost})"


class _Mismatch(Exception):
    """Raised when a row's seq points at an event that is not the rollout's (internal)."""


async def released_one(
    store: EventStore, pdb: ProjectionDB, rollout_id: str, now: datetime, check: EventCheck | None = None
) -> Released | None:
    """The released result of ``rollout_id``, or None when it is not (yet) public."""
    rows, applied = await pdb.fetchall_applied(
        f"SELECT {_COLUMNS} FROM public_rollouts WHERE rollout_id = ? AND {_RELEASED}",
        (rollout_id, now.timestamp()),
        _PUBLIC,
    )
    found = await _with_answers(store, pdb, rows, now, check, applied)
    return found[0] if found else None


async def recent_released(
    store: EventStore, pdb: ProjectionDB, now: datetime, limit: int, check: EventCheck | None = None
) -> list[Released]:
    """The ``limit`` most recently released results, newest first, with their answers."""
    rows, applied = await pdb.fetchall_applied(
        f"SELECT {_COLUMNS} FROM public_rollouts WHERE {_RELEASED} ORDER BY released_seq DESC LIMIT ?",
        (now.timestamp(), limit),
        _PUBLIC,
    )
    return await _with_answers(store, pdb, rows, now, check, applied)


async def iter_released(
    store: EventStore,
    pdb: ProjectionDB,
    now: datetime,
    batch: int = 500,
    *,
    after: int = 0,
    check: EventCheck | None = None,
) -> AsyncIterator[Released]:
    """Every released result (released after seq ``after``), oldest release first, with its
    answer (in bounded batches)."""
    while True:
        rows, applied = await pdb.fetchall_applied(
            f"SELECT {_COLUMNS} FROM public_rollouts WHERE {_RELEASED} AND released_seq > ?"
            " ORDER BY released_seq LIMIT ?",
            (now.timestamp(), after, batch),
            _PUBLIC,
        )
        for r in await _with_answers(store, pdb, rows, now, check, applied):
            yield r
        if len(rows) < batch:
            return
        after = rows[-1][11]  # released_seq


async def held_back(pdb: ProjectionDB, after: int, until: int, now: datetime) -> int | None:
    """The lowest seq in ``after``..``until`` of a release that is not public yet by this
    clock (a release ahead of its ``not_before``), or None."""
    row = await pdb.fetchone(
        "SELECT min(released_seq) FROM public_rollouts WHERE released_seq > ? AND released_seq <= ?"
        " AND passed = 1 AND not_before_ts > ?",
        (after, until, now.timestamp()),
    )
    return int(row[0]) if row and row[0] is not None else None


async def superseded_marks(pdb: ProjectionDB, now: datetime) -> list[dict[str, Any]]:
    """Every released result a re-score found failing its problem's newest version, oldest
    release first: ``rollout_id``, ``superseded_at``, ``superseded_by_problem_version``."""
    rows = await pdb.fetchall(
        "SELECT rollout_id, superseded_at, superseded_hash FROM public_rollouts"
        f" WHERE superseded_seq IS NOT NULL AND {_RELEASED} ORDER BY released_seq",
        (now.timestamp(),),
    )
    return [{"rollout_id": r[0], "superseded_at": r[1], "superseded_by_problem_version": r[2]} for r in rows]


# --- the page's figures: from the maintained aggregates, or grouped ---------------------------

_CELLS_GROUPED = (
    "SELECT provider, model, problem_id, count(*), min(released_at), max(released_at)"
    f" FROM public_rollouts WHERE {_RELEASED} GROUP BY provider, model, problem_id"
)
# A pass a re-score failed before its release (superseded, never to be released) counts as
# the failure it now is, with no public decision: else its run waited for that release for
# good, and the chart told which runs had held a pass withdrawn unreleased.
_WITHDRAWN = "(r.superseded_seq IS NOT NULL AND r.released_seq IS NULL)"
_RUNS_GROUPED = (
    "SELECT r.run_id, r.provider, r.model, count(*),"
    f" sum(r.passed = 1 AND NOT {_WITHDRAWN}), max(r.scored_ts),"
    f" max(r.embargo_s), sum(r.decided_seq IS NOT NULL AND NOT {_WITHDRAWN}),"
    " sum(r.released_seq IS NOT NULL AND r.not_before_ts <= ?), u.finished_at"
    " FROM public_rollouts r JOIN public_runs u ON u.run_id = r.run_id"
    " WHERE r.scored_ts IS NOT NULL AND u.finished_at IS NOT NULL{run}"
    " GROUP BY r.run_id, r.provider, r.model"
)
# A public decision not yet in force (or not yet acted on by the release job): counted,
# never shown. Only passing rollouts get a public decision.
# Only passing rollouts get a public decision; one that a re-score failed since
# (superseded) will never be released, so it is not announced as solved (a flip to pass
# again lifts the mark and counts it again).
_EMBARGOED_GROUPED = (
    "SELECT provider, model, count(DISTINCT problem_id), count(*), min(not_before_ts), min(not_before)"
    " FROM public_rollouts WHERE passed = 1 AND decided_seq IS NOT NULL AND superseded_seq IS NULL"
    " AND NOT (released_seq IS NOT NULL AND not_before_ts <= ?)"
    " GROUP BY provider, model ORDER BY provider, model"
)


async def _has_aggregates(pdb: ProjectionDB) -> bool:
    """Whether the projections include the public page's aggregates (else it groups)."""
    rows = await pdb.fetchall("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pa_cells'")
    return bool(rows)


async def _released_cells(pdb: ProjectionDB, ts: float, maintained: bool) -> list[tuple[Any, ...]]:
    """Per provider, model and problem: released results, first and last release."""
    if maintained:
        from rollwatch.publication import aggregates as agg

        [(inexact,)] = await pdb.fetchall(agg.CELLS_EXACT_SQL, (ts,))
        if not inexact:
            return await pdb.fetchall(agg.CELLS_SQL)
    return await pdb.fetchall(_CELLS_GROUPED, (ts,))


async def _run_groups(pdb: ProjectionDB, ts: float, maintained: bool) -> list[tuple[Any, ...]]:
    """Per finished run and model: what decides whether its pass rate is disclosed."""
    if not maintained:
        return await pdb.fetchall(_RUNS_GROUPED.format(run=""), (ts,))
    from rollwatch.publication import aggregates as agg

    out: list[tuple[Any, ...]] = []
    for *row, inexact in await pdb.fetchall(agg.RUNS_SQL, (ts,)):
        if inexact:  # a release ahead of its date, or a rollout scored twice: that group, grouped
            one = " AND r.run_id = ? AND r.provider = ? AND r.model = ?"
            out += await pdb.fetchall(_RUNS_GROUPED.format(run=one), (ts, *row[:3]))
        else:
            out.append(tuple(row))
    return out


async def _embargoed(pdb: ProjectionDB, ts: float, maintained: bool) -> list[Embargoed]:
    """Per provider and model: problems and solutions under embargo, the next release."""
    if not maintained:
        rows = await pdb.fetchall(_EMBARGOED_GROUPED, (ts,))
        return [
            Embargoed(provider=p, model=m, problems=int(np), solutions=int(n), next_release=nb)
            for p, m, np, n, _, nb in rows
        ]
    from rollwatch.publication import aggregates as agg

    per: dict[tuple[str, str], tuple[set[str], list[int], list[str]]] = {}
    for prov, model, pid, n in await pdb.fetchall(agg.PENDING_SQL):
        probs, count, _ = per.setdefault((prov, model), (set(), [0], []))
        probs.add(pid)
        count[0] += n
    for (prov, model), (_, _, nexts) in per.items():
        nexts += [r[0] for r in await pdb.fetchall(agg.NEXT_SQL, (prov, model))]
    for prov, model, pid, nb in await pdb.fetchall(agg.EARLY_SQL, (ts,)):
        probs, count, nexts = per.setdefault((prov, model), (set(), [0], []))
        probs.add(pid)
        count[0] += 1
        nexts.append(nb)
    return [
        Embargoed(provider=p, model=m, problems=len(probs), solutions=count[0], next_release=min(nexts))
        for (p, m), (probs, count, nexts) in sorted(per.items())
    ]


# --- the page's tables and chart ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """One disclosed run of one model: when it finished and how often it passed."""

    at: str
    ts: float
    run_id: str
    rollouts: int
    passed: int

    @property
    def rate(self) -> float:
        return self.passed / self.rollouts if self.rollouts else 0.0


@dataclass(slots=True)
class Series:
    """The disclosed runs of one provider and model, oldest first."""

    provider: str
    model: str
    points: list[Point] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(slots=True)
class ModelRow:
    """One provider and model: released solutions, problems solved, disclosed pass rate."""

    provider: str
    model: str
    released: int = 0
    problems_solved: int = 0
    first_released_at: str | None = None
    last_released_at: str | None = None
    disclosed_rollouts: int = 0
    disclosed_passed: int = 0

    @property
    def pass_rate(self) -> float | None:
        return self.disclosed_passed / self.disclosed_rollouts if self.disclosed_rollouts else None


@dataclass(frozen=True, slots=True)
class Embargoed:
    """What one provider and model solved that is still under embargo: counts only.

    The public's evidence that results exist before their details may be shown (with
    the signed checkpoint, that they existed on that date), and the denominator of
    what will be released. ``publication.embargo_counts = false`` leaves it out.
    """

    provider: str
    model: str
    problems: int
    """Distinct problems with at least one passing rollout still under embargo."""
    solutions: int
    """Passing rollouts still under embargo."""
    next_release: str
    """The earliest ``not_before`` among them (RFC 3339)."""


@dataclass(slots=True)
class PublicView:
    """Everything the public page and the feeds show."""

    generated_at: datetime
    total_released: int
    recent: list[Released]
    models: list[ModelRow]
    problems: list[str]
    cells: dict[tuple[str, str, str], tuple[int, str]]
    """(provider, model, problem) -> (released solutions, first released at)."""
    series: list[Series]
    embargoed: list[Embargoed] = field(default_factory=list)
    """Per model, counts of what is solved but not yet released (empty when switched off)."""

    @property
    def updated(self) -> str | None:
        """When a released result was last released or superseded."""
        return max((r.updated for r in self.recent), default=None)


async def public_view(
    store: EventStore,
    pdb: ProjectionDB,
    *,
    now: datetime | None = None,
    embargo_default: float,
    recent: int = 100,
    embargo_counts: bool = True,
    check: EventCheck | None = None,
) -> PublicView:
    """The released results as of ``now`` (see the module docstring for what counts), and
    with ``embargo_counts`` how many problems each model solved that are still embargoed."""
    now = now or datetime.now(UTC)
    ts = now.timestamp()
    maintained = await _has_aggregates(pdb)
    models: dict[tuple[str, str], ModelRow] = {}
    cells: dict[tuple[str, str, str], tuple[int, str]] = {}
    problems: set[str] = set()
    total = 0
    for prov, model, pid, n, first, last in await _released_cells(pdb, ts, maintained):
        m = models.setdefault((prov, model), ModelRow(prov, model))
        m.released += n
        m.problems_solved += 1
        m.first_released_at = min(filter(None, (m.first_released_at, first)))
        m.last_released_at = max(filter(None, (m.last_released_at, last)))
        cells[(prov, model, pid)] = (n, first)
        problems.add(pid)
        total += n

    series: dict[tuple[str, str], Series] = {}
    for run_id, prov, model, n, passed, last_ts, emb, decided, released, finished in await _run_groups(
        pdb, ts, maintained
    ):
        embargo = float(emb) if emb is not None else embargo_default
        if decided != released or last_ts + embargo > ts:
            continue
        fin = parse_rfc3339(finished)
        series.setdefault((prov, model), Series(prov, model)).points.append(
            Point(at=finished, ts=fin.timestamp(), run_id=run_id, rollouts=n, passed=int(passed or 0))
        )
        m = models.setdefault((prov, model), ModelRow(prov, model))
        m.disclosed_rollouts += n
        m.disclosed_passed += int(passed or 0)
    for s in series.values():
        s.points.sort(key=lambda p: (p.ts, p.run_id))
    embargoed: list[Embargoed] = []
    if embargo_counts:
        embargoed = await _embargoed(pdb, ts, maintained)
    return PublicView(
        generated_at=now,
        total_released=total,
        recent=await recent_released(store, pdb, now, recent, check),
        models=sorted(models.values(), key=lambda m: (m.provider, m.model)),
        problems=sorted(problems, key=natural_key),
        cells=cells,
        series=sorted(series.values(), key=lambda s: s.label),
        embargoed=embargoed,
    )
