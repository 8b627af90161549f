"""Session 33's attacks for leaks over HTTP (helper attack-http-s33), on real loopback servers over
real SQLite files. Each test in a class whose docstring says "before" failed before its fix."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from rollwatch.metrics import Metrics
from rollwatch.publication.keys import SubscriberDirectory
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.access import Operators
from rollwatch.web.app import build_app
from rollwatch.web.console import Console
from rollwatch.web.server import HTTPServer
from tests.helpers import rollwatch
from tests.integrity.conftest import append_n
from tests.integrity.test_tlog_tiles import live_log
from tests.publication.helpers import (
    Env,
    add_rollout,
    add_subscriber,
    bearer,
    new_run_id,
    revoke,
    serving,
    start_run,
)

pytestmark = pytest.mark.anyio


class Held:
    """The read models' file held for writing by a connection of its own, as another process's
    catch-up holds it (``rollwatch report`` or ``rebuild`` beside the daemon): a request that
    must bring the read models up to the log's head waits until :meth:`let_go`."""

    def __init__(self, file: Path) -> None:
        self.db: sqlite3.Connection | None = sqlite3.connect(file.resolve(), timeout=0, isolation_level=None)
        self.db.execute("BEGIN IMMEDIATE")

    def let_go(self) -> None:
        if self.db is not None:
            self.db.execute("ROLLBACK")
            self.db.close()
            self.db = None


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


async def revoked_mid_request(
    env: Env, name: str, ask: Callable[[], Awaitable[httpx.Response]], keys: SubscriberDirectory | None = None
) -> httpx.Response:
    """``ask()`` while the read models' file is held and the log has moved on (so the request
    waits to catch up); once the key is let in (its use recorded in ``keys``, default the
    publication's), another process revokes it, then the file is let go. The answer."""
    keys = keys or env.api.subscribers
    used = keys.last_used.get(name)
    out: list[httpx.Response] = []
    assert isinstance(env.store, SQLiteEventStore)
    async with SQLiteEventStore(env.store.path) as other:
        held = Held(env.pdb.file)
        try:
            run = new_run_id()
            await start_run(other, run)  # the log moves on: the next answer catches up first

            async def go() -> None:
                out.append(await ask())

            async with anyio.create_task_group() as tg:
                tg.start_soon(go)
                await until(lambda: keys.last_used.get(name) != used)
                await revoke(other, name)
                assert not out, "answered while the read models' file was held"
                held.let_go()
        finally:
            held.let_go()
    return out[0]


class TestRevokedWhileAnswering:
    """A key checked as its request came in and revoked before the answer went out: the answer
    went out whole, after the revocation was committed. Only ``/v1/feed`` checked the key again
    before answering; ``/v1/report`` first brings the read models up to the log's head, which
    waits as long as another process's catch-up holds the file (or a large catch-up takes), and
    then sent every pass rate, under embargo, to the key revoked meanwhile (before: 200)."""

    async def test_a_report_whose_key_is_revoked_meanwhile_is_refused(self, tmp_path: Path) -> None:
        async with serving(tmp_path) as env:
            key = await add_subscriber(env.store, "eve", scopes=["report"])
            run = new_run_id()
            await start_run(env.store, run)
            await add_rollout(env.store, run, passed=True, embargo_s=3600)
            assert (await env.client.get("/v1/report", headers=bearer(key))).status_code == 200
            r = await revoked_mid_request(
                env, "eve", lambda: env.client.get("/v1/report", headers=bearer(key))
            )
            assert r.status_code == 401, (r.status_code, r.text[:300])
            assert set(r.json()) == {"error", "message"}
            assert "etag" not in r.headers

    async def test_a_console_page_whose_ops_key_is_revoked_meanwhile_is_refused(self, tmp_path: Path) -> None:
        """The same for the console, with an ``ops`` key (no peer trusted): every page catches the
        read models up first, and the page (runs, pass rates, costs, under embargo) went out to
        the key revoked meanwhile (before: 200)."""
        async with serving(tmp_path) as env:
            keys = SubscriberDirectory(env.store)
            console = Console(env.store, env.pdb, env.config, Operators(trusted_peers=[], keys=keys))
            server = HTTPServer(build_app(Metrics(), console.routes()), "127.0.0.1", 0)
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                try:
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
                        key = await add_subscriber(env.store, "ops-eve", scopes=["ops"])
                        run = new_run_id()
                        await start_run(env.store, run)
                        await add_rollout(env.store, run, passed=True, embargo_s=3600)
                        page = await c.get("/ops/", headers=bearer(key))
                        assert page.status_code == 200  # the control
                        assert run in page.text
                        r = await revoked_mid_request(
                            env, "ops-eve", lambda: c.get("/ops/", headers=bearer(key)), keys=keys
                        )
                finally:
                    server.stop()
        assert r.status_code in (401, 403), (r.status_code, r.text[:300])
        assert set(r.json()) == {"error", "message"}
        assert run not in r.text


class TestKeyRotationsWithinTheCheckpoint:
    """``/public/key/rotations`` listed a rotation as soon as it was appended, with its seq: the
    log's live size, which the proofs and hash tiles keep to the latest checkpoint (between two
    checkpoints its steps count what was appended under embargo). A rotation is listed once a
    checkpoint holds it, when the daemon serves the key it names (before: listed at once)."""

    async def test_a_rotation_is_listed_once_signed(self, tmp_path: Path) -> None:
        async with live_log(tmp_path) as live, httpx.AsyncClient(base_url=live.url) as c:
            await append_n(live.store, 10)
            await live.integrity.final_checkpoint()
            cp = await live.integrity.tree.latest_checkpoint()
            assert cp is not None
            run = new_run_id()
            await start_run(live.store, run)
            await add_rollout(live.store, run, passed=True, embargo_s=3600)
            done = await anyio.to_thread.run_sync(
                lambda: rollwatch("--config", str(live.config_file), "key", "rotate")
            )
            assert done.returncode == 0, done.stderr
            rotated = int(done.stdout.split("rotated at seq ")[1].split()[0])
            assert rotated > cp.size + 1
            r = await c.get("/public/key/rotations")
            assert r.status_code == 200, r.text
            assert r.json()["rotations"] == [], r.text
            assert str(rotated) not in r.text
            # The control: the service takes the new key (as the daemon's signer does at its next
            # checkpoint) and signs; the rotation is listed.
            await live.integrity.reload_signer()
            await live.integrity.final_checkpoint()
            r = await c.get("/public/key/rotations")
            assert [x["seq"] for x in r.json()["rotations"]] == [rotated]
