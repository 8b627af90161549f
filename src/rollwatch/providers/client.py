"""One configured provider: an adapter behind shared limits, retries and the attempt log.

A :class:`ProviderClient` is made once per ``[[providers]]`` entry and shared by every
run that uses the provider, so its limits (``limits.py``) are the provider's, not a
run's. ``rollout`` is the only call a run makes:

1. wait for a slot (shared pause, AIMD concurrency window, request and token rates);
2. ``log.requested``, send, then ``log.responded`` or ``log.failed``;
3. on a retryable failure, release the slot, back off (full jitter, at least what the
   provider asked for) and go again — until ``max_attempts`` or ``max_rollout_time``.

``max_rollout_time`` starts when the rollout's first request gets its slot: time
queued behind other rollouts of the same provider is the run's business, not this
rollout's. A 429 or overload narrows the provider's window gently and delays only its
own rollout by the wait it asked for; a 429 showing the provider's whole budget used up
(a window at 0 with a reset) pauses every rollout of the provider until the reset and
cuts harder (see ``limits.py``).
A rejected key (401/403, Gemini's ``API_KEY_INVALID``, 402 out of credits, OpenAI's
``insufficient_quota``) disables the client: one ERROR log line, ``rejected`` and
``disabled`` set, and every later ``rollout`` returns None at once, with no request and
no event. A rollout that was backing off when that happened also returns None without
another event.

A disabled client is tried again when one of its schedules next fires, by the clock or
by ``rollwatch schedules trigger`` (:meth:`try_again`, called by the daemon for every
run, batch or not): ``disabled`` reads None, the key is read anew from where the
configuration says, and the first rollout (or, in a batch run, the first batch's create:
:meth:`admit`) that comes is the try: one request, retried only as any request is, up to
``max_attempts`` when it fails retryably; every other rollout or batch waits for its
answer. An answer enables the client again (INFO ``provider_enabled``); anything else
(the key missing or malformed, rejected again, no answer) keeps it disabled with one
WARNING ``provider_still_disabled`` naming what this try got, and the rollouts that
waited return None as before. So a key that stays rejected costs one request per fire,
never a retry storm.

Secrets: the key lives only in this object and in the headers of the requests it
sends. Recorded requests are the JSON bodies (the key is a header), error messages
are excerpts of provider bodies with the key (and anything key-shaped) masked, and
URLs never carry it (Gemini takes it in ``x-goog-api-key``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import anyio
import anyio.to_thread
import httpx

from rollwatch.abc import AttemptLog, Clock, WireAdapter
from rollwatch.config import ProviderConfig
from rollwatch.errors import ConfigError, ProviderError
from rollwatch.log import get_logger
from rollwatch.providers.anthropic import AnthropicAdapter
from rollwatch.providers.base import (
    Answer,
    AnyioClock,
    Parsed,
    Prompt,
    Usage,
    WireRequest,
    bad_response,
    excerpt,
    loads,
    redact,
)
from rollwatch.providers.batch import BATCH_APIS, BatchAPI, BatchState, Submitted
from rollwatch.providers.gemini import GeminiAdapter
from rollwatch.providers.limits import ProviderLimits, Slot
from rollwatch.providers.openai import OpenAIAdapter
from rollwatch.providers.openai_responses import OpenAIResponsesAdapter
from rollwatch.providers.reference import ReferenceAdapter
from rollwatch.providers.retry import full_jitter
from rollwatch.providers.streaming import StreamFold, streamed, wants_stream

ADAPTERS: dict[str, type[WireAdapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
}

Admission = Literal["send", "try", "refused"]
"""What :meth:`ProviderClient.admit` says of a request about to go."""
_B = TypeVar("_B", BatchState, Submitted, str | None)

#: Error kinds after which the provider is paused and slowed down as a whole.
_PACING_KINDS = frozenset({"rate_limited", "overloaded"})
#: How long a failure is given to be recorded once its rollout is being cancelled.
_SHIELD_S = 5.0
_USER_AGENT = "rollwatch (+https://github.com/rollwatch)"
#: Connections per httpx client (see :class:`_Pools` for why not one big pool).
CONNECTIONS_PER_POOL = 4
#: A whole answer's body, decoded, is refused past this (a gzip bomb, a runaway body):
#: a retryable ``bad_response`` rather than a daemon out of memory.
MAX_BODY_BYTES = 64 * 2**20
#: The same for a batch's results (a download, or Gemini's operation with its answers
#: inline): a whole batch of answers, so larger; still not a daemon out of memory.
MAX_RESULTS_BYTES = 2**30
#: Every answer being read at once, in all, across this process's providers: what
#: ``MAX_BODY_BYTES`` alone leaves open is 64 MiB times ``max_concurrency`` (twice over
#: while parsed). Past it, the answer whose bytes would pass it is refused, a retryable
#: ``bad_response``, and tried again once others are done; honest answers are kilobytes.
MAX_IN_FLIGHT_BYTES = 256 * 2**20
#: A key this long or longer is masked wherever it appears in a provider's answer (see
#: ``ProviderClient._mask``).
MASK_FROM = 16


class ByteBudget:
    """The bytes of answers being read at once (see :data:`MAX_IN_FLIGHT_BYTES`).

    One event loop reads every answer, so a plain count needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        """The most held at once (for tests and the curious)."""

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        """A lease for one answer's bytes, all given back when the block ends."""
        lease = Lease(self)
        try:
            yield lease
        finally:
            self.used -= lease.held
            lease.held = 0


class Lease:
    """One answer's share of a :class:`ByteBudget`."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, n: int) -> None:
        """Count ``n`` more bytes of this answer; ``bad_response`` if the budget would pass."""
        b = self.budget
        if b.used + n > b.limit:
            raise bad_response(
                f"answers being read hold {b.used // 2**20} MiB, and this one's "
                f"{(self.held + n) // 2**20} MiB would pass the {b.limit // 2**20} MiB allowed in all"
            )
        b.used += n
        self.held += n
        b.peak = max(b.peak, b.used)


ANSWERS_IN_FLIGHT = ByteBudget(MAX_IN_FLIGHT_BYTES)
"""The budget every :class:`ProviderClient` of this process shares, by default."""


@dataclass(frozen=True, slots=True)
class ProviderStats:
    """A snapshot of one provider's counters, for ``/metrics``."""

    provider: str
    requests: int
    """Requests sent (attempts that reached the network)."""
    responses: int
    """Attempts that produced an answer."""
    errors: dict[str, int]
    """Failed attempts by error kind."""
    rollouts_answered: int
    rollouts_failed: int
    latency_ms_sum: float
    """Sum of answered attempts' latency (divide by ``responses`` for the mean)."""
    latency_ms_max: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    in_flight: int
    window: int
    """The AIMD concurrency window now (``max_concurrency`` when never rate-limited)."""
    rate_factor: float
    """The fraction of the configured request/token rates in force now."""
    slowdowns: int
    """How many times a 429 or overload cut the window and rates."""
    paused_s: float
    """Seconds until the provider-wide pause ends (0 when not paused)."""
    disabled: bool


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    responses: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    failed: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0


class ProviderClient:
    """The rollouts of one configured provider (see the module docstring).

    Use as an async context manager: entering reads the key (a missing key is a
    ``ConfigError`` naming where it was looked for) and opens the HTTP client.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        answers_in_flight: ByteBudget = ANSWERS_IN_FLIGHT,
    ) -> None:
        """``answers_in_flight``: the byte budget of answers being read, shared with every
        other client of the process by default."""
        self.config = config
        self._in_flight = answers_in_flight
        self.name = config.name
        self.rejected: ProviderError | None = None
        """Why the provider was disabled (a rejected key), until an answer comes again."""
        self._retry = False
        """A schedule fired while disabled: the next rollout tries the key again."""
        self._probe: anyio.Event | None = None
        """Set while that one rollout is under way; the others wait for it."""
        self._try_got: ProviderError | None = None
        """What the try under way got last, when it failed (the WARNING names it)."""
        self._clock = clock or AnyioClock()
        self._rng = rng or random.Random()
        self._transport = transport
        self._reference = ReferenceAdapter() if config.kind == "reference" else None
        self._adapter: WireAdapter | None = (
            None
            if config.kind == "reference"
            else OpenAIResponsesAdapter()
            if config.api == "responses"
            else ADAPTERS[config.kind]()
        )
        self.limits = ProviderLimits(
            max_concurrency=config.max_concurrency,
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            clock=self._clock,
        )
        self._key: str | None = None
        self._pools: _Pools | None = None
        self._unpriced: set[str] = set()
        self._n = _Counters()

    def __repr__(self) -> str:
        return f"ProviderClient(name={self.name!r}, kind={self.config.kind!r})"

    @property
    def disabled(self) -> ProviderError | None:
        """Why a run gives up on this provider now: ``rejected``, except once a schedule
        fired since (:meth:`try_again`) and until that try is answered."""
        if self.rejected is None or self._retry or self._probe is not None:
            return None
        return self.rejected

    def try_again(self) -> None:
        """One of the provider's schedules fired: if it is disabled, its next rollout
        reads the key anew and sends the one request that decides (module docstring)."""
        if self.rejected is not None and self._probe is None:
            self._retry = True

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[Admission]:
        """Whether a rollout, or a batch's create, may send now (see the module docstring):
        ``send`` while enabled; while disabled, ``try`` for the one try a fire allowed (the
        try ends with the block: :meth:`enable` once answered, :meth:`try_failed` for each
        failure), ``send`` for those that waited for a try that enabled the provider, and
        ``refused`` otherwise."""
        if self.rejected is None:
            yield "send"
            return
        probe = self._probe is None  # no try under way: this one would be it
        if not await self._may_send():
            yield "refused"
            return
        if not probe:
            yield "send"
            return
        try:
            yield "try"
        finally:
            self._tried()

    def try_failed(self, error: ProviderError) -> None:
        """The try under way got ``error`` (the WARNING names the last one)."""
        if self._probe is not None:
            self._try_got = error

    async def _may_send(self) -> bool:
        """While disabled: whether this rollout may go on. It waits for the try under way
        and goes on if that enabled the provider, or is the try itself (False when the key
        read anew is missing or malformed)."""
        if self._probe is not None:
            await self._probe.wait()
            return self.rejected is None
        if not self._retry:
            return False
        self._retry = False
        self._probe = anyio.Event()
        self._try_got = None
        try:
            key = await anyio.to_thread.run_sync(self.config.read_key)
        except BaseException:  # cancelled: the rollouts waiting for the try must not wait for ever
            self._tried()
            raise
        if not key:
            self._tried(_missing_key(self.config))
            return False
        self._key = key
        return True

    def _tried(self, why: str | None = None) -> None:
        """The try ended: enabled (``rejected`` cleared by an answer) or still disabled,
        with ``why`` (default: what this try got; the rejection is named only when the
        try got nothing else, as when it was cancelled)."""
        probe, self._probe = self._probe, None
        got, self._try_got = self._try_got, None
        if probe is not None:
            probe.set()
        if self.rejected is not None:
            get_logger(__name__).warning(
                "provider_still_disabled",
                provider=self.name,
                reason=why or self._clean(str(got or self.rejected)),
                retry="when one of its schedules next fires, or `rollwatch schedules trigger`",
            )

    async def __aenter__(self) -> Self:
        if self._adapter is None:
            return self
        key = self.config.read_key()
        if not key:
            raise ConfigError(f"providers.{self.name}", [_missing_key(self.config)])
        self._key = key
        # Loading the CA bundle takes tens of milliseconds: not on the event loop.
        ssl_context = await anyio.to_thread.run_sync(httpx.create_ssl_context)
        self._pools = _Pools(self.config, self._transport, ssl_context)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        pools, self._pools = self._pools, None
        self._key = None
        if pools is not None:
            with anyio.CancelScope(shield=True):
                await pools.aclose()

    # -- the one call a run makes ------------------------------------------------------

    async def rollout(
        self, model: str, prompt: Prompt, params: dict[str, Any], log: AttemptLog
    ) -> Answer | None:
        """Ask ``model`` for one answer to ``prompt``, retrying inside; record every attempt.

        Returns the answer, or None when the rollout failed for good (after
        ``log.failed(..., final=True)``) or the provider is disabled (see ``disabled``).
        """
        if self._reference is not None:
            return await self._reference_rollout(model, prompt, params, log)
        async with self.admit() as may:
            if may == "refused":
                return None
            return await self._rollout(model, prompt, params, log, probe=may == "try")

    async def _rollout(
        self, model: str, prompt: Prompt, params: dict[str, Any], log: AttemptLog, *, probe: bool
    ) -> Answer | None:
        """``rollout`` once the provider may be asked; ``probe``: this is the one request
        of a disabled provider's try (see the module docstring)."""
        adapter, pools, key = self._adapter, self._pools, self._key
        if adapter is None or pools is None or key is None:
            raise RuntimeError("use the ProviderClient as `async with ProviderClient(...)`")
        system = prompt.system if prompt.system is not None else self.config.system_prompt
        stream = wants_stream(self.config.stream, params)
        try:
            wire = adapter.build(model, prompt, params, system)
            if stream:
                wire = streamed(adapter.kind, wire)
            content = _encode(wire.body)
        except ProviderError as e:
            if probe:
                self.try_failed(e)
            await self._fail(log, 1, e, final=True)
            return None
        headers = {"content-type": "application/json", **wire.headers, **adapter.auth_headers(key)}
        url = self.config.url + wire.path
        # Roughly four bytes a token: only a first reservation, corrected by the answer.
        estimate = len(content) / 4 if self.config.tokens_per_minute else 0.0
        deadline = math.inf
        attempt = 0
        while True:
            attempt += 1
            answer: Answer | None = None
            async with self.limits.slot(estimate) as slot:
                if self.rejected is not None and not probe:
                    return None
                now = self._clock.now()
                if attempt == 1:
                    deadline = now + self.config.max_rollout_time
                if now >= deadline:
                    err = ProviderError(
                        "timeout",
                        f"max_rollout_time ({self.config.max_rollout_time:g}s) passed while "
                        "waiting for the provider's limits; nothing was sent",
                        retryable=True,
                    )
                    if probe:
                        self.try_failed(err)
                    await self._fail(log, attempt, err, final=True)
                    return None
                await log.requested(attempt, wire.body)
                self._n.requests += 1
                time_limit = min(self.config.timeout, deadline - now)
                lease = pools.take()
                try:
                    http = pools.clients[lease]
                    send = self._send_stream if stream else self._send
                    with self._in_flight.lease() as held:
                        answer = await send(adapter, http, url, content, headers, time_limit, held)
                except ProviderError as e:
                    error = e
                    # Feedback goes in while the slot is held, so that no waiting rollout
                    # can slip a request past a pause or a disabled key.
                    delay = self._after_failure(model, slot, error, attempt)
                    if probe:
                        self.try_failed(error)
                except anyio.get_cancelled_exc_class():
                    with anyio.move_on_after(_SHIELD_S, shield=True):
                        cancelled = ProviderError(
                            "cancelled", "the rollout was cancelled with its request in flight"
                        )
                        await self._fail(log, attempt, cancelled, final=True)
                    raise
                else:
                    cost = self._succeeded(model, slot, answer)
                    if probe:
                        self.enable(model)
                finally:
                    pools.give(lease)
            # Recording and backing off happen without the slot: others may use it.
            if answer is not None:
                await log.responded(attempt, answer, cost)
                return answer
            final = (
                not error.retryable
                or attempt >= self.config.max_attempts
                or self._clock.now() + delay >= deadline
            )
            await self._fail(log, attempt, error, final=final)
            if final:
                return None
            await self._clock.sleep(delay)
            if self.rejected is not None and not probe:
                return None

    # -- batch APIs (``providers/batch.py``; driven by ``runs/batches.py``) -----------

    def batch_api(self) -> BatchAPI:
        """The batch API of this provider's kind; ConfigError when it has none."""
        make = BATCH_APIS.get(self.config.kind)
        if make is None or self._adapter is None:
            raise ConfigError(
                f"providers.{self.name}",
                [f"batch: kind {self.config.kind!r} has no batch API rollwatch speaks"],
            )
        return make(self._adapter)

    def build(self, model: str, prompt: Prompt, params: dict[str, Any]) -> WireRequest:
        """The request a synchronous rollout would send (``invalid_request`` on bad params)."""
        if self._adapter is None:
            raise ProviderError("invalid_request", f"provider {self.name!r} builds no requests")
        system = prompt.system if prompt.system is not None else self.config.system_prompt
        wire = self._adapter.build(model, prompt, params, system)
        _encode(wire.body)  # what JSON cannot hold fails here, as it would when sent
        return wire

    async def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        results: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        """One authenticated call to ``base_url + path`` (or to ``path`` when it is a whole
        URL on the configured origin, as Anthropic's ``results_url``; another origin is a
        non-retryable ``bad_response`` and gets no request); transport failures are
        retryable ``connection``/``timeout`` errors with the key redacted. The body is
        read up to :data:`MAX_BODY_BYTES` decoded (``results``: a batch's results, up to
        :data:`MAX_RESULTS_BYTES`); past it, a retryable ``bad_response``."""
        adapter, pools, key = self._adapter, self._pools, self._key
        if adapter is None or pools is None or key is None:
            raise RuntimeError("use the ProviderClient as `async with ProviderClient(...)`")
        base = self.config.url.rstrip("/")
        if path.startswith(("http://", "https://")):
            url = path
            there, here = httpx.URL(url), httpx.URL(base)
            if (there.scheme, there.host, there.port) != (here.scheme, here.host, here.port):
                # Never send the key anywhere but the origin the operator configured.
                raise ProviderError(
                    "bad_response",
                    f"the provider pointed at another origin ({there.scheme}://{there.host}:{there.port}); "
                    "not following it with the key",
                )
        else:
            url = base + path
        all_headers = {**(headers or {}), **adapter.auth_headers(key)}
        self._n.requests += 1
        try:
            with anyio.fail_after(self.config.timeout):
                async with pools.clients[0].stream(
                    method, url, content=content, headers=all_headers
                ) as response:
                    body = await _read_body(response, MAX_RESULTS_BYTES if results else MAX_BODY_BYTES)
        except (TimeoutError, httpx.TimeoutException):
            raise ProviderError("timeout", f"{method} {path}: no answer in time", retryable=True) from None
        except httpx.HTTPError as e:
            message = f"{method} {path}: {type(e).__name__}: {self._clean(str(e))}"
            raise ProviderError("connection", message, retryable=True) from None
        return response.status_code, dict(response.headers.items()), self._scrub(body)

    # -- one attempt -----------------------------------------------------------------

    async def _send_stream(
        self,
        adapter: WireAdapter,
        http: httpx.AsyncClient,
        url: str,
        content: bytes,
        headers: dict[str, str],
        time_limit: float,
        held: Lease,
    ) -> Answer:
        """One streamed attempt (``providers/streaming.py``): the events folded into a
        whole answer; a stream silent for ``stream_idle_timeout``, ended before its final
        data or whose body broke before its end marker is a retryable failure, never a
        truncated answer."""
        fold = StreamFold(adapter.kind)
        try:
            return await self._read_stream(adapter, http, url, content, headers, time_limit, held, fold)
        except ProviderError as e:
            # Part of the answer came before the failure: the provider may bill it.
            e.generated = e.generated or fold.first_token
            raise

    async def _read_stream(
        self,
        adapter: WireAdapter,
        http: httpx.AsyncClient,
        url: str,
        content: bytes,
        headers: dict[str, str],
        time_limit: float,
        held: Lease,
        fold: StreamFold,
    ) -> Answer:
        start = time.perf_counter()
        ttft: float | None = None
        idle = self.config.stream_idle_timeout
        key = self._mask or "\0"  # a stream echoing the key has it masked, as a body has
        got: dict[str, str] = {}
        answering = False
        try:
            with anyio.fail_after(time_limit):
                async with http.stream("POST", url, content=content, headers=headers) as response:
                    got = dict(response.headers.items())
                    rid = got.get("x-request-id") or got.get("request-id")
                    if not 200 <= response.status_code < 300:
                        body = self._scrub(await _read_body(response, held=held))
                        raise self._with_context(
                            adapter.error(response.status_code, got, body, time.time()), rid
                        )
                    answering = True
                    # Closed with the response, not left to the garbage collector.
                    # An event is its ``data:`` lines joined by newlines, dispatched at the
                    # blank line that ends it (SSE); one the stream's end leaves open is
                    # dispatched too, as servers that omit the last blank line mean it.
                    data: list[str] = []

                    def dispatch() -> None:
                        try:
                            fold.feed("\n".join(data).strip().replace(key, "[redacted]"))
                        except ProviderError as e:
                            raise self._with_context(e, rid) from None
                        data.clear()

                    async with contextlib.aclosing(_read_lines(response, held, idle)) as reads:
                        async for lines in reads:
                            for line in lines:
                                if line.startswith("data:"):
                                    data.append(line[5:])
                                elif not line and data:
                                    dispatch()
                                    if fold.done:
                                        break
                            if ttft is None and fold.first_token:
                                ttft = (time.perf_counter() - start) * 1000.0
                            if fold.done:
                                break
                    if data and not fold.done:
                        dispatch()
                    # The body ended cleanly (a broken one raised above): whole if the
                    # stream's final data came, even with no end marker (streaming.py).
                    try:
                        fold.body_ended()
                    except ProviderError as e:
                        raise self._with_context(e, rid) from None
        except (TimeoutError, httpx.TimeoutException):
            raise ProviderError(
                "timeout", f"no complete answer within {time_limit:g}s", retryable=True
            ) from None
        except httpx.RemoteProtocolError as e:
            if answering:
                raise bad_response(f"the stream was cut off: {self._clean(str(e))}") from None
            # Closed before a 200 began ("Server disconnected without sending a
            # response"): nothing was cut, the provider is out of reach, as for a whole body.
            raise ProviderError("connection", self._clean(str(e)), retryable=True) from None
        except httpx.DecodingError as e:
            raise bad_response(f"the stream cannot be decoded: {self._clean(str(e))}") from None
        except httpx.TransportError as e:
            if answering:  # a 200 had begun: the answer was cut off (and may be billed)
                raise bad_response(
                    f"the stream was cut off: {type(e).__name__}: {self._clean(str(e))}"
                ) from None
            raise ProviderError(
                "connection", f"{type(e).__name__}: {self._clean(str(e))}", retryable=True
            ) from None
        try:
            parsed = adapter.parse(fold.body(), got)
        except ProviderError as e:
            raise self._with_context(e, rid) from None
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
            raise bad_response(f"unexpected stream shape: {type(e).__name__}: {e}") from None
        return self._answer(adapter, got, parsed, (time.perf_counter() - start) * 1000.0, ttft)

    def _answer(
        self,
        adapter: WireAdapter,
        headers: dict[str, str],
        parsed: Parsed,
        latency_ms: float,
        ttft_ms: float | None = None,
    ) -> Answer:
        """The answer of a parsed response, after honouring its rate-limit headers."""
        if (pause := adapter.pause_hint(headers, time.time())) is not None:
            self.limits.pause(pause)
        parsed = self.masked(parsed)
        return Answer(
            text=parsed.text,
            reasoning=parsed.reasoning,
            finish_reason=parsed.finish_reason,
            usage=parsed.usage,
            request_id=parsed.request_id,
            latency_ms=latency_ms,
            model=parsed.model,
            system_fingerprint=parsed.system_fingerprint,
            ttft_ms=ttft_ms,
        )

    def masked(self, parsed: Parsed) -> Parsed:
        """``parsed`` with the key masked in every text it holds, as it will be recorded.

        Masking the raw body (:meth:`_scrub`) does not suffice: JSON may spell the key
        with ``\\u`` escapes, which decode to the key itself, and a request id may come
        from a header, which no body holds."""
        mask = self._mask

        def clean(value: str | None) -> str | None:
            return value.replace(mask, "[redacted]") if mask and value and mask in value else value

        def label(value: str | None) -> str | None:
            return _label(clean(value))

        return dataclasses.replace(
            parsed,
            text=clean(parsed.text) or "",
            reasoning=clean(parsed.reasoning),
            finish_reason=label(parsed.finish_reason),
            request_id=label(parsed.request_id),
            model=label(parsed.model),
            system_fingerprint=label(parsed.system_fingerprint),
        )

    async def _send(
        self,
        adapter: WireAdapter,
        http: httpx.AsyncClient,
        url: str,
        content: bytes,
        headers: dict[str, str],
        time_limit: float,
        held: Lease,
    ) -> Answer:
        start = time.perf_counter()
        answering = False
        try:
            with anyio.fail_after(time_limit):
                async with http.stream("POST", url, content=content, headers=headers) as response:
                    answering = 200 <= response.status_code < 300
                    body = await _read_body(response, held=held)
        except (TimeoutError, httpx.TimeoutException):
            raise ProviderError(
                "timeout", f"no complete answer within {time_limit:g}s", retryable=True
            ) from None
        except httpx.RemoteProtocolError as e:
            text = str(e)
            # h11 says "peer closed connection without sending complete message body"
            if "message body" in text:
                raise bad_response(f"the body was cut off: {self._clean(text)}") from None
            raise ProviderError("connection", self._clean(text), retryable=True) from None
        except httpx.DecodingError as e:  # a body that fails its Content-Encoding
            raise bad_response(f"the body cannot be decoded: {self._clean(str(e))}") from None
        except httpx.TransportError as e:
            if answering:  # a 200 had begun: the answer was cut off (and may be billed)
                raise bad_response(
                    f"the body was cut off: {type(e).__name__}: {self._clean(str(e))}"
                ) from None
            raise ProviderError(
                "connection", f"{type(e).__name__}: {self._clean(str(e))}", retryable=True
            ) from None
        latency_ms = (time.perf_counter() - start) * 1000.0
        status = response.status_code
        body = self._scrub(body)
        # One pass into a plain dict: every httpx.Headers lookup scans the whole list.
        headers = dict(response.headers.items())
        rid = headers.get("x-request-id") or headers.get("request-id")
        if not 200 <= status < 300:
            err = adapter.error(status, headers, body, time.time())
            raise self._with_context(err, rid)
        try:
            data = loads(body)
        except ValueError:
            text = self._clean(excerpt(body.decode("utf-8", "replace"), 120))
            raise bad_response(f"the body is not JSON (HTTP {status}): {text}") from None
        try:
            parsed = adapter.parse(data, headers)
        except ProviderError as e:
            raise self._with_context(e, rid) from None
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
            raise bad_response(f"unexpected body shape: {type(e).__name__}: {e}") from None
        return self._answer(adapter, headers, parsed, latency_ms)

    def _clean(self, text: str) -> str:
        return redact(text, self._key)

    @property
    def _mask(self) -> str | None:
        """The key as masked in whole bodies and stream lines: one of ``MASK_FROM`` characters
        or more (every provider's are far longer). A shorter one is masked in messages only
        (:meth:`_clean`): replaced in a body, it would rewrite the answer itself (a key
        ``k`` turned every ``prompt_tokens`` into ``prompt_to[redacted]ens``)."""
        return self._key if self._key and len(self._key) >= MASK_FROM else None

    def _scrub(self, body: bytes) -> bytes:
        """``body`` with the key masked, before any excerpt of it could cut the key in
        two (a cut key no longer matches :meth:`_clean`'s exact-key redaction)."""
        mask = self._mask
        return body.replace(mask.encode(), b"[redacted]") if mask else body

    def masked_batch(self, value: _B) -> _B:
        """A batch call's answer with the key masked in every name it holds (state, ids,
        expected end, count names, result files), as it will be recorded: JSON may spell
        the key in ``\\u`` escapes that :meth:`_scrub` of the raw body never sees."""
        mask = self._mask

        def clean(text: str | None) -> str | None:
            return text.replace(mask, "[redacted]") if mask and text and mask in text else text

        if isinstance(value, BatchState):
            return dataclasses.replace(
                value,
                batch_id=clean(value.batch_id) or "",
                state=clean(value.state) or "",
                ends_at=clean(value.ends_at),
                counts={clean(k) or "": v for k, v in value.counts.items()},
                results=tuple(clean(r) or "" for r in value.results),
            )
        if isinstance(value, Submitted):
            return dataclasses.replace(
                value, batch_id=clean(value.batch_id) or "", input_file_id=clean(value.input_file_id)
            )
        return clean(value)

    def redacted(self, err: ProviderError) -> ProviderError:
        """``err`` with the key (and anything key-shaped) masked in its message: for errors
        read from a batch's results, whose JSON may spell the key in escapes."""
        return self._with_context(err, None)

    def _with_context(self, err: ProviderError, request_id: str | None) -> ProviderError:
        """``err`` with the provider's request id appended and the message redacted (the
        request id comes from a header, which no masking of the body reached)."""
        message = err.message
        if request_id:
            message += f" (request id {request_id})"
        message = self._clean(message)
        return ProviderError(
            err.kind,
            message,
            status=err.status,
            retryable=err.retryable,
            retry_after=err.retry_after,
            provider_wide=err.provider_wide,
            generated=err.generated,
        )

    def _succeeded(self, model: str, slot: Slot, answer: Answer) -> float | None:
        """Feed a success back into the shared limits and counters; return its cost."""
        self.limits.succeeded()
        u = answer.usage
        self.limits.used_tokens(slot, u.input_tokens + u.output_tokens)
        cost = self.cost(model, u)
        n = self._n
        n.responses += 1
        n.answered += 1
        n.latency_sum += answer.latency_ms
        n.latency_max = max(n.latency_max, answer.latency_ms)
        n.input_tokens += u.input_tokens
        n.output_tokens += u.output_tokens
        if cost is not None:
            n.cost += cost
        return cost

    def _after_failure(self, model: str, slot: Slot, error: ProviderError, attempt: int) -> float:
        """Feed a failure back into the shared limits; return this rollout's backoff.

        Only a failure that shows the provider's whole budget used up
        (``error.provider_wide``) pauses every request of the provider; any other wait
        the provider asks for is this rollout's alone (it sleeps without its slot).
        """
        wait = error.retry_after
        if error.provider_wide and error.retryable:
            self.limits.slow_down(slot, hard=True)
            self.limits.pause(wait if wait is not None else self.config.backoff_base)
        elif error.kind in _PACING_KINDS:
            hold = wait if wait is not None else self.config.backoff_base
            self.limits.slow_down(slot, hard=False, hold=hold)
        if error.kind == "auth" or (error.kind == "rate_limited" and not error.retryable):
            self.disable(model, error)
        jitter = full_jitter(attempt, self.config.backoff_base, self.config.backoff_max, self._rng)
        return max(wait or 0.0, jitter)

    def disable(self, model: str, error: ProviderError) -> None:
        """Stop using this provider: ``error`` showed the key or account rejected (one
        ERROR line; every later ``rollout`` returns None at once)."""
        if self.rejected is not None:
            # Rejected again: the latest reason, and a try not yet taken is answered.
            self.rejected, self._retry = error, False
            return
        self.rejected = error
        get_logger(__name__).error(
            "provider disabled: it rejected the key or the account; fix the key (no restart"
            " needed): it is tried again when one of its schedules next fires",
            provider=self.name,
            model=model,
            status=error.status,
            kind=error.kind,
            reason=self._clean(error.message),
        )

    def enable(self, model: str) -> None:
        """The try was answered: use the provider again (one INFO line saying why it had
        been disabled)."""
        was, self.rejected = self.rejected, None
        if was is not None:
            get_logger(__name__).info(
                "provider_enabled",
                provider=self.name,
                model=model,
                was_disabled_for=self._clean(was.message),
                status=was.status,
                kind=was.kind,
            )

    async def _fail(self, log: AttemptLog, attempt: int, error: ProviderError, *, final: bool) -> None:
        self._n.errors[error.kind] += 1
        if final:
            self._n.failed += 1
        await log.failed(attempt, error, final)

    async def _reference_rollout(
        self, model: str, prompt: Prompt, params: dict[str, Any], log: AttemptLog
    ) -> Answer | None:
        assert self._reference is not None
        await log.requested(1, self._reference.request(model, prompt, params))
        self._n.requests += 1
        try:
            answer = self._reference.answer(model, prompt)
        except ProviderError as e:
            await self._fail(log, 1, e, final=True)
            return None
        self._n.responses += 1
        self._n.answered += 1
        await log.responded(1, answer, 0.0)
        return answer

    # -- what it serves ---------------------------------------------------------------

    async def served_models(self) -> list[str] | None:
        """The models this provider serves, as its model list says (one GET); the
        ``reference`` provider serves ``reference`` only. None when the list cannot be
        had (a host without the route, an error, no answer in 30 s): logged, and the
        caller decides."""
        if self._reference is not None:
            return list(self._reference.models)
        adapter, pools, key = self._adapter, self._pools, self._key
        if adapter is None or pools is None or key is None:
            raise RuntimeError("use the ProviderClient as `async with ProviderClient(...)`")
        wire = adapter.models_request()
        url = self.config.url + wire.path
        try:
            with anyio.fail_after(min(self.config.timeout, 30.0)):
                async with pools.clients[0].stream(
                    "GET", url, headers={**wire.headers, **adapter.auth_headers(key)}
                ) as response:
                    body = self._scrub(await _read_body(response))  # bounded, as an answer's
            if not 200 <= response.status_code < 300:
                err = adapter.error(response.status_code, dict(response.headers.items()), body, time.time())
                raise self._with_context(err, None)
            return adapter.parse_models(loads(body))
        except (TimeoutError, httpx.HTTPError, ValueError, ProviderError) as e:
            message = e.message if isinstance(e, ProviderError) else f"{type(e).__name__}: {e}"
            get_logger(__name__).warning(
                "provider_models_unknown", provider=self.name, error=self._clean(message)
            )
            return None

    # -- cost and stats --------------------------------------------------------------

    def cost(self, model: str, usage: Usage, *, batch: bool = False) -> float | None:
        """USD for ``usage`` at the configured prices of ``model``; None if it has none.

        ``batch``: at the batch prices (``batch_input``/``batch_output``, by default half
        the others; cached input at the batch input price when no cached price is set).

        Prices are per million tokens. Cached input tokens cost ``cached_input`` when
        given, else ``input``; ``output_tokens`` include reasoning tokens, billed at the
        output price (as OpenAI, Anthropic and Google bill them). A model without a price
        is logged once (WARNING) and costs None; the reference provider costs 0.
        """
        if self._reference is not None:
            return 0.0
        price = self.config.prices.get(model)
        if price is None:
            if model not in self._unpriced:
                self._unpriced.add(model)
                get_logger(__name__).warning(
                    "no price for this model: its cost is unknown; add it under "
                    f"[providers.prices] of provider {self.name!r}",
                    provider=self.name,
                    model=model,
                )
            return None
        cached = min(usage.cached_tokens, usage.input_tokens)
        p_in, p_out = price.input, price.output
        if batch:
            p_in = price.batch_input if price.batch_input is not None else price.input / 2
            p_out = price.batch_output if price.batch_output is not None else price.output / 2
        cached_price = min(p_in, price.cached_input) if price.cached_input is not None else p_in
        return (
            (usage.input_tokens - cached) * p_in + cached * cached_price + usage.output_tokens * p_out
        ) / 1_000_000

    @property
    def stats(self) -> ProviderStats:
        """A snapshot of this provider's counters (safe to keep; it does not change)."""
        n = self._n
        return ProviderStats(
            provider=self.name,
            requests=n.requests,
            responses=n.responses,
            errors=dict(n.errors),
            rollouts_answered=n.answered,
            rollouts_failed=n.failed,
            latency_ms_sum=n.latency_sum,
            latency_ms_max=n.latency_max,
            input_tokens=n.input_tokens,
            output_tokens=n.output_tokens,
            cost_usd=n.cost,
            in_flight=self.limits.in_flight,
            window=self.limits.window,
            rate_factor=self.limits.rate_factor,
            slowdowns=self.limits.cuts,
            paused_s=max(0.0, self.limits.not_before - self._clock.now()),
            disabled=self.rejected is not None,
        )


class _Pools:
    """httpx clients that together hold ``max_concurrency`` connections, a few per client.

    Why not one client with one big pool: httpcore 1.0's pool walks every connection
    (polling each idle socket) whenever a request starts or ends (encode/httpcore#1035),
    so the CPU per request grows with the pool. At 500 connections in one pool that
    bookkeeping was ~10 ms CPU per request, ~7x what pools of 4 cost
    (``bench/bench_providers.py``). httpx2 2.16.2 (httpcore2) halves that but still
    walks the pool on every request: one pool of 500 cost 4.6–5.8 ms CPU per request
    against 1.3–2.1 ms for pools of 4 (measured 2026-11-30), so the pools stay. Each
    rollout leases a place in one client while it
    holds its slot; there are exactly as many places as connections, and the provider
    limits never hand out more slots than that, so no pool ever queues a request. A
    lease is a stack (last returned, first reused) so light load stays on warm
    connections. One SSL context serves every client (loading CA certificates is slow).
    """

    def __init__(
        self,
        config: ProviderConfig,
        transport: httpx.AsyncBaseTransport | None,
        ssl_context: ssl.SSLContext,
    ) -> None:
        n = config.max_concurrency
        # A test transport is one object: it gets one client.
        per = n if transport is not None else CONNECTIONS_PER_POOL
        sizes = [min(per, n - start) for start in range(0, n, per)]
        self.clients = [
            httpx.AsyncClient(
                transport=transport,
                # httpx would build a context per client, even for http:// URLs.
                verify=ssl_context,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                # The pool never makes a request wait (see above), so no pool timeout.
                timeout=httpx.Timeout(config.timeout, pool=None),
                headers={"user-agent": _USER_AGENT},
            )
            for size in sizes
        ]
        self._free = [i for i, size in enumerate(sizes) for _ in range(size)]

    def take(self) -> int:
        """Lease a place; the index of its client."""
        return self._free.pop() if self._free else 0

    def give(self, index: int) -> None:
        """Return a place leased by :meth:`take`."""
        self._free.append(index)

    async def aclose(self) -> None:
        """Close every client and its connections."""
        for client in self.clients:
            await client.aclose()


def _refuse_stacked_codings(response: httpx.Response) -> None:
    """``bad_response`` for a body compressed more than once (``Content-Encoding: gzip,
    gzip``): httpx inflates each network chunk through every layer at once, so two layers
    turned 1.8 kB into a 1 GB string before any size check could see it. One layer inflates
    a chunk about a thousandfold at most; no provider stacks them."""
    codings = [
        c.strip().lower()
        for c in response.headers.get_list("content-encoding", split_commas=True)
        if c.strip().lower() not in ("", "identity")
    ]
    if len(codings) > 1:
        raise bad_response(f"the body is compressed {len(codings)} times over ({', '.join(codings)[:100]})")


async def _read_body(
    response: httpx.Response, limit: int = MAX_BODY_BYTES, held: Lease | None = None
) -> bytes:
    """The decoded body, read up to ``limit`` bytes (each counted in ``held``, if given);
    ``bad_response`` past it, past the budget ``held`` is a share of, or when it is
    compressed more than once."""
    _refuse_stacked_codings(response)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise bad_response(f"the body is too large: over {limit // 2**20} MiB decoded")
        if held is not None:
            held.take(len(chunk))
    return bytes(body)


async def _read_lines(response: httpx.Response, held: Lease, idle: float) -> AsyncGenerator[list[str], None]:
    """The lines of a stream (ends ``\n``, ``\r\n`` or ``\r``, as SSE allows), those each
    network read completes in one list, read up to :data:`MAX_BODY_BYTES` decoded in all
    (each byte counted in ``held``): past it, past the budget ``held`` is a share of, or a
    line that never ends, ``bad_response`` (or for a stream compressed more than once); no
    byte for ``idle`` seconds, a retryable ``timeout``.

    The silence is timed per read, not per line: a timer per line cost about 16 µs, so a
    stream of a million one-character deltas (64 MiB) kept the event loop busy for 20 s
    and more per attempt."""
    _refuse_stacked_codings(response)
    total = 0
    pending = bytearray()
    after_cr = False
    chunks = response.aiter_bytes()  # closed with the response
    while True:
        chunk: bytes | None = None
        with anyio.move_on_after(idle) as silent:
            chunk = await anext(chunks, None)
        if silent.cancelled_caught:
            raise ProviderError("timeout", f"the stream was silent for {idle:g}s", retryable=True)
        if chunk is None:
            break
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise bad_response(f"the stream is too large: over {MAX_BODY_BYTES // 2**20} MiB decoded")
        held.take(len(chunk))
        # A CRLF split across chunks is one line end: an empty line more would end an
        # event early (an event's ``data:`` lines are joined until a blank line).
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        data = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # Only the new chunk is searched: a line that never ends is not scanned again at
        # every chunk (64 MiB of it took seconds so).
        end = data.rfind(b"\n")
        if end < 0:
            pending += data
            continue
        pending += data[:end]
        yield _utf8(pending).split("\n")
        pending = bytearray(data[end + 1 :])
    if pending:
        yield [_utf8(pending)]


#: A name the provider gives (served model, fingerprint, request id, finish reason) is
#: recorded up to this many characters: it keys report rows and log lines.
MAX_LABEL_CHARS = 200


def _label(value: str | None) -> str | None:
    """``value`` fit to be a name: control and other unprintable characters (a newline
    forging a log line, an ANSI escape) as ``?``, cut to :data:`MAX_LABEL_CHARS`."""
    if value is None or (len(value) <= MAX_LABEL_CHARS and value.isprintable()):
        return value
    cut = value[: MAX_LABEL_CHARS - 1] + "…" if len(value) > MAX_LABEL_CHARS else value
    return "".join(c if c.isprintable() else "?" for c in cut)


def _utf8(data: bytes | bytearray) -> str:
    """``data`` decoded; ``bad_response`` when it is not UTF-8 (as a whole body that is not
    is: replacing the bad bytes with U+FFFD, as streams did, scored an answer the provider
    never sent)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_response(f"the stream is not UTF-8: {e.reason} at byte {e.start} of a line") from None


def _encode(body: dict[str, Any]) -> bytes:
    """The JSON bytes of a request body; ``invalid_request`` for what JSON cannot hold
    (a TOML date in params, NaN): the event log could not record it either."""
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ProviderError("invalid_request", f"params cannot be sent as JSON: {e}") from None


def _missing_key(config: ProviderConfig) -> str:
    return config.missing_key()
