"""A C2SP tlog-witness (``rollwatch witness serve``), and the log's side of it.

**The witness** is what a third party runs (a subscriber, a university, another
operator). It trusts a list of logs (origin and verifier key), keeps the latest
checkpoint it cosigned for each in a SQLite file, and answers
``POST /add-checkpoint`` as https://c2sp.org/tlog-witness says: the request is an
``old N`` line, the consistency proof from N (base64 lines), a blank line and the
signed checkpoint; it is cosigned (cosignature/v1, timestamped) only when N is the
size it holds and the proof links the root it holds to the new one. A log that was
rolled back or forked cannot get a cosignature from a witness that saw it before:
it answers 409 (with its size) or 422, and keeps the request as evidence. The check
and the update are one SQLite transaction, so two requests cannot roll it back.

**The log's side** (:class:`Witnessing`): after each checkpoint the daemon submits it
to every witness in ``[integrity] witnesses`` at once, never holding up the log: a
witness that is down only delays the quorum. The cosignatures it gets are verified,
kept in ``<state dir>/checkpoint.witnessed`` and served on ``/public/checkpoint``
with the checkpoint; ``witness_quorum`` is how many make it witnessed. A witness that
refuses (its tree is larger than ours, or ours is not consistent with it) is reported
on ``/healthz`` and logged as an ERROR: that is the evidence of a fork or rollback.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from rollwatch.errors import InvalidNote, InvalidProof
from rollwatch.integrity.checkpoint import Checkpoint, NoteVerifier, b64, split_note, unb64
from rollwatch.integrity.cosignature import CosignatureSigner, CosignatureVerifier
from rollwatch.integrity.merkle import verify_consistency
from rollwatch.log import get_logger

log = get_logger(__name__)

MAX_BODY = 128 * 1024
MAX_PROOF_LINES = 63
SIZE_TYPE = "text/x.tlog.size"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    at REAL NOT NULL
);
-- requests that were signed by a log but not cosigned: evidence of a fork or rollback
CREATE TABLE IF NOT EXISTS evidence (
    at REAL NOT NULL,
    origin TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


# --- the witness ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    text: str
    media_type: str = "text/plain; charset=utf-8"


class _Refused(Exception):
    def __init__(self, status: int, text: str, *, evidence: bool = False) -> None:
        super().__init__(text)
        self.answer = Answer(status, text if text.endswith("\n") else text + "\n")
        self.evidence = evidence


@dataclass(frozen=True, slots=True)
class _Request:
    old: int
    proof: list[bytes]
    note: str
    checkpoint: Checkpoint


def parse_request(body: bytes) -> _Request:
    """The parts of an add-checkpoint body; :class:`_Refused` (400) when malformed."""
    if len(body) > MAX_BODY:
        raise _Refused(400, f"the request is {len(body)} bytes; at most {MAX_BODY}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(400, "the request is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise _Refused(400, "no blank line between the old size and proof, and the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old ") or not (
        first[4:] == "0" or (first[4:].isascii() and first[4:].isdigit() and first[4] != "0")
    ):
        raise _Refused(400, f"the first line must be 'old <size>' in decimal: {first[:40]!r}")
    old = int(first[4:])
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise _Refused(400, f"{len(lines) - 1} proof lines; at most {MAX_PROOF_LINES}")
    try:
        proof = [unb64(line, "a proof line") for line in lines[1:]]
        text_part, _ = split_note(note)
        cp = Checkpoint.parse(text_part)
    except InvalidNote as e:
        raise _Refused(400, str(e)) from None
    if any(len(h) != 32 for h in proof):
        raise _Refused(400, "a proof line is not a 32-byte hash")
    return _Request(old, proof, note, cp)


class Witness:
    """The witness: its cosigning key, the logs it trusts (origin → keys), its state file."""

    def __init__(self, signer: CosignatureSigner, logs: dict[str, list[NoteVerifier]], state: Path) -> None:
        self.signer = signer
        self.logs = logs
        self.state = state
        self._lock = anyio.Lock()
        state.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(state)
        try:
            con.executescript(_SCHEMA)
        finally:
            con.close()

    async def add_checkpoint(self, body: bytes) -> Answer:
        """Answer one add-checkpoint request (tlog-witness)."""
        try:
            req = parse_request(body)
            keys = self.logs.get(req.checkpoint.origin)
            if keys is None:
                raise _Refused(404, f"unknown log {req.checkpoint.origin!r}")
            if not any(_verifies(k, req.note) for k in keys):
                raise _Refused(403, "no signature by a key this witness trusts for the log")
            if req.old > req.checkpoint.size:
                raise _Refused(
                    400, f"old size {req.old} is larger than the checkpoint's {req.checkpoint.size}"
                )
            async with self._lock:
                answer = await anyio.to_thread.run_sync(self._check_and_keep, req)
        except _Refused as r:
            if r.evidence:
                log.warning("witness_refused", status=r.answer.status, reason=r.answer.text.strip())
            return r.answer
        log.info("witness_cosigned", origin=req.checkpoint.origin, size=req.checkpoint.size)
        return answer

    def _check_and_keep(self, req: _Request) -> Answer:
        cp = req.checkpoint
        con = sqlite3.connect(self.state, isolation_level=None, timeout=30)
        try:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT size, root FROM logs WHERE origin = ?", (cp.origin,)).fetchone()
            size, root = (int(row[0]), bytes(row[1])) if row else (0, b"")
            try:
                if req.old != size:
                    raise _Refused(409, f"{size}")
                if size == 0:
                    if req.proof:
                        raise _Refused(422, "the proof must be empty from size 0", evidence=True)
                elif cp.size == size:
                    if cp.root != root:
                        raise _Refused(
                            409, f"{size}\n", evidence=True
                        )  # the same size with another root: a fork
                else:
                    try:
                        ok = verify_consistency(size, cp.size, root, cp.root, req.proof)
                    except InvalidProof:
                        ok = False
                    if not ok:
                        raise _Refused(
                            422,
                            f"the checkpoint of size {cp.size} is not consistent with the one cosigned at size {size}",
                            evidence=True,
                        )
            except _Refused as r:
                if r.evidence:
                    con.execute(
                        "INSERT INTO evidence VALUES (?, ?, ?, ?, ?)",
                        (time.time(), cp.origin, r.answer.status, r.answer.text, req.note),
                    )
                con.execute("COMMIT")
                if r.answer.status == 409:
                    r.answer = Answer(409, f"{size}\n", SIZE_TYPE)
                raise
            con.execute(
                "INSERT OR REPLACE INTO logs VALUES (?, ?, ?, ?, ?)",
                (cp.origin, cp.size, cp.root, req.note, time.time()),
            )
            con.execute("COMMIT")
        finally:
            con.close()
        text, _ = split_note(req.note)
        return Answer(200, self.signer.cosign(text, int(time.time())))

    def app(self) -> Starlette:
        """``POST /add-checkpoint`` (and ``GET /`` naming the witness and its key)."""

        async def add(request: Request) -> Response:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return PlainTextResponse(
                        f"the request is larger than {MAX_BODY} bytes\n", status_code=400
                    )
            a = await self.add_checkpoint(bytes(body))
            return PlainTextResponse(a.text, status_code=a.status, media_type=a.media_type)

        async def about(_: Request) -> Response:
            logs = "".join(f"log {o}\n" for o in sorted(self.logs))
            return PlainTextResponse(f"witness {self.signer.vkey}\n{logs}")

        return Starlette(routes=[Route("/add-checkpoint", add, methods=["POST"]), Route("/", about)])


def _verifies(key: NoteVerifier, note: str) -> bool:
    try:
        key.open(note)
    except InvalidNote:
        return False
    return True


def parse_log_option(value: str) -> tuple[str, NoteVerifier]:
    """``VKEY`` (the origin is the key's name) or ``ORIGIN=VKEY``; ValueError when malformed."""
    origin, sep, vkey = value.partition("=")
    if not sep:
        vkey, origin = value, ""
    v = NoteVerifier.from_vkey(vkey)
    return (origin or v.name), v


# --- the log's side ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """One witness the log submits to: its submission URL prefix and its key."""

    url: str
    key: CosignatureVerifier


@dataclass
class Witnessed:
    """What the witnesses said about the checkpoints so far (kept in ``checkpoint.witnessed``)."""

    note: str = ""
    """The newest checkpoint that reached the quorum, with its cosignatures."""
    size: int = 0
    times: dict[str, int] = field(default_factory=dict)
    """The timestamp of each witness's cosignature on ``note``."""
    sizes: dict[str, int] = field(default_factory=dict)
    """The size each witness last cosigned (the ``old`` of the next request)."""
    latest: str = ""
    """The newest checkpoint, with whatever cosignatures it got so far."""


class Witnessing:
    """Submits each new checkpoint to the witnesses; keeps and serves what they cosigned."""

    def __init__(
        self,
        witnesses: list[WitnessEndpoint],
        quorum: int,
        state: Path,
        consistency_proof: Callable[[int, int], Awaitable[list[bytes]]],
        *,
        timeout: float = 10.0,
    ) -> None:
        self.witnesses = witnesses
        self.quorum = quorum
        self.state = state
        self.consistency_proof = consistency_proof
        self.timeout = timeout
        self.kept = self._load()
        self.refusals: dict[str, str] = {}
        """Witnesses that refused our latest checkpoint, and why (a fork or rollback, or a
        witness that does not know this log)."""

    def _load(self) -> Witnessed:
        try:
            data = json.loads(self.state.read_text(encoding="utf-8"))
            return Witnessed(
                note=str(data.get("note", "")),
                size=int(data.get("size", 0)),
                times={str(k): int(v) for k, v in data.get("times", {}).items()},
                sizes={str(k): int(v) for k, v in data.get("sizes", {}).items()},
            )
        except (OSError, ValueError, TypeError, AttributeError):
            return Witnessed()

    def _save(self) -> None:
        k = self.kept
        body = {"note": k.note, "size": k.size, "times": k.times, "sizes": k.sizes}
        tmp = self.state.with_name(f".{self.state.name}.{os.getpid()}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.state)

    def served_note(self, latest: str | None) -> str | None:
        """What ``/public/checkpoint`` serves: the newest witnessed checkpoint when there is one
        (with its cosignatures), else the newest checkpoint (with any it got)."""
        if self.kept.note:
            return self.kept.note
        return self.kept.latest or latest

    def health(self) -> dict[str, object]:
        """The witnessing part of ``/healthz``."""
        newest = max(self.kept.times.values(), default=None)
        return {
            "witnessed_size": self.kept.size,
            "witnessed_age_s": None if newest is None else max(0, int(time.time()) - newest),
            "cosignatures": len(self.kept.times),
            "quorum": self.quorum,
            "refusals": dict(self.refusals),
        }

    async def submit(self, note: str, cp: Checkpoint) -> int:
        """Submit ``note`` (checkpoint ``cp``) to every witness at once; return how many cosigned."""
        lines: dict[str, tuple[str, int]] = {}

        async def one(w: WitnessEndpoint) -> None:
            got = await self._submit(client, w, note, cp)
            if got is not None:
                lines[w.key.name] = got

        async with httpx.AsyncClient(timeout=self.timeout) as client, anyio.create_task_group() as tg:
            for w in self.witnesses:
                tg.start_soon(one, w)
        cosigned = note + "".join(line for line, _ in lines.values())
        self.kept.latest = cosigned
        if len(lines) >= self.quorum and cp.size >= self.kept.size:
            self.kept.note, self.kept.size = cosigned, cp.size
            self.kept.times = {name: ts for name, (_, ts) in lines.items()}
        await anyio.to_thread.run_sync(self._save)
        return len(lines)

    async def _submit(
        self, client: httpx.AsyncClient, w: WitnessEndpoint, note: str, cp: Checkpoint
    ) -> tuple[str, int] | None:
        name = w.key.name
        old = self.kept.sizes.get(name, 0)
        for _ in range(3):
            if old > cp.size:
                return self._refused(
                    name,
                    f"it has cosigned a tree of {old} events, larger than ours ({cp.size}): rolled back or forked",
                )
            proof = [] if old == 0 or old == cp.size else await self.consistency_proof(old, cp.size)
            body = f"old {old}\n" + "".join(b64(h) + "\n" for h in proof) + "\n" + note
            try:
                r = await client.post(w.url.rstrip("/") + "/add-checkpoint", content=body.encode())
            except httpx.HTTPError as e:
                log.warning("witness_unreachable", witness=name, url=w.url, error=f"{type(e).__name__}: {e}")
                return None
            if r.status_code == 200:
                try:
                    ts = w.key.timestamp(note + r.text)
                except InvalidNote as e:
                    log.warning("witness_bad_cosignature", witness=name, error=str(e))
                    return None
                if ts is None:
                    log.warning("witness_no_cosignature", witness=name, body=r.text[:200])
                    return None
                self.kept.sizes[name] = cp.size
                self.refusals.pop(name, None)
                line = next(
                    ln + "\n"
                    for ln in r.text.splitlines()
                    if ln.startswith(f"— {name} ") and _is_ours(w.key, note, ln)
                )
                return line, ts
            if r.status_code == 409 and r.headers.get("content-type", "").startswith(SIZE_TYPE):
                try:
                    held = int(r.text.strip())
                except ValueError:
                    return self._refused(name, f"it answered 409 with {r.text[:60]!r}")
                if held == old:
                    return self._refused(
                        name, f"it holds another root for size {held}: our log was forked or rewritten"
                    )
                old = held
                continue
            if r.status_code == 422:
                return self._refused(
                    name,
                    f"our checkpoint of size {cp.size} is not consistent with the one it cosigned ({old}): "
                    "our log was forked or rewritten",
                )
            if r.status_code in (403, 404):
                return self._refused(
                    name, f"it does not know this log or key ({r.status_code}: {r.text.strip()[:120]})"
                )
            log.warning("witness_error", witness=name, status=r.status_code, body=r.text[:200])
            return None
        return None

    def _refused(self, name: str, reason: str) -> tuple[str, int] | None:
        """Record and log (once per reason) a witness's refusal: no cosignature from it."""
        if self.refusals.get(name) != reason:
            log.error("witness_refused_checkpoint", witness=name, reason=reason)
        self.refusals[name] = reason
        return None

    async def run(
        self, latest: Callable[[], Awaitable[tuple[str, Checkpoint] | None]], *, every: float = 1.0
    ) -> None:
        """Submit each new checkpoint ``latest`` returns (polled every ``every`` seconds); never returns."""
        done, tried = -1, 0.0
        while True:
            got = await latest()
            if got is not None:
                note, cp = got
                # A new checkpoint at once; one short of the quorum again every 10 s
                # (a witness that was down catches up), never holding up the log.
                short = self.kept.size != cp.size and anyio.current_time() - tried >= 10
                if cp.size != done or short:
                    tried = anyio.current_time()
                    await self.submit(note, cp)
                    done = cp.size
            await anyio.sleep(every)


def _is_ours(key: CosignatureVerifier, note: str, line: str) -> bool:
    try:
        return key.timestamp(note + line + "\n") is not None
    except InvalidNote:
        return False
