"""Subscriber API keys: minted once, stored as a hash, checked in constant time.

A key is ``rw_`` followed by 32 random bytes from the OS CSPRNG in URL-safe base64
(``secrets.token_urlsafe(32)``: 43 characters, 256 bits). It is printed once by
``rollwatch subscribers add``; the log keeps only its SHA-256 and its first
characters (``key_prefix``, to tell keys apart in ``subscribers list`` and to find
the candidate without scanning every subscriber).

Why a plain SHA-256 and not bcrypt/scrypt/Argon2: slow, salted hashes exist to make
guessing *low-entropy* secrets (passwords) expensive after a leak. A key drawn
uniformly from 2**256 values cannot be guessed however fast the hash is, and no
precomputed table covers that space, so a salt adds nothing either. A slow hash
would only cost CPU on every request. The prefix we keep in clear reveals 7
characters (42 bits), leaving over 210 bits unknown.

The hash comparison uses ``hmac.compare_digest`` so the time it takes does not
depend on how many leading characters match.

:class:`SubscriberDirectory` is the running daemon's view of who may read the feed:
an in-memory map brought up to the log's head before every key is checked, so a
``subscribers revoke`` run in another process takes effect from the moment its event
is committed, on every keyed route. It is read from the log alone, from seq 0 (the
daemon does so at start, in the background): not from the subscribers projection, whose
rows someone holding that file could edit (a revocation undone, a key added) without
touching the log. The few subscriber events are found through an index of them alone
(:meth:`rollwatch.abc.EventStore.subscriber_events`: read only when its definition is
exactly the store's); the scrub compares them with those it reads from every row
(:meth:`SubscriberDirectory.check_seen`), and a difference closes every key.
Expiry is checked on every request, against the daemon's latest known time (never a wall
clock stepped back).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from rollwatch.abc import SUBSCRIBER_TYPES as _SUBSCRIBER_TYPES
from rollwatch.abc import EventStore
from rollwatch.errors import IntegrityError, ServiceUnavailable, UsageError
from rollwatch.events import (
    Recorded,
    SubscriberAdded,
    SubscriberRevoked,
    parse_rfc3339,
    rfc3339,
)

if TYPE_CHECKING:
    from rollwatch.publication.public import EventCheck

KEY_PREFIX = "rw_"
PREFIX_LEN = len(KEY_PREFIX) + 7
"""How many leading characters of a key are kept in clear (``rw_`` and 7 more)."""

SCOPES = ("feed", "rollouts", "report")
"""What a key may read: ``/v1/feed``, ``/v1/rollouts/{id}``, ``/v1/report`` (the default)."""

ALL_SCOPES = (*SCOPES, "ops")
"""Also ``ops``: the operator's routes (``/metrics`` in full); given only when asked for."""

SUBSCRIBER_TYPES = frozenset(_SUBSCRIBER_TYPES)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY = re.compile(r"^rw_[A-Za-z0-9_-]{43}$")


def new_key() -> str:
    """A fresh API key: ``rw_`` and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key``: all the log keeps of it (see the module docstring)."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """The leading characters of ``key`` that are kept in clear."""
    return key[:PREFIX_LEN]


def check_name(name: str) -> str:
    """``name`` if it is a valid subscriber name; a UsageError saying what is allowed otherwise."""
    if not _NAME.match(name):
        raise UsageError(
            f"subscriber name {name!r}: use letters, digits, '.', '_' or '-' (at most 64), "
            "starting with a letter or digit"
        )
    return name


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, deduplicated in the order of :data:`ALL_SCOPES`; the subscriber
    scopes (:data:`SCOPES`, never ``ops``) when none are given.

    Each item may list several scopes separated by commas or spaces (``feed,rollouts``,
    ``"feed rollouts"``), as ``subscribers list`` prints them; an empty item is an error.
    """
    wanted: list[str] = []
    for item in scopes:
        parts = [p for p in re.split(r"[\s,]+", item) if p]
        if not parts:
            raise UsageError(f"scope {item!r} is empty; give one or more of {', '.join(ALL_SCOPES)}")
        wanted += parts
    unknown = [s for s in wanted if s not in ALL_SCOPES]
    if unknown:
        raise UsageError(f"scope {unknown[0]!r} is not one of {', '.join(ALL_SCOPES)}")
    return [s for s in ALL_SCOPES if s in wanted] if wanted else list(SCOPES)


def parse_expires(text: str, now: datetime | None = None) -> datetime:
    """When a key stops working, from ``--expires``.

    Accepts a date (``2026-12-31``: the key stops working at the start of that day,
    UTC), an RFC 3339 timestamp (``2026-12-31T18:00:00+01:00``; without an offset it
    is UTC), or a duration from now (``90d``, ``12h``). A moment in the past is an error.
    """
    # Here, not at the top: listing `rollwatch subscribers`' options (``--help``) needs
    # this module, not the configuration's (pydantic).
    from rollwatch.config import parse_duration

    now = now or datetime.now(UTC)
    raw = text.strip()
    when: datetime | None = None
    with contextlib.suppress(ValueError):
        when = now + timedelta(seconds=parse_duration(raw))
    if when is None:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
                when = datetime.combine(date.fromisoformat(raw), datetime.min.time(), UTC)
            else:
                when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
        except ValueError:
            raise UsageError(
                f"--expires {text!r}: use a date (2026-12-31), an RFC 3339 time "
                "(2026-12-31T18:00:00Z) or a duration from now (90d)"
            ) from None
    try:
        # A time near either end of the calendar with an offset falls outside it in UTC
        # (9999-12-31T23:59:59-01:00 is in the year 10000): an OverflowError, a traceback.
        utc = when.astimezone(UTC)
    except OverflowError:
        raise UsageError(
            f"--expires {text!r} is outside the years 1-9999 in UTC; give a moment within them"
        ) from None
    if utc <= now:
        raise UsageError(f"--expires {text!r} is in the past ({rfc3339(utc)}); give a later moment")
    return utc


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One subscriber as the log describes it."""

    name: str
    key_hash: str
    key_prefix: str
    scopes: tuple[str, ...]
    expires: datetime | None
    revoked: bool = False

    def expired(self, now: datetime) -> bool:
        """Whether the key has stopped working at ``now``."""
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of checking one bearer key: a subscriber, or why not (a 401 message)."""

    subscriber: Subscriber | None
    reason: str = ""


LOAD_WAIT_S = 1.0
"""How long a keyed request waits for the first read of the keys before it gets a 503."""


@dataclass
class SubscriberDirectory:
    """Who may read, kept current from the log (``authenticate`` reads it up to its head)."""

    store: EventStore
    max_age: float = 0.5
    clock: Callable[[], datetime] | None = None
    """The time keys expire by (default: the wall clock). The daemon gives its release
    clock's :meth:`~rollwatch.publication.clock.ReleaseClock.decision_time`, the latest time
    it knows has passed: a wall clock stepped back two days opened a key that had expired
    (results under embargo included) for those two days."""
    _by_name: dict[str, Subscriber] = field(default_factory=dict)
    _by_prefix: dict[str, list[Subscriber]] = field(default_factory=dict)
    _cursor: int = 0
    loaded: bool = False
    """Whether the log has been read once (every row, on a log without the subscribers' index)."""
    _fresh_at: float = float("-inf")
    _lock: anyio.Lock = field(default_factory=anyio.Lock)
    _loaded: anyio.Event = field(default_factory=anyio.Event)
    check: EventCheck | None = None
    """Compares the subscriber events read with the leaves the Merkle tree absorbed when they
    were appended (the daemon's integrity service): a restart reads the keys at once and
    serves while its check at start runs, so a key edited into the log while the daemon was
    down opened the feed for as long as that check took."""
    applied: dict[int, str] = field(default_factory=dict)
    """The hash of every subscriber event applied, by seq: what the scrub compares with the
    subscriber events it finds reading every event (:meth:`check_seen`)."""
    closed: str | None = None
    """Why no key opens anything any more: the index the keys were read from left out (or
    added) a subscriber event that the scrub found in the log."""
    last_used: dict[str, datetime] = field(default_factory=dict)
    """When each subscriber's key last opened a route, in this process (not in the log:
    a read appends nothing). The console shows it."""

    async def refresh(self, *, force: bool = False) -> None:
        """Apply subscriber events appended since the last refresh (if older than ``max_age``)."""
        if not force and time.monotonic() - self._fresh_at < self.max_age:
            return
        async with self._lock:
            if not force and time.monotonic() - self._fresh_at < self.max_age:
                return
            started = time.monotonic()
            changed = False
            head = await self.store.head()
            events = await self.store.subscriber_events(after=self._cursor, until=head)
            if self.check is not None and events:
                # The check marks the daemon's health tampered, naming the seq.
                edited, _ = await self.check.changed(events, prove=False)
                if edited:
                    self.closed = f"the subscriber event at seq {edited[0]} was changed since it was appended"
                    self.loaded = True
                    self._loaded.set()
                    return
            for ev in events:
                self._apply(ev)
                self.applied[ev.seq] = ev.hash
                changed = True
            self._cursor = max(self._cursor, head)
            self.loaded = True
            self._loaded.set()
            if changed:
                self._by_prefix = {}
                for s in self._by_name.values():
                    self._by_prefix.setdefault(s.key_prefix, []).append(s)
            self._fresh_at = started

    async def up_to_head(self) -> None:
        """Apply every subscriber event up to the log's head as of this call.

        Reads only the head when the directory has already read that far (the usual case:
        one b-tree lookup per keyed request), else what was appended since, as ``refresh``.
        """
        if self._cursor < await self.store.head():
            await self.refresh(force=True)

    async def check_seen(self, seen: dict[int, str], until: int) -> None:
        """Compare the subscriber events the scrub found in the log's first ``until`` events
        (their hashes by seq) with those this directory applied; :class:`IntegrityError`
        naming the first seq that differs, and every key refused from then on.

        The keys are read through an index of those events alone: someone holding the
        log's file can leave a revocation out of it (its key works again) without touching
        a row, which no hash covers. The scrub reads every row."""
        if self._cursor < until:
            await self.refresh(force=True)
        mine = {seq: h for seq, h in self.applied.items() if seq <= until}
        differ = sorted(seq for seq in mine.keys() | seen.keys() if mine.get(seq) != seen.get(seq))
        if not differ:
            return
        seq = differ[0]
        if seq not in mine:
            reason = f"the subscriber event at seq {seq} is missing from the index the keys were read from"
        elif seq not in seen:
            reason = f"the index the keys were read from gives a subscriber event at seq {seq} the log lacks"
        else:
            reason = f"the subscriber event at seq {seq} read through the index differs from the log's"
        self.closed = reason
        raise IntegrityError(seq, reason)

    def _apply(self, rec: Recorded) -> None:
        ev = rec.event()
        if isinstance(ev, SubscriberAdded):
            self._by_name[ev.name] = Subscriber(
                name=ev.name,
                key_hash=ev.key_hash,
                key_prefix=ev.key_prefix,
                scopes=tuple(ev.scopes or SCOPES),
                expires=parse_rfc3339(ev.expires) if ev.expires else None,
            )
        elif isinstance(ev, SubscriberRevoked) and ev.name in self._by_name:
            name = ev.name
            old = self._by_name[name]
            self._by_name[name] = Subscriber(
                name=old.name,
                key_hash=old.key_hash,
                key_prefix=old.key_prefix,
                scopes=old.scopes,
                expires=old.expires,
                revoked=True,
            )

    async def authenticate(self, key: str | None, now: datetime | None = None) -> AuthResult:
        """The subscriber holding ``key``, or the reason the key is refused."""
        if not key:
            return AuthResult(None, "missing API key: send 'Authorization: Bearer rw_...'")
        if not _KEY.match(key):
            return AuthResult(None, "unknown API key")
        if self.closed is not None:
            raise ServiceUnavailable(
                "no key is accepted: the subscribers' index of the log was tampered with (the operator's /healthz)"
            )
        if not self.loaded and self._lock.locked():
            # The first read of the log (the daemon's, at start) is under way: a minute or
            # more on a log of millions of events, which a request should not hang for
            # (on a small log it is done in milliseconds: worth a short wait).
            with anyio.move_on_after(LOAD_WAIT_S):
                await self._loaded.wait()
        if not self.loaded and self._lock.locked():
            raise ServiceUnavailable(
                "the subscribers' keys are being read from the log; retry in 2 s", {"Retry-After": "2"}
            )
        # Every subscriber event up to the log's head as of now: a key works from the
        # moment its `subscribers add` is committed, and is refused from the moment its
        # revocation is, on every route (one head query when nothing is new).
        await self.up_to_head()
        digest = hash_key(key)
        match: Subscriber | None = None
        # Compare against every candidate (not stopping at the first) so that the time
        # taken does not tell which one matched.
        for s in self._by_prefix.get(key_prefix(key), []):
            if hmac.compare_digest(s.key_hash, digest):
                match = s
        if match is None:
            return AuthResult(None, "unknown API key")
        if match.revoked:
            return AuthResult(None, "this API key has been revoked")
        now = now or (self.clock() if self.clock is not None else datetime.now(UTC))
        if match.expired(now):
            assert match.expires is not None
            return AuthResult(None, f"this API key expired at {rfc3339(match.expires)}")
        self.last_used[match.name] = now
        return AuthResult(match)
