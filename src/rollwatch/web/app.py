"""The ASGI application: health, metrics, and (publication) the feeds.

Routes are fixed by SPEC §6. Every request gets one structured access-log line, and
every error answer the body of :mod:`rollwatch.web.errors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from rollwatch.log import get_logger
from rollwatch.metrics import Metrics
from rollwatch.web.access import Operators
from rollwatch.web.errors import EXCEPTION_HANDLERS

if TYPE_CHECKING:
    from rollwatch.integrity.health import Health

access = get_logger("rollwatch.access")


class AccessLog:
    """One log line per request: method, path (no query: it may hold cursors), status, ms."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client")
            access.info(
                "http_request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - start) * 1000, 2),
                client=client[0] if client else None,
            )


def build_app(
    metrics: Metrics,
    extra_routes: list[Route] | None = None,
    *,
    operators: Operators | None = None,
    health: Health | None = None,
    status: Callable[[], dict[str, object]] | None = None,
) -> ASGIApp:
    """The app with /healthz and /metrics, plus any routes the daemon adds.

    ``/metrics`` shows the figures that reveal results (pass counts) only to the
    operator, as ``operators`` decides (default: loopback peers, no ``ops`` keys).
    ``health``: /healthz answers 503 with its reasons once it is not ok.
    ``status``: more fields for /healthz's body (the projections' state and progress).
    """
    gate = operators or Operators()

    async def healthz(_: Request) -> Response:
        extra = status() if status is not None else {}
        if health is not None and not health.ok:
            return JSONResponse({**health.as_json(), **extra}, status_code=503)
        return JSONResponse({"status": "ok", **extra})

    async def metrics_route(request: Request) -> Response:
        text = metrics.render(results=await gate.allows(request))
        return PlainTextResponse(
            text, media_type="text/plain; version=0.0.4", headers={"Vary": "Authorization"}
        )

    routes = [Route("/healthz", healthz), Route("/metrics", metrics_route), *(extra_routes or [])]
    return AccessLog(Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS))
