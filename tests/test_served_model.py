"""Which model answered: recorded per answer, a change between runs is an event and a
WARNING, and the report splits its rows by served model.

Real parts throughout: an OpenAI-compatible loopback server whose ``model`` and
``system_fingerprint`` the test switches between runs, the real provider client, the
SQLite log and projections, and the sandboxed scoring pool.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import structlog

from rollwatch.config import Config, load_config
from rollwatch.daemon import open_services
from rollwatch.events import RolloutResponded, ServedModelChanged
from rollwatch.report import build_report, build_trend
from rollwatch.report.render import to_json, to_table
from rollwatch.runs import Run
from tests.providers.fakes import KEY, KEY_ENV, OpenAIWire
from tests.providers.loopback import Reply, Seen, serve
from tests.test_daemon import daemon_toml
from tests.test_runs import events_of

pytestmark = pytest.mark.anyio

MODEL = "gpt-x"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write_config(tmp_path: Path, url: str) -> Config:
    """One schedule of one rollout per favorites problem on an OpenAI provider at ``url``."""
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        daemon_toml(tmp_path)
        + f"""
[[providers]]
name = "acme"
kind = "openai"
base_url = "{url}"
api_key_env = "{KEY_ENV}"
max_attempts = 2
[[schedules]]
name = "daily"
provider = "acme"
models = ["{MODEL}"]
problem_set = "favorites"
rollouts = 1
every = "24h"
"""
    )
    return load_config(cfg)


class TestServedModel:
    async def test_a_silent_upgrade_is_recorded_warned_and_split_in_the_report(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two runs served by one snapshot, then a third by another: every answer records
        the served model and fingerprint; only the third run appends one
        ``ServedModelChanged`` (previous and new served models with their counts) and
        logs a WARNING; the report has a row per served model, and the trend starts a new
        series for the new one instead of comparing it with the old."""
        monkeypatch.setenv(KEY_ENV, KEY)
        wire = OpenAIWire()
        served = {"model": "gpt-x-2025-01-01", "fp": "fp_aaa"}

        def reply(seen: Seen) -> Reply:
            r = wire.ok("def f():\n    return 1")
            r.body["model"] = served["model"]
            r.body["system_fingerprint"] = served["fp"]
            return r

        async with serve(reply) as server:
            config = write_config(tmp_path, server.url)
            async with open_services(config) as svc:

                async def one_run() -> str:
                    run = await Run.start(svc, config.schedule("daily"), trigger="manual")
                    with anyio.fail_after(120):
                        fin = await run.drive(grace=5)
                    assert fin is not None
                    assert fin.status == "completed", fin
                    return run.run_id

                r1 = await one_run()
                served["fp"] = "fp_bbb"  # fingerprints rotate: not a change of model
                r2 = await one_run()
                served.update(model="gpt-x-2025-06-01", fp="fp_ccc")
                with structlog.testing.capture_logs() as logs:
                    r3 = await one_run()
                answers = await events_of(svc.store, RolloutResponded)
                changes = await events_of(svc.store, ServedModelChanged)
                await svc.projections.catch_up(svc.store)
                report = await build_report(svc.projections)
                trend = to_json(await build_trend(svc.projections))
        problems = len(answers) // 3
        assert {(a.model, a.system_fingerprint) for a in answers} == {
            ("gpt-x-2025-01-01", "fp_aaa"),
            ("gpt-x-2025-01-01", "fp_bbb"),
            ("gpt-x-2025-06-01", "fp_ccc"),
        }
        assert [(c.run_id, c.model, c.previous_run_id) for c in changes] == [(r3, MODEL, r2)]
        assert changes[0].served == {"gpt-x-2025-06-01": problems}
        assert changes[0].previous == {"gpt-x-2025-01-01": problems}
        warnings = [e for e in logs if e["event"] == "served_model_changed"]
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
        rows = to_json(report)
        assert [(r["model"], r["served_model"], r["rollouts"]) for r in rows] == [
            (MODEL, "gpt-x-2025-01-01", 2 * problems),
            (MODEL, "gpt-x-2025-06-01", problems),
        ]
        assert "SERVED AS" in to_table(report)
        assert [(r["run_id"], r["served_model"], r["previous_run_id"]) for r in trend] == [
            (r1, "gpt-x-2025-01-01", None),
            (r2, "gpt-x-2025-01-01", r1),
            (r3, "gpt-x-2025-06-01", None),
        ]
