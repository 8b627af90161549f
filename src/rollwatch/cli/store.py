"""``rollwatch verify``, ``rebuild`` and ``migrate``: the log as a whole."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rollwatch.cli._common import Context, common, require_log, run_async
from rollwatch.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from rollwatch.config import Config, StoreConfig


@click.command()
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="a checkpoint someone kept (a signed note, or an audit --keep file): the log must still contain it",
)
@common
def verify(ctx: Context, checkpoint: Path | None) -> None:
    """Check the whole log's hash chain, tree and checkpoints; exit 1 naming the first bad seq."""
    from rollwatch.integrity.verify import verify_state
    from rollwatch.progress import Progress
    from rollwatch.store import open_store

    require_log(ctx.config)

    async def main() -> int:
        async with open_store(ctx.config.store, read_only=True) as store:
            bar = Progress("verify", await store.head())
            # One pass over the log: gaps, every chain hash, the Merkle tree and every
            # checkpoint; beside it, every event's content, then the stream versions and
            # SQLite's index (which no hash covers).
            try:
                tree = await verify_state(
                    store,
                    ctx.config.integrity,
                    ctx.config.store,
                    checkpoint=checkpoint,
                    progress=bar.update,
                    chain=True,
                )
            except IntegrityError as e:
                bar.close()
                click.echo(f"FAILED at seq {e.seq}: {e.reason}", err=True)
                return 1
            bar.update(tree.events)
            bar.close()
            click.echo(f"ok: {tree.events} events, head hash {tree.head_hash or '(empty log)'}")
            click.echo(
                f"ok: Merkle tree of {tree.events} events, root {tree.root or '-'}; "
                f"{tree.checkpoints} checkpoints, {tree.signatures} signatures valid"
            )
            return 0

    sys.exit(run_async(main))


@click.command()
@common
def rebuild(ctx: Context) -> None:
    """Rebuild every projection from the log, beside the one in use, and switch to it."""
    require_log(ctx.config)
    from rollwatch.log import get_logger
    from rollwatch.progress import Progress
    from rollwatch.projections import ProjectionDB
    from rollwatch.readmodels import default_projections
    from rollwatch.store import open_store

    async def main() -> None:
        # What starting made (modules, the config) lives as long as the command: the
        # garbage collector need not walk it again at each full collection of the build.
        gc.freeze()
        async with (
            open_store(ctx.config.store, read_only=True) as store,
            ProjectionDB(ctx.config.store.projections_path, default_projections(), setup=False) as pdb,
        ):
            bar = Progress("rebuild", await store.head())
            head = await pdb.rebuild_beside(store, progress=lambda done, total: bar.update(done))
            bar.close()
            get_logger("rollwatch.cli").info(
                "projections_rebuilt", events=head, projections=[p.name for p in pdb.projections]
            )
            click.echo(f"rebuilt {len(pdb.projections)} projections from {head} events")

    run_async(main)


@click.command()
@click.option("--to", "target", required=True, help="postgresql://user@host/db (the database must exist)")
@common
def migrate(ctx: Context, target: str) -> None:
    """Copy this config's SQLite log into PostgreSQL and verify the copy."""
    from rollwatch.config import StoreConfig
    from rollwatch.migrate import migrate as copy_log
    from rollwatch.progress import Progress
    from rollwatch.store import open_store

    if ctx.config.store.sqlite_path is None:
        raise UsageError("store.url is not a SQLite log; migrate copies a SQLite log into PostgreSQL")
    if not target.startswith(("postgresql://", "postgres://")):
        raise UsageError(f"--to {target!r}: expected postgresql://user@host/db")

    async def main() -> int:
        async with open_store(ctx.config.store) as source, open_store(StoreConfig(url=target)) as dest:
            bar = Progress("migrate", await source.head())
            n = await copy_log(source, dest, progress=lambda seq: bar.update(seq))
            bar.close()
            click.echo(f"copied {n} events; the PostgreSQL log verifies and ends with the same hash")
            return 0

    code = run_async(main)
    for line in _carry_state(ctx.config, StoreConfig(url=target, projections=ctx.config.store.projections)):
        click.echo(line)
    sys.exit(code)


def _carry_state(config: Config, target: StoreConfig) -> list[str]:
    """Copy the checkpoint key (and retired keys), ``origin`` and ``checkpoint.last`` into the
    state folder the PostgreSQL log will use, when that is another folder (outside systemd:
    ``var/pg-HOST-PORT-DB/`` rather than the SQLite log's folder) and they are not there yet.
    Without them, ``serve`` on the migrated log made a new key and stopped, the log's
    checkpoints being "signed by another key than this node's", and the witness file that
    catches a rollback was left behind. Nothing is overwritten. ``target`` keeps the other
    ``[store]`` keys (``projections``): the operator changes ``url`` only."""
    import shutil

    from rollwatch.integrity.identity import ORIGIN_FILE

    integrity = config.integrity
    src, dst = integrity.state_dir(config.store), integrity.state_dir(target)
    pairs: list[tuple[Path, Path]] = []
    key_src, key_dst = integrity.key_path(config.store), integrity.key_path(target)
    if key_src != key_dst:
        pairs += [(k, key_dst.with_name(k.name)) for k in sorted(key_src.parent.glob(key_src.name + "*"))]
        pairs = [(a, b) for a, b in pairs if not a.name.endswith((".pending", ".tmp"))]
    if src.resolve() != dst.resolve():
        pairs += [(src / name, dst / name) for name in (ORIGIN_FILE, "checkpoint.last")]
    copied = []
    for a, b in pairs:
        if a.is_file() and not b.exists():
            b.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(a, b)
            copied.append(b.name)
    if not copied:
        return []
    return [
        f"copied {', '.join(copied)} from {src} to {dst}, where `serve` on the PostgreSQL log looks for them"
    ]
