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

TREE_EDITED = "merkle.db was edited"
"""Words every finding of an edited ``merkle.db`` carries (``verify``'s, the scrub's, the signer's
and the checkpoint routes')."""

TAMPERED_PUBLIC = "the log or its Merkle tree was found changed since it was written (tampering)"
"""What anyone but the operator reads on ``/healthz`` for the findings themselves: which seq, which
file and what differs are the operator's (a finding's words name files and, at times, what an
event under embargo holds)."""

WITHHELD = (
    "the latest checkpoint is withheld: /public/checkpoint, /checkpoint, the proofs and the hash tiles"
    " answer 503, since the Merkle tree's record of it is not a checkpoint this log signed"
)
"""The reason ``/healthz`` gives while :attr:`Health.withheld` (to anyone: it names no file)."""

_WATCHES_PUBLIC = {
    "scrub": "the log is not being re-checked (the scrub cannot run)",
    "signer": "no checkpoint can be signed",
}


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
    withheld: str | None = None
    """The latest checkpoint record the checkpoint routes refuse to serve (``seq N``), while they
    do (:class:`rollwatch.integrity.routes.ServedCheckpoint`): ``/healthz`` says so."""
    stalled: dict[str, str] = field(default_factory=dict)
    """A watch that cannot do its work now (the scrub, the signer), with why: each makes
    ``/healthz`` degraded until its next success. Not a finding either: a pass that cannot
    run checks nothing, so whatever it would have found stays unseen meanwhile, and the
    operator must hear of it rather than read ``ok`` (someone who moved a file the scrub
    needs, or stopped its process, stopped every later check)."""
    standby: str | None = None
    """What a node of a shared log that gave up signing waits for (its key retired by a
    rotation) while another node signs: ``/healthz`` says it, not degraded."""

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

    def as_json(self, *, operator: bool = True) -> dict[str, object]:
        """What ``/healthz`` answers: to the operator, the findings and every watch's error as
        they are; to anyone else (``operator=False``) the status and what kind of trouble only
        (a finding's words name files, seqs and what differs; a watch's error quotes paths and
        the store's messages; a witness's error its URL and the network's words)."""
        withheld = [WITHHELD] if self.withheld is not None else []
        out: dict[str, object]
        if self.ok:
            out = {"status": "ok"}
        elif operator:
            out = {
                "status": "tampered",
                "first_bad_seq": self.first_seq,
                "reasons": [*self.reasons, *withheld],
            }
        else:
            out = {"status": "tampered", "reasons": [TAMPERED_PUBLIC, *withheld]}
        refusals = self.refusals() if self.refusals is not None else []
        if operator:
            degraded = [*refusals, *self.stalled.values()]
        else:
            degraded = [f"{len(refusals)} witness(es) refused a checkpoint"] if refusals else []
            degraded += [_WATCHES_PUBLIC.get(w, f"the {w} cannot do its work") for w in self.stalled]
        if degraded:
            if out["status"] == "ok":
                out["status"] = "degraded"
            reasons = out.get("reasons")
            out["reasons"] = [*(reasons if isinstance(reasons, list) else []), *degraded]
        if self.standby is not None:
            out["standby"] = self.standby
        if self.witness is not None:
            witness = self.witness()
            out["witness"] = witness if operator else _witness_public(witness)
        return out


def _witness_public(status: dict[str, object]) -> dict[str, object]:
    """The witnesses' status without what only the operator reads: each witness's URL (a host
    of the operator's network, maybe) and the words of its refusal or error (the URL again,
    the network's messages); whether it refused or failed stays."""
    out = dict(status)
    witnesses = status.get("witnesses")
    if isinstance(witnesses, list):
        shown: list[object] = []
        for w in witnesses:
            if isinstance(w, dict):
                w = {k: v for k, v in w.items() if k != "url"}
                w["refused"] = "refused a checkpoint" if w.get("refused") else None
                w["error"] = "could not be reached" if w.get("error") else None
            shown.append(w)
        out["witnesses"] = shown
    return out
