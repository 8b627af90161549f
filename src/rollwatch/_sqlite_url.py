"""The file a ``sqlite:`` URL names: for the configuration, and for the worker processes
that open the log the daemon's configuration names without importing that (pydantic)."""

from __future__ import annotations

import os
from pathlib import Path


def sqlite_file(url: str) -> Path:
    """The file of a ``sqlite:`` URL (``sqlite:///abs`` is absolute, ``sqlite:rel`` relative)."""
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        rest = rest[2:]
    return Path(os.path.expandvars(rest))
