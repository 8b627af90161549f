"""Provider batch APIs: many requests in one job, answered within hours, at half price.

Three wire formats, behind one small interface (:class:`BatchAPI`):

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
  "expired", ...}}``). Its batches carry no metadata: a batch whose create answer was
  lost (a kill, a timeout) is found by its *contents*: among the batches created
  since the attempt, of the same request count and not known to the log, the one whose
  results' custom ids are exactly our rollout ids (UUIDs: no other batch has them).
  Results exist only once a batch ended, so that search waits for candidates to end.
* **Gemini batch mode** — create with the requests inline (``POST
  {base_url}/models/{model}:batchGenerateContent``, ``{"batch": {"displayName",
  "inputConfig": {"requests": {"requests": [{"request", "metadata": {"key"}}]}}}}``,
  at most 20 MB); the answer is a long-running operation named ``batches/{id}``; poll
  it (``GET {base_url}/batches/{id}``: ``metadata.state`` ``BATCH_STATE_PENDING``,
  ``_RUNNING``, then ``_SUCCEEDED``, ``_FAILED``, ``_CANCELLED`` or ``_EXPIRED``;
  ``metadata.batchStats`` counts), and read the results inline in the ended operation
  (``metadata.output.inlinedResponses.inlinedResponses`` or ``response.inlinedResponses
  .inlinedResponses``; each ``{"metadata": {"key"}, "response" | "error"}``). The
  display name carries the key (``rollwatch-KEY``), so a lost batch is found in
  ``GET {base_url}/batches``. Input and output files (for batches over 20 MB) are not
  used: batches are cut at 18 MB.

Each request's body is what the synchronous adapter builds, so a batched answer is
parsed by the same adapter and recorded exactly like a synchronous one. A request that
a batch ends without answering (expired, cancelled, missing from the files) is
*unanswered*: the run submits it again in a later batch. The custom id of a request
is its rollout id (a UUID: valid for OpenAI's and Anthropic's
``^[a-zA-Z0-9_-]{1,64}$``; Gemini's per-request ``metadata.key``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from rollwatch.abc import WireAdapter
from rollwatch.errors import ProviderError
from rollwatch.providers.base import (
    Parsed,
    WireRequest,
    as_dict,
    as_int,
    bad_response,
    classify_status,
    excerpt,
    loads,
)

Send = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]
"""``send(method, path_or_url, *, content=None, headers=None, results=False)`` →
(status, headers, body): the provider client's authenticated HTTP call; ``path`` is
relative to ``base_url``; ``results``: a batch's results, allowed a larger body."""


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

#: Clock skew allowed between this host and the provider when searching by creation time.
FIND_SKEW = 300.0


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the search for a batch whose create answer was lost may use besides its key."""

    since: float
    """Epoch seconds before which the batch cannot have been created (the intent's time)."""
    custom_ids: frozenset[str]
    """The batch's requests' custom ids (its rollout ids)."""
    known: frozenset[str] = frozenset()
    """Batch ids the log already records: never the lost one."""
    wait: Callable[[], Awaitable[None]] | None = None
    """Sleep between polls of a candidate that has not ended yet (None: do not wait,
    a candidate still running counts as not found)."""


Outcome = Parsed | ProviderError
"""One request's result: the parsed answer, or the error the provider gave it."""


class BatchAPI(Protocol):
    """One vendor's batch API (see the module docstring)."""

    async def submit(self, send: Send, requests: Mapping[str, WireRequest], key: str) -> Submitted:
        """Submit ``requests`` (custom id → request) tagged with ``key`` where the API
        can carry it; ProviderError when not accepted."""
        ...

    max_bytes: int
    """Request bytes per batch at most."""

    async def find(self, send: Send, key: str, lookup: Lookup) -> str | None:
        """The id of a batch submitted with ``key`` (or, where the API carries no key,
        the batch that ``lookup`` identifies); None when there is none."""
        ...

    async def poll(self, send: Send, batch_id: str) -> BatchState:
        """The batch's state now."""
        ...

    async def results(self, send: Send, state: BatchState) -> dict[str, Outcome]:
        """Every result of an ended batch by custom id (unanswered ones are absent)."""
        ...


def progress_of(counts: Mapping[str, int]) -> tuple[int, int]:
    """(requests done, requests in all) from a poll's counts, whichever vendor's shape:
    OpenAI ``total``/``completed``/``failed``; Anthropic ``processing`` and the ended
    kinds; Gemini ``request_count``/``successful_request_count``/``failed_request_count``."""
    if "request_count" in counts:
        return counts.get("successful_request_count", 0) + counts.get("failed_request_count", 0), counts[
            "request_count"
        ]
    if "processing" in counts:
        total = sum(counts.values())
        return total - counts["processing"], total
    return counts.get("completed", 0) + counts.get("failed", 0), counts.get("total", 0)


def _check(status: int, body: bytes, what: str) -> Any:
    """The decoded JSON of a 2xx answer; ProviderError (classified by status) otherwise."""
    if not 200 <= status < 300:
        kind, retryable = classify_status(status)
        text = body.decode("utf-8", "replace")[:300]
        raise ProviderError(kind, f"{what}: HTTP {status}: {text}", status=status, retryable=retryable)
    try:
        return loads(body)
    except ValueError:
        raise bad_response(f"{what}: the body is not JSON") from None


def _last_id(data: dict[str, Any]) -> Any:
    """OpenAI's and Anthropic's list cursor: ``last_id`` while ``has_more``."""
    return data.get("last_id") if data.get("has_more") else None


async def _listing(
    send: Send,
    path: Callable[[str | None], str],
    key: str,
    *,
    cursor: Callable[[dict[str, Any]], Any] = _last_id,
    headers: dict[str, str] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The objects of a paginated batch list (``path(cursor)`` per page, the page's list
    under ``key``), up to :data:`FIND_PAGES` pages; stops at a page without that list."""
    token: str | None = None
    for _ in range(FIND_PAGES):
        status, _, body = await send("GET", path(token), headers=headers)
        data = as_dict(_check(status, body, "batch list"))
        items = data.get(key)
        if not isinstance(items, list):
            return
        for item in items:
            if isinstance(item, dict):
                yield item
        nxt = cursor(data)
        if not isinstance(nxt, str) or not nxt:
            return
        token = nxt


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
            item = loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def _put(out: dict[str, Outcome], cid: str, outcome: Outcome) -> None:
    """Record ``outcome`` for request ``cid``, unless an answer to it is in already: results
    that give one request an answer and an error (two lines, or a line in each of OpenAI's
    files) keep the answer, which the provider bills; of two answers, the last."""
    if isinstance(out.get(cid), Parsed) and not isinstance(outcome, Parsed):
        return
    out[cid] = outcome


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

    #: Under the 200 MB input file, with room for each line's envelope.
    max_bytes = 100 * 1024 * 1024

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

    async def find(self, send: Send, key: str, lookup: Lookup) -> str | None:
        """``GET /batches`` (newest first), up to :data:`FIND_PAGES` pages of 100."""
        pages = _listing(
            send, lambda after: "/batches?limit=100" + (f"&after={after}" if after else ""), "data"
        )
        async with aclosing(pages) as items:
            async for item in items:
                if as_dict(item.get("metadata")).get("rollwatch_batch") == key:
                    found = item.get("id")
                    return found if isinstance(found, str) else None
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
            status, _, body = await send("GET", f"/files/{file_id}/content", results=True)
            if not 200 <= status < 300:
                _check(status, body, f"download of file {file_id}")
            for item in _jsonl(body):
                cid = item.get("custom_id")
                if not isinstance(cid, str):
                    continue
                response = as_dict(item.get("response"))
                err = item.get("error")
                if response:
                    _put(
                        out,
                        cid,
                        _parse(self.adapter, as_int(response.get("status_code")), response.get("body")),
                    )
                elif isinstance(err, dict):
                    code = str(err.get("code", ""))
                    if code in ("batch_expired", "batch_cancelled"):
                        continue  # unanswered: submitted again
                    _put(
                        out,
                        cid,
                        ProviderError(
                            "invalid_request",
                            excerpt(f"batch: {code}: {err.get('message', '')}"),
                            retryable=False,
                        ),
                    )
        return out


# --- Anthropic ------------------------------------------------------------------------


class AnthropicBatchAPI:
    """Anthropic's Message Batches API (see the module docstring)."""

    #: Under the 256 MB request.
    max_bytes = 100 * 1024 * 1024

    def __init__(self, adapter: WireAdapter) -> None:
        self.adapter = adapter

    async def find(self, send: Send, key: str, lookup: Lookup) -> str | None:
        """The batch made of exactly ``lookup.custom_ids``, created since
        ``lookup.since`` (less :data:`FIND_SKEW`), not in ``lookup.known``: candidates of
        the right request count from ``GET /v1/messages/batches`` (newest first), each
        polled until it ends (``lookup.wait`` between polls) and its results' custom ids
        compared. None when no candidate matches."""
        candidates = await self._candidates(send, lookup)
        while candidates:
            waiting: list[str] = []
            for bid in candidates:
                state = await self.poll(send, bid)
                if not state.ended:
                    waiting.append(bid)
                elif await self._custom_ids(send, state) == lookup.custom_ids:
                    return bid
            if not waiting or lookup.wait is None:
                return None
            await lookup.wait()
            candidates = waiting
        return None

    async def _candidates(self, send: Send, lookup: Lookup) -> list[str]:
        out: list[str] = []
        pages = _listing(
            send,
            lambda after: "/v1/messages/batches?limit=100" + (f"&after_id={after}" if after else ""),
            "data",
            headers={"anthropic-version": "2023-06-01"},
        )
        async with aclosing(pages) as items:
            async for item in items:
                bid, created = item.get("id"), _epoch(item.get("created_at"))
                if created is not None and created < lookup.since - FIND_SKEW:
                    break  # newest first: the rest are older still
                total = sum(_counts(item.get("request_counts")).values())
                if isinstance(bid, str) and bid not in lookup.known and total == len(lookup.custom_ids):
                    out.append(bid)
        return out

    async def _custom_ids(self, send: Send, state: BatchState) -> frozenset[str]:
        ids: set[str] = set()
        for url in state.results:
            status, _, body = await send(
                "GET", url, headers={"anthropic-version": "2023-06-01"}, results=True
            )
            if not 200 <= status < 300:
                _check(status, body, "download of the batch results")
            ids.update(str(i["custom_id"]) for i in _jsonl(body) if isinstance(i.get("custom_id"), str))
        return frozenset(ids)

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
            status, _, body = await send(
                "GET", url, headers={"anthropic-version": "2023-06-01"}, results=True
            )
            if not 200 <= status < 300:
                _check(status, body, "download of the batch results")
            for item in _jsonl(body):
                cid = item.get("custom_id")
                result = as_dict(item.get("result"))
                if not isinstance(cid, str):
                    continue
                kind = result.get("type")
                if kind == "succeeded":
                    _put(out, cid, _parse(self.adapter, 200, result.get("message")))
                elif kind == "errored":
                    err = as_dict(as_dict(result.get("error")).get("error")) or as_dict(result.get("error"))
                    _put(
                        out,
                        cid,
                        ProviderError(
                            "invalid_request",
                            excerpt(f"batch: {err.get('type', 'error')}: {err.get('message', '')}"),
                            retryable=err.get("type") in ("api_error", "overloaded_error"),
                        ),
                    )
        return out


# --- Gemini ---------------------------------------------------------------------------

_GEMINI_ENDED = frozenset(
    {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
)
#: google.rpc codes worth another try: CANCELLED, UNKNOWN, DEADLINE_EXCEEDED,
#: RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE.
_GOOGLE_RETRYABLE = frozenset({1, 2, 4, 8, 10, 13, 14})


class GeminiBatchAPI:
    """The Gemini API's batch mode, inline requests (see the module docstring)."""

    #: Under the 20 MB of an inline batch request.
    max_bytes = 18 * 1024 * 1024

    def __init__(self, adapter: WireAdapter) -> None:
        self.adapter = adapter

    async def submit(self, send: Send, requests: Mapping[str, WireRequest], key: str) -> Submitted:
        """``POST /models/{model}:batchGenerateContent``, display name ``rollwatch-KEY``."""
        path = next(iter(requests.values())).path.replace(":generateContent", ":batchGenerateContent")
        batch = {
            "displayName": f"rollwatch-{key}",
            "inputConfig": {
                "requests": {
                    "requests": [{"request": w.body, "metadata": {"key": cid}} for cid, w in requests.items()]
                }
            },
        }
        data = json.dumps({"batch": batch}, separators=(",", ":"), ensure_ascii=False).encode()
        status, _, body = await send("POST", path, content=data, headers={"content-type": "application/json"})
        name = as_dict(_check(status, body, "batch create")).get("name")
        if not isinstance(name, str) or not name.startswith("batches/"):
            raise bad_response("batch create: no batches/ name in the answer")
        return Submitted(name, None, len(data))

    async def find(self, send: Send, key: str, lookup: Lookup) -> str | None:
        """``GET /batches``, up to :data:`FIND_PAGES` pages of 100, by display name."""
        pages = _listing(
            send,
            lambda token: "/batches?pageSize=100" + (f"&pageToken={token}" if token else ""),
            "operations",
            cursor=lambda data: data.get("nextPageToken"),
        )
        async with aclosing(pages) as items:
            async for item in items:
                if as_dict(item.get("metadata")).get("displayName") == f"rollwatch-{key}":
                    found = item.get("name")
                    return found if isinstance(found, str) else None
        return None

    async def poll(self, send: Send, batch_id: str) -> BatchState:
        """``GET /batches/{id}`` (the operation)."""
        data = await self._get(send, batch_id)
        meta = as_dict(data.get("metadata"))
        state = str(meta.get("state", "BATCH_STATE_UNSPECIFIED"))
        ended = state in _GEMINI_ENDED or data.get("done") is True
        return BatchState(
            batch_id=batch_id,
            state=state,
            ended=ended,
            counts={_snake(k): _int64(v) for k, v in as_dict(meta.get("batchStats")).items()},
            results=(batch_id,) if ended else (),
        )

    async def results(self, send: Send, state: BatchState) -> dict[str, Outcome]:
        """The ended operation's inline responses by their ``metadata.key``: answers,
        and errors (``google.rpc.Status``) retryable by their code."""
        out: dict[str, Outcome] = {}
        for name in state.results:
            data = await self._get(send, name)
            output = as_dict(as_dict(data.get("metadata")).get("output")) or as_dict(data.get("response"))
            items = as_dict(output.get("inlinedResponses")).get("inlinedResponses")
            for item in items if isinstance(items, list) else []:
                item = as_dict(item)
                cid = as_dict(item.get("metadata")).get("key")
                if not isinstance(cid, str):
                    continue
                if isinstance(item.get("response"), dict):
                    _put(out, cid, _parse(self.adapter, 200, item["response"]))
                elif isinstance(item.get("error"), dict):
                    err = as_dict(item.get("error"))
                    code = as_int(err.get("code"))
                    _put(
                        out,
                        cid,
                        ProviderError(
                            "server_error" if code in _GOOGLE_RETRYABLE else "invalid_request",
                            excerpt(f"batch: {err.get('status', code)}: {err.get('message', '')}"),
                            retryable=code in _GOOGLE_RETRYABLE,
                        ),
                    )
        return out

    async def _get(self, send: Send, name: str) -> dict[str, Any]:
        # An ended operation carries every answer inline: the results' limit.
        status, _, body = await send("GET", "/" + name, results=True)
        return as_dict(_check(status, body, f"batch {name}"))


def _int64(value: Any) -> int:
    """A protobuf int64 as JSON writes it (a string of digits), or an int; 0 for anything
    else (``int()`` refuses some of what ``isdigit`` accepts, such as ``²``, and digits
    past 4300, with a ValueError that crashed the run)."""
    if isinstance(value, str):
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 19 else 0
    return as_int(value)


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _epoch(value: Any) -> float | None:
    """RFC 3339 → epoch seconds; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


BATCH_APIS: dict[str, Callable[[WireAdapter], BatchAPI]] = {
    "openai": OpenAIBatchAPI,
    "anthropic": AnthropicBatchAPI,
    "gemini": GeminiBatchAPI,
}
