"""Releasing a result early, or a failure as a pass, by editing the log itself.

Someone holding the files moves an embargoed pass's public decision into the past (or
makes a failure's verdict a pass with a public decision), one row's data, and gets the
daemon to read the log again: an edit of the projections file, which a live daemon
answers by building its read models from the log beside it. The scrub names such a
row, but only at its next pass (every 5 minutes by default); before, the release job
released the result within a second and every public route served it from then on,
the later finding notwithstanding. At a restart with ``merkle.db`` deleted, the public
routes served such a result (its release forged at the tail) for as long as the check
at start took, before the daemon refused to start. Real daemon, real files, real HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.events import Recorded, canonical_bytes, canonical_json, chain_hash, rfc3339
from rollwatch.integrity.merkle import leaf_hash
from rollwatch.integrity.tree import _COLUMNS, STRIP
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.integrity.conftest import rewrite_event
from tests.integrity.served import Site, _poll, _stop, serving
from tests.publication.helpers import add_rollout, add_subscriber, bearer, finish_run, new_run_id, start_run
from tests.test_daemon import free_port

PUBLIC = ("/public/feed.json", "/public/feed.atom", "/public/", "/public/results.jsonl")
PAST = "2020-01-01T00:00:00.000000Z"


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=10)
    except httpx.HTTPError:
        return None


def _text(url: str) -> str:
    r = _get(url)
    return r.text if r is not None and r.status_code == 200 else ""


def _events(db: Path, rollout_id: str) -> dict[str, tuple[int, dict[str, object]]]:
    """The rollout's events by type (a decision by ``PublicationDecided:<audience>``)."""
    con = sqlite3.connect(db)
    try:
        out = {}
        for seq, typ, data in con.execute(
            "SELECT seq, type, data FROM events WHERE stream = ? ORDER BY seq", (f"rollout-{rollout_id}",)
        ):
            d = json.loads(data)
            out[f"{typ}:{d['audience']}" if typ == "PublicationDecided" else typ] = (int(seq), d)
        return out
    finally:
        con.close()


def _edit(db: Path, seq: int, recompute_chain: bool = False, **fields: object) -> None:
    con = sqlite3.connect(db)
    try:
        data = json.loads(con.execute("SELECT data FROM events WHERE seq = ?", (seq,)).fetchone()[0])
    finally:
        con.close()
    rewrite_event(db, seq, canonical_json({**data, **fields}), recompute_chain=recompute_chain)


def move_the_date(db: Path, rollout_id: str) -> int:
    """The embargoed pass's public decision dated in the past."""
    seq, _ = _events(db, rollout_id)["PublicationDecided:public"]
    _edit(db, seq, not_before=PAST)
    return seq


def pass_a_failure(db: Path, rollout_id: str) -> int:
    """The failure's verdict made a pass, and its "none" decision a public one dated in the past."""
    evs = _events(db, rollout_id)
    scored, _ = evs["RolloutScored"]
    decided, _ = evs["PublicationDecided:none"]
    _edit(db, scored, passed=True, score=1.0)
    _edit(db, decided, audience="public", not_before=PAST)
    return scored


def _append(db: Path, rollout_id: str, typ: str, data: dict[str, object]) -> int:
    """Append a row to the rollout's stream with its chain hash computed as rollwatch computes
    it (the tree absorbs it like any other); return its seq."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        head, prev = con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        stream = f"rollout-{rollout_id}"
        (version,) = con.execute("SELECT max(version) FROM events WHERE stream = ?", (stream,)).fetchone()
        row = {
            "seq": head + 1,
            "id": str(uuid.uuid4()),
            "stream": stream,
            "type": typ,
            "schema": 1,
            "at": rfc3339(datetime.now(UTC)),
            "data_json": canonical_json(data),
        }
        h = chain_hash(bytes.fromhex(prev), canonical_bytes(**row)).hex()  # type: ignore[arg-type]
        con.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)",
            (head + 1, row["id"], stream, version + 1, typ, 1, row["at"], row["data_json"], h),
        )
        con.execute("COMMIT")
        return int(head) + 1
    finally:
        con.close()


def move_the_date_and_its_leaf(db: Path, rollout_id: str) -> int:
    """:func:`move_the_date`, and the event's leaf in ``merkle.db`` made the edited event's
    (the tree's nodes above it left: the checkpoints' roots are signed)."""
    seq = move_the_date(db, rollout_id)
    con = sqlite3.connect(db)
    try:
        row = con.execute(f"SELECT {_COLUMNS} FROM events WHERE seq = ?", (seq,)).fetchone()
    finally:
        con.close()
    leaf = leaf_hash(tuple.__new__(Recorded, row).canonical())
    tree = sqlite3.connect(db.parent / "merkle.db", isolation_level=None)
    try:  # level 0, 64 hashes of 32 bytes a row (see rollwatch.integrity.tree)
        k, at = (seq - 1) // STRIP, ((seq - 1) % STRIP) * 32
        (blob,) = tree.execute("SELECT hashes FROM tree_strips WHERE k = ?", (k,)).fetchone()
        tree.execute("UPDATE tree_strips SET hashes = ? WHERE k = ?", (blob[:at] + leaf + blob[at + 32 :], k))
    finally:
        tree.close()
    return seq


def forge_the_release(db: Path, rollout_id: str) -> int:
    """The embargoed pass's decision dated in the past, and its release appended at the tail."""
    seq = move_the_date(db, rollout_id)
    _append(db, rollout_id, "PublicReleased", {"rollout_id": rollout_id})
    return seq


def _site(tmp_path: Path) -> tuple[Site, str, str]:
    """A log with a released pass (``honest``) and two results the public may not see: a pass
    under a 90-day embargo and a failure (``held``, ``failed``), served and signed once."""
    db = tmp_path / "events.db"
    run = new_run_id()

    async def fill() -> tuple[str, str, str]:
        async with SQLiteEventStore(db) as store:
            await start_run(store, run)
            honest = await add_rollout(store, run, passed=True, problem_id="p1")
            held = await add_rollout(store, run, passed=True, embargo_s=90 * 86400, problem_id="p2", sample=1)
            failed = await add_rollout(store, run, passed=False, problem_id="p3", sample=2)
            await finish_run(store, run, rollouts=3, passed=2)
            return honest, held, failed

    _, held, failed = anyio.run(fill)
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:{db}"\nprojections = "{tmp_path / "events.projections.db"}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        '[publication]\nembargo = "0s"\nrelease_check = "200ms"\n'
        '[integrity]\ncheckpoint_every = 5\ncheckpoint_interval = "1s"\n'
    )
    return Site(tmp_path, cfg, f"http://127.0.0.1:{port}"), held, failed


ATTACKS: list[tuple[Callable[[Path, str], int], str]] = [
    (move_the_date, "held"),
    (pass_a_failure, "failed"),
    (forge_the_release, "held"),
    (move_the_date_and_its_leaf, "held"),
]


@pytest.mark.parametrize(("attack", "target"), ATTACKS, ids=lambda a: getattr(a, "__name__", a))
def test_a_live_daemon_releases_nothing_on_an_edited_event(
    tmp_path: Path, attack: Callable[[Path, str], int], target: str
) -> None:
    """The daemon releases nothing on the edited events (the release job checks the rollout's
    events against the leaves the Merkle tree absorbed) and serves nothing resting on them (a
    release forged at the tail: the public routes check the events a result rests on too):
    no public route shows the result, the daemon appends no ``PublicReleased`` for it, and
    ``/healthz`` names the first edited seq at once, not at the next scrub."""
    s, held, failed = _site(tmp_path)
    rid = {"held": held, "failed": failed}[target]
    with serving(s) as proc:
        _poll(lambda: "solved p1" in _text(s.url + "/public/feed.json"), 30, "the honest result's release")
        bad = attack(s.db, rid)
        projections = sqlite3.connect(s.dir / "events.projections.db", isolation_level=None)
        try:  # any edit the public routes notice: the daemon builds its read models again
            projections.execute(
                "UPDATE public_rollouts SET released_seq = released_seq - 1 WHERE released_seq IS NOT NULL"
            )
        finally:
            projections.close()
        r = _poll(
            lambda: (
                (_text(s.url + "/public/feed.json"), h := _get(s.url + "/healthz"))[1] is not None
                and h.status_code == 503
                and h
            ),
            30,
            "/healthz to turn 503",
        )
        assert isinstance(r, httpx.Response)
        assert r.json()["first_bad_seq"] == bad, r.json()
        for path in (*PUBLIC, f"/public/rollouts/{rid}.json"):
            assert rid not in _text(s.url + path), path
        if attack is not forge_the_release:
            assert "PublicReleased" not in _events(s.db, rid)
    assert proc.returncode == 0


def test_a_restart_serves_nothing_before_its_check(tmp_path: Path) -> None:
    """The decision's date moved (the chain recomputed), a release forged at the tail, and
    ``merkle.db`` deleted (so the tree absorbs the edited log afresh): until the check at
    start has compared the log with the signed checkpoints, the public routes answer 503;
    the result never shows, and the daemon exits 1."""
    s, held, _ = _site(tmp_path)
    with serving(s):
        _poll(lambda: any(size >= 13 for _, size in s.checkpoints()), 30, "a checkpoint of the log")
    seq, _ = _events(s.db, held)["PublicationDecided:public"]
    _edit(s.db, seq, recompute_chain=True, not_before=PAST)
    _append(s.db, held, "PublicReleased", {"rollout_id": held})
    (s.dir / "merkle.db").unlink()
    proc = s.serve()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            for path in (*PUBLIC, f"/public/rollouts/{held}.json"):
                r = _get(s.url + path)
                if r is not None:
                    seen.add(r.status_code)
                    assert held not in r.text, path
    finally:
        err = _stop(proc)
    assert proc.returncode == 1, err
    # Without the tree, the first checkpoint that no longer holds is what the check can name.
    assert "integrity check failed at seq" in err, err
    assert 503 in seen, seen


def _caught_child(pid: int, module: str, timeout: float) -> int:
    """Stop (SIGSTOP) the first child process of ``pid`` running ``python -m module`` as
    soon as it shows; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            for child in children.read_text().split():
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if module.encode() in cmdline:
                    os.kill(int(child), signal.SIGSTOP)
                    return int(child)
        time.sleep(0.001)
    raise AssertionError(f"no {module} process of {pid} within {timeout} s")


def test_a_restart_with_its_tree_serves_while_it_checks(tmp_path: Path) -> None:
    """``merkle.db`` intact (it held every event when the daemon stopped): the public routes
    serve at once, while the check at start is still running (its process held stopped
    here), since each event they serve is compared with a leaf absorbed before this start.
    Deleted, the tree cannot vouch for them: they wait (``test_a_restart_serves_nothing_before_its_check``)."""
    s, held, _ = _site(tmp_path)
    with serving(s):
        _poll(lambda: any(size >= 13 for _, size in s.checkpoints()), 30, "a checkpoint of the log")
    proc = s.serve()
    try:
        check = _caught_child(proc.pid, "rollwatch.integrity.scrub", 60)
        try:
            r = _poll(
                lambda: (x := _get(s.url + "/public/")) is not None and x.status_code == 200 and x,
                30,
                "/public/ while the check at start is held",
            )
            assert isinstance(r, httpx.Response)
            assert held not in r.text
            assert Path(f"/proc/{check}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        finally:
            os.kill(check, signal.SIGCONT)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err


def test_an_export_files_nothing_from_an_edited_log(tmp_path: Path) -> None:
    """`publish export` (whose folders are never rewritten) on the log of
    ``forge_the_release``, its projections deleted so that they are built from it again:
    exit 1 naming the edited seq, and the result filed nowhere."""
    s, held, _ = _site(tmp_path)
    with serving(s):
        _poll(lambda: any(size >= 13 for _, size in s.checkpoints()), 30, "a checkpoint of the log")
    bad = forge_the_release(s.db, held)
    for p in s.dir.glob("events.projections*"):
        if p.is_file():
            p.unlink()
    out = tmp_path / "export"
    r = rollwatch("--config", str(s.config), "publish", "export", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"integrity check failed at seq {bad}:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    filed = [p for p in out.rglob("*") if p.is_file() and held in p.read_text()] if out.exists() else []
    assert filed == []


def test_subscribers_are_served_nothing_of_an_edited_event(tmp_path: Path) -> None:
    """A failure's verdict made a pass in the log file (one row, the chain left), no
    projections edit needed: the feed and the archived record read the log at each request,
    and served the forged pass to every subscriber until the next scrub. Now both answer
    503 naming the seq, and ``/healthz`` names it at once; the feed before it is still served."""
    s, _, failed = _site(tmp_path)
    with serving(s):

        async def subscribe() -> str:
            async with SQLiteEventStore(s.db) as store:
                return await add_subscriber(store, "reader")

        auth = bearer(anyio.run(subscribe))
        feed = _poll(
            lambda: (r := _get_auth(s.url + "/v1/feed?limit=1000", auth)) and r.status_code == 200 and r,
            30,
            "the feed",
        )
        assert isinstance(feed, httpx.Response)
        evs = _events(s.db, failed)
        scored, _ = evs["RolloutScored"]
        assert any(i["seq"] == scored and i["passed"] is False for i in feed.json()["items"])
        _edit(s.db, scored, passed=True, score=1.0)
        for path in ("/v1/feed?limit=1000", f"/v1/rollouts/{failed}"):
            r = _get_auth(s.url + path, auth)
            assert r is not None
            assert r.status_code == 503, (path, r.status_code, r.text[:300])
            assert f"event {scored} was changed" in r.json()["message"]
        h = _get(s.url + "/healthz")
        assert h is not None
        assert h.status_code == 503
        assert h.json()["first_bad_seq"] == scored, h.json()
        n = sum(i["seq"] < scored for i in feed.json()["items"])
        before = _get_auth(s.url + f"/v1/feed?limit={n}", auth)
        assert before is not None
        assert before.status_code == 200
        assert before.json()["next"] == max(i["seq"] for i in before.json()["items"]) < scored


def _get_auth(url: str, headers: dict[str, str]) -> httpx.Response | None:
    try:
        return httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError:
        return None
