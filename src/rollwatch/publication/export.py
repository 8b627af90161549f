"""``rollwatch publish export DIR``: the public release as static files.

Writes the same bytes the public routes serve: ``index.html``, ``feed.json``,
``feed.atom``, ``results.jsonl`` (every released result, oldest release first) and
``rollouts/{id}.json`` (what the feeds' item links point at). Each file is written
to a temporary name and renamed, so a web server reading DIR never serves half a file.
Only released results are written (see :mod:`rollwatch.publication.public`). Given
the Merkle tree, ``feed.json`` items and ``results.jsonl`` lines carry their inclusion
proofs as the public routes serve them (see :mod:`rollwatch.publication.inclusion`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
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
) -> ExportSummary:
    """Write the public release under ``out_dir``; ``base_url`` is where DIR will be served.

    With ``tree`` (the log's Merkle tree, caught up), ``feed.json`` items and
    ``results.jsonl`` lines carry their inclusion proofs under ``_rollwatch``.
    """
    if not base_url.endswith("/"):
        base_url += "/"
    await caught_up(store, pdb)
    now = now or datetime.now(UTC)
    view = await public_view(store, pdb, now=now, embargo_default=embargo_s, embargo_counts=embargo_counts)
    proofs = None
    if tree is not None:
        from rollwatch.publication.inclusion import InclusionProofs

        proofs = InclusionProofs(store, tree)
    rollouts = out_dir / "rollouts"
    await anyio.to_thread.run_sync(lambda: rollouts.mkdir(parents=True, exist_ok=True))
    released = 0
    tmp = out_dir / "results.jsonl.tmp"
    async with await anyio.open_file(tmp, "wb") as f:
        async for r in iter_released(store, pdb, now):
            line = _json(r.to_json())
            await anyio.to_thread.run_sync(_write, rollouts / f"{quote(r.rollout_id, safe='')}.json", line)
            if proofs is not None:
                found, _ = await proofs.fields([r])
                if r.rollout_id in found:
                    line = _json({**r.to_json(), "_rollwatch": found[r.rollout_id]})
            await f.write(line + b"\n")
            released += 1
    await anyio.to_thread.run_sync(os.replace, tmp, out_dir / "results.jsonl")
    extra = (await proofs.fields(view.recent))[0] if proofs is not None else None
    pages = {
        "feed.json": feeds.json_feed_bytes(view, base_url, extra),
        "feed.atom": feeds.atom_feed(view, base_url),
        "index.html": feeds.html_page(view, embargo_s=embargo_s).encode(),
    }
    for name, body in pages.items():
        await anyio.to_thread.run_sync(_write, out_dir / name, body)
    return ExportSummary(directory=out_dir, released=released, files=released + 4)
