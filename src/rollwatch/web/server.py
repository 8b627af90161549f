"""uvicorn inside the daemon's anyio task group.

uvicorn normally owns signals; the daemon handles SIGTERM/SIGINT itself (to stop runs
gracefully first), so signal capture is switched off and the daemon sets
``should_exit`` when it is time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HTTPServer:
    """Serves ``app`` on ``host:port``; ``start`` reports ready once the socket listens."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
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
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._serve)
            while not self.server.started:
                if self.server.should_exit:
                    break
                await anyio.sleep(0.01)
            task_status.started()

    async def _serve(self) -> None:
        try:
            await self.server.serve()
        finally:
            self.stopped.set()

    def stop(self) -> None:
        """Ask the server to stop; :attr:`stopped` is set once it has closed everything.

        Wait for that before cancelling the task that runs it: uvicorn closes its
        listening sockets and connections only on the way out of ``serve``, and a
        cancelled ``serve`` leaves them open.
        """
        self.server.should_exit = True
