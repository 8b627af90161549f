"""``rollwatch publish export DIR``: the public release as static files.

Writes the same bytes the public routes serve: ``index.html``, ``feed.json``,
``feed.atom``, ``results.jsonl`` (every released result, oldest release first) and
``rollouts/{id}.json`` (what the feeds' item links point at). Each file is written
to a temporary name and renamed, so a web server reading DIR never serves half a file.
Only released results are written (see :mod:`rollwatch.publication.public`). Given
the Merkle tree, ``feed.json`` items and ``results.jsonl`` lines carry their inclusion
proofs as the public routes serve them (see :mod:`rollwatch.publication.inclusion`),
and every result (``rollouts/{id}.json``, each line of ``results.jsonl``) its proof
bundle (:mod:`rollwatch.publication.proofs`) against the latest signed checkpoint.
The export then holds that checkpoint (``checkpoint``), the log's public key
(``key``) and the hash tiles of its tree (``tile/<L>/<N>[.p/<W>]``, C2SP
tlog-tiles): a plain static file server hosts a log that standard tlog clients read
and verify, and an auditor checks every result offline. Full tiles never change, so
a later export rewrites only the partial ones; entry bundles are never exported
(they hold events under embargo).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio

from rollwatch.abc import EventStore
from rollwatch.projections import ProjectionDB
from rollwatch.publication import feeds
from rollwatch.publication.public import iter_released, public_view
from rollwatch.publication.release import caught_up

if TYPE_CHECKING:
    from rollwatch.integrity.tree import MerkleTree


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    directory: Path
    released: int
    files: int
    tree_size: int = 0
    """The size of the checkpoint the proofs and tiles are for (0: no checkpoint)."""


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


async def export_public(
    store: EventStore,
    pdb: ProjectionDB,
    out_dir: Path,
    *,
    base_url: str,
    embargo_s: float,
    embargo_counts: bool = True,
    now: datetime | None = None,
    tree: MerkleTree | None = None,
    vkey: str | None = None,
    cosigned: Path | None = None,
) -> ExportSummary:
    """Write the public release under ``out_dir``; ``base_url`` is where DIR will be served.

    With ``tree`` (the log's Merkle tree, caught up), ``feed.json`` items and
    ``results.jsonl`` lines carry their inclusion proofs under ``_rollwatch``, every
    result its proof bundle under ``proof``, and the export holds the checkpoint, the
    key ``vkey`` and the hash tiles. ``cosigned``: the daemon's file of the latest
    checkpoint with its witnesses' cosignatures, shipped instead when it is that checkpoint.
    """
    if not base_url.endswith("/"):
        base_url += "/"
    await caught_up(store, pdb)
    now = now or datetime.now(UTC)
    view = await public_view(store, pdb, now=now, embargo_default=embargo_s, embargo_counts=embargo_counts)
    proofs = None
    bundles = None
    checkpoint = None
    tiles_written = 0
    if tree is not None:
        from rollwatch.publication.inclusion import InclusionProofs
        from rollwatch.publication.proofs import ProofBundles

        proofs = InclusionProofs(store, tree)
        bundles = ProofBundles(store, tree)
        checkpoint = await bundles.checkpoint()
        if checkpoint is not None:
            tiles_written = await write_tiles(tree, out_dir, checkpoint.size)
    rollouts = out_dir / "rollouts"
    await anyio.to_thread.run_sync(lambda: rollouts.mkdir(parents=True, exist_ok=True))
    released = 0
    tmp = out_dir / "results.jsonl.tmp"
    # Files and lines go out 200 results per thread hop: a hop per file made a
    # 16,500-result export take six minutes on two busy cores.
    files: list[tuple[Path, bytes]] = []
    lines: list[bytes] = []

    def flush_files(batch: list[tuple[Path, bytes]]) -> None:
        for path, body in batch:
            _write(path, body)

    async with await anyio.open_file(tmp, "wb") as f:

        async def flush() -> None:
            batch, files[:] = list(files), []
            await anyio.to_thread.run_sync(flush_files, batch)
            await f.write(b"".join(lines))
            lines.clear()

        async for r in iter_released(store, pdb, now):
            record = r.to_json()
            bundle = None
            if bundles is not None and checkpoint is not None:
                bundle = record["proof"] = await bundles.bundle(r.rollout_id, checkpoint)
            line = _json(record)
            files.append((rollouts / f"{quote(r.rollout_id, safe='')}.json", line))
            if proofs is not None:
                # The item's score event and its proof, as the feed carries them: from the
                # bundle when it has them, else looked up.
                meta = _scored_fields(bundle, r.scored_seq)
                if meta is None:
                    found, _ = await proofs.fields([r])
                    meta = found.get(r.rollout_id)
                if meta is not None:
                    line = _json({**record, "_rollwatch": meta})
            lines.append(line + b"\n")
            released += 1
            if len(files) >= 200:
                await flush()
        await flush()
    await anyio.to_thread.run_sync(os.replace, tmp, out_dir / "results.jsonl")
    extra = (await proofs.fields(view.recent))[0] if proofs is not None else None
    pages = {
        "feed.json": feeds.json_feed_bytes(view, base_url, extra),
        "feed.atom": feeds.atom_feed(view, base_url),
        "index.html": feeds.html_page(view, embargo_s=embargo_s).encode(),
    }
    if checkpoint is not None:
        pages["checkpoint"] = (
            cosigned_note(checkpoint.note, cosigned) if cosigned else checkpoint.note
        ).encode()
    if vkey is not None:
        pages["key"] = (vkey + "\n").encode()
    for name, body in pages.items():
        await anyio.to_thread.run_sync(_write, out_dir / name, body)
    return ExportSummary(
        directory=out_dir,
        released=released,
        files=released + 1 + len(pages) + tiles_written,
        tree_size=checkpoint.size if checkpoint is not None else 0,
    )


async def write_tiles(tree: MerkleTree, out_dir: Path, size: int) -> int:
    """Write the hash tiles of the tree of ``size`` under ``out_dir/tile``; return how many were written.

    A full tile already there with the same bytes is left alone (full tiles never
    change); one with other bytes is rewritten, so an export directory reused for
    another log (or after a fork) never serves stale tiles. Tiles are read 64 at a
    time (one read of 16,384 stored hashes) and written 64 per thread hop: 10⁶
    events' 3,924 tiles were written in seconds rather than a minute.
    """
    from itertools import groupby

    from rollwatch.integrity.tiles import HEIGHT, WIDTH, Tile, tiles_for

    def put_all(bodies: list[tuple[Path, bytes]]) -> int:
        n = 0
        for path, body in bodies:
            if path.is_file() and path.stat().st_size == len(body) and path.read_bytes() == body:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, body)
            n += 1
        return n

    written = 0
    for level, same_level in groupby(tiles_for(size), key=lambda t: t.level):
        assert level is not None
        tiles: list[Tile] = list(same_level)  # consecutive indices: the full ones, then the partial one
        for i in range(0, len(tiles), 64):
            chunk = tiles[i : i + 64]
            start = chunk[0].index * WIDTH
            hashes = await tree.node_hashes(
                HEIGHT * level, start, chunk[-1].index * WIDTH + chunk[-1].width, size=size
            )
            blob = b"".join(hashes)
            bodies = []
            for t in chunk:
                off = (t.index * WIDTH - start) * 32
                bodies.append((out_dir / t.path(), blob[off : off + t.width * 32]))
            written += await anyio.to_thread.run_sync(put_all, bodies)
    return written


def _scored_fields(bundle: dict[str, Any] | None, seq: int | None) -> dict[str, Any] | None:
    """What :func:`rollwatch.integrity.routes.inclusion_fields` gives for event ``seq``, from a bundle."""
    if bundle is None or seq is None:
        return None
    for ev in bundle["events"]:
        if ev["seq"] == seq:
            return {
                "seq": seq,
                "leaf_index": seq - 1,
                "canonical": ev["canonical"],
                "leaf_hash": ev["leaf_hash"],
                "inclusion": {"size": bundle["tree_size"], "path": ev["inclusion"]},
            }
    return None


def cosigned_note(note: str, path: Path) -> str:
    """``note`` with the cosignatures kept in ``path``, when ``path`` holds that very note cosigned."""
    try:
        kept = path.read_text(encoding="utf-8")
    except OSError:
        return note
    return kept if kept.startswith(note) else note
