"""Tampering with a PostgreSQL log through its schema, by whoever owns the database.

The hash chain covers what is stored, not how the database treats what is written or read:
a trigger that drops an event as it is inserted leaves the chain whole (the next event takes
the dropped one's seq), and a row-level security policy, a rule or a table shadowing
``events`` in an earlier schema hides or adds events without a row changing. SQLite's log
refuses a schema it did not make (``test_tamper_schema.py``); these are the same attacks on
PostgreSQL. Each is made by the database's superuser on a real scratch database, under a
store that is open (its next append must fail, saying why, writing nothing) or before one
opens (the open, and so a daemon's start, must refuse, naming what it found), and
``verify_versions`` (``rollwatch verify``, the scrub) must name it too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from rollwatch.errors import IntegrityError, StoreError
from rollwatch.events import SchedulePaused, ScheduleResumed
from rollwatch.store.postgres import PostgresEventStore
from tests.pg import scratch_database

pytestmark = pytest.mark.anyio


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with scratch_database() as u:
        async with PostgresEventStore(u) as store:  # the schema, and a few events
            await store.append("schedule-a", [SchedulePaused(schedule="a"), ScheduleResumed(schedule="a")])
        yield u


async def _as_owner(url: str, *sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for s in sql:
            await conn.execute(s)
    finally:
        await conn.close()


async def _count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ONLY public.events"))
    finally:
        await conn.close()


DROP_PAUSES = (
    "CREATE FUNCTION drop_pauses() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NEW.type = 'SchedulePaused' THEN RETURN NULL; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER drop_pauses BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION drop_pauses()",
)
REWRITE = (
    "CREATE FUNCTION rewrite() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " NEW.data := replace(NEW.data, '\"b\"', '\"z\"'); RETURN NEW; END $$",
    "CREATE TRIGGER rewrite BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION rewrite()",
)
HIDE_ROWS = (
    "ALTER TABLE events ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE events FORCE ROW LEVEL SECURITY",
    "CREATE POLICY no_resumes ON events USING (type <> 'ScheduleResumed')",
)
ATTACKS = {
    "a trigger dropping events as they are inserted": (DROP_PAUSES, "trigger drop_pauses"),
    "a trigger rewriting events as they are inserted": (REWRITE, "trigger rewrite"),
    "a rule": (
        ("CREATE RULE no_pauses AS ON INSERT TO events WHERE NEW.type = 'x' DO INSTEAD NOTHING",),
        "rule no_pauses",
    ),
    "row-level security hiding events": (HIDE_ROWS, "row-level security"),
    "a table inheriting from events": (("CREATE TABLE extra () INHERITS (events)",), "extra"),
    "the log made unlogged": (("ALTER TABLE events SET UNLOGGED",), "unlogged"),
    "the append-only trigger disabled": (
        ("ALTER TABLE events DISABLE TRIGGER events_no_update",),
        "events_no_update",
    ),
    "the append-only function replaced": (
        (
            "CREATE OR REPLACE FUNCTION rollwatch_events_append_only() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RETURN NEW; END $$",
        ),
        "events_no_update",
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_an_open_refuses_a_schema_it_did_not_make(url: str, attack: str) -> None:
    sql, named = ATTACKS[attack]
    await _as_owner(url, *sql)
    with pytest.raises(IntegrityError) as err:
        async with PostgresEventStore(url):
            pass
    assert named in err.value.reason, err.value.reason


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_verify_names_a_schema_changed_under_an_open_store(url: str, attack: str) -> None:
    sql, named = ATTACKS[attack]
    async with PostgresEventStore(url) as store:
        await _as_owner(url, *sql)
        with pytest.raises(IntegrityError) as err:
            await store.verify_versions(await store.head())
        assert named in err.value.reason, err.value.reason


async def test_a_view_named_events_in_an_earlier_schema_is_refused(url: str) -> None:
    """The store's role's search_path put a schema holding a view over the log, with a
    revocation left out, before ``public``: every query would read the view."""
    await _as_owner(
        url,
        "CREATE SCHEMA shadow",
        "CREATE VIEW shadow.events AS SELECT * FROM public.events WHERE type <> 'ScheduleResumed'",
        "ALTER ROLE CURRENT_USER SET search_path = shadow, public",
    )
    try:
        with pytest.raises(IntegrityError) as err:
            async with PostgresEventStore(url):
                pass
        assert "shadow" in err.value.reason, err.value.reason
    finally:
        await _as_owner(url, "ALTER ROLE CURRENT_USER RESET search_path")


@pytest.mark.parametrize("trigger", [DROP_PAUSES, REWRITE])
async def test_an_append_a_trigger_changes_fails_and_writes_nothing(
    url: str, trigger: tuple[str, ...]
) -> None:
    """Added under an open store (after its checks at open): the append that the trigger
    drops or rewrites fails, saying so, and nothing of it is in the log. Before, the
    dropped event's append returned a seq the next event then took, the chain whole."""
    async with PostgresEventStore(url) as store:
        before = await _count(url)
        await _as_owner(url, *trigger)
        with pytest.raises(StoreError) as err:
            await store.append("schedule-b", [SchedulePaused(schedule="b"), ScheduleResumed(schedule="b")])
        assert "changed or dropped" in str(err.value), str(err.value)
        assert await _count(url) == before
