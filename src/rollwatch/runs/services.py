"""What a run is made of: the plug-in points it is typed against, and their wiring.

A run sees its collaborators only through the Protocols below, written in terms of the
pipeline's real types (``Problem`` in, ``Prompt`` to the provider, ``Answer`` back,
``Score`` from the scorer): ``ProblemSet``, ``ProviderClient`` and ``ScoringPool``
satisfy them, and so does any other implementation a test or an operator plugs in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from rollwatch.abc import AttemptLog, EventStore, WorkBoard
from rollwatch.config import Config
from rollwatch.errors import ProviderError
from rollwatch.problems import Problem
from rollwatch.progress import fmt_secs
from rollwatch.projections import ProjectionDB
from rollwatch.providers.base import Answer, Prompt, Usage
from rollwatch.scoring.base import Score
from rollwatch.work import LocalBoard


class ProblemSetLike(Protocol):
    """A named set of problems and how each is asked (``rollwatch.problems.ProblemSet``)."""

    @property
    def name(self) -> str: ...
    @property
    def problems(self) -> Sequence[Problem]: ...
    def get(self, problem_id: str) -> Problem:
        """The problem ``problem_id``; KeyError when the set has none."""
        ...

    def prompt(self, problem: Problem) -> str:
        """The text sent to a model for ``problem``."""
        ...


class ScorerLike(Protocol):
    """Judges one answer (``rollwatch.scoring.ScoringPool``).

    Contract: whatever the answer holds, a verdict comes back; an answer that breaks
    the sandbox is a failed ``Score`` ("sandbox error: ..."). An exception raised here
    is a fault of the scorer itself: the run records it on the rollout as a scorer
    error and goes on.
    """

    async def score(self, problem: Problem, answer: str) -> Score:
        """The verdict on ``answer`` (a model's whole text) to ``problem``."""
        ...


class ProviderLike(Protocol):
    """Asks a model for answers, retrying inside (``rollwatch.providers.ProviderClient``)."""

    @property
    def disabled(self) -> ProviderError | None:
        """Why the run gives up on the provider now (a rejected key), or None (a
        ``ProviderClient`` disabled so is None again while a fire tries its key anew)."""
        ...

    async def rollout(
        self, model: str, prompt: Prompt, params: dict[str, object], log: AttemptLog
    ) -> Answer | None:
        """One answer to ``prompt``, every attempt recorded on ``log``; None when none came."""
        ...

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for ``usage`` at the configured prices of ``model``; None if it has none."""
        ...


@runtime_checkable
class TriesAgain(Protocol):
    """A provider that, disabled by a rejected key, can be tried again (``ProviderClient``)."""

    def try_again(self) -> None:
        """A schedule of the provider fired: its next rollout tries the key anew."""
        ...


@runtime_checkable
class ListsModels(Protocol):
    """A provider that can say which models it serves (``ProviderClient`` can)."""

    async def served_models(self) -> list[str] | None:
        """The models it serves; None when it cannot tell now."""
        ...


@dataclass
class RunServices:
    """What a run needs, wired by the composition root (``daemon.py`` or the CLI)."""

    config: Config
    store: EventStore
    projections: ProjectionDB
    providers: dict[str, ProviderLike]
    problem_sets: dict[str, ProblemSetLike]
    scorer: ScorerLike
    node: str
    locks_dir: Path
    board: WorkBoard = field(default_factory=LocalBoard)
    """Shares the rollouts of a run among the processes driving it (see ``rollwatch.work``)."""
    decision_time: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    """The time publication decisions are dated by: the daemon's and the scoring commands'
    :meth:`rollwatch.publication.clock.ReleaseClock.decision_time`, never earlier than what
    the process knows has passed (a wall clock stepped back decided embargoes ended already)."""


@dataclass
class BatchProgress:
    """One open provider batch of a run, as its last poll described it."""

    state: str
    requests: int
    submitted_at: float
    """Epoch seconds (the ``BatchSubmitted`` event's time)."""
    done: int = 0
    """Requests the provider has finished (answered or failed)."""

    def expected_end(self, now: float) -> float | None:
        """When the batch should end at its pace so far (epoch seconds); None before
        the provider reports any request done."""
        if self.done <= 0 or self.requests <= 0:
            return None
        elapsed = max(0.0, now - self.submitted_at)
        return self.submitted_at + elapsed * self.requests / min(self.done, self.requests)


@dataclass
class RunState:
    """Live figures of a run, for the progress bar and the metrics (the summary in
    RunFinished is counted from the log, so it covers every node and every resume)."""

    total: int = 0
    done: int = 0
    answered: int = 0
    scored: int = 0
    passed: int = 0
    cost_usd: float = 0.0
    scoring: int = 0
    """Answers waiting for or being scored."""
    batches: dict[str, BatchProgress] = field(default_factory=dict)
    """Open provider batches of the run (``batch = true``) by batch id."""
    batches_ended: set[str] = field(default_factory=set)

    def batch_figures(self, now: float) -> dict[str, str]:
        """The batches for a progress line: open ones by state with their requests done,
        the ended count, and when the last open one should end (``-`` while no batch
        has reported progress); empty when the run has no batches."""
        if not self.batches and not self.batches_ended:
            return {}
        by_state: dict[str, list[BatchProgress]] = {}
        for b in self.batches.values():
            by_state.setdefault(b.state, []).append(b)
        parts = [
            f"{len(bs)} {state} {sum(b.done for b in bs)}/{sum(b.requests for b in bs)}"
            for state, bs in sorted(by_state.items())
        ]
        if self.batches_ended:
            parts.append(f"{len(self.batches_ended)} ended")
        ends = [b.expected_end(now) for b in self.batches.values()]
        known = [e for e in ends if e is not None]
        eta = "-"
        if known and len(known) == len(ends):
            eta = fmt_secs(max(known) - now)
        elif known:
            eta = f">{fmt_secs(max(known) - now)}"
        return {"batches": ", ".join(parts), "batch_eta": eta if self.batches else "done"}


class RunLock:
    """An exclusive ``flock`` on a run, so two processes never drive the same run.

    The kernel drops it when the process dies, so a crashed run is free to resume.
    """

    def __init__(self, locks_dir: Path, run_id: str) -> None:
        locks_dir.mkdir(parents=True, exist_ok=True)
        self.path = locks_dir / f"{run_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; False when one does."""
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            # The holder before us deletes the file as it lets go (see release): a lock
            # taken on the file it deleted is no lock, since the next process creates and
            # locks a new one. Such locks let four processes hold a run at once (a probe
            # of the daemon's, `rollwatch run`, a resume): take the file that is there.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)

    def __del__(self) -> None:
        # Dropped while held (a run started and never driven), it lets go as a file object
        # closes: the run is then free to resume, as after a crash.
        with contextlib.suppress(OSError):
            self.release()

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Let go of the lock (a no-op when not held)."""
        if self._fd is not None:
            # Deleted while still held: whoever opens the name next makes a new file (and
            # whoever locks the old one after us sees it is gone, see acquire).
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
