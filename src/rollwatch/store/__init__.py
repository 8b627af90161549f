"""Event store backends. ``open_store(url)`` picks one from the configured URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the configuration (pydantic) is not imported by who opens a store only
    from rollwatch.abc import EventStore
    from rollwatch.config import StoreConfig


def open_store(config: StoreConfig, *, read_only: bool = False) -> EventStore:
    """An (unopened) event store for ``config.url``; use it with ``async with``.

    ``read_only``: the log must exist (nothing is created; a SQLite one's ``append`` refuses).
    """
    path = config.sqlite_path
    if path is not None:
        from rollwatch.store.sqlite import SQLiteEventStore

        return SQLiteEventStore(path, read_only=read_only, busy_timeout=config.busy_timeout)
    from rollwatch.store.postgres import PostgresEventStore

    return PostgresEventStore(config.url, retry_for=config.retry, read_only=read_only)


def open_store_url(url: str, *, read_only: bool = False) -> EventStore:
    """:func:`open_store` of ``StoreConfig(url=url)`` (every other setting at its default).

    A SQLite log is opened without importing the configuration (pydantic: a tenth of a
    second of CPU), for the worker processes the daemon starts again and again (each
    scrub pass), which are given a URL its configuration checked already."""
    if url.startswith("sqlite:"):
        from rollwatch._sqlite_url import sqlite_file
        from rollwatch.store.sqlite import SQLiteEventStore

        return SQLiteEventStore(sqlite_file(url), read_only=read_only)  # StoreConfig's busy_timeout
    from rollwatch.config import StoreConfig

    return open_store(StoreConfig(url=url), read_only=read_only)


__all__ = ["open_store", "open_store_url"]
