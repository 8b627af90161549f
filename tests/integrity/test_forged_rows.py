"""Rows appended around rollwatch, their chain hashes computed right: content no rollwatch writes.

``test_tamper.py`` appends a row with a made-up hash; someone holding the file can as well
compute the right one. A row that continues the chain but whose data is not JSON, not an
object, not canonical (a repeated key: two readers, two verdicts under one signed hash),
or whose time is not RFC 3339, is no event rollwatch wrote. Before: ``verify`` passed every
one of them; ``serve`` died with a traceback on the bad JSON and the bad time; ``rebuild``
printed a traceback. Now ``verify`` names the seq, ``serve`` refuses to start naming it,
and ``rebuild`` says which event it cannot read, all without a traceback. Data of a known
type and schema that does not decode (a field its type needs is missing) is named the same
way: every schema rollwatch wrote decodes in every later version. A type or a schema this version does not
know is no such evidence (a newer rollwatch writes them) and passes ``verify``.
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from rollwatch.events import canonical_bytes, chain_hash
from tests.helpers import rollwatch
from tests.integrity.served import Site, _stop

AT = "2026-11-30T00:00:00.000000Z"


def append_raw(site: Site, typ: str, data: str, *, schema: int = 1, at: str = AT) -> int:
    """Append one row as a writer around rollwatch would: the chain hash computed right."""
    con = sqlite3.connect(site.db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        seq, prev = con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        eid, stream = str(uuid.uuid4()), f"rollout-{uuid.uuid4()}"
        canonical = canonical_bytes(
            seq=seq + 1, id=eid, stream=stream, type=typ, schema=schema, at=at, data_json=data
        )
        row = (
            seq + 1,
            eid,
            stream,
            1,
            typ,
            schema,
            at,
            data,
            chain_hash(bytes.fromhex(prev), canonical).hex(),
        )
        con.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", row)
        con.execute("COMMIT")
    finally:
        con.close()
    return int(seq) + 1


SCORED = '{"passed":true,"rollout_id":"r1","score":1.0,"scorer":"s"}'

FORGED = {
    "not_json": ("RolloutScored", '{"rollout_id":', {}, "its data is not valid JSON"),
    "not_an_object": ("RolloutScored", "[1,2]", {}, "its data is a JSON list, not an object"),
    "repeated_key": (
        "RolloutScored",
        '{"passed":false,"passed":true,"rollout_id":"r1","score":0.0,"scorer":"s"}',
        {},
        "not in canonical JSON form",
    ),
    "spaces": ("RolloutScored", SCORED.replace(",", ", "), {}, "not in canonical JSON form"),
    "fields_missing": ("RolloutScored", '{"rollout_id":"r1"}', {}, "lacks required field(s) passed"),
    # Deeper than orjson (1,024 levels) and json (the recursion limit) read: a RecursionError,
    # no ValueError, which verify took for a pass that could not run and rebuild printed as
    # a traceback.
    "nested_too_deep": (
        "RolloutScored",
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        {},
        "JSON nested deeper than a parser can read",
    ),
    "time_not_rfc3339": (
        "SchedulePaused",
        '{"note":"","schedule":"e1"}',
        {"at": "yesterday"},
        "its time 'yesterday' is not one rollwatch writes",
    ),
}


@pytest.mark.parametrize("case", FORGED)
def test_verify_names_a_row_rollwatch_never_writes(stopped_site: Site, case: str) -> None:
    """`rollwatch verify` exits 1 naming the seq and why, though the chain holds."""
    typ, data, kw, why = FORGED[case]
    seq = append_raw(stopped_site, typ, data, **kw)
    r = rollwatch("--config", str(stopped_site.config), "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"FAILED at seq {seq}: " in r.stderr, r.stderr
    assert why in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("first", ["foreign", "hash"])
def test_verify_names_the_first_bad_seq_whichever_check_finds_it(stopped_site: Site, first: str) -> None:
    """The content check runs in a process of its own beside the hashing: with a row of
    each kind, `verify` names the earlier, whichever of the two passes found it."""
    foreign = "[1,2]"
    if first == "foreign":
        bad = append_raw(stopped_site, "RolloutScored", foreign)
        append_raw(stopped_site, "RolloutScored", SCORED)
        _break_hash(stopped_site, bad + 1)
    else:
        bad = append_raw(stopped_site, "RolloutScored", SCORED)
        append_raw(stopped_site, "RolloutScored", foreign)
        _break_hash(stopped_site, bad)
    r = rollwatch("--config", str(stopped_site.config), "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"FAILED at seq {bad}: " in r.stderr, r.stderr
    why = "not an object" if first == "foreign" else "its hash does not match"
    assert why in r.stderr, r.stderr


def _break_hash(site: Site, seq: int) -> None:
    """Give event ``seq`` a stored hash its content does not make (the next row's chain
    then starts from the stored one, so only ``seq`` is named by the chain check)."""
    con = sqlite3.connect(site.db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        con.execute("UPDATE events SET hash = ? WHERE seq = ?", ("0" * 64, seq))
    finally:
        con.close()


@pytest.mark.parametrize("case", FORGED)
def test_serve_refuses_such_a_log_naming_the_seq(stopped_site: Site, case: str) -> None:
    """`serve` exits 1 naming the seq, before it appends anything, without a traceback."""
    typ, data, kw, _ = FORGED[case]
    seq = append_raw(stopped_site, typ, data, **kw)
    proc = stopped_site.serve()
    try:
        proc.wait(timeout=60)
    finally:
        err = _stop(proc)
    assert proc.returncode == 1, err
    assert f"integrity check failed at seq {seq}: " in err, err
    assert "Traceback" not in err, err
    assert stopped_site.head() == seq


@pytest.mark.parametrize("case", ["not_json", "not_an_object", "fields_missing", "nested_too_deep"])
def test_rebuild_names_the_event_it_cannot_read(stopped_site: Site, case: str) -> None:
    """`rollwatch rebuild` exits 1 naming the event, without a traceback (it printed one for bad
    JSON, and named no event for the others)."""
    typ, data, kw, _ = FORGED[case]
    seq = append_raw(stopped_site, typ, data, **kw)
    r = rollwatch("--config", str(stopped_site.config), "rebuild")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"error: event {seq}: " in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("typ", "schema", "data"),
    [("SomethingNewer", 1, '{"x":1}'), ("RolloutScored", 99, SCORED)],
    ids=["unknown_type", "newer_schema"],
)
def test_what_a_newer_rollwatch_writes_is_no_finding(
    stopped_site: Site, typ: str, schema: int, data: str
) -> None:
    """The control: a type or schema this version does not know, in canonical form, passes `verify`."""
    append_raw(stopped_site, typ, data, schema=schema)
    r = rollwatch("--config", str(stopped_site.config), "verify")
    assert r.returncode == 0, r.stderr


def test_rebuild_names_an_event_whose_field_a_read_model_cannot_take(stopped_site: Site) -> None:
    """A run, a request and an answer whose cost is the string "abc" (chain hashes right):
    `rollwatch rebuild` exits 1 naming the answer and its field, without a traceback (it
    printed one: a read model added "abc" to the run's cost)."""
    append_raw(
        stopped_site,
        "RunStarted",
        '{"models":["m"],"node":"n","problem_set":"ps","provider":"p","rollouts":1,"run_id":"rX","schedule":"s"}',
    )
    append_raw(
        stopped_site,
        "RolloutRequested",
        '{"attempt":1,"model":"m","node":"n","problem_hash":"h","problem_id":"p1","provider":"p",'
        '"request":{},"rollout_id":"rr","run_id":"rX","sample":0}',
    )
    seq = append_raw(
        stopped_site, "RolloutResponded", '{"attempt":1,"cost_usd":"abc","rollout_id":"rr","text":"x"}'
    )
    r = rollwatch("--config", str(stopped_site.config), "rebuild")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"error: event {seq}: " in r.stderr, r.stderr
    assert "its field cost_usd is a string" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
