"""The built-in ``reference`` provider: answers with the problem's reference solution.

No network and no key. It exists so the whole path (schedule → run → log → scorer →
feed) can be checked end to end, and so a fresh install has something to show: every
reference answer must pass its scorer. The answer is the solution in a ``python``
fence, as a model would write it, so it goes through the same extraction as theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollwatch.errors import ProviderError
from rollwatch.providers.base import Answer, Prompt, Usage

#: The one model the reference provider serves: it has no other answers to give, so a
#: run of "gpt-5" on it would record reference solutions under gpt-5's name.
MODEL = "reference"


class ReferenceAdapter:
    """Answers locally; the client records it like any other attempt."""

    kind = "reference"
    models = (MODEL,)

    def request(self, model: str, prompt: Prompt, params: Mapping[str, Any]) -> dict[str, Any]:
        """What is recorded as "sent": the model and the prompt (nothing leaves the process)."""
        body: dict[str, Any] = {"model": model, "prompt": prompt.text}
        if prompt.system:
            body["system"] = prompt.system
        if params:
            body["params"] = dict(params)
        return body

    def answer(self, model: str, prompt: Prompt) -> Answer:
        """The reference solution in a ``python`` fence; ``invalid_request`` if there is none."""
        if prompt.reference_solution is None:
            raise ProviderError(
                "invalid_request",
                "this problem has no reference solution: the reference provider cannot answer it",
            )
        solution = prompt.reference_solution.rstrip("\n")
        return Answer(
            text=f"```python\n{solution}\n```\n",
            reasoning=None,
            finish_reason="stop",
            usage=Usage(),
            request_id=None,
            latency_ms=0.0,
            model=model,
        )
