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

The listening sockets are bound here rather than by uvicorn, so that an address in use
is an :class:`~rollwatch.errors.AddressInUse` naming it (uvicorn logs it and calls
``sys.exit(1)`` from inside our task group).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Generator
from typing import Any, cast

import anyio
import h11
import uvicorn
from anyio.abc import TaskStatus
from uvicorn.protocols.http.h11_impl import H11Protocol

from rollwatch.errors import AddressInUse, UsageError
from rollwatch.log import get_logger

log = get_logger("rollwatch.web")

DEFAULT_HEAD_TIMEOUT = 10.0


class _DeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request is not in within ``head_timeout``."""

    head_timeout = DEFAULT_HEAD_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio hands a stream server's protocol a Transport; the base class says Base.
        super().connection_made(cast(asyncio.Transport, transport))
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        # IDLE: the request line or headers are still coming; SEND_BODY: the body is.
        # Anything else (DONE, an error, a close) ends what the deadline guards.
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()

    def on_response_complete(self) -> None:
        # The next request on this connection gets a deadline of its own; a request
        # whose body is still arriving keeps the deadline it has.
        if self.conn.their_state is h11.DONE:
            self._arm()
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
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


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening sockets for ``host:port`` (one per address it resolves to)."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"server.listen {address}: cannot resolve {host!r} ({e.strerror})") from None
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
                    raise AddressInUse(address) from None
                raise UsageError(
                    f"cannot listen on {address}: {e.strerror or e}; set server.listen to another address"
                ) from None
            sock.listen(2048)
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
        """``head_timeout``: seconds a client has to send a whole request (line, headers, body)."""
        protocol = type("DeadlineH11", (_DeadlineH11,), {"head_timeout": head_timeout})
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=protocol,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
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
