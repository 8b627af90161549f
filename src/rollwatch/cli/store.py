"""``rollwatch verify``, ``rebuild`` and ``migrate``: the log as a whole."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rollwatch.cli._common import Context, common, require_log, run_async
from rollwatch.errors import IntegrityError, UsageError
from rollwatch.log import get_logger

log = get_logger("rollwatch.cli")


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
            # checkpoint; then the stream versions (which no hash covers).
            try:
                tree = await verify_state(
                    store,
                    ctx.config.integrity,
                    ctx.config.store,
                    checkpoint=checkpoint,
                    progress=bar.update,
                    chain=True,
                )
                await store.verify_versions(tree.events)
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
    from rollwatch.progress import Progress
    from rollwatch.projections import ProjectionDB
    from rollwatch.readmodels import default_projections
    from rollwatch.store import open_store

    async def main() -> None:
        async with (
            open_store(ctx.config.store, read_only=True) as store,
            ProjectionDB(ctx.config.store.projections_path, default_projections(), setup=False) as pdb,
        ):
            bar = Progress("rebuild", await store.head())
            head = await pdb.rebuild_beside(store, progress=lambda done, total: bar.update(done))
            bar.close()
            log.info("projections_rebuilt", events=head, projections=[p.name for p in pdb.projections])
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

    sys.exit(run_async(main))
