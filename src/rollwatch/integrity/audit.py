"""``rollwatch audit``: a third party's check of a rollwatch service, over HTTP only.

An auditor has no access to the log, only to the public routes. Each run:

0. **health**: a service that reports its own log tampered with (``/healthz`` 503)
   fails first, with the service's reasons.
1. **key**: the verifier key is ``--key`` if given, else the one kept from an
   earlier run, else ``/public/key`` (trust on first use, said so in the output). A
   server whose key differs from the pinned one fails, unless a chain of key
   rotations (``/public/key/rotations``), each signed by the key before it, leads from
   the pinned key to the served one, and each of those rotations is an event in the
   signed tree (an inclusion proof against the new checkpoint).
2. **checkpoint**: ``/public/checkpoint`` must carry a valid signature by that key.
3. **consistency**: with a checkpoint kept from an earlier run (size M, root R),
   the new one (size N, root R') must extend it: N ≥ M, and an RFC 9162 consistency
   proof from ``/public/proof/consistency?from=M&to=N`` links R to R'. A log rewritten
   since, even with its hash chain recomputed, fails here.
4. **inclusion** (``--item ID``): the released item of ``/public/feed.json`` whose
   rollout id is ID carries its event (``_rollwatch.canonical``), the leaf index and
   an inclusion proof; the leaf hash recomputed from the event must be in the tree
   under the verified root (through a consistency proof when the item's proof is for
   an earlier size).

5. **remembered items** (with ``--keep``): the keep file also remembers the event
   (seq and leaf hash) of every released item an audit has checked; each run checks
   that the service's tree still holds that leaf at that seq and that an inclusion
   proof of it verifies against the signed root. A released result rewritten or
   withdrawn since, even with the tree rebuilt afterwards, fails here.

6. **archive** (unless ``--no-archive``): every line of ``results.jsonl`` (an export's,
   or the live ``/public/results.jsonl``) is one released result; the events it carries
   (its proof bundle, its ``_rollwatch`` verdict event) must hash to leaves under the
   signed root (or a root the signed tree is consistent with), and every field the line
   states (passed, score, provider, model, problem, sample, rollout id, answer, dates,
   release seq) must be what those events say. A result on two lines fails too. A live
   service's results released after its signed checkpoint (their events ``pending``, each
   after that checkpoint) are counted and said not checked yet. Lines
   without proofs (an export made without the tree) are counted and said not checked.
   A static export's completeness: ``releases.json.sig``, signed by the log's key, names
   the served checkpoint and the SHA-256 of ``releases.json``, which names each release
   folder's manifest by its SHA-256, each manifest its chunks by theirs; a line, chunk or
   folder removed, an index or manifest edited, a proof stripped from a chunk exported
   with proofs, a ``results.jsonl`` that is not exactly the folders' lines: each fails.
   An export without the signature is checked line by line and fails as unsigned.
   A static export that fails while it serves ``.export-in-progress`` (an export is being
   written into it) is checked again once the mark is gone, within ``export_wait``.

Only when every check passes is the new checkpoint (and the key) kept in the file,
so the next run checks consistency from it. Any failure raises
:class:`AuditFailure` naming the check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from rollwatch.errors import AuditFailure, InvalidNote, InvalidProof, UnfitFile
from rollwatch.integrity.checkpoint import (
    Checkpoint,
    NoteVerifier,
    ReleaseStatement,
    b64,
    read_small_file,
    unb64,
)
from rollwatch.integrity.merkle import (
    Node,
    assemble,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    nodes_for,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from rollwatch.integrity.rotation import open_rotation


@dataclass
class AuditReport:
    """What an audit established, one line per check."""

    checkpoint: Checkpoint
    key: str
    lines: list[str] = field(default_factory=list)
    failure: AuditFailure | None = None
    """A failure found after every check ran (an unsigned export: each line checked, its
    completeness not): the lines are worth showing, and the audit still fails."""


def base_url(url: str) -> str:
    """The service root from ``url`` (``http://host:port``, with or without ``/public``)."""
    url = url.rstrip("/")
    return url.removesuffix("/public")


class _Client:
    def __init__(self, client: httpx.AsyncClient, base: str) -> None:
        self.client = client
        self.base = base
        self.public = "/public"
        """Where the public routes are: ``""`` for a ``publish export`` served at ``base``."""
        self.bundles = True
        """Whether ``--item``'s proof bundle is required (``--inclusion-only``: not asked for)."""

    def url(self, path: str) -> str:
        """The URL of a public route (given as ``/public/…``)."""
        if path.startswith("/public/"):
            path = self.public + path.removeprefix("/public")
        return self.base + path

    async def find_export(self) -> None:
        """A static ``publish export`` served at the base (its ``key`` and ``releases.json`` there,
        no ``/public/key``): read the public routes from the base."""
        try:
            if await self._status(self.base + "/public/key") != 404:
                return
            if await self._status(self.base + "/releases.json") == 200:
                self.public = ""
        except httpx.HTTPError:
            return  # the checks that follow say what is wrong

    async def _status(self, url: str) -> int:
        """The status of a GET of ``url``, its body not read."""
        async with self.client.stream("GET", url) as r:
            return r.status_code

    async def proof(self, path: str) -> Any:
        """What a proof route (``/public/proof/inclusion?seq=&size=``, ``…/consistency?from=&to=``)
        answers; for a static export, which has no routes, made here from its hash tiles (they
        are not trusted: the proof is checked against the signed root like any other)."""
        if self.public:
            return await self.json(path)
        from urllib.parse import parse_qsl, urlsplit

        q = dict(parse_qsl(urlsplit(path).query))
        try:
            if path.startswith("/public/proof/inclusion"):
                seq, size = int(q["seq"]), int(q["size"])
                ranges, leaf = inclusion_ranges(seq - 1, size), (0, seq - 1)
            else:
                size = int(q["to"])
                ranges, leaf = consistency_ranges(int(q["from"]), size), None
        except InvalidProof as e:
            raise AuditFailure("fetch", f"no proof for {path}: {e}") from None
        tiles: dict[str, bytes] = {}
        nodes = {n: await self._node(n, size, tiles) for n in nodes_for(ranges) | ({leaf} if leaf else set())}
        out: dict[str, Any] = {"path": [b64(h) for h in assemble(ranges, nodes)]}
        if leaf is not None:
            out["leaf_hash"] = b64(nodes[leaf])
        return out

    async def _node(self, node: Node, size: int, tiles: dict[str, bytes]) -> bytes:
        """A perfect subtree's hash in the tree of ``size``, from the tile holding it (C2SP tlog-tiles)."""
        from rollwatch.integrity.tiles import HEIGHT, WIDTH, Tile

        level, index = node
        tile_level, rest = divmod(level, HEIGHT)
        first = index << rest  # the first of the tile hashes this node folds
        n = first // WIDTH
        per = WIDTH ** (tile_level + 1)
        width = WIDTH if n < size // per else (size // WIDTH**tile_level) % WIDTH
        path = "/" + Tile(tile_level, n, width).path()
        if path not in tiles:
            tiles[path] = (await self.get(path)).content
            if len(tiles[path]) != 32 * width:
                raise AuditFailure(
                    "fetch", f"GET {self.url(path)}: {len(tiles[path])} bytes, not {32 * width}"
                )
        data = tiles[path]
        lo = first % WIDTH
        hashes = [data[32 * i : 32 * i + 32] for i in range(lo, lo + (1 << rest))]
        if len(hashes[-1]) != 32:
            raise AuditFailure("fetch", f"GET {self.url(path)} lacks node {level}/{index}")
        while len(hashes) > 1:
            hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    async def get(self, path: str) -> httpx.Response:
        """The answer to a GET of ``path``, read whole up to :data:`MAX_BODY` bytes (a server that
        streams for ever fails the audit, not the auditor's memory)."""
        url = self.url(path)
        try:
            r = await _fetch(self.client, url)
        except httpx.HTTPError as e:
            raise AuditFailure("fetch", f"GET {url}: {type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise AuditFailure("fetch", f"GET {url} answered {r.status_code}: {r.text[:200].strip()}")
        return r

    async def json(self, path: str) -> Any:
        r = await self.get(path)
        try:
            return loads(r.content)
        except _BadJSON as e:
            raise AuditFailure("fetch", f"GET {self.url(path)} did not return JSON: {e}") from None


MAX_BODY = 64 * 1024 * 1024
"""The largest answer (and ``results.jsonl`` line) audit reads: a tile is 8 KiB, a proof bundle
or a result's line some kilobytes."""


async def _fetch(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """A GET of ``url`` whatever its status, its body read up to :data:`MAX_BODY` bytes."""
    async with client.stream("GET", url) as r:
        body = await _body(r, url)
        return httpx.Response(r.status_code, headers=r.headers, content=body, request=r.request)


def _limit(r: httpx.Response) -> float:
    """The seconds a whole answer (or a line of ``results.jsonl``) may take: the client's timeout
    (``--timeout``). httpx's own read timeout is per read: a server sending a byte a second
    never trips it, and held an audit for as long as it liked."""
    timeout = r.request.extensions.get("timeout", {}).get("read")
    return float(timeout) if timeout else 30.0


def _too_slow(url: str, limit: float, what: str = "the answer") -> AuditFailure:
    return AuditFailure("fetch", f"GET {url}: {what} took longer than {limit:g} s to arrive (--timeout)")


async def _body(r: httpx.Response, url: str) -> bytes:
    """``r``'s body, read as a stream; AuditFailure past :data:`MAX_BODY` bytes or, once its
    headers came, past the client's timeout (:func:`_limit`)."""
    out = bytearray()
    limit = _limit(r)
    end = anyio.current_time() + limit
    async for chunk in r.aiter_bytes():
        out += chunk
        if len(out) > MAX_BODY:
            raise AuditFailure("fetch", f"GET {url}: the answer is larger than {MAX_BODY:,} bytes")
        if anyio.current_time() > end:
            raise _too_slow(url, limit)
    return bytes(out)


async def _excerpt(r: httpx.Response) -> str:
    """The start of an error answer's body (never the whole of it, nor for longer than its timeout)."""
    out = bytearray()
    end = anyio.current_time() + _limit(r)
    async for chunk in r.aiter_bytes():
        out += chunk
        if len(out) >= 200 or anyio.current_time() > end:
            break
    return out[:200].decode(errors="replace").strip()


async def _lines(r: httpx.Response, url: str, digest: Any = None) -> AsyncIterator[str]:
    """``r``'s body line by line (UTF-8); AuditFailure on a line past :data:`MAX_BODY` bytes.
    ``digest`` (a hashlib object) is updated with every byte read."""
    rest = bytearray()
    limit = _limit(r)
    end = anyio.current_time() + limit
    async for chunk in r.aiter_bytes():
        if digest is not None:
            digest.update(chunk)
        rest += chunk
        if b"\n" in chunk:
            *lines, rest = rest.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace").removesuffix("\r")
            end = anyio.current_time() + limit  # each line in its own --timeout
        if len(rest) > MAX_BODY:
            raise AuditFailure("fetch", f"GET {url}: a line longer than {MAX_BODY:,} bytes")
        if anyio.current_time() > end:
            raise _too_slow(url, limit, "a line")
    if rest:
        yield rest.decode(errors="replace").removesuffix("\r")


class _BadJSON(ValueError):
    """What a hostile server may send as JSON and audit refuses to read (see :func:`loads`)."""


def _no_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _BadJSON(f"the key {k[:60]!r} is given twice (readers disagree on which counts)")
        out[k] = v
    return out


def loads(raw: bytes | str) -> Any:
    """JSON as audit reads it from an untrusted host: UTF-8, no key given twice in an object (Python
    keeps the last, other readers the first: the audit would pass what they read otherwise), not
    nested past what Python can parse (a RecursionError was a traceback). :class:`_BadJSON`
    (a ValueError) naming what is wrong."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=_no_twice)
    except _BadJSON:
        raise
    except UnicodeDecodeError:
        raise _BadJSON("not UTF-8") from None
    except RecursionError:
        raise _BadJSON("nested too deep") from None
    except ValueError as e:
        raise _BadJSON(f"not JSON ({str(e)[:80]})") from None


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise AuditFailure("fetch", f"{what} is not a list of base64 hashes")
    try:
        return [unb64(h, what) for h in value]
    except InvalidNote as e:
        raise AuditFailure("fetch", str(e)) from None


MAX_KEEP = 64 * 1024 * 1024
"""The largest ``--keep`` file audit reads (a checkpoint and some 100 bytes per remembered item)."""


def _load_keep(path: Path) -> dict[str, Any] | None:
    try:
        raw = read_small_file(path, MAX_KEEP)  # a pipe waited for ever, /dev/zero filled memory
    except FileNotFoundError:
        return None
    except (UnfitFile, OSError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise AuditFailure("keep", f"{path} cannot be read as a kept checkpoint: {why}") from None
    try:
        data = loads(raw)
    except _BadJSON as e:
        raise AuditFailure("keep", f"{path} cannot be read as a kept checkpoint: {e}") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("key"), str)
        or not isinstance(data.get("checkpoint"), str)
    ):
        raise AuditFailure("keep", f"{path} is not a kept checkpoint (expected JSON with key and checkpoint)")
    items = data.get("items", {})
    if not isinstance(items, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("seq"), int) and isinstance(v.get("leaf"), str)
        for v in items.values()
    ):
        raise AuditFailure("keep", f"{path}: its remembered items are not {{id: {{seq, leaf}}}}")
    return data


def _save_keep(path: Path, key: str, note: str, items: dict[str, dict[str, Any]]) -> None:
    # Whole or not at all, and durable (the file is the auditor's anchor: one emptied by a power
    # cut after an unsynced write, then thrown away, would trust the next checkpoint served on
    # first use); through a new file of our own making, not a name known beforehand.
    from rollwatch.integrity.checkpoint import write_file_atomically

    body = {"key": key, "checkpoint": note, "items": items}
    write_file_atomically(path, json.dumps(body, indent=1, sort_keys=True) + "\n")


async def audit(
    url: str,
    *,
    keep: Path | None = None,
    item: str | None = None,
    key: str | None = None,
    client: httpx.AsyncClient | None = None,
    http_timeout: float = 30.0,
    witnesses: tuple[str, ...] = (),
    quorum: int | None = None,
    max_cosignature_age: float = 86400.0,
    archive: bool = True,
    progress: Callable[[int], None] | None = None,
    export_wait: float = 600.0,
    waiting: Callable[[str], None] | None = None,
    max_export_age: float | None = None,
    bundle: bool = True,
) -> AuditReport:
    """Run every check against the service at ``url``; raise :class:`AuditFailure` at the first that fails.

    ``bundle``: ``item``'s proof bundle must be served and hold (its answer, verdict and public
    date); without, the item's inclusion alone is checked (a service older than the bundles).

    ``key`` pins the verifier key (a ``vkey`` string; ValueError if malformed).
    ``witnesses`` (cosignature vkeys): the checkpoint must carry ``quorum`` (default:
    all) of their cosignatures, none older than ``max_cosignature_age`` seconds.
    ``archive``: check every line of ``results.jsonl`` (step 6); ``progress`` is called
    with the number of lines read so far, after each line.
    ``max_export_age`` (seconds): a static export must say, under its signature, that it was
    made at most that long ago (an older export served whole in place of the current one
    passes every other check).

    A static export that fails while it serves :data:`EXPORT_MARK` is being written into (an
    honest export puts the open folder's new manifest in place before the new index and its
    signature): ``waiting`` is called with a line saying so, the mark is asked for about once a
    second until it is gone, and every check runs again from the start, at most
    :data:`EXPORT_RECHECKS` times and within ``export_wait`` seconds. Past those, or when the
    check after the export fails again, the failure stands, saying an export was in progress. A
    mark served by an attacker only delays the failure: the checks are the same.
    """
    from rollwatch.integrity.witness import CosignatureVerifier

    cosigners = [CosignatureVerifier.from_vkey(w) for w in witnesses]
    pinned = NoteVerifier.from_vkey(key) if key is not None else None
    kept = _load_keep(keep) if keep is not None else None
    ctx = (
        httpx.AsyncClient(
            timeout=http_timeout,
            follow_redirects=True,
            event_hooks={"response": [_same_origin(url)]},
        )
        if client is None
        else nullcontext(client)
    )
    async with ctx as c:
        http = _Client(c, base_url(url))
        http.bundles = bundle
        deadline = anyio.current_time() + export_wait
        note = ""  # what a failure says of an export written during the audit
        report: AuditReport | None = None
        failure: AuditFailure | None = None
        for attempt in range(EXPORT_RECHECKS + 1):
            report = None
            try:
                for moved in range(KEY_MOVES + 1):
                    try:
                        report = await _audit_once(
                            http,
                            keep,
                            item,
                            pinned,
                            kept,
                            cosigners,
                            quorum,
                            max_cosignature_age,
                            archive,
                            progress,
                            max_export_age,
                        )
                        break
                    except _KeyMoved as e:
                        if moved == KEY_MOVES:
                            raise AuditFailure(
                                e.failure.check,
                                f"{e.failure.message} (the service's key kept changing during the audit:"
                                f" checked {KEY_MOVES + 1} times)",
                            ) from None
                assert report is not None
                failure = report.failure
            except AuditFailure as e:
                failure = e
            if failure is None or http.public:
                break
            mark = http.url("/public/" + EXPORT_MARK)
            if attempt == EXPORT_RECHECKS or not await _served(c, mark):
                break
            if waiting is not None:
                waiting(
                    f"an export is being written into {http.base}/ ({EXPORT_MARK} is served):"
                    " waiting for it to finish"
                )
            if not await _export_finished(c, mark, deadline):
                note = (
                    f" (an export was being written into {http.base}/ and {EXPORT_MARK} was still"
                    f" served after waiting {export_wait:g} s: not checked again)"
                )
                break
            note = f" (checked again after an export into {http.base}/ finished: the failure stands)"
    if failure is not None and note:
        failure = AuditFailure(failure.check, failure.message + note)
    if report is None:
        assert failure is not None
        raise failure
    report.failure = failure
    return report


KEY_MOVES = 3
"""How many times an audit starts over when the service's key changed between its read of
``/public/key`` and a failure of the key or checkpoint checks (a rotation signed meanwhile)."""


class _KeyMoved(Exception):
    """The key or checkpoint check failed, and ``/public/key`` no longer serves the key read
    before it: the service rotated its key between the two reads (internal)."""

    def __init__(self, failure: AuditFailure) -> None:
        self.failure = failure


class _RedirectRefused(httpx.HTTPError):
    """A redirect away from the audited address (another host or port, another scheme)."""


def _same_origin(url: str) -> Callable[[httpx.Response], Any]:
    """A response hook refusing a redirect that leaves ``url``'s scheme, host and port (an
    ``http`` address may move to ``https`` on its host). Audit asks the host it was given: a
    redirect elsewhere (a host of the auditor's network, ``file://``) is not followed."""
    base = httpx.URL(url)

    def origin(u: httpx.URL) -> tuple[str, str, int | None]:
        return u.scheme, u.host, u.port or {"http": 80, "https": 443}.get(u.scheme)

    allowed = {origin(base)}
    if base.scheme == "http":
        allowed |= {("https", base.host, base.port or 443), ("https", base.host, 443)}

    async def hook(r: httpx.Response) -> None:
        if not r.has_redirect_location:
            return
        location = r.headers["location"]
        try:
            target = r.request.url.join(location)
        except (httpx.InvalidURL, ValueError):
            target = None
        if target is None or origin(target) not in allowed:
            raise _RedirectRefused(
                f"redirected to {location[:200]!r}, away from {origin(base)[0]}://{base.netloc.decode()}:"
                " not followed (audit that address itself if you trust it)"
            )

    return hook


EXPORT_MARK = ".export-in-progress"
"""The file ``publish export`` keeps at the root of its folder from its start until the new index
and its signature are written (:mod:`rollwatch.publication.releases`)."""

EXPORT_RECHECKS = 3
"""How many times audit checks a static export again after an export into it finished."""


async def _served(client: httpx.AsyncClient, url: str) -> bool:
    """Whether a GET of ``url`` answers 200 (its body not read; a failed request: no)."""
    try:
        async with client.stream("GET", url) as r:
            return r.status_code == 200
    except httpx.HTTPError:
        return False


async def _export_finished(client: httpx.AsyncClient, mark: str, deadline: float) -> bool:
    """Whether the export's ``mark`` is gone before ``deadline`` (asked for about once a second)."""
    while await _served(client, mark):
        left = deadline - anyio.current_time()
        if left <= 0:
            return False
        await anyio.sleep(min(1.0, left))
    return True


async def _audit_once(
    http: _Client,
    keep: Path | None,
    item: str | None,
    pinned: NoteVerifier | None,
    kept: dict[str, Any] | None,
    cosigners: list[Any],
    quorum: int | None,
    max_cosignature_age: float,
    archive: bool,
    progress: Callable[[int], None] | None,
    max_export_age: float | None = None,
) -> AuditReport:
    """Every check once (see :func:`audit`)."""
    # 0. the service's own verdict on its log
    await _check_health(http.client, http.base)
    await http.find_export()

    # 1. key
    served = (await http.get("/public/key")).text.strip()
    try:
        return await _audit_from_key(
            http,
            served,
            keep,
            item,
            pinned,
            kept,
            cosigners,
            quorum,
            max_cosignature_age,
            archive,
            progress,
            max_export_age,
        )
    except AuditFailure as e:
        # Read one after the other, the key (and its rotations) and the checkpoint can straddle a
        # rotation the service signed meanwhile: its new key's first checkpoint served after the
        # old key was read. A key that changed since is read again from the start, a few times.
        if e.check not in ("key", "checkpoint"):
            raise
        try:
            now = (await http.get("/public/key")).text.strip()
        except AuditFailure:
            raise e from None
        if now != served:
            raise _KeyMoved(e) from None
        raise


async def _audit_from_key(
    http: _Client,
    served: str,
    keep: Path | None,
    item: str | None,
    pinned: NoteVerifier | None,
    kept: dict[str, Any] | None,
    cosigners: list[Any],
    quorum: int | None,
    max_cosignature_age: float,
    archive: bool,
    progress: Callable[[int], None] | None,
    max_export_age: float | None,
) -> AuditReport:
    """:func:`_audit_once` from its step 1 on, given the key ``/public/key`` served."""
    lines: list[str] = []
    if pinned is not None:
        verifier = pinned
        source = "given with --key"
    elif kept is not None:
        try:
            verifier = NoteVerifier.from_vkey(kept["key"])
        except ValueError as e:
            raise AuditFailure("keep", f"{keep}: {e}") from None
        source = f"kept in {keep}"
    else:
        try:
            verifier = NoteVerifier.from_vkey(served)
        except ValueError as e:
            raise AuditFailure("key", f"/public/key: {e}") from None
        source = "fetched from /public/key (trust on first use: compare it out of band, then pin it with --key or --keep)"
    if kept is not None and kept["key"] != verifier.vkey:
        raise AuditFailure("key", f"the key {verifier.vkey} is not the one kept in {keep} ({kept['key']})")
    lines.append(f"key: {verifier.vkey} ({source})")
    pinned_verifier = verifier
    links: list[dict[str, Any]] = []
    if served != verifier.vkey:
        # 1b. a rotation: each link signed by the key before it (and the new one).
        verifier, links = await _follow_rotations(http, verifier, served)
        for link in links:
            lines.append(
                f"key: rotated at seq {link['seq']} to {link['new_key']} (signed by the old key): ok"
            )

    # 2. checkpoint
    note = (await http.get("/public/checkpoint")).text
    try:
        cp = verifier.open_checkpoint(note)
    except InvalidNote as e:
        raise AuditFailure("checkpoint", f"/public/checkpoint: {e}") from None
    lines.append(f"checkpoint: {cp.origin} size {cp.size} root {b64(cp.root)}: signature ok")
    if cosigners:
        from rollwatch.integrity.witnessing import check_witnessed

        need = len(cosigners) if quorum is None else quorum
        try:
            lines += check_witnessed(note, cosigners, need, max_cosignature_age)
        except ValueError as e:
            raise AuditFailure("witness", f"/public/checkpoint: {e}") from None
        lines.append(f"witnessed: {need} of {len(cosigners)} witnesses needed: ok")
    for link in links:
        await _check_rotation_logged(http, link, cp)

    # 3. consistency with the kept checkpoint
    if kept is not None:
        try:
            old = pinned_verifier.open_checkpoint(kept["checkpoint"])
        except InvalidNote as e:
            raise AuditFailure("keep", f"the checkpoint kept in {keep} does not verify: {e}") from None
        await _check_consistency(http, old, cp)
        lines.append(f"consistency: kept size {old.size} -> size {cp.size}: ok")

    # 4. a released item's inclusion
    remembered: dict[str, dict[str, Any]] = dict(kept.get("items", {})) if kept is not None else {}
    if item is not None:
        seq, leaf = await _check_item(http, item, cp)
        lines.append(f"inclusion: item {item} (event {seq}) is in the tree of size {cp.size}: ok")
        if http.bundles:
            lines.append(await _check_bundle(http, item, verifier, cp))
        else:
            lines.append(
                f"bundle: item {item}: not asked for (--inclusion-only): its answer, verdict and public"
                " date are NOT checked"
            )
        old_item = remembered.get(item)
        if old_item is not None and (old_item["seq"], old_item["leaf"]) != (seq, b64(leaf)):
            raise AuditFailure(
                "remembered",
                f"item {item} was event {old_item['seq']} with leaf {old_item['leaf']} when audited before; "
                f"now it is event {seq} with leaf {b64(leaf)}: the released result was rewritten",
            )
        remembered[item] = {"seq": seq, "leaf": b64(leaf)}

    # 5. every item audited before is still in the signed tree, unchanged
    if kept is not None:
        for rid, rec in sorted(remembered.items()):
            await _check_remembered(http, rid, rec["seq"], rec["leaf"], cp)
        if remembered:
            lines.append(f"remembered: {len(remembered)} released items still in the signed tree: ok")

    # 6. the whole archive: every line's events in the signed tree, saying what the line says
    failure = None
    if archive:
        # The index is signed by the key in force, the one that signed the served checkpoint:
        # a key rotated away from (leaked, say) must not vouch for an index any more.
        keys = [verifier]
        found, failure = await _check_archive(http, keys, verifier, cp, progress, max_export_age)
        lines += found
    elif max_export_age is not None and not http.public:
        statement = (await _signed_index(http, [verifier], cp))[1]
        lines.append(_export_age(statement, max_export_age))

    if max_export_age is not None and http.public:
        lines.append(
            "max-export-age: a live service, not a static export: not applicable (a live log's"
            " freshness is its witnesses' cosignatures: --witness, --max-cosignature-age)"
        )
    if failure is not None:
        return AuditReport(checkpoint=cp, key=verifier.vkey, lines=lines, failure=failure)
    if keep is not None:
        _save_keep(keep, verifier.vkey, note, remembered)
        lines.append(f"kept: checkpoint of size {cp.size} in {keep}")
    return AuditReport(checkpoint=cp, key=verifier.vkey, lines=lines)


async def _follow_rotations(
    http: _Client, start: NoteVerifier, served: str
) -> tuple[NoteVerifier, list[dict[str, Any]]]:
    """Follow ``/public/key/rotations`` from the pinned key to the served one; the links used."""
    body = await http.json("/public/key/rotations")
    rotations = body.get("rotations") if isinstance(body, dict) else None
    if not isinstance(rotations, list):
        raise AuditFailure("key", "/public/key/rotations has no rotations list")
    current, used = start, []
    for link in rotations:
        if (
            not isinstance(link, dict)
            or not isinstance(link.get("note"), str)
            or not isinstance(link.get("seq"), int)
        ):
            raise AuditFailure("key", "/public/key/rotations holds a malformed link")
        if link.get("old_key") != current.vkey:
            continue
        try:
            rotation = open_rotation(link["note"])
        except InvalidNote as e:
            raise AuditFailure("key", f"the key rotation at seq {link['seq']} does not verify: {e}") from None
        if rotation.old.vkey != current.vkey or rotation.new.vkey != link.get("new_key"):
            raise AuditFailure(
                "key", f"the key rotation at seq {link['seq']} names other keys than it claims"
            )
        current = rotation.new
        used.append(link)
    if current.vkey != served:
        raise AuditFailure(
            "key",
            f"the server's key is now {served}, not the pinned {start.vkey}, and no chain of key rotations "
            "signed by the pinned key leads to it",
        )
    return current, used


async def _check_rotation_logged(http: _Client, link: dict[str, Any], cp: Checkpoint) -> None:
    """A rotation the audit followed is an event of the signed log (no split view of keys)."""
    seq = link["seq"]
    canonical = link.get("canonical")
    try:
        event = loads(canonical) if isinstance(canonical, str) else None
    except ValueError:
        event = None
    if (
        not isinstance(canonical, str)
        or not isinstance(event, dict)
        or event.get("seq") != seq
        or event.get("type") != "CheckpointKeyRotated"
        or not isinstance(event.get("data"), dict)
        or event["data"].get("note") != link["note"]
    ):
        raise AuditFailure("key", f"the key rotation at seq {seq} does not carry its own event")
    if seq > cp.size:
        raise AuditFailure(
            "key", f"the key rotation at seq {seq} is not in the signed tree of size {cp.size}"
        )
    leaf = leaf_hash(canonical.encode())
    proof = await http.proof(f"/public/proof/inclusion?seq={seq}&size={cp.size}")
    path = _hashes(proof.get("path") if isinstance(proof, dict) else None, "the inclusion proof")
    if not verify_inclusion(seq - 1, cp.size, leaf, path, cp.root):
        raise AuditFailure(
            "key",
            f"the key rotation at seq {seq} is not in the signed tree of size {cp.size}: it was not logged",
        )


async def _check_consistency(http: _Client, old: Checkpoint, new: Checkpoint) -> None:
    if new.origin != old.origin:
        raise AuditFailure(
            "consistency", f"the checkpoint is for log {new.origin!r}, the kept one for {old.origin!r}"
        )
    if new.size < old.size:
        raise AuditFailure(
            "consistency",
            f"the server's checkpoint (size {new.size}) is older than the kept one (size {old.size}): "
            "the log was truncated or rolled back",
        )
    if new.size == old.size:
        if new.root != old.root:
            raise AuditFailure(
                "consistency",
                f"two different roots signed for size {new.size} ({b64(old.root)} kept, {b64(new.root)} now): "
                "the log was rewritten",
            )
        return
    proof = await http.proof(f"/public/proof/consistency?from={old.size}&to={new.size}")
    path = _hashes(proof.get("path") if isinstance(proof, dict) else None, "the consistency proof")
    if not verify_consistency(old.size, new.size, old.root, new.root, path):
        raise AuditFailure(
            "consistency",
            f"the checkpoint of size {new.size} (root {b64(new.root)}) is not consistent with the kept checkpoint "
            f"of size {old.size} (root {b64(old.root)}): the log's first {old.size} events were rewritten",
        )


def _find_item(feed: Any, item: str) -> dict[str, Any]:
    items = feed.get("items") if isinstance(feed, dict) else None
    if not isinstance(items, list):
        raise AuditFailure("inclusion", "/public/feed.json has no items list")
    for it in items:
        if not isinstance(it, dict):
            continue
        meta = it.get("_rollwatch")
        if it.get("id") == item or (isinstance(meta, dict) and meta.get("rollout_id") == item):
            if not isinstance(meta, dict):
                raise AuditFailure("inclusion", f"item {item} has no _rollwatch fields")
            return meta
    raise AuditFailure("inclusion", f"no item with rollout id {item} in /public/feed.json")


async def _check_health(client: httpx.AsyncClient, base: str) -> None:
    """Fail when the service itself reports its log tampered with (/healthz 503 ``tampered``;
    a ``degraded`` one, a schedule that cannot run or a witness's refusal, says nothing of it)."""
    try:
        r = await _fetch(client, base + "/healthz")
    except httpx.HTTPError as e:
        raise AuditFailure("fetch", f"GET {base}/healthz: {type(e).__name__}: {e}") from None
    if r.status_code != 503:
        return
    try:
        body = loads(r.content)
    except ValueError:
        body = {}
    if isinstance(body, dict) and body.get("status") == "degraded":
        return
    reasons = body.get("reasons") if isinstance(body, dict) else None
    said = "; ".join(str(x) for x in reasons) if isinstance(reasons, list) else r.text[:300].strip()
    raise AuditFailure("health", f"the service reports its log is not what it signed: {said}")


async def _check_remembered(http: _Client, item: str, seq: int, leaf_b64: str, cp: Checkpoint) -> None:
    """The leaf remembered for ``item`` is still event ``seq`` of the signed tree."""
    if seq > cp.size:
        raise AuditFailure(
            "remembered", f"item {item} was event {seq}, but the signed tree now holds only {cp.size} events"
        )
    leaf = _hashes([leaf_b64], "a remembered leaf hash")[0]
    proof = await http.proof(f"/public/proof/inclusion?seq={seq}&size={cp.size}")
    served = proof.get("leaf_hash") if isinstance(proof, dict) else None
    # The signed root still covers the old leaf (its siblings did not change): what
    # shows a rewrite is the leaf the service holds now.
    if isinstance(served, str) and served != leaf_b64:
        raise AuditFailure(
            "remembered",
            f"item {item} (event {seq}), released and audited before with leaf {leaf_b64}, now has leaf "
            f"{served} in the service's tree: the released result was rewritten or withdrawn",
        )
    path = _hashes(proof.get("path") if isinstance(proof, dict) else None, "the inclusion proof")
    if not verify_inclusion(seq - 1, cp.size, leaf, path, cp.root):
        raise AuditFailure(
            "remembered",
            f"item {item} (event {seq}), released and audited before, is no longer in the signed tree of "
            f"size {cp.size} as it was: the released result was rewritten or withdrawn",
        )


async def _check_item(http: _Client, item: str, cp: Checkpoint) -> tuple[int, bytes]:
    meta = _find_item(await http.json("/public/feed.json"), item)
    index = meta.get("leaf_index")
    if not isinstance(index, int) or index < 0:
        raise AuditFailure("inclusion", f"item {item} has no leaf_index")
    canonical = meta.get("canonical")
    if isinstance(canonical, str):
        leaf = leaf_hash(canonical.encode())
        try:
            event = loads(canonical)
        except ValueError:
            raise AuditFailure("inclusion", f"item {item}: its canonical event is not JSON") from None
        if not isinstance(event, dict) or event.get("seq") != index + 1:
            raise AuditFailure(
                "inclusion", f"item {item}: its event is not event {index + 1} (leaf index {index})"
            )
        data = event.get("data")
        if not isinstance(data, dict) or data.get("rollout_id", item) != item:
            raise AuditFailure("inclusion", f"item {item}: its event is about another rollout")
        if "leaf_hash" in meta and meta["leaf_hash"] != b64(leaf):
            raise AuditFailure("inclusion", f"item {item}: its leaf_hash is not the hash of its event")
    elif isinstance(meta.get("leaf_hash"), str):
        leaf = _hashes([meta["leaf_hash"]], "the item's leaf_hash")[0]
    else:
        raise AuditFailure(
            "inclusion", f"item {item} carries neither its event (canonical) nor its leaf_hash"
        )
    if index >= cp.size:
        raise AuditFailure(
            "inclusion",
            f"item {item} is event {index + 1}, after the checkpoint (size {cp.size}): audit again after the next checkpoint",
        )

    inc = meta.get("inclusion")
    size = inc.get("size") if isinstance(inc, dict) else None
    if isinstance(inc, dict) and isinstance(size, int) and index < size <= cp.size:
        path = _hashes(inc.get("path"), "the item's inclusion proof")
        try:
            root = root_from_inclusion(index, size, leaf, path)
        except InvalidProof as e:
            raise AuditFailure("inclusion", f"item {item}: its inclusion proof is malformed: {e}") from None
        if size == cp.size:
            if root != cp.root:
                raise AuditFailure(
                    "inclusion", f"item {item}: its inclusion proof does not lead to the signed root"
                )
            return index + 1, leaf
        # The proof is for an earlier tree: that tree must be a prefix of the signed one.
        proof = await http.proof(f"/public/proof/consistency?from={size}&to={cp.size}")
        cpath = _hashes(proof.get("path") if isinstance(proof, dict) else None, "the consistency proof")
        if not verify_consistency(size, cp.size, root, cp.root, cpath):
            raise AuditFailure(
                "inclusion",
                f"item {item}: the tree of size {size} its proof leads to is not a prefix of the signed tree",
            )
        return index + 1, leaf
    proof = await http.proof(f"/public/proof/inclusion?seq={index + 1}&size={cp.size}")
    path = _hashes(proof.get("path") if isinstance(proof, dict) else None, "the inclusion proof")
    if not verify_inclusion(index, cp.size, leaf, path, cp.root):
        raise AuditFailure(
            "inclusion",
            f"item {item} (event {index + 1}) is not in the signed tree of size {cp.size}: "
            "its content or the log was changed",
        )
    return index + 1, leaf


def _no_bundle(item: str, how: str) -> AuditFailure:
    """The failure of an item whose proof bundle the service does not serve. Its inclusion alone
    proves one event (the feed's item may name any leaf): the answer, the verdict and the public
    date would stand on the host's word. Said "not checked" with exit 0 before session 36, which a
    hostile host or mirror could have by dropping the bundle of a result it rewrote."""
    return AuditFailure(
        "bundle",
        f"item {item}: the service {how} (/public/rollouts/{item}.json with its proof bundle, which"
        " rollwatch serves with every released result): its answer, verdict and public date are not"
        " proven",
    )


async def _check_bundle(http: _Client, item: str, verifier: NoteVerifier, cp: Checkpoint) -> str:
    """The item's proof bundle (``/public/rollouts/{id}.json``): every event of its claim, against a
    checkpoint consistent with the verified one."""
    from urllib.parse import quote

    from rollwatch.integrity.bundle import check_bundle

    path = http.url(f"/public/rollouts/{quote(item, safe='')}.json")
    try:
        r = await _fetch(http.client, path)
    except httpx.HTTPError as e:
        raise AuditFailure("fetch", f"GET {path}: {type(e).__name__}: {e}") from None
    if r.status_code == 404:
        raise _no_bundle(item, "answers 404 for it")
    if r.status_code != 200:
        raise AuditFailure("fetch", f"GET {path} answered {r.status_code}: {r.text[:200].strip()}")
    try:
        record = loads(r.content)
    except _BadJSON as e:
        raise AuditFailure("fetch", f"GET {path} did not return JSON: {e}") from None
    bundle = record.get("proof") if isinstance(record, dict) else None
    if bundle is None:
        raise _no_bundle(item, "serves it without one")
    pending = bundle.get("pending") if isinstance(bundle, dict) else None
    if pending and http.public:
        # A live service releases between checkpoints: its bundle is checked at the next one.
        # Only events after the verified checkpoint may wait: before, any ``pending`` skipped the
        # check (exit 0), so a hostile server could state any result of any rollout with a line
        # ``"pending": [1]``. A static export's bundle never waits (check_bundle refuses it).
        if not isinstance(pending, list) or not all(type(s) is int and s > cp.size for s in pending):
            raise AuditFailure(
                "bundle",
                f"item {item}: its proof leaves events {pending!r} unproven, but the signed checkpoint"
                f" (size {cp.size}) covers them",
            )
        return f"bundle: item {item}: events {pending} await the next checkpoint: not checked yet"
    try:
        bundle_cp, events = check_bundle(bundle, item, verifier, record)
    except ValueError as e:
        raise AuditFailure("bundle", f"item {item}: {e}") from None
    if bundle_cp.size > cp.size:
        raise AuditFailure(
            "bundle",
            f"item {item}: its checkpoint (size {bundle_cp.size}) is newer than the log's ({cp.size})",
        )
    await _check_consistency(http, bundle_cp, cp)
    return f"bundle: item {item}: {events} events (request, answer, score, decision, release) in the tree of size {bundle_cp.size}: ok"


class _Archive:
    """The check of every line of ``/public/results.jsonl`` against the verified checkpoint ``cp``.

    A line is one released result: its ``proof`` bundle (every event of its claim, against
    a signed checkpoint) and/or its ``_rollwatch`` fields (its verdict event and that
    event's inclusion proof). Each event must hash to a leaf under a root that is ``cp``'s
    or one it is consistent with, and every field the line states must be what the events
    say. Proofs for earlier trees (an older release folder's lines) are linked to ``cp`` by
    one consistency proof per distinct tree, so a long archive costs one proof a checkpoint.
    """

    def __init__(self, http: _Client, verifier: NoteVerifier, cp: Checkpoint) -> None:
        self.file = "results.jsonl"
        """The file whose lines are being checked (named in every failure)."""
        self.http = http
        self.verifier = verifier
        self.cp = cp
        self.linked: set[tuple[int, bytes]] = {(cp.size, cp.root)}
        self.notes: dict[str, Checkpoint] = {}
        self.seen: dict[str, str] = {}
        self.digests: dict[str, bytes] = {}
        """Each line's SHA-256 by rollout id (kept in a signed export, to match the folders' lines)."""
        self.keep_digests = False
        self.proven = False
        """The file's signed manifest says it was exported with proofs: a line without is stripped."""
        self.live = bool(getattr(http, "public", ""))
        """A live service's file (its public routes): every line carries its bundle."""
        self.checked = 0
        self.unchecked = 0
        self.awaiting = 0
        """A live service's results released after the verified checkpoint (checked at the next)."""

    async def _link(self, size: int, root: bytes, what: str) -> None:
        """The tree (``size``, ``root``) is a prefix of the verified one."""
        if (size, root) in self.linked:
            return
        if size >= self.cp.size:
            raise AuditFailure(
                "archive",
                f"{what}: its proof does not lead to the signed root of size {self.cp.size}"
                " (its bytes or its proof were changed)",
            )
        proof = await self.http.proof(f"/public/proof/consistency?from={size}&to={self.cp.size}")
        path = _hashes(proof.get("path") if isinstance(proof, dict) else None, "the consistency proof")
        if not verify_consistency(size, self.cp.size, root, self.cp.root, path):
            raise AuditFailure(
                "archive",
                f"{what}: the tree of size {size} its proof leads to is not a prefix of the signed tree "
                f"of size {self.cp.size}: the line or its proof was changed",
            )
        self.linked.add((size, root))

    async def line(self, n: int, text: str) -> None:
        """Check line ``n`` (1-based) of :attr:`file`; AuditFailure naming it and what differs."""
        from rollwatch.integrity.bundle import check_bundle

        try:
            record = loads(text)
        except _BadJSON as e:
            raise AuditFailure("archive", f"{self.file} line {n} is not JSON: {e}") from None
        rid = record.get("rollout_id") if isinstance(record, dict) else None
        if not isinstance(rid, str):
            raise AuditFailure("archive", f"{self.file} line {n} is not a result (no rollout_id)")
        what = f"{self.file} line {n} (rollout {rid})"
        if rid in self.seen:
            raise AuditFailure(
                "archive", f"{what}: the same result is on {self.seen[rid]} too (a line was duplicated)"
            )
        self.seen[rid] = f"{self.file} line {n}"
        if self.keep_digests:
            self.digests[rid] = hashlib.sha256(text.encode()).digest()
        bundle = record.get("proof")
        meta = record.get("_rollwatch")
        if self._awaits_checkpoint(what, bundle):
            self.awaiting += 1
            return
        if bundle is None and self.live:
            # A live service makes each line with its proof bundle (or says it awaits the next
            # checkpoint): one without is a line the host rewrote, its answer, verdict and date
            # on its word alone. Counted "NOT checked" before session 36, exit 0.
            raise AuditFailure(
                "archive",
                f"{what}: carries no proof bundle, which a live service serves with every line:"
                " its answer, verdict and public date are not proven",
            )
        if bundle is None and meta is None:
            if self.proven:
                raise AuditFailure(
                    "archive",
                    f"{what}: carries no proof, but its signed manifest says its chunk was exported"
                    " with proofs (they were stripped)",
                )
            self.unchecked += 1
            return
        if meta is not None:
            await self._scored(what, record, meta)
        if bundle is None:
            # Its verdict alone (``_rollwatch``) proves the pass and its score, not the rest the
            # line states: its answer, public date, release. Before, such a line counted as
            # checked "as its line says": a live host (whose own lines always carry their
            # bundle) could drop a line's bundle and state another answer or an earlier date.
            if self.proven:
                raise AuditFailure(
                    "archive",
                    f"{what}: carries no proof bundle, but its signed manifest says its chunk was"
                    " exported with proofs (it was stripped)",
                )
            self.unchecked += 1
            return
        try:
            bcp, _ = check_bundle(bundle, rid, self.verifier, record)
        except ValueError as e:
            raise AuditFailure("archive", f"{what}: {e}") from None
        await self._link(bcp.size, bcp.root, what)
        self.checked += 1

    def _awaits_checkpoint(self, what: str, bundle: Any) -> bool:
        """Whether the line is a live service's result released after the verified checkpoint:
        its bundle lists as ``pending`` the events the next checkpoint covers (an honest log
        releases between checkpoints; this is no failure). Each must be after the verified
        checkpoint; one it covers could have been proven, and fails. A static export files only
        results its checkpoint covers: there, ``pending`` fails as before."""
        pending = bundle.get("pending") if isinstance(bundle, dict) else None
        if not pending or not self.http.public:
            return False
        if not isinstance(pending, list) or not all(type(s) is int and s > self.cp.size for s in pending):
            raise AuditFailure(
                "archive",
                f"{what}: its proof leaves events {pending!r} unproven, but the signed checkpoint"
                f" (size {self.cp.size}) covers them",
            )
        return True

    async def _scored(self, what: str, record: dict[str, Any], meta: Any) -> None:
        """The line's ``_rollwatch``: its verdict event is in the signed tree and says what the line says."""
        canonical = meta.get("canonical") if isinstance(meta, dict) else None
        inc = meta.get("inclusion") if isinstance(meta, dict) else None
        try:
            event = loads(canonical) if isinstance(canonical, str) else None
        except ValueError:
            event = None
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(event, dict) or not isinstance(data, dict) or not isinstance(inc, dict):
            raise AuditFailure("archive", f"{what}: its _rollwatch does not carry its event and proof")
        seq, size = event.get("seq"), inc.get("size")
        if not isinstance(seq, int) or not isinstance(size, int) or not 0 < seq <= size:
            raise AuditFailure("archive", f"{what}: its _rollwatch event has no seq within its proof's tree")
        leaf = leaf_hash(canonical.encode())  # type: ignore[union-attr]
        if meta.get("leaf_index", seq - 1) != seq - 1 or meta.get("leaf_hash", b64(leaf)) != b64(leaf):
            raise AuditFailure("archive", f"{what}: its _rollwatch leaf is not its event's (seq {seq})")
        try:
            root = root_from_inclusion(seq - 1, size, leaf, _hashes(inc.get("path"), "an inclusion proof"))
        except InvalidProof as e:
            raise AuditFailure("archive", f"{what}: its inclusion proof is malformed: {e}") from None
        await self._link(size, root, f"{what}: event {seq}")
        # The event is the log's: now every field the line states about it must be the event's.
        claims: list[tuple[str, Any]] = [
            ("rollout_id", data.get("rollout_id")),
            ("passed", data.get("passed")),
            ("scored_at", event.get("at")),
            # A superseded mark leaves the score the first pass's (the read models' rule): before,
            # a line marked superseded was not held to its score, and could state any.
            ("score", data.get("score")),
        ]
        if event.get("type") not in ("RolloutScored", "RolloutRescored"):
            raise AuditFailure("archive", f"{what}: its _rollwatch event {seq} is not a verdict")
        for k, logged in claims:
            if k in record and record[k] != logged:
                raise AuditFailure(
                    "archive",
                    f"{what}: its {k} is {record[k]!r}, but its logged verdict (event {seq}) says {logged!r}",
                )


async def _check_archive(
    http: _Client,
    keys: list[NoteVerifier],
    verifier: NoteVerifier,
    cp: Checkpoint,
    progress: Callable[[int], None] | None,
    max_export_age: float | None = None,
) -> tuple[list[str], AuditFailure | None]:
    """Every line of ``/public/results.jsonl`` and, in a static export, of every release folder's
    chunks (see :class:`_Archive`); the report's lines, and the failure of an unsigned export.

    A static export's ``releases.json.sig`` (signed by one of ``keys``: the key in force, which
    signed the served checkpoint; never a retired one) names the served checkpoint and the
    index's SHA-256; the index names each folder's manifest by its SHA-256, each manifest its
    chunks by theirs. Then a line, chunk or
    folder deleted, a manifest or the index edited, and a proof stripped all fail, and
    ``results.jsonl`` must hold exactly the folders' lines. An export without the signature (made
    before exports were signed, or with it removed: audit cannot tell which) has every line
    checked as before, and fails as unsigned: passing it would let anyone who holds the host
    remove the signature to hide a deletion."""
    check = _Archive(http, verifier, cp)
    read = [0]  # lines read, for progress
    index = None
    age = None
    if not http.public:
        index = await _signed_index(http, keys, cp)
        check.keep_digests = index[1] is not None
        if index[1] is not None or max_export_age is not None:
            age = _export_age(index[1], max_export_age)
    top = await _check_lines(http, check, "/public/results.jsonl", "results.jsonl", progress, read)
    if top is None:
        return ["archive: the service serves no results.jsonl: not checked"], None
    out = [f"archive: {check.checked} results of results.jsonl in the signed tree, as their lines say: ok"]
    if check.awaiting:
        out.append(
            f"archive: {check.awaiting} results released after the checkpoint of size {cp.size}"
            " await the next checkpoint: not checked yet"
        )
    unchecked = check.unchecked
    failure = None
    if index is not None:
        # A static export: each release folder's chunks hold the same results (a closed folder's
        # bytes never change, and mirrors copy them): every result filed once, with its proofs.
        body, statement = index
        signed = statement is not None
        folders = _Archive(http, verifier, cp)
        folders.linked = check.linked
        folders.keep_digests = signed
        chunks = await _chunks(http, body, signed)
        for chunk, sha256, proven in chunks:
            folders.proven = signed and proven
            await _check_lines(http, folders, "/public/" + chunk, chunk, progress, read, sha256)
        unchecked += folders.unchecked
        out.append(
            f"archive: {folders.checked} results of the release folders' chunks in the signed tree,"
            " as their lines say: ok"
        )
        if signed:
            _same_lines(check, folders)
            await _check_superseded(http, body)
            out.append(
                f"archive: releases.json signed for the checkpoint of size {cp.size}: its"
                f" {len({c.split('/')[1] for c, _, _ in chunks})} release folders, {len(chunks)} chunks"
                f" and {len(folders.seen)} results all there, unedited, and results.jsonl holds them all: ok"
            )
            if age is not None:
                out.append(age)
        else:
            failure = AuditFailure(
                "archive",
                "releases.json is not signed (no releases.json.sig: an export by an older rollwatch, or"
                " its signature removed): each line shown was checked, but not that none is missing;"
                " export again with this rollwatch (it signs the index with the log's key)",
            )
    if unchecked:
        out.append(
            f"archive: {unchecked} lines carry no proof bundle (an export made without the tree, or"
            " before bundles; at most their verdict checked): NOT checked"
        )
    return out, failure


async def _signed_index(
    http: _Client, keys: list[NoteVerifier], cp: Checkpoint
) -> tuple[dict[str, Any], ReleaseStatement | None]:
    """A static export's ``releases.json`` and its signed statement (``releases.json.sig``,
    checked: by one of ``keys``, for the checkpoint ``cp``, over these very bytes), None when
    it is not signed."""
    raw = (await http.get("/public/releases.json")).content
    url = http.url("/public/releases.json.sig")
    try:
        r = await _fetch(http.client, url)
    except httpx.HTTPError as e:
        raise AuditFailure("fetch", f"GET {url}: {type(e).__name__}: {e}") from None
    try:
        index = loads(raw)
    except _BadJSON as e:
        raise AuditFailure("archive", f"releases.json is not JSON: {e}") from None
    if not isinstance(index, dict):
        raise AuditFailure("archive", "releases.json is not a release index")
    if r.status_code == 404:
        return index, None
    if r.status_code != 200:
        raise AuditFailure("fetch", f"GET {url} answered {r.status_code}: {r.text[:200].strip()}")
    from rollwatch.integrity.checkpoint import parse_release_statement

    note = r.content.decode(errors="replace")
    error: InvalidNote | None = None
    for v in keys:
        try:
            statement = parse_release_statement(v.open(note))
            signed_cp, sha256 = statement.checkpoint, statement.index_sha256
            break
        except InvalidNote as e:
            error = error if error is not None and "not signed by" in str(e) else e
    else:
        raise AuditFailure("archive", f"releases.json.sig: {error}")
    if (signed_cp.origin, signed_cp.size, signed_cp.root) != (cp.origin, cp.size, cp.root):
        raise AuditFailure(
            "archive",
            f"releases.json.sig is for the checkpoint of size {signed_cp.size} of {signed_cp.origin!r},"
            f" not the served one (size {cp.size} of {cp.origin!r}): an index of another export",
        )
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise AuditFailure(
            "archive",
            "releases.json is not the index releases.json.sig signs (edited since the export:"
            " a release folder dropped or its manifest swapped)",
        )
    return index, statement


def _export_age(statement: ReleaseStatement | None, max_age: float | None) -> str:
    """The line saying when a static export was made, as its signed statement says; an
    AuditFailure when that is longer ago than ``max_age`` seconds (None: not checked), or when
    the export does not say (not signed, or signed before exports said their time)."""
    from datetime import UTC, datetime

    if statement is None or statement.exported is None:
        why = "it is not signed" if statement is None else "it was signed before exports said when"
        if max_age is None:
            return f"archive: the export does not say when it was made ({why})"
        raise AuditFailure(
            "archive",
            f"--max-export-age: the export does not say when it was made ({why}): an older export"
            " served whole cannot be told from the current one; export again with this rollwatch",
        )
    made = statement.exported
    age = (datetime.now(UTC) - made).total_seconds()
    when = f"exported {made:%Y-%m-%dT%H:%M:%SZ}, {_ago(age)} ago, as its signature says"
    if max_age is not None and age > max_age:
        raise AuditFailure(
            "archive",
            f"{when}: older than --max-export-age {_ago(max_age)} (an older export served in place"
            " of the current one, or the exporter has stopped exporting)",
        )
    return f"archive: {when}" + (f" (at most {_ago(max_age)}): ok" if max_age is not None else "")


def _ago(seconds: float) -> str:
    """A duration in the largest whole unit that fits: 3d, 5h, 12m, 40s."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


async def _check_superseded(http: _Client, index: dict[str, Any]) -> None:
    """``superseded.jsonl`` is the one the signed index names (its SHA-256): a mark removed
    would show a re-scored pass as a pass."""
    want = index.get("superseded_sha256")
    if want is None:
        raise AuditFailure(
            "archive",
            "the signed releases.json does not name superseded.jsonl's SHA-256 (an export by an older"
            " rollwatch): export again with this rollwatch",
        )
    raw = (await http.get("/public/superseded.jsonl")).content
    if hashlib.sha256(raw).hexdigest() != want:
        raise AuditFailure(
            "archive",
            "superseded.jsonl is not the one the signed releases.json names (a superseded mark removed or edited)",
        )


def _same_lines(top: _Archive, folders: _Archive) -> None:
    """``results.jsonl`` holds exactly the release folders' lines (a signed export's)."""
    for rid, digest in top.digests.items():
        if rid not in folders.digests:
            raise AuditFailure(
                "archive", f"{top.seen[rid]} (rollout {rid}): no release folder of the signed index holds it"
            )
        if folders.digests[rid] != digest:
            raise AuditFailure(
                "archive",
                f"{top.seen[rid]} (rollout {rid}): not the line {folders.seen[rid]} holds"
                " (edited, or its proofs stripped)",
            )
    for rid in folders.digests.keys() - top.digests.keys():
        raise AuditFailure(
            "archive",
            f"results.jsonl lacks rollout {rid}, which {folders.seen[rid]} holds (a line was deleted)",
        )


async def _chunks(http: _Client, index: dict[str, Any], signed: bool) -> list[tuple[str, str | None, bool]]:
    """The chunk files (``releases/YYYY-MM/results-NNNN.jsonl``) the export's index and manifests
    list: each with its SHA-256 and whether it was exported with proofs, as a signed index's
    manifests say (None, False: unsigned)."""
    import re

    entries = index.get("releases")
    if not isinstance(entries, list):
        raise AuditFailure("archive", "releases.json has no releases list")
    out: list[tuple[str, str | None, bool]] = []
    for entry in entries:
        period = entry.get("period") if isinstance(entry, dict) else None
        if not isinstance(period, str) or not re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", period):
            raise AuditFailure("archive", f"releases.json lists a folder that is not a month: {entry!r:.100}")
        mpath = f"releases/{period}/MANIFEST.json"
        raw = (await http.get(f"/public/{mpath}")).content
        if signed and hashlib.sha256(raw).hexdigest() != entry.get("manifest_sha256"):
            raise AuditFailure(
                "archive",
                f"{mpath} is not the manifest the signed releases.json names (edited, or an export"
                " was killed before it finished: export again)",
            )
        try:
            manifest = loads(raw)
        except _BadJSON as e:
            raise AuditFailure(
                "fetch", f"GET {http.url('/public/' + mpath)} did not return JSON: {e}"
            ) from None
        chunks = manifest.get("chunks") if isinstance(manifest, dict) else None
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(chunks, list) or (signed and not isinstance(files, dict)):
            raise AuditFailure("archive", f"{mpath} has no chunks list")
        for c in chunks:
            name = c.get("file") if isinstance(c, dict) else None
            if not isinstance(name, str) or not re.fullmatch(r"results-[0-9]{4,}\.jsonl", name):
                raise AuditFailure("archive", f"{mpath} lists a chunk that is not results-NNNN.jsonl")
            sha256 = None
            if signed:
                meta = files.get(name)  # type: ignore[union-attr]
                sha256 = meta.get("sha256") if isinstance(meta, dict) else None
                if not isinstance(sha256, str):
                    raise AuditFailure("archive", f"{mpath} lists chunk {name} without its SHA-256")
            out.append((f"releases/{period}/{name}", sha256, c.get("checkpoint") is not None))
    return out


async def _check_lines(
    http: _Client,
    check: _Archive,
    path: str,
    name: str,
    progress: Callable[[int], None] | None,
    read: list[int],
    sha256: str | None = None,
) -> int | None:
    """Check every line of the file at ``path`` (named ``name``), and that its bytes have the
    SHA-256 ``sha256`` when given; its number of lines, None if not served."""
    url = http.url(path)
    check.file = name
    n = 0
    digest = hashlib.sha256()
    try:
        async with http.client.stream("GET", url) as r:
            if r.status_code == 404 and name == "results.jsonl":
                return None
            if r.status_code == 404 and sha256 is not None:
                raise AuditFailure(
                    "archive", f"{name}: listed in its signed manifest, but not served (deleted)"
                )
            if r.status_code != 200:
                raise AuditFailure("fetch", f"GET {url} answered {r.status_code}: {await _excerpt(r)}")
            async for text in _lines(r, url, digest):
                n += 1
                read[0] += 1
                if text.strip():
                    await check.line(n, text)
                if progress is not None:
                    progress(read[0])
    except httpx.HTTPError as e:
        raise AuditFailure("fetch", f"GET {url}: {type(e).__name__}: {e}") from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise AuditFailure(
            "archive", f"{name}: not the bytes its signed manifest lists (a line deleted, added or edited)"
        )
    return n
