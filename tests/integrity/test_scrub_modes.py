"""The scrub's two modes: in the background (nice 19, paced: the passes while the daemon
runs) and in the foreground (the check at start, which the runs and the signer wait for:
paced at nice 19 it took 8.4-9.0 s of a 200k-event log, unpaced 4.4-5.0 s). Both are the
same pass in a worker process of its own; each must find an edit."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import pytest

from rollwatch.errors import IntegrityError
from rollwatch.integrity.scrub import SPLIT_ABOVE, ScrubTarget, scrub_pass
from rollwatch.integrity.tree import MerkleTree
from rollwatch.store.sqlite import SQLiteEventStore
from tests.integrity.conftest import append_n, rewrite_event

pytestmark = pytest.mark.anyio


def test_the_mode_crosses_to_the_worker() -> None:
    fg = ScrubTarget("sqlite:/x.db", Path("/t.db"), None, None, background=False)
    assert ScrubTarget.from_json(fg.to_json()) == fg
    bg = ScrubTarget("sqlite:/x.db", Path("/t.db"), "k", Path("/w"))
    assert bg.background
    assert ScrubTarget.from_json(bg.to_json()) == bg


@pytest.mark.parametrize("url", ["sqlite:events.db", "sqlite:///abs/$HOME/events.db", "sqlite://rel/e.db"])
def test_the_pass_opens_the_log_as_the_configuration_would(url: str) -> None:
    """The pass opens its log without the configuration (pydantic, imported by each pass
    anew): the same file, read-only, with the same busy timeout as ``StoreConfig`` gives."""
    from rollwatch.config import StoreConfig
    from rollwatch.store import open_store, open_store_url

    mine, theirs = open_store_url(url, read_only=True), open_store(StoreConfig(url=url), read_only=True)
    assert isinstance(mine, SQLiteEventStore)
    assert isinstance(theirs, SQLiteEventStore)
    assert (mine.path, mine.read_only, mine.busy_timeout) == (
        theirs.path,
        theirs.read_only,
        theirs.busy_timeout,
    )


# The check at start splits the content check into a second process on a log above
# SPLIT_ABOVE events (``events=None``: not known, split too); below, one process does both.
MODES = {
    "background": (True, None),
    "at-start": (False, None),
    "at-start-small": (False, 200),
    "at-start-large": (False, SPLIT_ABOVE + 1),
}


@pytest.mark.parametrize("mode", MODES)
async def test_either_mode_finds_an_edited_event(tmp_path: Path, mode: str) -> None:
    background, events = MODES[mode]
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store, MerkleTree(tmp_path / "merkle.db") as tree:
        await append_n(store, 200, per_call=50)
        await tree.catch_up(store)  # type: ignore[arg-type]
        target = ScrubTarget(f"sqlite:{db}", tree.path, None, None, background)
        with anyio.fail_after(60):
            checked, _ = await scrub_pass(target, events=events)
        assert checked == 200
        data = dict((await store.read_at([77]))[77].data)
    data["forged"] = True
    rewrite_event(db, 77, json.dumps(data, separators=(",", ":"), sort_keys=True))
    with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
        await scrub_pass(target, events=events)
    assert found.value.seq == 77, found.value


@pytest.mark.parametrize("mode", MODES)
async def test_either_mode_finds_a_version_no_hash_covers(tmp_path: Path, mode: str) -> None:
    """A stream version changed (no hash covers it): the content check finds it, whether it
    runs in the pass's own process or in a second one beside it."""
    background, events = MODES[mode]
    db = tmp_path / "events.db"
    async with SQLiteEventStore(db) as store, MerkleTree(tmp_path / "merkle.db") as tree:
        await append_n(store, 200, per_call=50)
        await tree.catch_up(store)  # type: ignore[arg-type]
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS events_no_update")
        con.execute("UPDATE events SET version = version + 1000 WHERE seq = 77")
    finally:
        con.close()
    target = ScrubTarget(f"sqlite:{db}", tmp_path / "merkle.db", None, None, background)
    with anyio.fail_after(60), pytest.raises(IntegrityError) as found:
        await scrub_pass(target, events=events)
    assert found.value.seq == 77, found.value
