"""Session 34: a folder of DIR swapped for a symbolic link while ``publish export`` runs.

Someone with write access to DIR renames one of its folders away and puts a symbolic link to a
folder outside DIR in its place, after the export has checked DIR for links and before it
writes there. The export used to create its files by path, so the kernel followed the new
link and the files landed outside DIR. Now every folder is opened once, ``O_NOFOLLOW``, from a
descriptor of DIR held for the whole export, and every file is made relative to those: the
export goes on in the folder it opened (or stops with one line), and nothing outside changes.

The window is hit deterministically from the test's own world: the export is given the log's
Merkle tree behind a stand-in whose ``node_hashes`` (first read when the export writes its
tiles: after it opened and checked DIR, before it writes any tile or release file) does the
swap. No code of the export is patched."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rollwatch.errors import UsageError
from rollwatch.integrity.tree import MerkleTree
from rollwatch.publication.export import export_public
from rollwatch.publication.releases import check_export, period_of
from tests.integrity.test_tlog_tiles import add_released, live_log
from tests.publication.test_releases import BASE

pytestmark = pytest.mark.anyio


class SwapWhileExporting:
    """The log's tree as the export reads it; the first read of tile hashes runs ``swap`` first."""

    def __init__(self, tree: MerkleTree, swap: Callable[[], None]) -> None:
        self._tree = tree
        self._swap: Callable[[], None] | None = swap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tree, name)

    async def node_hashes(self, *args: Any, **kw: Any) -> list[bytes]:
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap()
        return await self._tree.node_hashes(*args, **kw)


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (not following links) with its bytes."""
    out = {}
    for top, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            p = Path(top, name)
            out[p.relative_to(root).as_posix()] = b"->" if p.is_symlink() else p.read_bytes()
    return out


def filed(out: Path) -> list[str]:
    """The rollout ids of the export's results.jsonl, in order."""
    return [json.loads(x)["rollout_id"] for x in (out / "results.jsonl").read_text().splitlines()]


def partial_tile_folder(out: Path) -> str:
    """The level-0 partial tile's folder (``tile/0/NNN.p``), relative to ``out``."""
    [p] = [p for p in (out / "tile" / "0").iterdir() if p.name.endswith(".p")]
    return p.relative_to(out).as_posix()


FOLDERS = [
    "releases",
    "releases/{period}",
    "releases/{period}/rollouts",
    "rollouts",
    "tile",
    "tile/0",
    "{partial}",
]


@pytest.mark.parametrize("folder", FOLDERS)
async def test_a_folder_swapped_for_a_link_mid_export_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    """An export into DIR, a new result and a new checkpoint; the next export is under way (DIR
    opened and checked) when ``folder`` is renamed out of DIR and a link to ``outside`` put in
    its place. Nothing under ``outside`` is created or changed: the export finishes into the
    real folder, which it holds by descriptor (it used to follow the link, and write its tiles,
    chunk, results or their top-level links outside DIR). Put back, DIR is a whole export that
    files every result exactly once."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    out = tmp_path / "site"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("precious\n")
    stash = tmp_path / "stash"  # where the real folder is renamed to (the same file system)
    async with live_log(tmp_path) as live:
        kw: dict[str, Any] = {"base_url": BASE, "embargo_s": 0.0}
        first = await add_released(live.store, live.pdb)
        await live.integrity.final_checkpoint()
        await export_public(live.store, live.pdb, out, tree=live.integrity.tree, **kw)
        assert filed(out) == [first]
        second = await add_released(live.store, live.pdb)
        await live.integrity.final_checkpoint()

        period = period_of(datetime.now(UTC).timestamp())
        rel = folder.format(period=period, partial=partial_tile_folder(out))
        real = out / rel
        assert real.is_dir()
        assert not real.is_symlink()
        # The link points at a look-alike of the folder (the export's names there resolve),
        # beside a file of someone else's.
        for name in os.listdir(real):
            if (real / name).is_dir():
                (outside / name).mkdir()
        before, had = files(outside), files(real)

        def swap() -> None:
            os.rename(real, stash)
            real.symlink_to(outside, target_is_directory=True)

        tree = SwapWhileExporting(live.integrity.tree, swap)
        await export_public(live.store, live.pdb, out, tree=tree, **kw)  # type: ignore[arg-type]
        assert real.is_symlink(), "the swap happened during the export"
        assert files(outside) == before, f"written outside DIR through {rel}"
        assert files(stash) != had, "the export wrote into the real folder, held open"

        # Put back as it was; the next export is whole, every result filed once.
        real.unlink()
        os.rename(stash, real)
        await export_public(live.store, live.pdb, out, tree=live.integrity.tree, **kw)
        assert check_export(out) == []
        assert sorted(filed(out)) == sorted([first, second])
        assert files(outside) == before


@pytest.mark.parametrize("folder", ["releases", "rollouts", "tile"])
async def test_a_link_planted_where_a_folder_is_yet_to_be_made_stops_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    """The first export into an empty DIR: ``releases/``, ``rollouts/`` and ``tile/`` are not
    there when it checks DIR, and a link to ``outside`` is planted at one of those names before
    the export makes the folder. It is not followed (the export used to write there): the export
    stops with one line naming the link, and writes nothing outside. The link removed, the next
    export is whole."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    out = tmp_path / "site"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("precious\n")
    before = files(outside)
    async with live_log(tmp_path) as live:
        kw: dict[str, Any] = {"base_url": BASE, "embargo_s": 0.0}
        rid = await add_released(live.store, live.pdb)
        await live.integrity.final_checkpoint()
        planted = out / folder
        tree = SwapWhileExporting(
            live.integrity.tree, lambda: planted.symlink_to(outside, target_is_directory=True)
        )
        with pytest.raises(UsageError) as e:
            await export_public(live.store, live.pdb, out, tree=tree, **kw)  # type: ignore[arg-type]
        assert str(e.value) == (
            f"{planted}: a symbolic link in the export; an export writes only inside its folder, remove it"
        )
        assert files(outside) == before

        planted.unlink()
        await export_public(live.store, live.pdb, out, tree=live.integrity.tree, **kw)
        assert check_export(out) == []
        assert filed(out) == [rid]
        assert files(outside) == before
