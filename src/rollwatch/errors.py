"""Every exception rollwatch raises on purpose.

    RollwatchError
    ├── ConfigError                 bad configuration (exit code 2)
    ├── StoreError                  the event log could not do what was asked
    │   ├── ConcurrencyConflict     a stream moved on since the caller read it
    │   ├── IntegrityError          the stored log is not what was appended (tampering)
    │   └── UnknownEventType        an event type this version cannot read
    ├── ProblemError                a problem file or problem set is invalid
    ├── SandboxError                the sandbox could not run (not: the code failed)
    │   └── IsolationUnavailable    namespace isolation is required but missing
    ├── ProviderError               a provider call failed; carries kind/status/retryable
    └── UsageError                  a command was used wrongly (exit code 2)

Messages name the thing and say what to do about it.
"""

from __future__ import annotations


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


class IntegrityError(StoreError):
    """Raised when the stored log differs from what was appended (the first bad seq)."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"event log integrity check failed at seq {seq}: {reason}")


class UnknownEventType(StoreError):
    """Raised when an event's type or schema version has no class or upcaster."""


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
    wait in seconds the provider asked for, when it said so.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.kind = kind
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.message = message
        super().__init__(f"{kind}" + (f" (HTTP {status})" if status else "") + f": {message}")
