"""The public surface of rollwatch.scoring, problems and extract (what the CLI and daemon use)."""

from __future__ import annotations

import inspect

import rollwatch.problems
import rollwatch.scoring
import rollwatch.scoring.extract


def test_scoring_exports() -> None:
    """Every exported name exists and is documented; nothing private leaks into __all__."""
    for module in (rollwatch.scoring, rollwatch.problems, rollwatch.scoring.extract):
        for name in module.__all__:
            obj = getattr(module, name)
            assert not name.startswith("_")
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
    assert {"ScoringPool", "ScoringSettings", "Score", "check_references", "settings_from_config"} <= set(
        rollwatch.scoring.__all__
    )
    assert {"load_problem_set", "describe_problems", "Problem", "ProblemSet"} <= set(
        rollwatch.problems.__all__
    )
