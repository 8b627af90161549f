"""Scoring: extract the code from an answer and judge it in a sandbox.

Public API (everything else in this package is private to it)::

    settings = settings_from_config(config.scoring)        # or ScoringSettings(...)
    async with ScoringPool(settings) as pool:               # starts one sandbox per worker
        pool.isolation                                       # "bwrap" | "unshare" | "none"
        score = await pool.score(problem, answer_text)       # -> Score (never raises for bad code)
        score.to_dict()                                      # what RolloutScored records
        limit = await pool.time_limit(problem)               # -> TimeLimit (own, calibrated, default)
        failures = await check_references(problem_set, pool) # rollwatch problems check

Scorer kinds: ``python-function`` (``function.py``), ``stdio`` (``stdio.py``) and
``command`` (``command.py``); sandboxes: ``sandbox.py`` (host side) and
``inside/zygote.py`` (inside); the interfaces and their contracts: ``base.py``.
"""

from rollwatch.scoring.base import (
    ISOLATIONS,
    Isolation,
    Outcome,
    SampleRequest,
    SampleResult,
    Sandbox,
    Score,
    Scorer,
    ScoringSettings,
    TimeLimit,
    scorer_version,
    settings_from_config,
)
from rollwatch.scoring.check import CheckFailure, check_references
from rollwatch.scoring.compare import compare_output
from rollwatch.scoring.pool import ScoringPool
from rollwatch.scoring.sandbox import isolation_candidates

__all__ = [
    "ISOLATIONS",
    "CheckFailure",
    "Isolation",
    "Outcome",
    "SampleRequest",
    "SampleResult",
    "Sandbox",
    "Score",
    "Scorer",
    "ScoringPool",
    "ScoringSettings",
    "TimeLimit",
    "check_references",
    "compare_output",
    "isolation_candidates",
    "scorer_version",
    "settings_from_config",
]
