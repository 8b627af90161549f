"""Subscriber keys: their form, their hash, expiry parsing, and the directory's verdicts."""

from __future__ import annotations

import base64
import functools
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from rollwatch.errors import ServiceUnavailable, UsageError
from rollwatch.events import Recorded
from rollwatch.publication.keys import (
    SCOPES,
    SubscriberDirectory,
    check_name,
    check_scopes,
    hash_key,
    key_prefix,
    new_key,
    parse_expires,
)
from rollwatch.store.sqlite import SQLiteEventStore
from tests.publication.helpers import add_subscriber, revoke

pytestmark = pytest.mark.anyio


class TestKeys:
    def test_key_is_prefixed_256_bit_random(self) -> None:
        """A key is ``rw_`` and 32 random bytes in URL-safe base64; no two are alike."""
        keys = {new_key() for _ in range(1000)}
        assert len(keys) == 1000
        for k in list(keys)[:20]:
            assert k.startswith("rw_")
            raw = base64.urlsafe_b64decode(k[3:] + "=")
            assert len(raw) == 32

    def test_hash_is_sha256_and_prefix_is_short(self) -> None:
        """Only the SHA-256 and the first 10 characters are kept; the rest stays secret."""
        k = new_key()
        assert hash_key(k) == hashlib.sha256(k.encode()).hexdigest()
        assert key_prefix(k) == k[:10]
        assert len(k) - len(key_prefix(k)) >= 36  # > 210 bits never stored in clear

    def test_names_and_scopes_are_checked(self) -> None:
        """Bad names and unknown scopes are usage errors; no scope means every scope."""
        assert check_name("acme-labs.1") == "acme-labs.1"
        for bad in ("", "-x", "a b", "x" * 65, "a/b"):
            with pytest.raises(UsageError):
                check_name(bad)
        assert check_scopes([]) == list(SCOPES)
        assert check_scopes(["report", "feed", "feed"]) == ["feed", "report"]
        with pytest.raises(UsageError, match="'admin' is not one of"):
            check_scopes(["admin"])

    def test_expires_forms(self) -> None:
        """A date is the start of that day UTC; RFC 3339 keeps its offset; durations count from now."""
        now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        assert parse_expires("2026-12-31", now) == datetime(2026, 12, 31, tzinfo=UTC)
        assert parse_expires("2026-06-01T10:00:00+02:00", now) == datetime(2026, 6, 1, 8, tzinfo=UTC)
        assert parse_expires("2026-06-01T10:00:00", now) == datetime(2026, 6, 1, 10, tzinfo=UTC)
        assert parse_expires("90d", now) == now + timedelta(days=90)
        with pytest.raises(UsageError, match="in the past"):
            parse_expires("2026-01-01", now)
        with pytest.raises(UsageError, match="use a date"):
            parse_expires("next tuesday", now)


def _held_reads(reading: anyio.Event, go_on: anyio.Event) -> type[SQLiteEventStore]:
    """A SQLite log whose reads set ``reading``, then wait for ``go_on`` (a slow first read)."""

    class Held(SQLiteEventStore):
        async def subscriber_events(self, **kw: Any) -> list[Recorded]:
            reading.set()
            await go_on.wait()
            return await super().subscriber_events(**kw)

    return Held


class TestDirectory:
    async def test_verdicts(self, tmp_path: Path) -> None:
        """Known keys pass; missing, malformed, unknown, expired and revoked keys each say why."""
        async with SQLiteEventStore(tmp_path / "e.db") as store:
            good = await add_subscriber(store, "good")
            gone = await add_subscriber(store, "gone")
            old = await add_subscriber(store, "old", expires=datetime.now(UTC) + timedelta(hours=1))
            await revoke(store, "gone")
            d = SubscriberDirectory(store)
            ok = await d.authenticate(good)
            assert ok.subscriber is not None
            assert ok.subscriber.name == "good"
            assert "missing" in (await d.authenticate(None)).reason
            assert (await d.authenticate("Bearer nonsense")).reason == "unknown API key"
            assert (await d.authenticate(new_key())).reason == "unknown API key"
            # Same prefix, different secret: still unknown (the whole hash is compared).
            forged = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
            assert (await d.authenticate(forged)).reason == "unknown API key"
            assert "revoked" in (await d.authenticate(gone)).reason
            later = datetime.now(UTC) + timedelta(hours=2)
            assert "expired" in (await d.authenticate(old, now=later)).reason
            assert (await d.authenticate(old)).subscriber is not None

    async def test_a_request_during_the_first_read_gets_503_not_a_hang(self, tmp_path: Path) -> None:
        """The keys are read from the log alone, and the first read steps through every row (a
        minute or more at millions of events): a request meanwhile is answered 503 with
        ``Retry-After`` rather than held for that long, and served once the read is done."""
        reading, go_on = anyio.Event(), anyio.Event()
        async with _held_reads(reading, go_on)(tmp_path / "e.db") as store:
            key = await add_subscriber(store, "a")
            d = SubscriberDirectory(store)
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(d.refresh, force=True))
                await reading.wait()
                try:
                    with anyio.fail_after(5), pytest.raises(ServiceUnavailable) as refused:
                        await d.authenticate(key)
                finally:
                    go_on.set()
                assert refused.value.headers == {"Retry-After": "2"}
            assert (await d.authenticate(key)).subscriber is not None

    async def test_a_request_during_a_short_first_read_waits_for_it(self, tmp_path: Path) -> None:
        """A first read that ends within a second (any small log) is waited for, not a 503."""
        reading, go_on = anyio.Event(), anyio.Event()
        async with _held_reads(reading, go_on)(tmp_path / "e.db") as store:
            key = await add_subscriber(store, "a")
            d = SubscriberDirectory(store)
            got: list[object] = []

            async def ask() -> None:
                got.append((await d.authenticate(key)).subscriber)

            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(d.refresh, force=True))
                await reading.wait()
                tg.start_soon(ask)
                await wait_all_tasks_blocked()  # the request waits for the read
                go_on.set()
            assert got != [None]
            assert len(got) == 1
