"""uvicorn inside the daemon's anyio task group, with a deadline on reading requests.

uvicorn normally owns signals; the daemon handles SIGTERM/SIGINT itself (to stop runs
gracefully first), so signal capture is switched off and the daemon sets
``should_exit`` when it is time.

Slowloris: uvicorn (0.54) bounds the idle time between requests (``timeout_keep_alive``)
but not the time a client takes to send one: its keep-alive timer is reset by every
byte received, so 200 sockets trickling header bytes stayed open for minutes (the
missing setting is Kludex/uvicorn#157, open since 2018). :class:`_DeadlineH11` gives
each request ``head_timeout`` seconds, from the connection's start (or the end of the
previous response) until the request has arrived whole, then closes the connection.
Long polls are not affected: the deadline is disarmed once the request is in.

Connection floods: every open connection holds a file descriptor, and idle ones up to the
open-file limit made the next file the daemon opened fail with EMFILE: the scrub could not
start its process and the daemon exited 1, while asyncio logged an ERROR for every refused
accept. The connections are bounded (:func:`connection_limits`): :class:`_DeadlineH11`
keeps at most ``max_connections`` open, a connection over it closing the one that has
waited longest for its request (or itself, when every other is busy), with one WARNING at
most every 10 s; and the listen backlog, which is also how many connections asyncio
accepts at once before any of them can be closed, is kept to a share of the limit.

Slow readers: a client can also leave its receive window shut (a tiny receive buffer and
MSS, its own socket options), so that its kernel and ours take some 20 kB of an answer and
the rest waits in our buffer for as long as it likes. Answers pipelined and never read held
their handler in uvicorn's ``drain`` for ever, on a connection the bound counted but could
not close for a newcomer: 200 of them shut every new client out, ``/healthz`` included. And a
connection closed with its answer still buffered kept its descriptor until the client left,
uncounted: 700 took every descriptor of a daemon limited to 512 files. Now a client that
takes nothing of an answer waiting in our buffer for ``head_timeout`` loses its connection
(a slow reader, taking some meanwhile, gets as long again each time), connections closed
with an answer still to send are counted, and a connection over the bound first drops one
of those, then closes the one waiting longest for its request, then drops the one whose
client has read nothing for longest.

The listening sockets are bound here rather than by uvicorn, so that an address in use
is an :class:`~rollwatch.errors.AddressInUse` naming it (uvicorn logs it and calls
``sys.exit(1)`` from inside our task group).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import resource
import socket
import time
from collections.abc import Generator
from typing import Any, cast

import anyio
import h11
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from rollwatch.errors import AddressInUse, UsageError
from rollwatch.log import get_logger
from rollwatch.web.access import redact_keys
from rollwatch.web.errors import error_response

log = get_logger("rollwatch.web")
access = get_logger("rollwatch.access")

DEFAULT_HEAD_TIMEOUT = 10.0
_FULL_SAID_EVERY_S = 10.0


_MAX_CONNECTIONS = 10_000
_MAX_BACKLOG = 2048


def connection_limits() -> tuple[int, int]:
    """(open connections, listen backlog) for this process's open-file limit: together at most
    half of it (the other half for the log, the sandbox and the providers), the backlog an
    eighth; at most 10,000 connections (each holds a few kB) and a backlog of 2048."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    backlog = max(16, min(_MAX_BACKLOG, limit // 8))
    return max(16, min(_MAX_CONNECTIONS, limit // 2 - backlog)), backlog


def raise_open_file_limit() -> None:
    """The soft open-file limit raised to the hard one (at most 65536), as a daemon expects:
    systemd and most shells start processes at 1024 however high the hard limit is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class _DeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request is not in within ``head_timeout``,
    and keeping at most ``max_connections`` open."""

    head_timeout = DEFAULT_HEAD_TIMEOUT
    max_connections = 32768
    full: dict[str, float] = {}  # noqa: RUF012  (per server class: when "full" was said, refused since)
    _deadline: asyncio.TimerHandle | None = None
    _stall: asyncio.TimerHandle | None = None
    """Set while part of an answer waits in our buffer: the client has until then to take some."""
    _unsent = 0
    """How much of it waited when the stall timer was last armed."""
    _since = 0.0
    """When the request being read began to be awaited (the loop's clock), for its access line."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio hands a stream server's protocol a Transport; the base class says Base.
        super().connection_made(cast(asyncio.Transport, transport))
        # Told (pause_writing) as soon as any of an answer waits in our buffer, not only
        # past 64 kB: what is left of an answer the client does not read may be less.
        self.transport.set_write_buffer_limits(high=0)
        self._arm()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def _make_room(self) -> None:
        """Drop a connection closed with its answer unread, else close the one waiting longest
        for its request, else drop the one whose client has read nothing for longest (this
        one when every other is busy)."""
        # A closing transport still holds its descriptor while it has data to send.
        live = [
            c for c in self.connections if not c.transport.is_closing() or c.transport.get_write_buffer_size()
        ]
        if len(live) <= self.max_connections:
            return
        others = [c for c in live if c is not self and isinstance(c, _DeadlineH11)]
        unread = [c for c in others if c.transport.is_closing()]
        open_ = [c for c in others if not c.transport.is_closing()]
        waiting = [c for c in open_ if c._deadline is not None]
        stalled = [c for c in open_ if c._stall is not None]
        victim: _DeadlineH11 = self
        if unread:
            victim = unread[0]
        elif waiting:
            victim = min(waiting, key=lambda c: c._deadline.when())  # type: ignore[union-attr]
        elif stalled:
            victim = min(stalled, key=lambda c: c._stall.when())  # type: ignore[union-attr]
        victim._drop()
        self.full["refused"] = self.full.get("refused", 0) + 1
        now = time.monotonic()
        if now - self.full.get("said", -_FULL_SAID_EVERY_S) >= _FULL_SAID_EVERY_S:
            log.warning(
                "http_connections_full",
                limit=self.max_connections,
                closed=int(self.full["refused"]),
                closes="one closed with its answer unread, else the one waiting longest for its request, "
                "else the one not reading its answer for longest",
            )
            self.full.update(said=now, refused=0)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unstall()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # Part of an answer waits in our buffer (high water 0): the client must take some of
        # it within head_timeout. Also once the connection is closing, which waits for it.
        super().pause_writing()
        if self._stall is None:
            self._wait_for_reader()

    def _wait_for_reader(self) -> None:
        self._unsent = self.transport.get_write_buffer_size()
        self._stall = self.loop.call_later(self.head_timeout, self._not_reading)

    def resume_writing(self) -> None:
        self._unstall()
        super().resume_writing()

    def _unstall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _not_reading(self) -> None:
        self._stall = None
        if self.transport.get_write_buffer_size() < self._unsent:
            # A slow reader, not a stopped one (a big answer on a slow link): it has as long again.
            self._wait_for_reader()
            return
        log.info(
            "http_client_not_reading",
            client=self.client[0] if self.client else None,
            unsent=self.transport.get_write_buffer_size(),
            limit_s=self.head_timeout,
        )
        self._drop()

    def _drop(self) -> None:
        """Close now, dropping what is left to send (``close`` would wait for the client to read it)."""
        self._disarm()
        self._unstall()
        self.transport.abort()

    def handle_events(self) -> None:
        super().handle_events()
        # IDLE: the request line or headers are still coming; SEND_BODY: the body is.
        # Anything else (DONE, an error, a close) ends what the deadline guards.
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a request h11 cannot parse (a NUL or a newline in a header's
        # value, headers past h11's size limit, a broken request line) with a text/plain
        # "Invalid HTTP request received.": the one answer of ours a client could not
        # parse as the error body every other 4xx has. Same status, same close, our body.
        # The request is not quoted: its bad header may be the client's key.
        del msg
        # It never reaches the app, whose AccessLog writes every other request's line: the
        # same event here, so an operator tailing the log sees these too (before, nothing;
        # uvicorn's own warning goes to a logger nobody configures). Method and path are
        # not known: h11 does not hand out the part of the request it had parsed.
        access.info(
            "http_request",
            method=None,
            path=None,
            status=400,
            ms=round((self.loop.time() - self._since) * 1000, 2),
            client=self.client[0] if self.client else None,
            refused="not valid HTTP/1.1",
        )
        body = json.dumps(
            {
                "error": "bad_request",
                "message": "the request is not valid HTTP/1.1 (its request line, a header's name or "
                "value, or the size of its headers); nothing was done",
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def on_response_complete(self) -> None:
        # The next request on this connection gets a deadline of its own; a request
        # whose body is still arriving keeps the deadline it has.
        if self.conn.their_state is h11.DONE:
            self._arm()
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._since = self.loop.time()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.head_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            client = self.client[0] if self.client else None
            log.info("http_request_too_slow", client=client, limit_s=self.head_timeout)
            self.transport.close()


class OneBodyLength:
    """A 400, and the connection closed, for a request that states its body's length twice
    over: ``Content-Length`` and ``Transfer-Encoding`` both (around every app this server
    serves: the daemon's, a witness's, whose ``/add-checkpoint`` reads bodies).

    That is how a request is smuggled past a proxy that goes by the other header (RFC 9112
    6.1: "the server MUST close the connection after responding to such a request"). h11
    went by ``Transfer-Encoding`` and kept the connection: a chunked body ending early let a
    second request, written where the proxy saw a body, reach us on the proxy's connection,
    from a loopback peer (the operator's console, every event under embargo included).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {name for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                # Refused before the app, whose AccessLog writes the other lines: the same event.
                client = scope.get("client")
                access.info(
                    "http_request",
                    method=scope["method"],
                    path=redact_keys(scope["path"]),
                    status=400,
                    ms=0.0,
                    client=client[0] if client else None,
                    refused="Content-Length and Transfer-Encoding",
                )
                response = error_response(
                    400,
                    "bad_request",
                    "the request has both Content-Length and Transfer-Encoding; send one",
                    {"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listening_sockets(host: str, port: int, setting: str = "server.listen") -> list[socket.socket]:
    """Bound, listening sockets for ``host:port`` (one per address it resolves to).
    ``setting``: where the address comes from, named in the error when it cannot be used."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"{setting} {address}: cannot resolve {host!r} ({e.strerror})") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise AddressInUse(address, setting) from None
                raise UsageError(
                    f"cannot listen on {address}: {e.strerror or e}; set {setting} to another address"
                ) from None
            sock.listen(connection_limits()[1])
            sock.setblocking(False)
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


LOOPBACK_PROXIES = "127.0.0.1,::1"
"""The peers whose ``X-Forwarded-For`` names the client (uvicorn's default, fixed)."""


class HTTPServer:
    """Serves ``app`` on ``host:port``; ``start`` reports ready once the socket listens."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        sockets: list[socket.socket] | None = None,
    ) -> None:
        """``head_timeout``: seconds a client has to send a whole request (line, headers, body).
        Connections and the backlog are bounded by the open-file limit (:func:`connection_limits`)."""
        max_connections, backlog = connection_limits()
        protocol = type(
            "DeadlineH11",
            (_DeadlineH11,),
            {"head_timeout": head_timeout, "max_connections": max_connections, "full": {}},
        )
        config = uvicorn.Config(
            OneBodyLength(app),
            host=host,
            port=port,
            http=protocol,
            log_config=None,
            access_log=False,
            lifespan="off",
            # No WebSocket protocol, whatever is installed: an upgraded connection would escape
            # the deadlines and the connection bound above (rollwatch serves none).
            ws="none",
            server_header=False,
            backlog=backlog,
            timeout_graceful_shutdown=5,
            # X-Forwarded-For is believed from a proxy on this host only, whatever
            # FORWARDED_ALLOW_IPS says: with "*" uvicorn takes the header's leftmost entry,
            # which the client writes, and the operator's trust is by peer address.
            forwarded_allow_ips=LOOPBACK_PROXIES,
        )
        self.host = host
        self._sockets = sockets
        """Sockets bound already (the daemon binds before anything else, to fail fast)."""
        self.server = _Server(config)
        self.stopped = anyio.Event()
        """Set once the server has closed its sockets and connections after :meth:`stop`."""

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        for s in self.server.servers:
            for sock in s.sockets:
                return int(sock.getsockname()[1])
        return self.server.config.port

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind (AddressInUse when taken), serve, and report ready once listening."""
        # getaddrinfo may ask a resolver: off the event loop.
        sockets = self._sockets
        if sockets is None:
            sockets = await anyio.to_thread.run_sync(listening_sockets, self.host, self.server.config.port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._serve, sockets)
            while not self.server.started:
                if self.server.should_exit:
                    break
                await anyio.sleep(0.01)
            task_status.started()

    async def _serve(self, sockets: list[socket.socket]) -> None:
        try:
            await self.server.serve(sockets=sockets)
        finally:
            self.stopped.set()

    def stop(self) -> None:
        """Ask the server to stop (it drains open requests for up to 5 s); :attr:`stopped`
        is set once it has closed everything.

        Wait for that before cancelling the task that runs it: uvicorn closes its
        listening sockets and connections only on the way out of ``serve``, and a
        cancelled ``serve`` leaves them open.
        """
        self.server.should_exit = True
