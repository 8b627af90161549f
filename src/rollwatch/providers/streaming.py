"""Streaming (server-sent events) for the three wire formats.

A streamed request asks for the same answer as a whole one; the events are folded
back into the body a whole answer would have had, and that body goes through the
adapter's own ``parse``, so a streamed answer is recorded exactly like a whole one.

* OpenAI Chat Completions: ``"stream": true`` and ``"stream_options": {"include_usage":
  true}``; ``data:`` chunks with ``choices[0].delta`` (``content``, and
  ``reasoning_content``/``reasoning`` where hosts send reasoning), the usage in the last
  chunk, then ``data: [DONE]``.
* Anthropic Messages: ``"stream": true``; ``message_start`` (model, id, input usage),
  ``content_block_delta`` (``text_delta``, ``thinking_delta``), ``message_delta`` (stop
  reason, output usage), ``message_stop``; an ``error`` event mid-stream is an error.
* OpenAI Responses: ``"stream": true``; ``response.output_text.delta`` and
  ``response.reasoning_summary_text.delta`` events, then ``response.completed`` with
  the whole response (``response.failed``/``error``: an error).
* Gemini: ``:streamGenerateContent?alt=sse``; each ``data:`` is a
  ``GenerateContentResponse`` with the next parts; the one with a ``finishReason`` ends it.

When a stream is whole, the same rule for the three formats: its final data came (the
finish or stop reason; for OpenAI also the usage, which ``include_usage`` sends after the
finish) and then its end, either the end marker (``[DONE]``, ``message_stop``,
``response.completed``) or the clean end of the HTTP body (a chunked body's last chunk,
its ``Content-Length`` reached, the close of a body the close delimits). Several
OpenAI-compatible hosts omit ``[DONE]``; Gemini has no end marker at all, so its stream
is read to the body's end (usage sent after the finish is read). A stream that ends
before its final data, or whose end marker comes with no finish or stop reason, was
cut; a body that breaks (reset, short of its length, a chunked body closed before its
last chunk) was cut whatever came before: a retryable ``bad_response``, never a
truncated answer to score. A body that never ends after the final data is a timeout.
An event's ``data:`` lines are joined with newlines, as SSE says. The client enforces an
idle timeout between chunks and records the time to the first token.
"""

from __future__ import annotations

from typing import Any

from rollwatch.errors import ProviderError
from rollwatch.providers.base import WireRequest, as_dict, bad_response, classify_error, excerpt, loads
from rollwatch.providers.retry import google_retry_delay


class StreamFold:
    """Folds one stream's events into the body of a whole answer (see the module docstring)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.done = False
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.first_token = False
        """Set once a chunk carried answer or reasoning text."""
        self._meta: dict[str, Any] = {}
        self._usage: dict[str, Any] = {}
        self._usage_seen = False
        self._finish: Any = None

    def feed(self, data: str) -> None:
        """One ``data:`` payload; ProviderError for an error event."""
        if self.kind == "openai" and data.strip() == "[DONE]":
            self._ended()
            return
        try:
            event = loads(data)
        except ValueError:
            if self._after_gemini_finish():
                return
            raise bad_response("a stream event is not JSON") from None
        if not isinstance(event, dict):
            if self._after_gemini_finish():
                return
            raise bad_response("a stream event is not a JSON object")
        getattr(self, f"_{self.kind}")(event)

    def _after_gemini_finish(self) -> bool:
        """Gemini's finish reason is as good as an end marker for what follows it: junk
        after it is ignored, as data after ``[DONE]`` is (only usage is read there)."""
        return self.kind == "gemini" and self._finish is not None

    def _ended(self) -> None:
        """The end marker (OpenAI's ``[DONE]``, Anthropic's ``message_stop``). Both vendors
        send a finish/stop reason before it; an end without one is a proxy closing politely
        after losing its upstream mid-answer: a cut answer, never a whole one to score."""
        if self._finish is None:
            raise bad_response("the stream ended with no finish or stop reason: the answer was cut off")
        self.done = True

    def body_ended(self) -> None:
        """The HTTP body ended cleanly before any end marker: the stream is whole if its
        final data came (the module docstring), else a ``bad_response`` (cut off)."""
        if self.done:
            return
        if self.kind == "openai_responses" or (self._finish is None and "promptFeedback" not in self._meta):
            raise bad_response(
                "the stream ended before its end (no finish or stop reason): the answer was cut off"
            )
        if self.kind == "openai" and not self._usage_seen:
            # ``include_usage`` puts the usage in a chunk after the finish: the stream
            # was cut between them, and the answer's cost would be unknown.
            raise bad_response(
                "the stream ended before its end (a finish reason, but no usage and no [DONE]): "
                "the answer was cut off"
            )
        self.done = True

    def _add(self, text: Any, reasoning: Any) -> None:
        if isinstance(text, str) and text:
            self.text.append(text)
            self.first_token = True
        if isinstance(reasoning, str) and reasoning:
            self.reasoning.append(reasoning)
            self.first_token = True

    def _openai(self, event: dict[str, Any]) -> None:
        if "error" in event:
            raise _stream_error(event)
        for key in ("id", "model", "system_fingerprint"):
            if event.get(key):
                self._meta[key] = event[key]
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
            self._usage_seen = True
        # Each choice streams as ``choices[0]`` of its own chunks, told apart by ``index``:
        # only the first choice's (index 0, or none given) is the answer, never a mix.
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index") not in (0, None):
                continue
            delta = as_dict(choice.get("delta"))
            self._add(delta.get("content"), delta.get("reasoning_content") or delta.get("reasoning"))
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
            break

    def _openai_responses(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("error", "response.failed"):
            err = as_dict(as_dict(event.get("response")).get("error")) or event
            raise _stream_error({"error": err if "message" in err else {"message": str(kind)}})
        if kind == "response.output_text.delta":
            self._add(event.get("delta"), None)
        elif kind == "response.reasoning_summary_text.delta":
            self._add(None, event.get("delta"))
        elif kind in ("response.completed", "response.incomplete"):
            self._meta = dict(as_dict(event.get("response")))
            self.done = True

    def _anthropic(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "error":
            raise _stream_error(event)
        if kind == "message_start":
            # Counts already given (a ``message_delta`` sent before it, or this event sent
            # twice) stand: its own output count is a placeholder (1) that would undo them.
            message = as_dict(event.get("message"))
            for k in ("id", "model"):
                self._meta.setdefault(k, message.get(k))
            for k, v in as_dict(message.get("usage")).items():
                self._usage.setdefault(k, v)
        elif kind == "content_block_delta":
            delta = as_dict(event.get("delta"))
            if delta.get("type") == "text_delta":
                self._add(delta.get("text"), None)
            elif delta.get("type") == "thinking_delta":
                self._add(None, delta.get("thinking"))
        elif kind == "message_delta":
            self._finish = as_dict(event.get("delta")).get("stop_reason") or self._finish
            self._usage.update({k: v for k, v in as_dict(event.get("usage")).items() if v is not None})
        elif kind == "message_stop":
            self._ended()

    def _gemini(self, event: dict[str, Any]) -> None:
        if "error" in event:
            raise _stream_error(event)
        for key in ("modelVersion", "responseId"):
            if event.get(key):
                self._meta[key] = event[key]
        if isinstance(event.get("usageMetadata"), dict):
            self._usage = event["usageMetadata"]
        candidates = event.get("candidates")
        if isinstance(candidates, list) and candidates:
            # Each candidate (``candidateCount``) comes with its ``index`` (left out when
            # 0): only the first one's parts are the answer, its finish reason the end.
            for candidate in candidates:
                if not isinstance(candidate, dict) or candidate.get("index") not in (0, None):
                    continue
                for part in as_dict(candidate.get("content")).get("parts") or []:
                    if isinstance(part, dict):
                        if part.get("thought") is True:
                            self._add(None, part.get("text"))
                        else:
                            self._add(part.get("text"), None)
                if candidate.get("finishReason"):
                    self._finish = candidate["finishReason"]
                break
        elif as_dict(event.get("promptFeedback")).get("blockReason"):
            self._meta["promptFeedback"] = event["promptFeedback"]
        # No end marker: the stream ends with its body (``body_ended``), so usage sent in
        # a chunk after the finish is read, and a body cut after the finish is no answer.

    def body(self) -> dict[str, Any]:
        """The whole-answer body these events add up to (for the adapter's ``parse``)."""
        text, reasoning = "".join(self.text), "".join(self.reasoning)
        if self.kind == "openai":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if reasoning:
                message["reasoning_content"] = reasoning
            return {
                **self._meta,
                "choices": [{"index": 0, "message": message, "finish_reason": self._finish}],
                "usage": self._usage,
            }
        if self.kind == "openai_responses":
            return self._meta  # the whole response came with response.completed
        if self.kind == "anthropic":
            content: list[dict[str, Any]] = []
            if reasoning:
                content.append({"type": "thinking", "thinking": reasoning})
            content.append({"type": "text", "text": text})
            return {**self._meta, "content": content, "stop_reason": self._finish, "usage": self._usage}
        if "promptFeedback" in self._meta:
            return {**self._meta, "usageMetadata": self._usage}
        parts: list[dict[str, Any]] = []
        if reasoning:
            parts.append({"text": reasoning, "thought": True})
        parts.append({"text": text})
        return {
            **self._meta,
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": self._finish}],
            "usageMetadata": self._usage,
        }


#: Params that ask for reasoning: such requests may think for minutes before a byte.
_REASONING_PARAMS = frozenset(
    {"reasoning_effort", "thinking", "thinking_budget", "include_thoughts", "thinking_level", "reasoning"}
)
#: Above this many output tokens a whole answer may take longer than proxies wait.
STREAM_ABOVE_TOKENS = 32_000


def wants_stream(setting: bool | None, params: dict[str, Any]) -> bool:
    """Whether to stream: ``setting`` when the operator set ``stream``; otherwise (auto)
    when the params ask for reasoning or allow more than :data:`STREAM_ABOVE_TOKENS`
    output tokens, where a silent connection risks an intermediary's idle timeout."""
    if setting is not None:
        return setting
    if _REASONING_PARAMS & params.keys():
        return True
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = params.get(key)
        if isinstance(v, int) and v > STREAM_ABOVE_TOKENS:
            return True
    return False


def streamed(kind: str, wire: WireRequest) -> WireRequest:
    """``wire`` asking for a stream, as ``kind``'s API wants it asked."""
    if kind == "openai":
        body = {**wire.body, "stream": True, "stream_options": {"include_usage": True}}
        return WireRequest(wire.path, body, dict(wire.headers))
    if kind in ("anthropic", "openai_responses"):
        return WireRequest(wire.path, {**wire.body, "stream": True}, dict(wire.headers))
    path = wire.path.replace(":generateContent", ":streamGenerateContent") + "?alt=sse"
    return WireRequest(path, wire.body, dict(wire.headers))


def _stream_error(event: dict[str, Any]) -> ProviderError:
    """The failure an error event stands for, classified as its HTTP status would be (a
    bad key mid-stream is ``auth``, which disables the provider); one that names no status
    we know is a retryable ``server_error``."""
    err = as_dict(event.get("error"))
    kind, retryable = classify_error(err) or ("server_error", True)
    word = str(err.get("type") or err.get("status") or kind)
    return ProviderError(
        kind,
        f"an error in the stream: {excerpt(str(err.get('message', word)))}",
        retryable=retryable,
        retry_after=google_retry_delay(event),
    )
