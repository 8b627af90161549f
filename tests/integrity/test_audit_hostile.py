"""``rollwatch audit`` against a hostile server: the host (or a mirror, a CDN) it audits lies.

One honest, signed static export is made per module (``publish export`` of a real log: a
checkpoint, hash tiles, a released result with its proof bundle, a signed index). A hostile
HTTP server on 127.0.0.1, in this process, serves it with one answer changed per test; the
audit is the real command (``python -m rollwatch audit``) in a subprocess (forked from one that
has loaded it: :mod:`tests.forkserver`; afresh where its memory is bounded). Each failure must
exit 1 with one ``FAILED <check>: …`` line naming what failed, never a traceback, within a
bound, and never write what it was served into the ``--keep`` file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rollwatch.integrity.checkpoint import Checkpoint, NoteSigner
from tests import forkserver

Answer = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class World:
    """The honest export and what a hostile operator holds (the log's own signing key)."""

    out: Path
    rid: str
    signer: NoteSigner
    note: str
    cp: Checkpoint


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from tests.helpers import rollwatch
    from tests.integrity.test_tlog_tiles import fill, live_log

    tmp = tmp_path_factory.mktemp("hostile")
    out = tmp / "site"

    async def build() -> World:
        async with live_log(tmp) as live:
            rid, _ = await fill(live)
            signer = live.integrity.signer
            p = await anyio.to_thread.run_sync(
                lambda: rollwatch(
                    "--config",
                    str(live.config_file),
                    "publish",
                    "export",
                    str(out),
                    env={"STATE_DIRECTORY": ""},
                )
            )
            assert p.returncode == 0, p.stdout + p.stderr
        note = (out / "checkpoint").read_text()
        return World(out, rid, signer, note, signer.verifier().open_checkpoint(note))

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("STATE_DIRECTORY", raising=False)
        return anyio.run(build)


# --- the hostile server ------------------------------------------------------------------------


def send(h: BaseHTTPRequestHandler, body: bytes, status: int = 200, **headers: str) -> None:
    h.send_response(status)
    headers.setdefault("Content-Type", "application/octet-stream")
    headers.setdefault("Content-Length", str(len(body)))
    headers.setdefault("Connection", "close")
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    h.end_headers()
    with contextlib.suppress(OSError):
        h.wfile.write(body)


def body(data: bytes | str, status: int = 200, **headers: str) -> Answer:
    raw = data.encode() if isinstance(data, str) else data
    return lambda h: send(h, raw, status, **headers)


@dataclass
class Hostile:
    root: Path
    answers: dict[str, Answer] = field(default_factory=dict)
    """Path (no query) -> how to answer; any other path is served from ``root`` (404 if absent)."""
    asked: list[str] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def hostile(root: Path, answers: dict[str, Answer] | None = None) -> Iterator[Hostile]:
    state = Hostile(root, dict(answers or {}))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            state.asked.append(self.path)
            self.close_connection = True
            if path in state.answers:
                state.answers[path](self)
                return
            f = (state.root / path.lstrip("/")).resolve()
            if f.is_relative_to(state.root.resolve()) and f.is_file():
                send(self, f.read_bytes())
            else:
                send(self, b"not found", 404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def audit(
    url: str, *args: str, timeout: float = 120, limit_memory: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m rollwatch audit --url URL ARGS``, with a bound on its time (and memory)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    env = {**os.environ, "STATE_DIRECTORY": ""}
    if not limit_memory and (done := forkserver.run(["audit", "--url", url, *args], env, timeout)):
        return done
    return subprocess.run(
        [sys.executable, "-m", "rollwatch", "audit", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=limit if limit_memory else None,
    )


def failed(p: subprocess.CompletedProcess[str], check: str, *words: str) -> str:
    """Exit 1, one ``FAILED check: …`` line saying ``words``, no traceback; that line."""
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 1, p.stdout + p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("FAILED ")]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"FAILED {check}: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def keep(world: World, tmp_path: Path) -> Path:
    """A kept file from an honest audit of the export."""
    k = tmp_path / "keep.json"
    with hostile(world.out) as s:
        p = audit(s.url, "--keep", str(k), "--item", world.rid)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok" in p.stdout.splitlines()
    return k


def sign(signer: NoteSigner, origin: str, size: int, root: bytes) -> str:
    return signer.sign(Checkpoint(origin=origin, size=size, root=root).body())


def other_signer(name: str) -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.generate())


# --- checkpoints ---------------------------------------------------------------------------------


def test_a_checkpoint_signed_by_another_key_fails_and_keeps_nothing(world: World, keep: Path) -> None:
    kept = keep.read_bytes()
    forged = sign(other_signer(world.cp.origin), world.cp.origin, world.cp.size, world.cp.root)
    with hostile(world.out, {"/checkpoint": body(forged)}) as s:
        failed(audit(s.url, "--keep", str(keep)), "checkpoint")
        # The key swapped too (a server answering as another log): no rotation leads to it.
        other = other_signer(world.cp.origin)
        s.answers["/checkpoint"] = body(sign(other, world.cp.origin, world.cp.size, world.cp.root))
        s.answers["/key"] = body(other.vkey + "\n")
        failed(audit(s.url, "--keep", str(keep)), "fetch", "/key/rotations")
    assert keep.read_bytes() == kept


def test_a_checkpoint_of_another_origin_fails_against_the_kept_one(world: World, keep: Path) -> None:
    kept = keep.read_bytes()
    forged = sign(world.signer, "evil.example/log", world.cp.size, world.cp.root)
    with hostile(world.out, {"/checkpoint": body(forged)}) as s:
        failed(audit(s.url, "--keep", str(keep)), "consistency", "evil.example/log")
    assert keep.read_bytes() == kept


@pytest.mark.parametrize("how", ["same-size-other-root", "larger-fork", "rollback"])
def test_a_fork_or_rollback_signed_with_the_log_key_fails_and_keeps_nothing(
    world: World, keep: Path, how: str
) -> None:
    """The operator (who holds the key) signs a fork, or serves an older checkpoint."""
    cp = world.cp
    kept = keep.read_bytes()
    if how == "rollback":
        # The auditor kept a later checkpoint than the one served.
        later = sign(world.signer, cp.origin, cp.size + 5, bytes(32))
        data = json.loads(keep.read_text())
        data["checkpoint"] = later
        keep.write_text(json.dumps(data))
        kept = keep.read_bytes()
        answers = {}
        words: tuple[str, ...] = ("older than the kept one",)
    elif how == "same-size-other-root":
        answers = {"/checkpoint": body(sign(world.signer, cp.origin, cp.size, bytes(32)))}
        words = ("two different roots",)
    else:
        answers = {"/checkpoint": body(sign(world.signer, cp.origin, cp.size + 1, bytes(32)))}
        words = ()
    with hostile(world.out, answers) as s:
        p = audit(s.url, "--keep", str(keep))
    if how == "larger-fork":  # no tiles prove the fork: it fails as the proof cannot be made
        assert "Traceback" not in p.stderr, p.stderr
        assert p.returncode == 1, p.stderr
        assert p.stderr.startswith("FAILED "), p.stderr
    else:
        failed(p, "consistency", *words)
    assert keep.read_bytes() == kept


# --- proofs ------------------------------------------------------------------------------------


def _tile(world: World) -> str:
    """The level-0 tile holding the item's event (as ``/tile/0/NNN``)."""
    meta = _item(world)
    return f"/tile/0/{meta['leaf_index'] // 256:03d}"


def _item(world: World) -> dict[str, Any]:
    feed = json.loads((world.out / "feed.json").read_text())
    [it] = [i for i in feed["items"] if i["_rollwatch"].get("rollout_id") == world.rid]
    return it["_rollwatch"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["flipped", "short", "long"])
def test_a_tile_that_does_not_verify_or_has_the_wrong_length_fails(
    world: World, keep: Path, how: str
) -> None:
    kept = keep.read_bytes()
    path = _tile(world)
    f = world.out / path.lstrip("/")
    if not f.exists():  # a partial tile: named with its width
        [f] = list(f.parent.glob(f.name + ".p/*"))
        path = "/" + str(f.relative_to(world.out))
    raw = bytearray(f.read_bytes())
    if how == "flipped":
        raw[40] ^= 1
    elif how == "short":
        raw = raw[:-1]
    else:
        raw += b"\0" * 32
    with hostile(world.out, {path: body(bytes(raw))}) as s:
        p = audit(s.url, "--keep", str(keep), "--item", world.rid, "--no-archive")
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr.startswith("FAILED "), p.stderr
    assert keep.read_bytes() == kept


@pytest.mark.parametrize("how", ["another-item", "path-too-long", "path-too-short", "bad-path"])
def test_an_item_proof_for_another_leaf_or_of_the_wrong_length_fails(world: World, how: str) -> None:
    feed = json.loads((world.out / "feed.json").read_text())
    meta = next(i["_rollwatch"] for i in feed["items"] if i["_rollwatch"].get("rollout_id") == world.rid)
    inc = meta.get("inclusion")
    assert isinstance(inc, dict), meta
    assert inc["path"], meta
    if how == "another-item":
        meta["leaf_index"] = meta["leaf_index"] - 1  # the proof and event of a neighbour
    elif how == "path-too-long":
        inc["path"] = [*inc["path"], inc["path"][0]]
    elif how == "path-too-short":
        inc["path"] = inc["path"][:-1]
    else:
        inc["path"][0] = base64.b64encode(bytes(32)).decode()
    with hostile(world.out, {"/feed.json": body(json.dumps(feed))}) as s:
        failed(audit(s.url, "--item", world.rid, "--no-archive"), "inclusion", world.rid)


@pytest.mark.parametrize("field_", ["not_before", "released_at", "model", "event"])
def test_an_edited_bundle_or_an_early_release_date_fails(world: World, field_: str) -> None:
    """The item's bundle served with its release dated before its embargo, a field edited, or one
    of its events edited."""
    f = world.out / "rollouts" / f"{world.rid}.json"
    record = json.loads(f.read_text())
    if field_ == "not_before":
        record["not_before"] = "2999-01-01T00:00:00Z"  # released before its date
    elif field_ == "released_at":
        record["released_at"] = "2000-01-01T00:00:00Z"
    elif field_ == "model":
        record["model"] = "gpt-forged"
    else:
        ev = record["proof"]["events"][1]
        ev["canonical"] = ev["canonical"].replace('"at":"', '"at":"1', 1)
    with hostile(world.out, {f"/rollouts/{world.rid}.json": body(json.dumps(record))}) as s:
        failed(audit(s.url, "--item", world.rid, "--no-archive"), "bundle", world.rid)


# --- bodies --------------------------------------------------------------------------------------


def _chunked_forever(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = b"x" * (1 << 20)
    with contextlib.suppress(OSError):
        while True:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))


def _bomb(encoding: str) -> Answer:
    """A compressed body that inflates to 512 MiB of zeros (compressed once per test session
    and kept in the session's temporary folder: each compression took 1.5-10 s of CPU)."""
    kept = Path(tempfile.gettempdir()) / f"rollwatch-test-bomb-{encoding}"
    try:
        data = kept.read_bytes()
    except FileNotFoundError:
        comp = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        block = bytes(1 << 20)
        data = b"".join(comp.compress(block) for _ in range(512)) + comp.flush()
        part = kept.with_name(f"{kept.name}.{os.getpid()}")
        part.write_bytes(data)
        part.replace(kept)  # whole or absent: another worker may be reading it
    return body(data, Content_Encoding=encoding)


@pytest.mark.parametrize("path", ["/checkpoint", "/feed.json", "/results.jsonl", "/rollouts/{rid}.json"])
@pytest.mark.parametrize("how", ["chunked-forever", "huge-length", "gzip-bomb", "deflate-bomb"])
def test_a_huge_or_endless_or_bomb_body_fails_within_bounds(world: World, path: str, how: str) -> None:
    path = path.format(rid=world.rid)
    if how == "chunked-forever":
        answer: Answer = _chunked_forever
    elif how == "huge-length":
        answer = lambda h: send(h, b"{" * (300 << 20))  # noqa: E731 (300 MB, every byte sent)
    else:
        answer = _bomb(how.removesuffix("-bomb"))
    with hostile(world.out, {path: answer}) as s:
        start = time.monotonic()
        p = audit(s.url, "--item", world.rid, timeout=120, limit_memory=True)
    assert time.monotonic() - start < 100
    failed(p, "fetch", "67,108,864 bytes")


def _drip(h: BaseHTTPRequestHandler) -> None:
    """A checkpoint-sized answer, one byte a second."""
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    with contextlib.suppress(OSError):
        for _ in range(1000):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(1)


@pytest.mark.parametrize("path", ["/checkpoint", "/results.jsonl"])
def test_a_slow_drip_fails_within_the_timeout(world: World, path: str) -> None:
    """One byte a second never lets a read time out: the whole answer is bounded by --timeout."""
    with hostile(world.out, {path: _drip}) as s:
        start = time.monotonic()
        p = audit(s.url, "--timeout", "3", timeout=90)
        took = time.monotonic() - start
    failed(p, "fetch", "3 s")
    assert took < 30, took


def _hang(h: BaseHTTPRequestHandler) -> None:
    """Accepts and never answers (a silent server)."""
    time.sleep(60)


def test_a_silent_server_fails_at_the_timeout(world: World) -> None:
    with hostile(world.out, {"/checkpoint": _hang}) as s:
        start = time.monotonic()
        p = audit(s.url, "--timeout", "2", timeout=60)
        took = time.monotonic() - start
    failed(p, "fetch")
    assert took < 20, took


# --- redirects -----------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("to", ["loop", "file", "other-host", "non-loopback", "scheme"])
def test_a_redirect_away_or_in_a_loop_fails(world: World, to: str) -> None:
    """A redirect is followed only within the audited origin (scheme, host, port)."""
    target = {
        "loop": "/checkpoint",
        "file": "file:///etc/passwd",
        "other-host": f"http://localhost:{_closed_port()}/checkpoint",
        "non-loopback": "http://192.0.2.1/checkpoint",
        "scheme": "ftp://127.0.0.1/checkpoint",
    }[to]
    with hostile(world.out, {"/checkpoint": body(b"", 302, Location=target)}) as s:
        start = time.monotonic()
        p = audit(s.url, "--timeout", "5", timeout=60)
        took = time.monotonic() - start
    line = failed(p, "fetch", "/checkpoint")
    if to != "loop":
        assert "redirect" in line, line
    assert took < 30, took


def test_a_redirect_within_the_host_is_followed(world: World) -> None:
    with hostile(world.out) as s:
        s.answers["/checkpoint"] = body(b"", 301, Location=f"{s.url}/moved/checkpoint")
        s.answers["/moved/checkpoint"] = body((world.out / "checkpoint").read_bytes())
        p = audit(s.url, "--no-archive")
    assert p.returncode == 0, p.stdout + p.stderr


# --- what the bodies say -------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"items": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("path", "data", "check"),
    [
        ("/checkpoint", b"\xff\xfe not utf-8 \xc3\x28\n", "checkpoint"),
        ("/checkpoint", b"<html><body><h1>502 Bad Gateway</h1></body></html>", "checkpoint"),
        ("/key", b"<html><body>Error</body></html>", "key"),
        ("/feed.json", b"<html><body>Error</body></html>", "fetch"),
        ("/feed.json", b'{"items": "\xff\xfe"}', "fetch"),
        ("/feed.json", _nested(200_000), "fetch"),
        ("/rollouts/{rid}.json", _nested(200_000), "fetch"),
        ("/results.jsonl", _nested(200_000), "archive"),
        ("/releases.json", _nested(200_000), "archive"),
        ("/healthz", _nested(200_000), "health"),
        ("/results.jsonl", b"<html><body>Error</body></html>", "archive"),
    ],
    ids=[
        "checkpoint-not-utf8", "checkpoint-html", "key-html", "feed-html", "feed-not-utf8",
        "feed-nested", "bundle-nested", "results-nested", "index-nested", "healthz-nested",
        "results-html",
    ],
)  # fmt: skip
def test_garbage_bodies_fail_naming_what(world: World, path: str, data: bytes, check: str) -> None:
    path = path.format(rid=world.rid)
    status = 503 if path == "/healthz" else 200
    with hostile(world.out, {path: body(data, status)}) as s:
        failed(audit(s.url, "--item", world.rid), check)


def test_numbers_past_64_bits_fail(world: World) -> None:
    """A leaf index past 2**64 fails; a number too long to read fails as no JSON. (An embedded
    proof for a size past the checkpoint's is not used: the proof is asked for, and verifies.)"""
    feed = json.loads((world.out / "feed.json").read_text())
    meta = next(i["_rollwatch"] for i in feed["items"] if i["_rollwatch"].get("rollout_id") == world.rid)
    meta["leaf_index"] = 2**70
    # and a number too long for Python to read at all
    text = json.dumps(feed).replace('"title"', '"big": ' + "9" * 5000 + ', "title"', 1)
    with hostile(world.out, {"/feed.json": body(json.dumps(feed))}) as s:
        failed(audit(s.url, "--item", world.rid, "--no-archive"), "inclusion", world.rid)
        s.answers["/feed.json"] = body(text)
        failed(audit(s.url, "--item", world.rid, "--no-archive"), "fetch")


def test_duplicate_json_keys_fail(world: World) -> None:
    """A bundle whose model is stated twice: Python keeps the last (the logged one), a reader
    that keeps the first sees the forged one. Audit must not pass what readers read two ways."""
    f = world.out / "rollouts" / f"{world.rid}.json"
    text = f.read_text()
    assert text.startswith("{")
    forged = '{"model": "gpt-forged", ' + text[1:]
    with hostile(world.out, {f"/rollouts/{world.rid}.json": body(forged)}) as s:
        failed(audit(s.url, "--item", world.rid, "--no-archive"), "fetch", "twice")


# --- the kept file -------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["fifo", "folder", "huge", "garbage", "nested", "not-utf8", "device"])
def test_a_kept_file_that_is_no_kept_checkpoint_fails_at_once(
    world: World, tmp_path: Path, what: str
) -> None:
    k = tmp_path / "keep.json"
    if what == "fifo":
        os.mkfifo(k)
    elif what == "folder":
        k.mkdir()
    elif what == "huge":
        with k.open("wb") as f:
            f.truncate(8 << 30)  # sparse: 8 GiB of NULs
    elif what == "garbage":
        k.write_bytes(b"\x00\x01garbage")
    elif what == "nested":
        k.write_bytes(b"[" * 200_000)
    elif what == "not-utf8":
        k.write_bytes(b'{"key": "\xff"}')
    else:
        k = Path("/dev/zero")
    before = k.read_bytes() if what in ("garbage", "nested", "not-utf8") else b""
    with hostile(world.out) as s:
        start = time.monotonic()
        p = audit(s.url, "--keep", str(k), timeout=60, limit_memory=True)
    assert time.monotonic() - start < 30
    assert "Traceback" not in p.stderr, p.stderr
    if what == "folder":
        assert p.returncode == 2, p.stderr
    else:
        failed(p, "keep", str(k))
    if what in ("folder", "fifo", "device"):
        return
    if what == "huge":  # untouched (never read whole here either: 8 GiB)
        assert k.stat().st_size == 8 << 30
    else:
        assert k.read_bytes() == before


def test_a_failed_audit_never_writes_the_kept_file_and_the_next_audit_catches_the_fork(
    world: World, keep: Path, tmp_path: Path
) -> None:
    """The fork served after a failure elsewhere (an edited tile): nothing is kept; the honest
    checkpoint stays kept, so the fork fails again on its own."""
    kept = keep.read_bytes()
    fork = sign(world.signer, world.cp.origin, world.cp.size + 1, bytes(32))
    with hostile(world.out, {"/checkpoint": body(fork)}) as s:
        p = audit(s.url, "--keep", str(keep))
        assert p.returncode == 1, p.stderr
        assert keep.read_bytes() == kept
        # A fresh auditor (no kept file) trusts the fork on first use, but a second
        # one with the first's kept file does not trust a different fork.
        fresh = tmp_path / "fresh.json"
        p = audit(s.url, "--keep", str(fresh), "--no-archive")
    assert "Traceback" not in p.stderr, p.stderr
    if p.returncode == 0:
        other = sign(world.signer, world.cp.origin, world.cp.size + 1, bytes(31) + b"\1")
        with hostile(world.out, {"/checkpoint": body(other)}) as s:
            failed(audit(s.url, "--keep", str(fresh), "--no-archive"), "consistency", "two different roots")
