"""A run's rollouts through the provider's batch API (``batch = true``).

Each rollout task still carries its own rollout (its events, its verdict); only the
request goes another way. A rollout records ``RolloutRequested`` and joins the batch
being formed for its model (OpenAI takes one model per batch); the first to join
leads it: it waits ``batch_linger`` (or until
``batch_max_requests`` joined), submits the batch, records ``BatchSubmitted`` (the
provider's batch id and each rollout's attempt in it), polls every ``batch_poll``
(recording ``BatchPolled`` when the state or counts change), reads the results and
records ``BatchEnded``. Every member then records its own ``RolloutResponded`` or
``RolloutFailed`` and is scored as usual.

Durable across a kill: a rollout whose latest recorded attempt is in a submitted
batch, and that the batch did not end without answering, is never submitted again. A
daemon that resumes the run polls that batch (an ended one answers at once) and
reads its results. A batch that ends without answering some rollouts (expired,
cancelled, missing from the results, or a retryable error) records those as failed
attempts, and they go into a later batch, up to ``max_attempts``. A batch that has
not ended with readable results ``batch_max_time`` after it was submitted (a state
that never ends, polls or downloads that keep failing) fails its rollouts for good
(``batch_timeout``): sent again, they could be paid for twice.

Before a batch is submitted, ``BatchPrepared`` records its key and rollouts (the
intent); OpenAI's batch carries the key in ``metadata.rollwatch_batch``, Gemini's in
its display name. A daemon killed after asking but before ``BatchSubmitted`` reached
the log looks the batch up at the provider on resume and adopts the batch it finds
(``BatchSubmitted`` with ``adopted``); only when there is none are the rollouts
submitted again. A create whose answer is lost (a timeout) is looked up the same way
before it is retried. One record per batch: ``BatchSubmitted`` (submitted or adopted) is
appended with the batch stream's version as read and checked (its key and batch id not
in it), so on a shared log a node whose read is stale (the submitter's record, or
another node's adoption, landed since) reads again and follows that record. Anthropic's batches carry no metadata: there the lookup takes
the batches created since the intent (``BatchPrepared``'s time), of its request
count and not in the log, waits for each to end, and adopts the one whose results'
custom ids are exactly the intent's rollout ids (see ``providers/batch.py``).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import anyio

from rollwatch.errors import ConcurrencyConflict, ProviderError
from rollwatch.events import BatchEnded, BatchPolled, BatchPrepared, BatchSubmitted, Event, batch_stream
from rollwatch.log import get_logger
from rollwatch.providers.base import Answer, Parsed, Prompt, WireRequest
from rollwatch.providers.batch import BatchState, Lookup, Outcome, Submitted, progress_of
from rollwatch.providers.retry import full_jitter
from rollwatch.runs.services import BatchProgress

if TYPE_CHECKING:
    from rollwatch.providers.client import ProviderClient
    from rollwatch.runs.pipeline import Run
    from rollwatch.runs.rollout import AttemptRecorder

log = get_logger(__name__)
T = TypeVar("T")


def _epoch(at: str) -> float:
    """An event's ``at`` (RFC 3339) as epoch seconds."""
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def _answered(outcome: Outcome | None) -> bool:
    """Whether a result settles its rollout: an answer, or an error not worth retrying."""
    if outcome is None:
        return False
    return isinstance(outcome, Parsed) or not outcome.retryable


@dataclass(eq=False)
class _Batch:
    """One batch as this process knows it: forming, submitted, or read back from the log."""

    rollouts: dict[str, int] = field(default_factory=dict)
    """Rollout id → its attempt in this batch."""
    requests: dict[str, WireRequest] = field(default_factory=dict)
    batch_id: str | None = None
    unanswered: set[str] = field(default_factory=set)
    """From the log's ``BatchEnded``: these rollouts go into a later batch."""
    results: dict[str, Outcome] = field(default_factory=dict)
    error: ProviderError | None = None
    """Set when the batch could not be submitted or read: every member fails this attempt."""
    full: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    polling: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.time)
    """When it was submitted (epoch seconds; from the log when read back): its
    ``batch_max_time`` counts from here."""
    bytes: int = 0


def _model(batch: _Batch) -> str:
    """The model a batch asks (OpenAI takes one model per batch)."""
    return str(next(iter(batch.requests.values())).body.get("model", "?")) if batch.requests else "?"


class Batcher:
    """The batches of one run on this node (see the module docstring)."""

    def __init__(self, run: Run, client: ProviderClient) -> None:
        self.run = run
        self.client = client
        self.api = client.batch_api()
        self.config = client.config
        self.stream = batch_stream(run.run_id)
        self._forming: dict[str, _Batch] = {}
        """Model → the batch being formed for it (OpenAI takes one model per batch)."""
        self._latest: dict[str, tuple[str, int]] = {}
        """Rollout id → (batch id, attempt) of its latest submitted batch, from the log."""
        self._batches: dict[str, _Batch] = {}
        self._rng = random.Random()
        self._append_lock = anyio.Lock()
        self._prepared: dict[str, dict[str, int]] = {}
        """Keys of batches prepared but not known to be submitted → their rollouts."""
        self._prepared_at: dict[str, float] = {}
        """Keys of batches prepared → when (epoch seconds, from the log)."""
        self._adoption: dict[str, anyio.Lock] = {}
        self._settled: set[str] = set()
        """Keys this process prepared itself, or looked for already: never adopted again."""
        self._recorded: dict[str, str] = {}
        """Keys recorded as submitted (read from the log, or appended by this process) →
        the batch id recorded first under each."""
        self._recorded_ids: set[str] = set()
        """Batch ids recorded as submitted, likewise."""
        self._load_lock = anyio.Lock()
        self._loaded = -1
        """The batch stream's version as last read."""
        self._loaded_seq = 0
        """The seq of the last event of the batch stream read: a reload reads on from there."""

    async def load(self) -> None:
        """Read what the log says of this run's batches: on resume, and again when a
        rollout comes with an attempt this process has not seen batched (on a shared
        log, another node may have submitted it before it died)."""
        store = self.run.services.store
        async with self._load_lock:
            version = await store.stream_version(self.stream)
            if version == self._loaded:
                return
            async for rec in store.read(stream=self.stream, after=self._loaded_seq):
                self._loaded_seq = rec.seq
                version = max(version, rec.version)
                ev = rec.event()
                if isinstance(ev, BatchPrepared):
                    self._prepared_at[ev.key] = _epoch(rec.at)
                self._apply(ev)
                if isinstance(ev, BatchSubmitted):
                    self._batches[ev.batch_id].started = _epoch(rec.at)
                self._track(ev, _epoch(rec.at))
            self._loaded = version
        self.run.report_progress()

    def _apply(self, ev: Event) -> None:
        if isinstance(ev, BatchPrepared):
            if ev.key not in self._settled:
                self._prepared[ev.key] = dict(ev.rollouts)
        elif isinstance(ev, BatchSubmitted):
            self._recorded.setdefault(ev.key, ev.batch_id)
            self._recorded_ids.add(ev.batch_id)
            self._settled.add(ev.key)
            self._prepared.pop(ev.key, None)
            b = self._batches.setdefault(ev.batch_id, _Batch(batch_id=ev.batch_id))
            b.rollouts = dict(ev.rollouts)
            for rid, attempt in ev.rollouts.items():
                self._latest[rid] = (ev.batch_id, attempt)
        elif isinstance(ev, BatchEnded) and ev.batch_id in self._batches:
            self._batches[ev.batch_id].unanswered = set(ev.unanswered)

    # -- one rollout ------------------------------------------------------------------------

    async def rollout(
        self,
        rid: str,
        model: str,
        prompt: Prompt,
        params: dict[str, object],
        recorder: AttemptRecorder,
        recorded_attempts: int,
    ) -> tuple[Answer | None, float]:
        """The rollout's answer and its cost at batch prices (None, 0.0 when it failed for
        good); every attempt recorded on ``recorder`` as a synchronous one is."""
        n = 0  # attempts made by this call; the recorder adds those recorded before
        known = self._latest.get(rid, ("", -1))[1] == recorded_attempts or any(
            m.get(rid) == recorded_attempts for m in self._prepared.values()
        )
        if recorded_attempts > 0 and not known:
            await self.load()
        for key, members in list(self._prepared.items()):
            if members.get(rid) == recorded_attempts:
                await self._adopt(key)
                break
        latest = self._latest.get(rid)
        resumed: _Batch | None = None
        if latest is not None and latest[1] == recorded_attempts:
            b = self._batches[latest[0]]
            if rid not in b.unanswered:
                resumed = b
        while True:
            if resumed is not None:
                batch, resumed = resumed, None
                await self._follow(batch)
            else:
                n += 1
                try:
                    wire = self.client.build(model, prompt, params)
                except ProviderError as e:
                    await recorder.failed(n, e, True)
                    return None, 0.0
                await recorder.requested(n, wire.body)
                batch = await self._join(rid, model, wire, recorded_attempts + n)
            outcome: Outcome | None = batch.error or batch.results.get(rid)
            if isinstance(outcome, Parsed):
                outcome = self.client.masked(outcome)
                answer = Answer(
                    text=outcome.text,
                    reasoning=outcome.reasoning,
                    finish_reason=outcome.finish_reason,
                    usage=outcome.usage,
                    request_id=outcome.request_id,
                    latency_ms=round((time.monotonic() - batch.submitted_at) * 1000.0, 3),
                    model=outcome.model,
                    system_fingerprint=outcome.system_fingerprint,
                )
                cost = self.client.cost(model, answer.usage, batch=True)
                list_cost = self.client.cost(model, answer.usage)
                await recorder.responded(n, answer, cost, list_cost_usd=list_cost)
                return answer, cost or 0.0
            error = (
                self.client.redacted(outcome)
                if outcome is not None
                else ProviderError(
                    "batch_unanswered",
                    f"batch {batch.batch_id} ended without an answer to this request",
                    retryable=True,
                )
            )
            final = not error.retryable or recorded_attempts + n >= self.config.max_attempts
            await recorder.failed(n, error, final)
            if final:
                return None, 0.0

    async def _join(self, rid: str, model: str, wire: WireRequest, attempt: int) -> _Batch:
        """Put the request in the batch being formed for ``model``; lead it if it is new;
        return the batch once its results (or its failure) are in."""
        size = len(json.dumps(wire.body, separators=(",", ":"), ensure_ascii=False).encode()) + 200
        batch = self._forming.get(model)
        if batch is not None and batch.bytes + size > self.api.max_bytes:
            batch.full.set()  # this request would not fit: it starts the next batch
            del self._forming[model]
            batch = None
        lead = batch is None
        if batch is None:
            batch = self._forming[model] = _Batch()
        batch.rollouts[rid] = attempt
        batch.requests[rid] = wire
        batch.bytes += size
        if len(batch.requests) >= self.config.batch_max_requests:
            batch.full.set()
            del self._forming[model]
        if lead:
            with anyio.move_on_after(self.config.batch_linger):
                await batch.full.wait()
            if self._forming.get(model) is batch:
                del self._forming[model]
            await self._lead(batch)
        else:
            await batch.done.wait()
        return batch

    async def _follow(self, batch: _Batch) -> None:
        """Wait for a batch submitted before (by an earlier life of the run): poll it
        unless another rollout already does."""
        if batch.done.is_set():
            return
        if batch.polling:
            await batch.done.wait()
            return
        batch.polling = True
        try:
            await self._poll_and_read(batch)
        finally:
            batch.done.set()

    # -- one batch --------------------------------------------------------------------------

    async def _adopt(self, key: str) -> None:
        """Look for the batch prepared under ``key`` at the provider (once per key); when
        found, record it as submitted so that its rollouts follow it.

        What this process read of the batch stream may be stale: the node that prepared
        the batch may have recorded it since (its ``BatchSubmitted`` landing after our
        read), or another node adopted it. So the stream is read again first (a key
        recorded there is followed, without asking the provider), and the adoption is
        appended only if the stream has not moved since (``_record``)."""
        lock = self._adoption.setdefault(key, anyio.Lock())
        async with lock:
            await self.load()
            members = self._prepared.get(key)
            if members is None or key in self._settled:
                return  # recorded in the log, or settled by another rollout of the batch
            self._settled.add(key)
            lookup = self._lookup(members, self._prepared_at.get(key, 0.0))
            # Anthropic: this may wait for candidate batches to end (hours, at worst).
            self.run.log.info("batch_lookup", key=key, requests=len(members))
            try:
                bid = self.client.masked_batch(
                    await self._retrying("find", lambda: self.api.find(self.client.send, key, lookup))
                )
            except ProviderError:
                bid = None
            if bid is not None:
                adopted = BatchSubmitted(
                    run_id=self.run.run_id,
                    provider=self.client.name,
                    batch_id=bid,
                    rollouts=dict(members),
                    node=self.run.services.node,
                    key=key,
                    adopted=True,
                )
                if await self._record(adopted):
                    self._batches[bid] = _Batch(batch_id=bid, rollouts=dict(members))
                    for rid, attempt in members.items():
                        self._latest[rid] = (bid, attempt)
                    self.run.log.info("batch_adopted", batch_id=bid, key=key, requests=len(members))
                else:
                    # Recorded meanwhile by the node that submitted it (or adopted by
                    # another): the reload made its rollouts follow that record.
                    self.run.log.info(
                        "batch_recorded_elsewhere", batch_id=self._recorded.get(key, bid), key=key
                    )
            self._prepared.pop(key, None)

    async def _record(self, event: BatchSubmitted) -> bool:
        """Append ``event`` unless the log already records a batch under its key or its
        batch id; False (nothing appended) when it does.

        Race-free across nodes: the append expects the batch stream at the version this
        process last read and checked; when another node appended since, the stream is
        read again and checked again."""
        store = self.run.services.store
        async with self._append_lock:
            while True:
                await self.load()
                if event.key in self._recorded or event.batch_id in self._recorded_ids:
                    return False
                try:
                    [rec] = await store.append(self.stream, [event], expected_version=self._loaded)
                except ConcurrencyConflict:
                    continue  # another node appended to the stream: read it and check again
                break
        self._recorded[event.key] = event.batch_id
        self._recorded_ids.add(event.batch_id)
        self._track(event, _epoch(rec.at))
        self.run.report_progress()
        return True

    async def _lead(self, batch: _Batch) -> None:
        batch.polling = True
        key = uuid.uuid4().hex
        self._settled.add(key)  # ours: a reload of the log must not adopt it
        try:
            # A disabled provider: this batch's create is the try a fire allowed, or waits
            # for that try, or is refused (rejected while this batch formed).
            async with self.client.admit() as may:
                if may == "refused":
                    batch.error = self.client.rejected
                    return
                await self._append(
                    BatchPrepared(
                        run_id=self.run.run_id,
                        provider=self.client.name,
                        key=key,
                        rollouts=dict(batch.rollouts),
                        node=self.run.services.node,
                    )
                )
                try:
                    sub = await self._submit(batch, key)
                except ProviderError as e:
                    if may == "try":
                        self.client.try_failed(e)
                    self._failed(batch, e)
                    return
                if may == "try":
                    self.client.enable(_model(batch))
            batch.batch_id = sub.batch_id
            batch.submitted_at = time.monotonic()
            batch.started = time.time()
            self._batches[sub.batch_id] = batch
            recorded = await self._record(
                BatchSubmitted(
                    run_id=self.run.run_id,
                    provider=self.client.name,
                    batch_id=sub.batch_id,
                    rollouts=dict(batch.rollouts),
                    input_file_id=sub.input_file_id,
                    bytes=sub.bytes,
                    node=self.run.services.node,
                    key=key,
                )
            )
            if recorded:
                self.run.log.info("batch_submitted", batch_id=sub.batch_id, requests=len(batch.rollouts))
            else:
                # Adopted meanwhile by a node that took this batch's rollouts over (this
                # process stalled past its lease): one record of the batch is enough.
                self.run.log.info("batch_recorded_elsewhere", batch_id=sub.batch_id, key=key)
            batch.requests = {}  # the bodies are in the rollouts' events; free them
            await self._poll_and_read(batch)
        finally:
            batch.done.set()

    async def _submit(self, batch: _Batch, key: str) -> Submitted:
        """Submit, retrying while it fails retryably; before each retry, look for the
        batch under its key (a create whose answer was lost may have made it)."""
        attempt = 0
        lookup = self._lookup(batch.rollouts, time.time())
        while True:
            attempt += 1
            try:
                return self.client.masked_batch(await self.api.submit(self.client.send, batch.requests, key))
            except ProviderError as raw:
                # A batch call's message is the provider's body: the key masked before it
                # goes anywhere (a log line, a rollout's failure).
                e = self.client.redacted(raw)
                if not e.retryable or attempt >= self.config.max_attempts:
                    self.run.log.warning("batch_submit_failed", error=e.message, kind=e.kind)
                    raise e from None
                jitter = full_jitter(attempt, self.config.backoff_base, self.config.backoff_max, self._rng)
                await anyio.sleep(max(e.retry_after or 0.0, jitter))
                try:
                    found = self.client.masked_batch(await self.api.find(self.client.send, key, lookup))
                except ProviderError:
                    found = None
                if found is not None:
                    self.run.log.info("batch_adopted", batch_id=found, key=key, requests=len(batch.requests))
                    return Submitted(found, None, 0)

    def _lookup(self, members: Mapping[str, int], since: float) -> Lookup:
        """How to recognise the batch of ``members`` prepared at ``since``, on an API
        whose batches carry no key (Anthropic): by its contents, once it ended. The
        search waits for candidates to end until ``batch_max_time`` after ``since``, no
        longer: a candidate still running then is not the batch (a provider whose batches
        never end must not hold the run forever)."""
        deadline = since + self.config.batch_max_time

        async def wait() -> None:
            left = deadline - time.time()
            if left <= 0:
                raise ProviderError(
                    "batch_timeout",
                    f"no candidate batch ended within batch_max_time ({self.config.batch_max_time:g}s)",
                    retryable=False,
                )
            await anyio.sleep(min(self.config.batch_poll, left))

        return Lookup(
            since=since,
            custom_ids=frozenset(members),
            known=frozenset(self._batches),
            wait=wait,
        )

    async def _poll_and_read(self, batch: _Batch) -> None:
        """Poll until the batch ends, read its results, record ``BatchEnded``."""
        assert batch.batch_id is not None
        bid = batch.batch_id
        deadline = batch.started + self.config.batch_max_time
        last: tuple[str, Mapping[str, int]] | None = None
        while True:
            try:
                state = self.client.masked_batch(
                    await self._retrying(
                        "poll", lambda: self.api.poll(self.client.send, bid), forever=True, deadline=deadline
                    )
                )
            except ProviderError as e:
                error = e
                if e.kind == "not_found":  # the provider lost it: its rollouts go again
                    error = ProviderError(
                        "batch_lost", f"batch {bid}: {e.message}", status=e.status, retryable=True
                    )
                elif e.retryable:  # retried until the deadline passed
                    error = self._overdue(bid, last[0] if last else None, e)
                self._failed(batch, error)
                return
            if (state.state, state.counts) != last:
                last = (state.state, state.counts)
                await self._append(
                    BatchPolled(
                        run_id=self.run.run_id,
                        batch_id=bid,
                        state=state.state,
                        counts=dict(state.counts),
                        ends_at=state.ends_at,
                    )
                )
            if state.ended:
                break
            if time.time() >= deadline:
                self._failed(batch, self._overdue(bid, state.state))
                return
            await anyio.sleep(min(self.config.batch_poll, max(0.0, deadline - time.time())))
        await self._read(batch, state, deadline)

    def _overdue(self, bid: str, state: str | None, last: ProviderError | None = None) -> ProviderError:
        """The failure of a batch past ``batch_max_time``: final (submitting the
        requests again could pay for them twice, and a provider that never ends a batch
        would hold the run forever)."""
        self.run.log.warning("batch_overdue", batch_id=bid, state=state, error=last.message if last else None)
        why = f"; last error: {last.message}" if last else ""
        return ProviderError(
            "batch_timeout",
            f"batch {bid} did not end with readable results within batch_max_time "
            f"({self.config.batch_max_time:g}s); last state: {state or 'never polled'}{why}",
            retryable=False,
        )

    async def _read(self, batch: _Batch, state: BatchState, deadline: float) -> None:
        assert batch.batch_id is not None
        try:
            results = await self._retrying(
                "results", lambda: self.api.results(self.client.send, state), forever=True, deadline=deadline
            )
        except ProviderError as e:
            self._failed(batch, self._overdue(batch.batch_id, state.state, e) if e.retryable else e)
            return
        batch.results = {rid: results[rid] for rid in batch.rollouts if rid in results}
        unanswered = sorted(rid for rid in batch.rollouts if not _answered(results.get(rid)))
        answered = sum(isinstance(o, Parsed) for o in batch.results.values())
        await self._append(
            BatchEnded(
                run_id=self.run.run_id,
                batch_id=batch.batch_id,
                state=state.state,
                answered=answered,
                failed=len(batch.results) - answered,
                unanswered=unanswered,
            )
        )
        self.run.log.info(
            "batch_ended",
            batch_id=batch.batch_id,
            state=state.state,
            answered=answered,
            unanswered=len(unanswered),
        )

    async def _retrying(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        forever: bool = False,
        deadline: float | None = None,
    ) -> T:
        """``call()``, retried with backoff while it fails retryably, up to
        ``max_attempts`` in a row, or (``forever``: once a batch is submitted, giving up
        would mean paying for it twice) until it succeeds, the run stops, or
        ``deadline`` (epoch seconds) passes."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except ProviderError as raw:
                e = self.client.redacted(raw)  # as in _submit
                if (
                    not e.retryable
                    or (attempt >= self.config.max_attempts and not forever)
                    or (deadline is not None and time.time() >= deadline)
                ):
                    self.run.log.warning(f"batch_{what}_failed", error=e.message, kind=e.kind)
                    raise e from None
                jitter = full_jitter(attempt, self.config.backoff_base, self.config.backoff_max, self._rng)
                wait = max(e.retry_after or 0.0, jitter)
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.time()))
                await anyio.sleep(wait)

    def _failed(self, batch: _Batch, error: ProviderError) -> None:
        """The batch cannot go on: its members fail this attempt; a rejected key or
        account disables the provider (the run then starts no more rollouts)."""
        batch.error = error
        if batch.batch_id is not None:  # lost at the provider: no longer open
            self.run.state.batches.pop(batch.batch_id, None)
        if error.kind == "auth":
            self.client.disable(_model(batch), error)

    async def _append(self, event: Event) -> None:
        async with self._append_lock:
            await self.run.services.store.append(self.stream, [event])
        self._track(event, time.time())
        self.run.report_progress()

    def _track(self, ev: Event, at: float) -> None:
        """Keep the run's live batch figures (its progress line) in step with the log;
        idempotent, as a reload reads the stream again."""
        batches, ended = self.run.state.batches, self.run.state.batches_ended
        if isinstance(ev, BatchSubmitted) and ev.batch_id not in ended:
            batches.setdefault(ev.batch_id, BatchProgress("submitted", len(ev.rollouts), at))
        elif isinstance(ev, BatchPolled) and ev.batch_id in batches:
            b = batches[ev.batch_id]
            b.state = ev.state
            b.done, total = progress_of(ev.counts)
            b.requests = total or b.requests
        elif isinstance(ev, BatchEnded):
            batches.pop(ev.batch_id, None)
            ended.add(ev.batch_id)
