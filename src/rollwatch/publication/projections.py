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
from typing import Any

from rollwatch.events import Recorded, parse_rfc3339
from rollwatch.projections import Projection

_ROLLOUT_EVENTS = frozenset(
    {
        "RolloutRequested",
        "RolloutResponded",
        "RolloutFailed",
        "RolloutScored",
        "PublicationDecided",
        "PublicReleased",
    }
)


def _epoch(at: str) -> float:
    return parse_rfc3339(at).timestamp()


def _j(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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

    def apply(self, db: sqlite3.Connection, ev: Recorded) -> None:
        """Add a subscriber, or mark one revoked."""
        d = ev.data
        if ev.type == "SubscriberAdded":
            db.execute(
                "INSERT OR IGNORE INTO pub_subscribers (name, key_prefix, key_hash, scopes, expires,"
                " added_at, added_seq) VALUES (?,?,?,?,?,?,?)",
                (
                    d["name"],
                    d["key_prefix"],
                    d["key_hash"],
                    _j(d.get("scopes") or []),
                    d.get("expires"),
                    ev.at,
                    ev.seq,
                ),
            )
        else:
            db.execute(
                "UPDATE pub_subscribers SET revoked_at = coalesce(revoked_at, ?),"
                " revoked_seq = coalesce(revoked_seq, ?), note = ? WHERE name = ?",
                (ev.at, ev.seq, d.get("note", ""), d["name"]),
            )


# --- the subscriber feed ------------------------------------------------------------------

FEED_TYPES = frozenset(
    {"RunStarted", "RunFinished", "RolloutScored", "RolloutFailed", "PublicationDecided", "PublicReleased"}
)
"""Event types a subscriber sees in ``/v1/feed`` (``RolloutFailed`` only when final)."""

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


class FeedProjection(Projection):
    """The items of ``/v1/feed``, rendered once as JSON, keyed by ``seq`` (the cursor).

    A subscriber sees each run's start and end, every rollout's score (with its run,
    provider, model, problem, sample and cost joined in), final failures, and every
    publication decision and public release. Requests and answers are not feed items
    (``/v1/rollouts/{id}`` has them in full); schedule and subscriber events never are.
    """

    name = "feed"
    version = 1
    tables = ("feed_rollouts", "feed_items")
    types = FEED_TYPES | _ROLLOUT_EVENTS
    ddl = """
    CREATE TABLE IF NOT EXISTS feed_rollouts (
        rollout_id TEXT PRIMARY KEY, run_id TEXT, provider TEXT, model TEXT, problem_id TEXT,
        sample INTEGER, cost_usd REAL
    );
    CREATE TABLE IF NOT EXISTS feed_items (seq INTEGER PRIMARY KEY, item TEXT NOT NULL)
    """

    def apply(self, db: sqlite3.Connection, ev: Recorded) -> None:
        """Keep the rollout context; render a feed item for the visible types."""
        d = ev.data
        t = ev.type
        if t == "RolloutRequested":
            db.execute(
                "INSERT OR IGNORE INTO feed_rollouts (rollout_id, run_id, provider, model, problem_id,"
                " sample) VALUES (?,?,?,?,?,?)",
                (d["rollout_id"], d["run_id"], d["provider"], d["model"], d["problem_id"], d["sample"]),
            )
            return
        if t == "RolloutResponded":
            if d.get("cost_usd") is not None:
                db.execute(
                    "UPDATE feed_rollouts SET cost_usd = coalesce(cost_usd, 0) + ? WHERE rollout_id = ?",
                    (d["cost_usd"], d["rollout_id"]),
                )
            return
        if t == "RolloutFailed" and not d.get("final"):
            return
        item: dict[str, Any] = dict.fromkeys(FEED_ITEM_KEYS)
        item.update(seq=ev.seq, id=ev.id, type=t, at=ev.at, hash=ev.hash, detail={})
        if t in ("RunStarted", "RunFinished"):
            item["run_id"] = d["run_id"]
            if t == "RunStarted":
                item["provider"] = d["provider"]
                item["detail"] = {
                    k: d.get(k)
                    for k in ("schedule", "models", "problem_set", "rollouts", "trigger", "budget_usd")
                }
                item["detail"]["problems"] = len(d.get("problems") or [])
            else:
                item["status"] = d["status"]
                item["cost_usd"] = d.get("cost_usd")
                item["detail"] = {
                    k: d.get(k) for k in ("rollouts", "passed", "scored", "planned", "failures", "message")
                }
        else:
            rid = d["rollout_id"]
            item["rollout_id"] = rid
            row = db.execute(
                "SELECT run_id, provider, model, problem_id, sample, cost_usd FROM feed_rollouts"
                " WHERE rollout_id = ?",
                (rid,),
            ).fetchone()
            if row is not None:
                for k, v in zip(
                    ("run_id", "provider", "model", "problem_id", "sample", "cost_usd"), row, strict=True
                ):
                    item[k] = v
            if t == "RolloutScored":
                item["passed"] = bool(d["passed"])
                item["score"] = d.get("score")
                item["detail"] = {"scorer": d.get("scorer"), "reason": d.get("reason", "")}
            elif t == "RolloutFailed":
                item["status"] = "failed"
                item["detail"] = {k: d.get(k) for k in ("attempt", "kind", "status", "message")}
            elif t == "PublicationDecided":
                item["audience"] = d["audience"]
                item["not_before"] = d["not_before"]
                item["detail"] = {"embargo_s": d.get("embargo_s", 0.0)}
            elif t == "PublicReleased":
                item["audience"] = "public"
        db.execute("INSERT OR IGNORE INTO feed_items (seq, item) VALUES (?, ?)", (ev.seq, _j(item)))


# --- the public release ---------------------------------------------------------------------


class PublicProjection(Projection):
    """Each rollout's result, public decision and release, and each run's end.

    The release job reads pending decisions from it; the public routes and the export
    read released results (``released_seq`` set *and* ``not_before`` passed *and*
    passed) and the figures behind the pass-rate chart.
    """

    name = "public"
    version = 2  # 2: scored_seq (the event a released item's inclusion proof is for)
    tables = ("public_rollouts", "public_runs")
    types = frozenset({"RunStarted", "RunFinished"}) | _ROLLOUT_EVENTS
    ddl = """
    CREATE TABLE IF NOT EXISTS public_rollouts (
        rollout_id TEXT PRIMARY KEY, run_id TEXT, provider TEXT, model TEXT, problem_id TEXT,
        sample INTEGER, requested_at TEXT, cost_usd REAL, answer_seq INTEGER,
        passed INTEGER, score REAL, scorer TEXT, scored_at TEXT, scored_ts REAL, scored_seq INTEGER,
        not_before TEXT, not_before_ts REAL, embargo_s REAL, decided_seq INTEGER,
        released_at TEXT, released_seq INTEGER
    );
    CREATE INDEX IF NOT EXISTS public_rollouts_pending ON public_rollouts (not_before_ts)
        WHERE released_seq IS NULL AND not_before_ts IS NOT NULL;
    CREATE INDEX IF NOT EXISTS public_rollouts_released ON public_rollouts (released_seq)
        WHERE released_seq IS NOT NULL;
    CREATE INDEX IF NOT EXISTS public_rollouts_run ON public_rollouts (run_id);
    CREATE TABLE IF NOT EXISTS public_runs (
        run_id TEXT PRIMARY KEY, provider TEXT, started_at TEXT, finished_at TEXT, status TEXT
    )
    """

    def apply(self, db: sqlite3.Connection, ev: Recorded) -> None:
        """Record context, score, public decision and release of each rollout."""
        d = ev.data
        t = ev.type
        if t == "RunStarted":
            db.execute(
                "INSERT OR IGNORE INTO public_runs (run_id, provider, started_at) VALUES (?,?,?)",
                (d["run_id"], d["provider"], ev.at),
            )
        elif t == "RunFinished":
            db.execute(
                "UPDATE public_runs SET finished_at = ?, status = ? WHERE run_id = ?",
                (ev.at, d["status"], d["run_id"]),
            )
        elif t == "RolloutRequested":
            db.execute(
                "INSERT OR IGNORE INTO public_rollouts (rollout_id, run_id, provider, model, problem_id,"
                " sample, requested_at) VALUES (?,?,?,?,?,?,?)",
                (
                    d["rollout_id"],
                    d["run_id"],
                    d["provider"],
                    d["model"],
                    d["problem_id"],
                    d["sample"],
                    ev.at,
                ),
            )
        elif t == "RolloutResponded":
            db.execute(
                "UPDATE public_rollouts SET answer_seq = ?,"
                " cost_usd = CASE WHEN ? IS NULL THEN cost_usd ELSE coalesce(cost_usd, 0) + ? END"
                " WHERE rollout_id = ?",
                (ev.seq, d.get("cost_usd"), d.get("cost_usd"), d["rollout_id"]),
            )
        elif t == "RolloutScored":
            db.execute(
                "UPDATE public_rollouts SET passed = ?, score = ?, scorer = ?, scored_at = ?, scored_ts = ?,"
                " scored_seq = ? WHERE rollout_id = ?",
                (
                    int(bool(d["passed"])),
                    d.get("score"),
                    d.get("scorer"),
                    ev.at,
                    _epoch(ev.at),
                    ev.seq,
                    d["rollout_id"],
                ),
            )
        elif t == "PublicationDecided" and d["audience"] == "public":
            # The first public decision stands; a later one (there should be none) cannot
            # move a release date that readers may already rely on.
            db.execute(
                "UPDATE public_rollouts SET not_before = ?, not_before_ts = ?, embargo_s = ?,"
                " decided_seq = ? WHERE rollout_id = ? AND decided_seq IS NULL",
                (d["not_before"], _epoch(d["not_before"]), d.get("embargo_s", 0.0), ev.seq, d["rollout_id"]),
            )
        elif t == "PublicReleased":
            db.execute(
                "UPDATE public_rollouts SET released_at = ?, released_seq = ?"
                " WHERE rollout_id = ? AND released_seq IS NULL",
                (ev.at, ev.seq, d["rollout_id"]),
            )


def publication_projections() -> list[Projection]:
    """The read models publication needs; register them in ``default_projections()``."""
    return [SubscribersProjection(), FeedProjection(), PublicProjection()]
