"""A progress line for terminals: done of total, extra figures, time left.

Off a terminal (systemd, CI, pipes) it prints nothing: structured logs say it there.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def fmt_secs(s: float) -> str:
    """A duration for a person: ``42s``, ``3m07s``, ``2h05m``."""
    s = int(max(0, s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Redraws one line on stderr at most ten times a second."""

    def __init__(
        self, label: str, total: int, *, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.total = total
        self.done = 0
        self.fields: dict[str, str] = {}
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, done: int | None = None, *, advance: int = 0, **fields: object) -> None:
        """Set or advance the count and any extra figures (``passed=3, cost="$0.12"``)."""
        if done is not None:
            self.done = done
        self.done += advance
        self.fields.update({k: str(v) for k, v in fields.items()})
        now = time.monotonic()
        if self.enabled and (now - self._last >= 0.1 or self.done >= self.total):
            self._last = now
            self._draw(now)

    def set(self, done: int, total: int) -> None:
        """Set the count and the total (a callback of ``(done, total)``)."""
        self.total = total
        self.update(done)

    def _draw(self, now: float) -> None:
        total = max(self.total, 1)
        frac = min(1.0, self.done / total)
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = now - self._start
        left = elapsed / frac - elapsed if frac > 0 else 0.0
        extra = " ".join(f"{k} {v}" for k, v in self.fields.items())
        eta = f"left {fmt_secs(left)}" if 0 < frac < 1 else f"took {fmt_secs(elapsed)}"
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {extra} {eta}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
