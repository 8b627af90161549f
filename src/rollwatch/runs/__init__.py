"""Runs: models × problems × samples, requested, scored and recorded as events.

The same code serves ``rollwatch run`` and the daemon. A run is a pipeline bounded at
every stage: the producer starts a rollout task only when one of ``window`` places is
free (requests in flight plus answers waiting for a scorer), the provider client
enforces the provider's own concurrency and rate limits, and the scoring pool its
worker count. So memory stays flat however many rollouts a run has.

Crash safety comes from the log: a run without ``RunFinished`` is resumed from what
its events say. Rollout ids are derived from (run, model, problem, sample), so a
resumed run finds every rollout it had: answered ones are never requested again,
answered but unscored ones are scored, the rest are requested.

Layout: ``pipeline`` (``Run``: the chunks claimed, the rollouts started, the run's
end), ``rollout`` (one rollout: its attempts recorded, its answer scored),
``budget`` (reservations against the run's budget), ``services`` (the plug-in points
a run is typed against, and their wiring). The publication decision recorded with
each verdict is ``rollwatch.publication.policy``'s.
"""

from __future__ import annotations

from rollwatch.runs.budget import Budget
from rollwatch.runs.pipeline import (
    MAX_CRASHES,
    Run,
    new_run_id,
    rollout_id,
    unfinished_run_of,
    unfinished_runs,
)
from rollwatch.runs.services import (
    ListsModels,
    ProblemSetLike,
    ProviderLike,
    RunLock,
    RunServices,
    RunState,
    ScorerLike,
)

__all__ = [
    "MAX_CRASHES",
    "Budget",
    "ListsModels",
    "ProblemSetLike",
    "ProviderLike",
    "Run",
    "RunLock",
    "RunServices",
    "RunState",
    "ScorerLike",
    "new_run_id",
    "rollout_id",
    "unfinished_run_of",
    "unfinished_runs",
]
