"""``rollwatch events tail``: print events of the log, and follow it."""

from __future__ import annotations

import contextlib
import json
import sys

import click

from rollwatch.cli._common import Context, common, run_async


@click.group()
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
