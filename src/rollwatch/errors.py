"""Every exception rollwatch raises on purpose, and only here.

    RollwatchError
    ├── ConfigError                 bad configuration (exit code 2)
    ├── UsageError                  a command was used wrongly (exit code 2)
    │   ├── AddressInUse            server.listen is taken by another process
    │   ├── ClockSkewed             this host's clock is far from the shared log's database's
    │   ├── ForeignCheckpointKey    a shared log's checkpoints are signed by a key this node lacks
    │   └── MissingCheckpointKey    a signed log with no checkpoint key (restored without it)
    ├── StoreError                  the event log could not do what was asked
    │   ├── ConcurrencyConflict     a stream moved on since the caller read it
    │   ├── DamagedLog              SQLite cannot read the log file's pages
    │   ├── NotLeading              an append made under a leadership lost since
    │   ├── IntegrityError          the stored log is not what was appended (tampering)
    │   └── UnknownEventType        an event type this version cannot read
    │       └── NewerSchema         an event of a schema newer than this version reads
    ├── ProblemError                a problem file or problem set is invalid
    ├── SandboxError                the sandbox could not run (not: the code failed)
    │   └── IsolationUnavailable    namespace isolation is required but missing
    ├── ProviderError               a provider call failed; carries kind/status/retryable
    ├── KeyRetired                  a shared log's checkpoint leader holds a key the log retired
    ├── InvalidProof                a Merkle proof is malformed or names sizes that do not exist
    ├── InvalidNote                 a signed note or checkpoint is malformed or badly signed
    ├── UnfitFile                   a key, origin or witness file is no regular file or too large (also a ValueError)
    ├── TilePathError               a path is not a C2SP tlog-tiles tile path (also a ValueError)
    ├── EntryTooLong                an event too long for an entry bundle (also a ValueError)
    ├── WitnessRefused              a witness will not cosign a submission (its HTTP status)
    ├── AuditFailure                one check of ``rollwatch audit`` failed (exit code 1)
    └── HTTPError                   a request gets an error response (JSON error body)
        ├── BadRequest              400: a query parameter or path segment is invalid
        ├── Unauthorized            401: missing, unknown, expired or revoked key
        ├── Forbidden               403: the key or peer may not read this route
        ├── NotFound                404: nothing (visible) by that name
        ├── TooManyRequests         429: over the key's rate limit
        └── ServiceUnavailable      503: a part the route needs is not available

Messages name the thing and say what to do about it. Helpers that never leave their
module (a pydantic validator's ``ValueError``, a sandbox program's own signals) are
not listed: nothing outside catches them.
"""

from __future__ import annotations

import sqlite3


class RollwatchError(Exception):
    """Base class of every error rollwatch raises on purpose."""


class ConfigError(RollwatchError):
    """Raised when the configuration is invalid; the message lists every problem."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{path}: invalid configuration:\n{lines}")


class UsageError(RollwatchError):
    """Raised when a command is given arguments it cannot act on."""


class AddressInUse(UsageError):
    """Raised when the address the HTTP server should listen on is taken by another process."""

    def __init__(self, address: str, setting: str = "server.listen") -> None:
        self.address = address
        super().__init__(
            f"{address} is already in use; stop whatever listens there "
            f"(another `rollwatch serve`?) or set {setting} to another address"
        )


class ClockSkewed(UsageError):
    """Raised when ``serve`` starts on a shared log with a clock far from the database's."""

    def __init__(self, skew: float, limit: float) -> None:
        self.skew = skew
        side = "ahead of" if skew > 0 else "behind"
        super().__init__(
            f"this host's clock is {abs(skew):.0f} s {side} the clock of the log's database server "
            f"(more than the {limit:.0f} s allowed): its events would carry wrong times and its "
            "embargoes would end early or late for every node; set the clock right (NTP) and start again"
        )


class ForeignCheckpointKey(UsageError):
    """Raised when a node on a shared log holds another checkpoint key than the one that
    signs the log's checkpoints (it would sign a second series)."""

    def __init__(self, ours: str, seq: int, node: str) -> None:
        self.ours = ours
        self.seq = seq
        super().__init__(
            f"the log's checkpoints (the latest at seq {seq}, signed by node {node or '?'}) are signed by "
            f"another key than this node's ({ours}): every node sharing a log needs the same checkpoint key "
            "(copy integrity.key_file, or the checkpoint-key credential, from the node that signs)"
        )


class MissingCheckpointKey(UsageError):
    """Raised when ``serve`` finds a log whose checkpoints were signed, and no checkpoint key
    (a log restored from a backup without its key, a key file deleted): a new key would
    not continue the log's checkpoints, and the scrub would call every one a forgery."""

    def __init__(self, key_file: str, checkpoints: int) -> None:
        super().__init__(
            f"the log holds {checkpoints} signed checkpoint(s), but there is no checkpoint key at {key_file}: "
            "put back the key that signed them (checkpoint.key, and any checkpoint.key.retired-*, from the "
            "backup of the state folder; or the checkpoint-key credential) and start again; a new key cannot "
            "continue this log's checkpoints"
        )


class StoreError(RollwatchError):
    """Raised when the event store cannot carry out an operation."""


class ConcurrencyConflict(StoreError):
    """Raised when an append expected a stream version that is no longer current."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream!r} is at version {actual}, the append expected {expected}; "
            "nothing was written: re-read the stream and decide again"
        )


class NotLeading(StoreError):
    """Raised when an append made by a leader (schedules, checkpoints) comes after another
    process took the leadership over: nothing was written."""

    def __init__(self, role: str) -> None:
        self.role = role
        super().__init__(
            f"this process no longer leads {role!r} (another process took it over): nothing was written"
        )


class IntegrityError(StoreError):
    """Raised when the stored log differs from what was appended (the first bad seq)."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"event log integrity check failed at seq {seq}: {reason}")


class UnknownEventType(StoreError):
    """Raised when an event's type or schema version has no class or upcaster."""

    seq: int | None = None
    """The event's seq, when raised reading a stored event."""


class NewerSchema(UnknownEventType):
    """Raised when an event was written under a schema newer than this version reads: a
    newer rollwatch wrote the log (a downgrade). Waiting does not help; upgrading does."""


class ProblemError(RollwatchError):
    """Raised when a problem or problem set cannot be loaded."""


class SandboxError(RollwatchError):
    """Raised when the sandbox itself fails (not when the code inside it fails)."""


class IsolationUnavailable(SandboxError):
    """Raised when namespace isolation is required by the config but not available."""


class ProviderError(RollwatchError):
    """Raised when one attempt at a provider fails.

    ``kind`` is one of rate_limited, server_error, overloaded, timeout, connection,
    bad_response, auth, invalid_request, not_found, cancelled. ``retry_after`` is the
    wait in seconds the provider asked for, when it said so. ``provider_wide`` is set
    when the response showed the provider's whole budget used up (a rate-limit window
    with nothing remaining and a reset time, or Google's ``QuotaFailure``): then every
    request of the provider waits, not only this one. ``generated`` is set when the
    provider had already sent part of an answer (a stream that failed after its first
    token): it may bill the attempt, whatever the kind of the failure.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        provider_wide: bool = False,
        generated: bool = False,
    ) -> None:
        self.kind = kind
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.provider_wide = provider_wide
        self.generated = generated
        self.message = message
        super().__init__(f"{kind}" + (f" (HTTP {status})" if status else "") + f": {message}")


class KeyRetired(RollwatchError):
    """Raised by a checkpointer told to ``step_down``: the log retired its key (and its key file
    does not hold the one in force), so it cannot sign; the leader of a shared log gives up
    the "checkpoints" leadership for a node that holds the key in force."""

    def __init__(self, key: str, in_force: str) -> None:
        super().__init__(f"the log rotated from key {key} to {in_force}")
        self.key = key
        self.in_force = in_force


class InvalidProof(RollwatchError):
    """Raised when a Merkle proof is malformed or asked for sizes that do not exist."""


class InvalidNote(RollwatchError):
    """Raised when a signed note or checkpoint is malformed or carries no valid signature of the expected key."""


class UnfitFile(RollwatchError, ValueError):
    """Raised when what is at a small file's path (a key, an origin, a witness file) cannot be
    that file: not a regular file, or larger than it can be (the message says which)."""


class TilePathError(RollwatchError, ValueError):
    """Raised when a path is not a tile or entry-bundle path of the tlog-tiles spec."""


class EntryTooLong(RollwatchError, ValueError):
    """Raised when an event's canonical bytes exceed what an entry bundle can hold (65,535)."""

    def __init__(self, seq: int, length: int) -> None:
        super().__init__(
            f"event {seq} is {length} bytes, more than the 65535 an entry bundle can hold; "
            "its leaf hash is in the level-0 tile as usual"
        )
        self.seq = seq
        self.length = length


class WitnessRefused(RollwatchError):
    """Raised when a witness cannot cosign a submission: ``status`` and the answer's text."""

    def __init__(self, status: int, message: str, media_type: str = "text/plain; charset=utf-8") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.media_type = media_type


class AuditFailure(RollwatchError):
    """Raised when one audit check fails; ``check`` names it (fetch, keep, key, checkpoint, consistency, inclusion)."""

    def __init__(self, check: str, message: str) -> None:
        self.check = check
        self.message = message
        super().__init__(f"{check}: {message}")


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}
"""The ``error`` word of the HTTP error body, by status."""


class HTTPError(RollwatchError):
    """Raised inside a route handler to answer with ``status`` and the JSON error body.

    The body is ``{"error": code, "message": message}`` for every 4xx and 5xx answer
    (see :mod:`rollwatch.web.errors`); ``headers`` go on the response.
    """

    status = 500

    @property
    def code(self) -> str:
        """The error body's ``error``: a stable word for the status (``bad_request``, …)."""
        return HTTP_CODES.get(self.status, "error")

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        self.message = message
        self.headers = headers or {}
        super().__init__(message)


class BadRequest(HTTPError):
    """Raised when a query parameter or path segment is invalid; the message names it."""

    status = 400


class Unauthorized(HTTPError):
    """Raised when a request's key is missing, unknown, expired or revoked."""

    status = 401


class Forbidden(HTTPError):
    """Raised when the key (or the peer) may not read the route."""

    status = 403


class NotFound(HTTPError):
    """Raised when nothing visible to the caller has the requested name."""

    status = 404


class TooManyRequests(HTTPError):
    """Raised when a key is over its rate limit (with ``Retry-After``)."""

    status = 429


class ServiceUnavailable(HTTPError):
    """Raised when a part the route needs is not available in this process."""

    status = 503


def storage_failure(error: BaseException) -> str | None:
    """The message of a storage failure we can name (the log or a SQLite file refusing a
    write: a full disk, a lock held by another process, a read-only file), also when every
    error in a group is one; None for anything else. A loop that retries logs such a failure
    as one line, without a traceback: it is the operator's to fix, not a bug."""
    if isinstance(error, BaseExceptionGroup):
        found = [storage_failure(e) for e in error.exceptions]
        return found[0] if all(found) else None
    if type(error) in (StoreError, DamagedLog) or isinstance(error, sqlite3.OperationalError):
        return str(error)
    return None


class DamagedLog(StoreError):
    """Raised when SQLite finds the event log file's pages are not a database's: a plain copy
    of a live WAL database, a torn write, a bad disk, or someone editing its bytes. The scrub
    names it as a finding (a restart and ``verify`` refuse such a log)."""


def damaged_log(path: object, error: BaseException) -> StoreError:
    """The error for an event log file SQLite finds damaged (``error``): named, with the way
    back. A plain copy of a live WAL database, a torn write or a bad disk make one."""
    return DamagedLog(
        f"the event log {path} is damaged ({error}): SQLite cannot read it; restore it from a "
        "backup made with SQLite's online backup (README, Backups), not a plain copy of the live file"
    )


def seq_below_one(seq: int) -> IntegrityError:
    """The finding for a row stored at ``seq`` 0 or below (the log's seqs start at 1)."""
    return IntegrityError(
        seq,
        f"a row at seq {seq}: the log's seqs start at 1, so no read, hash or check sees it"
        " (rollwatch never writes such a row)",
    )
