"""Domain events: small frozen typed classes, stored as JSON.

Each class has a ``TYPE`` (the envelope's ``type``) and a ``SCHEMA`` version. When a
type's fields change, bump ``SCHEMA`` and register an upcaster that turns the old
``data`` into the new shape; stored events are never rewritten, they are upcast
when read. Readers outside Python only see the JSON ``data``.

One read path
-------------
Every reader of the log's meaning (projections, runs, metrics, the report,
publication) takes the typed event from :meth:`Recorded.event`, which decodes the
stored JSON and upcasts it to the current schema of its type. ``Recorded.data`` is
the data exactly as stored and hashed: integrity code and the subscriber feed (whose
readers check the hashes) use it, nothing else should.

Text that is not valid Unicode (a lone surrogate, which a provider's JSON can carry
as ``"\\ud800"``) cannot be stored as UTF-8: it is stored with U+FFFD in its place,
so that one answer can never make an append fail.

Canonical encoding (stable; the hash chain and the Merkle tree hash these bytes)
-----------------------------------------------------------------------------------
An event's canonical bytes are the UTF-8 encoding of the JSON object with exactly
the keys ``at, data, id, schema, seq, stream, type`` in that (sorted) order, no
whitespace (separators ``,`` and ``:``), non-ASCII characters as themselves (not
``\\u`` escapes), and ``data`` encoded the same way recursively (keys sorted,
NaN and infinities forbidden, floats as Python's shortest round-trip repr).
``hash`` = hex(SHA-256(previous hash as 32 raw bytes ‖ canonical bytes)); the
first event's previous hash is 32 zero bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NamedTuple, TypeVar

from rollwatch.errors import NewerSchema, UnknownEventType

GENESIS = bytes(32)


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (see the module docstring)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _not_serializable(o: object) -> Any:
    # What json.JSONEncoder.default raises.
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


# json.dumps builds a C encoder on every call (about a quarter of the time for a 1 KB
# event); build one for canonical_json's settings once. Without a circular-reference
# check (markers=None): a value that contains itself raises RecursionError rather than
# ValueError. tests/test_store_contract.py pins it to canonical_json.
_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encoder = (
    _make_encoder(None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", True, False, False)
    if _make_encoder is not None
    else None
)


def canonical_json_fast(value: Any) -> str:
    """``canonical_json(value)``, with the encoder built once (the append path's)."""
    if _c_encoder is None:
        return canonical_json(value)
    return "".join(_c_encoder(value, 0))


def stored_json(value: Any) -> str:
    """The canonical JSON of ``value`` as the log stores it: valid UTF-8 always.

    A lone surrogate cannot be encoded as UTF-8, and would fail the whole group
    commit it lands in; it is replaced by U+FFFD (pairs of surrogates are joined into
    the character they stand for). The check costs one ``isascii`` on ASCII text.
    """
    # Surrogates only occur inside JSON strings here (ensure_ascii=False writes them
    # raw), so mending the text mends exactly those strings.
    return stored_text(canonical_json_fast(value))


def stored_text(text: str) -> str:
    """``text`` as the log stores a string: each lone surrogate replaced by U+FFFD (pairs
    joined into the character they stand for); ``text`` itself when it is valid UTF-8."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def rfc3339(ts: datetime) -> str:
    """UTC timestamp as RFC 3339 with microseconds and a ``Z``; the year in four digits
    (``strftime``'s ``%Y`` wrote year 999 as ``999``, which no RFC 3339 reader takes)."""
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_rfc3339(text: str) -> datetime:
    """The datetime of an RFC 3339 timestamp written by :func:`rfc3339`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def canonical_bytes(
    *, seq: int, id: str, stream: str, type: str, schema: int, at: str, data_json: str
) -> bytes:
    """The canonical bytes of one envelope; ``data_json`` must be ``canonical_json(data)``."""
    # Built by hand so that the data, already canonical, is not encoded twice. The usual
    # case first: the four strings printable, without quote or backslash (one check for
    # all four, see ``json_str``), so each encodes as itself.
    plain = at + id + stream + type
    if plain.isprintable() and '"' not in plain and "\\" not in plain:
        return (
            f'{{"at":"{at}","data":{data_json},"id":"{id}","schema":{schema},'
            f'"seq":{seq},"stream":"{stream}","type":"{type}"}}'
        ).encode()
    d = json_str
    return (
        f'{{"at":{d(at)},"data":{data_json},"id":{d(id)},"schema":{schema},'
        f'"seq":{seq},"stream":{d(stream)},"type":{d(type)}}}'
    ).encode()


def json_str(s: str) -> str:
    """``s`` as a JSON string, as canonical JSON writes it."""
    # json.dumps(ensure_ascii=False) escapes only '"', '\\' and control characters; a
    # printable string without quote or backslash encodes as itself (the usual case).
    if s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return json.dumps(s, ensure_ascii=False)


def chain_hash(prev: bytes, canonical: bytes) -> bytes:
    """SHA-256 over the previous hash and this event's canonical bytes."""
    return hashlib.sha256(prev + canonical).digest()


class Recorded(NamedTuple):
    """One stored event: the envelope of SPEC §4 (plus the stream ``version``).

    A named tuple, so that a row from the database becomes one with no Python-level
    ``__init__`` (``tuple.__new__(Recorded, row)``): reading millions stays cheap.
    """

    seq: int
    id: str
    stream: str
    version: int
    type: str
    schema: int
    at: str
    data_json: str
    hash: str

    @property
    def data(self) -> dict[str, Any]:
        """The data exactly as stored and hashed (not upcast): for integrity code and the
        subscriber feed. Readers of the event's meaning use :meth:`event`."""
        return json.loads(self.data_json)  # type: ignore[no-any-return]

    def canonical(self) -> bytes:
        """The canonical bytes this event's hash covers."""
        return canonical_bytes(
            seq=self.seq,
            id=self.id,
            stream=self.stream,
            type=self.type,
            schema=self.schema,
            at=self.at,
            data_json=self.data_json,
        )

    def envelope(self) -> dict[str, Any]:
        """The envelope exactly as SPEC §4 names it."""
        return {
            "seq": self.seq,
            "id": self.id,
            "stream": self.stream,
            "type": self.type,
            "schema": self.schema,
            "at": self.at,
            "data": self.data,
            "hash": self.hash,
        }

    def event(self) -> Event:
        """The typed event, upcast to the current schema of its type: the one read path.

        Raises ``UnknownEventType`` for a type this version does not know, or a schema
        newer than it reads, or data no rollwatch wrote (not JSON, fields missing: a row
        written around rollwatch), naming the event's seq.
        """
        try:
            return decode(self.type, self.schema, json.loads(self.data_json))
        except (ValueError, RecursionError, UnknownEventType) as exc:
            raise unreadable(self.seq, self.type, exc) from None

    @property
    def at_datetime(self) -> datetime:
        return parse_rfc3339(self.at)


# --- stream names ------------------------------------------------------------------
# Every stream name is built here, so that writers and readers never disagree.


def run_stream(run_id: str) -> str:
    """The stream of one run's own events (``RunStarted``, ``RunFinished``, ...)."""
    return f"run-{run_id}"


def rollout_stream(rollout_id: str) -> str:
    """The stream of one rollout's events, from its request to its release."""
    return f"rollout-{rollout_id}"


def batch_stream(run_id: str) -> str:
    """The stream of one run's provider batches (``BatchSubmitted``, ``BatchPolled``, ...)."""
    return f"batches-{run_id}"


def schedule_stream(name: str) -> str:
    """The stream of one schedule's events (pauses, resumes, triggers, skips)."""
    return f"schedule-{name}"


def problem_stream(problem_set: str, problem_id: str) -> str:
    """The stream of one problem's versions."""
    return f"problem-{problem_set}/{problem_id}"


def rescore_stream(rescore_id: str) -> str:
    """The stream of one re-score's verdicts and summary."""
    return f"rescore-{rescore_id}"


def subscriber_stream(name: str) -> str:
    """The stream of one subscriber's events (``SubscriberAdded`` opens it)."""
    return f"subscriber-{name}"


CHECKPOINT_STREAM = "checkpoints"
"""The stream of the ``CheckpointSigned`` events."""


# --- typed events ------------------------------------------------------------------

_REGISTRY: dict[str, type[Event]] = {}
_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}

E = TypeVar("E", bound="Event")


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event type. Subclasses are frozen, keyword-only dataclasses."""

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[int] = 1

    def __init_subclass__(cls, *, register: bool = True, **kw: Any) -> None:
        # ``register=False`` makes a class that writes an event's shape without being
        # what the log's readers decode that type to: an old schema, kept by a test or
        # a migration to write history as an older version wrote it.
        super().__init_subclass__(**kw)
        if register:
            cls.TYPE = cls.__name__
            _REGISTRY[cls.TYPE] = cls

    def to_data(self) -> dict[str, Any]:
        """The JSON object stored as the envelope's ``data``."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def from_data(cls: type[E], data: dict[str, Any]) -> E:
        """The event from its (current-schema) ``data``; ``UnknownEventType`` when a
        required field is missing.

        Every reader decodes every event it reads, so this skips the dataclass
        ``__init__`` (a frozen one sets each field through ``object.__setattr__``):
        it fills the instance's ``__dict__`` directly, with defaults for the missing
        fields. ``bench_store``'s typed read went from 0.55x to 0.64x of a raw cursor that only
        ``json.loads`` each row.
        """
        spec = _spec(cls)
        keys = data.keys()
        if not keys <= spec.names:
            # Unknown keys are left out rather than failing: a newer writer may add fields.
            data = {k: v for k, v in data.items() if k in spec.names}
            keys = data.keys()
        if not spec.required <= keys:
            missing = ", ".join(sorted(spec.required - keys))
            raise UnknownEventType(f"{cls.TYPE} data lacks required field(s) {missing}")
        obj = object.__new__(cls)
        fields_ = obj.__dict__
        fields_.update(spec.defaults)
        for name, factory in spec.factories:
            if name not in keys:
                fields_[name] = factory()
        fields_.update(data)
        return obj


_FIELDS: dict[type[Event], tuple[str, ...]] = {}
_new_object = object.__new__
_set_attribute = object.__setattr__


@dataclass(frozen=True, slots=True)
class _Spec:
    """What decoding needs to know of an event class's fields."""

    names: frozenset[str]
    required: frozenset[str]
    defaults: dict[str, Any]
    factories: tuple[tuple[str, Callable[[], Any]], ...]


_SPECS: dict[type[Event], _Spec] = {}


def _spec(cls: type[Event]) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        fs = dataclasses.fields(cls)
        missing = dataclasses.MISSING
        spec = _SPECS[cls] = _Spec(
            names=frozenset(f.name for f in fs),
            required=frozenset(f.name for f in fs if f.default is missing and f.default_factory is missing),
            defaults={f.name: f.default for f in fs if f.default is not missing},
            factories=tuple((f.name, f.default_factory) for f in fs if f.default_factory is not missing),
        )
    return spec


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def upcaster(
    type_: str, from_schema: int
) -> Callable[[Callable[[dict[str, Any]], dict[str, Any]]], Callable[[dict[str, Any]], dict[str, Any]]]:
    """Register a function that turns ``type_`` data of ``from_schema`` into ``from_schema + 1``."""

    def register(
        fn: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
        _UPCASTERS[(type_, from_schema)] = fn
        return fn

    return register


def decode(type_: str, schema: int, data: dict[str, Any]) -> Event:
    """A typed event from stored data, upcast step by step to the current schema.

    ``data`` is handed over (the callers pass what they just parsed): data of the current
    schema with every field and no other, as :meth:`Event.to_data` writes it, becomes the
    event's own ``__dict__``, not copied (a fifth of decoding an event, the catch-up's most
    frequent step).
    """
    cls = _REGISTRY.get(type_)
    if cls is not None and schema == cls.SCHEMA and type(data) is dict:
        spec = _SPECS.get(cls) or _spec(cls)
        if data.keys() == spec.names:
            obj = _new_object(cls)
            _set_attribute(obj, "__dict__", data)
            return obj
    if cls is None:
        raise UnknownEventType(f"event type {type_!r} is unknown to this version of rollwatch")
    if type(data) is not dict:
        # Only a row written around rollwatch (an edited file) can hold this.
        raise UnknownEventType(f"{type_} data is a JSON {type(data).__name__}, not an object")
    while schema < cls.SCHEMA:
        up = _UPCASTERS.get((type_, schema))
        if up is None:
            raise UnknownEventType(f"no upcaster for {type_} schema {schema} -> {schema + 1}")
        data = up(data)
        schema += 1
    if schema > cls.SCHEMA:
        raise NewerSchema(
            f"{type_} schema {schema} is newer than this version reads ({cls.SCHEMA}); upgrade rollwatch"
        )
    return cls.from_data(data)


def wrong_field(ev: Event) -> str | None:
    """Which field of ``ev`` holds a value of another type than its class declares, and
    what it holds; None when every field is of its type.

    Decoding takes the data's values as they are (the read path's speed depends on it),
    so an event with, say, ``"cost_usd": "abc"`` decodes: a read model that fails on an
    event asks this which field is wrong, to name it. (``verify`` does not check types:
    earlier versions wrote some fields a provider reports as it sent them.)
    A float field takes an integer (JSON does not tell ``1`` from ``1.0``); ``Any`` takes
    anything.
    """
    fields_ = ev.__dict__
    for name, simple, deep, hint in _CHECKS.get(type(ev)) or _field_checks(type(ev)):
        value = fields_.get(name)
        if type(value) in simple or (deep is not None and deep(value)):
            continue
        return f"its field {name} is {_json_type(value)}, not {hint}"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)


_Check = tuple[str, frozenset[type], Callable[[Any], bool] | None, str]
_CHECKS: dict[type[Event], tuple[_Check, ...]] = {}


def _field_checks(cls: type[Event]) -> tuple[_Check, ...]:
    """Per field of ``cls`` (``Any`` fields left out): the types its value may simply be,
    a test of a container value, and the hint as written."""
    hints = typing.get_type_hints(cls)
    checks = []
    for f in dataclasses.fields(cls):
        simple, deep = _checker(hints[f.name])
        if simple is not None:
            checks.append((f.name, simple, deep, str(f.type)))
    _CHECKS[cls] = tuple(checks)
    return _CHECKS[cls]


_SIMPLE: dict[Any, frozenset[type]] = {
    type(None): frozenset({type(None)}),
    bool: frozenset({bool}),
    int: frozenset({int}),
    float: frozenset({int, float}),
    str: frozenset({str}),
}


def _checker(hint: Any) -> tuple[frozenset[type] | None, Callable[[Any], bool] | None]:
    """The types a value of ``hint`` may simply be, and a test for a container value
    (``list[...]``, ``dict[str, ...]``); (None, None) for anything (``Any``, or a type no
    event field has)."""
    if hint in _SIMPLE:
        return _SIMPLE[hint], None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        parts = [_checker(a) for a in args]
        if any(simple is None for simple, _ in parts):
            return None, None
        deeps = [d for _, d in parts if d is not None]
        simple = frozenset().union(*(simple for simple, _ in parts if simple is not None))
        return simple, (lambda v: any(d(v) for d in deeps)) if deeps else None
    if origin is list:
        item = _test(args[0]) if args else None
        return frozenset(), lambda v: type(v) is list and (item is None or all(item(x) for x in v))
    if origin is dict:
        value = _test(args[1]) if len(args) == 2 else None
        return (
            frozenset(),
            lambda v: (
                type(v) is dict and all(type(k) is str and (value is None or value(x)) for k, x in v.items())
            ),
        )
    return None, None


def _test(hint: Any) -> Callable[[Any], bool] | None:
    """A test of one value against ``hint``; None when anything goes."""
    simple, deep = _checker(hint)
    if simple is None:
        return None
    return lambda v: type(v) in simple or (deep is not None and deep(v))


def unreadable(seq: int, type_: str, exc: Exception) -> UnknownEventType:
    """The error for event ``seq`` whose data did not decode (``exc``: why), naming the seq."""
    if isinstance(exc, UnknownEventType):
        err = type(exc)(f"event {seq}: {exc}")
    elif isinstance(exc, RecursionError):
        # Nested deeper than a parser reads (orjson stops at 1,024 levels, json at the
        # interpreter's recursion limit): never in data rollwatch wrote.
        err = UnknownEventType(f"event {seq}: its {type_} data is JSON nested deeper than a parser can read")
    else:
        # json's ValueError (bad JSON, a lone surrogate): never in data rollwatch wrote.
        err = UnknownEventType(f"event {seq}: its {type_} data is not valid JSON ({exc})")
    err.seq = seq
    return err


def event_class(type_: str) -> type[Event] | None:
    """The class events of type ``type_`` decode to, or None if this version does not know it."""
    return _REGISTRY.get(type_)


def event_types() -> dict[str, type[Event]]:
    """Every registered event type by name."""
    return dict(_REGISTRY)


def register(cls: type[Event]) -> type[Event] | None:
    """Make ``cls`` what events of type ``cls.TYPE`` decode to; return the class it replaces.

    Defining an ``Event`` subclass registers it; this is for a class defined with
    ``register=False`` (a new schema of a type, introduced by a test or a plug-in).
    """
    previous = _REGISTRY.get(cls.TYPE)
    _REGISTRY[cls.TYPE] = cls
    return previous


def unregister_upcaster(type_: str, from_schema: int) -> None:
    """Remove the upcaster registered for ``type_`` at ``from_schema`` (if any)."""
    _UPCASTERS.pop((type_, from_schema), None)


# Runs and rollouts ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    run_id: str
    schedule: str
    provider: str
    models: list[str]
    problem_set: str
    node: str
    rollouts: int
    problems: list[str] = field(default_factory=list)
    budget_usd: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    trigger: str = "manual"
    """Why the run started: schedule, catch_up, trigger, manual."""
    trigger_seq: int = 0
    """For trigger: the seq of the ScheduleTriggered event this run answers."""
    fire_time: str | None = None
    """For schedule and catch_up: the fire time the scheduler computed."""
    due: str | None = None
    """For schedule: the fire's time before its jitter, from which the next fire is
    counted (None: ``fire_time``; runs from before it count from that)."""
    batch: bool = False
    """The run's rollouts go through the provider's batch API."""
    embargo_s: float | None = None
    """The embargo of the node that started the run (``publication.embargo``): every node
    decides the run's verdicts with the longer of it and its own, so a node configured
    with a shorter one releases nothing earlier. None in runs from before it."""


@dataclass(frozen=True, kw_only=True)
class RolloutRequested(Event):
    rollout_id: str
    run_id: str
    provider: str
    model: str
    problem_id: str
    problem_hash: str
    sample: int
    attempt: int
    request: dict[str, Any]
    node: str
    budget_usd: float | None = None
    """What the attempt reserved of its run's budget, the most it could cost. An attempt
    that never gets an outcome (the daemon died, or stopped, with it at the provider,
    which may have answered and billed it) counts this against the budget when the run
    resumes, as a timed-out attempt counts its reservation. None when it reserved nothing
    (no budget, no price, or a batched attempt, whose outcome a resumed run still gets)."""


@dataclass(frozen=True, kw_only=True)
class RolloutResponded(Event):
    rollout_id: str
    attempt: int
    text: str
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    cost_usd: float | None = None
    latency_ms: float = 0.0
    request_id: str | None = None
    model: str | None = None
    """The model the provider says answered (it may name a dated snapshot)."""
    system_fingerprint: str | None = None
    """OpenAI's ``system_fingerprint`` of the answer (None from other providers)."""
    ttft_ms: float | None = None
    """Time to the first token of a streamed answer."""
    list_cost_usd: float | None = None
    """A batched answer's cost at the synchronous (list) prices; ``cost_usd`` is what it
    cost at the batch prices. None on an answer that was not batched."""
    budget_usd: float | None = None
    """What the answer counts against its run's budget when that is more than
    ``cost_usd``: its usage gave no count of the output tokens, so its cost is unknown and
    the budget counts the most it could have been (its reservation). None otherwise."""


@dataclass(frozen=True, kw_only=True)
class RolloutFailed(Event):
    rollout_id: str
    attempt: int
    kind: str
    status: int | None
    retryable: bool
    message: str
    retry_after_s: float | None = None
    final: bool = False
    """True when no further attempt will be made for this rollout in this run."""
    budget_usd: float | None = None
    """What the attempt counts against its run's budget: the provider may have answered
    and billed it (a body that could not be read, a timeout), for an unknown cost, so the
    budget counts the rollout's reservation. None when it counts nothing."""


@dataclass(frozen=True, kw_only=True)
class RolloutScored(Event):
    """The run's verdict on a rollout's answer (re-scores are ``RolloutRescored``)."""

    SCHEMA: ClassVar[int] = 2  # 2: problem_hash, scorer_version
    rollout_id: str
    passed: bool
    score: float
    scorer: str
    reason: str = ""
    extraction: str = ""
    duration_ms: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    problem_hash: str | None = None
    """The problem version (its content hash) judged against; None on schema 1 events,
    whose version is the one their ``RolloutRequested`` names."""
    scorer_version: str | None = None
    """The version of rollwatch's scoring code that judged (None on schema 1 events)."""
    time_limit_s: float | None = None
    """The time limit the answer ran under (calibrated per machine unless the problem
    sets one); None on schema 1 events."""


@upcaster("RolloutScored", 1)
def _scored_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    # Schema 1 did not name the versions; readers take the problem's from the request.
    return {**data, "problem_hash": None, "scorer_version": None, "time_limit_s": None}


@dataclass(frozen=True, kw_only=True)
class RolloutRescored(Event):
    """An archived answer judged again against a problem's current version (``rollwatch
    rescore``): no provider was asked. The rollout's earlier verdicts stay in the log;
    readers take the verdict under the newest version."""

    rollout_id: str
    problem_id: str
    passed: bool
    score: float
    scorer: str
    problem_hash: str
    scorer_version: str
    rescore_id: str
    """One ``rollwatch rescore`` (or the daemon's automatic re-score) and its summary."""
    previous_passed: bool | None = None
    """The verdict this one replaces (the newest before it)."""
    previous_problem_hash: str | None = None
    time_limit_s: float | None = None
    """The time limit the answer ran under this time."""
    reason: str = ""
    extraction: str = ""
    duration_ms: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


BODIES: Mapping[str, frozenset[str]] = {
    "RolloutRequested": frozenset({"request"}),
    "RolloutResponded": frozenset({"text", "reasoning"}),
    "RolloutScored": frozenset({"detail"}),
    "RolloutRescored": frozenset({"detail"}),
}
"""The fields of a rollout's events that carry its bodies (event type -> field names):
what was sent, what came back, the scorer's findings. Most of a log's bytes (in
bench_scale's rollouts, 216 of 235 MB of event data); no read model of ours reads them
(:attr:`rollwatch.abc.Projection.unread`)."""


@dataclass(frozen=True, kw_only=True)
class ProblemVersioned(Event):
    """A problem's content (prompt, tests, settings, reference) changed: its new version
    (content hash) is the one verdicts should be under from now on."""

    problem_set: str
    problem_id: str
    problem_hash: str
    previous_hash: str | None = None
    node: str = ""


@dataclass(frozen=True, kw_only=True)
class RescoreFinished(Event):
    """The end of one re-score: per problem, how many verdicts flipped each way."""

    rescore_id: str
    scorer_version: str
    rescored: int
    problems: dict[str, dict[str, Any]] = field(default_factory=dict)
    """problem_id -> {problem_hash, rescored, to_pass, to_fail, unchanged}."""
    node: str = ""


@dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    run_id: str
    status: str
    """completed, budget_exhausted, provider_failed, interrupted, failed."""
    rollouts: int
    passed: int
    cost_usd: float
    scored: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    message: str = ""
    planned: int = 0


@dataclass(frozen=True, kw_only=True)
class ServedModelChanged(Event):
    """The models a provider says served a configured model differ from the previous run's.

    Appended with the run's ``RunFinished`` (in the same append), once per configured
    model whose set of served models (``RolloutResponded.model``) is not the one of
    the last earlier run of the same provider and model that got an answer. The
    report splits its rows by served model, so the change never blends into a trend.
    """

    run_id: str
    provider: str
    model: str
    """The model as configured (what the run asked for)."""
    served: dict[str, int]
    """Served model → answers in this run."""
    previous: dict[str, int]
    """Served model → answers in the previous run (``previous_run_id``)."""
    previous_run_id: str


@dataclass(frozen=True, kw_only=True)
class BatchPrepared(Event):
    """A batch of a run's rollouts is about to be submitted under ``key``.

    Written before the provider is asked, so that a daemon killed before it learns the
    batch's id can look for it (OpenAI: the batch's ``metadata.rollwatch_batch``) rather
    than submit the rollouts again.
    """

    run_id: str
    provider: str
    key: str
    rollouts: dict[str, int]
    """Rollout id → the attempt number its request in this batch has."""
    node: str = ""


@dataclass(frozen=True, kw_only=True)
class BatchSubmitted(Event):
    """A provider accepted a batch of a run's rollouts (each already ``RolloutRequested``).

    A daemon that resumes the run polls this batch; it never submits these rollouts
    again unless the batch ends without their answers.
    """

    run_id: str
    provider: str
    batch_id: str
    """The provider's id of the batch."""
    rollouts: dict[str, int]
    """Rollout id → the attempt number its request in this batch has."""
    input_file_id: str | None = None
    """OpenAI: the uploaded JSONL file."""
    bytes: int = 0
    node: str = ""
    key: str = ""
    """The ``BatchPrepared`` key it was submitted under."""
    adopted: bool = False
    """Found at the provider after a restart (the submitting daemon died first)."""


@dataclass(frozen=True, kw_only=True)
class BatchPolled(Event):
    """A poll found a batch in another state (or with other counts) than the last one."""

    run_id: str
    batch_id: str
    state: str
    """The provider's word: OpenAI's ``status``, Anthropic's ``processing_status``."""
    counts: dict[str, int] = field(default_factory=dict)
    ends_at: str | None = None
    """When the provider will expire the batch, if it said."""


@dataclass(frozen=True, kw_only=True)
class BatchEnded(Event):
    """A batch's results were read and recorded; ``unanswered`` rollouts (expired,
    cancelled, missing) go into a later batch."""

    run_id: str
    batch_id: str
    state: str
    answered: int
    failed: int
    unanswered: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class RunInterrupted(Event):
    """The node stopped (SIGTERM) with the run unfinished; the next start resumes it."""

    run_id: str
    node: str
    done: int
    total: int
    reason: str


# Publication -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PublicationDecided(Event):
    rollout_id: str
    audience: str
    """subscribers, public, or none: "none" says nothing of this verdict goes to the
    public (every verdict records one more decision beside subscribers, public or none,
    so the log's size does not tell passes from failures; see publication.policy)."""
    not_before: str
    embargo_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class PublicReleased(Event):
    """The rollout's result is public from now on (the release job's, when its date fell due).

    Schema 2 commits to the claim a public proof bundle makes (see
    :func:`rollwatch.integrity.bundle.check_bundle`): the seq of every event of the rollout
    before this one, which of them a public bundle gives by its leaf alone, the verdict it
    releases, the decision it acts on and the date. A bundle then holds exactly those events:
    one left out, or another leaf of the tree given as a withheld failing verdict, is refused.
    Schema 1 (and a schema 2 event written without them, as tests and tools may) names none:
    its bundles get the weaker check of before (``seqs`` None)."""

    SCHEMA: ClassVar[int] = 2  # 2: seqs, withheld, verdict_seq, decided_seq, not_before
    rollout_id: str
    seqs: list[int] | None = None
    """The seq of every event of the rollout's stream before this release, in order."""
    withheld: list[int] | None = None
    """Those of ``seqs`` a public bundle gives by leaf alone (:func:`rollwatch.integrity.bundle.withheld_as`:
    failing verdicts and failed attempts)."""
    verdict_seq: int | None = None
    """The verdict the release stands for: the rollout's newest before it, a pass."""
    decided_seq: int | None = None
    """The public decision whose date (or, for a pass restored with no decision of its own,
    whose embargo) the release acted on (:attr:`PublicDate.decided_seq`)."""
    not_before: str | None = None
    """The public date in force at the release (:attr:`PublicDate.not_before`)."""


@upcaster("PublicReleased", 1)
def _released_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    # Schema 1 named no claim: its bundles get the check of before.
    return {
        **data,
        "seqs": None,
        "withheld": None,
        "verdict_seq": None,
        "decided_seq": None,
        "not_before": None,
    }


# Schedules ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SchedulePaused(Event):
    schedule: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ScheduleResumed(Event):
    schedule: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ScheduleTriggered(Event):
    schedule: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ScheduleSkipped(Event):
    """Fires that did not start a run: the previous run was still going, or paused.

    One event may stand for several fires (``fires``): those skipped while one run of the
    schedule went are recorded at once for the first, then together (``first_fire_time``
    to ``fire_time``) when the run ends, and at least once an hour of fires meanwhile.
    """

    schedule: str
    reason: str
    fire_time: str
    """The (latest) fire skipped."""
    trigger_seq: int = 0
    """When the fire was a trigger: its seq (the trigger counts as answered)."""
    due: str | None = None
    """As ``RunStarted.due`` (of the latest fire)."""
    fires: int = 1
    """How many fires this event records as skipped."""
    first_fire_time: str | None = None
    """The earliest of them, when ``fires`` is more than one."""


@dataclass(frozen=True, kw_only=True)
class ScheduleMissed(Event):
    """Fires that passed while the daemon was down; they collapse into one catch-up run."""

    schedule: str
    missed: int
    since: str


# Subscribers -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SubscriberAdded(Event):
    name: str
    key_hash: str
    key_prefix: str
    scopes: list[str] = field(default_factory=list)
    expires: str | None = None


@dataclass(frozen=True, kw_only=True)
class SubscriberRevoked(Event):
    name: str
    note: str = ""


# Integrity ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CheckpointSigned(Event):
    """The service signed a checkpoint of the tree of the ``size`` events before this one."""

    size: int
    root: str
    """The root hash at ``size``, base64."""
    note: str
    """The whole signed note, as served at ``/public/checkpoint``."""
    node: str = ""
    """The daemon that signed it (on a shared log, the leader of checkpoints)."""


@dataclass(frozen=True, kw_only=True)
class CheckpointKeyRotated(Event):
    """The checkpoint key changed: from this event on, checkpoints are signed by ``new_key``.

    ``note`` is a signed note (see :mod:`rollwatch.integrity.rotation`) naming the
    log's origin, the old key and the new one, signed by both: the old key vouches
    for the new, and the new proves it is held. Auditors who pinned the old key
    follow the chain to the new one.
    """

    old_key: str
    """The retired verifier key (vkey)."""
    new_key: str
    """The verifier key now in force (vkey)."""
    note: str
    node: str = ""


# -- a rollout's public date, as its events make it ------------------------------------------
# (here, not in rollwatch.publication.policy, so that integrity's bundle check reads it too)


def date_length(decision: PublicationDecided, decided_at: str) -> float:
    """The embargo a public decision dated its result with: its ``embargo_s``, or (a decision
    that does not carry one: 0, the field's default) its date less the time it was logged."""
    if decision.embargo_s:
        return float(decision.embargo_s)
    return max(0.0, (parse_rfc3339(decision.not_before) - parse_rfc3339(decided_at)).total_seconds())


def add_cost(total: Any, cost: float) -> float:
    """``total`` with one more answer's ``cost`` (not None): how a result's cost adds up, in
    the read models and in ``check_bundle`` alike. An unknown total (None, or the NaN the read
    models bind as NULL) counts as 0."""
    return (total if total is not None and total == total and total else 0) + cost


def restored_date(restored_at: str, length: float) -> str:
    """The public date of a pass restored at ``restored_at`` (its event's time) whose withdrawn
    date had the embargo ``length``: one embargo after the restore."""
    return rfc3339(parse_rfc3339(restored_at) + timedelta(seconds=length))


class PendingReleases:
    """Rollouts with a public decision in the log and no release yet, as one pass over the
    log (the scrub's) finds them, whatever the read models hold.

    The release job finds what is due in the projections file; a pending row edited there
    (its date moved, marked failed, deleted) or events skipped by a checkpoint moved ahead
    left a pass never released, and nothing said so. The scrub hands :meth:`due` to the
    release job, which releases each one the log says is due (``release_one`` decides from
    the rollout's stream: a withdrawn or restored date included) and names the file.
    Only what lies between a public decision and its release is kept (the embargo window).
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}
        """Rollout id -> the ``not_before`` of its latest public decision."""

    def see(self, rec: Recorded) -> None:
        """Note one event of the log (read in the log's order); others than decisions and
        releases, and one that does not decode (the scrub names those), change nothing."""
        t = rec.type
        if t != "PublicationDecided" and t != "PublicReleased":
            return
        try:
            ev = rec.event()
            if isinstance(ev, PublicationDecided):
                if (
                    ev.audience == "public"
                    and isinstance(ev.rollout_id, str)
                    and isinstance(ev.not_before, str)
                ):
                    self.pending[ev.rollout_id] = ev.not_before
            elif isinstance(ev, PublicReleased) and isinstance(ev.rollout_id, str):
                self.pending.pop(ev.rollout_id, None)
        except (UnknownEventType, NewerSchema, ValueError, TypeError):
            return

    def due(self, now: datetime) -> list[str]:
        """The pending rollouts whose decision's date is at or before ``now``."""
        out = []
        for rid, nb in self.pending.items():
            try:
                if parse_rfc3339(nb) <= now:
                    out.append(rid)
            except (ValueError, TypeError):
                continue
        return sorted(out)


@dataclass(slots=True)
class PublicDate:
    """A rollout's public date as its events make it, applied in the stream's order.

    * the first public decision dates it (a later one changes nothing: readers may rely on
      the date), unless the date was withdrawn;
    * a failing verdict before the release withdraws the date (:attr:`withdrawn`);
    * a passing verdict while withdrawn restores it, dated an embargo (the withdrawn date's)
      after the restore; a public decision appended with that restore (this release's
      :func:`decide`) dates it instead;
    * after the release nothing moves the date.

    :attr:`not_before` is the date in force (None: none, or withdrawn); :attr:`decided_seq`
    the public decision it comes from (or whose embargo a restore reused), and
    :attr:`restored_seq` the restore that dates it when no decision of its own came with it.
    """

    passed: bool = False
    not_before: str | None = None
    length: float = 0.0
    decided_seq: int | None = None
    restored_seq: int | None = None
    withdrawn: bool = False
    released_seq: int | None = None
    decided: set[str] = field(default_factory=set)
    """The audiences decided (not "none")."""

    @property
    def due(self) -> datetime | None:
        """When the result may be released (None: never, as things stand)."""
        if not self.passed or self.not_before is None or self.withdrawn:
            return None
        return parse_rfc3339(self.not_before)

    def apply(self, rec: Recorded) -> None:
        """Take in the rollout's next event."""
        self.take(rec.seq, rec.at, rec.event())

    def take(self, seq: int, at: str, ev: Any) -> None:
        """Take in the event ``ev`` logged at ``seq`` and ``at``."""
        if isinstance(ev, RolloutScored | RolloutRescored):
            passed = bool(ev.passed)
            if self.released_seq is None and self.not_before is not None:
                if not passed and not self.withdrawn:
                    self.withdrawn = True
                elif passed and self.withdrawn:
                    self.withdrawn = False
                    self.not_before = restored_date(at, self.length)
                    self.restored_seq = seq
            self.passed = passed
        elif isinstance(ev, PublicationDecided):
            if ev.audience != "none":
                self.decided.add(ev.audience)
            if ev.audience != "public" or self.released_seq is not None:
                return
            if self.not_before is None or (self.restored_seq is not None and not self.withdrawn):
                # The first decision, or the restore's own (appended with it).
                self.not_before = ev.not_before
                self.length = date_length(ev, at)
                self.decided_seq = seq
                self.restored_seq = None
        elif isinstance(ev, PublicReleased) and self.released_seq is None:
            self.released_seq = seq
