"""A scriptable HTTP/1.1 server on 127.0.0.1, raw on anyio's TCP listener.

Raw, not a framework, because the tests need the misbehaviour a framework prevents:
a body cut off under a larger ``Content-Length``, a connection dropped before any
response, an answer that never comes. Each test scripts the replies in order
(``server.script``); when the script is empty, ``default`` answers.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

Action = Literal["respond", "malformed", "cut", "reset", "drop", "stall", "hold", "trickle"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


@dataclass
class Reply:
    """One scripted reply.

    ``respond`` sends ``status``/``headers``/``body``; ``malformed`` sends a 200 whose
    body is not JSON; ``cut`` announces the full body (``body``, else the default
    reply's) but sends half of it and closes;
    ``reset`` does the same but resets the connection (a TCP RST: a proxy or load
    balancer dropping it) instead of closing it cleanly;
    ``drop`` closes without a response; ``stall`` never answers (until the server
    stops), for timeouts; ``hold`` answers the default reply once ``server.release``
    is set; ``trickle`` sends the head and half the body, then nothing more (a stream
    that stalls mid-answer). ``after``, when set, is called once the reply is sent (a
    fault hook: e.g. kill the client right after it got its answer).
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    action: Action = "respond"
    after: Callable[[], None] | None = None

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.body is None:
            return b""
        return json.dumps(self.body).encode()


@dataclass
class Seen:
    """A request as the server received it, and when (``anyio.current_time``)."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float
    replied_at: float | None = None
    reply: Reply | None = None

    def json(self) -> Any:
        return json.loads(self.body)


class LoopbackServer:
    """See the module docstring. ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, port: int, default: Callable[[Seen], Reply]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.default = default
        self.script: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self._arrived = anyio.Event()
        self.release = anyio.Event()

    def then(self, *replies: Reply) -> LoopbackServer:
        """Append ``replies`` to the script."""
        self.script.extend(replies)
        return self

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        """Return once ``n`` requests have arrived; fail after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            while len(self.seen) < n:
                await self._arrived.wait()

    async def handle(self, stream: SocketStream) -> None:
        """Serve one connection: keep-alive, one request at a time."""
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                while True:
                    head = await reader.receive_until(b"\r\n\r\n", 65536)
                    lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    headers = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    body = await reader.receive_exactly(length) if length else b""
                    seen = Seen(method, target, headers, body, anyio.current_time())
                    self.seen.append(seen)
                    self._arrived.set()
                    self._arrived = anyio.Event()
                    reply = self.script.popleft() if self.script else self.default(seen)
                    seen.reply = reply
                    if not await self._send(stream, reply, seen):
                        return
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return
            except anyio.ClosedResourceError:
                return

    async def _send(self, stream: SocketStream, reply: Reply, seen: Seen) -> bool:
        """Send ``reply``; False when the connection is closed after it."""
        if reply.action == "drop":
            seen.replied_at = anyio.current_time()
            return False
        if reply.action == "stall":
            await anyio.sleep_forever()
        if reply.action == "hold":
            await self.release.wait()
            reply = self.default(seen)
        status = 200 if reply.action == "malformed" else reply.status
        body = b'{"choices": [{"message": ' if reply.action == "malformed" else reply.payload()
        if reply.action in ("cut", "reset") and not body:  # cut the wire's real answer in half
            body = self.default(seen).payload()
        headers = {"content-type": "application/json", **reply.headers}
        headers["content-length"] = str(len(body))
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        if reply.action in ("cut", "reset"):
            await stream.send(head.encode() + body[: len(body) // 2])
            seen.replied_at = anyio.current_time()
            if reply.action == "reset":  # SO_LINGER 0: the close sends a RST
                sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if reply.action == "trickle":
            await stream.send(head.encode() + body[: len(body) // 2])
            seen.replied_at = anyio.current_time()
            await anyio.sleep_forever()
        await stream.send(head.encode() + body)
        seen.replied_at = anyio.current_time()
        if reply.after is not None:
            reply.after()
        return True


@asynccontextmanager
async def serve(default: Callable[[Seen], Reply]) -> AsyncIterator[LoopbackServer]:
    """A running :class:`LoopbackServer` on an ephemeral port, stopped on exit."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server = LoopbackServer(port, default)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
