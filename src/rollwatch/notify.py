"""systemd's notify protocol without libsystemd (see sd_notify(3)).

One datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET``; a leading ``@`` means the abstract namespace. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import socket

import anyio

from rollwatch.log import get_logger

log = get_logger(__name__)


class Notifier:
    """Sends READY=1, STOPPING=1, STATUS=... and WATCHDOG=1 to systemd."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> None:
        """Send one datagram, e.g. ``notify(READY=1, STATUS="serving")``."""
        if self._sock is None or self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(payload, target)
        except OSError as e:
            log.warning("sd_notify_failed", error=str(e), fields=list(fields))

    def watchdog_interval(self) -> float | None:
        """Half of ``WatchdogSec`` (from ``$WATCHDOG_USEC``), when systemd asks for pings."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1e6 / 2
        except ValueError:
            return None

    async def watchdog(self) -> None:
        """Ping WATCHDOG=1 at half the interval, from the event loop: a stuck loop stops pinging."""
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while True:
            self.notify(WATCHDOG=1)
            await anyio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
