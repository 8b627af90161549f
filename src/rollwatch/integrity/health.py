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
    stalled: dict[str, str] = field(default_factory=dict)
    """A watch that cannot do its work now (the scrub, the signer), with why: each makes
    ``/healthz`` degraded until its next success. Not a finding either: a pass that cannot
    run checks nothing, so whatever it would have found stays unseen meanwhile, and the
    operator must hear of it rather than read ``ok`` (someone who moved a file the scrub
    needs, or stopped its process, stopped every later check)."""

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

    def stall(self, watch: str, why: str) -> None:
        """``watch`` could not do its work: ``/healthz`` is degraded, naming it, until :meth:`resume`."""
        self.stalled[watch] = why

    def resume(self, watch: str) -> None:
        """``watch`` did its work again."""
        self.stalled.pop(watch, None)

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
        degraded = [*(self.refusals() if self.refusals is not None else []), *self.stalled.values()]
        if degraded:
            if out["status"] == "ok":
                out["status"] = "degraded"
            reasons = out.get("reasons")
            out["reasons"] = [*(reasons if isinstance(reasons, list) else []), *degraded]
        if self.witness is not None:
            out["witness"] = self.witness()
        return out
