"""The whole archived record of one rollout, read from its stream (``/v1/rollouts/{id}``).

Built from the log, not from a projection: this is the evidence, so it shows what the
events say, with each event's ``seq`` and ``hash`` so that a reader can check it
against the log's checkpoints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rollwatch.abc import EventStore
from rollwatch.events import (
    PublicationDecided,
    PublicDate,
    PublicReleased,
    Recorded,
    RolloutFailed,
    RolloutRequested,
    RolloutRescored,
    RolloutResponded,
    RolloutScored,
    RunStarted,
    parse_rfc3339,
    rollout_stream,
    run_stream,
)

if TYPE_CHECKING:
    from rollwatch.publication.public import EventCheck


async def rollout_record(
    store: EventStore, rollout_id: str, now: datetime | None = None, check: EventCheck | None = None
) -> dict[str, Any] | None:
    """Everything the log holds about ``rollout_id``; None when it has no events.

    Keys: ``rollout_id``, ``run`` (the run's start: schedule, provider, params, node),
    ``provider``, ``model``, ``problem_id``, ``problem_hash``, ``sample``, ``attempts``
    (each with its request as sent and its response or failure), ``answer`` (the final
    response: text, reasoning, usage, cost), ``score``, ``publication`` (each audience's
    decision and the public release, and a ``state``), ``cost_usd`` and ``events``
    (seq, id, type, at, hash of every event of the stream). With ``check``, an event changed
    since it was appended raises :class:`IntegrityError` naming it (nothing is served).
    """
    events = [ev async for ev in store.read(stream=rollout_stream(rollout_id))]
    if not events:
        return None
    await _unchanged(check, events)
    rec: dict[str, Any] = {
        "rollout_id": rollout_id,
        "run_id": None,
        "run": None,
        "provider": None,
        "model": None,
        "problem_id": None,
        "problem_hash": None,
        "sample": None,
        "attempts": [],
        "answer": None,
        "score": None,
        "rescores": [],
        "cost_usd": None,
        "publication": {"subscribers": None, "public": None, "released": None, "state": "pending"},
        "events": [],
    }
    attempts: dict[int, dict[str, Any]] = {}
    date = PublicDate()
    for stored in events:
        date.apply(stored)
        rec["events"].append(
            {"seq": stored.seq, "id": stored.id, "type": stored.type, "at": stored.at, "hash": stored.hash}
        )
        at = stored.at
        ev = stored.event()
        if isinstance(ev, RolloutRequested):
            for key in ("run_id", "provider", "model", "problem_id", "problem_hash", "sample"):
                rec[key] = getattr(ev, key)
            attempts[ev.attempt] = {
                "attempt": ev.attempt,
                "requested_at": at,
                "node": ev.node,
                "request": ev.request,
                "outcome": "pending",
                "response": None,
                "failure": None,
            }
        elif isinstance(ev, RolloutResponded):
            response = {"at": at, **_without(ev.to_data(), "rollout_id", "attempt")}
            response["usage"] = response["usage"] or {}
            a = attempts.setdefault(ev.attempt, {"attempt": ev.attempt, "request": None})
            a.update(outcome="responded", response=response)
            rec["answer"] = response
            if ev.cost_usd is not None:
                rec["cost_usd"] = (rec["cost_usd"] or 0.0) + ev.cost_usd
        elif isinstance(ev, RolloutFailed):
            failure = {**_without(ev.to_data(), "rollout_id", "attempt"), "at": at}
            a = attempts.setdefault(ev.attempt, {"attempt": ev.attempt, "request": None})
            a.update(outcome="failed", failure=failure)
        elif isinstance(ev, RolloutScored):
            rec["score"] = {"at": at, **ev.to_data()}
        elif isinstance(ev, RolloutRescored):
            # The run's verdict stays in "score"; each re-score, oldest first, here.
            rec["rescores"].append({"at": at, "seq": stored.seq, **ev.to_data()})
        elif isinstance(ev, PublicationDecided):
            # "none" (nothing goes to the public) is no decision to show: a failure's record
            # reads as it did before every verdict appended one.
            if ev.audience != "none" and rec["publication"].get(ev.audience) is None:
                rec["publication"][ev.audience] = {
                    "decided_at": at,
                    "not_before": ev.not_before,
                    "embargo_s": ev.embargo_s,
                }
        elif isinstance(ev, PublicReleased) and rec["publication"]["released"] is None:
            rec["publication"]["released"] = {"at": at, "seq": stored.seq}
    if rec["publication"]["public"] is not None and date.not_before is not None:
        # The date in force: a pass withdrawn before its release and restored is dated from
        # the restore (events.PublicDate), not by its first decision.
        rec["publication"]["public"]["not_before"] = date.not_before
    rec["attempts"] = [attempts[k] for k in sorted(attempts)]
    rec["publication"]["state"] = _state(rec, now or datetime.now(UTC))
    # A positive whose newest verdict (a re-score under a newer problem version) fails:
    # never released from now on, and marked where it already was.
    newest = rec["rescores"][-1] if rec["rescores"] else None
    rec["publication"]["superseded"] = (
        rec["publication"]["public"] is not None and newest is not None and not newest["passed"]
    )
    if rec["run_id"]:
        async for stored in store.read(stream=run_stream(rec["run_id"]), types={"RunStarted"}):
            await _unchanged(check, [stored])
            run = stored.event()
            if isinstance(run, RunStarted):
                rec["run"] = {
                    "run_id": run.run_id,
                    "started_at": stored.at,
                    "schedule": run.schedule,
                    "provider": run.provider,
                    "models": run.models,
                    "problem_set": run.problem_set,
                    "node": run.node,
                    "rollouts": run.rollouts,
                    "params": run.params,
                    "trigger": run.trigger,
                }
            break
    return rec


async def _unchanged(check: EventCheck | None, events: list[Recorded]) -> None:
    if check is not None:
        changed, _ = await check.changed(events, prove=False)
        if changed:
            from rollwatch.integrity.tree import changed_error

            raise changed_error(changed[0])


def _without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


def _state(rec: dict[str, Any], now: datetime) -> str:
    """``released``, ``embargoed`` (public decision not yet due or not yet carried out),
    ``subscribers_only`` (scored, no public decision: a negative), or ``pending`` (unscored)."""
    pub = rec["publication"]
    if pub["public"] is not None:
        if pub["released"] is not None and parse_rfc3339(pub["public"]["not_before"]) <= now:
            return "released"
        return "embargoed"
    if rec["score"] is not None:
        return "subscribers_only"
    return "pending"
