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
from rollwatch.publication.release import release_due
from rollwatch.runs import Run
from rollwatch.runs.rescore import rescore
from rollwatch.scoring.base import Score
from tests.publication.helpers import (
    add_rollout,
    add_subscriber,
    bearer,
    finish_run,
    make_config,
    serving,
    start_run,
)
from tests.test_daemon import ROOT, daemon_toml
from tests.test_runs import FaultyScorer, ReferenceAnswers, events_of, raises, services

pytestmark = pytest.mark.anyio

PROBLEM = "lis-length"
FAILED = "0f0e0d0c-0000-4000-8000-000000000001"
PASSED = "0f0e0d0c-0000-4000-8000-000000000002"
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


class TestNoneIsNoPublicDecision:
    async def test_a_failure_decided_none_reads_as_one_from_before_it(self, tmp_path: Path) -> None:
        """Two logs of one run, a pass and a failure, as appended before "none" existed
        (the failure with the subscribers decision alone) and as now: every reader gives
        the same answers for both. The subscriber feed has the same items (no item for
        "none"), the failure's record the same ``publication`` (no "none" key, no public
        decision, ``subscribers_only``), the public release and its counts hold the
        pass alone, the release job releases the pass alone, the report is the same."""
        seen = {}
        for old in (True, False):
            d = tmp_path / ("old" if old else "new")
            d.mkdir()
            async with serving(d, make_config(publication={"embargo": "0s"})) as env:
                key = await add_subscriber(env.store, "alice")
                run_id = "run-same"
                await start_run(env.store, run_id)
                failed = await add_rollout(env.store, run_id, passed=False, rid=FAILED, old_shape=old)
                passed = await add_rollout(env.store, run_id, passed=True, rid=PASSED, problem_id="p2")
                await finish_run(env.store, run_id, rollouts=2, passed=1)
                assert await release_due(env.store, env.pdb) == 1
                feed = (await env.client.get("/v1/feed", params={"limit": 1000}, headers=bearer(key))).json()
                items = [
                    {k: v for k, v in item.items() if k not in ("seq", "id", "at", "hash", "not_before")}
                    for item in feed["items"]
                ]
                records = {}
                for rid in (failed, passed):
                    r = await env.client.get(f"/v1/rollouts/{rid}", headers=bearer(key))
                    assert r.status_code == 200, r.text
                    pub = r.json()["publication"]
                    records[rid] = {
                        k: (sorted(v) if isinstance(v, dict) else v) for k, v in pub.items()
                    }  # the decisions' keys: their dates differ
                report = (await env.client.get("/v1/report", headers=bearer(key))).json()
                public = await env.client.get(f"/public/rollouts/{failed}.json")
                rows = await env.pdb.fetchall(
                    "SELECT rollout_id, passed, not_before, decided_seq IS NOT NULL, released_seq IS NOT NULL"
                    " FROM public_rollouts ORDER BY rollout_id"
                )
                pa = await env.pdb.fetchall(
                    "SELECT rollout_id, decided, released FROM pa_rollouts ORDER BY rollout_id"
                )
                seen[old] = {
                    "items": items,
                    "records": records,
                    "report": report,
                    "public_failure": public.status_code,
                    "public_rows": [(r[0], r[1], r[2] is None, r[3], r[4]) for r in rows],
                    "pa": pa,
                }
                if not old:
                    nones = [
                        rec.seq
                        async for rec in env.store.read(types={"PublicationDecided"})
                        if rec.event().audience == "none"  # type: ignore[attr-defined]
                    ]
                    assert len(nones) == 1, "the new log has the failure's none decision"
        assert seen[False] == seen[True]
        assert not [i for i in seen[False]["items"] if i["audience"] == "none"]
        assert seen[False]["records"][FAILED] == {
            "subscribers": ["decided_at", "embargo_s", "not_before"],
            "public": None,
            "released": None,
            "state": "subscribers_only",
            "superseded": False,
        }
        assert seen[False]["public_failure"] == 404
        assert seen[False]["pa"] == [(FAILED, 0, 0), (PASSED, 1, 1)]
