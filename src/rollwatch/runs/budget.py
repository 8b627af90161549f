"""A run's spending limit, kept on the work board because several nodes spend it.

Before a rollout starts it reserves the most it could cost (every output token the
params allow, a generous token count for the prompt); when it ends it settles what
it really cost. A rollout whose reservation cannot fit is not started, so the run
never spends past its budget, whatever the answers cost. A model without a price has
no enforceable budget: its rollouts reserve nothing (and the run logs it once).

What a provider reports is not taken on trust. An answer that gives no count of its
output tokens (none, null, NaN, a string) settles its whole reservation, since what it
cost is unknown; so does each attempt that failed once the provider may have answered
(``rollout.MAY_BE_BILLED``: a body we could not read, a timeout). Those amounts are in
the answer's or the attempt's event (``budget_usd``), so a run resumed after a restart
counts them with the recorded costs. Once an answer cost
more than its reservation (more tokens than the params allow), later rollouts of that
model reserve what the dearest one cost, so only the rollouts already in flight when
the first such answer came in can pass the budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
import structlog

from rollwatch.abc import WorkBoard
from rollwatch.config import Price
from rollwatch.work import Chunk

#: What a rollout is assumed to ask for when its params name no output limit.
DEFAULT_MAX_OUTPUT_TOKENS = 32_000


def max_output_tokens(params: Mapping[str, object]) -> int:
    """The output tokens ``params`` allow (under any provider's name for the limit)."""
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens", "maxOutputTokens"):
        v = params.get(key)
        if isinstance(v, int) and v > 0:
            return v
    return DEFAULT_MAX_OUTPUT_TOKENS


@dataclass
class Budget:
    """Reservations against ``limit`` USD (None: no limit) for the rollouts of one run."""

    board: WorkBoard
    limit: float | None
    prices: Mapping[str, Price]
    """Per model; a model without one has no enforceable budget."""
    params: Mapping[str, object]
    """The run's request params (they bound the output tokens)."""
    batch: bool = False
    """The run goes through the batch API: reservations are at the batch prices."""
    exhausted: bool = False
    """A rollout could not be reserved: the run starts no more."""
    _settled: anyio.Event = field(default_factory=anyio.Event, repr=False)
    _dearest: dict[str, float] = field(default_factory=dict, repr=False)
    """Per model: the most one of its rollouts cost in this run, when past its reservation."""
    _unknown_said: bool = field(default=False, repr=False)

    def unknown_cost(self, log: structlog.stdlib.BoundLogger, rollout_id: str) -> None:
        """Say once per run that an answer gave no count of its output tokens."""
        if not self._unknown_said:
            self._unknown_said = True
            log.warning(
                "usage_unknown",
                rollout_id=rollout_id,
                consequence="the provider gave no count of the output's or the prompt's tokens:"
                " the budget counts the most such an answer could cost",
            )

    def enforceable(self, model: str) -> bool:
        """Whether rollouts of ``model`` count against the limit (it has a price)."""
        return model in self.prices

    def worst_case(self, model: str, prompt: str) -> float:
        """The most one rollout of ``model`` asked ``prompt`` could cost, in USD."""
        price = self.prices[model]
        p_in, p_out = price.input, price.output
        if self.batch:
            p_in = price.batch_input if price.batch_input is not None else price.input / 2
            p_out = price.batch_output if price.batch_output is not None else price.output / 2
        # A generous token count for the prompt: fewer than one token per two characters
        # in practice.
        worst = ((len(prompt) // 2 + 1000) * p_in + max_output_tokens(self.params) * p_out) / 1e6
        return max(worst, self._dearest.get(model, 0.0))

    async def reserve(self, chunk: Chunk, model: str, prompt: str) -> float | None:
        """Reserve the most this rollout could cost; None when the budget cannot allow it
        (then ``exhausted`` is set). 0.0 when there is nothing to enforce."""
        if self.limit is None or not self.enforceable(model):
            return 0.0
        worst = self.worst_case(model, prompt)
        while True:
            ok = await self.board.reserve(chunk, worst, self.limit)
            if ok:
                return worst
            if ok is None:
                self.exhausted = True
                return None
            # Rollouts in flight (here or on other nodes) may cost less than reserved:
            # wait for one to settle (on a shared board, one elsewhere is not announced
            # here, so look again every half second).
            with anyio.move_on_after(0.5 if self.board.shared else float("inf")):
                await self._settled.wait()

    async def settle(self, chunk: Chunk, reserved: float, cost: float) -> None:
        """A rollout that reserved ``reserved`` ended having cost ``cost`` (shielded: the
        reservation is given back even when the rollout was cancelled)."""
        model = chunk.unit.model
        if reserved and cost > reserved:
            self._dearest[model] = max(self._dearest.get(model, 0.0), cost)
        try:
            if reserved:
                with anyio.CancelScope(shield=True):
                    await self.board.settle(chunk, reserved, cost)
        finally:
            self._settled.set()
            self._settled = anyio.Event()
