"""The public routes on a real loopback server, and ``rollwatch audit`` run as a real command against it."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rollwatch.errors import AuditFailure, IntegrityError
from rollwatch.events import CheckpointSigned, RolloutScored
from rollwatch.integrity.audit import audit
from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner, b64, unb64
from rollwatch.integrity.checkpointer import Checkpointer
from rollwatch.integrity.routes import inclusion_fields, integrity_routes
from rollwatch.integrity.tree import MerkleTree
from rollwatch.metrics import Metrics
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.app import build_app
from rollwatch.web.server import HTTPServer
from tests.integrity.conftest import append_n, rewrite_event
from tests.integrity.test_merkle import ref_leaf, ref_mth, ref_verify_consistency, ref_verify_inclusion


@dataclass
class Service:
    """A log, its tree and key, served on 127.0.0.1 with a stand-in public feed."""

    store: SQLiteEventStore
    tree: MerkleTree
    signer: NoteSigner
    url: str
    db: Path
    feed: list[dict[str, Any]] = field(default_factory=list)

    async def checkpoint(self) -> Checkpoint:
        cp = await Checkpointer(self.store, self.tree, self.signer).checkpoint()
        assert cp is not None
        return cp

    async def release(self, rollout_id: str, *, embed_proof: bool) -> int:
        """Record a scored rollout and list it in the feed, as the publication code will.

        With ``embed_proof`` the item carries an inclusion proof for the smallest tree
        holding it (older than any later checkpoint, so the auditor links it by a
        consistency proof); without, the auditor fetches one.
        """
        [ev] = await self.store.append(
            f"rollout-{rollout_id}",
            [RolloutScored(rollout_id=rollout_id, passed=True, score=1.0, scorer="python-function")],
        )
        await self.tree.catch_up(self.store)
        meta: dict[str, Any] = {"rollout_id": rollout_id}
        fields = await inclusion_fields(self.tree, ev, ev.seq)
        if not embed_proof:
            fields.pop("inclusion")
        meta.update(fields)
        self.feed.append({"id": f"urn:x:{rollout_id}", "title": rollout_id, "_rollwatch": meta})
        return ev.seq


@pytest.fixture
async def service(
    store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner, tmp_path: Path
) -> AsyncIterator[Service]:
    """The integrity routes (plus /public/feed.json) on a real server bound to a free loopback port."""
    svc = Service(store, tree, signer, "", tmp_path / "events.db")

    async def feed(_: Request) -> Response:
        return JSONResponse({"version": "https://jsonfeed.org/version/1.1", "title": "t", "items": svc.feed})

    app = build_app(Metrics(), [*integrity_routes(tree, signer.vkey), Route("/public/feed.json", feed)])
    server = HTTPServer(app, "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        svc.url = f"http://127.0.0.1:{server.port}"
        yield svc
        server.stop()


async def rollwatch_audit(*args: str) -> tuple[int, str, str]:
    """Run ``python -m rollwatch audit ARGS`` as a subprocess (the server keeps serving meanwhile)."""
    with anyio.fail_after(60):
        p = await anyio.run_process([sys.executable, "-m", "rollwatch", "audit", *args], check=False)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class TestRoutes:
    @pytest.mark.anyio
    async def test_checkpoint_and_key(self, service: Service) -> None:
        """/public/checkpoint is 404 until one is signed, then the latest note as text; /public/key is the vkey."""
        async with httpx.AsyncClient(base_url=service.url) as c:
            r = await c.get("/public/checkpoint")
            assert r.status_code == 404
            await append_n(service.store, 9)
            cp = await service.checkpoint()
            r = await c.get("/public/checkpoint")
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
            assert service.signer.verifier().open_checkpoint(r.text) == cp
            k = await c.get("/public/key")
            assert k.text.strip() == service.signer.vkey

    @pytest.mark.anyio
    async def test_proofs_verify_independently(self, service: Service) -> None:
        """Served inclusion and consistency proofs verify with the reference verifier against the log's roots."""
        await append_n(service.store, 37)
        await service.tree.catch_up(service.store)
        await service.checkpoint()  # proofs are served for signed sizes (up to 37) only
        await service.tree.catch_up(service.store)
        leaves = [ref_leaf(e.canonical()) async for e in service.store.read()]
        async with httpx.AsyncClient(base_url=service.url) as c:
            for size in (1, 2, 5, 16, 37):
                for seq in {1, size // 2 + 1, size}:
                    r = (await c.get("/public/proof/inclusion", params={"seq": seq, "size": size})).json()
                    assert r["leaf_index"] == seq - 1
                    assert unb64(r["leaf_hash"], "leaf") == leaves[seq - 1]
                    path = [unb64(h, "h") for h in r["path"]]
                    assert ref_verify_inclusion(seq - 1, size, leaves[seq - 1], path, ref_mth(leaves[:size]))
                for old in {1, size // 3 + 1, size}:
                    r = (await c.get("/public/proof/consistency", params={"from": old, "to": size})).json()
                    path = [unb64(h, "h") for h in r["path"]]
                    assert ref_verify_consistency(
                        old, size, ref_mth(leaves[:old]), ref_mth(leaves[:size]), path
                    )

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "query",
        [
            "/public/proof/inclusion?size=3",
            "/public/proof/inclusion?seq=0&size=3",
            "/public/proof/inclusion?seq=4&size=3",
            "/public/proof/inclusion?seq=1&size=99",
            "/public/proof/inclusion?seq=-1&size=3",
            "/public/proof/inclusion?seq=x&size=3",
            "/public/proof/consistency?from=3",
            "/public/proof/consistency?from=4&to=3",
            "/public/proof/consistency?from=1&to=99",
            "/public/proof/consistency?from=1.5&to=3",
            "/public/proof/consistency?from=99999999999999999999999&to=3",
        ],
    )
    async def test_bad_parameters_are_400(self, service: Service, query: str) -> None:
        """Missing, malformed or out-of-range parameters get 400 with an error that names the problem."""
        await append_n(service.store, 5)
        await service.tree.catch_up(service.store)
        async with httpx.AsyncClient(base_url=service.url) as c:
            r = await c.get(query)
        assert r.status_code == 400
        assert r.json()["error"]


class TestAuditCommand:
    @pytest.mark.anyio
    async def test_audit_follows_the_log_and_rejects_a_rewrite(
        self, service: Service, tmp_path: Path
    ) -> None:
        """First audit keeps a checkpoint; later ones check consistency and items; after a rewrite the
        checkpointer refuses, and a checkpoint signed anyway fails the audit naming consistency."""
        keep = tmp_path / "kept.json"
        await append_n(service.store, 10)
        early = await service.release("r-0", embed_proof=False)
        await append_n(service.store, 20)
        await service.checkpoint()

        code, out, err = await rollwatch_audit("--url", service.url, "--keep", str(keep))
        assert code == 0, err
        assert "trust on first use" in out
        kept = json.loads(keep.read_text())
        assert kept["key"] == service.signer.vkey

        await append_n(service.store, 7)
        late = await service.release("r-1", embed_proof=True)
        await append_n(service.store, 11)
        new = await service.checkpoint()
        assert new.size > late > early

        for item in ("r-1", "r-0"):
            code, out, err = await rollwatch_audit(
                "--url", service.url + "/public/", "--keep", str(keep), "--item", item, "--inclusion-only"
            )
            assert code == 0, err
            assert "consistency: kept size" in out
            assert f"inclusion: item {item}" in out
        assert service.signer.verifier().open_checkpoint(json.loads(keep.read_text())["checkpoint"]) == new

        # Someone with the file rewrites an old event and recomputes the chain; the tree is rebuilt.
        rewrite_event(service.db, 5, '{"note":"","schedule":"rewritten"}')
        await service.tree.rebuild()
        await service.tree.catch_up(service.store)
        with pytest.raises(IntegrityError, match="refusing to sign"):
            await Checkpointer(service.store, service.tree, service.signer).checkpoint()

        # A dishonest operator signs the rewritten tree anyway: the audit catches it.
        size = await service.tree.current_size()
        forged = Checkpoint(origin=service.signer.name, size=size, root=await service.tree.root(size))
        note = service.signer.sign_checkpoint(forged)
        await service.store.append(
            "checkpoints", [CheckpointSigned(size=size, root=b64(forged.root), note=note)]
        )
        await service.tree.catch_up(service.store)
        before = keep.read_text()
        code, out, err = await rollwatch_audit("--url", service.url, "--keep", str(keep))
        assert code == 1
        assert "FAILED consistency" in err
        assert "rewritten" in err
        assert keep.read_text() == before

    @pytest.mark.anyio
    async def test_wrong_key_and_bad_items_fail(self, service: Service, tmp_path: Path) -> None:
        """A pinned key the server does not sign with, an unknown item, or an item whose event was altered: exit 1 naming the check."""
        await append_n(service.store, 4)
        await service.release("r-9", embed_proof=False)
        await service.checkpoint()
        other = NoteSigner(service.signer.name, Ed25519PrivateKey.generate())
        code, _, err = await rollwatch_audit("--url", service.url, "--key", other.vkey)
        assert code == 1
        assert "FAILED key" in err
        code, _, err = await rollwatch_audit("--url", service.url, "--item", "nope")
        assert (code, "FAILED inclusion" in err) == (1, True)
        meta = service.feed[0]["_rollwatch"]
        meta["canonical"] = meta["canonical"].replace('"passed":true', '"passed":false')
        meta.pop("leaf_hash")
        code, _, err = await rollwatch_audit("--url", service.url, "--item", "r-9")
        assert code == 1
        assert "FAILED inclusion" in err
        assert "not in the signed tree" in err
        code, _, err = await rollwatch_audit("--url", service.url, "--key", "garbage")
        assert code == 2


class TestAuditChecks:
    """audit() failure modes against doctored answers (httpx MockTransport over a real tree)."""

    @pytest.mark.anyio
    async def test_rollback_and_split_view(
        self, store: SQLiteEventStore, tree: MerkleTree, signer: NoteSigner, tmp_path: Path
    ) -> None:
        """A server presenting an older checkpoint than the kept one, or another root for the same size, fails consistency."""
        await append_n(store, 12)
        await tree.catch_up(store)
        notes = {n: signer.sign_checkpoint(Checkpoint(signer.name, n, await tree.root(n))) for n in (6, 12)}
        forged = signer.sign_checkpoint(Checkpoint(signer.name, 12, bytes(32)))
        serving = {"note": notes[12]}

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/public/key":
                return httpx.Response(200, text=signer.vkey + "\n")
            if request.url.path == "/public/checkpoint":
                return httpx.Response(200, text=serving["note"])
            return httpx.Response(404)

        keep = tmp_path / "k.json"
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            report = await audit("http://x", keep=keep, client=c)
            assert report.checkpoint.size == 12
            serving["note"] = notes[6]
            with pytest.raises(AuditFailure, match="older than the kept one") as e:
                await audit("http://x", keep=keep, client=c)
            assert e.value.check == "consistency"
            serving["note"] = forged
            with pytest.raises(AuditFailure, match="two different roots"):
                await audit("http://x", keep=keep, client=c)
            serving["note"] = notes[12].replace("\n12\n", "\n13\n")
            with pytest.raises(AuditFailure) as e:
                await audit("http://x", keep=keep, client=c)
            assert e.value.check == "checkpoint"


class TestRemembered:
    @pytest.mark.anyio
    async def test_a_released_item_rewritten_and_withdrawn_after_its_audit_is_reported(
        self, service: Service, tmp_path: Path
    ) -> None:
        """`audit --keep --item` remembers the item's event; after the event is rewritten, the tree rebuilt and the
        item withdrawn from the feed (no new checkpoint signed), a plain `audit --keep` fails naming the item."""
        keep = tmp_path / "keep.json"
        await append_n(service.store, 6)
        seq = await service.release("r-kept", embed_proof=False)
        await append_n(service.store, 3)
        await service.checkpoint()
        code, out, err = await rollwatch_audit(
            "--url", service.url, "--keep", str(keep), "--item", "r-kept", "--inclusion-only"
        )
        assert code == 0, err
        remembered = json.loads(keep.read_text())["items"]
        assert remembered["r-kept"]["seq"] == seq

        code, out, err = await rollwatch_audit("--url", service.url, "--keep", str(keep))
        assert code == 0, err
        assert "remembered: 1 released items still in the signed tree: ok" in out

        rewrite_event(
            service.db, seq, '{"passed":false,"rollout_id":"r-kept","score":0.0,"scorer":"python-function"}'
        )
        await service.tree.rebuild()
        await service.tree.catch_up(service.store)
        service.feed.clear()
        code, out, err = await rollwatch_audit("--url", service.url, "--keep", str(keep))
        assert code == 1
        assert "FAILED remembered" in err
        assert f"item r-kept (event {seq})" in err
