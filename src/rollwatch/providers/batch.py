"""Provider batch APIs: many requests in one job, answered within hours, at half price.

Two wire formats, behind one small interface (:class:`BatchAPI`):

* **OpenAI Batch** — upload the requests as a JSONL file (``POST {base_url}/files``,
  multipart, ``purpose=batch``; each line ``{"custom_id", "method": "POST", "url":
  "/v1/chat/completions", "body"}``), create the batch (``POST {base_url}/batches``
  with the file id, the endpoint and ``completion_window = "24h"``), poll it
  (``GET {base_url}/batches/{id}``: ``validating``, ``in_progress``, ``finalizing``,
  then ``completed``, ``failed``, ``expired`` or ``cancelled``), and read the output
  and error files (``GET {base_url}/files/{id}/content``; each line ``{"custom_id",
  "response": {"status_code", "body"}, "error"}``).
* **Anthropic Message Batches** — create with the requests inline (``POST
  {base_url}/v1/messages/batches``, ``{"requests": [{"custom_id", "params"}]}``), poll
  (``GET .../batches/{id}``: ``processing_status`` ``in_progress``, ``canceling``,
  ``ended``), and read the results (``GET`` the batch's ``results_url``; each line
  ``{"custom_id", "result": {"type": "succeeded" | "errored" | "canceled" |
  "expired", ...}}``).

Each request's body is what the synchronous adapter builds, so a batched answer is
parsed by the same adapter and recorded exactly like a synchronous one. A request that
a batch ends without answering (expired, cancelled, missing from the files) is
*unanswered*: the run submits it again in a later batch. The custom id of a request
is its rollout id (a UUID: valid for both vendors' ``^[a-zA-Z0-9_-]{1,64}$``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rollwatch.abc import WireAdapter
from rollwatch.errors import ProviderError
from rollwatch.providers.base import Parsed, WireRequest, as_dict, as_int, bad_response, classify_status

Send = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]
"""``send(method, path_or_url, *, content=None, headers=None)`` → (status, headers, body):
the provider client's authenticated HTTP call; ``path`` is relative to ``base_url``."""


@dataclass(frozen=True, slots=True)
class BatchState:
    """What one poll says of a batch."""

    batch_id: str
    state: str
    ended: bool
    counts: dict[str, int] = field(default_factory=dict)
    ends_at: str | None = None
    results: tuple[str, ...] = ()
    """Where the results are (OpenAI: output and error file ids; Anthropic: the URL)."""


@dataclass(frozen=True, slots=True)
class Submitted:
    """A batch the provider accepted."""

    batch_id: str
    input_file_id: str | None
    bytes: int


#: How many pages of the batch list a restarted daemon searches for its lost batch.
FIND_PAGES = 10

Outcome = Parsed | ProviderError
"""One request's result: the parsed answer, or the error the provider gave it."""


class BatchAPI(Protocol):
    """One vendor's batch API (see the module docstring)."""

    async def submit(self, send: Send, requests: Mapping[str, WireRequest], key: str) -> Submitted:
        """Submit ``requests`` (custom id → request) tagged with ``key`` where the API
        can carry it; ProviderError when not accepted."""
        ...

    async def find(self, send: Send, key: str) -> str | None:
        """The id of a batch submitted with ``key``; None when there is none or the API
        cannot tell (Anthropic's batches carry no metadata)."""
        ...

    async def poll(self, send: Send, batch_id: str) -> BatchState:
        """The batch's state now."""
        ...

    async def results(self, send: Send, state: BatchState) -> dict[str, Outcome]:
        """Every result of an ended batch by custom id (unanswered ones are absent)."""
        ...


def _check(status: int, body: bytes, what: str) -> Any:
    """The decoded JSON of a 2xx answer; ProviderError (classified by status) otherwise."""
    if not 200 <= status < 300:
        kind, retryable = classify_status(status)
        text = body.decode("utf-8", "replace")[:300]
        raise ProviderError(kind, f"{what}: HTTP {status}: {text}", status=status, retryable=retryable)
    try:
        return json.loads(body)
    except ValueError:
        raise bad_response(f"{what}: the body is not JSON") from None


def _counts(value: Any) -> dict[str, int]:
    return {str(k): as_int(v) for k, v in as_dict(value).items()}


def _jsonl(body: bytes) -> list[dict[str, Any]]:
    """The objects of a JSONL body; lines that are not JSON objects are skipped (their
    requests stay unanswered and are submitted again)."""
    out = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def _parse(adapter: WireAdapter, status: int, body: Any) -> Outcome:
    if not 200 <= status < 300:
        return adapter.error(status, {}, json.dumps(body).encode(), 0.0)
    try:
        return adapter.parse(body, {})
    except ProviderError as e:
        return e
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        return bad_response(f"unexpected body shape: {type(e).__name__}: {e}")


# --- OpenAI ---------------------------------------------------------------------------

_OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


class OpenAIBatchAPI:
    """OpenAI's Batch API (see the module docstring)."""

    def __init__(self, adapter: WireAdapter) -> None:
        self.adapter = adapter

    async def submit(self, send: Send, requests: Mapping[str, WireRequest], key: str) -> Submitted:
        """Upload the JSONL file, then create the batch (``metadata.rollwatch_batch = key``)."""
        lines = [
            json.dumps(
                {"custom_id": cid, "method": "POST", "url": "/v1" + w.path, "body": w.body},
                separators=(",", ":"),
                ensure_ascii=False,
            )
            for cid, w in requests.items()
        ]
        data = ("\n".join(lines) + "\n").encode()
        boundary = uuid.uuid4().hex
        form = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="rollwatch.jsonl"\r\n'
                f"Content-Type: application/jsonl\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, _, body = await send(
            "POST",
            "/files",
            content=form,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        file_id = _check(status, body, "upload of the batch file").get("id")
        if not isinstance(file_id, str):
            raise bad_response("upload of the batch file: no file id in the answer")
        create = {
            "input_file_id": file_id,
            # One endpoint per batch: /v1/chat/completions, or /v1/responses.
            "endpoint": "/v1" + next(iter(requests.values())).path,
            "completion_window": "24h",
            "metadata": {"rollwatch_batch": key},
        }
        status, _, body = await send(
            "POST",
            "/batches",
            content=json.dumps(create).encode(),
            headers={"content-type": "application/json"},
        )
        batch_id = _check(status, body, "batch create").get("id")
        if not isinstance(batch_id, str):
            raise bad_response("batch create: no batch id in the answer")
        return Submitted(batch_id, file_id, len(data))

    async def find(self, send: Send, key: str) -> str | None:
        """``GET /batches`` (newest first), up to :data:`FIND_PAGES` pages of 100."""
        after: str | None = None
        for _ in range(FIND_PAGES):
            path = "/batches?limit=100" + (f"&after={after}" if after else "")
            status, _, body = await send("GET", path)
            data = as_dict(_check(status, body, "batch list"))
            items = data.get("data")
            if not isinstance(items, list):
                return None
            for item in items:
                if isinstance(item, dict) and as_dict(item.get("metadata")).get("rollwatch_batch") == key:
                    found = item.get("id")
                    return found if isinstance(found, str) else None
            last = data.get("last_id")
            if not data.get("has_more") or not isinstance(last, str):
                return None
            after = last
        return None

    async def poll(self, send: Send, batch_id: str) -> BatchState:
        """``GET /batches/{id}``."""
        status, _, body = await send("GET", f"/batches/{batch_id}")
        data = as_dict(_check(status, body, "batch poll"))
        state = str(data.get("status", "unknown"))
        files = tuple(
            f for f in (data.get("output_file_id"), data.get("error_file_id")) if isinstance(f, str)
        )
        expires = data.get("expires_at")
        return BatchState(
            batch_id=batch_id,
            state=state,
            ended=state in _OPENAI_ENDED,
            counts=_counts(data.get("request_counts")),
            ends_at=str(expires) if expires is not None else None,
            results=files,
        )

    async def results(self, send: Send, state: BatchState) -> dict[str, Outcome]:
        """Both files' lines: a response with its status code, or an error object."""
        out: dict[str, Outcome] = {}
        for file_id in state.results:
            status, _, body = await send("GET", f"/files/{file_id}/content")
            if not 200 <= status < 300:
                _check(status, body, f"download of file {file_id}")
            for item in _jsonl(body):
                cid = item.get("custom_id")
                if not isinstance(cid, str):
                    continue
                response = as_dict(item.get("response"))
                err = item.get("error")
                if response:
                    out[cid] = _parse(self.adapter, as_int(response.get("status_code")), response.get("body"))
                elif isinstance(err, dict):
                    code = str(err.get("code", ""))
                    if code in ("batch_expired", "batch_cancelled"):
                        continue  # unanswered: submitted again
                    out[cid] = ProviderError(
                        "invalid_request", f"batch: {code}: {err.get('message', '')}", retryable=False
                    )
        return out


# --- Anthropic ------------------------------------------------------------------------


class AnthropicBatchAPI:
    """Anthropic's Message Batches API (see the module docstring)."""

    def __init__(self, adapter: WireAdapter) -> None:
        self.adapter = adapter

    async def find(self, send: Send, key: str) -> str | None:
        """None: Anthropic's batches carry no metadata to find one by."""
        return None

    async def submit(self, send: Send, requests: Mapping[str, WireRequest], key: str) -> Submitted:
        """``POST /v1/messages/batches`` with every request inline (``key`` unused)."""
        headers: dict[str, str] = {"content-type": "application/json"}
        for w in requests.values():
            headers.update(w.headers)  # anthropic-version
            break
        data = json.dumps(
            {"requests": [{"custom_id": cid, "params": w.body} for cid, w in requests.items()]},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        status, _, body = await send("POST", "/v1/messages/batches", content=data, headers=headers)
        batch_id = as_dict(_check(status, body, "batch create")).get("id")
        if not isinstance(batch_id, str):
            raise bad_response("batch create: no batch id in the answer")
        return Submitted(batch_id, None, len(data))

    async def poll(self, send: Send, batch_id: str) -> BatchState:
        """``GET /v1/messages/batches/{id}``."""
        status, _, body = await send(
            "GET", f"/v1/messages/batches/{batch_id}", headers={"anthropic-version": "2023-06-01"}
        )
        data = as_dict(_check(status, body, "batch poll"))
        state = str(data.get("processing_status", "unknown"))
        url = data.get("results_url")
        expires = data.get("expires_at")
        return BatchState(
            batch_id=batch_id,
            state=state,
            ended=state == "ended",
            counts=_counts(data.get("request_counts")),
            ends_at=str(expires) if expires is not None else None,
            results=(url,) if isinstance(url, str) else (),
        )

    async def results(self, send: Send, state: BatchState) -> dict[str, Outcome]:
        """The results JSONL: succeeded messages and errors; expired and canceled ones
        are left out (unanswered)."""
        out: dict[str, Outcome] = {}
        for url in state.results:
            status, _, body = await send("GET", url, headers={"anthropic-version": "2023-06-01"})
            if not 200 <= status < 300:
                _check(status, body, "download of the batch results")
            for item in _jsonl(body):
                cid = item.get("custom_id")
                result = as_dict(item.get("result"))
                if not isinstance(cid, str):
                    continue
                kind = result.get("type")
                if kind == "succeeded":
                    out[cid] = _parse(self.adapter, 200, result.get("message"))
                elif kind == "errored":
                    err = as_dict(as_dict(result.get("error")).get("error")) or as_dict(result.get("error"))
                    out[cid] = ProviderError(
                        "invalid_request",
                        f"batch: {err.get('type', 'error')}: {err.get('message', '')}",
                        retryable=err.get("type") in ("api_error", "overloaded_error"),
                    )
        return out


BATCH_APIS: dict[str, Callable[[WireAdapter], BatchAPI]] = {
    "openai": OpenAIBatchAPI,
    "anthropic": AnthropicBatchAPI,
}
