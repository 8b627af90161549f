"""The event store contract, run against every backend (see ``conftest.store``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollwatch.abc import NO_STREAM, EventStore
from rollwatch.errors import ConcurrencyConflict
from rollwatch.events import GENESIS, RunFinished, SchedulePaused, ScheduleTriggered, chain_hash

pytestmark = pytest.mark.anyio


def ev(i: int = 0, note: str = "") -> SchedulePaused:
    return SchedulePaused(schedule=f"s{i}", note=note)


class TestAppend:
    async def test_seq_is_gap_free_and_versions_count_per_stream(self, store: EventStore) -> None:
        """seq runs 1, 2, 3 over all streams; version counts within each stream."""
        a = await store.append("a", [ev(1), ev(2)])
        b = await store.append("b", [ev(3)])
        c = await store.append("a", [ev(4)])
        assert [r.seq for r in a + b + c] == [1, 2, 3, 4]
        assert [r.version for r in a + b + c] == [1, 2, 1, 3]
        assert await store.head() == 4
        assert await store.stream_version("a") == 3
        assert await store.stream_version("nope") == 0

    async def test_conflict_raises_and_writes_nothing(self, store: EventStore) -> None:
        """A stale expected_version raises ConcurrencyConflict and appends none of the batch."""
        await store.append("a", [ev()], expected_version=NO_STREAM)
        with pytest.raises(ConcurrencyConflict, match="stream 'a' is at version 1"):
            await store.append("a", [ev(), ev()], expected_version=NO_STREAM)
        assert await store.head() == 1
        await store.append("a", [ev()], expected_version=1)
        assert await store.stream_version("a") == 2

    async def test_hash_chain_links_every_event(self, store: EventStore) -> None:
        """Each hash is SHA-256 over the previous hash and the event's canonical bytes."""
        await store.append("a", [ev(i, note="é ünïcode") for i in range(5)])
        prev = GENESIS
        async for r in store.read():
            assert r.hash == chain_hash(prev, r.canonical()).hex()
            prev = bytes.fromhex(r.hash)
        assert (await store.verify()).events == 5

    async def test_text_that_is_not_valid_unicode_never_fails_an_append(self, store: EventStore) -> None:
        """A lone surrogate (a provider's JSON may carry ``"\\ud800"``) is stored as U+FFFD,
        a split surrogate pair as its character; appends sharing its group commit land too."""
        hostile = ev(1, note="bad \ud800 end \udfff, pair \ud83d\ude00")
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(store.append, f"other{i}", [ev(i)])
            recs = await store.append("hostile", [hostile])
        assert recs[0].data["note"] == "bad \ufffd end \ufffd, pair \U0001f600"
        assert recs[0].event() == SchedulePaused(schedule="s1", note="bad \ufffd end \ufffd, pair \U0001f600")
        assert await store.head() == 21
        assert (await store.verify()).events == 21

    async def test_concurrent_appends_stay_atomic_and_contiguous(self, store: EventStore) -> None:
        """Many tasks appending batches at once: each batch's events are contiguous in seq."""
        results = {}

        async def writer(i: int) -> None:
            for j in range(10):
                recs = await store.append(f"w{i}", [ev(i, note=f"{j}-{k}") for k in range(3)])
                results[(i, j)] = [r.seq for r in recs]

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(writer, i)
        assert await store.head() == 600
        for seqs in results.values():
            assert seqs == list(range(seqs[0], seqs[0] + 3))
        for i in range(20):
            assert await store.stream_version(f"w{i}") == 30
        await store.verify()

    async def test_concurrent_appends_with_a_full_group_always_queued(
        self, store: EventStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With more queued than one group takes, the writer commits back to back and wakes
        each group's callers during the next commit: still atomic, ordered and verified."""
        from rollwatch.store import _group_commit

        monkeypatch.setattr(_group_commit, "MAX_GROUP_EVENTS", 7)
        returned: dict[int, tuple[int, str, int, str]] = {}
        conflicts = 0

        async def writer(i: int) -> None:
            nonlocal conflicts
            for j in range(8):
                recs = await store.append(f"w{i}", [ev(i, note=f"{j}-{k}") for k in range(3)])
                for r in recs:
                    returned[r.seq] = (r.version, r.stream, r.seq, r.hash)
                try:  # a stale expected version in between: it conflicts and writes nothing
                    await store.append(f"w{i}", [ev(i)], expected_version=0)
                except ConcurrencyConflict:
                    conflicts += 1

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(writer, i)
        assert conflicts == 12 * 8
        assert await store.head() == 12 * 8 * 3
        stored = {r.seq: (r.version, r.stream, r.seq, r.hash) async for r in store.read()}
        assert stored == returned
        by_stream: dict[str, list[int]] = {}
        for version, stream, _, _ in stored.values():
            by_stream.setdefault(stream, []).append(version)
        assert all(v == list(range(1, 25)) for v in by_stream.values())
        assert (await store.verify()).events == 12 * 8 * 3

    async def test_a_burst_larger_than_one_group_all_returns(self, store: EventStore) -> None:
        """More appends than one group takes, all queued before the writer runs and none
        after them: the calls left over from the first group are committed with the next,
        not left waiting for an append that never comes."""
        from rollwatch.store._group_commit import MAX_GROUP_EVENTS

        n = MAX_GROUP_EVENTS + 1
        returned = 0
        all_returned = anyio.Event()
        stranded = 0

        async def one(i: int) -> None:
            nonlocal returned
            await store.append(f"b{i}", [ev(i)])
            returned += 1
            if returned == n:
                all_returned.set()

        async def watch() -> None:
            # An append's wait is shielded (a cancelled caller must still learn its fate):
            # a stranded call is counted, then freed by one more append, never waited on forever.
            nonlocal stranded
            with anyio.move_on_after(20):
                await all_returned.wait()
            if not all_returned.is_set():
                stranded = n - returned
                await store.append("rescue", [ev()])

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
            tg.start_soon(watch)
        assert stranded == 0
        assert await store.head() == n
        assert (await store.verify()).events == n

    async def test_concurrent_conflicts_let_exactly_one_win(self, store: EventStore) -> None:
        """Tasks racing on the same expected version: one commits, the rest conflict."""
        outcomes: list[str] = []

        async def racer() -> None:
            try:
                await store.append("x", [ev()], expected_version=NO_STREAM)
                outcomes.append("ok")
            except ConcurrencyConflict:
                outcomes.append("conflict")

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(racer)
        assert sorted(outcomes) == ["conflict"] * 9 + ["ok"]
        assert await store.head() == 1


class TestRead:
    async def test_read_filters_and_batches(self, store: EventStore) -> None:
        """read() pages through the log in batches, by stream, type and range."""
        for i in range(25):
            await store.append(f"s{i % 3}", [ev(i)])
        await store.append(
            "r", [RunFinished(run_id="r", status="completed", rollouts=1, passed=1, cost_usd=0.5)]
        )
        assert [r.seq for r in [x async for x in store.read(batch=4)]] == list(range(1, 27))
        assert len([x async for x in store.read(stream="s1", batch=2)]) == 8
        only = [x async for x in store.read(types={"RunFinished"})]
        assert [x.seq for x in only] == [26]
        assert only[0].event() == RunFinished(
            run_id="r", status="completed", rollouts=1, passed=1, cost_usd=0.5
        )
        assert [x.seq async for x in store.read(after=10, until=12, batch=1)] == [11, 12]

    async def test_read_at_gives_the_events_at_scattered_positions(self, store: EventStore) -> None:
        """read_at() gives the events at any positions the log has (one query), by seq, the
        same rows read() gives; positions the log lacks are absent, duplicates harmless."""
        for i in range(1200):
            await store.append(f"s{i % 5}", [ev(i)])
        every = {r.seq: r async for r in store.read()}
        want = [1200, 3, 77, 3, 501, 999, 0, -4, 5000, *range(100, 1200, 2)]
        got = await store.read_at(want)
        assert got == {s: every[s] for s in want if s in every}
        assert await store.read_at([]) == {}
        fallback = await EventStore.read_at(store, [5, 700, 1300])
        assert fallback == {5: every[5], 700: every[700]}

    async def test_read_streams_gives_those_streams_events_oldest_first(self, store: EventStore) -> None:
        """read_streams() gives every event of the streams asked for (of the types, up to
        ``until``), oldest first, the same rows read() gives; no other stream's, whatever
        its name (a prefix, a LIKE pattern, a quote), and as many streams as asked (past one
        query's parameters: 453 here)."""
        names = [f"rollout-{i}" for i in range(903)] + ["rollout-1%", "rollout-'", "rollout-_"]

        async def writer(w: int) -> None:  # streams interleaved in the log, as runs write them
            for i in range(w, len(names), 10):
                kind = RunFinished(run_id=f"r{i}", status="completed", rollouts=1, passed=0, cost_usd=0.0)
                await store.append(names[i], [ev(i), kind] if i % 3 else [kind, ev(i)])

        async with anyio.create_task_group() as tg:
            for w in range(10):
                tg.start_soon(writer, w)
        every = [r async for r in store.read()]
        asked = {*names[::2], "rollout-1%", "nope", "rollout-"}
        got = await store.read_streams(asked)
        assert got == [r for r in every if r.stream in asked]
        assert [r.seq for r in got] == sorted(r.seq for r in got)
        until = every[len(every) // 2].seq
        got = await store.read_streams(asked, types=["RunFinished"], until=until)
        assert got == [r for r in every if r.stream in asked and r.type == "RunFinished" and r.seq <= until]
        assert got
        assert await store.read_streams([]) == []
        assert await store.read_streams(["nope"]) == []
        fallback = await EventStore.read_streams(store, ["rollout-3", "rollout-1%"], types=["SchedulePaused"])
        assert fallback == [
            r for r in every if r.stream in ("rollout-3", "rollout-1%") and r.type == "SchedulePaused"
        ]

    async def test_follow_yields_new_events(self, store: EventStore) -> None:
        """follow() yields the backlog, then events appended later, promptly."""
        await store.append("a", [ev(0)])
        seen: list[int] = []
        got_three = anyio.Event()

        async def follower() -> None:
            async for r in store.follow():
                seen.append(r.seq)
                if len(seen) == 3:
                    got_three.set()
                    return

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follower)
                await anyio.wait_all_tasks_blocked()
                await store.append("a", [ev(1), ev(2)])
                await got_three.wait()
        assert seen == [1, 2, 3]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 4), st.booleans()),
        min_size=1,
        max_size=20,
    )
)
def test_property_order_versions_conflicts_and_chain(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, bool]]
) -> None:
    """For any sequence of appends (some with stale expected versions), the log equals a model."""
    from rollwatch.store.sqlite import SQLiteEventStore

    path = tmp_path_factory.mktemp("prop") / "events.db"

    async def main() -> None:
        model: list[tuple[str, int]] = []
        versions: dict[str, int] = {}
        async with SQLiteEventStore(path) as store:
            for n, (stream, count, stale) in enumerate(ops):
                current = versions.get(stream, 0)
                expected = current + 1 if stale else current
                batch = [ev(n, note=f"{n}.{k}") for k in range(count)]
                if stale:
                    with pytest.raises(ConcurrencyConflict):
                        await store.append(stream, batch, expected_version=expected)
                    continue
                await store.append(stream, batch, expected_version=expected)
                for k in range(count):
                    model.append((stream, current + k + 1))
                versions[stream] = current + count
            got = [(r.stream, r.version) async for r in store.read(batch=3)]
            seqs = [r.seq async for r in store.read(batch=7)]
            assert got == model
            assert seqs == list(range(1, len(model) + 1))
            assert (await store.verify()).events == len(model)

    anyio.run(main)


@given(
    stream=st.text(max_size=30),
    type_=st.text(max_size=12),
    data=st.dictionaries(
        st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=10), st.none()), max_size=4
    ),
    at=st.just("2026-11-29T00:00:00.000000Z") | st.text(max_size=30),
    id_=st.just("6f1d7f0e-3c9b-4c1e-9a57-2b8f0d4c7a11") | st.text(max_size=40),
)
def test_canonical_bytes_equal_the_documented_json(
    stream: str, type_: str, data: dict[str, object], at: str, id_: str
) -> None:
    """The hand-built canonical bytes equal sorted, compact, non-ASCII-preserving JSON of the
    envelope, whatever its strings hold (one of four with a quote, a backslash or a control
    character takes the slow path for all)."""
    import json

    from rollwatch.events import canonical_bytes, canonical_json

    env = {
        "seq": 7,
        "id": id_,
        "stream": stream,
        "type": type_,
        "schema": 1,
        "at": at,
        "data": data,
    }
    expected = json.dumps(env, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    got = canonical_bytes(
        seq=7, id=id_, stream=stream, type=type_, schema=1, at=at, data_json=canonical_json(data)
    )
    assert got == expected


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@given(value=_json_values)
def test_canonical_json_fast_equals_canonical_json(value: object) -> None:
    """The append path's encoder (built once) gives canonical_json's text, or its error."""
    from rollwatch.events import canonical_json, canonical_json_fast

    assert canonical_json_fast(value) == canonical_json(value)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="Out of range float"):
            canonical_json_fast({"x": [value, bad]})


@given(
    calls=st.lists(
        st.tuples(
            st.text(max_size=12),  # stream
            st.text(max_size=30),  # at (append writes RFC 3339; any text must work)
            st.lists(
                st.tuples(
                    st.sampled_from(["SchedulePaused", "Typé", 'Q"uote', "back\\slash", "tab\t", ""]),
                    st.integers(1, 3),
                    st.dictionaries(st.text(max_size=8), _json_values, max_size=3),
                ),
                min_size=1,
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=5,
    ),
    start=st.integers(0, 10**6),
)
def test_assign_hashes_what_canonical_bytes_and_chain_hash_define(
    calls: list[tuple[str, str, list[tuple[str, int, dict[str, object]]]]], start: int
) -> None:
    """The group commit's hot loop (assign) builds each Recorded exactly as the reference
    definition: canonical_bytes of the envelope, chained with chain_hash."""
    from rollwatch.events import Recorded, canonical_bytes, canonical_json
    from rollwatch.store._group_commit import Pending, _uuid4s, assign

    prev0 = bytes(range(32))
    group = [
        Pending(
            stream,
            None,
            at,
            [(i, t, s, canonical_json(d)) for i, (t, s, d) in zip(_uuid4s(len(rows)), rows, strict=True)],
        )
        for stream, at, rows in calls
    ]
    out: list[Recorded] = []
    seq, prev = assign(group, start, prev0, dict.fromkeys((c[0] for c in calls), 0), out)

    expected: list[Recorded] = []
    versions: dict[str, int] = {}
    h, n = prev0, start
    for p in group:
        for eid, typ, schema, data in p.rows:
            n += 1
            versions[p.stream] = versions.get(p.stream, 0) + 1
            env = canonical_bytes(
                seq=n, id=eid, stream=p.stream, type=typ, schema=schema, at=p.at, data_json=data
            )
            h = chain_hash(h, env)
            expected.append(Recorded(n, eid, p.stream, versions[p.stream], typ, schema, p.at, data, h.hex()))
    assert out == expected
    assert (seq, prev) == (n, h)
    assert [r for p in group for r in p.result or []] == expected


@pytest.mark.parametrize("edit", ["UPDATE events SET version = version + 30 WHERE seq = 9", None])
def test_the_fallback_and_the_store_check_stream_versions_alike(tmp_path: Path, edit: str | None) -> None:
    """``EventStore.verify_versions`` (reading every event) and the SQLite store's query
    name the same seq, or both pass."""
    from rollwatch.errors import IntegrityError
    from rollwatch.store.sqlite import SQLiteEventStore

    db = tmp_path / "events.db"

    async def write() -> int:
        async with SQLiteEventStore(db) as store:
            for i in range(12):
                await store.append(f"s-{i % 3}", [ScheduleTriggered(schedule=f"s{i}")])
            return await store.head()

    head = anyio.run(write)
    if edit is not None:
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        con.execute(edit)
        con.close()

    async def check(generic: bool) -> int | None:
        async with SQLiteEventStore(db, read_only=True) as store:
            try:
                if generic:
                    await EventStore.verify_versions(store, head)
                else:
                    await store.verify_versions(head)
            except IntegrityError as e:
                return e.seq
            return None

    got = {anyio.run(check, g) for g in (True, False)}
    assert got == ({9} if edit else {None})
