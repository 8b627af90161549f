"""The ASGI application: health, metrics, and (publication) the feeds.

Routes are fixed by SPEC §6. Every request gets one structured access-log line, and
every error answer the body of :mod:`rollwatch.web.errors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from rollwatch.errors import ServiceUnavailable
from rollwatch.log import get_logger
from rollwatch.metrics import Metrics
from rollwatch.web.access import Operators, redact_keys
from rollwatch.web.errors import EXCEPTION_HANDLERS

if TYPE_CHECKING:
    from rollwatch.integrity.health import Health

access = get_logger("rollwatch.access")


class AccessLog:
    """One log line per request: method, path (no query: it may hold cursors or a key put
    there; a key put in the path is masked), status, ms."""

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
                path=redact_keys(scope["path"]),
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
    cannot_run: Callable[[], dict[str, str]] | None = None,
    status: Callable[[], dict[str, object]] | None = None,
    failing: Callable[[], list[tuple[str, str]]] | None = None,
) -> ASGIApp:
    """The app with /healthz and /metrics, plus any routes the daemon adds.

    ``/metrics`` shows the figures that reveal results (pass counts) only to the
    operator, as ``operators`` decides (default: loopback peers, no ``ops`` keys).
    ``health``: /healthz answers 503 with its reasons once it is not ok.
    ``cannot_run``: the configured schedules that cannot run, with why (read at each
    request); any makes /healthz answer 503, status ``degraded``, naming them.
    ``status``: more fields for /healthz's body (the projections' state and progress).
    ``failing``: what fails now (the log refusing appends, releases held for the clock; read
    at each request), each as (what anyone may read, what the operator reads); any makes
    /healthz answer 503, status ``degraded``, naming them.
    """
    gate = operators or Operators()

    async def operator(request: Request) -> bool:
        # While the keys are first read from the log, a keyed peer is answered as an
        # outsider here (health and metrics stay up), not with a 503.
        try:
            return await gate.allows(request)
        except ServiceUnavailable:
            return False

    async def healthz(request: Request) -> Response:
        blocked = cannot_run() if cannot_run is not None else {}
        extra = status() if status is not None else {}
        # The operator reads every reason as it is; anyone else the status and what kind of
        # trouble only: a reason's words name the store's URL, files, the store's and the
        # network's errors, a finding's seq and what differs (the operator's, SPEC §7).
        trusted = await operator(request)
        body: dict[str, Any] = health.as_json(operator=trusted) if health is not None else {"status": "ok"}
        if blocked:
            if body["status"] == "ok":
                body["status"] = "degraded"
            if trusted:
                body["reasons"] = [
                    *body.get("reasons", []),
                    *(f"schedule {name!r} cannot run: {why}" for name, why in sorted(blocked.items())),
                ]
                body["schedules"] = dict(sorted(blocked.items()))
            else:
                # Which schedules, and why, are the operator's: a schedule's name may say which
                # unreleased model is being evaluated, and why may quote a provider's words.
                body["reasons"] = [
                    *body.get("reasons", []),
                    f"{len(blocked)} schedule(s) cannot run (the operator's /healthz names them)",
                ]
        failures = failing() if failing is not None else []
        if failures:
            if body["status"] == "ok":
                body["status"] = "degraded"
            shown = [detail if trusted else kind for kind, detail in failures]
            body["reasons"] = [*body.get("reasons", []), *dict.fromkeys(shown)]
        body.update(extra if trusted else _outsiders_status(extra))
        # No cache may keep it, as /metrics: the operator's copy names the schedules that
        # cannot run and why, and who is the operator depends on the peer's address.
        return JSONResponse(
            body, status_code=200 if body["status"] == "ok" else 503, headers={"Cache-Control": "no-store"}
        )

    async def metrics_route(request: Request) -> Response:
        body, content_type = metrics.render(
            results=await operator(request), accept=request.headers.get("accept", "")
        )
        # No cache may keep it: the operator's copy holds the pass counts, and who is the
        # operator depends on the peer's address too, which no Vary can name.
        headers = {"Content-Type": content_type, "Vary": "Authorization, Accept", "Cache-Control": "no-store"}
        return Response(body, headers=headers)

    routes = [Route("/healthz", healthz), Route("/metrics", metrics_route), *(extra_routes or [])]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False  # SlashRedirects does it, without the Host header
    app.router.default = SlashRedirects(app.router)
    return AccessLog(app)


_OUTSIDERS_PROGRESS = ("state", "phase", "percent", "eta_s")
"""What anyone but the operator reads of the read models' build on ``/healthz``: not the seq
applied, the log's head nor the rate (their product with the time left), which give the
log's live length, and so how many events were appended under embargo since a checkpoint."""


def _outsiders_status(extra: dict[str, object]) -> dict[str, object]:
    out = dict(extra)
    progress = extra.get("projections")
    if isinstance(progress, dict):
        out["projections"] = {k: v for k, v in progress.items() if k in _OUTSIDERS_PROGRESS}
    return out


class SlashRedirects:
    """What the router does with a path no route takes: a 307 to the same path with its
    trailing slash added (``/public`` to ``/public/``) or removed (``/v1/feed/`` to
    ``/v1/feed``) when a route takes that, else its 404.

    Starlette's own redirect wrote an absolute ``Location`` from the request's ``Host``
    header, which the client writes: ``Host: evil.example`` on ``/public`` sent the
    reader to ``http://evil.example/public/``, and a cache in front (or a page linking
    there) handed that on. The ``Location`` here is relative to the request's own path
    (``./public/``, ``../feed``): no host in it, and it stays right under a proxy that
    serves us under a prefix.
    """

    def __init__(self, router: Router) -> None:
        self.router = router

    def _target(self, scope: Scope) -> str | None:
        path: str = scope["path"]
        if path.endswith("//") or path == "/":
            return None
        other = path[:-1] if path.endswith("/") else path + "/"
        probe = {**scope, "path": other}
        if not any(r.matches(probe)[0] is not Match.NONE for r in self.router.routes):
            return None
        # The last segment as the client sent it (percent-encoded), made relative.
        raw = scope.get("raw_path") or path.encode()
        segment = raw.decode("latin-1").rstrip("/").rpartition("/")[2]
        if not segment:
            return None
        target = f"../{segment}" if path.endswith("/") else f"./{segment}/"
        query = scope.get("query_string", b"").decode("latin-1")
        return f"{target}?{query}" if query else target

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._target(scope) if scope["type"] == "http" else None
        if target is None:
            await self.router.not_found(scope, receive, send)
            return
        await RedirectResponse(target, 307)(scope, receive, send)


class Starting:
    """The app while the daemon starts: ``/healthz`` answers at once (from ``early``), every
    other request waits until :meth:`open` hands over the whole app, then goes to it.

    So the server can listen, and say it is alive, before the modules and the services the
    other routes need are loaded and open (a few hundred milliseconds); a request for them
    meanwhile is answered as it would be a moment later, never refused.
    """

    def __init__(self, early: ASGIApp) -> None:
        self.early = early
        self.app: ASGIApp | None = None
        self._opened = anyio.Event()

    def open(self, app: ASGIApp) -> None:
        """From now on every request goes to ``app``."""
        self.app = app
        self._opened.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            if scope["type"] == "http" and scope["path"] == "/healthz":
                await self.early(scope, receive, send)
                return
            await self._opened.wait()
        assert self.app is not None
        await self.app(scope, receive, send)
