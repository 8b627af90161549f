"""The publication's HTTP routes (SPEC §6): the subscriber API and the public release.

Subscriber routes (``Authorization: Bearer KEY``):

* ``GET /v1/feed?after=SEQ&limit=N&wait=S`` — feed items after a cursor, oldest first
  (see :class:`~rollwatch.publication.projections.FeedProjection` for which events are
  items and their shape). ``next`` is the cursor for the following call: the last
  item's ``seq`` when the page is full, otherwise the log's head as scanned, so an
  idle client does not rescan invisible events. ``wait`` long-polls up to 60 s.
* ``GET /v1/rollouts/{rollout_id}`` — the whole archived record, from the log.
* ``GET /v1/report?by=model|problem|run&trend=&release_impact=`` — the report as JSON.

Every subscriber response has an ``ETag`` (a hash of its body; ``If-None-Match`` gets
304). A missing, unknown, expired or revoked key gets 401 and no data; a key without
the route's scope 403; a key over ``server.feed_rate_per_minute`` 429 with
``Retry-After``; a bad query parameter 400 naming it.

Public routes (anyone): ``/public/`` (HTML), ``/public/feed.json`` (JSON Feed 1.1),
``/public/feed.atom`` (Atom 1.0), ``/public/results.jsonl``,
``/public/rollouts/{id}.json``; and ``/openapi.json``. They show released results only
(see :mod:`rollwatch.publication.public`). With the integrity services, each item of
``/public/feed.json`` carries its event's leaf index and an inclusion proof against the
latest signed checkpoint (see :mod:`rollwatch.publication.inclusion`) and a
``proof_url``; ``/public/rollouts/{id}.json`` and each line of ``results.jsonl`` carry
the result's proof bundle under ``proof`` (see :mod:`rollwatch.publication.proofs`).

Reads go through the projections, brought up to the log's head before each answer;
a key is checked against every subscriber event up to the log's head, so a revocation
takes effect from the moment it is committed; ``/v1/feed`` checks the key once more
just before answering, so a long poll opened before a revocation delivers nothing
after it. Links in the public feeds use ``server.base_url`` (default: the address of
the socket the request came in on, i.e. ``http://LISTEN``), never the request's ``Host``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import secrets
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from rollwatch.abc import EventStore
from rollwatch.config import Config
from rollwatch.errors import (
    BadRequest,
    Forbidden,
    IntegrityError,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UsageError,
)
from rollwatch.log import get_logger
from rollwatch.metrics import Metrics
from rollwatch.projections import ProjectionDB
from rollwatch.publication import feeds
from rollwatch.publication.archive import rollout_record
from rollwatch.publication.keys import Subscriber, SubscriberDirectory
from rollwatch.publication.openapi import openapi_document
from rollwatch.publication.projections import feed_page
from rollwatch.publication.public import PublicView, iter_released, public_view, released_one
from rollwatch.web.access import bearer_key
from rollwatch.web.params import ROLLOUT_ID, EmptyQuery, FeedQuery, ReportQuery

if TYPE_CHECKING:
    from rollwatch.integrity.service import Integrity
    from rollwatch.publication.clock import ReleaseClock
    from rollwatch.publication.inclusion import InclusionProofs
    from rollwatch.publication.proofs import ProofBundles

log = get_logger(__name__)

_PRIME_S = 10.0
"""Seconds the daemon gives the public view's warm-up before daemon_ready (:meth:`PublicationAPI.prime_public`)."""
_VIEW_TTL = 10.0  # seconds a rendered public view is reused (it only grows with time)
_RELEASE_STATE_SQL = (
    "SELECT (SELECT coalesce(max(released_seq), 0) FROM public_rollouts WHERE released_seq IS NOT NULL),"
    " (SELECT coalesce(max(superseded_seq), 0) FROM public_rollouts"
    " WHERE superseded_seq IS NOT NULL AND released_seq IS NOT NULL),"
    " (SELECT count(*) FROM public_rollouts WHERE superseded_seq IS NOT NULL AND released_seq IS NOT NULL)"
)
"""What the public view and archive are made again for: the newest release, the newest mark on
a released result and the number of such marks. Marks on results never released (a pass
withdrawn under embargo) are left out: they change nothing public, and a view or archive made
again for them answered slower, which timed the withdrawal."""


class ServicesLike(Protocol):
    """What the routes need from the composition root."""

    @property
    def store(self) -> EventStore: ...
    @property
    def projections(self) -> ProjectionDB: ...
    @property
    def config(self) -> Config: ...


@dataclass
class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to ``per_minute``."""

    per_minute: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> float | None:
        """Take one token for ``key``; None when allowed, else the seconds until one is free."""
        now = self.clock()
        rate = self.per_minute / 60.0
        tokens, last = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate


# --- helpers -------------------------------------------------------------------------------------


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


# The public page is served from the console's origin: markup that ever slipped into it (it
# shows released answers, model text) would run with the console's trust, read its form
# token and post its forms. No script at all, no forms, no <base>; its one <style> inline.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
    " base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}


class _Streamed(StreamingResponse):
    """A streamed answer that closes its generator and calls ``release`` once it ends, however
    it ends (sent whole, the client gone, the daemon stopping), in the request's own task.

    The one stream slot of ``/public/results.jsonl`` was an anyio ``CapacityLimiter`` taken in
    the request's task and given back from the body's generator, which Starlette runs in a
    task of its own: the release raised (the borrower is not holding a token), so the body
    ended without its last chunk (the client saw a cut-off answer) and the slot was never
    given back: one anonymous GET made every later one 503 until the daemon restarted."""

    def __init__(self, body: AsyncGenerator[bytes, None], release: Callable[[], None], **kw: Any) -> None:
        super().__init__(body, **kw)
        self._body = body
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await self._body.aclose()
            finally:
                self._release()


def _tagged(
    request: Request,
    body: bytes,
    media_type: str,
    cache: str,
    vary: str | None = None,
    extra: dict[str, str] | None = None,
) -> Response:
    """``body`` with its ETag (and ``extra`` headers), or 304 when the client already has it."""
    etag = _etag(body)
    headers = {"ETag": etag, "Cache-Control": cache, **(extra or {})}
    if vary:
        headers["Vary"] = vary
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


_RESULTS_TTL = 30.0
"""Seconds a made ``/public/results.jsonl`` is served again (its ``Cache-Control`` max-age)."""
_RESULTS_KEPT = 64 * 1024 * 1024
"""The largest ``/public/results.jsonl`` kept in memory (about 8,000 results with proofs)."""

_REPORTS_KEPT = 16
"""Report bodies kept (the views last made): the nine plain views and a few problem versions."""


def _report_view(by: str, options: dict[str, object]) -> tuple[object, ...]:
    """What names one report view: ``by`` and the options with their values."""
    return (by, *sorted(options.items()))


def _changed(e: IntegrityError) -> ServiceUnavailable:
    """The answer for a subscriber route whose events include one changed since it was
    appended (found by the integrity check, which marks the log tampered with)."""
    return ServiceUnavailable(
        f"the log's event {e.seq} was changed since it was appended: nothing is served from it;"
        " the operator is told (/healthz)"
    )


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


# --- the routes -----------------------------------------------------------------------------------


class PublicationAPI:
    """The state behind the routes: subscribers, rate limits, the projection catch-up, caches."""

    def __init__(
        self,
        store: EventStore,
        pdb: ProjectionDB,
        config: Config,
        metrics: Metrics | None = None,
        integrity: Integrity | None = None,
        subscribers: SubscriberDirectory | None = None,
        clock: ReleaseClock | None = None,
    ) -> None:
        """``integrity``, when given, adds each item's inclusion proof to ``/public/feed.json``;
        ``subscribers``: the directory to check keys with (shared with the console, which
        shows when each key was last used); ``clock``: the release job's, which the public
        routes go by too (what a jump of the wall clock would show early stays hidden)."""
        names = {p.name for p in pdb.projections}
        missing = {"feed", "public"} - names
        if missing:
            raise ValueError(
                f"the projection database lacks {', '.join(sorted(missing))}: register "
                "rollwatch.publication.publication_projections() in default_projections()"
            )
        self.store = store
        self.pdb = pdb
        self.config = config
        self.metrics = metrics
        self.subscribers = subscribers or SubscriberDirectory(store)
        self.clock = clock
        self.limiter = RateLimiter(config.server.feed_rate_per_minute)
        self._catch_up_lock = anyio.Lock()
        self._view: tuple[tuple[int, ...], float, PublicView] | None = None
        self._view_lock = anyio.Lock()
        self._renders: dict[tuple[str, str], bytes] = {}  # (route, base URL) -> body of self._view
        self._reports: dict[tuple[object, ...], tuple[int, bytes]] = {}  # _report_view -> (head, body)
        self._kept: Any = None  # what the report keeps per run between requests (report.KeptByRun)
        self._report_locks: dict[tuple[str, ...], anyio.Lock] = {}  # (by, option names) -> lock
        self._boot = secrets.token_hex(4)
        # /public/results.jsonl: the body last made (key, when, body), made by one request
        # at a time; an archive too large to keep is streamed to one client at a time.
        self._results: tuple[tuple[object, ...], float, bytes] | None = None
        self._results_lock = anyio.Lock()
        self._results_too_large = False  # an archive only grows: once over, streamed from then on
        self._results_stream: object | None = None  # the one stream being sent, if any
        self.proofs: InclusionProofs | None = None
        self.bundles: ProofBundles | None = None
        self.witnessing = integrity.witnessing if integrity is not None else None
        self.integrity = integrity
        self.check = integrity
        """Checks the events a public result rests on against the Merkle tree before it is served."""
        if integrity is not None:
            from rollwatch.publication.inclusion import InclusionProofs
            from rollwatch.publication.proofs import ProofBundles

            self.proofs = InclusionProofs(store, integrity.tree)
            self.bundles = ProofBundles(store, integrity.tree, public=True)

    # -- plumbing ----------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The time the public routes show releases as of."""
        return self.clock.now() if self.clock is not None else datetime.now(UTC)

    def not_building(self, *, detail: bool = True) -> None:
        """ServiceUnavailable (503, ``Retry-After``, the progress) while the projections are
        being built: until then they would answer with data that is not current. Then, with
        the integrity services, until the log has passed the check at start: read models
        built from a log edited while the daemon was down (its tree deleted along) would
        serve what the log was made to say until that check stops the daemon."""
        self.pdb.not_building(detail=detail)
        if self.integrity is not None and not self.integrity.checked:
            raise ServiceUnavailable(
                "the log is being checked against what was signed before anything is served from it;"
                " retry in 5 s",
                {"Retry-After": "5"},
            )

    async def current(self, *, public: bool = False) -> int:
        """The log's head, with the projections caught up to it (503 while they are being built,
        or the log checked at start; ``public``: saying how far without the log's head)."""
        self.not_building(detail=not public)
        return await self._caught_up()

    async def _caught_up(self) -> int:
        head = await self.store.head()
        if self.pdb.applied < head:
            async with self._catch_up_lock:
                if self.pdb.applied < head:
                    await self.pdb.catch_up(self.store)
        return head

    async def authorize(self, request: Request, scope: str) -> Subscriber:
        """The subscriber behind the request's bearer key; Unauthorized, Forbidden or TooManyRequests otherwise
        (ServiceUnavailable first while the projections are being built: asked before the key is
        read, so how far in percent only, as the public routes say it)."""
        self.not_building(detail=False)
        key = bearer_key(request)
        result = await self.subscribers.authenticate(key)
        if result.subscriber is None:
            challenge = 'Bearer realm="rollwatch"' + (', error="invalid_token"' if key else "")
            raise Unauthorized(result.reason, {"WWW-Authenticate": challenge})
        sub = result.subscriber
        if scope not in sub.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope")
        wait = self.limiter.take(sub.name)
        if wait is not None:
            retry = max(1, math.ceil(wait))
            raise TooManyRequests(
                f"more than {self.config.server.feed_rate_per_minute} requests a minute; retry in {retry} s",
                {"Retry-After": str(retry)},
            )
        return sub

    # -- subscriber routes --------------------------------------------------------------------------

    async def still_valid(self, request: Request) -> None:
        """Unauthorized when the request's key was revoked (or expired) since it was let in.

        ``authenticate`` reads every subscriber event in the log up to now first, so a long
        poll opened before ``subscribers revoke`` delivers nothing once the revocation is
        recorded.
        """
        result = await self.subscribers.authenticate(bearer_key(request))
        if result.subscriber is None:
            raise Unauthorized(
                result.reason, {"WWW-Authenticate": 'Bearer realm="rollwatch", error="invalid_token"'}
            )

    async def feed(self, request: Request) -> Response:
        """``/v1/feed``: items after ``after``, at most ``limit``, waiting up to ``wait`` s for one."""
        await self.authorize(request, "feed")
        q = FeedQuery.parse(request)
        after, limit, wait = q.after, q.limit, q.wait
        deadline = anyio.current_time() + wait
        head = await self.current()
        if after > head:
            # No cursor this log handed out (every ``next`` is at most the head it was read
            # at, and the head only grows): a typo, another daemon's log, or this log restored
            # from a backup that ends earlier. Answered as a page with ``next`` = ``after``,
            # the client waited in silence, then skipped every event up to its cursor.
            raise BadRequest(
                f"after={after} is past the log's head ({head}): no cursor this log gave"
                " (a log restored from a backup ends earlier); ask again with after at most"
                f" {head} (0: from the start)"
            )
        while True:
            try:
                items, last = await feed_page(
                    self.store, self.pdb, after=after, until=head, limit=limit, check=self.check
                )
            except IntegrityError as e:
                raise _changed(e) from None
            remaining = deadline - anyio.current_time()
            if items or remaining <= 0:
                break
            # Nothing visible yet: wait for the log to grow (an append in this process wakes
            # us at once; another process's within the store's poll interval), in slices, so
            # that a client that hung up does not keep its poll alive for a minute.
            await self.store.wait_for_new(head, min(remaining, 1.0))
            if await request.is_disconnected():
                return Response(status_code=499)
            head = await self.current()
        await self.still_valid(request)
        nxt = last if last is not None and len(items) == limit else max(after, head)
        body = b'{"items":[' + ",".join(items).encode() + b'],"next":%d}' % nxt
        return _tagged(request, body, "application/json", "private, no-cache", vary="Authorization")

    async def rollout(self, request: Request) -> Response:
        """``/v1/rollouts/{rollout_id}``: the whole archived record, from the log."""
        await self.authorize(request, "rollouts")
        EmptyQuery.parse(request)  # subscriber routes are strict
        rid = request.path_params["rollout_id"]
        if not ROLLOUT_ID.match(rid):
            raise BadRequest(f"rollout_id {rid[:80]!r} is not a rollout id")
        try:
            rec = await rollout_record(self.store, rid, check=self.check)
        except IntegrityError as e:
            raise _changed(e) from None
        if rec is None:
            raise NotFound(f"no rollout {rid!r} in the log")
        await self.still_valid(request)  # as /v1/report: the key again before the record goes out
        return _tagged(
            request, _json_bytes(rec), "application/json", "private, no-cache", vary="Authorization"
        )

    async def report(self, request: Request) -> Response:
        """``/v1/report``: ``rollwatch.report.report_json`` (503 when that module is absent)."""
        await self.authorize(request, "report")
        q = ReportQuery.parse(request)
        by = q.by
        options: dict[str, object] = {k: True for k in ("trend", "release_impact") if getattr(q, k)}
        if q.problem_version is not None:
            options["problem_version"] = q.problem_version
        try:
            report_module = importlib.import_module("rollwatch.report")
        except ImportError:
            report_module = None
        report_json = getattr(report_module, "report_json", None)
        if report_json is None:
            raise ServiceUnavailable("the report is not available in this version of rollwatch")
        head = await self.current()
        # The report is a function of the log up to ``head``: its ETag is that position
        # (and this process's start, since a new release may compute it differently, and
        # the view asked for), and the body is kept until the log moves.
        view = _report_view(by, options)
        etag = f'"report-{self._boot}-{head}-{hashlib.sha256(repr(view).encode()).hexdigest()[:16]}"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Authorization"}
        if _matches(request.headers.get("if-none-match"), etag):
            await self.still_valid(request)
            return Response(status_code=304, headers=headers)
        try:
            body = await self.report_body(report_module, view, head, by, options)
        except UsageError as e:
            raise BadRequest(str(e)) from None
        except sqlite3.OperationalError as e:
            log.error("report_unavailable", error=str(e))
            raise ServiceUnavailable("the report's read models are not available") from None
        # The key again, as /v1/feed does: catching up and making the report may have waited
        # (another process's catch-up holding the read models' file, a large catch-up, a report
        # made from every run), and a key revoked meanwhile got the report (session 33).
        await self.still_valid(request)
        return Response(body, media_type="application/json", headers=headers)

    async def report_body(
        self, module: Any, view: tuple[object, ...], head: int, by: str, options: dict[str, object]
    ) -> bytes:
        """The report ``view``'s JSON at ``head`` (made once per position: one report of a
        kind is made at a time, and a request that waited on another's finds it made; the
        kinds keep apart what they keep, so a report by model never waits on one by run)."""
        kind = (by, *sorted(options))
        lock = self._report_locks.setdefault(kind, anyio.Lock())
        async with lock:
            cached = self._reports.get(view)
            if cached is not None and cached[0] == head:
                return cached[1]
            if self._kept is None:
                self._kept = module.KeptByRun()
            kept = {} if options else {"kept": self._kept}
            body = _json_bytes(await module.report_json(self.pdb, by, **options, **kept))
            self._reports.pop(view, None)
            self._reports[view] = (head, body)
            while len(self._reports) > _REPORTS_KEPT:  # each problem version asked for is a view
                del self._reports[next(iter(self._reports))]
            return body

    async def prime_reports(self) -> None:
        """Make the reports by model, run and problem now, so that the first of each asked
        for does not read every run (the daemon calls this once the projections are built)."""
        try:
            module = importlib.import_module("rollwatch.report")
            t = time.perf_counter()
            self.pdb.not_building()
            head = await self._caught_up()  # made ahead of the check at start, served after it
            for by in ("model", "run", "problem"):
                await self.report_body(module, _report_view(by, {}), head, by, {})
            log.info("reports_primed", head=head, took_s=round(time.perf_counter() - t, 3))
        except (ImportError, sqlite3.OperationalError, ServiceUnavailable) as e:
            log.warning("report_not_primed", error=str(e))
        except Exception as e:  # a warm-up only: the first request makes the report (or says why not)
            log.error("report_not_primed", error=repr(e))

    # -- public routes -------------------------------------------------------------------------------

    async def prime_public(self) -> None:
        """Make the public view now (the daemon calls this once it is ready): its first
        request would otherwise prove each shown event in the signed tree (18 of its 33 ms at
        a million events); proven once, an event is compared with its proven leaf after."""
        try:
            t = time.perf_counter()
            # A warm-up only: a store that answers slowly (a database far away, a disk stalled)
            # delays daemon_ready by this much at most, then the first request makes the view.
            with anyio.fail_after(_PRIME_S):
                v = await self.view()
                if self.proofs is not None:  # the JSON feed's proofs, kept until the next checkpoint
                    await self.proofs.fields(v.recent)
            log.info("public_primed", took_s=round(time.perf_counter() - t, 3))
        except TimeoutError:
            log.warning("public_not_primed", error=f"not made within {_PRIME_S:g} s")
        except (sqlite3.OperationalError, ServiceUnavailable) as e:
            log.warning("public_not_primed", error=str(e))
        except Exception as e:  # a warm-up only: the first request makes the view (or says why not)
            log.error("public_not_primed", error=repr(e))

    async def view(self) -> PublicView:
        """The public view as of now, reused while no release happens (for a few seconds)."""
        await self.current(public=True)
        async with self._view_lock:
            # What has been released or marked superseded since: a release's seq and a mark's
            # are the newest in the log when made, and a mark lifted lowers the count. Read
            # from two partial indexes, whatever the number of released results (a count of
            # them took 30 ms at a million events).
            state = await self.pdb.fetchone(_RELEASE_STATE_SQL)
            key = tuple(int(x) for x in state) if state else (0, 0, 0)
            cached = self._view
            if cached is not None and cached[0] == key and time.monotonic() - cached[1] < _VIEW_TTL:
                return cached[2]
            # What is public only grows with time, so a view reused for a few seconds can
            # show less than it could (a run's figures becoming disclosed), never more.
            v = await public_view(
                self.store,
                self.pdb,
                now=self.now(),
                embargo_default=self.config.publication.embargo,
                embargo_counts=self.config.publication.embargo_counts,
                check=self.check,
            )
            self._view = (key, time.monotonic(), v)
            self._renders.clear()
            return v

    def _base(self, request: Request) -> str:
        # Never the request's Host header: anyone can send one, and a cache or a
        # subscriber would then hand out links to the sender's site. Without
        # server.base_url, the address of our own socket the request came in on: it is
        # server.listen, made concrete when that is a wildcard (0.0.0.0) or port 0.
        if self.config.server.base_url:
            return self.config.server.base_url + "/public/"
        local = request.scope.get("server")
        if not local or local[1] is None:
            return self.config.server.url + "/public/"
        host, port = local
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/public/"

    async def _public(
        self, request: Request, kind: str, render: Callable[[PublicView, str], bytes], media_type: str
    ) -> Response:
        return self._rendered(request, await self.view(), kind, render, media_type)

    def _rendered(
        self,
        request: Request,
        v: PublicView,
        kind: str,
        render: Callable[[PublicView, str], bytes],
        media_type: str,
    ) -> Response:
        """``render(v, base)``, reused while ``v`` is the current view (``kind`` names the rendering)."""
        base = self._base(request)
        current = self._view is not None and self._view[2] is v
        body = self._renders.get((kind, base)) if current else None
        if body is None:
            body = render(v, base)
            if current:  # no await since the check: self._renders still belongs to v
                if len(self._renders) > 64:
                    self._renders.clear()
                self._renders[(kind, base)] = body
        extra = _PAGE_HEADERS if media_type.startswith("text/html") else None
        return _tagged(request, body, media_type, "public, max-age=30", extra=extra)

    async def public_page(self, request: Request) -> Response:
        """``/public/``: the HTML page."""
        embargo = self.config.publication.embargo
        witnessed = self._witnessed()
        return await self._public(
            request,
            f"html@{witnessed}",
            lambda v, _b: feeds.html_page(v, embargo_s=embargo, witnessed=witnessed).encode(),
            "text/html; charset=utf-8",
        )

    def _witnessed(self) -> str | None:
        """How fresh the latest witnessed checkpoint is, in a sentence (None without witnesses)."""
        w = self.witnessing
        if w is None:
            return None
        if w.witnessed_at is None:
            return f"No checkpoint has reached its quorum of {w.quorum} witness cosignatures yet."
        at = datetime.fromtimestamp(w.witnessed_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"The latest witnessed checkpoint (tree size {w.witnessed_size}) had its quorum of "
            f"{w.quorum} witness cosignatures at {at}."
        )

    async def json_feed(self, request: Request) -> Response:
        """``/public/feed.json``: JSON Feed 1.1 (with inclusion proofs when integrity is on)."""
        if self.proofs is None:
            return await self._public(request, "json", feeds.json_feed_bytes, "application/feed+json")
        v = await self.view()
        extra, signed = await self.proofs.fields(v.recent)
        return self._rendered(
            request,
            v,
            f"json@{signed}",
            lambda view, base: feeds.json_feed_bytes(view, base, extra),
            "application/feed+json",
        )

    async def atom_feed(self, request: Request) -> Response:
        """``/public/feed.atom``: Atom 1.0."""
        return await self._public(request, "atom", feeds.atom_feed, "application/atom+xml")

    async def results(self, request: Request) -> Response:
        """``/public/results.jsonl``: every released result, one per line, oldest release first.

        Each line's proof bundle costs milliseconds, so the whole archive is made once for
        what it shows (the releases and superseded marks in the log, the checkpoint its
        proofs are against) and served to every request for up to ``_RESULTS_TTL`` seconds
        (as ``/public/``'s view: time only makes more public, so a body reused that long
        shows less than it could, never more), with an ETag (``If-None-Match`` -> 304).
        One request makes it at a time; the others wait for it and are served the same
        body. An archive over ``_RESULTS_KEPT`` bytes is not kept: it is streamed, made as
        it goes, to one client at a time, and a request meanwhile gets 503 with Retry-After.
        Before, every request made the whole archive again: a few clients in a loop kept
        the daemon's CPU busy.
        """
        await self.current(public=True)
        bundles = self.bundles
        cp = await bundles.checkpoint() if bundles is not None else None
        state = await self.pdb.fetchone(_RELEASE_STATE_SQL)
        key = (*(tuple(state) if state else ()), cp.seq if cp is not None else None)
        ndjson = "application/x-ndjson"
        if (body := self._kept_results(key)) is not None:
            return _tagged(request, body, ndjson, "public, max-age=30")
        if not self._results_too_large:
            async with self._results_lock:
                if (body := self._kept_results(key)) is not None:  # made while this one waited
                    return _tagged(request, body, ndjson, "public, max-age=30")
                t = time.perf_counter()
                chunks: list[bytes] = []
                size = 0
                lines = self._result_lines(cp)
                async with contextlib.aclosing(lines):
                    async for line in lines:
                        chunks.append(line)
                        size += len(line)
                        if size > _RESULTS_KEPT:
                            break
                if size <= _RESULTS_KEPT:
                    body = b"".join(chunks)
                    self._results = (key, time.monotonic(), body)
                    log.info(
                        "public_results_made",
                        results=len(chunks),
                        checkpoint=cp.seq if cp is not None else None,
                        bytes=size,
                        took_s=round(time.perf_counter() - t, 3),
                    )
                    return _tagged(request, body, ndjson, "public, max-age=30")
                self._results_too_large = True
                log.info("public_results_streamed", reason=f"the archive is over {_RESULTS_KEPT} bytes")
        if self._results_stream is not None:
            raise ServiceUnavailable(
                "the archive is being sent to another client; retry in 30 s", {"Retry-After": "30"}
            )
        stream = self._results_stream = object()

        def release() -> None:
            if self._results_stream is stream:
                self._results_stream = None

        return _Streamed(
            self._result_lines(cp),
            release,
            media_type=ndjson,
            headers={"Cache-Control": "public, max-age=30"},
        )

    def _kept_results(self, key: tuple[object, ...]) -> bytes | None:
        kept = self._results
        if kept is not None and kept[0] == key and time.monotonic() - kept[1] < _RESULTS_TTL:
            return kept[2]
        return None

    async def _result_lines(self, cp: Any) -> AsyncGenerator[bytes, None]:
        """Every released result's line, each proof against ``cp`` (whatever is signed meanwhile)."""
        bundles = self.bundles
        async for r in iter_released(self.store, self.pdb, self.now(), check=self.check):
            line = r.to_json()
            if bundles is not None and cp is not None:
                line["proof"] = await bundles.bundle(r.rollout_id, cp)
            yield _json_bytes(line) + b"\n"

    async def public_rollout(self, request: Request) -> Response:
        """``/public/rollouts/{id}.json``: one released result (404 unless released)."""
        rid = request.path_params["rollout_id"]
        await self.current(public=True)
        r = (
            await released_one(self.store, self.pdb, rid, self.now(), self.check)
            if ROLLOUT_ID.match(rid)
            else None
        )
        if r is None:
            raise NotFound("no released result with this id")
        body = r.to_json()
        if self.bundles is not None:
            body["proof"] = await self.bundles.bundle(r.rollout_id)
        return _tagged(request, _json_bytes(body), "application/json", "public, max-age=60")

    async def openapi(self, request: Request) -> Response:
        """``/openapi.json``."""
        return _tagged(request, _json_bytes(openapi_document()), "application/json", "public, max-age=300")

    def routes(self) -> list[Route]:
        """Every publication route, ready for ``build_app(metrics, extra_routes)``."""
        return [
            Route("/v1/feed", self.feed, methods=["GET"]),
            Route("/v1/rollouts/{rollout_id}", self.rollout, methods=["GET"]),
            Route("/v1/report", self.report, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/public/", self.public_page, methods=["GET"]),
            Route("/public/feed.json", self.json_feed, methods=["GET"]),
            Route("/public/feed.atom", self.atom_feed, methods=["GET"]),
            Route("/public/results.jsonl", self.results, methods=["GET"]),
            Route("/public/rollouts/{rollout_id}.json", self.public_rollout, methods=["GET"]),
        ]


def publication_routes(
    services: ServicesLike,
    metrics: Metrics | None = None,
    integrity: Integrity | None = None,
    subscribers: SubscriberDirectory | None = None,
) -> list[Route]:
    """The routes of SPEC §6 that publication serves (subscriber API, public release, OpenAPI).

    ``services`` has ``.store``, ``.projections`` (a ProjectionDB holding
    :func:`~rollwatch.publication.projections.publication_projections`) and ``.config``.
    With ``integrity`` (:class:`rollwatch.integrity.service.Integrity`), every item of
    ``/public/feed.json`` carries its leaf index and inclusion proof under ``_rollwatch``
    (see :mod:`rollwatch.publication.inclusion`), for ``rollwatch audit --item``.
    """
    return PublicationAPI(
        services.store, services.projections, services.config, metrics, integrity, subscribers
    ).routes()
