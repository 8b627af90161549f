"""A provider's answer that is odd in a field rollwatch records, through the real command.

``rollwatch run`` against a loopback OpenAI-compatible server (:mod:`tests.providers.loopback`,
in this process) whose answers are good but for one field; the run must record every
answer, score it and finish ``completed``, with no traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from tests.providers.fakes import WIRES
from tests.providers.loopback import Reply, Seen, serve
from tests.test_daemon import events
from tests.web.opsd import write_problems

pytestmark = pytest.mark.anyio
KEY = "sk-hostile-answers-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(tmp_path: Path, url: str) -> Path:
    problems = write_problems(tmp_path / "problems")
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f"""
[store]
url = "sqlite:{tmp_path / "events.db"}"
[scoring]
workers = 1
[[problem_sets]]
name = "small"
path = "{problems}"
[[providers]]
name = "odd"
kind = "openai"
base_url = "{url}"
api_key_env = "HOSTILE_ANSWERS_KEY"
[providers.prices]
"m1" = {{ input = 1.0, output = 2.0 }}
[[schedules]]
name = "odd-daily"
provider = "odd"
models = ["m1"]
problem_set = "small"
rollouts = 1
every = "24h"
""")
    return cfg


async def test_a_nan_finish_reason_is_recorded_and_the_run_completes(tmp_path: Path) -> None:
    """Every answer's ``finish_reason`` is ``NaN`` (Python's JSON reader takes it; the log's
    canonical JSON cannot hold it). Before: the first ``RolloutResponded`` append raised
    ``ValueError: Out of range float values``, the run crashed (three times, then
    ``interrupted``) with a Python traceback, and every paid answer was lost."""
    wire = WIRES["openai"]

    def answer(_: Seen) -> Reply:
        reply = wire.ok("```python\ndef solve(x):\n    return x\n```")
        body = reply.payload().replace(b'"finish_reason": "stop"', b'"finish_reason": NaN')
        return Reply(200, body, reply.headers)

    async with serve(answer) as server:
        cfg = _config(tmp_path, server.url)
        proc = await anyio.run_process(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "odd-daily"],
            check=False,
            env={**os.environ, "HOSTILE_ANSWERS_KEY": KEY},
        )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    db = tmp_path / "events.db"
    responded = events(db, "RolloutResponded")
    assert len(responded) == 4
    assert all(d["finish_reason"] is None for _, _, d in responded)
    assert len(events(db, "RolloutScored")) == 4
    (finished,) = events(db, "RunFinished")
    assert finished[2]["status"] == "completed"
