"""``rollwatch serve`` (the daemon) and ``rollwatch run`` (one run in the foreground)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import anyio
import click

from rollwatch.cli._common import Context, common, run_async
from rollwatch.errors import UsageError

if TYPE_CHECKING:
    from rollwatch.config import Config


@click.command()
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
    import signal

    # A reload (SIGHUP) before the daemon catches it would end it: ignored until then
    # (the problems are read after the daemon catches it, so none is missed). A stop
    # (SIGTERM) then is kept, and the daemon stops cleanly as soon as it can.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop_requested: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop_requested.append(signum))
    from rollwatch.daemon import Daemon

    config = ctx.config
    run_async(lambda: Daemon(config, grace=grace, stop_requested=stop_requested).run())


@click.command("run")
@click.argument("schedule")
@click.option(
    "--rollouts", type=click.IntRange(1, 100_000), default=None, help="samples per model and problem"
)
@click.option("--models", default=None, help="comma-separated models (default: the schedule's)")
@click.option(
    "--new", "new", is_flag=True, help="start a new run even when the schedule has an unfinished one"
)
@common
def run_cmd(ctx: Context, schedule: str, rollouts: int | None, models: str | None, new: bool) -> None:
    """One run of SCHEDULE now, in the foreground, with a progress bar on a terminal.

    When the schedule has an unfinished run (a crash, a kill, Ctrl-C), that run is
    resumed: its answered rollouts are never requested again. ``--new`` starts another.

    Exit status: 0 when the run completed, 1 when it ended partial or failed, 130 when
    stopped by SIGINT (Ctrl-C) and 143 by SIGTERM (the run resumes at the next `serve`).
    """
    import signal

    from rollwatch.daemon import open_services
    from rollwatch.log import get_logger
    from rollwatch.progress import Progress
    from rollwatch.publication.clock import deciding_clock
    from rollwatch.runs import Run, RunState, unfinished_run_of

    config = ctx.config
    sched = config.schedule(schedule)
    model_list = _model_list(models)

    async def main() -> int:
        async with open_services(config) as svc:
            # Before anything is appended: a clock behind the log or off the database's
            # would date every decision wrong (embargoes that end early).
            svc.decision_time = (await deciding_clock(svc.store)).decision_time
            if sched.provider not in svc.providers:
                # Why, as the scheduler says it ("set /tmp" named a folder given as the key file).
                raise UsageError(
                    f"schedule {schedule!r}: provider {sched.provider!r} has no API key "
                    f"({config.provider(sched.provider).missing_key()})"
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
                bar.fields.update(st.batch_figures(time.time()))
                bar.update(st.done, passed=st.passed, cost=f"${st.cost_usd:.4f}")

            pending = None if new else await unfinished_run_of(svc, schedule)
            if pending is not None:
                run = await Run.load(svc, pending, on_progress=progress)
                if (rollouts is not None and rollouts != run.rollouts) or (
                    model_list is not None and model_list != run.models
                ):
                    raise UsageError(
                        f"schedule {schedule!r} has an unfinished run {run.run_id} (models "
                        f"{','.join(run.models)}, {run.rollouts} rollouts): `rollwatch run {schedule}` "
                        "resumes it; add --new to start a new run with other options"
                    )
                click.echo(f"resuming run {run.run_id} (--new starts a new run instead)", err=True)
            else:
                await _check_models(
                    svc.providers[sched.provider], sched.provider, model_list or list(sched.models), config
                )
                run = await Run.start(
                    svc, sched, trigger="manual", rollouts=rollouts, models=model_list, on_progress=progress
                )
            received: list[int] = []
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                        async for signum in sigs:
                            received.append(signum)
                            get_logger("rollwatch.cli").info(
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
            if fin is None and run.locked_elsewhere:
                click.echo(
                    f"run {run.run_id} is being driven by another rollwatch process (the daemon?); "
                    "wait for it, or add --new to start a new run",
                    err=True,
                )
                return 1
            if fin is None:
                click.echo(f"run {run.run_id} stopped before its end; `rollwatch serve` resumes it")
                # An interrupted run is not a success: 128 + the signal, as shells report a
                # process killed by it (130 for Ctrl-C, 143 for SIGTERM); 1 when it stopped
                # for another reason.
                return 128 + received[0] if received else 1
            click.echo(
                f"run {run.run_id}: {fin.status}, {fin.rollouts} answered, {fin.passed} passed, "
                f"${fin.cost_usd:.4f}"
                + (f", failures {fin.failures}" if fin.failures else "")
                + (f" ({fin.message})" if fin.message else "")
            )
            return 1 if fin.status in ("partial", "failed") else 0

    sys.exit(run_async(main))


def _model_list(option: str | None) -> list[str] | None:
    """The models ``--models`` names, None without the option. A list of nothing ran every
    model of the schedule; a model twice planned its rollouts twice (the same rollout ids),
    half of them conflicted and the run ended partial."""
    if option is None:
        return None
    models = [m.strip() for m in option.split(",") if m.strip()]
    if not models:
        raise UsageError("--models names no model; give them comma-separated, or leave the option out")
    for i, model in enumerate(models):
        if model in models[:i]:
            raise UsageError(f"--models: {model!r} is listed twice")
    return models


async def _check_models(provider: object, name: str, models: list[str], config: Config) -> None:
    """UsageError, before anything is appended, when ``provider`` cannot serve one of
    ``models``: it would be recorded (and reported) under a name that did not answer.

    The provider's model list decides; when it cannot be had, the models the
    configuration names for this provider (its schedules' and its prices') do.
    """
    from rollwatch.runs import ListsModels

    if not isinstance(provider, ListsModels):
        return
    served = await provider.served_models()
    source = "its model list"
    if served is None:
        source = "the configuration (its model list could not be read; see the log)"
        served = sorted(
            {m for s in config.schedules if s.provider == name for m in s.models}
            | set(config.provider(name).prices)
        )
    missing = [m for m in models if m not in served]
    if missing:
        shown = ", ".join(sorted(served)[:50]) + (f" and {len(served) - 50} more" if len(served) > 50 else "")
        raise UsageError(
            f"provider {name!r} cannot serve {', '.join(missing)}; by {source} it serves: {shown or 'nothing'}"
        )
