"""``rollwatch subscribers add|list|revoke`` and ``rollwatch publish export``.

Thin: each command appends an event or reads a projection; the rules live in
:mod:`rollwatch.publication`. A running daemon sees a new or revoked subscriber
from the moment its event is committed: each keyed request checks the log's head.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click

from rollwatch.cli._common import Context, cell, common, current_projections, require_log, run_async
from rollwatch.errors import ConcurrencyConflict, UsageError
from rollwatch.events import SubscriberAdded, SubscriberRevoked, parse_rfc3339, rfc3339, subscriber_stream
from rollwatch.publication.keys import (
    ALL_SCOPES,
    SCOPES,
    check_name,
    check_scopes,
    hash_key,
    key_prefix,
    new_key,
    parse_expires,
)

if TYPE_CHECKING:
    from rollwatch.abc import EventStore
    from rollwatch.config import Config
    from rollwatch.integrity.checkpoint import NoteSigner


@click.group()
def subscribers() -> None:
    """Subscribers of the feed and their API keys (as events in the log)."""


@subscribers.command("add")
@click.argument("name")
@click.option(
    "--expires",
    default=None,
    metavar="DATE",
    help="when the key stops working: 2026-12-31 (start of that day, UTC), "
    "an RFC 3339 time, or a duration from now such as 90d (default: never)",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="S",
    help=f"what the key may read, repeatable or comma-separated (feed,rollouts): {', '.join(ALL_SCOPES)} "
    f"(default: {','.join(SCOPES)}; ops is the operator's: /metrics in full)",
)
@common
def subscribers_add(ctx: Context, name: str, expires: str | None, scopes: tuple[str, ...]) -> None:
    """Create subscriber NAME and print its API key, once (the log keeps only a hash)."""
    from rollwatch.store import open_store

    check_name(name)
    scope_list = check_scopes(scopes)
    until = parse_expires(expires) if expires else None
    config = ctx.config
    key = new_key()
    event = SubscriberAdded(
        name=name,
        key_hash=hash_key(key),
        key_prefix=key_prefix(key),
        scopes=scope_list,
        expires=rfc3339(until) if until else None,
    )

    async def main() -> int:
        async with open_store(config.store) as store:
            try:
                recs = await store.append(subscriber_stream(name), [event], expected_version=0)
            except ConcurrencyConflict:
                raise UsageError(
                    f"subscriber {name!r} exists already (names are never reused; choose another)"
                ) from None
            return recs[0].seq

    seq = run_async(main)
    # The key alone on stdout (for scripts); everything else on stderr.
    click.echo(key)
    click.echo(
        f"added subscriber {name} (seq {seq}, scopes {','.join(scope_list)}, "
        f"expires {rfc3339(until) if until else 'never'}). This key is shown only now: "
        "store it safely; rollwatch keeps only its hash.",
        err=True,
    )


async def _subscriber_rows(config: Config) -> list[dict[str, Any]]:
    from rollwatch.store import open_store

    require_log(config)
    async with (
        open_store(config.store, read_only=True) as store,
        current_projections(config, store) as pdb,
    ):
        rows = await pdb.fetchall(
            "SELECT name, key_prefix, scopes, expires, added_at, revoked_at, note"
            " FROM pub_subscribers ORDER BY added_seq"
        )
    now = datetime.now(UTC)
    out = []
    for name, prefix, scopes, expires, added, revoked, note in rows:
        if revoked:
            state = "revoked"
        elif expires and parse_rfc3339(expires) <= now:
            state = "expired"
        else:
            state = "active"
        out.append(
            {
                "name": name,
                "state": state,
                "key": prefix + "…",
                "scopes": json.loads(scopes),
                "expires": expires,
                "added": added,
                "revoked": revoked,
                "note": note or "",
            }
        )
    return out


@subscribers.command("list")
@click.option("--json", "as_json", is_flag=True, help="a JSON list instead of a table")
@common
def subscribers_list(ctx: Context, as_json: bool) -> None:
    """Every subscriber: state (active, expired, revoked), key prefix, scopes, expiry."""
    config = ctx.config
    rows = run_async(lambda: _subscriber_rows(config))
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    cols = ["name", "state", "key", "scopes", "expires", "added", "note"]
    table = [{c: cell(",".join(r[c]) if c == "scopes" else r[c] or "-") for c in cols} for r in rows]
    widths = {c: max([len(c), *(len(t[c]) for t in table)]) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for t in table:
        click.echo("  ".join(t[c].ljust(widths[c]) for c in cols).rstrip())


@subscribers.command("revoke")
@click.argument("name")
@click.option("--note", default="", help="why (shown by `subscribers list`)")
@common
def subscribers_revoke(ctx: Context, name: str, note: str) -> None:
    """Revoke NAME's key; a running daemon refuses it from the next request on."""
    from rollwatch.store import open_store

    check_name(name)
    config = ctx.config
    require_log(config)

    async def main() -> str:
        async with open_store(config.store) as store:
            for _ in range(5):
                stream = subscriber_stream(name)
                events = [ev async for ev in store.read(stream=stream)]
                if not events:
                    raise UsageError(f"no subscriber {name!r} (see `rollwatch subscribers list`)")
                if any(ev.type == "SubscriberRevoked" for ev in events):
                    return f"subscriber {name} was already revoked"
                try:
                    recs = await store.append(
                        stream, [SubscriberRevoked(name=name, note=note)], expected_version=events[-1].version
                    )
                except ConcurrencyConflict:
                    continue
                return f"revoked {name} (seq {recs[0].seq}); a running daemon refuses its key from the next request on"
            raise UsageError(f"subscriber {name!r} keeps changing under us; try again")

    click.echo(run_async(main))


async def _signer(config: Config, store: EventStore) -> NoteSigner | None:
    """The log's key (None before the first ``serve`` made one, or when this command cannot read
    it: a systemd credential only the daemon's unit is given); never creates anything."""
    from rollwatch.integrity.identity import resolve_origin
    from rollwatch.integrity.keys import existing_signer

    integrity = await resolve_origin(
        config.integrity,
        config.integrity.state_dir(config.store),
        store,
        create=False,
        store_url=config.store.url,
    )
    return await anyio.to_thread.run_sync(existing_signer, integrity.key_path(config.store), integrity.name)


@click.group()
def publish() -> None:
    """The public release."""


@publish.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--base-url",
    default=None,
    help="the URL DIR will be served at, for the feeds' links (default: server.base_url + /public/, "
    "else http://LISTEN/public/)",
)
@common
def publish_export(ctx: Context, directory: Path, base_url: str | None) -> None:
    """Add what is new to the public release in DIRECTORY.

    One folder per month (releases/YYYY-MM/, with a MANIFEST.json of every file's
    SHA-256 and the signed checkpoint), never changed once closed; at the top
    releases.json (the index), index.html, feed.json, feed.atom, results.jsonl (the
    open months' results), superseded.jsonl, rollouts/ID.json, LICENSE (CC BY 4.0).
    """
    from rollwatch.publication.export import export_public
    from rollwatch.store import open_store

    config = ctx.config
    base = base_url or f"{config.server.url}/public/"
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--base-url {base!r}: give an absolute http:// or https:// URL")
    from rollwatch.config import check_plain_url

    try:
        # As server.base_url is checked: "http://", "http://a b", a port past 65535 or a
        # user:password were written into every link of the release's closed months.
        check_plain_url(base)
    except ValueError as e:
        raise UsageError(f"--base-url {e}") from None
    require_log(config)

    async def main() -> str:
        from rollwatch.integrity.tree import MerkleTree

        async with (
            open_store(config.store, read_only=True) as store,
            current_projections(config, store) as pdb,
            MerkleTree(config.integrity.tree_path(config.store)) as tree,
        ):
            # Items carry inclusion proofs against the tree of the log as it is now.
            await tree.catch_up(store)
            try:
                s = await export_public(
                    store,
                    pdb,
                    directory,
                    base_url=base,
                    embargo_s=config.publication.embargo,
                    embargo_counts=config.publication.embargo_counts,
                    tree=tree,
                    signer=await _signer(config, store),
                    cosigned=config.integrity.state_dir(config.store) / "checkpoint.cosigned",
                    witness_keys=[w.key for w in config.integrity.witnesses],
                )
            except OSError as e:  # a folder read-only, a file where a folder should be, a full disk
                where = e.filename or directory
                raise UsageError(f"{where}: cannot write the export: {e.strerror or e}") from None
            proven = f", proofs against the checkpoint of size {s.tree_size}" if s.tree_size else ""
            closed = f"; closed release {', '.join(s.closed)}" if s.closed else ""
            if s.tree_size and not s.signed:
                closed += (
                    "; releases.json NOT signed (the checkpoint key cannot be read here): audit will fail it"
                )
            return (
                f"wrote {s.files} files to {s.directory} ({s.released} new released results,"
                f" {s.total} in all{proven}{closed})"
            )

    click.echo(run_async(main))
    sys.stdout.flush()
