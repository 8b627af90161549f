"""The catch-up leaves a rollout's bodies (request, answer, reasoning, scorer's findings)
unparsed, as no read model reads them: the tables are those a whole parse builds, a
document msgspec refuses is read as before, and a read model that declares nothing (a
plug-in's) still gets every field parsed."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from rollwatch import events as e
from rollwatch.abc import Projection
from rollwatch.errors import UnknownEventType
from rollwatch.events import (
    Recorded,
    RolloutRequested,
    RolloutResponded,
    RolloutScored,
    RunStarted,
    rollout_stream,
    run_stream,
)
from rollwatch.projections import ProjectionDB, _decoded, fast_loads
from rollwatch.publication.keys import new_key
from rollwatch.readmodels import default_projections
from rollwatch.store.sqlite import SQLiteEventStore
from tests.test_rebuild import dump, write_log

pytestmark = pytest.mark.anyio

# Bodies of every shape a provider or a scorer could leave: escapes, code, other scripts,
# nesting, and values of other JSON types than the field declares (the read models take
# values as they are).
ODD_BODIES: list[dict[str, Any]] = [
    {"text": 'print("a\\nb")\n\t"quoted" \\ back \u2028 \u00e9\u4e2d\U0001f600', "reasoning": "x" * 50_000},
    {"text": "", "reasoning": None},
    {"text": 12.5, "reasoning": {"nested": [1, {"deep": [[[]]]}]}},
    {"text": ["a", "list"], "reasoning": True},
]


async def _odd_rollouts(store: SQLiteEventStore) -> None:
    await store.append(
        run_stream("odd"),
        [
            RunStarted(
                run_id="odd",
                schedule="nightly",
                provider="p",
                models=["m1"],
                problem_set="ps",
                node="n",
                rollouts=len(ODD_BODIES),
                problems=["p0"],
                trigger="schedule",
            )
        ],
    )
    for n, body in enumerate(ODD_BODIES):
        rid = f"odd-{n}"
        await store.append(
            rollout_stream(rid),
            [
                RolloutRequested(
                    rollout_id=rid,
                    run_id="odd",
                    provider="p",
                    model="m1",
                    problem_id="p0",
                    problem_hash="h0",
                    sample=n,
                    attempt=1,
                    request={"messages": [{"role": "user", "content": body["text"]}], "n": [n] * 100},
                    node="n",
                )
            ],
        )
        await store.append(
            rollout_stream(rid),
            [RolloutResponded(rollout_id=rid, attempt=1, cost_usd=0.5, model="m1-v", **body)],
        )
        await store.append(
            rollout_stream(rid),
            [
                RolloutScored(
                    rollout_id=rid,
                    passed=n % 2 == 0,
                    score=1.0,
                    scorer="python-function",
                    detail={"stdout": body["text"], "cases": [{"ok": True}] * 20},
                )
            ],
        )


def _everything_parsed() -> list[Projection]:
    """The default read models, each declaring no unread field (a plug-in's default)."""
    projections = default_projections()
    for p in projections:
        p.unread = {}  # type: ignore[misc]  # an instance's own declaration
    return projections


async def test_no_read_model_reads_a_body(tmp_path: Path) -> None:
    """Built with the bodies unparsed and with every field parsed, every table is the same:
    no read model reads what the catch-up leaves out (one that did would store a
    ``msgspec.Raw``, which SQLite refuses, or other rows)."""
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await write_log(store, new_key())
        await _odd_rollouts(store)
        async with ProjectionDB(tmp_path / "slim.db", default_projections(), setup=False) as slim:
            assert slim._slim["RolloutResponded"] == {"text", "reasoning"}
            head = await slim.rebuild_beside(store)
            slim_rows = dump(slim.file)
        async with ProjectionDB(tmp_path / "whole.db", _everything_parsed(), setup=False) as whole:
            assert whole._slim == {}
            assert await whole.rebuild_beside(store) == head
            assert dump(whole.file) == slim_rows
    assert len(slim_rows["rollouts"]) == 120 + len(ODD_BODIES)


class Answers(Projection):
    """A plug-in's read model that reads the answers' text (declares no unread field)."""

    name = "answers"
    tables = ("answers",)
    types: ClassVar[frozenset[str]] = frozenset({"RolloutResponded"})
    ddl = "CREATE TABLE IF NOT EXISTS answers (rollout_id TEXT PRIMARY KEY, text TEXT)"

    def apply(self, db: sqlite3.Connection, rec: Recorded) -> None:
        ev = rec.event()
        assert isinstance(ev, RolloutResponded)
        db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (ev.rollout_id, json.dumps(ev.text)))


async def test_a_read_model_that_declares_nothing_gets_the_bodies(tmp_path: Path) -> None:
    """Built beside ours (which read no answer), a plug-in's read model that declares no
    unread field reads every answer's text as written: a field is left unparsed only when
    no read model of the catch-up reads it."""
    async with SQLiteEventStore(tmp_path / "events.db") as store:
        await _odd_rollouts(store)
        async with ProjectionDB(tmp_path / "p.db", [*default_projections(), Answers()], setup=False) as pdb:
            assert "RolloutResponded" not in pdb._slim
            assert pdb._slim["RolloutRequested"] == {"request"}
            await pdb.rebuild_beside(store)
            got = dict(await pdb.fetchall("SELECT rollout_id, text FROM answers"))
    assert got == {f"odd-{n}": json.dumps(b["text"]) for n, b in enumerate(ODD_BODIES)}


SLIM = {t: frozenset(f) for t, f in e.BODIES.items()}

GOOD = {
    "attempt": 1,
    "budget_usd": None,
    "cost_usd": 0.25,
    "finish_reason": "stop",
    "latency_ms": 3.0,
    "list_cost_usd": None,
    "model": "m",
    "reasoning": "why",
    "request_id": "q",
    "rollout_id": "r1",
    "system_fingerprint": None,
    "text": "def f():\n    return 1",
    "ttft_ms": None,
    "usage": {"prompt_tokens": 2**70, "completion_tokens": 5},
}


def _row(data: str, type_: str = "RolloutResponded", schema: int = 1, seq: int = 7) -> tuple[Any, ...]:
    """A catch-up's (lean) row: seq, no id/stream/version, type, schema, at, data, hash."""
    return (seq, None, None, None, type_, schema, "2026-01-01T00:00:00.000000Z", data, "0" * 64)


def _fields(ev: e.Event, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {k: v for k, v in ev.__dict__.items() if k not in skip}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(json.dumps(GOOD, sort_keys=True, separators=(",", ":")), id="as-written"),
        pytest.param(json.dumps({**GOOD, "extra": [1, 2]}), id="an-unknown-key"),
        pytest.param(
            json.dumps({k: v for k, v in GOOD.items() if k != "reasoning"}), id="a-default-left-out"
        ),
        pytest.param(json.dumps(GOOD, indent=2, ensure_ascii=True), id="spaced-and-escaped"),
        pytest.param(
            json.dumps(GOOD).replace('"cost_usd"', '"cost\\u005fusd"').replace('"text"', '"te\\u0078t"'),
            id="escaped-keys",
        ),
        pytest.param(
            json.dumps(GOOD)[:-1] + ', "cost_usd": 9.5, "text": "second", "model": "last"}', id="keys-twice"
        ),
    ],
)
def test_bodies_are_their_json_text_and_the_rest_is_as_a_whole_parse(data: str) -> None:
    """Each field but the bodies is what ``Recorded.event`` decodes (an integer beyond 64
    bits included); each body present is its own JSON text, unparsed."""
    row = _row(data)
    whole = Recorded(*row).event()
    slim = _decoded(row, SLIM)  # type: ignore[arg-type]
    ev = slim.event()
    unread = SLIM["RolloutResponded"]
    assert _fields(ev, unread) == _fields(whole, unread)
    assert ev.usage["prompt_tokens"] == 2**70  # type: ignore[attr-defined]
    present = unread & json.loads(data).keys()
    for name in present:
        raw = getattr(ev, name)
        assert isinstance(raw, msgspec.Raw)
        assert json.loads(bytes(raw)) == getattr(whole, name)
    for name in unread - present:  # the class's default, as a whole parse gives it
        assert getattr(ev, name) == getattr(whole, name)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(json.dumps(GOOD).replace('"cost_usd": 0.25', '"cost_usd": NaN'), id="nan"),
        pytest.param(json.dumps(GOOD).replace('"cost_usd": 0.25', '"cost_usd": 1e400'), id="out-of-range"),
        pytest.param(json.dumps(GOOD).replace('"text": "def', '"text": "\\ud800def'), id="lone-surrogate"),
    ],
)
def test_a_document_msgspec_refuses_is_parsed_whole_as_before(data: str) -> None:
    """What msgspec refuses (NaN, a number out of range, a lone surrogate: no writer of
    ours makes one) is read as the catch-up always read it (orjson, then ``json`` where
    orjson refuses), every field parsed."""
    row = _row(data)
    ev = _decoded(row, SLIM).event()  # type: ignore[arg-type]
    whole = e.decode(row[4], row[5], fast_loads(row[7]))
    assert repr(_fields(ev)) == repr(_fields(whole))
    assert isinstance(ev.text, str)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("[1, 2]", "JSON list"),
        ('{"attempt": 1, "rollout_id": "r"}', "lacks required field(s) text"),
        ('{"attempt": 1, "rollout_id": "r", "text": "a"', "not valid JSON"),
        ('{"attempt": 1, "rollout_id": "r", "text": "a"} x', "not valid JSON"),
    ],
)
def test_an_unreadable_row_is_named_as_before(data: str, why: str) -> None:
    """A row no rollwatch wrote (edited: not an object, a body missing, cut off, trailing
    garbage) is refused naming its seq, as with every field parsed."""
    row = _row(data, seq=41)
    with pytest.raises(UnknownEventType, match="41") as slim:
        _decoded(row, SLIM)  # type: ignore[arg-type]
    with pytest.raises(UnknownEventType, match="41") as whole:
        Recorded(*row).event()
    assert why in str(slim.value) or why in str(whole.value)
    assert type(slim.value) is type(whole.value)


def test_an_older_schema_is_parsed_whole_and_upcast() -> None:
    """Data of an older schema (an upcaster may rewrite any field) is parsed whole."""
    old = {"rollout_id": "r", "passed": True, "score": 1.0, "scorer": "s", "detail": {"a": [1]}}
    row = _row(json.dumps(old), type_="RolloutScored", schema=1)
    ev = _decoded(row, SLIM).event()  # type: ignore[arg-type]
    assert _fields(ev) == _fields(Recorded(*row).event())
    assert ev.detail == {"a": [1]}  # type: ignore[attr-defined]


def test_nesting_past_the_recursion_limit_is_parsed_whole_as_before() -> None:
    """msgspec stops at the interpreter's recursion limit (Python's default, 1,000, here;
    a test runner may raise it), orjson at 1,024 levels: a field nested between the two is
    read by orjson, as before."""
    deep = "[" * 1010 + "]" * 1010
    data = json.dumps({**GOOD, "usage": {"deep": "X"}}).replace('"X"', deep)
    row = _row(data)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        ev = _decoded(row, SLIM).event()  # type: ignore[arg-type]
    finally:
        sys.setrecursionlimit(limit)
    whole = e.decode(row[4], row[5], fast_loads(row[7]))
    assert _depth(ev.usage["deep"]) == _depth(whole.usage["deep"]) == 1010  # type: ignore[attr-defined]
    assert ev.text == GOOD["text"]  # type: ignore[attr-defined]


def _depth(value: Any) -> int:
    """How deep a nest of lists goes (without recursion: 1,010 levels)."""
    n = 0
    while isinstance(value, list):
        n += 1
        value = value[0] if value else None
    return n
