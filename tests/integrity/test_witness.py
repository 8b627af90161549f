"""Witnesses (C2SP tlog-witness, cosignature/v1): ``rollwatch witness serve`` as real processes,
and a log on loopback that submits its checkpoints to them."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
import structlog.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from rollwatch.config import parse_config
from rollwatch.errors import InvalidNote
from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner, b64
from rollwatch.integrity.merkle import EMPTY_ROOT, node_hash
from rollwatch.integrity.service import Integrity, open_integrity
from rollwatch.integrity.witness import CosignatureVerifier
from rollwatch.metrics import Metrics
from rollwatch.projections import ProjectionDB
from rollwatch.publication.routes import publication_routes
from rollwatch.store.sqlite import SQLiteEventStore
from rollwatch.web.app import build_app
from rollwatch.web.server import HTTPServer
from tests.integrity.conftest import append_n
from tests.publication.helpers import all_projections

pytestmark = pytest.mark.anyio

ORIGIN = "rollwatch.test/witnessed"


@dataclass
class WitnessProc:
    proc: subprocess.Popen[str]
    url: str
    vkey: str
    port: int


@contextmanager
def witness_serve(
    tmp: Path,
    name: str,
    log_vkey: str,
    port: int = 0,
    more_logs: tuple[str, ...] = (),
    stderr: Path | None = None,
) -> Iterator[WitnessProc]:
    """``rollwatch witness serve`` on loopback; its key and state live in ``tmp/name`` (its log
    lines go to ``stderr`` when given)."""
    home = tmp / name
    home.mkdir(exist_ok=True)
    err = subprocess.DEVNULL if stderr is None else stderr.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rollwatch",
            "witness",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--key",
            str(home / "witness.key"),
            "--log",
            log_vkey,
            *(a for k in more_logs for a in ("--log", k)),
            "--name",
            f"witness.test/{name}",
        ],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.rsplit(" ", 1)[-1].strip()
        vkey = proc.stdout.readline().split(" ", 1)[1].strip()
        yield WitnessProc(proc, url, vkey, int(url.rsplit(":", 1)[1]))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()
        if stderr is not None:
            err.close()  # type: ignore[union-attr]


async def audit_cmd(*args: str) -> tuple[int, str, str]:
    """``python -m rollwatch audit ARGS``, in a worker thread (the server keeps serving)."""
    p = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "rollwatch", "audit", *args], capture_output=True, text=True, timeout=60
        )
    )
    return p.returncode, p.stdout, p.stderr


def log_key(path: Path) -> NoteSigner:
    """A checkpoint key written where the log's config points (so a second log can share it: a fork)."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        path.chmod(0o600)
    from rollwatch.integrity.keys import load_signer

    return load_signer(path, ORIGIN)


@dataclass
class Site:
    store: SQLiteEventStore
    integrity: Integrity
    client: httpx.AsyncClient

    @property
    def witnessing(self) -> Any:
        assert self.integrity.witnessing is not None
        return self.integrity.witnessing

    async def checkpoint(self, events: int, tag: str = "e") -> int:
        await append_n(self.store, events, per_call=50, tag=tag)
        cp = await self.integrity.final_checkpoint()
        assert cp is not None
        return cp.size

    @property
    def url(self) -> str:
        return str(self.client.base_url).rstrip("/")

    async def until(self, cond: Callable[[], bool], timeout: float = 60) -> None:
        """Wait, on the witnessing's own change events, until ``cond()`` holds."""
        with anyio.fail_after(timeout):
            while not cond():
                with anyio.move_on_after(1):  # the loop may be between polls of the tree
                    await self.witnessing.wait_changed()


@asynccontextmanager
async def site(home: Path, key_file: Path, witnesses: list[WitnessProc], quorum: int) -> AsyncIterator[Site]:
    config = parse_config(
        {
            "store": {"url": f"sqlite:{home / 'events.db'}"},
            "integrity": {
                "origin": ORIGIN,
                "key_file": str(key_file),
                "checkpoint_every": 10**9,
                "checkpoint_interval": "1h",
                "witnesses": [{"url": w.url, "key": w.vkey} for w in witnesses],
                "witness_quorum": quorum,
                "witness_timeout": "5s",
            },
        }
    )
    async with (
        SQLiteEventStore(home / "events.db") as store,
        ProjectionDB(config.store.projections_path, all_projections()) as pdb,
        open_integrity(config.integrity, config.store, store) as integrity,
    ):
        metrics = Metrics()
        metrics.witnessed = integrity.witnessed
        services = SimpleNamespace(store=store, projections=pdb, config=config)
        app = build_app(
            metrics,
            [*publication_routes(services, None, integrity), *integrity.routes()],
            health=integrity.health,
        )
        server = HTTPServer(app, "127.0.0.1", 0)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(integrity.run, stop)
            await tg.start(server.run)
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as c:
                    yield Site(store, integrity, c)
            finally:
                server.stop()
                stop.set()


class TestQuorum:
    async def test_two_witnesses_reach_quorum_and_one_down_delays_it_not_the_log(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Both witnesses cosign each checkpoint, /checkpoint carries both cosignatures (each
        verifies, with its timestamp), /healthz and /metrics show the witnessed size; with one
        witness down the log signs on, the quorum waits, and the restarted witness catches up."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        key = tmp_path / "log" / "checkpoint.key"
        signer = log_key(key)
        with witness_serve(tmp_path, "w1", signer.vkey) as w1:
            w2_ctx = witness_serve(tmp_path, "w2", signer.vkey)
            w2 = w2_ctx.__enter__()
            try:
                async with site(tmp_path / "log", key, [w1, w2], quorum=2) as s:
                    size = await s.checkpoint(40)
                    await s.until(lambda: s.witnessing.witnessed_size == size)
                    note = (await s.client.get("/checkpoint")).text
                    assert note.startswith(f"{ORIGIN}\n{size}\n")
                    stamps = [CosignatureVerifier.from_vkey(w.vkey).timestamp(note) for w in (w1, w2)]
                    assert all(isinstance(t, int) for t in stamps)
                    assert (await s.client.get("/public/checkpoint")).text == note
                    health = (await s.client.get("/healthz")).json()
                    assert health["witness"]["witnessed_size"] == size
                    page = (await s.client.get("/public/")).text
                    assert f"The latest witnessed checkpoint (tree size {size}) had its quorum of 2" in page
                    assert health["witness"]["witnessed_age_s"] is not None
                    assert (
                        f"rollwatch_witnessed_checkpoint_size {size}" in (await s.client.get("/metrics")).text
                    )
                    # Kept for `publish export`, which ships the cosigned note when it is its checkpoint.
                    from rollwatch.publication.export import cosigned_note

                    kept = tmp_path / "log" / "checkpoint.cosigned"
                    plain = note.split("\u2014 witness.test/")[0]
                    keys = [w1.vkey, w2.vkey]
                    assert cosigned_note(plain, kept, keys) == note
                    assert cosigned_note(plain.replace(f"\n{size}\n", "\n1\n"), kept, keys) != note
                    # Only cosignatures that verify under a configured witness's key are shipped:
                    # a line added to the file by hand (a witness not configured, a signature
                    # changed) is not (before, the file was shipped as it stood).
                    lines = note[len(plain) :].splitlines(keepends=True)
                    assert cosigned_note(plain, kept, [w1.vkey]) == plain + lines[0]
                    name, blob = lines[0][2:].rsplit(" ", 1)
                    raw = bytearray(base64.b64decode(blob))
                    raw[-1] ^= 1
                    forged = f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n"
                    kept.write_text(note + forged + "\u2014 witness.test/w9 AAAAAAAAAAAA\n", encoding="utf-8")
                    assert cosigned_note(plain, kept, keys) == note
                    kept.write_text(plain + forged, encoding="utf-8")
                    assert cosigned_note(plain, kept, keys) == plain
                    both = ("--witness", w1.vkey, "--witness", w2.vkey)
                    code, out, err = await audit_cmd("--url", s.url, "--key", signer.vkey, *both)
                    assert code == 0, err
                    assert "witnessed: 2 of 2 witnesses needed: ok" in out

                    # One witness down: the log goes on, the quorum waits.
                    w2_ctx.__exit__(None, None, None)
                    size2 = await s.checkpoint(30, tag="f")
                    assert size2 > size
                    w2_status = s.witnessing.witnesses[1]
                    await s.until(
                        lambda: (
                            s.witnessing.witnesses[0].cosigned_size == size2 and w2_status.error is not None
                        )
                    )
                    assert s.witnessing.witnessed_size == size
                    note2 = (await s.client.get("/checkpoint")).text
                    assert CosignatureVerifier.from_vkey(w1.vkey).timestamp(note2) is not None
                    assert CosignatureVerifier.from_vkey(w2.vkey).timestamp(note2) is None
                    code, _, err = await audit_cmd("--url", s.url, "--key", signer.vkey, *both)
                    assert code == 1
                    assert "FAILED witness" in err
                    assert "no cosignature by witness.test/w2" in err
                    code, _, err = await audit_cmd(
                        "--url", s.url, "--key", signer.vkey, *both, "--quorum", "1"
                    )
                    assert code == 0, err

                    # Back on the same port, with its key and state: it cosigns, the quorum is reached.
                    w2_ctx = witness_serve(tmp_path, "w2", signer.vkey, port=w2.port)
                    w2 = w2_ctx.__enter__()
                    await s.until(lambda: s.witnessing.witnessed_size == size2)
                    assert (await s.client.get("/healthz")).json()["witness"]["witnesses"][1][
                        "refused"
                    ] is None
            finally:
                w2_ctx.__exit__(None, None, None)


class TestWitnessCredentials:
    async def test_a_witness_urls_credentials_are_not_on_healthz(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A witness's URL may carry a credential (``http://user:token@host``, which the config
        takes and httpx sends as Basic auth): ``/healthz``, which anyone reads, showed it whole."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        key = tmp_path / "log" / "checkpoint.key"
        signer = log_key(key)
        with witness_serve(tmp_path, "w1", signer.vkey) as w1:
            host = w1.url.removeprefix("http://")
            keyed = WitnessProc(None, f"http://alice:s3cret@{host}", w1.vkey, 0)  # type: ignore[arg-type]
            with structlog.testing.capture_logs() as logs:
                async with site(tmp_path / "log", key, [keyed], quorum=1) as s:
                    size = await s.checkpoint(5)
                    await s.until(lambda: s.witnessing.witnessed_size == size)
                    health = (await s.client.get("/healthz")).text
            assert "s3cret" not in health, health
            assert "alice" not in health, health
            assert f'"url":"http://{host}"' in health.replace(" ", ""), health
            assert "s3cret" not in repr(logs)


class TestFork:
    async def test_a_witness_refuses_a_fork_and_the_daemon_reports_it(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second history signed with the same key and origin (what someone who rewrote the log
        and deleted its state would sign) is refused by the witness that cosigned the first: 422,
        ERROR witness_refused, shown on /healthz and /metrics; the witness keeps the first history."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        key = tmp_path / "checkpoint.key"
        signer = log_key(key)
        with witness_serve(tmp_path, "w1", signer.vkey) as w1:
            async with site(tmp_path / "a", key, [w1], quorum=1) as a:
                size_a = await a.checkpoint(10)
                await a.until(lambda: a.witnessing.witnessed_size == size_a)
            async with site(tmp_path / "b", key, [w1], quorum=1) as b:
                size_b = await b.checkpoint(30, tag="forked")
                assert size_b > size_a
                await b.until(lambda: bool(b.witnessing.refusals()))
                [why] = b.witnessing.refusals()
                # Whichever checkpoint of the fork reaches the witness first: the one of
                # size 0 signed at start (the witness holds a larger tree), or a later one
                # (its consistency proof fails, 422).
                assert "422" in why or "larger than our latest checkpoint" in why, why
                assert b.witnessing.witnessed_size < size_b
                r = await b.client.get("/healthz")
                health = r.json()
                assert health["witness"]["witnesses"][0]["refused"]
                # Degraded: a fork under our key is the operator's to look into at once.
                assert (r.status_code, health["status"]) == (503, "degraded"), health
                assert any("w1 refused our checkpoint" in x for x in health["reasons"]), health
                assert "rollwatch_witness_refusals 1" in (await b.client.get("/metrics")).text
            state = (tmp_path / "w1" / "witness-state.json").read_text()
            assert f'"size": {size_a}' in state

    async def test_a_log_put_back_from_an_older_copy_is_named_by_its_witness(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The log's whole folder (log, tree, witness file, projections; the key kept) put back
        from a copy taken before the witness cosigned a larger tree: every local check passes
        (the README's limit), but the witness's 409 names a size beyond our latest checkpoint,
        so the ERROR ``witness_refused`` says the log lost events it had signed, on /healthz,
        at once. Before, that witness was retried as unreachable (a WARNING) until the log
        outgrew the size it holds, then refused as a fork."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        key = tmp_path / "checkpoint.key"
        signer = log_key(key)
        home, old = tmp_path / "log", tmp_path / "old"
        with witness_serve(tmp_path, "w1", signer.vkey) as w1:
            async with site(home, key, [w1], quorum=1) as a:
                size_a = await a.checkpoint(10)
                await a.until(lambda: a.witnessing.witnessed_size == size_a)
            shutil.copytree(home, old)
            async with site(home, key, [w1], quorum=1) as a:
                size_b = await a.checkpoint(30, tag="later")
                await a.until(lambda: a.witnessing.witnessed_size == size_b)
            shutil.rmtree(home)
            shutil.copytree(old, home)
            with structlog.testing.capture_logs() as logs:
                async with site(home, key, [w1], quorum=1) as b:
                    await b.until(lambda: bool(b.witnessing.refusals()), timeout=30)
                    assert b.integrity.health.ok  # nothing local can tell
                    [why] = b.witnessing.refusals()
                    assert f"it holds a tree of {size_b} events" in why, why
                    r = await b.client.get("/healthz")
                    health = r.json()
                    assert health["witness"]["witnesses"][0]["refused"]
                    assert (r.status_code, health["status"]) == (503, "degraded"), health
                    assert any("lost events it had signed" in x for x in health["reasons"]), health
        [line] = [x for x in logs if x["event"] == "witness_refused"]
        assert line["log_level"] == "error"
        assert "lost events it had signed" in line["meaning"], line


class TestRefusalMeaning:
    async def test_a_witness_that_trusts_another_key_is_not_called_a_fork(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A witness configured with another key for our origin refuses with 403: the ERROR
        ``witness_refused`` says its configuration names another key (it said "a fork of
        the log", sending an operator after a forgery that is a typo in a config)."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        key = tmp_path / "checkpoint.key"
        log_key(key)
        other = log_key(tmp_path / "other.key")
        with witness_serve(tmp_path, "w1", other.vkey) as w1, structlog.testing.capture_logs() as logs:
            async with site(tmp_path / "a", key, [w1], quorum=1) as a:
                await a.until(lambda: bool(a.witnessing.refusals()))
        [line] = [x for x in logs if x["event"] == "witness_refused"]
        assert line["reason"].startswith("403:"), line
        assert "does not trust the key" in line["meaning"], line
        assert "fork" not in line["meaning"], line


def submission(old: int, proof: list[bytes], note: str) -> bytes:
    return (f"old {old}\n" + "".join(f"{b64(h)}\n" for h in proof) + "\n" + note).encode()


def spec_check_cosignature(vkey: str, note: str, answer: str) -> int:
    """Check a witness's answer as tlog-cosignature describes it, with no rollwatch code: one
    line ``— name base64(key ID ‖ u64 timestamp ‖ Ed25519 signature)``, the key ID
    SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key)[:4], the signature over ``cosignature/v1``, ``time T``
    and the checkpoint's text; returns T."""
    import base64
    import hashlib
    import struct
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    name, kid_hex, key_b64 = vkey.split("+", 2)
    raw = base64.b64decode(key_b64, validate=True)
    assert raw[0] == 0x04
    assert len(raw) == 33
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == kid_hex
    assert answer.endswith("\n")
    assert answer.count("\n") == 1
    dash, who, sig_b64 = answer[:-1].split(" ")
    assert (dash, who) == ("\u2014", name)
    blob = base64.b64decode(sig_b64, validate=True)
    assert len(blob) == 4 + 8 + 64
    assert blob[:4].hex() == kid_hex
    (t,) = struct.unpack(">Q", blob[4:12])
    assert 0 < t <= time.time() + 5
    text = note[: note.rindex("\n\n") + 1]
    Ed25519PublicKey.from_public_bytes(raw[1:]).verify(
        blob[12:], f"cosignature/v1\ntime {t}\n{text}".encode()
    )
    return t


class TestWitnessProtocol:
    async def test_the_witness_answers_each_case_of_the_spec(self, tmp_path: Path) -> None:
        """404 unknown origin, 403 a note not signed by the log's key, 400 malformed bodies and old >
        size, 409 (Content-Type exactly text/x.tlog.size, as clients compare it) a wrong old size,
        422 the same size with another root or a proof that does not verify, 200 with a verifying
        timestamped cosignature otherwise; the latest cosigned checkpoint for monitors."""
        signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        other_log = NoteSigner("other.test/log", Ed25519PrivateKey.generate())
        leaves = [bytes([i]) * 32 for i in range(4)]
        root2 = node_hash(leaves[0], leaves[1])
        root4 = node_hash(root2, node_hash(leaves[2], leaves[3]))

        def note(s: NoteSigner, size: int, root: bytes, origin: str = ORIGIN) -> str:
            return s.sign_checkpoint(Checkpoint(origin, size, root))

        with witness_serve(tmp_path, "w", signer.vkey) as w:
            verifier = CosignatureVerifier.from_vkey(w.vkey)

            def post(body: bytes) -> httpx.Response:
                return httpx.post(w.url + "/add-checkpoint", content=body, timeout=30)

            async def call(body: bytes) -> httpx.Response:
                return await anyio.to_thread.run_sync(post, body)

            assert (
                await call(submission(0, [], note(other_log, 2, root2, "other.test/log")))
            ).status_code == 404
            assert (await call(submission(0, [], note(stranger, 2, root2)))).status_code == 403
            for bad in (
                b"",
                b"old 01\n\n",
                b"old 0\nnot-base64\n\n" + note(signer, 2, root2).encode(),
                b"\xff\n\n",
            ):
                assert (await call(bad)).status_code == 400, bad
            assert (await call(submission(3, [], note(signer, 2, root2)))).status_code == 400
            first = note(signer, 2, root2)
            r = await call(submission(0, [], first))
            assert r.status_code == 200
            assert verifier.timestamp(first + r.text) is not None
            spec_check_cosignature(w.vkey, first, r.text)
            r = await call(submission(0, [], note(signer, 4, root4)))
            assert r.status_code == 409
            assert r.headers["content-type"] == "text/x.tlog.size"
            assert r.text == "2\n"
            r = await call(submission(2, [], note(signer, 2, EMPTY_ROOT)))
            assert r.status_code == 422  # the same size, another root: a fork
            bad_proof = [node_hash(leaves[3], leaves[2])]
            assert (await call(submission(2, bad_proof, note(signer, 4, root4)))).status_code == 422
            good_proof = [node_hash(leaves[2], leaves[3])]
            r = await call(submission(2, good_proof, note(signer, 4, root4)))
            assert r.status_code == 200
            assert verifier.timestamp(note(signer, 4, root4) + r.text) is not None
            # A cosignature over another checkpoint does not verify for this one.
            with pytest.raises(InvalidNote, match="does not verify"):
                verifier.timestamp(first + r.text)

            # Monitors read the latest cosigned checkpoint at /<hex SHA-256 of the origin>/checkpoint,
            # with the log's signature and the witness's cosignature.
            import hashlib

            def get(path: str) -> httpx.Response:
                return httpx.get(w.url + path, timeout=30)

            origin_hash = hashlib.sha256(ORIGIN.encode()).hexdigest()
            r = await anyio.to_thread.run_sync(get, f"/{origin_hash}/checkpoint")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
            assert signer.verifier().open_checkpoint(r.text, origin=ORIGIN).size == 4
            assert verifier.timestamp(r.text) is not None
            unknown = hashlib.sha256(b"other.test/log").hexdigest()
            assert (await anyio.to_thread.run_sync(get, f"/{unknown}/checkpoint")).status_code == 404

    async def test_empty_tree_roots_and_every_trusted_signature_are_checked(self, tmp_path: Path) -> None:
        """tlog-witness: a checkpoint of size 0 must carry the empty tree's root (else 422, and
        nothing is cosigned), and a note with a failing signature by a key the witness trusts for
        the log is refused (403) even when another trusted key's signature verifies."""
        signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        second = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())  # the log's next key (a rotation)
        leaves = [bytes([i]) * 32 for i in range(2)]
        root2 = node_hash(leaves[0], leaves[1])
        with witness_serve(tmp_path, "w", signer.vkey, more_logs=(second.vkey,)) as w:

            def post(body: bytes) -> httpx.Response:
                return httpx.post(w.url + "/add-checkpoint", content=body, timeout=30)

            async def call(body: bytes) -> httpx.Response:
                return await anyio.to_thread.run_sync(post, body)

            r = await call(submission(0, [], signer.sign_checkpoint(Checkpoint(ORIGIN, 0, root2))))
            assert r.status_code == 422, r.text
            assert "\u2014" not in r.text
            r = await call(submission(0, [], signer.sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT))))
            assert r.status_code == 200, r.text

            good = signer.sign_checkpoint(Checkpoint(ORIGIN, 2, root2))
            r = await call(submission(0, [leaves[0]], good))  # from the empty tree the proof is empty
            assert r.status_code == 422, r.text
            other = second.sign_checkpoint(Checkpoint(ORIGIN, 2, EMPTY_ROOT))  # over another text
            forged = good + other.rsplit("\n\n", 1)[1]  # second's line, not over this note
            r = await call(submission(0, [], forged))
            assert r.status_code == 403, r.text
            assert "does not verify" in r.text
            both = good + second.sign_checkpoint(Checkpoint(ORIGIN, 2, root2)).rsplit("\n\n", 1)[1]
            assert (await call(submission(0, [], both))).status_code == 200


@contextmanager
def odd_witness(name: str, stamp: Callable[[], int]) -> Iterator[tuple[str, str, list[tuple[float, int]]]]:
    """A third party's witness on loopback that cosigns every submission with the timestamp
    ``stamp()`` (written from tlog-cosignature alone); yields its URL, vkey and the time and
    checkpoint size of each submission."""
    import hashlib
    import struct
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography.hazmat.primitives.serialization import PublicFormat

    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kid = hashlib.sha256(name.encode() + b"\n\x04" + pub).digest()[:4]
    vkey = f"{name}+{kid.hex()}+" + b64(b"\x04" + pub)
    seen: list[tuple[float, int]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            note = body.split("\n\n", 1)[1]
            seen.append((time.monotonic(), int(note.split("\n")[1])))
            text = note[: note.rindex("\n\n") + 1]
            t = stamp()
            sig = key.sign(f"cosignature/v1\ntime {t}\n".encode() + text.encode())
            line = f"\u2014 {name} ".encode() + b64(kid + struct.pack(">Q", t) + sig).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(line)))
            self.end_headers()
            self.wfile.write(line)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", vkey, seen
    finally:
        server.shutdown()
        server.server_close()


class TestCosignatureTimestamps:
    async def test_a_cosignature_without_a_time_or_from_the_future_is_not_taken(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """tlog-witness: a cosignature's timestamp must not be zero. A witness that answers with 0,
        or with a time a day ahead, has its answer refused: not published on /checkpoint, not
        counted for the quorum, the reason on /healthz, and the next try after a backoff (a zero
        timestamp once looked a day old and was resubmitted every half second); the same witness
        answering with the time is then taken."""
        import time

        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        key = tmp_path / "log" / "checkpoint.key"
        log_key(key)
        mode = {"stamp": 0}
        with odd_witness("witness.test/odd", lambda: mode["stamp"]) as (url, vkey, seen):
            w = WitnessProc(None, url, vkey, 0)  # type: ignore[arg-type]
            async with site(tmp_path / "log", key, [w], quorum=1) as s:
                size = await s.checkpoint(20)
                status = s.witnessing.witnesses[0]

                def tries() -> list[float]:
                    return [t for t, n in seen if n == size]

                await s.until(lambda: len(tries()) >= 2)
                assert "timestamp 0" in (status.error or "")
                first, second = tries()[:2]
                assert second - first >= 0.9  # backed off, not resubmitted at the next poll
                assert s.witnessing.witnessed_size == 0
                assert "witness.test/odd" not in (await s.client.get("/checkpoint")).text
                health = (await s.client.get("/healthz")).json()
                assert "timestamp 0" in health["witness"]["witnesses"][0]["error"]

                mode["stamp"] = int(time.time()) + 86400
                await s.until(lambda: "in the future" in (status.error or ""), timeout=30)
                assert s.witnessing.witnessed_size == 0

                mode["stamp"] = int(time.time())
                await s.until(lambda: s.witnessing.witnessed_size == size, timeout=90)
                note = (await s.client.get("/checkpoint")).text
                assert CosignatureVerifier.from_vkey(vkey).timestamp(note) == mode["stamp"]


class TestCosignatureAge:
    def test_a_stale_or_future_cosignature_does_not_count(self) -> None:
        """check_witnessed counts only cosignatures younger than the bound (and not from the future),
        and names what is missing; a tampered cosignature fails."""
        from rollwatch.integrity.witness import Cosigner
        from rollwatch.integrity.witnessing import check_witnessed

        signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        note = signer.sign_checkpoint(Checkpoint(ORIGIN, 2, EMPTY_ROOT))
        text = note.split("\n\n")[0] + "\n"
        a = Cosigner("witness.test/a", Ed25519PrivateKey.generate())
        b = Cosigner("witness.test/b", Ed25519PrivateKey.generate())
        now = 2_000_000_000
        cosigned = note + a.cosign(text, now - 10) + b.cosign(text, now - 3 * 86400)
        vs = [CosignatureVerifier.from_vkey(c.vkey) for c in (a, b)]
        assert len(check_witnessed(cosigned, vs, 1, 86400, now=now)) == 2
        with pytest.raises(
            ValueError, match=r"1 fresh cosignatures, 2 needed.*witness\.test/b: 259200 s old"
        ):
            check_witnessed(cosigned, vs, 2, 86400, now=now)
        with pytest.raises(ValueError, match="in the future"):
            check_witnessed(note + a.cosign(text, now + 3600), vs[:1], 1, 86400, now=now)
        # One witness's clock running ahead does not fail a note the other's cosignature satisfies.
        ahead = note + a.cosign(text, now - 10) + b.cosign(text, now + 3600)
        lines = check_witnessed(ahead, vs, 1, 86400, now=now)
        assert "cosignature by witness.test/b: dated 3600 s in the future, not counted" in lines
        with pytest.raises(ValueError, match="1 fresh cosignatures, 2 needed"):
            check_witnessed(ahead, vs, 2, 86400, now=now)
        # Another checkpoint's cosignature moved onto this note does not verify.
        other = signer.sign_checkpoint(Checkpoint(ORIGIN, 3, EMPTY_ROOT)).split("\n\n")[0] + "\n"
        with pytest.raises(ValueError, match="does not verify"):
            check_witnessed(note + a.cosign(other, now - 10), vs[:1], 1, 86400, now=now)


class TestWitnessConfig:
    def test_bad_witness_settings_name_the_key(self) -> None:
        """A malformed witness key, a URL without scheme, or a quorum above the witnesses configured
        is a configuration error naming the key."""
        from rollwatch.errors import ConfigError
        from rollwatch.integrity.witness import Cosigner

        good = Cosigner("witness.test/a", Ed25519PrivateKey.generate()).vkey
        log_vkey = NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).vkey  # type 0x01: not a witness key
        cases = [
            ({"witnesses": [{"url": "http://w", "key": log_vkey}]}, "witnesses[0].key"),
            ({"witnesses": [{"url": "w.example", "key": good}]}, "witnesses[0].url"),
            ({"witnesses": [{"url": "http://w", "key": good}], "witness_quorum": 2}, "witness_quorum = 2"),
        ]
        for integrity, where in cases:
            with pytest.raises(ConfigError) as e:
                parse_config({"integrity": integrity})
            assert where in str(e.value), str(e.value)
        cfg = parse_config(
            {"integrity": {"witnesses": [{"url": "http://w/", "key": good}], "witness_quorum": 1}}
        )
        assert cfg.integrity.witnesses[0].url == "http://w"


class TestWitnessStart:
    @pytest.mark.parametrize("why", ["busy port", "bad name"])
    def test_a_witness_that_cannot_start_leaves_no_key_behind(self, tmp_path: Path, why: str) -> None:
        """A taken --listen (or a --name no key can have) is one line and exit 2, and no key
        file is made. Before, the key was made first: the next start, on a free port, served
        that stray key, which no log had been told to trust."""
        import socket

        key = tmp_path / "w" / "witness.key"
        log_vkey = NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).vkey
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1] if why == "busy port" else 0
            name = "witness.test/w" if why == "busy port" else "bad name+"
            command = ["witness", "serve", "--listen", f"127.0.0.1:{port}", "--key", str(key)]
            proc = subprocess.run(
                [sys.executable, "-m", "rollwatch", *command, "--log", log_vkey, "--name", name],
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert ("already in use" if why == "busy port" else "--name") in proc.stderr, proc.stderr
        assert not key.exists()
        assert not key.parent.exists() or not any(key.parent.iterdir())


async def test_a_named_pipe_at_the_cosigned_files_old_temporary_name_holds_nothing(tmp_path: Path) -> None:
    """The cosigned checkpoint was written through ``.checkpoint.cosigned.tmp``, a name known
    beforehand, on the event loop: a named pipe put there held that write, and with it the whole
    daemon, for good. It is now written off the loop through a new file of its own making."""
    from rollwatch.integrity.tree import MerkleTree, StoredCheckpoint
    from rollwatch.integrity.witnessing import Witnessing

    cosigned = tmp_path / "checkpoint.cosigned"
    planted = tmp_path / ".checkpoint.cosigned.tmp"
    os.mkfifo(planted)
    note = "example.org/log\n1\nroot\n\n— key sig\n"
    w = Witnessing(
        MerkleTree(tmp_path / "merkle.db"),
        [],
        quorum=0,
        cosigned_file=cosigned,
        latest=StoredCheckpoint(seq=1, size=1, root="root", note=note),
    )
    with anyio.fail_after(10):
        await w._write_cosigned()
    assert cosigned.read_text(encoding="utf-8") == note
    assert planted.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [planted.name]


def _tree_root(leaves: list[bytes]) -> bytes:
    """RFC 6962's MTH of ``leaves`` (already leaf hashes)."""
    if len(leaves) <= 1:
        return leaves[0] if leaves else EMPTY_ROOT
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_tree_root(leaves[:k]), _tree_root(leaves[k:]))


def _proof(m: int, leaves: list[bytes], whole: bool = True) -> list[bytes]:
    """RFC 6962's consistency proof SUBPROOF(m, leaves, whole) (empty for m = 0)."""
    n = len(leaves)
    if m in (0, n):
        return [] if whole or m == 0 else [_tree_root(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_proof(m, leaves[:k], whole), _tree_root(leaves[k:])]
    return [*_proof(m - k, leaves[k:], False), _tree_root(leaves[:k])]


def _grow(signer: NoteSigner, leaves: list[bytes], more: list[bytes]) -> tuple[list[bytes], bytes]:
    """``leaves + more`` and the add-checkpoint body from ``len(leaves)`` to it."""
    new = leaves + more
    note = signer.sign_checkpoint(Checkpoint(ORIGIN, len(new), _tree_root(new)))
    return new, submission(len(leaves), _proof(len(leaves), new), note)


def _raw(port: int, data: bytes) -> bytes:
    """``data`` sent on a new connection to the witness; all it answers before closing."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def _post(body: bytes) -> bytes:
    return (
        f"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def _poll(cond: Callable[[], bool], what: str, timeout: float = 15) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def _leaves(tag: str, n: int) -> list[bytes]:
    from rollwatch.integrity.merkle import leaf_hash

    return [leaf_hash(f"{tag}{i}".encode()) for i in range(n)]


def _send_at_once(start: Any, port: int, body: bytes, answers: list[bytes], i: int) -> None:
    start.wait()
    answers[i] = _raw(port, _post(body))


class TestWitnessUnderAttack:
    """An outsider's attacks on a real ``witness serve`` (session 36)."""

    def test_raced_forks_get_one_cosignature_and_a_cut_body_is_no_error(self, tmp_path: Path) -> None:
        """Twenty submissions from one size to twenty forks, sent at once: exactly one is
        cosigned, the others get 409 and its size (the size check and the record are one step).
        And a body cut short (its client gone, or the server's deadline) is no ERROR with a
        traceback, which anyone could write at will before; the witness serves on."""
        import threading

        signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        err = tmp_path / "witness.log"
        with witness_serve(tmp_path, "w", signer.vkey, stderr=err) as w:
            leaves, first = _grow(signer, [], _leaves("base", 4))
            assert _raw(w.port, _post(first)).startswith(b"HTTP/1.1 200")
            for rnd in range(3):
                forks = [_grow(signer, leaves, _leaves(f"r{rnd}f{i}-", 1 + i % 4)) for i in range(20)]
                answers: list[bytes] = [b""] * len(forks)
                start = threading.Barrier(len(forks))
                threads = [
                    threading.Thread(target=_send_at_once, args=(start, w.port, body, answers, i))
                    for i, (_, body) in enumerate(forks)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                won = [i for i, a in enumerate(answers) if a.startswith(b"HTTP/1.1 200")]
                assert len(won) == 1, [a[:12] for a in answers]
                leaves = forks[won[0]][0]
                for a in answers:
                    if not a.startswith(b"HTTP/1.1 200"):
                        assert a.startswith(b"HTTP/1.1 409"), a
                        assert b"content-type: text/x.tlog.size\r\n" in a.lower(), a
                        assert a.endswith(f"\r\n\r\n{len(leaves)}\n".encode()), a

            import socket

            body = _grow(signer, leaves, _leaves("cut", 2))[1]
            with socket.create_connection(("127.0.0.1", w.port), timeout=20) as s:
                s.sendall(_post(body)[: -len(body) // 2])  # the head and half the body, then gone
            _poll(
                lambda: any(
                    w in err.read_text(encoding="utf-8") for w in ("incomplete", "Exception in ASGI")
                ),
                "word of the cut body",
            )
            logged = err.read_text(encoding="utf-8")
            assert "Exception in ASGI" not in logged, logged[-2000:]
            assert "Traceback" not in logged, logged[-2000:]
            assert '"level": "error"' not in logged, logged[-2000:]
            assert _raw(w.port, _post(_grow(signer, leaves, _leaves("after", 1))[1])).startswith(
                b"HTTP/1.1 200"
            )

    def test_a_cosignature_outlives_sigkill_and_a_failed_save_cosigns_nothing(self, tmp_path: Path) -> None:
        """SIGKILL right after a cosignature, then a restart: a fork from the old size gets 409 and
        the new size, a fork of the new size 422. A save that fails (here: a folder where its
        temporary file goes) is a 503 with nothing cosigned: before, the checkpoint was taken
        into the witness's memory first, served to monitors with its cosignature, and a 500;
        after a restart the witness, having forgotten it, cosigned a fork of it."""
        import hashlib
        import signal

        signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        home = tmp_path / "w"
        monitor = "/" + hashlib.sha256(ORIGIN.encode()).hexdigest() + "/checkpoint"
        with witness_serve(tmp_path, "w", signer.vkey) as w:
            leaves, body = _grow(signer, [], _leaves("a", 4))
            answer = httpx.post(w.url + "/add-checkpoint", content=body, timeout=20)
            assert answer.status_code == 200
            os.kill(w.proc.pid, signal.SIGKILL)
            w.proc.wait(10)
        with witness_serve(tmp_path, "w", signer.vkey) as w:
            fork, body = _grow(signer, [], _leaves("fork", 4))
            r = httpx.post(w.url + "/add-checkpoint", content=body, timeout=20)
            assert (r.status_code, r.text) == (409, "4\n")
            same_size = submission(4, [], signer.sign_checkpoint(Checkpoint(ORIGIN, 4, _tree_root(fork))))
            assert httpx.post(w.url + "/add-checkpoint", content=same_size, timeout=20).status_code == 422

            state = home / "witness-state.json"
            state.rename(home / "kept")  # a folder where the state goes: the next save fails
            (state / "x").mkdir(parents=True)
            _, body = _grow(signer, leaves, _leaves("b", 4))
            r = httpx.post(w.url + "/add-checkpoint", content=body, timeout=20)
            assert r.status_code == 503, r.text
            assert "\u2014" not in r.text
            served = httpx.get(w.url + monitor, timeout=20).text
            assert served.startswith(f"{ORIGIN}\n4\n"), served
            (state / "x").rmdir()
            state.rmdir()
            (home / "kept").rename(state)
            _, body = _grow(signer, leaves, _leaves("c", 4))  # the size stayed 4
            assert httpx.post(w.url + "/add-checkpoint", content=body, timeout=20).status_code == 200
        with witness_serve(tmp_path, "w", signer.vkey) as w:
            r = httpx.post(
                w.url + "/add-checkpoint", content=_grow(signer, leaves, _leaves("d", 4))[1], timeout=20
            )
            assert (r.status_code, r.text) == (409, "8\n")

    def test_a_second_process_a_lost_or_edited_state_is_refused_at_start(self, tmp_path: Path) -> None:
        """A second ``witness serve`` with the same key (each held the state in memory and
        cosigned its own fork), a state file deleted while the key stays (the witness started
        over and cosigned any fork), and one whose size was edited (taken as it was): each is
        exit 2 naming the cause, before anything is served."""
        import json

        signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        home = tmp_path / "w"

        def start() -> subprocess.CompletedProcess[str]:
            command = ["witness", "serve", "--listen", "127.0.0.1:0", "--key", str(home / "witness.key")]
            return subprocess.run(
                [sys.executable, "-m", "rollwatch", *command, "--log", signer.vkey],
                capture_output=True,
                text=True,
                timeout=60,
            )

        with witness_serve(tmp_path, "w", signer.vkey) as w:
            _, body = _grow(signer, [], _leaves("a", 8))
            assert httpx.post(w.url + "/add-checkpoint", content=body, timeout=20).status_code == 200
            second = start()
            assert second.returncode == 2, second.stderr
            assert "another witness process" in second.stderr, second.stderr
        state = home / "witness-state.json"
        kept = state.read_text(encoding="utf-8")
        state.unlink()
        lost = start()
        assert lost.returncode == 2, lost.stderr
        assert "no such file" in lost.stderr, lost.stderr
        assert "fork" in lost.stderr, lost.stderr
        edited = json.loads(kept)
        edited[ORIGIN]["size"] = 2
        state.write_text(json.dumps(edited), encoding="utf-8")
        changed = start()
        assert changed.returncode == 2, changed.stderr
        assert "edited" in changed.stderr, changed.stderr
        assert "Traceback" not in lost.stderr + changed.stderr + second.stderr
        state.write_text(kept, encoding="utf-8")
        with witness_serve(tmp_path, "w", signer.vkey) as w:
            r = httpx.post(
                w.url + "/add-checkpoint", content=_grow(signer, [], _leaves("b", 8))[1], timeout=20
            )
            assert (r.status_code, r.text) == (409, "8\n")

    @pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
    def test_the_state_files_rename_is_synced_before_the_answer(self, tmp_path: Path) -> None:
        """tlog-witness: the new checkpoint is persisted before the answer. The state file was
        synced and renamed into place, but its folder not synced: after a power cut the old
        file could come back, and the witness cosign a fork. The rename is now followed by an
        fsync of the folder (seen with strace on the running witness)."""
        signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        trace = tmp_path / "trace"
        with witness_serve(tmp_path, "w", signer.vkey) as w:
            tasks = [t.name for t in Path(f"/proc/{w.proc.pid}/task").iterdir()]
            tracer = subprocess.Popen(
                ["strace", "-f", "-y", "-e", "trace=fsync,rename,renameat,renameat2", "-o", str(trace)]
                + [a for t in tasks for a in ("-p", t)],
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert tracer.stderr is not None
                attached = 0
                while attached < len(tasks):
                    line = tracer.stderr.readline()
                    assert line, "strace could not attach"
                    attached += "attached" in line
                _, body = _grow(signer, [], _leaves("a", 3))
                r = httpx.post(w.url + "/add-checkpoint", content=body, timeout=20)
                assert r.status_code == 200
            finally:
                tracer.terminate()
                tracer.wait(10)
                if tracer.stderr is not None:
                    tracer.stderr.close()
        lines = trace.read_text().splitlines()
        folder = str(tmp_path / "w")
        renamed = [i for i, line in enumerate(lines) if "rename" in line and 'witness-state.json"' in line]
        assert renamed, lines
        assert any("fsync(" in line and f"<{folder}>" in line for line in lines[renamed[-1] :]), lines
