"""``rollwatch publish export DIR``: the public release as static files, added to incrementally.

The archive is one folder per release month that never changes once closed (see
:mod:`rollwatch.publication.releases` for the layout, the manifests and crash safety):
an export writes each new result once, into its folder, and leaves every older file
alone. At the top it rewrites what is small or current: ``index.html``, ``feed.json``,
``feed.atom`` (the same bytes the public routes serve), ``releases.json`` (the index
of the folders), ``superseded.jsonl`` and ``rollouts/{id}.json`` (every result, a hard
link to its folder's copy until a re-score marks it superseded; what the feeds' item
links point at). Only released results are written (see
:mod:`rollwatch.publication.public`). Given the Merkle tree, each new result carries
its proof bundle (:mod:`rollwatch.publication.proofs`) against the latest signed
checkpoint, and its ``results.jsonl`` line the feed's inclusion proof (see
:mod:`rollwatch.publication.inclusion`). The export then holds that checkpoint
(``checkpoint``), the log's public key (``key``) and the hash tiles of its tree
(``tile/<L>/<N>[.p/<W>]``, C2SP tlog-tiles): a plain static file server hosts a log
that standard tlog clients read and verify, and an auditor checks every result
offline (an older folder's proofs against its own checkpoint, which the current tiles
prove consistent). Full tiles never change, so a later export rewrites only the
partial ones; entry bundles are never exported (they hold events under embargo).
``results.jsonl`` holds every filed result, one line each; an export only appends its
new lines to it (what a killed export appended is cut off by the next).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rollwatch.abc import EventStore
from rollwatch.errors import ClockSkewed, UsageError
from rollwatch.events import Recorded, parse_rfc3339, rfc3339
from rollwatch.log import get_logger
from rollwatch.projections import ProjectionDB
from rollwatch.publication import feeds
from rollwatch.publication.clock import SKEW_S, behind_log, newest_event_at
from rollwatch.publication.public import (
    Released,
    held_back,
    iter_released,
    public_view,
    released_one,
    superseded_marks,
)
from rollwatch.publication.release import caught_up
from rollwatch.publication.releases import Archive, Dir, rollout_file

log = get_logger(__name__)

if TYPE_CHECKING:
    from rollwatch.integrity.checkpoint import NoteSigner
    from rollwatch.integrity.tree import MerkleTree, StoredCheckpoint
    from rollwatch.publication.inclusion import InclusionProofs
    from rollwatch.publication.proofs import ProofBundles


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    directory: Path
    released: int
    """Results new in this export (each written once, into its release folder)."""
    files: int
    """Files written by this export (every other file was left as it was)."""
    tree_size: int = 0
    """The size of the checkpoint the proofs and tiles are for (0: no checkpoint)."""
    total: int = 0
    """Released results in the whole archive."""
    closed: tuple[str, ...] = ()
    """Release folders closed by this export."""
    signed: bool = False
    """``releases.json.sig`` was written (the index signed with the log's key)."""


class _Refusing:
    """The tree's check of the events a result rests on, raising :class:`IntegrityError` at
    the first changed one (an export files nothing from a log edited since it was appended)."""

    def __init__(self, tree: MerkleTree) -> None:
        self.tree = tree

    async def changed(
        self, records: Iterable[Recorded], *, prove: bool = True
    ) -> tuple[list[int], list[int]]:
        from rollwatch.integrity.tree import changed_error

        changed, unabsorbed = await self.tree.changed(records)  # the stored leaves: no key at hand
        if changed:
            raise changed_error(changed[0])
        return changed, unabsorbed


def _json(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _signed_by(note: str, vkey: str, size: int) -> None:
    """The export ships ``vkey`` as its ``key`` and signs its index with it: the checkpoint it is
    cut at must be signed by that key. Between ``key rotate`` and the daemon's first checkpoint
    with the new key, the newest checkpoint is the retired key's: shipped beside the new key
    (and an index the new key signed), the export failed every audit that trusts its key."""
    from rollwatch.errors import InvalidNote
    from rollwatch.integrity.checkpoint import NoteVerifier

    try:
        NoteVerifier.from_vkey(vkey).open(note)
    except (InvalidNote, ValueError):
        raise UsageError(
            f"the newest signed checkpoint (tree size {size}) is not signed by the key in force"
            f" ({vkey}): the key was rotated since; the daemon signs with the new key at its next"
            " checkpoint (at its start, then every integrity.checkpoint_interval): export after it"
        ) from None


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
    witness_keys: Iterable[str] = (),
    signer: NoteSigner | None = None,
) -> ExportSummary:
    """Add what is new to the public release under ``out_dir``; ``base_url`` is where DIR will be served.

    New results go into their release folders (see :mod:`rollwatch.publication.releases`);
    the feeds, the page, the index and the supersession marks are rewritten, and the new
    results' lines appended to ``results.jsonl``. With ``tree`` (the log's Merkle tree, caught up),
    new results carry their proof bundles under ``proof`` and their lines the feed's
    inclusion proof under ``_rollwatch``, and the export holds the checkpoint, the key
    ``vkey`` and the hash tiles. ``cosigned``: the daemon's file of the latest checkpoint
    with its witnesses' cosignatures, shipped instead when it is that checkpoint; only the
    cosignatures that verify under ``witness_keys`` (the configured witnesses' vkeys) are kept.
    ``signer``: the log's key, which signs the index with the checkpoint the export was cut at
    (``releases.json.sig``; see :mod:`rollwatch.publication.releases`); its vkey is the ``key``
    shipped when ``vkey`` is not given.
    """
    if signer is not None and vkey is None:
        vkey = signer.vkey
    if not base_url.endswith("/"):
        base_url += "/"
    head = await caught_up(store, pdb)
    if now is None:
        now = datetime.now(UTC)
        # What is filed is never rewritten: a clock behind the log's newest event cannot be
        # right (see publication.clock), and is not exported by.
        newest = await newest_event_at(store)
        if (behind := behind_log(now, newest)) is not None:
            raise UsageError(
                f"this host's clock ({rfc3339(now)}) is {behind:.0f} s behind the log's newest event"
                f" ({rfc3339(newest) if newest else '-'}); set the clock right, then export"
            )
        # On a shared log the database's clock is the one every node goes by (serve and run
        # refuse a clock off it): an export on a host 40 days ahead filed, for good, a result
        # another node had released ahead of its date (a clock of its own ahead).
        skew = await store.clock_skew()
        if skew is not None and abs(skew) > SKEW_S:
            raise ClockSkewed(skew, SKEW_S)
    # What is filed is never rewritten: an event found changed since it was appended ends the export.
    check = _Refusing(tree) if tree is not None else None
    # The log's first event names it: a folder another log's export made is not built on.
    first = (await store.read_at([1])).get(1) if head else None
    archive = await anyio.to_thread.run_sync(Archive.open, out_dir)  # refuses a folder not ours
    try:
        if first is not None and archive.log not in (None, first.hash):
            # Another configuration's log exported into DIR: its results were filed beside the
            # other log's in the same folders, under one index, as if one log had made them all.
            raise UsageError(
                f"{out_dir / 'releases.json'}: an export of another log (its first event's hash is"
                f" {archive.log}, this log's {first.hash}); export into another folder"
            )
        if now.timestamp() < archive.exported_at - SKEW_S:
            # An export on a clock ahead closed the months it took for ended; on the right
            # clock, a result of such a month had no open folder left (an AssertionError, every
            # export after it), or would be filed by a date older than the archive's own.
            raise UsageError(
                f"{out_dir / 'releases.json'}: the last export into this folder was made at"
                f" {rfc3339(datetime.fromtimestamp(archive.exported_at, UTC))}, after this clock's"
                f" {rfc3339(now)} (a clock ahead then, or behind now); set the clock right, or export"
                " into another folder"
            )
        # Within the skew allowed, the archive's time never goes back (a month it closed stays closed).
        filed = max(now, datetime.fromtimestamp(archive.exported_at, UTC))
        if archive.exported_seq > head:
            # An index from another log (DIR reused for a new database) or edited: every result
            # released at or before its exported_seq would be taken as filed, and never be.
            raise UsageError(
                f"{out_dir / 'releases.json'}: says results through seq {archive.exported_seq} are"
                f" exported, but the log ends at seq {head} (another log's export, or edited);"
                " export into another folder, or restore it from a copy"
            )
        view = await public_view(
            store, pdb, now=now, embargo_default=embargo_s, embargo_counts=embargo_counts, check=check
        )
        proofs = None
        bundles = None
        checkpoint = None
        written = 0
        if tree is not None:
            from rollwatch.publication.inclusion import InclusionProofs
            from rollwatch.publication.proofs import ProofBundles

            proofs = InclusionProofs(store, tree)
            bundles = ProofBundles(store, tree, public=True)
            checkpoint = await bundles.checkpoint()
            if checkpoint is not None and vkey is not None:
                _signed_by(checkpoint.note, vkey, checkpoint.size)
            if checkpoint is not None:
                written += await write_tiles(tree, archive.top, checkpoint.size)
        cut = {"tree_size": checkpoint.size, "note": checkpoint.note} if checkpoint is not None else None
        # Folders are cut at the signed checkpoint: a result released after it waits for the
        # next export, so every result filed carries a complete proof (files are never
        # rewritten to complete one). Without a checkpoint (no tree, or none signed yet):
        # the log's head, and no proofs.
        upto = checkpoint.size if checkpoint is not None else head
        seen = archive.exported_seq
        since = (
            archive.exported_seq
            if archive.held_from is None
            else min(archive.exported_seq, archive.held_from - 1)
        )
        # Results go out 200 per thread hop: a hop per file made a 16,500-result export
        # take six minutes on two busy cores.
        batch: list[tuple[str, float, bytes, bytes]] = []

        def put(items: list[tuple[str, float, bytes, bytes]]) -> None:
            for rid, nb_ts, record_bytes, line_bytes in items:
                archive.add(rid, nb_ts, filed, record_bytes, line_bytes)

        released = 0
        try:
            async for r in iter_released(store, pdb, now, after=since, check=check):
                if r.released_seq > upto:
                    break
                seen = max(seen, r.released_seq)
                nb_ts = parse_rfc3339(r.not_before).timestamp()
                if r.released_seq <= archive.exported_seq and nb_ts <= archive.exported_at:
                    continue  # in a folder already (a result held back last time is not)
                record, line = await _result(r, bundles, checkpoint, proofs)
                batch.append((r.rollout_id, nb_ts, record, line))
                released += 1
                if len(batch) >= 200:
                    await anyio.to_thread.run_sync(put, batch)
                    batch = []
            await anyio.to_thread.run_sync(put, batch)
            until = max(seen, upto)
            held_from = await held_back(pdb, since, until, now)
            before = {f.period for f in archive.folders.values() if f.state == "closed"}
            await anyio.to_thread.run_sync(archive.finish, filed, cut, until)
        except BaseException:
            await anyio.to_thread.run_sync(archive.abandon)
            raise
        closed = tuple(
            sorted(
                f.period for f in archive.folders.values() if f.state == "closed" and f.period not in before
            )
        )
        written += sum(f.wrote for f in archive.folders.values())

        # Supersession marks (a closed folder keeps its bytes): the list, and the top-level
        # copy of each result whose mark changed, as the live route shows it.
        marks = await superseded_marks(pdb, now)
        changed = await anyio.to_thread.run_sync(archive.write_superseded, marks)
        # Top-level copies someone deleted are put back (a superseded one as the live route shows it).
        back = await anyio.to_thread.run_sync(archive.relink_missing)
        written += len(back)
        changed |= {rid for rid in back if rid in archive.superseded}
        for rid in sorted(changed):
            one = await released_one(store, pdb, rid, now, check)
            if one is not None:
                record, _ = await _result(one, bundles, checkpoint, None)
                await anyio.to_thread.run_sync(archive.write, rollout_file(rid), record)
                written += 1
        await anyio.to_thread.run_sync(archive.append_results)
        extra = (await proofs.fields(view.recent))[0] if proofs is not None else None
        pages = {
            "feed.json": feeds.json_feed_bytes(view, base_url, extra),
            "feed.atom": feeds.atom_feed(view, base_url),
            "index.html": feeds.html_page(view, embargo_s=embargo_s).encode(),
        }
        if checkpoint is not None:
            pages["checkpoint"] = (
                cosigned_note(checkpoint.note, cosigned, witness_keys) if cosigned else checkpoint.note
            ).encode()
        if vkey is not None:
            pages["key"] = (vkey + "\n").encode()
        for name, body in pages.items():
            await anyio.to_thread.run_sync(archive.write, name, body)
        sign = None
        if signer is not None and checkpoint is not None:
            from rollwatch.integrity.checkpoint import Checkpoint, release_statement, split_note

            cut_at = Checkpoint.parse(split_note(checkpoint.note)[0])
            sign = lambda sha256: signer.sign(release_statement(cut_at, sha256, now))  # noqa: E731
        await anyio.to_thread.run_sync(
            lambda: archive.write_index(
                now=filed,
                log=first.hash if first is not None else archive.log,
                exported_seq=until,
                held_from=held_from,
                tree_size=checkpoint.size if checkpoint else 0,
                sign=sign,
            )
        )
        return ExportSummary(
            directory=out_dir,
            released=released,
            # + results.jsonl, superseded.jsonl, LICENSE, releases.json (and its .sig)
            files=written + len(pages) + 4 + (sign is not None),
            tree_size=checkpoint.size if checkpoint is not None else 0,
            total=sum(f.results for f in archive.folders.values()),
            closed=closed,
            signed=sign is not None,
        )
    finally:
        archive.close()  # the next export may start


async def _result(
    r: Released,
    bundles: ProofBundles | None,
    checkpoint: StoredCheckpoint | None,
    proofs: InclusionProofs | None,
) -> tuple[bytes, bytes]:
    """One result's file (with its proof bundle) and its ``results.jsonl`` line (with the
    feed's inclusion proof too, as ``_rollwatch``)."""
    record = r.to_json()
    bundle = None
    if bundles is not None and checkpoint is not None:
        bundle = record["proof"] = await bundles.bundle(r.rollout_id, checkpoint)
    body = _json(record)
    line = body
    if proofs is not None:
        # The item's score event and its proof, as the feed carries them: from the
        # bundle when it has them, else looked up.
        meta = _scored_fields(bundle, r.scored_seq)
        if meta is None:
            found, _ = await proofs.fields([r])
            meta = found.get(r.rollout_id)
        if meta is not None:
            line = _json({**record, "_rollwatch": meta})
    return body, line + b"\n"


async def write_tiles(tree: MerkleTree, out: Dir | Path, size: int) -> int:
    """Write the hash tiles of the tree of ``size`` under ``out/tile``; return how many were written.

    ``out``: the export's DIR as :class:`~rollwatch.publication.releases.Archive` holds it
    (its folders opened once, never through a link swapped in since), or a path (opened here).

    A full tile already there with the same bytes is left alone (full tiles never
    change); one with other bytes is rewritten, so an export directory reused for
    another log (or after a fork) never serves stale tiles. Tiles are read 64 at a
    time (one read of 16,384 stored hashes) and written 64 per thread hop: 10⁶
    events' 3,924 tiles were written in seconds rather than a minute.
    """
    if isinstance(out, Path):
        held = await anyio.to_thread.run_sync(Dir.of, out)
        try:
            return await write_tiles(tree, held, size)
        finally:
            held.close()
    from itertools import groupby

    from rollwatch.integrity.tiles import HEIGHT, WIDTH, Tile, tiles_for

    top = out

    def put_all(bodies: list[tuple[str, bytes]]) -> int:
        n = 0
        for rel, body in bodies:
            d, name = top.split(rel, create=True)
            try:
                st = d.lstat(name)
                if stat.S_ISREG(st.st_mode) and st.st_size == len(body) and d.read(name) == body:
                    continue
            except FileNotFoundError:
                pass
            d.write_atomic(name, body)
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
                bodies.append((t.path(), blob[off : off + t.width * 32]))
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


def cosigned_note(note: str, path: Path, witness_keys: Iterable[str] = ()) -> str:
    """``note`` with the cosignatures kept in ``path``, when ``path`` holds that very note
    cosigned: each one that verifies under one of ``witness_keys`` (vkeys), no other.

    The file is state on the host: a line added to it by hand (a cosignature of a witness
    not configured, or one that does not verify) was shipped in the export's checkpoint as
    if that witness had seen the log. Verifiers reject such lines, but a reader that only
    counts them would not."""
    from rollwatch.errors import InvalidNote
    from rollwatch.integrity.witness import CosignatureVerifier

    try:
        kept = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return note
    if not kept.startswith(note):
        return note
    verifiers = []
    for k in witness_keys:
        try:
            verifiers.append(CosignatureVerifier.from_vkey(k))
        except ValueError:
            continue  # refused by the configuration's check already
    out = note
    for line in kept[len(note) :].splitlines(keepends=True):
        valid = False
        for v in verifiers:
            try:
                valid = v.timestamp(note + line) is not None
            except (InvalidNote, ValueError):
                valid = False
            if valid:
                break
        if valid and line.endswith("\n"):
            out += line
        else:
            log.warning(
                "cosignature_not_shipped",
                line=line.strip()[:200],
                reason="no configured witness's key verifies it",
            )
    return out
