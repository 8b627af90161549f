"""``rollwatch events tail``: print events of the log, and follow it."""

from __future__ import annotations

import contextlib
import json
import sys

import click

from rollwatch.cli._common import Context, common, require_log, run_async


@click.group()
def events() -> None:
    """Read the event log."""


@events.command("tail")
@click.option("-f", "--follow", is_flag=True, help="keep printing new events as they are appended")
@click.option("--type", "types", multiple=True, help="only events of this type (repeatable)")
@click.option(
    "--after",
    type=click.IntRange(0, 2**63 - 1),
    default=None,
    help="start after this seq (default: the last 20)",
)
@click.option("--json", "as_json", is_flag=True, help="one envelope per line, as SPEC §4")
@common
def events_tail(ctx: Context, follow: bool, types: tuple[str, ...], after: int | None, as_json: bool) -> None:
    """Print events (by default the last 20, of the given types if any); -f follows new ones."""
    from collections import deque

    from rollwatch.errors import UsageError
    from rollwatch.events import Recorded, event_types
    from rollwatch.store import open_store

    known = event_types()
    unknown = sorted(set(types) - set(known))
    if unknown:
        raise UsageError(
            f"events tail --type: unknown event type {', '.join(map(repr, unknown))}; "
            f"known types: {', '.join(sorted(known))}"
        )

    def show(ev: Recorded) -> None:
        if as_json:
            line = json.dumps(ev.envelope(), ensure_ascii=False, separators=(",", ":"))
        else:
            line = f"{ev.seq:>8} {ev.at} {ev.type:<20} {ev.stream:<40} {ev.data_json[:160]}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    require_log(ctx.config)

    async def main() -> None:
        async with open_store(ctx.config.store, read_only=True) as store:
            start = after
            if start is None:
                # The last 20 events of the asked types (not the types among the last 20).
                last: deque[Recorded] = deque(maxlen=20)
                head = await store.head()
                if types:
                    async for page in store.read_batches(types=types, until=head):
                        last.extend(page)
                else:
                    async for page in store.read_batches(after=max(0, head - 20), until=head):
                        last.extend(page)
                for ev in last:
                    show(ev)
                start = head
                if not follow:
                    return
            it = (
                store.follow(after=start, types=types or None)
                if follow
                else store.read(after=start, types=types or None)
            )
            async for ev in it:
                show(ev)

    with contextlib.suppress(KeyboardInterrupt):
        run_async(main)
