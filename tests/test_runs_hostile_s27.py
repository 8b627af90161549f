"""A hostile provider through the real ``rollwatch run`` (session 27).

A loopback OpenAI-compatible server (:mod:`tests.providers.loopback`, in this process)
misbehaves in a way the client once could not take: the run must record every rollout
once, with its failures by cause, finish with ``RunFinished``, print no traceback and
never write the key anywhere.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from tests.providers.fakes import WIRES
from tests.providers.loopback import Reply, Seen, serve
from tests.test_daemon import events
from tests.test_hostile_answers import KEY, _config

pytestmark = pytest.mark.anyio

ANSWER = "```python\ndef solve(x):\n    return x\n```"
FAST = 'api_key_env = "HOSTILE_ANSWERS_KEY"\nbackoff_base = "10ms"\nbackoff_max = "50ms"\nmax_attempts = 3'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _run(tmp_path: Path, answer: object, *, stream: bool = False) -> tuple[int, str]:
    async with serve(answer) as server:  # type: ignore[arg-type]
        cfg = _config(tmp_path, server.url)
        extra = FAST + ("\nstream = true" if stream else "")
        cfg.write_text(cfg.read_text().replace('api_key_env = "HOSTILE_ANSWERS_KEY"', extra))
        with anyio.fail_after(120):
            proc = await anyio.run_process(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "odd-daily"],
                check=False,
                env={**os.environ, "HOSTILE_ANSWERS_KEY": KEY},
            )
    out = proc.stderr.decode() + proc.stdout.decode()
    for f in tmp_path.iterdir():
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in out
    assert "Traceback" not in out, out[-3000:]
    return proc.returncode, out


async def test_a_retry_after_no_clock_holds_is_retried_and_the_run_completes(tmp_path: Path) -> None:
    """Each rollout's first request gets a 429 whose ``Retry-After`` date has a 20-digit
    hour. Before, the date parser's ``OverflowError`` crashed the run at the first one
    (a traceback, the rollouts unanswered); now each 429 is a recorded ``rate_limited``
    failure, retried, and the run completes."""
    wire = WIRES["openai"]
    prompts: Counter[str] = Counter()

    def answer(seen: Seen) -> Reply:
        if seen.method != "POST":
            return Reply(200, {"object": "list", "data": [{"id": "m1", "object": "model"}]})
        prompt = wire.prompt_of(seen.json())
        prompts[prompt] += 1
        if prompts[prompt] == 1:
            value = "Fri, 01 Jan 2027 99999999999999999999:00:00 GMT"
            return Reply(429, {"error": {"message": "slow down"}}, {"retry-after": value})
        return wire.ok(ANSWER)

    code, out = await _run(tmp_path, answer)
    assert code == 0, out[-3000:]
    db = tmp_path / "events.db"
    (finished,) = events(db, "RunFinished")
    assert finished[2]["status"] == "completed"
    responded = Counter(d["rollout_id"] for _, _, d in events(db, "RolloutResponded"))
    assert len(responded) == 4
    assert set(responded.values()) == {1}
    failed = events(db, "RolloutFailed")
    assert [(d["kind"], d["status"]) for _, _, d in failed] == [("rate_limited", 429)] * 4
    assert len(events(db, "RolloutScored")) == 4


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_html_with_status_200_fails_each_rollout_once(tmp_path: Path, stream: bool) -> None:
    """A host behind a captive portal or a broken proxy answers every request with a 200
    whose body is an HTML page. Each rollout is retried up to ``max_attempts`` and then
    failed for good once, as ``bad_response``; the run ends ``partial`` naming that
    cause, exit 1, and nothing is scored."""
    page = b"<!DOCTYPE html><html><body><h1>Sign in to the Wi-Fi</h1></body></html>\n" * 50

    def answer(seen: Seen) -> Reply:
        if seen.method != "POST":
            return Reply(200, {"object": "list", "data": [{"id": "m1", "object": "model"}]})
        return Reply(200, page, {"content-type": "text/html"})

    code, out = await _run(tmp_path, answer, stream=stream)
    assert code == 1, out[-3000:]
    db = tmp_path / "events.db"
    (finished,) = events(db, "RunFinished")
    assert finished[2]["status"] == "partial"
    assert finished[2]["failures"] == {"bad_response": 4}
    failed = events(db, "RolloutFailed")
    assert len(failed) == 4 * 3
    finals = Counter(d["rollout_id"] for _, _, d in failed if not d["retryable"] or d["attempt"] == 3)
    assert len(finals) == 4
    assert events(db, "RolloutResponded") == []
    assert events(db, "RolloutScored") == []
