"""The daemon's side of C2SP tlog-witness: each new checkpoint goes to the witnesses of
``[integrity] witnesses``, and the cosignatures that come back are published with it.

A loop of its own watches the tree for a newly signed checkpoint and submits it to
every witness at once (``POST <url>/add-checkpoint``), each with
``integrity.witness_timeout``. A witness that is down, slow or answering 5xx is
retried with a backoff doubling to a minute and never holds up the log: signing goes
on, and only the quorum waits. A witness that refuses (409 with a size we cannot
prove consistency from, 422) has seen another history under our key, a fork: the
daemon logs the ERROR ``witness_refused`` with its answer, and ``/healthz`` answers 503
(degraded, the refusal and its meaning among the reasons); that witness is not asked again until a restart. A 403 or 404 (the witness
trusts another key for our origin, or does not know it) is refused the same way, its
``meaning`` saying so rather than calling it a fork. On a log of our own (not a shared
database), a witness whose 409 names a size beyond our latest checkpoint is refused too:
it cosigned a tree our log no longer has (a log put back from an older copy); it was
retried as unreachable, and named only once the log outgrew that size (422).

Each witness's size is learnt from its 409 (``text/x.tlog.size``): the first
submission says ``old 0`` and is answered with the size it holds, and the next one
carries our consistency proof from that size.

``/checkpoint`` and ``/public/checkpoint`` then serve the latest checkpoint with
every cosignature it got (signed-note lets a note carry many). A checkpoint counts
as *witnessed* once ``integrity.witness_quorum`` witnesses cosigned it; the freshness
of the latest witnessed checkpoint is on ``/healthz`` and ``/metrics``. The last
cosigned note is also kept in ``<state dir>/checkpoint.cosigned`` for ``publish export``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from rollwatch.errors import InvalidNote, InvalidProof
from rollwatch.integrity.checkpoint import Checkpoint, b64, split_note, write_file_atomically
from rollwatch.integrity.tree import MerkleTree, StoredCheckpoint
from rollwatch.integrity.witness import SIZE_TYPE, CosignatureVerifier
from rollwatch.log import get_logger

log = get_logger(__name__)

COSIGNED_FILE = "checkpoint.cosigned"

_POLL_S = 0.5  # how often the loop looks for a newly signed checkpoint
_MAX_BACKOFF_S = 60.0
_MAX_ANSWER = 64 * 1024
"""The longest answer read from a witness (a cosignature is one line; an error a few)."""
_USERINFO = re.compile(r"//[^/@\s'\"]*@")
"""A URL's user information (``//user:password@``), wherever a message quotes one."""
CLOCK_SKEW_S = 60.0
"""How far in the future a cosignature's timestamp may be (the witness's clock may run ahead)."""


@dataclass(slots=True)
class WitnessStatus:
    """What the daemon knows of one witness."""

    url: str
    verifier: CosignatureVerifier
    size: int = 0
    """The size the witness holds, as far as we know."""
    cosigned_size: int = 0
    cosigned_at: int | None = None
    """The timestamp of its latest cosignature."""
    line: str = ""
    """Its cosignature line on the latest checkpoint it cosigned."""
    refused: str | None = None
    """Why it refused a checkpoint (a fork); None while it has not."""
    error: str | None = None
    """The last failure to reach it."""
    retry_at: float = 0.0
    backoff: float = 1.0

    @property
    def shown_url(self) -> str:
        """The URL as ``/healthz`` (anyone's) and the logs show it: without user information
        or query, either of which may carry a credential for the witness."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))

    def shown(self, text: str | None) -> str | None:
        """``text`` (an error, a refusal) with the URL as :attr:`shown_url` shows it."""
        if text is None:
            return None
        return _USERINFO.sub("//", text.replace(self.url, self.shown_url))

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "name": self.verifier.name,
            "url": self.shown_url,
            "cosigned_size": self.cosigned_size,
            "cosigned_age_s": None if self.cosigned_at is None else round(now - self.cosigned_at, 1),
            "refused": self.shown(self.refused),
            "error": self.shown(self.error),
        }


@dataclass(slots=True)
class Witnessing:
    """The witnesses of one log, their cosignatures on its latest checkpoint, and the quorum."""

    tree: MerkleTree
    witnesses: list[WitnessStatus]
    quorum: int
    timeout: float = 10.0
    cosigned_file: Path | None = None
    refresh: float = 600.0
    """Resubmit the latest checkpoint this often even when no new one was signed: a quiet log
    then still gets fresh cosignatures, so an old cosignature means a frozen log (or witness)."""
    sole: bool = False
    """This process is the log's only signer (a log file of its own, not a shared database):
    every checkpoint it submitted was in its log first, so a witness holding a larger tree
    than the log's latest checkpoint means the log lost checkpoints it had signed (put
    back from an older copy), or another copy of it signs under our key. On a shared log a
    node may just not have absorbed another node's newest checkpoint yet: it waits."""
    latest: StoredCheckpoint | None = None
    witnessed_size: int = 0
    witnessed_at: float | None = None
    """When the latest witnessed checkpoint reached its quorum (the time of its quorum-th cosignature)."""
    _changed: anyio.Event = field(default_factory=anyio.Event)

    @classmethod
    def from_config(
        cls,
        tree: MerkleTree,
        witnesses: list[tuple[str, str]],
        quorum: int,
        timeout: float,
        state_dir: Path,
        refresh: float = 600.0,
        *,
        sole: bool = False,
    ) -> Witnessing:
        """From ``[(url, vkey), ...]`` (validated by the configuration)."""
        return cls(
            tree,
            [WitnessStatus(url.rstrip("/"), CosignatureVerifier.from_vkey(k)) for url, k in witnesses],
            quorum,
            timeout,
            state_dir / COSIGNED_FILE,
            refresh,
            sole,
        )

    # -- what others read ------------------------------------------------------------------------

    def cosigned(self, note: str) -> str:
        """``note`` with the cosignatures it got (as is when it is not the latest or got none)."""
        if self.latest is None or note != self.latest.note:
            return note
        lines = [w.line for w in self.witnesses if w.line and w.cosigned_size == self.latest.size]
        return note + "".join(lines)

    def status(self) -> dict[str, Any]:
        """The witnesses and the quorum, for ``/healthz``."""
        now = time.time()
        return {
            "quorum": self.quorum,
            "witnessed_size": self.witnessed_size,
            "witnessed_age_s": None if self.witnessed_at is None else round(now - self.witnessed_at, 1),
            "witnesses": [w.as_json(now) for w in self.witnesses],
        }

    def refusals(self) -> list[str]:
        """The witnesses that refused a checkpoint, with their reasons."""
        return [f"witness {w.verifier.name}: {w.shown(w.refused)}" for w in self.witnesses if w.refused]

    def refusal_reasons(self) -> list[str]:
        """:meth:`refusals` with what each means, for ``/healthz``'s reasons."""
        return [
            f"witness {w.verifier.name} refused our checkpoint: {w.shown(w.refused)} ({_meaning(w.refused)})"
            for w in self.witnesses
            if w.refused
        ]

    async def wait_changed(self) -> None:
        """Until the next cosignature, refusal or failure is recorded."""
        await self._changed.wait()

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self, client: httpx.AsyncClient | None = None) -> None:
        """Submit each new checkpoint to every witness, for ever (cancel to stop)."""
        own = client is None
        http = client or httpx.AsyncClient(timeout=self.timeout)
        try:
            while True:
                cp = await self.tree.latest_checkpoint()
                if cp is not None and (self.latest is None or cp.seq != self.latest.seq):
                    self.latest = cp
                    for w in self.witnesses:
                        w.retry_at, w.backoff = 0.0, 1.0
                if self.latest is not None:
                    stale = time.time() - self.refresh
                    due = [
                        w
                        for w in self.witnesses
                        if w.refused is None
                        and (w.cosigned_size != self.latest.size or (w.cosigned_at or 0) < stale)
                        and w.retry_at <= time.monotonic()
                    ]
                    if due:
                        async with anyio.create_task_group() as tg:
                            for w in due:
                                tg.start_soon(self._submit, http, w, self.latest)
                        if self._count_quorum():
                            await self._write_cosigned()
                await anyio.sleep(_POLL_S)
        finally:
            if own:
                with anyio.CancelScope(shield=True):
                    await http.aclose()

    def _count_quorum(self) -> bool:
        """Note the latest checkpoint witnessed once a quorum cosigned it; whether it is."""
        cp = self.latest
        if cp is None:
            return False
        times = sorted(
            (w.cosigned_at or 0 for w in self.witnesses if w.cosigned_size == cp.size and w.line),
            reverse=True,
        )
        if len(times) < self.quorum or cp.size < self.witnessed_size:
            return False
        # Witnessed as of the quorum-th freshest cosignature (refreshes move it on).
        at = float(times[self.quorum - 1]) if self.quorum else time.time()
        if cp.size > self.witnessed_size:
            log.info("checkpoint_witnessed", size=cp.size, cosignatures=len(times), quorum=self.quorum)
        self.witnessed_size = cp.size
        self.witnessed_at = at
        return True

    async def _write_cosigned(self) -> None:
        """Keep the latest checkpoint with its cosignatures in :attr:`cosigned_file`, written
        off the event loop through a new file of its own making: at the fixed name it used
        (``.checkpoint.cosigned.tmp``) a named pipe held the write, and the whole daemon, for good."""
        if self.cosigned_file is None or self.latest is None:
            return
        try:
            await anyio.to_thread.run_sync(
                write_file_atomically, self.cosigned_file, self.cosigned(self.latest.note)
            )
        except OSError as e:
            log.warning("cosigned_checkpoint_not_kept", path=str(self.cosigned_file), error=str(e))

    async def _post(self, http: httpx.AsyncClient, url: str, body: bytes) -> tuple[int, str, str]:
        """(status, media type, text) of a witness's answer to ``body``: at most
        :data:`_MAX_ANSWER` bytes of it, the whole within ``timeout``.

        httpx's timeout bounds each read, not the answer, and ``post`` keeps all of it: a
        witness sending an endless answer grew the daemon's memory until the kernel ended it,
        and one sending a byte every few seconds held every witness's next submission (they
        are made together) for as long as it liked."""
        try:
            with anyio.fail_after(self.timeout):
                async with http.stream(
                    "POST", url, content=body, headers={"Content-Type": "text/plain"}
                ) as r:
                    data = bytearray()
                    async for chunk in r.aiter_bytes():
                        data += chunk
                        if len(data) > _MAX_ANSWER:
                            raise httpx.HTTPError(f"its answer is larger than {_MAX_ANSWER} bytes")
                    return r.status_code, r.headers.get("content-type", ""), data.decode("utf-8", "replace")
        except TimeoutError:
            raise httpx.HTTPError(
                f"no whole answer within {self.timeout:g} s (integrity.witness_timeout)"
            ) from None

    async def _submit(self, http: httpx.AsyncClient, w: WitnessStatus, cp: StoredCheckpoint) -> None:
        try:
            for _ in range(2):  # the second time with the size a 409 told us
                if self.sole and w.size > cp.size:
                    self._refused(
                        w,
                        f"409: it holds a tree of {w.size} events, larger than our latest checkpoint ({cp.size})",
                    )
                    return
                body = await self._body(w.size, cp)
                if body is None:
                    # Not proof of a fork by itself: this node may not have absorbed the
                    # newest checkpoint yet. A later checkpoint either proves consistency
                    # from the witness's size or is refused (422).
                    raise httpx.HTTPError(
                        f"it holds size {w.size}, ahead of our latest checkpoint ({cp.size})"
                    )
                status, media_type, text = await self._post(http, f"{w.url}/add-checkpoint", body)
                if status == 409 and media_type.startswith(SIZE_TYPE):
                    held = _size(text)
                    if held is None:
                        raise httpx.HTTPError(f"409 with a malformed size {text[:40]!r}")
                    if held == w.size:  # same size, another root: a fork
                        self._refused(w, f"409: it holds another tree of size {held}")
                        return
                    w.size = held
                    continue
                if status == 200:
                    self._cosigned(w, cp, text)
                    return
                if status in (403, 404, 422) or 400 <= status < 500:
                    self._refused(w, f"{status}: {text.strip()[:200]}")
                    return
                raise httpx.HTTPError(f"{status}: {text.strip()[:200]}")
            raise httpx.HTTPError("the witness keeps changing its size")
        except (httpx.HTTPError, OSError, InvalidNote) as e:
            w.error = str(e) or type(e).__name__
            w.retry_at = time.monotonic() + w.backoff
            w.backoff = min(w.backoff * 2, _MAX_BACKOFF_S)
            log.warning(
                "witness_unreachable",
                witness=w.verifier.name,
                url=w.shown_url,
                error=w.shown(w.error),
                retry_in_s=w.backoff,
            )
            self._note_change()

    async def _body(self, old: int, cp: StoredCheckpoint) -> bytes | None:
        if old > cp.size:
            return None
        proof: list[bytes] = []
        if 0 < old < cp.size:
            try:
                proof = await self.tree.consistency_proof(old, cp.size)
            except InvalidProof:
                return None
        lines = "".join(f"{b64(h)}\n" for h in proof)
        return f"old {old}\n{lines}\n{cp.note}".encode()

    def _cosigned(self, w: WitnessStatus, cp: StoredCheckpoint, answer: str) -> None:
        lines = [ln + "\n" for ln in answer.splitlines() if ln]
        mine = [ln for ln in lines if ln.startswith(f"\u2014 {w.verifier.name} ")]
        stamp = None
        for ln in mine:
            try:
                stamp = w.verifier.timestamp(cp.note + ln)
            except InvalidNote as e:
                raise InvalidNote(f"its cosignature does not verify: {e}") from None
            if stamp is not None:
                w.line = ln
                break
        if stamp is None:
            raise InvalidNote("its answer has no cosignature by its key")
        # tlog-witness: the timestamp must not be zero; one far ahead would be published,
        # fail every audit as "in the future", and keep the refresh from ever coming due.
        if stamp == 0:
            raise InvalidNote("its cosignature has timestamp 0 (tlog-witness requires the time of signing)")
        ahead = stamp - time.time()
        if ahead > CLOCK_SKEW_S:
            raise InvalidNote(f"its cosignature is dated {ahead:.0f} s in the future")
        w.size = w.cosigned_size = cp.size
        w.cosigned_at = stamp
        w.error = None
        log.info("checkpoint_cosigned", witness=w.verifier.name, size=cp.size, timestamp=stamp)
        self._note_change()

    def _refused(self, w: WitnessStatus, why: str) -> None:
        w.refused = why
        log.error(
            "witness_refused",
            witness=w.verifier.name,
            url=w.shown_url,
            reason=w.shown(why),
            meaning=_meaning(why),
        )
        self._note_change()


def _size(text: str) -> int | None:
    """The tree size a witness's 409 names (a uint64 in ASCII digits), else None. ``isdigit``
    alone let "²" and 5,000 digits through to ``int``, whose ValueError ended the daemon."""
    s = text.strip()
    if not re.fullmatch(r"0|[1-9][0-9]{0,19}", s) or int(s) >= 1 << 64:
        return None
    return int(s)


def cosignature_times(note: str, verifiers: list[CosignatureVerifier]) -> dict[str, int]:
    """The valid cosignatures on ``note`` by ``verifiers``: witness name -> timestamp."""
    split_note(note)  # malformed notes fail here, loudly
    out = {}
    for v in verifiers:
        t = v.timestamp(note)
        if t is not None:
            out[v.name] = t
    return out


def checkpoint_of(note: str) -> Checkpoint:
    """The (unverified) checkpoint body of ``note``."""
    return Checkpoint.parse(split_note(note)[0])


def _meaning(why: str) -> str:
    """What a witness's refusal (``why`` opens with its status) says about our log."""
    status = why.partition(":")[0]
    if status == "403":
        return (
            "the witness does not trust the key that signed our checkpoint: its configuration names another"
        )
    if status == "404":
        return "the witness does not witness our log's origin: its configuration names another"
    if status == "409" and "larger than our latest checkpoint" in why:
        return (
            "the witness cosigned a larger tree under our key than our log now holds a checkpoint of: the log "
            "lost events it had signed (put back from an older copy, its state folder with it?), or another "
            "copy of the log signs with our key"
        )
    if status in ("409", "422"):
        return "the witness holds a checkpoint our log is not consistent with: a fork of the log"
    return "the witness refused our submission as malformed"


def check_witnessed(
    note: str, verifiers: list[CosignatureVerifier], quorum: int, max_age: float, now: float | None = None
) -> list[str]:
    """Check ``note`` carries ``quorum`` valid cosignatures by ``verifiers``, none older than
    ``max_age`` seconds nor in the future (a minute of clock skew allowed); return one line per
    cosignature, or raise ValueError saying what is missing.

    A cosignature dated in the future does not count (tlog-cosignature lets verifiers reject
    it), but neither does it fail the note: one witness's clock cannot fail an audit that
    the others' cosignatures satisfy."""
    t_now = time.time() if now is None else now
    try:
        times = cosignature_times(note, verifiers)
    except InvalidNote as e:
        raise ValueError(str(e)) from None
    lines, fresh = [], 0
    for name, t in sorted(times.items()):
        age = t_now - t
        if age < -CLOCK_SKEW_S:
            lines.append(f"cosignature by {name}: dated {-age:.0f} s in the future, not counted")
        elif age > max_age:
            lines.append(f"cosignature by {name}: {age:.0f} s old, older than the {max_age:.0f} s allowed")
        else:
            fresh += 1
            lines.append(f"cosignature by {name}: {age:.0f} s old: ok")
    if fresh < quorum:
        missing = sorted({v.name for v in verifiers} - times.keys())
        raise ValueError(
            f"{fresh} fresh cosignatures, {quorum} needed; "
            + "; ".join([*lines, *(f"no cosignature by {m}" for m in missing)])
        )
    return lines
