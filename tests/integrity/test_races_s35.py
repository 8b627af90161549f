"""Session 35: ``rollwatch audit`` against a live service while its checkpoint key is rotated.

The audit reads ``/public/key``, ``/public/key/rotations`` and ``/public/checkpoint`` one after
the other while the daemon goes on signing. A rotation (``rollwatch key rotate``) takes effect at
the signer's next checkpoint: the signer loads the new key, signs the log with it, appends the
checkpoint, and the tree absorbs it. Each test lets that happen at an exact point between two of
the audit's reads (the real checkpointer, its reload hook; an HTTP hook on the auditor's client),
against the real routes on a loopback server: an honest rotation is no audit failure, and a key
that no rotation leads to still is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rollwatch.errors import AuditFailure
from rollwatch.events import CHECKPOINT_STREAM, CheckpointKeyRotated
from rollwatch.integrity.audit import audit
from rollwatch.integrity.checkpoint import NoteSigner
from rollwatch.integrity.checkpointer import Checkpointer
from rollwatch.integrity.rotation import sign_rotation
from rollwatch.integrity.routes import integrity_routes
from rollwatch.integrity.tree import MerkleTree
from rollwatch.metrics import Metrics
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.app import build_app
from rollwatch.web.server import HTTPServer
from tests.integrity.conftest import ORIGIN, append_n


@dataclass
class Live:
    """A signed log served on loopback by the real integrity routes; ``key`` is the daemon's
    signer, which the key route reads (as ``Integrity.signer`` after ``reload_signer``)."""

    store: SQLiteEventStore
    tree: MerkleTree
    key: NoteSigner
    url: str = ""
    audits: list[str] = field(default_factory=list)

    async def rotate(self) -> NoteSigner:
        """``rollwatch key rotate``: the rotation appended; the daemon signs with the old key until
        its next checkpoint."""
        new = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        await self.store.append(
            CHECKPOINT_STREAM,
            [
                CheckpointKeyRotated(
                    old_key=self.key.vkey, new_key=new.vkey, note=sign_rotation(ORIGIN, self.key, new)
                )
            ],
        )
        return new

    async def audit(self, **kw: object) -> str:
        """The audit's verdict: "ok", or the check that failed and why."""
        try:
            await audit(self.url, archive=False, **kw)  # type: ignore[arg-type]
        except AuditFailure as e:
            return f"{e.check}: {e.message}"
        return "ok"


@pytest.fixture
async def live(store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner) -> AsyncIterator[Live]:
    svc = Live(store, tree, signer)
    app = build_app(Metrics(), integrity_routes(tree, lambda: svc.key.vkey, store))
    server = HTTPServer(app, "127.0.0.1", 0)
    await append_n(store, 9)
    assert await Checkpointer(store, tree, signer).checkpoint() is not None
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        svc.url = f"http://127.0.0.1:{server.port}"
        yield svc
        server.stop()


class TestAnAuditWhileTheKeyRotates:
    @pytest.mark.anyio
    async def test_audited_as_the_signer_takes_the_new_key(self, live: Live) -> None:
        """The audit runs at the moment the signer has loaded the new key and not yet signed with
        it. ``/public/key`` served the new key at once, while the checkpoint served was still the
        old key's and the rotation not yet in any signed tree (``/public/key/rotations`` lists the
        links within the latest checkpoint): an auditor who pinned the old key found "no chain of
        key rotations" leading to it, one trusting the served key a checkpoint "not signed by" it.
        Both pass, then and once the new key's checkpoint is served (the rotation followed)."""
        old = live.key
        new = await live.rotate()

        async def reload() -> NoteSigner:
            live.key = new  # Integrity.reload_signer: the routes' key callable reads it
            live.audits.append(await live.audit(key=old.vkey))
            live.audits.append(await live.audit())
            return new

        cp = await Checkpointer(live.store, live.tree, old, reload=reload).checkpoint()
        assert cp is not None
        assert live.audits == ["ok", "ok"]
        async with httpx.AsyncClient() as c:
            new.verifier().open_checkpoint((await c.get(live.url + "/public/checkpoint")).text)
            assert (await c.get(live.url + "/public/key")).text.strip() == new.vkey
        assert await live.audit(key=old.vkey) == "ok"
        assert await live.audit(key=new.vkey) == "ok"
        # A key no rotation leads to is still refused.
        stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        assert "no chain of key rotations" in await live.audit(key=stranger.vkey)

    @pytest.mark.anyio
    async def test_a_rotation_signed_between_the_key_and_the_checkpoint_reads(self, live: Live) -> None:
        """The whole rotation lands between the audit's read of ``/public/key`` (the old key) and
        its read of ``/public/checkpoint`` (signed by the new one): the checkpoint was "not signed
        by" the key just read. The audit reads the key again and starts over, and passes; a key
        that keeps changing under it is a failure after a few tries."""
        old = live.key
        rotated = 0

        async def between(r: httpx.Request) -> None:
            nonlocal rotated
            if r.url.path == "/public/checkpoint" and rotated < 1:
                rotated += 1
                new = await live.rotate()

                async def reload() -> NoteSigner:
                    live.key = new
                    return new

                await append_n(live.store, 2)
                assert await Checkpointer(live.store, live.tree, old, reload=reload).checkpoint() is not None

        async with httpx.AsyncClient(event_hooks={"request": [between]}) as c:
            assert await live.audit(key=old.vkey, client=c) == "ok"
        assert rotated == 1

        async def always(r: httpx.Request) -> None:
            if r.url.path == "/public/checkpoint":
                signer = live.key
                new = await live.rotate()

                async def reload() -> NoteSigner:
                    live.key = new
                    return new

                assert (
                    await Checkpointer(live.store, live.tree, signer, reload=reload).checkpoint() is not None
                )

        async with httpx.AsyncClient(event_hooks={"request": [always]}) as c:
            verdict = await live.audit(key=old.vkey, client=c)
        assert verdict.startswith("checkpoint: "), verdict
        assert "kept changing" in verdict
