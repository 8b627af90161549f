"""A hostile or broken provider behind the batch APIs (OpenAI Batch, Anthropic Message
Batches, Gemini batch mode).

Whole runs against the loopback batch server (``tests/providers/batch_server.py``),
made to misbehave: results for rollouts never sent, duplicated, not JSONL, nested too
deep, missing, with absurd usage; a batch that never ends, goes backwards, has a state
no documentation names, or is suddenly gone; and the transport under a batch call (a
reset after the headers, a Content-Length shorter than the body, no headers at all).
The promise each one checks: a clear recorded failure, nothing lost or counted twice,
the run ends, and the key in no recorded failure.
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from rollwatch.config import Config, load_config
from rollwatch.errors import ProviderError
from rollwatch.events import (
    BatchEnded,
    BatchPolled,
    BatchSubmitted,
    RolloutFailed,
    RolloutResponded,
    RunFinished,
)
from rollwatch.providers import ProviderClient
from rollwatch.providers.base import Parsed
from rollwatch.providers.batch import BatchState
from rollwatch.store.sqlite import SQLiteEventStore
from tests.providers.batch_server import BatchProvider, Fate, batch_provider
from tests.providers.conftest import provider_config
from tests.providers.fakes import KEY, KEY_ENV, OpenAIWire
from tests.providers.loopback import Reply, Seen
from tests.providers.test_hostile_provider import DEEP, _head, raw_serve
from tests.test_batches import run_once, write_config
from tests.test_runs import events_of

pytestmark = pytest.mark.anyio

FILE_KINDS = ["openai", "anthropic"]
"""The kinds whose results are a JSONL download (Gemini's are inline in the operation)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ok(batch: int, index: int, custom_id: str) -> Fate:
    return "ok"


def config_for(tmp_path: Path, kind: str, url: str, extra: str = "", **kw: Any) -> Config:
    """``tests/test_batches.py``'s run config, with ``extra`` lines in the provider table."""
    path = write_config(tmp_path, kind, url, **kw)
    text = path.read_text().replace("batch_max_requests", extra + "\nbatch_max_requests", 1)
    path.write_text(text)
    return load_config(path)


class Outcomes:
    """What a run recorded: its end, and every batch and rollout event."""

    def __init__(self, fin: RunFinished) -> None:
        self.fin = fin
        self.submitted: list[BatchSubmitted] = []
        self.polled: list[BatchPolled] = []
        self.ended: list[BatchEnded] = []
        self.answers: list[RolloutResponded] = []
        self.failures: list[RolloutFailed] = []

    @classmethod
    async def of(cls, tmp_path: Path, fin: RunFinished) -> Outcomes:
        out = cls(fin)
        async with SQLiteEventStore(tmp_path / "events.db") as store:
            out.submitted = await events_of(store, BatchSubmitted)
            out.polled = await events_of(store, BatchPolled)
            out.ended = await events_of(store, BatchEnded)
            out.answers = await events_of(store, RolloutResponded)
            out.failures = await events_of(store, RolloutFailed)
        return out

    @property
    def rollouts(self) -> set[str]:
        return {rid for s in self.submitted for rid in s.rollouts}

    def answered_once(self) -> None:
        """Every rollout submitted has exactly one answer, and nothing else has one."""
        counts = Counter(a.rollout_id for a in self.answers)
        assert set(counts) == self.rollouts
        assert set(counts.values()) == {1}

    def no_key(self) -> None:
        for f in self.failures:
            assert KEY not in f.message


async def hostile_run(
    tmp_path: Path,
    kind: str,
    setup: Callable[[BatchProvider], None],
    *,
    extra: str = "",
    fate: Callable[[int, int, str], Fate] = ok,
    **kw: Any,
) -> tuple[Outcomes, BatchProvider]:
    """One batched run of the ten favorites against a batch server ``setup`` made hostile."""
    async with batch_provider(kind, fate) as server:
        setup(server)
        config = config_for(tmp_path, kind, server.url, extra, **kw)
        fin = await run_once(config)
    return await Outcomes.of(tmp_path, fin), server


def mangle_downloads(server: BatchProvider, mangle: Callable[[int, bytes], bytes]) -> None:
    """Every results download (the n-th, from 1) goes through ``mangle``; the output file
    only, for OpenAI (its error file is empty when all goes well)."""
    real = server._download
    n = 0

    def download(data: bytes) -> Reply:
        nonlocal n
        if server.kind == "openai" and not data:
            return real(data)
        n += 1
        return real(mangle(n, data))

    server._download = download  # type: ignore[method-assign]


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in data.splitlines() if x.strip()]


def jsonl(items: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in items)


# --- the results ---------------------------------------------------------------------------


class TestHostileResults:
    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_results_for_rollouts_never_sent_are_ignored(self, kind: str, tmp_path: Path) -> None:
        """The results carry answers for ids no batch of ours had (random UUIDs) and for
        an id of ours with another rollout's line: nothing is recorded for a foreign
        id, every rollout gets its own answer once, the run completes."""

        def mangle(n: int, data: bytes) -> bytes:
            items = lines_of(data)
            strangers = [{**item, "custom_id": str(uuid.uuid4())} for item in items]
            return jsonl(strangers + items + strangers)

        out, _ = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        assert len(out.submitted) == 1
        out.answered_once()
        assert out.ended[0].answered == 10

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_duplicate_results_are_recorded_once(self, kind: str, tmp_path: Path) -> None:
        """Every result line comes three times: each rollout records one answer, the
        batch counts ten answered, not thirty."""

        def mangle(n: int, data: bytes) -> bytes:
            items = lines_of(data)
            return jsonl(items + items[::-1] + items)

        out, _ = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        out.answered_once()
        assert [(e.answered, e.failed, e.unanswered) for e in out.ended] == [(10, 0, [])]

    @pytest.mark.parametrize("kind", FILE_KINDS)
    @pytest.mark.parametrize(
        "garbage",
        [b"<html>502 Bad Gateway</html>", b"[" * DEEP + b"]" * DEEP, b"\xff\xfe\x00" * 1000],
        ids=["html", "deep", "binary"],
    )
    async def test_a_results_file_that_is_not_jsonl(self, kind: str, garbage: bytes, tmp_path: Path) -> None:
        """The first batch's results are not JSONL (HTML, one line nested 100k deep,
        binary): nothing raises, its rollouts are unanswered (a recorded, retried
        ``batch_unanswered``), the second batch answers them all."""

        def mangle(n: int, data: bytes) -> bytes:
            return garbage + b"\n" if n == 1 else data

        out, server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        assert server.creates == 2
        out.answered_once()
        assert Counter((f.kind, f.final) for f in out.failures) == {("batch_unanswered", False): 10}
        assert out.ended[0].unanswered == sorted(out.rollouts)

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_a_deep_line_among_good_ones_costs_only_itself(self, kind: str, tmp_path: Path) -> None:
        """A 100k-deep line in place of one result: that rollout alone goes again."""

        def mangle(n: int, data: bytes) -> bytes:
            if n > 1:
                return data
            lines = data.splitlines()
            return b"\n".join([b"[" * DEEP + b"]" * DEEP, *lines[1:]]) + b"\n"

        out, _server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        assert [len(s.rollouts) for s in out.submitted] == [10, 1]
        out.answered_once()
        assert [f.kind for f in out.failures] == ["batch_unanswered"]

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_results_missing_for_some_rollouts(self, kind: str, tmp_path: Path) -> None:
        """Every batch answers only its first half (then, of one left, nothing at all):
        the missing rollouts are retried up to ``max_attempts`` (3) and then fail for
        good; the run ends ``partial``, nothing hangs, nothing is answered twice."""

        def mangle(n: int, data: bytes) -> bytes:
            items = lines_of(data)
            return jsonl(items[: len(items) // 2])

        out, _server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "partial"
        # 10 -> 5 answered, 5 again -> 2, 3 again -> 1, 2 fail for good after 3 attempts.
        assert [len(s.rollouts) for s in out.submitted] == [10, 5, 3]
        assert len(out.answers) == 8
        assert len({a.rollout_id for a in out.answers}) == 8
        finals = [f for f in out.failures if f.final]
        assert len(finals) == 2
        assert {f.kind for f in finals} == {"batch_unanswered"}
        assert {f.attempt for f in finals} == {3}

    @pytest.mark.parametrize("kind", FILE_KINDS)
    @pytest.mark.parametrize("value", [10**400, 2**64, -1], ids=["1e400", "2^64", "negative"])
    async def test_an_impossible_token_count_in_a_result(self, kind: str, value: int, tmp_path: Path) -> None:
        """One result's usage has a token count no answer can have: the synchronous
        path's rule applies (a retryable ``bad_response`` naming the field, never priced),
        and that rollout is answered by the next batch."""
        field = "prompt_tokens" if kind == "openai" else "input_tokens"

        def mangle(n: int, data: bytes) -> bytes:
            if n > 1:
                return data
            items = lines_of(data)
            body = items[0]["response"]["body"] if kind == "openai" else items[0]["result"]["message"]
            body["usage"][field] = value
            return jsonl(items)

        out, _server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        assert out.fin.status == "completed"
        assert [len(s.rollouts) for s in out.submitted] == [10, 1]
        out.answered_once()
        (failure,) = out.failures
        assert (failure.kind, failure.final) == ("bad_response", False)
        assert field in failure.message
        assert all(a.cost_usd is not None and 0 <= a.cost_usd < 1 for a in out.answers)

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_the_key_in_json_escapes_in_results(self, kind: str, tmp_path: Path) -> None:
        """The first batch's results spell the key in ``\\u`` escapes (which the mask of the
        raw download does not see) in one answer's text and in another's error, whose
        message is also a megabyte long. Before, both went into the log as they decoded:
        the key in ``RolloutResponded.text`` and ``RolloutFailed.message``, and the whole
        megabyte of message. Now the key is masked and the message is an excerpt."""
        escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)

        def mangle(n: int, data: bytes) -> bytes:
            if n > 1:
                return data
            items = lines_of(data)
            cid = items[0]["custom_id"]
            message = "KEYHERE " + "boom " * 200_000
            if kind == "openai":
                items[0] = {
                    "id": "r",
                    "custom_id": cid,
                    "response": None,
                    "error": {"code": "x", "message": message},
                }
                items[1]["response"]["body"]["choices"][0]["message"]["content"] = "# KEYHERE\ndef f(): ..."
            else:
                error = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
                items[0] = {"custom_id": cid, "result": {"type": "errored", "error": error}}
                items[1]["result"]["message"]["content"][0]["text"] = "# KEYHERE\ndef f(): ..."
            return jsonl(items).replace(b"KEYHERE", escaped.encode())

        out, _server = await hostile_run(tmp_path, kind, lambda s: mangle_downloads(s, mangle))
        (failure,) = out.failures
        assert KEY not in failure.message
        assert len(failure.message) < 1000
        assert all(KEY not in a.text for a in out.answers)
        assert any("[redacted]" in a.text for a in out.answers)


# --- the batch's state ---------------------------------------------------------------------

OPENAI_POLL = re.compile(r"/batches/([\w-]+)")


def script_polls(server: BatchProvider, answer: Callable[[BatchProvider, Any, int], Reply | None]) -> None:
    """OpenAI: each poll of a batch (the n-th of it, from 1) answers ``answer(server,
    batch, n)``; None lets the server's own logic answer."""
    real = server._openai

    def openai(seen: Seen) -> Reply:
        m = OPENAI_POLL.fullmatch(seen.target)
        if seen.method == "GET" and m:
            b = server.batches[m.group(1)]
            b.polls += 1
            reply = answer(server, b, b.polls)
            if reply is not None:
                return reply
            b.polls -= 1
        return real(seen)

    server._openai = openai  # type: ignore[method-assign]


def states(*sequence: str) -> Callable[[BatchProvider, Any, int], Reply]:
    """Polls answer these states in turn (the last one for ever); ``completed`` with
    the real results."""

    def answer(server: BatchProvider, b: Any, n: int) -> Reply:
        b.state = sequence[min(n, len(sequence)) - 1]
        if b.state == "completed" and f"out-{b.id}" not in server.files:
            server._write_openai_results(b)
        return Reply(200, server._openai_view(b))

    return answer


SHORT = 'batch_max_time = "1500ms"'


class TestHostileStates:
    async def test_a_batch_that_never_ends_gives_up_at_batch_max_time(self, tmp_path: Path) -> None:
        """A batch ``in_progress`` for ever: at ``batch_max_time`` its rollouts fail for
        good (``batch_timeout``, naming the limit and the last state), the run ends
        ``partial``, and they are not submitted again (that could pay twice). Without
        the limit the run polled for ever."""
        with anyio.fail_after(60):
            out, server = await hostile_run(
                tmp_path, "openai", lambda s: script_polls(s, states("in_progress")), extra=SHORT
            )
        assert server.creates == 1
        assert out.fin.status == "partial"
        assert out.fin.failures == {"batch_timeout": 10}
        assert {(f.kind, f.final, f.attempt) for f in out.failures} == {("batch_timeout", True, 1)}
        assert "batch_max_time" in out.failures[0].message
        assert "in_progress" in out.failures[0].message
        out.no_key()

    async def test_polls_that_always_fail_give_up_at_batch_max_time(self, tmp_path: Path) -> None:
        """Every poll a 500 (retried while the batch may still end): at
        ``batch_max_time`` the rollouts fail for good, the last error named."""

        def boom(server: BatchProvider, b: Any, n: int) -> Reply:
            return Reply(500, {"error": {"message": f"boom {KEY}"}})

        with anyio.fail_after(60):
            out, server = await hostile_run(tmp_path, "openai", lambda s: script_polls(s, boom), extra=SHORT)
        assert server.creates == 1
        assert out.fin.failures == {"batch_timeout": 10}
        assert "HTTP 500" in out.failures[0].message
        out.no_key()

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_a_results_download_that_never_answers(self, kind: str, tmp_path: Path) -> None:
        """The batch ends but its results never come (every download stalls past the
        client's timeout): at ``batch_max_time`` the rollouts fail for good."""

        def hold(server: BatchProvider) -> None:
            server.hold_results = True

        with anyio.fail_after(60):
            out, server = await hostile_run(tmp_path, kind, hold, extra=SHORT, timeout="300ms")
        assert server.creates == 1
        assert out.fin.failures == {"batch_timeout": 10}
        assert "timeout" in out.failures[0].message or "no answer" in out.failures[0].message

    async def test_an_anthropic_search_for_a_lost_batch_gives_up(self, tmp_path: Path) -> None:
        """Anthropic: a create's answer is lost, and the batch it made never ends. The
        search for it (by its results, once it ended) waits ``batch_max_time`` at most,
        then the batch is submitted again; that one never ends either and fails for
        good at its own limit. The run ends."""

        def setup(server: BatchProvider) -> None:
            server.stall_creates = 1
            server.polls_in_progress = 10**9

        with anyio.fail_after(60):
            out, server = await hostile_run(tmp_path, "anthropic", setup, extra=SHORT, timeout="300ms")
        assert server.creates == 2
        assert out.fin.failures == {"batch_timeout": 10}

    async def test_a_state_that_goes_backwards(self, tmp_path: Path) -> None:
        """in_progress → validating → in_progress → finalizing → in_progress →
        completed: each change is recorded as polled, the batch is read once it is
        completed, every rollout answered once."""
        seq = ("in_progress", "validating", "in_progress", "finalizing", "in_progress", "completed")
        out, server = await hostile_run(tmp_path, "openai", lambda s: script_polls(s, states(*seq)))
        assert out.fin.status == "completed"
        assert server.creates == 1
        assert [p.state for p in out.polled] == list(seq)
        out.answered_once()

    async def test_an_unknown_state(self, tmp_path: Path) -> None:
        """A state no documentation names is not an end: the batch is polled on, and
        read once it completes."""
        seq = ("in_progress", "paused_by_a_wizard", "", "completed")
        out, _ = await hostile_run(tmp_path, "openai", lambda s: script_polls(s, states(*seq)))
        assert out.fin.status == "completed"
        assert [p.state for p in out.polled] == list(seq)
        out.answered_once()

    async def test_an_unknown_state_for_ever_gives_up(self, tmp_path: Path) -> None:
        with anyio.fail_after(60):
            out, _ = await hostile_run(
                tmp_path, "openai", lambda s: script_polls(s, states("paused_by_a_wizard")), extra=SHORT
            )
        assert out.fin.failures == {"batch_timeout": 10}
        assert "paused_by_a_wizard" in out.failures[0].message

    async def test_a_short_key_echoed_by_a_poll_is_in_no_log_line(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A key too short to be masked in bodies (a local server's), not shaped like a
        vendor's, echoed by a poll's 401: the batch fails and its rollouts with it, and
        the key is in no recorded failure and no log line. Before, the WARNING
        ``batch_poll_failed`` carried the poll's message, key and all."""
        short = "local-k3y"
        monkeypatch.setenv(KEY_ENV, short)

        def revoked(server: BatchProvider, b: Any, n: int) -> Reply | None:
            return Reply(401, {"error": {"message": f"key {short} was revoked"}})

        with structlog.testing.capture_logs() as captured:
            out, _ = await hostile_run(tmp_path, "openai", lambda s: script_polls(s, revoked))
        assert out.fin.status == "partial"
        assert out.failures
        assert all(short not in f.message for f in out.failures)
        assert short not in repr(captured)

    async def test_a_batch_id_suddenly_404(self, tmp_path: Path) -> None:
        """The first batch answers its first poll, then is 404: its rollouts fail this
        attempt (``batch_lost``, retried) and go into a second batch, which answers."""

        def lost(server: BatchProvider, b: Any, n: int) -> Reply | None:
            if b.id.endswith("_1") and n > 1:
                return Reply(404, {"error": {"message": "No batch found"}})
            return None

        out, server = await hostile_run(tmp_path, "openai", lambda s: script_polls(s, lost))
        assert out.fin.status == "completed"
        assert server.creates == 2
        assert Counter((f.kind, f.final) for f in out.failures) == {("batch_lost", False): 10}
        out.answered_once()

    @pytest.mark.parametrize("count", [10**400, -5, "12"], ids=["1e400", "negative", "string"])
    async def test_absurd_request_counts(self, count: Any, tmp_path: Path) -> None:
        """Request counts no batch can have are recorded as the provider said (or as 0)
        and never crash the progress line; the run completes."""

        def odd(server: BatchProvider, b: Any, n: int) -> Reply:
            reply = states("in_progress", "completed")(server, b, n)
            reply.body["request_counts"] = {"total": count, "completed": count, "failed": 0}
            return reply

        with anyio.fail_after(60):
            out, _ = await hostile_run(tmp_path, "openai", lambda s: script_polls(s, odd))
        assert out.fin.status == "completed"
        out.answered_once()

    @pytest.mark.parametrize(
        "count", ["²", "9" * 5000, "-3", None], ids=["superscript", "5000-digit", "neg", "null"]
    )
    async def test_gemini_batch_stats_that_are_not_numbers(self, count: Any, tmp_path: Path) -> None:
        """Gemini's counts are int64 strings: a digit that int() refuses (``²``), a
        number past Python's 4300-digit limit, a sign, a null: counted as 0, the run
        completes."""

        def setup(server: BatchProvider) -> None:
            real = server._gemini_view

            def view(b: Any) -> dict[str, Any]:
                op = real(b)
                op["metadata"]["batchStats"]["requestCount"] = count
                op["metadata"]["batchStats"]["pendingRequestCount"] = count
                return op

            server._gemini_view = view  # type: ignore[method-assign]

        with anyio.fail_after(60):
            out, _ = await hostile_run(tmp_path, "gemini", setup)
        assert out.fin.status == "completed"
        out.answered_once()


# --- the transport under a batch call -------------------------------------------------------

POLLED = {
    "openai": ("batch_1", {"id": "batch_1", "status": "in_progress"}),
    "anthropic": ("msgbatch_1", {"id": "msgbatch_1", "processing_status": "in_progress"}),
    "gemini": ("batches/gb1", {"name": "batches/gb1", "metadata": {"state": "BATCH_STATE_RUNNING"}}),
}


async def poll_once(kind: str, url: str, **config: Any) -> BatchState | ProviderError:
    """One poll of a batch through the real client; its state, or the error it raised
    (anything else propagates: a test failure)."""
    bid = POLLED[kind][0]
    async with ProviderClient(provider_config(kind, url, **config)) as client:
        try:
            with anyio.fail_after(10):
                return await client.batch_api().poll(client.send, bid)
        except ProviderError as e:
            return e


def retryable(result: BatchState | ProviderError, *kinds: str) -> ProviderError:
    assert isinstance(result, ProviderError), result
    assert result.kind in kinds, result
    assert result.retryable
    assert KEY not in result.message
    return result


class TestTransport:
    @pytest.mark.parametrize("kind", sorted(POLLED))
    async def test_a_reset_right_after_the_headers(self, kind: str) -> None:
        """The head of a 200 with a body announced, then the connection is gone: a
        retryable ``connection`` error (the poll is tried again), nothing else raises."""

        async def reset(stream: SocketStream) -> None:
            await stream.send(_head(200, {"content-type": "application/json", "content-length": "500"}))
            await stream.aclose()

        async with raw_serve(reset) as url:
            retryable(await poll_once(kind, url), "connection")

    @pytest.mark.parametrize("kind", sorted(POLLED))
    async def test_a_content_length_shorter_than_the_body(self, kind: str) -> None:
        """A Content-Length that cuts the JSON: a retryable ``bad_response`` (not JSON);
        the bytes past it, left on the connection, do not poison the next call (which
        gets the whole answer)."""
        body = json.dumps(POLLED[kind][1]).encode()
        calls = 0

        async def short(stream: SocketStream) -> None:
            nonlocal calls
            reader = BufferedByteReceiveStream(stream)
            while True:
                calls += 1
                length = len(body) // 2 if calls == 1 else len(body)
                await stream.send(_head(200, {"content-length": str(length)}) + body)
                try:
                    await reader.receive_until(b"\r\n\r\n", 65536)
                except anyio.IncompleteRead:  # the client dropped the poisoned connection
                    return

        async with raw_serve(short) as url, ProviderClient(provider_config(kind, url)) as client:
            api = client.batch_api()
            bid = POLLED[kind][0]
            with anyio.fail_after(10):
                try:
                    await api.poll(client.send, bid)
                except ProviderError as e:
                    retryable(e, "bad_response")
                else:
                    raise AssertionError("a cut body was read as a poll")
                second: BatchState | ProviderError
                try:
                    second = await api.poll(client.send, bid)
                except ProviderError as e:
                    second = e
            # The leftover bytes are read as the next answer's start (httpx reuses the
            # connection): one retryable error, then a fresh connection; never a crash.
            if isinstance(second, ProviderError):
                retryable(second, "connection", "bad_response")
            else:
                assert second.state in ("in_progress", "BATCH_STATE_RUNNING")

    async def test_a_results_file_cut_by_its_content_length(self) -> None:
        """OpenAI's output file under a Content-Length that ends mid-line: the whole
        lines are answers, the cut one is absent (its rollout unanswered, submitted
        again); nothing raises."""
        ok = OpenAIWire().ok("def f():\n    return 1").body
        data = b"".join(
            json.dumps({"custom_id": f"r{i}", "response": {"status_code": 200, "body": ok}}).encode() + b"\n"
            for i in range(3)
        )
        cut = len(data) - 40

        async def short(stream: SocketStream) -> None:
            await stream.send(_head(200, {"content-length": str(cut)}) + data)

        async with raw_serve(short) as url, ProviderClient(provider_config("openai", url)) as client:
            with anyio.fail_after(10):
                out = await client.batch_api().results(
                    client.send, BatchState("b", "completed", True, results=("file-out",))
                )
        assert set(out) == {"r0", "r1"}
        assert all(isinstance(o, Parsed) for o in out.values())

    @pytest.mark.parametrize("kind", sorted(POLLED))
    async def test_no_headers_ever(self, kind: str) -> None:
        """A server that takes the request and never answers: a retryable ``timeout``
        at the configured ``timeout``, not a hang."""

        async def silent(stream: SocketStream) -> None:
            await anyio.sleep_forever()

        async with raw_serve(silent) as url:
            start = anyio.current_time()
            retryable(await poll_once(kind, url, timeout=0.5), "timeout")
            assert anyio.current_time() - start < 5

    @pytest.mark.parametrize("kind", sorted(POLLED))
    async def test_a_connection_refused(self, kind: str) -> None:
        """Nothing listens: a retryable ``connection`` error."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()
        retryable(await poll_once(kind, f"http://127.0.0.1:{port}"), "connection")

    @pytest.mark.parametrize("kind", FILE_KINDS)
    async def test_a_decompression_bomb_on_a_poll_is_refused(self, kind: str) -> None:
        """A poll answered by 100 kB of gzip that inflates to 100 MB: a retryable
        ``bad_response`` once the decoded body passes 64 MiB, never held whole (the
        batch calls read the whole body; a bigger bomb took the daemon's memory).
        Gemini's poll is also its results read (the answers come inline in the ended
        operation), so it has the results' limit (1 GiB), not tested here."""
        bomb = gzip.compress(b" " * 100_000_000 + json.dumps(POLLED[kind][1]).encode(), compresslevel=9)

        async def boom(stream: SocketStream) -> None:
            head = {"content-type": "application/json", "content-encoding": "gzip"}
            await stream.send(_head(200, {**head, "content-length": str(len(bomb))}) + bomb)

        async with raw_serve(boom) as url:
            error = retryable(await poll_once(kind, url), "bad_response")
        assert "too large" in error.message
