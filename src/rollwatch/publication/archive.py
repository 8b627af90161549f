"""The whole archived record of one rollout, read from its stream (``/v1/rollouts/{id}``).

Built from the log, not from a projection: this is the evidence, so it shows what the
events say, with each event's ``seq`` and ``hash`` so that a reader can check it
against the log's checkpoints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rollwatch.abc import EventStore
from rollwatch.events import parse_rfc3339, rollout_stream, run_stream


async def rollout_record(
    store: EventStore, rollout_id: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """Everything the log holds about ``rollout_id``; None when it has no events.

    Keys: ``rollout_id``, ``run`` (the run's start: schedule, provider, params, node),
    ``provider``, ``model``, ``problem_id``, ``problem_hash``, ``sample``, ``attempts``
    (each with its request as sent and its response or failure), ``answer`` (the final
    response: text, reasoning, usage, cost), ``score``, ``publication`` (each audience's
    decision and the public release, and a ``state``), ``cost_usd`` and ``events``
    (seq, id, type, at, hash of every event of the stream).
    """
    events = [ev async for ev in store.read(stream=rollout_stream(rollout_id))]
    if not events:
        return None
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
        "cost_usd": None,
        "publication": {"subscribers": None, "public": None, "released": None, "state": "pending"},
        "events": [],
    }
    attempts: dict[int, dict[str, Any]] = {}
    for ev in events:
        d = ev.data
        rec["events"].append({"seq": ev.seq, "id": ev.id, "type": ev.type, "at": ev.at, "hash": ev.hash})
        if ev.type == "RolloutRequested":
            for k in ("run_id", "provider", "model", "problem_id", "problem_hash", "sample"):
                rec[k] = d.get(k)
            attempts[d["attempt"]] = {
                "attempt": d["attempt"],
                "requested_at": ev.at,
                "node": d.get("node"),
                "request": d.get("request"),
                "outcome": "pending",
                "response": None,
                "failure": None,
            }
        elif ev.type == "RolloutResponded":
            response = {
                "at": ev.at,
                "text": d.get("text"),
                "reasoning": d.get("reasoning"),
                "finish_reason": d.get("finish_reason"),
                "usage": d.get("usage") or {},
                "cost_usd": d.get("cost_usd"),
                "latency_ms": d.get("latency_ms"),
                "request_id": d.get("request_id"),
                "model": d.get("model"),
            }
            a = attempts.setdefault(d["attempt"], {"attempt": d["attempt"], "request": None})
            a.update(outcome="responded", response=response)
            rec["answer"] = response
            if d.get("cost_usd") is not None:
                rec["cost_usd"] = (rec["cost_usd"] or 0.0) + d["cost_usd"]
        elif ev.type == "RolloutFailed":
            failure = {
                k: d.get(k) for k in ("kind", "status", "retryable", "message", "retry_after_s", "final")
            }
            failure["at"] = ev.at
            a = attempts.setdefault(d["attempt"], {"attempt": d["attempt"], "request": None})
            a.update(outcome="failed", failure=failure)
        elif ev.type == "RolloutScored":
            rec["score"] = {"at": ev.at, **d}
        elif ev.type == "PublicationDecided":
            aud = d["audience"]
            if rec["publication"].get(aud) is None:
                rec["publication"][aud] = {
                    "decided_at": ev.at,
                    "not_before": d["not_before"],
                    "embargo_s": d.get("embargo_s", 0.0),
                }
        elif ev.type == "PublicReleased" and rec["publication"]["released"] is None:
            rec["publication"]["released"] = {"at": ev.at, "seq": ev.seq}
    rec["attempts"] = [attempts[k] for k in sorted(attempts)]
    rec["publication"]["state"] = _state(rec, now or datetime.now(UTC))
    if rec["run_id"]:
        async for ev in store.read(stream=run_stream(rec["run_id"]), types={"RunStarted"}):
            d = ev.data
            rec["run"] = {
                "run_id": d["run_id"],
                "started_at": ev.at,
                **{
                    k: d.get(k)
                    for k in (
                        "schedule",
                        "provider",
                        "models",
                        "problem_set",
                        "node",
                        "rollouts",
                        "params",
                        "trigger",
                    )
                },
            }
            break
    return rec


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
