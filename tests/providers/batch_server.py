"""A loopback provider that speaks OpenAI's Batch API, Anthropic's Message Batches and
Gemini's batch mode.

Built on :mod:`tests.providers.loopback` (raw HTTP on 127.0.0.1). Every poll moves a
batch one state further (OpenAI: validating → in_progress → finalizing → completed;
Anthropic: in_progress → ended; Gemini: PENDING → RUNNING → SUCCEEDED, or EXPIRED when
a request of it expires), after ``polls_in_progress`` polls in progress. What each
request gets is the test's choice (``fate``): an answer, an error, or nothing (the
batch "expired" before it: it is missing from the results). ``creates`` counts the
batches created, ``hold_results`` holds the results download until released, and
``after_create`` (a fault hook) runs right after a create's answer is sent;
``hold_lists`` holds a client's lookup of its batch until the test releases it.
``rejected_key``: a key every route refuses with 401 (a revoked key), counted in
``rejections``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from tests.providers.fakes import AnthropicWire, GeminiWire, OpenAIWire
from tests.providers.loopback import LoopbackServer, Reply, Seen, serve

Fate = Literal["ok", "error", "expire"]


@dataclass
class _Batch:
    id: str
    kind: str
    requests: list[dict[str, Any]]
    polls: int = 0
    state: str = ""
    fates: dict[str, Fate] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)


class BatchProvider:
    """See the module docstring."""

    def __init__(self, kind: str, fate: Callable[[int, int, str], Fate], polls_in_progress: int = 2) -> None:
        self.kind = kind
        self.fate = fate
        """``fate(batch_number, index_in_batch, custom_id)``: 1-based batch number."""
        self.polls_in_progress = polls_in_progress
        self.batches: dict[str, _Batch] = {}
        self.files: dict[str, bytes] = {}
        self.creates = 0
        self.polls = 0
        self.downloads = 0
        self.hold_results = False
        self.rejected_key: str | None = None
        """Refuse every request carrying this key with 401, as a provider refuses a revoked key."""
        self.rejections = 0
        self.reject_creates: int | None = None
        """Answer every create with this status (e.g. 401) instead."""
        self.stall_creates = 0
        """Create this many batches without answering the create (the answer is lost)."""
        self.partial_counts = False
        """Report requests done while a batch is in progress (OpenAI wire): a tenth
        more at each poll."""
        self.after_create: Callable[[], None] | None = None
        """Called right after a create's answer is sent (e.g. SIGKILL the client)."""
        self.hold_lists = 0
        """Hold this many batch listings (a client's lookup of a batch by its key) until
        ``server.release`` is set; ``listed`` is set when one arrives (OpenAI wire)."""
        self.listed = anyio.Event()
        self.lists = 0
        """Batch listings answered (OpenAI wire)."""
        self.released = anyio.Event()
        self.result_requested = anyio.Event()
        self.server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    # -- routing ------------------------------------------------------------------------

    def reply(self, seen: Seen) -> Reply:
        if self.rejected_key is not None and any(
            self.rejected_key in seen.headers.get(h, "")
            for h in ("authorization", "x-api-key", "x-goog-api-key")
        ):
            self.rejections += 1
            wire = {"openai": OpenAIWire, "gemini": GeminiWire}.get(self.kind, AnthropicWire)()
            return wire.error(401, "Incorrect API key provided")
        if self.kind == "openai":
            return self._openai(seen)
        if self.kind == "gemini":
            return self._gemini(seen)
        return self._anthropic(seen)

    def _created(self, reply: Reply) -> Reply:
        reply.after = self.after_create
        return reply

    def _openai(self, seen: Seen) -> Reply:
        t = seen.target
        if seen.method == "POST" and t == "/files":
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = _multipart_file(seen.body)
            return Reply(
                200, {"id": fid, "object": "file", "purpose": "batch", "bytes": len(self.files[fid])}
            )
        if seen.method == "POST" and t == "/batches" and self.reject_creates:
            return OpenAIWire().error(self.reject_creates, "Incorrect API key provided")
        if seen.method == "POST" and t == "/batches":
            body = seen.json()
            lines = [json.loads(x) for x in self.files[body["input_file_id"]].splitlines() if x.strip()]
            b = self._create("batch", lines, "validating")
            b.metadata = body.get("metadata") or {}
            if self.stall_creates > 0:
                self.stall_creates -= 1
                return Reply(action="stall")
            return self._created(Reply(200, self._openai_view(b)))
        if seen.method == "GET" and t.startswith("/batches?"):
            self.listed.set()
            if self.hold_lists > 0:
                self.hold_lists -= 1
                return Reply(action="hold")  # answered (by this route again) once released
            self.lists += 1
            data = [self._openai_view(b) for b in reversed(self.batches.values())]
            return Reply(200, {"object": "list", "data": data, "has_more": False, "last_id": None})
        if seen.method == "GET" and (m := re.fullmatch(r"/batches/([\w-]+)", t)):
            b = self.batches[m.group(1)]
            self.polls += 1
            b.polls += 1
            if b.state == "validating":
                b.state = "in_progress"
            elif b.state == "in_progress" and b.polls > self.polls_in_progress:
                b.state = "finalizing"
            elif b.state == "finalizing":
                b.state = "completed"
                self._write_openai_results(b)
            return Reply(200, self._openai_view(b))
        if seen.method == "GET" and (m := re.fullmatch(r"/files/([\w-]+)/content", t)):
            return self._download(self.files[m.group(1)])
        return Reply(404, {"error": {"message": f"no route {seen.method} {t}"}})

    def _anthropic(self, seen: Seen) -> Reply:
        t = seen.target
        if seen.method == "POST" and t == "/v1/messages/batches":
            b = self._create("msgbatch", seen.json()["requests"], "in_progress")
            if self.stall_creates > 0:
                self.stall_creates -= 1
                return Reply(action="stall")
            return self._created(Reply(200, self._anthropic_view(b)))
        if seen.method == "GET" and t.startswith("/v1/messages/batches?"):
            # Newest first, one page: what a restarted client searches for its batch.
            data = [self._anthropic_view(b) for b in reversed(self.batches.values())]
            first = data[0]["id"] if data else None
            last = data[-1]["id"] if data else None
            return Reply(200, {"data": data, "has_more": False, "first_id": first, "last_id": last})
        if seen.method == "GET" and (m := re.fullmatch(r"/v1/messages/batches/(\w+)", t)):
            b = self.batches[m.group(1)]
            self.polls += 1
            b.polls += 1
            if b.state == "in_progress" and b.polls > self.polls_in_progress:
                b.state = "ended"
            return Reply(200, self._anthropic_view(b))
        if seen.method == "GET" and (m := re.fullmatch(r"/v1/messages/batches/(\w+)/results", t)):
            return self._download(self._anthropic_results(self.batches[m.group(1)]))
        return Reply(404, {"type": "error", "error": {"type": "not_found_error", "message": t}})

    def _gemini(self, seen: Seen) -> Reply:
        t = seen.target
        if seen.method == "POST" and (m := re.fullmatch(r"/models/([\w.-]+):batchGenerateContent", t)):
            batch = seen.json()["batch"]
            requests = [
                {"custom_id": r["metadata"]["key"], "body": {**r["request"], "model": m.group(1)}}
                for r in batch["inputConfig"]["requests"]["requests"]
            ]
            b = self._create("batches/gb", requests, "BATCH_STATE_PENDING")
            b.metadata = {"displayName": batch["displayName"], "model": f"models/{m.group(1)}"}
            if self.stall_creates > 0:
                self.stall_creates -= 1
                return Reply(action="stall")
            return self._created(Reply(200, self._gemini_view(b)))
        if seen.method == "GET" and t.startswith("/batches?"):
            ops = [self._gemini_view(b) for b in reversed(self.batches.values())]
            return Reply(200, {"operations": ops})
        if seen.method == "GET" and (m := re.fullmatch(r"/(batches/[\w-]+)", t)):
            b = self.batches[m.group(1)]
            if b.state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_EXPIRED"):
                # A read of an ended batch is the results download.
                return self._download_reply(self._gemini_view(b))
            self.polls += 1
            b.polls += 1
            if b.state == "BATCH_STATE_PENDING":
                b.state = "BATCH_STATE_RUNNING"
            elif b.state == "BATCH_STATE_RUNNING" and b.polls > self.polls_in_progress:
                expired = any(f == "expire" for f in b.fates.values())
                b.state = "BATCH_STATE_EXPIRED" if expired else "BATCH_STATE_SUCCEEDED"
            return Reply(200, self._gemini_view(b))
        return Reply(404, {"error": {"code": 404, "message": f"no route {t}", "status": "NOT_FOUND"}})

    def _gemini_view(self, b: _Batch) -> dict[str, Any]:
        ended = b.state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_EXPIRED")
        n = len(b.requests)
        ok = sum(f == "ok" for f in b.fates.values())
        err = sum(f == "error" for f in b.fates.values())
        meta: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            **b.metadata,
            "name": b.id,
            "state": b.state,
            "batchStats": {
                "requestCount": str(n),
                "successfulRequestCount": str(ok if ended else 0),
                "failedRequestCount": str(err if ended else 0),
                "pendingRequestCount": str(n - ok - err if ended else n),
            },
        }
        op: dict[str, Any] = {"name": b.id, "metadata": meta, "done": ended}
        if ended:
            wire = GeminiWire()
            items: list[dict[str, Any]] = []
            for r in b.requests:
                cid, fate = r["custom_id"], b.fates[r["custom_id"]]
                if fate == "ok":
                    items.append(
                        {"metadata": {"key": cid}, "response": wire.ok("def f():\n    return 1").body}
                    )
                elif fate == "error":
                    error = {
                        "code": 3,
                        "message": "Invalid value at 'temperature'",
                        "status": "INVALID_ARGUMENT",
                    }
                    items.append({"metadata": {"key": cid}, "error": error})
                # an expired request has no response at all
            meta["output"] = {"inlinedResponses": {"inlinedResponses": items}}
            op["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput",
                "inlinedResponses": {"inlinedResponses": items},
            }
        return op

    # -- the batches -----------------------------------------------------------------------

    def _create(self, prefix: str, requests: list[dict[str, Any]], state: str) -> _Batch:
        self.creates += 1
        bid = f"{prefix}_{self.creates}" if "/" not in prefix else f"{prefix}{self.creates}"
        b = _Batch(bid, self.kind, requests, state=state)
        for i, r in enumerate(requests):
            b.fates[r["custom_id"]] = self.fate(self.creates, i, r["custom_id"])
        self.batches[bid] = b
        return b

    def _counts(self, b: _Batch) -> dict[str, int]:
        done = b.state in ("completed", "ended")
        n = len(b.requests)
        failed = sum(f != "ok" for f in b.fates.values()) if done else 0
        partial = min(n, n * b.polls // 10) if self.partial_counts else 0
        return {"total": n, "completed": n - failed if done else partial, "failed": failed}

    def _openai_view(self, b: _Batch) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": b.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "status": b.state,
            "completion_window": "24h",
            "expires_at": 1_900_000_000,
            "request_counts": self._counts(b),
            "output_file_id": None,
            "error_file_id": None,
            "metadata": b.metadata,
        }
        if b.state == "completed":
            out["output_file_id"] = f"out-{b.id}"
            out["error_file_id"] = f"err-{b.id}"
        return out

    def _write_openai_results(self, b: _Batch) -> None:
        wire = OpenAIWire()
        out, err = [], []
        for r in b.requests:
            cid, fate = r["custom_id"], b.fates[r["custom_id"]]
            if fate == "ok":
                ok = wire.ok("def f():\n    return 1")
                out.append({"id": "r", "custom_id": cid, "response": {"status_code": 200, "body": ok.body}})
            elif fate == "error":
                e = wire.error(400, "Invalid value for 'temperature'")
                err.append({"id": "r", "custom_id": cid, "response": {"status_code": 400, "body": e.body}})
            else:  # OpenAI writes expired requests to the error file with this code
                err.append(
                    {
                        "id": "r",
                        "custom_id": cid,
                        "response": None,
                        "error": {"code": "batch_expired", "message": "not completed in time"},
                    }
                )
        self.files[f"out-{b.id}"] = "".join(json.dumps(x) + "\n" for x in out).encode()
        self.files[f"err-{b.id}"] = "".join(json.dumps(x) + "\n" for x in err).encode()

    def _anthropic_view(self, b: _Batch) -> dict[str, Any]:
        ended = b.state == "ended"
        counts = {
            "processing": 0 if ended else len(b.requests),
            "succeeded": sum(f == "ok" for f in b.fates.values()) if ended else 0,
            "errored": sum(f == "error" for f in b.fates.values()) if ended else 0,
            "canceled": 0,
            "expired": sum(f == "expire" for f in b.fates.values()) if ended else 0,
        }
        assert self.server is not None
        return {
            "id": b.id,
            "type": "message_batch",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.created_at)),
            "processing_status": b.state,
            "request_counts": counts,
            "expires_at": "2026-12-01T00:00:00Z",
            "results_url": f"{self.server.url}/v1/messages/batches/{b.id}/results" if ended else None,
        }

    def _anthropic_results(self, b: _Batch) -> bytes:
        wire = AnthropicWire()
        lines = []
        for r in b.requests:
            cid, fate = r["custom_id"], b.fates[r["custom_id"]]
            if fate == "ok":
                result: dict[str, Any] = {
                    "type": "succeeded",
                    "message": wire.ok("def f():\n    return 1").body,
                }
            elif fate == "error":
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
                }
            else:
                result = {"type": "expired"}
            lines.append(json.dumps({"custom_id": cid, "result": result}) + "\n")
        return "".join(lines).encode()

    def _download(self, data: bytes) -> Reply:
        return self._download_reply(data, {"content-type": "application/binary"})

    def _download_reply(self, data: Any, headers: dict[str, str] | None = None) -> Reply:
        self.downloads += 1
        self.result_requested.set()
        if self.hold_results:
            return Reply(action="stall")
        return Reply(200, data, headers or {})


def _multipart_file(body: bytes) -> bytes:
    """The ``file`` part of a multipart/form-data body."""
    start = body.index(b'name="file"')
    start = body.index(b"\r\n\r\n", start) + 4
    end = body.index(b"\r\n--", start)
    return body[start:end]


@asynccontextmanager
async def batch_provider(
    kind: str, fate: Callable[[int, int, str], Fate], **kw: Any
) -> AsyncIterator[BatchProvider]:
    """A running :class:`BatchProvider` of ``kind`` (openai, anthropic or gemini)."""
    provider = BatchProvider(kind, fate, **kw)
    async with serve(provider.reply) as server:
        provider.server = server
        yield provider
