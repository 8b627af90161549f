"""OpenAI's Responses API (``api = "responses"`` on an OpenAI provider), for reasoning models.

``POST {base_url}/responses`` with ``Authorization: Bearer KEY``: ``{"model", "input":
[user message], "instructions"?: system, **params}``. Params pass through as the API
names them (``reasoning = { effort = "high", summary = "auto" }``,
``max_output_tokens``, ...); ``max_tokens``/``max_completion_tokens`` are renamed to
``max_output_tokens``, and a plain ``reasoning_effort`` becomes ``reasoning.effort``.

In the answer, ``output`` items of type ``message`` give the text (their
``output_text`` parts), items of type ``reasoning`` give the reasoning (their summary
texts: OpenAI returns summaries, not the raw chain of thought). Usage: ``input_tokens``
(``input_tokens_details.cached_tokens`` cached), ``output_tokens`` with
``output_tokens_details.reasoning_tokens``. An ``incomplete`` response finishes with
``incomplete:REASON`` (e.g. ``incomplete:max_output_tokens``). Errors and rate-limit
headers are Chat Completions' (see ``openai.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollwatch.config import RESERVED_PARAMS
from rollwatch.errors import ProviderError
from rollwatch.providers.base import (
    Headers,
    Parsed,
    Prompt,
    Usage,
    WireRequest,
    as_dict,
    bad_response,
    check_params,
    token_count,
)
from rollwatch.providers.openai import OpenAIAdapter

_RESERVED = RESERVED_PARAMS["responses"]


class OpenAIResponsesAdapter(OpenAIAdapter):
    """The Responses API wire format (see the module docstring)."""

    kind = "openai_responses"

    def build(self, model: str, prompt: Prompt, params: Mapping[str, Any], system: str | None) -> WireRequest:
        """``{"model", "input", "instructions"?, **params}``."""
        check_params(params, _RESERVED)
        rest = dict(params)
        for alias in ("max_tokens", "max_completion_tokens"):
            if alias in rest:
                rest.setdefault("max_output_tokens", rest.pop(alias))
                rest.pop(alias, None)
        effort = rest.pop("reasoning_effort", None)
        if effort is not None:
            reasoning = dict(as_dict(rest.get("reasoning")))
            reasoning.setdefault("effort", effort)
            rest["reasoning"] = reasoning
        body: dict[str, Any] = {"model": model, "input": [{"role": "user", "content": prompt.text}]}
        if system:
            body["instructions"] = system
        body.update(rest)
        return WireRequest("/responses", body)

    def parse(self, data: Any, headers: Headers) -> Parsed:
        """Message text, reasoning summaries, status and usage."""
        if not isinstance(data, dict):
            raise bad_response("the body is not a JSON object")
        if isinstance(data.get("error"), dict) and data["error"]:
            err = data["error"]
            raise ProviderError(
                "server_error", f"the response failed: {err.get('message', '')}", retryable=True
            )
        output = data.get("output")
        if not isinstance(output, list):
            raise bad_response("the body has no output list")
        texts: list[str] = []
        thoughts: list[str] = []
        for item in output:
            if not isinstance(item, dict):
                raise bad_response("an output item is not an object")
            if item.get("type") == "message":
                for part in item.get("content") or []:
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        texts.append(str(part.get("text", "")))
            elif item.get("type") == "reasoning":
                for part in item.get("summary") or []:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        thoughts.append(part["text"])
        usage = as_dict(data.get("usage"))
        status = data.get("status")
        finish = (
            status
            if status != "incomplete"
            else f"incomplete:{as_dict(data.get('incomplete_details')).get('reason')}"
        )
        return Parsed(
            text="".join(texts),
            reasoning="\n\n".join(thoughts) or None,
            finish_reason=finish if isinstance(finish, str) else None,
            usage=Usage(
                input_tokens=token_count(usage, "input_tokens"),
                output_tokens=token_count(usage, "output_tokens", may_be_unknown=True),
                reasoning_tokens=token_count(
                    as_dict(usage.get("output_tokens_details")), "reasoning_tokens", may_be_unknown=True
                ),
                cached_tokens=token_count(
                    as_dict(usage.get("input_tokens_details")), "cached_tokens", may_be_unknown=True
                ),
            ),
            request_id=headers.get("x-request-id") or _str(data.get("id")),
            model=_str(data.get("model")),
        )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
