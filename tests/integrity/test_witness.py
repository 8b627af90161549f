"""Witnesses: ``rollwatch witness serve`` (C2SP tlog-witness) and a daemon that submits to two of them.

Real subprocesses on loopback: two witnesses and a daemon. Checkpoints reach the quorum
and ``/public/checkpoint`` carries the cosignatures (checked here with a verifier
written from the tlog-cosignature text, not with our code); a witness that is down
delays the quorum but never the log; a witness that saw a larger tree refuses a rolled
back log, and the daemon says so on ``/healthz``. And the witness's protocol answers,
byte for byte as tlog-witness fixes them, for every way a request can be wrong.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner, b64
from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch, write_config
from tests.integrity.conftest import append_n
from tests.integrity.served import _free_port, _poll, _stop

ORIGIN = "rollwatch.test/w"


class WitnessProc:
    def __init__(self, tmp: Path, label: str, log_vkey: str) -> None:
        self.dir = tmp / label
        self.dir.mkdir()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_vkey = log_vkey
        self.proc: subprocess.Popen[str] | None = None
        self.start()
        self.vkey = _poll(lambda: self._vkey(), 30, f"witness {label} to print its key")
        _poll(lambda: self.up(), 30, f"witness {label} to listen")

    def start(self) -> None:
        self.err = open(self.dir / "stderr", "a")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "rollwatch", "witness", "serve",
                "--listen", f"127.0.0.1:{self.port}",
                "--key", str(self.dir / "witness.key"),
                "--name", f"witness.test/{self.dir.name}",
                "--log", self.log_vkey,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            text=True,
        )  # fmt: skip

    def _vkey(self) -> str | None:
        for line in (self.dir / "stderr").read_text().splitlines():
            if line.startswith("witness key: "):
                return line.removeprefix("witness key: ").strip()
        return None

    def up(self) -> bool:
        try:
            return httpx.get(self.url + "/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        self.err.close()


def cosigned_at(note: str, vkey: str) -> int | None:
    """The witness's cosignature time on ``note``, verified as tlog-cosignature describes it
    (written from the spec, not with rollwatch's code); None when it has none."""
    name, hex_id, key_b64 = vkey.split("+", 2)
    raw = base64.b64decode(key_b64)
    assert raw[0] == 0x04
    kid = hashlib.sha256(name.encode() + b"\n" + b"\x04" + raw[1:]).digest()[:4]
    assert kid.hex() == hex_id
    text, _, sigs = note.rpartition("\n\n")
    text += "\n"
    for line in sigs.splitlines():
        who, _, blob_b64 = line.removeprefix("— ").partition(" ")
        blob = base64.b64decode(blob_b64)
        if who != name or blob[:4] != kid:
            continue
        (ts,) = struct.unpack(">Q", blob[4:12])
        msg = b"cosignature/v1\n" + f"time {ts}\n".encode() + text.encode()
        Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[12:], msg)  # raises if it does not verify
        return int(ts)
    return None


@pytest.fixture
def log_key(tmp_path: Path) -> NoteSigner:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "log.key"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    return NoteSigner(ORIGIN, key)


@pytest.fixture
def witnesses(tmp_path: Path, log_key: NoteSigner) -> Iterator[list[WitnessProc]]:
    ws: list[WitnessProc] = []
    try:
        for label in ("a", "b"):
            ws.append(WitnessProc(tmp_path, label, log_key.vkey))
        yield ws
    finally:
        for w in ws:
            w.stop()


def _daemon(tmp_path: Path, ws: list[WitnessProc], quorum: int) -> tuple[str, subprocess.Popen[str], Path]:
    port = _free_port()
    extra = (
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[integrity]\norigin = "{ORIGIN}"\nkey_file = "{tmp_path / "log.key"}"\n'
        f'checkpoint_every = 5\ncheckpoint_interval = "1s"\nwitness_quorum = {quorum}\n'
    )
    for w in ws:
        extra += f'[[integrity.witnesses]]\nurl = "{w.url}"\nkey = "{w.vkey}"\n'
    cfg = write_config(tmp_path, extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    # Signed at start (size 0) before anything is appended: the key was made by hand.
    _poll(
        lambda: (r := _get(url + "/public/checkpoint")) is not None and r.status_code == 200,
        60,
        "the daemon's first checkpoint",
    )
    return url, proc, cfg


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def _fill(db: Path, n: int, tag: str) -> None:
    async def go() -> None:
        async with SQLiteEventStore(db) as store:
            await append_n(store, n, tag=tag)

    anyio.run(go)


def _signed_sizes(db: Path) -> list[int]:
    con = sqlite3.connect(db)
    try:
        import json

        rows = con.execute("SELECT data FROM events WHERE type = 'CheckpointSigned' ORDER BY seq")
        return [json.loads(d)["size"] for (d,) in rows]
    finally:
        con.close()


def test_checkpoints_reach_the_quorum_and_a_witness_down_never_holds_up_the_log(
    tmp_path: Path, witnesses: list[WitnessProc], log_key: NoteSigner
) -> None:
    a, b = witnesses
    url, proc, _ = _daemon(tmp_path, witnesses, quorum=2)
    db = tmp_path / "events.db"
    try:
        _fill(db, 20, "x")

        # Both cosign the newest checkpoint; the served note carries both cosignatures.
        def witnessed() -> str | None:
            r = _get(url + "/public/checkpoint")
            if r is None or r.status_code != 200:
                return None
            note = r.text
            size = Checkpoint.parse(note.split("\n\n")[0] + "\n").size
            done = size >= 20 and cosigned_at(note, a.vkey) and cosigned_at(note, b.vkey)
            return note if done else None

        note = _poll(witnessed, 30, "a checkpoint of 20 events cosigned by both witnesses")
        assert isinstance(note, str)
        log_key.verifier().open_checkpoint(note)  # the log's own signature still verifies
        health = httpx.get(url + "/healthz").json()
        assert health["status"] == "ok"
        assert health["witnesses"]["cosignatures"] == 2
        assert health["witnesses"]["witnessed_age_s"] < 60
        ok = rollwatch("audit", "--url", url, "--witness", a.vkey, "--witness", b.vkey)
        assert ok.returncode == 0, ok.stderr
        assert "witnesses: 2 of 2 cosigned" in ok.stdout
        bad = rollwatch("audit", "--url", url, "--witness", _stranger_vkey(), "--quorum", "1")
        assert bad.returncode == 1
        assert "FAILED witness" in bad.stderr

        # b goes down: the log goes on signing; the quorum waits.
        b.stop()
        witnessed_size = Checkpoint.parse(note.split("\n\n")[0] + "\n").size
        _fill(db, 20, "y")
        _poll(lambda: max(_signed_sizes(db)) >= 40, 30, "the log to sign on with a witness down")
        served = httpx.get(url + "/public/checkpoint").text
        assert Checkpoint.parse(served.split("\n\n")[0] + "\n").size == witnessed_size
        assert httpx.get(url + "/healthz").status_code == 200  # down is not a refusal

        # b back: the newest checkpoint reaches the quorum again.
        b.start()
        _poll(lambda: b.up(), 30, "witness b to come back")
        _poll(
            lambda: (n := witnessed()) is not None and Checkpoint.parse(n.split("\n\n")[0] + "\n").size >= 40,
            60,
            "the newest checkpoint to reach the quorum again",
        )
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert "witness_refused_checkpoint" not in err


def _stranger_vkey() -> str:
    from rollwatch.integrity.cosignature import CosignatureSigner

    return CosignatureSigner("witness.test/x", Ed25519PrivateKey.generate()).vkey


def test_a_witness_that_saw_more_refuses_a_rolled_back_log_and_the_daemon_says_so(
    tmp_path: Path, witnesses: list[WitnessProc], log_key: NoteSigner
) -> None:
    """The witness cosigned a tree of 1000 events of this log (signed with its key); the log now
    holds fewer: it was rolled back or forked. The log still signs; /healthz is 503 degraded."""
    a, _ = witnesses
    root = bytes(32)
    big = log_key.sign_checkpoint(Checkpoint(ORIGIN, 1000, root))
    r = httpx.post(a.url + "/add-checkpoint", content=b"old 0\n\n" + big.encode())
    assert r.status_code == 200, r.text
    url, proc, _ = _daemon(tmp_path, [a], quorum=1)
    try:
        _fill(tmp_path / "events.db", 10, "x")
        h = _poll(
            lambda: (g := _get(url + "/healthz")) is not None and g.status_code == 503 and g.json(),
            30,
            "/healthz to report the refusal",
        )
        assert isinstance(h, dict)
        assert h["status"] == "degraded"
        assert any("larger than ours" in reason for reason in h["reasons"]), h
        _poll(lambda: max(_signed_sizes(tmp_path / "events.db"), default=0) >= 10, 30, "the log to sign on")
    finally:
        err = _stop(proc)
    assert "witness_refused_checkpoint" in err


# --- the protocol, request by request -----------------------------------------------------------


# RFC 9162 §2.1.1 and §2.1.4.1, written from the text for these tests.


def _mth(d: list[bytes]) -> bytes:
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(d[:k]) + _mth(d[k:])).digest()


def _subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, d[:k], b), _mth(d[k:])]
    return [*_subproof(m - k, d[k:], False), _mth(d[:k])]


def _tree(n: int) -> tuple[bytes, list[bytes]]:
    leaves = [hashlib.sha256(b"\x00" + f"event {i}".encode()).digest() for i in range(n)]
    return _mth(leaves), leaves


def test_the_witness_protocol_answers(witnesses: list[WitnessProc], log_key: NoteSigner) -> None:
    w = witnesses[0]

    def post(body: str | bytes) -> httpx.Response:
        return httpx.post(
            w.url + "/add-checkpoint", content=body if isinstance(body, bytes) else body.encode()
        )

    def note(size: int, root: bytes, signer: NoteSigner = log_key, origin: str = ORIGIN) -> str:
        return signer.sign_checkpoint(Checkpoint(origin, size, root))

    r5, _ = _tree(5)
    r9, leaves9 = _tree(9)
    # Malformed: 400; unknown origin: 404; a key it does not trust: 403; old > size: 400.
    assert post("nonsense").status_code == 400
    assert post("old 01\n\n" + note(5, r5)).status_code == 400
    other = NoteSigner("elsewhere/log", Ed25519PrivateKey.generate())
    assert post("old 0\n\n" + note(5, r5, other, "elsewhere/log")).status_code == 404
    assert (
        post("old 0\n\n" + note(5, r5, NoteSigner(ORIGIN, Ed25519PrivateKey.generate()))).status_code == 403
    )
    assert post("old 9\n\n" + note(5, r5)).status_code == 400
    # First contact: old 0, no proof: cosigned.
    first = post("old 0\n\n" + note(5, r5))
    assert first.status_code == 200
    assert cosigned_at(note(5, r5) + first.text, w.vkey) is not None
    # A wrong old size: 409 with the size it holds, as text/x.tlog.size.
    stale = post("old 0\n\n" + note(9, r9))
    assert stale.status_code == 409
    assert stale.headers["content-type"].startswith("text/x.tlog.size")
    assert stale.text == "5\n"
    # A bad proof (a fork of the first 5 events): 422; the same size with another root: 409.
    forked_root = hashlib.sha256(b"another history").digest()
    fake = [b64(h) for h in _subproof(5, leaves9, True)]
    assert post("old 5\n" + "\n".join(fake) + "\n\n" + note(9, forked_root)).status_code == 422
    assert post("old 5\n\n" + note(5, bytes(32))).status_code == 409
    # The right proof: cosigned, and the witness now holds 9.
    proof = _subproof(5, leaves9, True)
    good = post("old 5\n" + "".join(b64(h) + "\n" for h in proof) + "\n" + note(9, r9))
    assert good.status_code == 200, good.text
    # A roll back to 5 is refused whatever it claims.
    assert post("old 5\n\n" + note(5, r5)).status_code == 409
    # The refused, log-signed requests are kept as evidence.
    con = sqlite3.connect(w.dir / "witness.db")
    try:
        kept = con.execute("SELECT status FROM evidence ORDER BY at").fetchall()
    finally:
        con.close()
    assert [s for (s,) in kept] == [422, 409]
