"""``rollwatch schedules list|pause|resume|trigger``: inspect and steer schedules."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import anyio
import click

from rollwatch.cli._common import Context, cell, common, current_projections, require_log, run_async

if TYPE_CHECKING:
    from rollwatch.config import Config


@click.group()
def schedules() -> None:
    """Inspect and steer schedules (pause/resume/trigger act on a running daemon via the log)."""


async def _schedule_states(config: Config) -> tuple[Any, dict[str, Any]]:
    from rollwatch.scheduler import load_states
    from rollwatch.store import open_store

    require_log(config)
    async with (
        open_store(config.store, read_only=True) as store,
        current_projections(config, store) as pdb,
    ):
        return None, await load_states(pdb)


def _cannot_run(config: Config) -> dict[str, str]:
    """The schedules that cannot run, with why: as this process sees the configuration
    (problem sets that do not load, missing keys) and as the running daemon reports on
    its /healthz (providers it disabled after a rejected key), when one answers."""
    import httpx

    from rollwatch.daemon import load_problem_sets
    from rollwatch.scheduler import cannot_run

    keyed = {p.name: None for p in config.providers if p.has_key()}
    blocked = cannot_run(config, keyed, load_problem_sets(config))
    # A daemon listening on every address is asked on loopback (nothing is bound here).
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
    host = wildcard.get(config.server.host, config.server.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{config.server.port}/healthz"
    try:
        said = httpx.get(url, timeout=2.0).json().get("schedules") or {}
    except (httpx.HTTPError, ValueError, AttributeError):
        said = {}  # no daemon here (it acts on the log when it starts)
    known = {s.name for s in config.schedules}
    for name, why in said.items() if isinstance(said, dict) else ():
        if name in known and isinstance(why, str):
            blocked.setdefault(name, why)
    return blocked


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True)
@common
def schedules_list(ctx: Context, as_json: bool) -> None:
    """Each schedule's state, next fire time, last run and outcome, skipped/missed counts,
    and why a schedule cannot run (state "cannot run")."""
    from datetime import UTC, datetime

    from rollwatch.scheduler import ScheduleState, disabled_prefix, fmt_next, make_trigger, next_fire

    config = ctx.config
    _, states = run_async(lambda: _schedule_states(config))
    blocked = _cannot_run(config)
    rows = []
    now = datetime.now(UTC)
    for s in config.schedules:
        st = states.get(s.name, ScheduleState(name=s.name))
        active = config.provider(s.provider).has_key() and s.name not in blocked
        if not s.enabled:
            state = "disabled"
        elif s.name in blocked:
            state = "cannot run"
        elif st.paused:
            state = "paused"
        else:
            state = "active" if active else "inactive (no API key)"
        why = blocked.get(s.name, "")
        # A provider the daemon disabled (a rejected key) is tried again at each fire of its
        # schedules: the schedule still fires, and its next fire is the next try.
        retried = state == "cannot run" and why.startswith(disabled_prefix(s.provider))
        if retried:
            why += "; its key is tried again at the next fire"
        running = st.last_status == "running"
        nxt = (
            next_fire(s, make_trigger(s), st.last_fire_at, now, running=running)[0]
            if state == "active" or retried
            else None
        )
        rows.append(
            {
                "schedule": s.name,
                "state": state,
                "trigger": f"every {s.every:g}s" if s.every else f"cron '{s.cron}' {s.timezone}",
                "next": fmt_next(nxt),
                "last_run": st.last_run_id or "-",
                "last_status": st.last_status or "-",
                "skipped": st.skipped,
                "missed": st.missed,
                "note": st.note,
                "why": why,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cols = [
        "schedule",
        "state",
        "trigger",
        "next",
        "last_run",
        "last_status",
        "skipped",
        "missed",
        "note",
        "why",
    ]
    table = [{c: cell(r[c]) for c in cols} for r in rows]
    widths = {c: max(len(c), *(len(t[c]) for t in table)) if table else len(c) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for t in table:
        click.echo("  ".join(t[c].ljust(widths[c]) for c in cols).rstrip())


def _append_schedule_event(config: Config, name: str, event: Any) -> int:
    from rollwatch.events import schedule_stream
    from rollwatch.store import open_store

    config.schedule(name)  # names the known schedules when this one is not

    async def main() -> int:
        async with open_store(config.store) as store:
            recs = await store.append(schedule_stream(name), [event])
            return recs[0].seq

    return run_async(main)


#: How long ``schedules trigger`` waits for the try of a disabled provider's key.
TRY_WAIT_S = 60.0


async def _tried(config: Config, seq: int) -> tuple[bool, str] | None:
    """How the daemon answered the trigger ``seq`` of a schedule whose provider it had
    disabled, as the log tells: (True, the run) once the run's first request was answered
    (a rollout's answer, or its batch submitted), (False, why) once the run ended without
    one or the trigger was skipped; None when neither within :data:`TRY_WAIT_S`."""
    from rollwatch.events import (
        BatchSubmitted,
        RolloutFailed,
        RolloutRequested,
        RolloutResponded,
        RunFinished,
        RunStarted,
        ScheduleSkipped,
    )
    from rollwatch.store import open_store

    types = {"RunStarted", "ScheduleSkipped", "RolloutRequested", "RolloutResponded", "RolloutFailed"}
    types |= {"BatchSubmitted", "RunFinished"}
    run_id: str | None = None
    rollouts: set[str] = set()
    got = ""
    async with open_store(config.store, read_only=True) as store:
        after = seq
        with anyio.move_on_after(TRY_WAIT_S):
            while True:
                head = await store.wait_for_new(after, timeout=1.0)
                async for rec in store.read(after=after, until=head, types=types):
                    ev = rec.event()
                    if isinstance(ev, ScheduleSkipped) and ev.trigger_seq == seq:
                        return False, f"the daemon skipped the trigger: {ev.reason}"
                    if isinstance(ev, RunStarted) and ev.trigger_seq == seq:
                        run_id = ev.run_id
                    elif run_id is None:
                        continue
                    elif isinstance(ev, RolloutRequested) and ev.run_id == run_id:
                        rollouts.add(ev.rollout_id)
                    elif isinstance(ev, RolloutFailed) and ev.rollout_id in rollouts and ev.final:
                        got = f"{ev.kind}" + (f" (HTTP {ev.status})" if ev.status else "") + f": {ev.message}"
                    elif (isinstance(ev, RolloutResponded) and ev.rollout_id in rollouts) or (
                        isinstance(ev, BatchSubmitted) and ev.run_id == run_id
                    ):
                        return True, run_id
                    elif isinstance(ev, RunFinished) and ev.run_id == run_id:
                        return (
                            False,
                            f"run {run_id}'s try got {got or ev.message} (the run ended {ev.status})",
                        )
                after = head
    return None


def _steering_command(verb: str, event: str, doc: str, said: str, *, runnable: bool = False) -> None:
    """``schedules VERB NAME [--note]``: append one schedule event; the daemon acts on it.

    ``runnable``: refuse (exit 2, nothing appended) when the schedule cannot run; a
    provider the daemon disabled does not refuse it (the run tries the key again: the
    command waits for that try and says how it went, exit 1 when the key still fails).
    """

    @schedules.command(verb, help=doc)
    @click.argument("name")
    @click.option("--note", default="", help="why (shown by `schedules list`)")
    @common
    def command(ctx: Context, name: str, note: str) -> None:
        from rollwatch import events
        from rollwatch.config import has_control
        from rollwatch.errors import UsageError
        from rollwatch.scheduler import disabled_prefix

        if has_control(note):
            # A line break in a note forged a row of `schedules list` (and the console's).
            raise UsageError(
                f"--note: {note!r}: a note is one line without control characters "
                "(line breaks, tabs, escapes, bidi marks); nothing was appended"
            )
        schedule = ctx.config.schedule(name)  # names the known schedules when this one is not
        disabled = None
        if runnable:
            why = _cannot_run(ctx.config).get(name)
            if why is None and not schedule.enabled:
                why = "it is disabled (enabled = false)"
            if why is not None and why.startswith(disabled_prefix(schedule.provider)):
                disabled, why = why, None  # "try now": the run tries the key again
            if why is not None:
                raise UsageError(f"schedule {name!r} cannot run: {cell(why)}; nothing was triggered")
        cls = getattr(events, event)
        seq = _append_schedule_event(ctx.config, name, cls(schedule=name, note=note))
        click.echo(said.format(name=name, seq=seq))
        if disabled is None:
            return
        # ``disabled`` and what the try got quote the provider's error message: its words,
        # which may carry a line break or an escape sequence for the operator's terminal.
        click.echo(f"{cell(disabled)}; the run's first request tries its key again")
        tried = run_async(lambda: _tried(ctx.config, seq))
        if tried is None:
            click.echo(
                f"no answer to the try within {TRY_WAIT_S:g} s; `rollwatch schedules list` shows"
                " whether the provider is still disabled"
            )
        elif tried[0]:
            click.echo(
                f"provider {schedule.provider!r} answered: it is enabled again; run {tried[1]} goes on"
            )
        else:
            click.echo(f"error: provider {schedule.provider!r} is still disabled: {cell(tried[1])}", err=True)
            sys.exit(1)


_steering_command(
    "pause",
    "SchedulePaused",
    "Stop NAME from firing until resumed (a running run goes on).",
    "paused {name} (seq {seq})",
)
_steering_command("resume", "ScheduleResumed", "Let NAME fire again.", "resumed {name} (seq {seq})")
_steering_command(
    "trigger",
    "ScheduleTriggered",
    "Ask the running daemon to start a run of NAME now (refused, exit 2, when NAME cannot run).",
    "triggered {name} (seq {seq}); the daemon starts it within a second",
    runnable=True,
)
