"""The log read as a C2SP tlog-tiles log by a verifier that knows only the published specs.

The verifier below is written from the texts of c2sp.org/signed-note,
c2sp.org/tlog-checkpoint, c2sp.org/tlog-tiles and RFC 9162 §2.1; it imports nothing
of rollwatch (only ``cryptography`` for Ed25519 and ``httpx`` to fetch). It reads the
checkpoint and the key, verifies the note, rebuilds the root from the hash tiles,
builds and checks RFC 9162 audit paths from them, and checks a released result's
whole proof bundle: once against the live routes on loopback, and once against
``rollwatch publish export`` output served by ``python -m http.server``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rollwatch.config import Config, load_config
from rollwatch.integrity.service import Integrity, open_integrity
from rollwatch.metrics import Metrics
from rollwatch.projections import ProjectionDB
from rollwatch.publication import release_due
from rollwatch.publication.routes import publication_routes
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.access import Operators
from rollwatch.web.app import build_app
from rollwatch.web.server import HTTPServer
from tests.helpers import rollwatch, write_config
from tests.integrity.conftest import append_n
from tests.publication.helpers import all_projections, finish_run, new_run_id, rollout_events, start_run

pytestmark = pytest.mark.anyio

# --- the verifier: from the spec texts only ------------------------------------------------------


class Rejected(Exception):
    """The verifier refuses what it was served."""


def h_leaf(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: the hash of a leaf."""
    return hashlib.sha256(b"\x00" + data).digest()


def h_node(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: the hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def largest_pow2_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@dataclass
class VerifierKey:
    """A signed-note Ed25519 key, from its ``name+hexid+base64(0x01 ‖ key)`` form."""

    name: str
    key_id: bytes
    key: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> VerifierKey:
        name, hex_id, b64 = vkey.strip().split("+", 2)  # base64 may hold "+"
        raw = base64.b64decode(b64, validate=True)
        if raw[0] != 0x01 or len(raw) != 33:
            raise Rejected("not an Ed25519 key")
        kid = bytes.fromhex(hex_id)
        # signed-note: key ID = SHA-256(key name || 0x0A || 0x01 || public key)[:4]
        if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] != kid:
            raise Rejected("the key ID does not match the key")
        return cls(name, kid, Ed25519PublicKey.from_public_bytes(raw[1:]))


def open_note(note: str, key: VerifierKey) -> str:
    """signed-note: the text, once a signature by ``key`` verifies; others are ignored."""
    if not note.endswith("\n") or re.search(r"[\x00-\x09\x0b-\x1f]", note):
        raise Rejected("not a note")
    cut = note.rfind("\n\n")
    text, sigs = note[: cut + 1], note[cut + 2 :].splitlines()
    good = False
    for line in sigs:
        if not line.startswith("\u2014 "):
            raise Rejected(f"bad signature line {line!r}")
        name, sig_b64 = line[2:].split(" ")
        blob = base64.b64decode(sig_b64, validate=True)
        if name != key.name or blob[:4] != key.key_id:
            continue  # an unknown key: ignored
        try:
            key.key.verify(blob[4:], text.encode())
        except InvalidSignature:
            raise Rejected("a signature by the log's key does not verify") from None
        good = True
    if not good:
        raise Rejected("the note is not signed by the log's key")
    return text


@dataclass
class CheckpointBody:
    """tlog-checkpoint: origin, tree size, root hash (then extension lines)."""

    origin: str
    size: int
    root: bytes

    @classmethod
    def parse(cls, text: str) -> CheckpointBody:
        lines = text.split("\n")
        origin, size, root = lines[0], lines[1], base64.b64decode(lines[2], validate=True)
        if not re.fullmatch(r"0|[1-9][0-9]*", size) or len(root) != 32:
            raise Rejected("not a checkpoint")
        return cls(origin, int(size), root)


def tile_index_path(n: int) -> str:
    """tlog-tiles: N as zero-padded 3-digit path elements, all but the last starting with x."""
    s = f"{n:03d}"
    s = "0" * (-len(s) % 3) + s
    groups = [s[i : i + 3] for i in range(0, len(s), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


@dataclass
class TileReader:
    """Reads the hashes of a tree of ``size`` from the tiles under ``prefix``."""

    client: httpx.Client
    prefix: str
    size: int
    fetched: dict[str, bytes] = field(default_factory=dict)

    def tile(self, level: int, index: int) -> bytes:
        """Tile ``index`` at ``level``: full if the tree has it, else the partial one the size implies."""
        full_tiles = self.size // 256 ** (level + 1)
        if index < full_tiles:
            width = 256
            path = f"tile/{level}/{tile_index_path(index)}"
        else:
            width = (self.size // 256**level) % 256
            if index != full_tiles or width == 0:
                raise Rejected(f"tile {level}/{index} is beyond the tree")
            path = f"tile/{level}/{tile_index_path(index)}.p/{width}"
        if path not in self.fetched:
            r = self.client.get(self.prefix + path)
            if r.status_code != 200:
                raise Rejected(f"GET {path}: {r.status_code}")
            if len(r.content) != 32 * width:
                raise Rejected(f"{path} is {len(r.content)} bytes, not {32 * width}")
            self.fetched[path] = r.content
        return self.fetched[path]

    def node(self, height: int, index: int) -> bytes:
        """The MTH of the perfect subtree of ``2**height`` leaves starting at leaf ``index * 2**height``.

        tlog-tiles: a tile at level L holds hashes at height 8L, each the MTH of
        ``256**L`` leaves; the heights in between are rebuilt by hashing.
        """
        level, rest = divmod(height, 8)
        first = index << rest  # the first of the 2**rest tile hashes under this node
        tile = self.tile(level, first // 256)
        hashes = [tile[32 * i : 32 * i + 32] for i in range(first % 256, first % 256 + (1 << rest))]
        if len(hashes) != 1 << rest or any(len(h) != 32 for h in hashes):
            raise Rejected(f"the tiles lack node {height}/{index}")
        while len(hashes) > 1:
            hashes = [h_node(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    def mth(self, lo: int, hi: int) -> bytes:
        """RFC 9162 §2.1.1: MTH(D[lo:hi]), from perfect subtrees read from the tiles."""
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            return self.node(n.bit_length() - 1, lo // n)
        k = largest_pow2_below(n)
        return h_node(self.mth(lo, lo + k), self.mth(lo + k, hi))

    def audit_path(self, m: int, lo: int, hi: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1: PATH(m, D[lo:hi]), m relative to lo."""
        n = hi - lo
        if n == 1:
            return []
        k = largest_pow2_below(n)
        if m < k:
            return [*self.audit_path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.audit_path(m - k, lo + k, hi), self.mth(lo, lo + k)]


def verify_inclusion(leaf_index: int, tree_size: int, leaf: bytes, path: list[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2, step by step."""
    if leaf_index >= tree_size:
        raise Rejected("leaf index beyond the tree")
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise Rejected("proof too long")
        if fn & 1 or fn == sn:
            r = h_node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = h_node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise Rejected(f"inclusion of leaf {leaf_index} does not verify")


ROLLOUT_NAMESPACE = uuid.UUID("6f1d7f0e-3c9b-4c1e-9a57-2b8f0d4c7a11")  # from the README


@dataclass
class Verified:
    checkpoint: CheckpointBody
    tiles: TileReader


def verify_log(client: httpx.Client, prefix: str, vkey: str) -> Verified:
    """Fetch ``<prefix>checkpoint``, verify it, and check the tiles rebuild its root."""
    key = VerifierKey.parse(vkey)
    r = client.get(prefix + "checkpoint")
    if r.status_code != 200:
        raise Rejected(f"GET checkpoint: {r.status_code}")
    cp = CheckpointBody.parse(open_note(r.text, key))
    tiles = TileReader(client, prefix, cp.size)
    if tiles.mth(0, cp.size) != cp.root:
        raise Rejected("the tiles do not rebuild the checkpoint's root")
    return Verified(cp, tiles)


def verify_entry(v: Verified, leaf_index: int, entry: bytes) -> None:
    """The entry is leaf ``leaf_index``: its hash is in the level-0 tile, and an audit path from
    the tiles folds to the signed root."""
    leaf = h_leaf(entry)
    if v.tiles.node(0, leaf_index) != leaf:
        raise Rejected(f"entry {leaf_index} is not the tiles' leaf")
    path = v.tiles.audit_path(leaf_index, 0, v.checkpoint.size)
    verify_inclusion(leaf_index, v.checkpoint.size, leaf, path, v.checkpoint.root)


def verify_bundle(record: dict[str, Any], vkey: str, v: Verified | None = None) -> dict[str, dict[str, Any]]:
    """A released result's proof bundle, end to end; returns its events' data by type.

    Checks: the bundle's checkpoint is signed by the log's key (and is the one ``v``
    verified, when given); every event's canonical bytes fold with its path to that
    root; every event is of this rollout; the request derives the rollout id; the
    answer, score, public decision and release make the claim the record shows.
    """
    bundle = record["proof"]
    rid = record["rollout_id"]
    cp = CheckpointBody.parse(open_note(bundle["checkpoint"], VerifierKey.parse(vkey)))
    if v is not None and (cp.size, cp.root) != (v.checkpoint.size, v.checkpoint.root):
        raise Rejected("the bundle's checkpoint is not the log's")
    if not bundle["complete"]:
        raise Rejected("the bundle has pending events")
    by_type: dict[str, dict[str, Any]] = {}
    for ev in bundle["events"]:
        entry = ev["canonical"].encode()
        path = [base64.b64decode(p, validate=True) for p in ev["inclusion"]]
        verify_inclusion(ev["leaf_index"], cp.size, h_leaf(entry), path, cp.root)
        if v is not None:
            verify_entry(v, ev["leaf_index"], entry)
        env = json.loads(entry)
        if (
            env["stream"] != f"rollout-{rid}"
            or env["data"]["rollout_id"] != rid
            or env["seq"] != ev["leaf_index"] + 1
        ):
            raise Rejected(f"event {env['seq']} is not of rollout {rid}")
        if env["type"] == "PublicationDecided" and env["data"]["audience"] != "public":
            continue
        by_type[env["type"]] = env["data"]
    need = {"RolloutRequested", "RolloutResponded", "RolloutScored", "PublicationDecided", "PublicReleased"}
    if not need <= by_type.keys():
        raise Rejected(f"the bundle lacks {sorted(need - by_type.keys())}")
    req = by_type["RolloutRequested"]
    derived = uuid.uuid5(
        ROLLOUT_NAMESPACE, f"{req['run_id']}\x00{req['model']}\x00{req['problem_id']}\x00{req['sample']}"
    )
    if str(derived) != rid:
        raise Rejected("the rollout id does not derive from its request")
    for k in ("provider", "model", "problem_id", "sample", "run_id"):
        if req[k] != record[k]:
            raise Rejected(f"the record's {k} is not the request's")
    if by_type["RolloutResponded"]["text"] != record["answer"]:
        raise Rejected("the record's answer is not the logged answer")
    if by_type["RolloutScored"]["passed"] is not True or by_type["RolloutScored"]["score"] != record["score"]:
        raise Rejected("the logged score is not the record's")
    if by_type["PublicationDecided"]["not_before"] != record["not_before"]:
        raise Rejected("the logged embargo is not the record's")
    return by_type


def read_bundle_entries(data: bytes) -> list[bytes]:
    """tlog-tiles: an entry bundle is big-endian uint16 length-prefixed entries."""
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack(">H", data[i : i + 2])
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    if i != len(data):
        raise Rejected("a truncated entry bundle")
    return out


# --- the log under test ----------------------------------------------------------------------------


def rollout_uuid(run_id: str, model: str, problem_id: str, sample: int) -> str:
    return str(uuid.uuid5(ROLLOUT_NAMESPACE, f"{run_id}\x00{model}\x00{problem_id}\x00{sample}"))


@dataclass
class Live:
    store: SQLiteEventStore
    pdb: ProjectionDB
    integrity: Integrity
    url: str
    config_file: Path


async def add_released(store: SQLiteEventStore, pdb: ProjectionDB, *, embargo_s: float = 0.0) -> str:
    """One run with one passing rollout whose id is derived as the pipeline derives it."""
    run_id = new_run_id()
    await start_run(store, run_id)
    rid = rollout_uuid(run_id, "gpt-x", "p1", 0)
    await store.append(f"rollout-{rid}", rollout_events(rid, run_id, passed=True, embargo_s=embargo_s))
    await finish_run(store, run_id, rollouts=1, passed=1)
    await release_due(store, pdb)
    return rid


@asynccontextmanager
async def live_log(tmp_path: Path, operators: Operators | None = None) -> AsyncIterator[Live]:
    """The log with its integrity service and the public routes on loopback, as the daemon wires them."""
    cfg_file = write_config(
        tmp_path, '[integrity]\norigin = "rollwatch.test/log"\ncheckpoint_every = 1000000000\n'
    )
    config: Config = load_config(cfg_file)
    async with (
        SQLiteEventStore(tmp_path / "events.db") as store,
        ProjectionDB(config.store.projections_path, all_projections()) as pdb,
        open_integrity(config.integrity, config.store, store) as integrity,
    ):
        services = SimpleNamespace(store=store, projections=pdb, config=config)
        app = build_app(
            Metrics(), [*publication_routes(services, None, integrity), *integrity.routes(operators)]
        )
        server = HTTPServer(app, "127.0.0.1", 0)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(integrity.run, stop)
            await tg.start(server.run)
            try:
                yield Live(store, pdb, integrity, f"http://127.0.0.1:{server.port}/", cfg_file)
            finally:
                server.stop()
                stop.set()


async def fill(live: Live) -> tuple[str, str]:
    """About 600 events (so level-1 tiles exist), a released result and one under embargo; then a checkpoint."""
    await append_n(live.store, 300, per_call=50)
    rid = await add_released(live.store, live.pdb)
    await append_n(live.store, 290, per_call=50, tag="f")
    hidden = await add_released(live.store, live.pdb, embargo_s=3600.0)
    await live.integrity.final_checkpoint()
    return rid, hidden


@contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """``python -m http.server`` on a free loopback port, serving ``directory``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://...) ..."
        m = re.search(r"port (\d+)", line)
        assert m, line
        yield f"http://127.0.0.1:{m.group(1)}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def fetch_all(url: str, fn: Any) -> Any:
    with httpx.Client(timeout=30) as client:
        return fn(client)


# --- the tests ---------------------------------------------------------------------------------------


class TestLiveTiles:
    async def test_a_spec_verifier_reads_the_live_log(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Checkpoint, key, hash tiles (levels 0 and 1), entry bundles and a released result's bundle,
        all verified by the spec-only verifier against the routes on loopback."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        async with live_log(tmp_path) as live:
            rid, _ = await fill(live)

            def check(client: httpx.Client) -> tuple[Verified, dict[str, Any]]:
                vkey = client.get(live.url + "public/key").text
                v = verify_log(client, live.url, vkey)
                assert v.checkpoint.size > 512
                assert any(p.startswith("tile/1/") for p in v.tiles.fetched)
                # Level 1 holds the MTH of each full level-0 tile.
                leaves = client.get(live.url + "tile/0/000").content
                level1 = client.get(live.url + f"tile/1/000.p/{v.checkpoint.size // 256}").content
                hs = [leaves[i : i + 32] for i in range(0, 8192, 32)]
                while len(hs) > 1:
                    hs = [h_node(hs[i], hs[i + 1]) for i in range(0, len(hs), 2)]
                assert level1[:32] == hs[0]
                # Entry bundles (the operator's, on loopback) hash to the level-0 tile.
                r = client.get(live.url + "tile/entries/001")
                assert r.status_code == 200
                assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
                for i, entry in enumerate(read_bundle_entries(r.content)):
                    verify_entry(v, 256 + i, entry)
                record = client.get(live.url + f"public/rollouts/{rid}.json").json()
                return v, verify_bundle(record, vkey, v)

            _, claim = await anyio.to_thread.run_sync(fetch_all, live.url, check)
            assert claim["RolloutRequested"]["request"] == {"prompt": "solve", "try": 1}
            # The same tiles under /public/, where an export is usually hosted.
            async with httpx.AsyncClient(base_url=live.url) as c:
                a, b = await c.get("/tile/0/000"), await c.get("/public/tile/0/000")
                assert a.content == b.content
                assert len(a.content) == 8192

    async def test_bad_tile_paths_and_missing_tiles(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Malformed tile paths are 400 naming the fault; tiles the tree lacks are 404; partial tiles
        are cached briefly; the checkpoint is not cached."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        async with live_log(tmp_path) as live, httpx.AsyncClient(base_url=live.url) as c:
            await append_n(live.store, 300, per_call=100)
            await live.integrity.final_checkpoint()
            for bad in (
                "0/1234",
                "00/000",
                "0/x000/001",
                "0/000.p/256",
                "0/000.p/0",
                "0/000.p/007",
                "64/000",
                "0/x1/000",
                "entries/-01",
                "0/000.p",
            ):
                r = await c.get(f"/tile/{bad}")
                assert r.status_code == 400, (bad, r.status_code)
                assert r.json()["error"] == "bad_request"
            size = (await live.integrity.tree.latest_checkpoint()).size  # type: ignore[union-attr]
            assert (await c.get("/tile/0/001")).status_code == 404  # a full tile of 512 leaves: not yet
            assert (await c.get(f"/tile/0/001.p/{size - 256 + 50}")).status_code == 404
            r = await c.get(f"/tile/0/001.p/{size - 256}")
            assert r.status_code == 200
            assert len(r.content) == 32 * (size - 256)
            assert r.headers["cache-control"] == "public, max-age=60"
            assert r.headers["content-type"] == "application/octet-stream"
            r = await c.get("/checkpoint")
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
            assert (await c.get("/tile/entries/002")).status_code == 404

    async def test_entry_bundles_are_the_operators_only(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Entry bundles hold results under embargo: a peer that is not the operator gets 403 and no
        entries, while hash tiles (hashes only) stay public."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        async with (
            live_log(tmp_path, Operators(trusted_peers=[])) as live,
            httpx.AsyncClient(base_url=live.url) as c,
        ):
            _, hidden = await fill(live)
            r = await c.get("/tile/entries/000")
            assert r.status_code == 403
            assert hidden not in r.text
            assert (await c.get("/tile/0/000")).status_code == 200


class TestStaticExport:
    async def test_a_spec_verifier_checks_the_export_over_a_plain_file_server(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``publish export`` output, served by ``python -m http.server``, is a tlog-tiles log: the
        verifier checks the checkpoint with the exported key, rebuilds the root from the tiles, and
        checks the released result's whole bundle (in rollouts/ID.json and results.jsonl) offline;
        nothing of the result under embargo is exported; an edited tile or event is caught."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        async with live_log(tmp_path) as live:
            rid, hidden = await fill(live)
            live_root = (await live.integrity.tree.latest_checkpoint()).root  # type: ignore[union-attr]
        out = tmp_path / "site"
        p = await anyio.to_thread.run_sync(
            lambda: rollwatch(
                "--config", str(live.config_file), "publish", "export", str(out), env={"STATE_DIRECTORY": ""}
            )
        )
        assert p.returncode == 0, p.stderr
        assert "proofs against the checkpoint of size" in p.stdout
        assert not (out / "tile" / "entries").exists()
        for f in out.rglob("*"):
            if f.is_file():
                assert hidden.encode() not in f.read_bytes(), f

        def check(client: httpx.Client, url: str) -> tuple[Verified, list[dict[str, Any]]]:
            vkey = client.get(url + "key").text
            v = verify_log(client, url, vkey)
            verify_bundle(client.get(url + f"rollouts/{rid}.json").json(), vkey, v)
            lines = [json.loads(x) for x in client.get(url + "results.jsonl").text.splitlines()]
            for line in lines:
                verify_bundle(line, vkey, v)
            return v, lines

        with static_server(out) as url:
            v, lines = await anyio.to_thread.run_sync(lambda: fetch_all(url, lambda c: check(c, url)))
        assert base64.b64encode(v.checkpoint.root).decode() == live_root
        assert [x["rollout_id"] for x in lines] == [rid]

        # Someone edits the export: the verifier notices each change.
        record = json.loads((out / "rollouts" / f"{rid}.json").read_text())
        vkey = (out / "key").read_text()
        for ev in record["proof"]["events"]:
            if ev["type"] == "RolloutScored":
                ev["canonical"] = ev["canonical"].replace('"score":1.0', '"score":1.5')
        record["score"] = 1.5
        with pytest.raises(Rejected, match="inclusion"):
            verify_bundle(record, vkey)
        record = json.loads((out / "rollouts" / f"{rid}.json").read_text())
        record["answer"] = "print('something else')"
        with pytest.raises(Rejected, match="answer"):
            verify_bundle(record, vkey)
        tile = out / "tile" / "0" / "001"
        data = bytearray(tile.read_bytes())
        data[5] ^= 1
        tile.write_bytes(bytes(data))
        record = json.loads((out / "rollouts" / f"{rid}.json").read_text())

        def check_record(client: httpx.Client, url: str) -> None:
            verify_bundle(record, vkey, verify_log(client, url, vkey))

        with static_server(out) as url, pytest.raises(Rejected, match="inclusion of leaf"):
            # Leaf 256's hash is on the audit path of the result's events (in 256..511).
            await anyio.to_thread.run_sync(lambda: fetch_all(url, lambda c: check_record(c, url)))
        # A second export rewrites the edited full tile (full tiles are otherwise left alone).
        p = await anyio.to_thread.run_sync(
            lambda: rollwatch(
                "--config", str(live.config_file), "publish", "export", str(out), env={"STATE_DIRECTORY": ""}
            )
        )
        assert p.returncode == 0, p.stderr
        with static_server(out) as url:
            await anyio.to_thread.run_sync(lambda: fetch_all(url, lambda c: check_record(c, url)))


class TestTilePaths:
    def test_index_encoding_and_parsing_follow_the_spec(self) -> None:
        """tlog-tiles' example: 1234067 is x001/x234/067; every path parses back to its tile."""
        from rollwatch.integrity.tiles import Tile, encode_index, parse_tile_path

        assert encode_index(1234067) == "x001/x234/067"
        assert encode_index(0) == "000"
        assert encode_index(1000) == "x001/000"
        for t in (Tile(0, 0), Tile(3, 1234067, 17), Tile(None, 999), Tile(None, 1000, 255)):
            assert parse_tile_path(t.path().removeprefix("tile/")) == t
            assert tile_index_path(t.index) in t.path()

    def test_the_tiles_of_a_size_are_the_specs_example(self) -> None:
        """tlog-tiles: a tree of 70,000 has 273 full level-0 tiles, a partial one of 112, one full
        level-1 tile, a partial of 17 and a partial level-2 tile of 1; a tree of 256 one full tile
        and a partial level-1 tile of 1."""
        from rollwatch.integrity.tiles import Tile, tiles_for

        tiles = list(tiles_for(70_000))
        assert sum(1 for t in tiles if t.level == 0 and t.full) == 273
        assert [t for t in tiles if not t.full] == [Tile(0, 273, 112), Tile(1, 1, 17), Tile(2, 0, 1)]
        assert sum(1 for t in tiles if t.level == 1 and t.full) == 1
        assert list(tiles_for(256)) == [Tile(0, 0), Tile(1, 0, 1)]
        assert list(tiles_for(0)) == []


class TestLongEntries:
    async def test_an_event_too_long_for_a_bundle_is_refused_by_name(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An event over 65,535 bytes cannot be written in an entry bundle: its bundle is a 404 naming
        the event, while its hash tile and the result's proof bundle still work."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        async with live_log(tmp_path) as live, httpx.AsyncClient(base_url=live.url) as c:
            run_id = new_run_id()
            await start_run(live.store, run_id)
            rid = rollout_uuid(run_id, "gpt-x", "p1", 0)
            long_answer = "x = 1\n" * 12_000
            await live.store.append(
                f"rollout-{rid}", rollout_events(rid, run_id, passed=True, answer=long_answer)
            )
            await finish_run(live.store, run_id, rollouts=1, passed=1)
            await release_due(live.store, live.pdb)
            await live.integrity.final_checkpoint()
            r = await c.get("/tile/entries/000.p/5")
            assert r.status_code == 404
            assert "more than the 65535 an entry bundle can hold" in r.json()["message"]
            assert (await c.get("/tile/0/000.p/5")).status_code == 200
            record = (await c.get(f"/public/rollouts/{rid}.json")).json()
            vkey = (await c.get("/public/key")).text
            claim = verify_bundle(record, vkey)
            assert claim["RolloutResponded"]["text"] == long_answer
