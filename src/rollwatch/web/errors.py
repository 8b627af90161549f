"""One error body for every 4xx and 5xx answer: ``{"error": CODE, "message": TEXT}``.

Route handlers raise :class:`rollwatch.errors.HTTPError` (or one of its kinds); the
handlers below turn it, Starlette's own 404/405, and anything unexpected (500) into
that body, so a client parses one shape whichever route answered.
"""

from __future__ import annotations

import sqlite3

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from rollwatch.errors import HTTP_CODES, HTTPError, storage_failure
from rollwatch.log import get_logger
from rollwatch.web.access import redact_keys

log = get_logger("rollwatch.web")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error body with ``status`` (and ``headers``, such as ``Retry-After``), never sniffed
    as anything but JSON: a message may quote what the request named (``<script>`` in an id)."""
    return JSONResponse(
        {"error": code, "message": message}, status, {"X-Content-Type-Options": "nosniff", **(headers or {})}
    )


async def on_http_error(_: Request, exc: Exception) -> Response:
    """A handler's :class:`HTTPError` as the error body."""
    assert isinstance(exc, HTTPError)
    # A message may quote what the request named (a rollout id): never a key put there.
    return error_response(exc.status, exc.code, redact_keys(exc.message), exc.headers)


async def on_starlette_error(_: Request, exc: Exception) -> Response:
    """The router's own errors (no such route, wrong method) in the same body."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, redact_keys(str(exc.detail)), dict(exc.headers or {}))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered 500 without details."""
    log.error("http_unhandled_error", path=redact_keys(request.url.path), error=repr(exc), exc_info=exc)
    return error_response(500, "internal", "internal error; the operator's log has the details")


async def on_client_gone(_: Request, exc: Exception) -> Response:
    """A client that left before its request's body was whole (a form half sent, then the tab
    closed; or the server's deadline closed it): nothing was done, and it is not a bug of ours.
    Before, every one was an ERROR with a traceback, written at will by anyone who could POST."""
    assert isinstance(exc, ClientDisconnect)
    return error_response(
        400, "bad_request", "the client left before its request was whole; nothing was done"
    )


async def on_storage(request: Request, exc: Exception) -> Response:
    """A SQLite file that cannot answer for now (the log locked, the read models damaged and
    being rebuilt): 503 with Retry-After, one line in the log; any other SQLite error is a bug."""
    if storage_failure(exc) is None and type(exc) is not sqlite3.DatabaseError:
        return await on_unexpected(request, exc)
    log.warning("http_storage_unavailable", path=redact_keys(request.url.path), error=str(exc))
    return error_response(
        503, "unavailable", "the data is not available for now; try again shortly", {"Retry-After": "5"}
    )


EXCEPTION_HANDLERS = {
    HTTPError: on_http_error,
    sqlite3.DatabaseError: on_storage,
    HTTPException: on_starlette_error,
    ClientDisconnect: on_client_gone,
    Exception: on_unexpected,
}
"""For ``Starlette(exception_handlers=...)``."""
