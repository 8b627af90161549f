"""The ``rollwatch`` command line: thin, on top of the library.

Exit codes: 0 ok, 1 a check failed, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click

from rollwatch.config import Config, load_config
from rollwatch.errors import ConfigError, IntegrityError, RollwatchError, UsageError
from rollwatch.log import configure_logging, get_logger

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

log = get_logger("rollwatch.cli")


class Context:
    """What every command gets: where the config is, and how to load it once."""

    def __init__(self) -> None:
        self.config_path: str | None = None
        self.log_level = "info"
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


def common(fn: F) -> F:
    """``--config`` and ``--log-level`` on every command (also accepted before the command)."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="config file (default: $ROLLWATCH_CONFIG, ./config/rollwatch.toml, /etc/rollwatch/rollwatch.toml)")
    @click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
    @functools.wraps(fn)
    def wrapper(*args: Any, config_path: str | None, log_level: str | None, **kw: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        assert ctx is not None
        if config_path:
            ctx.config_path = config_path
        if log_level:
            ctx.log_level = log_level
        configure_logging(ctx.log_level)
        return fn(ctx, *args, **kw)

    return wrapper  # type: ignore[return-value]


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="config file")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.version_option(package_name="rollwatch")
@click.pass_context
def cli(click_ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """rollwatch: measure LLMs on programming problems, into a tamper-evident log."""
    ctx = click_ctx.ensure_object(Context)
    ctx.config_path = config_path
    ctx.log_level = log_level


# --- events, verify, rebuild ---------------------------------------------------------


@cli.group()
def events() -> None:
    """Read the event log."""


@events.command("tail")
@click.option("-f", "--follow", is_flag=True, help="keep printing new events as they are appended")
@click.option("--type", "types", multiple=True, help="only events of this type (repeatable)")
@click.option("--after", type=int, default=None, help="start after this seq (default: the last 20)")
@click.option("--json", "as_json", is_flag=True, help="one envelope per line, as SPEC §4")
@common
def events_tail(ctx: Context, follow: bool, types: tuple[str, ...], after: int | None, as_json: bool) -> None:
    """Print events; -f follows new ones."""
    from rollwatch.store import open_store

    async def main() -> None:
        async with open_store(ctx.config.store) as store:
            start = after if after is not None else max(0, await store.head() - 20)
            it = store.follow(after=start, types=types or None) if follow else store.read(after=start, types=types or None)
            async for ev in it:
                if as_json:
                    line = json.dumps(ev.envelope(), ensure_ascii=False, separators=(",", ":"))
                else:
                    line = f"{ev.seq:>8} {ev.at} {ev.type:<20} {ev.stream:<40} {ev.data_json[:160]}"
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

    try:
        run_async(main)
    except KeyboardInterrupt:
        pass


@cli.command()
@common
def verify(ctx: Context) -> None:
    """Check the whole log's hash chain; exit 1 naming the first bad seq."""
    from rollwatch.progress import Progress
    from rollwatch.store import open_store

    async def main() -> int:
        async with open_store(ctx.config.store) as store:
            bar = Progress("verify", await store.head())
            try:
                report = await store.verify(progress=lambda s: bar.update(s))
            except IntegrityError as e:
                bar.close()
                click.echo(f"FAILED at seq {e.seq}: {e.reason}", err=True)
                return 1
            bar.update(report.events)
            bar.close()
            click.echo(f"ok: {report.events} events, head hash {report.head_hash or '(empty log)'}")
            return 0

    sys.exit(run_async(main))


@cli.command()
@common
def rebuild(ctx: Context) -> None:
    """Drop every projection and rebuild it from the log."""
    from rollwatch.progress import Progress
    from rollwatch.projections import ProjectionDB, default_projections
    from rollwatch.store import open_store

    async def main() -> None:
        async with open_store(ctx.config.store) as store, ProjectionDB(
            ctx.config.store.projections_path, default_projections()
        ) as pdb:
            head = await store.head()
            bar = Progress("rebuild", head)
            await pdb.rebuild()
            await pdb.catch_up(store, progress=lambda done, total: bar.update(done))
            bar.close()
            log.info("projections_rebuilt", events=head, projections=[p.name for p in pdb.projections])
            click.echo(f"rebuilt {len(pdb.projections)} projections from {head} events")

    run_async(main)


def main() -> None:
    """Console-script entry point: map errors to exit codes and clear messages."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except UsageError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except RollwatchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except SystemExit:
        raise
    sys.exit(0)


