"""Attack: count the passes still under embargo from the log's size.

Every signed checkpoint (``/public/checkpoint``, served to anyone) carries the log's
size. If a pass appended one event more than a failure (its public decision), anyone
comparing the sizes before and after a run, or around a lone verdict or re-score,
would count the passes long before their embargo ends. So two logs that differ only in
whether a verdict passed must have the same head.

Both logs are made by the real run machinery (``Run`` on ``open_services``: the SQLite
log, the sandboxed scoring pool) over a problem set of one problem, the provider a real
implementation of the plug-in point answering with the reference solution (a pass) or
a wrong one (a failure).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from rollwatch.abc import EventStore
from rollwatch.config import Config, load_config
from rollwatch.events import RolloutRescored, RolloutScored
from rollwatch.problems import Problem
from rollwatch.providers.base import Prompt
from rollwatch.runs import Run
from rollwatch.runs.rescore import rescore
from rollwatch.scoring.base import Score
from tests.test_daemon import ROOT, daemon_toml
from tests.test_runs import FaultyScorer, ReferenceAnswers, events_of, raises, services

pytestmark = pytest.mark.anyio

PROBLEM = "lis-length"
WRONG = "```python\ndef lis_length(xs):\n    return 0\n```\n"


def one_problem_config(tmp_path: Path) -> Config:
    """A daemon config whose favorites set is the one bundled problem ``PROBLEM``, and a
    schedule of one rollout of it on the test's provider."""
    tmp_path.mkdir(parents=True)
    problems = tmp_path / "problems"
    shutil.copytree(ROOT / "config" / "problems" / PROBLEM, problems / PROBLEM)
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        daemon_toml(tmp_path).replace(str(ROOT / "config" / "problems"), str(problems))
        + """
[publication]
embargo = "30d"
[[providers]]
name = "local"
kind = "reference"
[[schedules]]
name = "once"
provider = "local"
models = ["m1"]
problem_set = "favorites"
rollouts = 1
every = "1h"
"""
    )
    return load_config(cfg)


async def types_of(store: EventStore) -> Counter[str]:
    return Counter([rec.type async for rec in store.read()])


async def one_run(
    tmp_path: Path, answer: Callable[[Prompt, str], str], **faults: Callable[[Problem], Score]
) -> tuple[int, Counter[str], list[RolloutScored]]:
    """A log of one run of one rollout: its head, its event types, its verdicts."""
    config = one_problem_config(tmp_path)
    provider = ReferenceAnswers()
    provider.text = answer
    async with services(config, provider, **faults) as svc:
        run = await Run.start(svc, config.schedule("once"), trigger="manual")
        with anyio.fail_after(120):
            fin = await run.drive(grace=5)
        assert fin is not None
        assert fin.status == "completed", fin
        return await svc.store.head(), await types_of(svc.store), await events_of(svc.store, RolloutScored)


class TestTheSizeTellsNoVerdict:
    async def test_a_pass_and_a_failure_make_logs_of_one_size(self, tmp_path: Path) -> None:
        """One run, one rollout: the log where it passed and the log where it failed have
        the same head (so every checkpoint after the run the same size) and the same
        event types, as many of each."""
        head_pass, types_pass, (passed,) = await one_run(tmp_path / "pass", lambda _, text: text)
        head_fail, types_fail, (failed,) = await one_run(tmp_path / "fail", lambda _, __: WRONG)
        assert (passed.passed, failed.passed) == (True, False)
        assert head_pass == head_fail, (
            f"a pass makes {head_pass - head_fail:+d} events more than a failure: {types_pass - types_fail}"
        )
        assert types_pass == types_fail

    async def test_a_flip_to_pass_and_a_rescore_that_fails_again_make_logs_of_one_size(
        self, tmp_path: Path
    ) -> None:
        """Both logs start alike: one rollout whose scorer broke (a scorer-error verdict,
        re-scored by ``rescore``). In one the scorer is mended and the re-score flips it
        to a pass (its public decision appended with it); in the other it is still broken
        and the re-score fails it again. The heads after the re-scores are equal."""
        heads = {}
        for mended in (True, False):
            config = one_problem_config(tmp_path / f"mended-{mended}")
            async with services(config, ReferenceAnswers(), lis_length=raises) as svc:
                run = await Run.start(svc, config.schedule("once"), trigger="manual")
                with anyio.fail_after(120):
                    fin = await run.drive(grace=5)
                assert fin is not None
                assert fin.passed == 0, fin
                assert isinstance(svc.scorer, FaultyScorer)
                if mended:
                    svc.scorer.faults = {}
                with anyio.fail_after(120):
                    summary = await rescore(svc)
                assert summary.rescored == 1
                (again,) = await events_of(svc.store, RolloutRescored)
                assert again.passed is mended
                heads[mended] = (await svc.store.head(), await types_of(svc.store))
        (head_pass, types_pass), (head_fail, types_fail) = heads[True], heads[False]
        assert head_pass == head_fail, (
            f"a flip to pass makes {head_pass - head_fail:+d} events more: {types_pass - types_fail}"
        )
        assert types_pass == types_fail
