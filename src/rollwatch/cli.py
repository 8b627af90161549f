"""The ``rollwatch`` command line: thin, on top of the library.

Exit codes: 0 ok, 1 a check failed, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
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

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="config file (default: $ROLLWATCH_CONFIG, ./config/rollwatch.toml, /etc/rollwatch/rollwatch.toml)",
    )
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
            it = (
                store.follow(after=start, types=types or None)
                if follow
                else store.read(after=start, types=types or None)
            )
            async for ev in it:
                if as_json:
                    line = json.dumps(ev.envelope(), ensure_ascii=False, separators=(",", ":"))
                else:
                    line = f"{ev.seq:>8} {ev.at} {ev.type:<20} {ev.stream:<40} {ev.data_json[:160]}"
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        run_async(main)


@cli.command()
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="a checkpoint someone kept (a signed note, or an audit --keep file): the log must still contain it",
)
@common
def verify(ctx: Context, checkpoint: Path | None) -> None:
    """Check the whole log's hash chain; exit 1 naming the first bad seq."""
    from rollwatch.cli_integrity import verify_tree
    from rollwatch.progress import Progress
    from rollwatch.store import open_store

    log_file = ctx.config.store.sqlite_path
    if log_file is not None and not log_file.is_file():
        raise UsageError(f"there is no event log at {log_file} (store.url {ctx.config.store.url})")

    async def main() -> int:
        async with open_store(ctx.config.store, read_only=True) as store:
            bar = Progress("verify", await store.head())
            try:
                report = await store.verify(progress=lambda s: bar.update(s))
            except IntegrityError as e:
                bar.close()
                click.echo(f"FAILED at seq {e.seq}: {e.reason}", err=True)
                return 1
            try:
                tree = await verify_tree(
                    store, ctx.config.integrity, ctx.config.store, checkpoint=checkpoint, progress=bar.update
                )
            except IntegrityError as e:
                bar.close()
                click.echo(f"FAILED at seq {e.seq}: {e.reason}", err=True)
                return 1
            bar.update(report.events)
            bar.close()
            click.echo(f"ok: {report.events} events, head hash {report.head_hash or '(empty log)'}")
            click.echo(
                f"ok: Merkle tree of {tree.events} events, root {tree.root or '-'}; "
                f"{tree.checkpoints} checkpoints, {tree.signatures} signatures valid"
            )
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
        async with (
            open_store(ctx.config.store) as store,
            ProjectionDB(ctx.config.store.projections_path, default_projections()) as pdb,
        ):
            head = await store.head()
            bar = Progress("rebuild", head)
            await pdb.rebuild()
            await pdb.catch_up(store, progress=lambda done, total: bar.update(done))
            bar.close()
            log.info("projections_rebuilt", events=head, projections=[p.name for p in pdb.projections])
            click.echo(f"rebuilt {len(pdb.projections)} projections from {head} events")

    run_async(main)


# --- serve, run, schedules ------------------------------------------------------------


@cli.command()
@click.option(
    "--grace",
    type=float,
    default=30.0,
    show_default=True,
    help="seconds in-flight rollouts get to finish on SIGTERM",
)
@common
def serve(ctx: Context, grace: float) -> None:
    """The daemon: scheduler, runs, feed server. Stops cleanly on SIGTERM/SIGINT."""
    from rollwatch.daemon import Daemon

    config = ctx.config
    run_async(lambda: Daemon(config, grace=grace).run())


@cli.command("run")
@click.argument("schedule")
@click.option(
    "--rollouts", type=click.IntRange(1, 100_000), default=None, help="samples per model and problem"
)
@click.option("--models", default=None, help="comma-separated models (default: the schedule's)")
@common
def run_cmd(ctx: Context, schedule: str, rollouts: int | None, models: str | None) -> None:
    """One run of SCHEDULE now, in the foreground, with a progress bar on a terminal."""
    import signal

    from rollwatch.daemon import open_services
    from rollwatch.progress import Progress
    from rollwatch.runs import Run, RunState

    config = ctx.config
    sched = config.schedule(schedule)
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None

    async def main() -> int:
        async with open_services(config) as svc:
            if sched.provider not in svc.providers:
                raise UsageError(
                    f"schedule {schedule!r}: provider {sched.provider!r} has no API key "
                    f"(set {config.provider(sched.provider).api_key_env or config.provider(sched.provider).api_key_file})"
                )
            if sched.problem_set not in svc.problem_sets:
                raise UsageError(
                    f"schedule {schedule!r}: problem set {sched.problem_set!r} did not load (see the log)"
                )
            bar: Progress | None = None

            def progress(st: RunState) -> None:
                nonlocal bar
                if bar is None:
                    bar = Progress(schedule, st.total)
                bar.total = st.total
                bar.update(st.done, passed=st.passed, cost=f"${st.cost_usd:.4f}")

            run = await Run.start(
                svc, sched, trigger="manual", rollouts=rollouts, models=model_list, on_progress=progress
            )
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                        async for _ in sigs:
                            log.info(
                                "run_stopping",
                                run_id=run.run_id,
                                hint="resumes at the next start of the daemon",
                            )
                            run.stopping.set()
                            return

                tg.start_soon(on_signal)
                fin = await run.drive(grace=10.0)
                tg.cancel_scope.cancel()
            if bar is not None:
                bar.close()
            if fin is None:
                click.echo(f"run {run.run_id} stopped before its end; `rollwatch serve` resumes it")
                return 0
            click.echo(
                f"run {run.run_id}: {fin.status}, {fin.rollouts} answered, {fin.passed} passed, "
                f"${fin.cost_usd:.4f}"
                + (f", failures {fin.failures}" if fin.failures else "")
                + (f" ({fin.message})" if fin.message else "")
            )
            return 0

    sys.exit(run_async(main))


@cli.group()
def schedules() -> None:
    """Inspect and steer schedules (pause/resume/trigger act on a running daemon via the log)."""


async def _schedule_states(config: Config) -> tuple[Any, dict[str, Any]]:
    from rollwatch.projections import ProjectionDB, default_projections
    from rollwatch.scheduler import load_states
    from rollwatch.store import open_store

    async with (
        open_store(config.store) as store,
        ProjectionDB(config.store.projections_path, default_projections()) as pdb,
    ):
        await pdb.catch_up(store)
        return None, await load_states(pdb)


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True)
@common
def schedules_list(ctx: Context, as_json: bool) -> None:
    """Each schedule's state, next fire time, last run and outcome, skipped/missed counts."""
    from datetime import UTC, datetime

    from rollwatch.scheduler import ScheduleState, fmt_next, make_trigger, next_fire

    config = ctx.config
    _, states = run_async(lambda: _schedule_states(config))
    rows = []
    now = datetime.now(UTC)
    for s in config.schedules:
        st = states.get(s.name, ScheduleState(name=s.name))
        active = config.provider(s.provider).has_key()
        nxt = None if st.paused or not active else next_fire(s, make_trigger(s), st.last_fire_at, now)[0]
        rows.append(
            {
                "schedule": s.name,
                "state": "paused" if st.paused else ("active" if active else "inactive (no API key)"),
                "trigger": f"every {s.every:g}s" if s.every else f"cron '{s.cron}' {s.timezone}",
                "next": fmt_next(nxt),
                "last_run": st.last_run_id or "-",
                "last_status": st.last_status or "-",
                "skipped": st.skipped,
                "missed": st.missed,
                "note": st.note,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cols = ["schedule", "state", "trigger", "next", "last_run", "last_status", "skipped", "missed", "note"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


def _append_schedule_event(config: Config, name: str, event: Any) -> int:
    from rollwatch.store import open_store

    config.schedule(name)  # names the known schedules when this one is not

    async def main() -> int:
        async with open_store(config.store) as store:
            recs = await store.append(f"schedule-{name}", [event])
            return recs[0].seq

    return run_async(main)


@schedules.command("pause")
@click.argument("name")
@click.option("--note", default="", help="why (shown by `schedules list`)")
@common
def schedules_pause(ctx: Context, name: str, note: str) -> None:
    """Stop NAME from firing until resumed (a running run goes on)."""
    from rollwatch.events import SchedulePaused

    seq = _append_schedule_event(ctx.config, name, SchedulePaused(schedule=name, note=note))
    click.echo(f"paused {name} (seq {seq})")


@schedules.command("resume")
@click.argument("name")
@click.option("--note", default="")
@common
def schedules_resume(ctx: Context, name: str, note: str) -> None:
    """Let NAME fire again."""
    from rollwatch.events import ScheduleResumed

    seq = _append_schedule_event(ctx.config, name, ScheduleResumed(schedule=name, note=note))
    click.echo(f"resumed {name} (seq {seq})")


@schedules.command("trigger")
@click.argument("name")
@click.option("--note", default="")
@common
def schedules_trigger(ctx: Context, name: str, note: str) -> None:
    """Ask the running daemon to start a run of NAME now."""
    from rollwatch.events import ScheduleTriggered

    seq = _append_schedule_event(ctx.config, name, ScheduleTriggered(schedule=name, note=note))
    click.echo(f"triggered {name} (seq {seq}); the daemon starts it within a second")


@cli.command()
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


# --- problems --------------------------------------------------------------------------


@cli.group()
def problems() -> None:
    """List problems and check their reference solutions."""


def _problem_sets(config: Config, name: str | None) -> list[Any]:
    from rollwatch.errors import ProblemError
    from rollwatch.problems import load_problem_set

    sets = [ps for ps in config.problem_sets if name is None or ps.name == name]
    if name is not None and not sets:
        raise UsageError(
            f"no problem set {name!r}; known: {', '.join(p.name for p in config.problem_sets) or '(none)'}"
        )
    out = []
    for ps in sets:
        try:
            out.append(load_problem_set(ps))
        except ProblemError as e:
            raise UsageError(str(e)) from None
    return out


@problems.command("list")
@click.argument("problem_set", required=False)
@common
def problems_list(ctx: Context, problem_set: str | None) -> None:
    """Every problem of every set (or of PROBLEM_SET): id, scorer, released, hash."""
    for ps in _problem_sets(ctx.config, problem_set):
        click.echo(f"{ps.name} ({len(ps.problems)} problems)")
        for p in ps.problems:
            released = p.released.isoformat() if p.released else "-"
            click.echo(f"  {p.id:<28} {p.scorer:<16} {released:<10} {p.content_hash[:19]}  {p.title}")


@problems.command("check")
@click.argument("problem_set", required=False)
@common
def problems_check(ctx: Context, problem_set: str | None) -> None:
    """Run every reference solution through its scorer; exit 1 naming each that fails."""
    from rollwatch.scoring import ScoringPool, check_references, settings_from_config

    sets = _problem_sets(ctx.config, problem_set)

    async def main() -> int:
        bad = 0
        async with ScoringPool(settings_from_config(ctx.config.scoring)) as pool:
            for ps in sets:
                failures = await check_references(ps, pool)
                for pid, why in failures:
                    click.echo(f"FAIL {ps.name}/{pid}: {why}")
                bad += len(failures)
                click.echo(
                    f"{ps.name}: {len(ps.problems) - len(failures)}/{len(ps.problems)} reference solutions pass"
                )
        return 1 if bad else 0

    sys.exit(run_async(main))


def _single(e: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def main() -> None:
    """Console-script entry point: map errors to exit codes and clear messages."""
    try:
        try:
            cli.main(standalone_mode=False)
        except BaseExceptionGroup as group:
            raise _single(group) from None
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


# Commands defined in their own modules register themselves on `cli`.
import rollwatch.cli_integrity  # noqa: E402
import rollwatch.cli_publish  # noqa: E402
import rollwatch.cli_report  # noqa: E402,F401
