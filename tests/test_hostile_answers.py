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


async def test_a_key_revoked_mid_run_ends_the_run_and_is_never_recorded(tmp_path: Path) -> None:
    """The provider answers three requests, then refuses the key (401) for good, echoing it
    in its error body (plain and in JSON escapes) and in the request-id header. The run
    ends at once, ``partial``, exit 1, with one clear ERROR line and no traceback; no
    request is retried after the 401 (the provider is disabled); the key is nowhere in
    the log's files, nor in what the command printed."""
    wire = WIRES["openai"]
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    answered = 0

    def answer(seen: Seen) -> Reply:
        nonlocal answered
        if seen.method != "POST":  # the model list
            return Reply(200, {"object": "list", "data": [{"id": "m1", "object": "model"}]})
        if answered < 3:
            answered += 1
            return wire.ok("```python\ndef solve(x):\n    return x\n```")
        body = (
            b'{"error": {"message": "Incorrect API key provided: '
            + KEY.encode()
            + b" "
            + escaped.encode()
            + b'", "type": "invalid_request_error", "code": "invalid_api_key"}}'
        )
        return Reply(401, body, {"x-request-id": KEY})

    async with serve(answer) as server:
        cfg = _config(tmp_path, server.url)
        cfg.write_text(cfg.read_text().replace("rollouts = 1", "rollouts = 10") + "\n")
        text = cfg.read_text().replace(
            'api_key_env = "HOSTILE_ANSWERS_KEY"', 'api_key_env = "HOSTILE_ANSWERS_KEY"\nmax_concurrency = 2'
        )
        cfg.write_text(text)
        with anyio.fail_after(120):
            proc = await anyio.run_process(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "odd-daily"],
                check=False,
                env={**os.environ, "HOSTILE_ANSWERS_KEY": KEY},
            )
        seen = sum(s.method == "POST" for s in server.seen)
    err = proc.stderr.decode() + proc.stdout.decode()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert "provider disabled" in err
    # Two in flight when the first 401 came: at most those, never a retry after it.
    assert seen <= 3 + 2, seen
    for f in tmp_path.iterdir():
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in err
    db = tmp_path / "events.db"
    (finished,) = events(db, "RunFinished")
    assert finished[2]["status"] == "partial"
    failed = events(db, "RolloutFailed")
    assert failed
    assert all(d["kind"] == "auth" for _, _, d in failed)
    assert len(events(db, "RolloutResponded")) == len(events(db, "RolloutScored")) == 3
