"""Whether the log still holds what was appended, as the running daemon last found it.

One :class:`Health` per daemon, shared by whoever must stop when the log was tampered
with: the checkpointer (signs nothing more), the release job (releases nothing more)
and ``/healthz`` (503 with the reasons). The first finding is logged once, as an
ERROR naming the seq; the daemon keeps serving what was already public.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rollwatch.errors import IntegrityError
from rollwatch.log import get_logger

log = get_logger(__name__)


@dataclass(slots=True)
class Health:
    """The daemon's verdict on its own log: ok until some check finds it changed."""

    reasons: list[str] = field(default_factory=list)
    first_seq: int | None = None
    _reported: bool = False
    witness: Callable[[], dict[str, object]] | None = None
    """The witnesses' status (:meth:`rollwatch.integrity.witnessing.Witnessing.status`), when configured."""
    refusals: Callable[[], list[str]] | None = None
    """The witnesses that refused a checkpoint, with what that means
    (:meth:`~rollwatch.integrity.witnessing.Witnessing.refusal_reasons`): each makes
    ``/healthz`` degraded. Not a finding in the log itself, so signing and releases go on."""

    @property
    def ok(self) -> bool:
        """True while no check has found the log tampered with."""
        return not self.reasons

    def note(self, error: IntegrityError, *, found_by: str) -> None:
        """Record a finding at once (everything that checks :attr:`ok` stops); log it with :meth:`report`."""
        reason = f"seq {error.seq}: {error.reason} (found by the {found_by})"
        if reason in self.reasons:
            return
        if self.first_seq is None or error.seq < self.first_seq:
            self.first_seq = error.seq
        self.reasons.append(reason)

    def report(self) -> None:
        """Log the findings as one ERROR naming the first bad seq (once, however often called)."""
        if self.ok or self._reported:
            return
        self._reported = True
        log.error(
            "log_tampered",
            seq=self.first_seq,
            reasons=list(self.reasons),
            consequence="no more checkpoints or releases; serving what was public, read-only",
        )

    def tampered(self, error: IntegrityError, *, found_by: str) -> None:
        """:meth:`note` and :meth:`report` in one."""
        self.note(error, found_by=found_by)
        self.report()

    def as_json(self) -> dict[str, object]:
        """What ``/healthz`` answers."""
        out: dict[str, object] = (
            {"status": "ok"}
            if self.ok
            else {"status": "tampered", "first_bad_seq": self.first_seq, "reasons": list(self.reasons)}
        )
        refused = self.refusals() if self.refusals is not None else []
        if refused:
            if out["status"] == "ok":
                out["status"] = "degraded"
            reasons = out.get("reasons")
            out["reasons"] = [
                *(reasons if isinstance(reasons, list) else []),
                *refused,
            ]
        if self.witness is not None:
            out["witness"] = self.witness()
        return out
