"""Event store backends. ``open_store(url)`` picks one from the configured URL."""

from __future__ import annotations

from rollwatch.abc import EventStore
from rollwatch.config import StoreConfig


def open_store(config: StoreConfig) -> EventStore:
    """An (unopened) event store for ``config.url``; use it with ``async with``."""
    path = config.sqlite_path
    if path is not None:
        from rollwatch.store.sqlite import SQLiteEventStore

        return SQLiteEventStore(path)
    from rollwatch.store.postgres import PostgresEventStore

    return PostgresEventStore(config.url, retry_for=config.retry)


__all__ = ["open_store"]
