"""``rollwatch audit`` and the tree check ``rollwatch verify`` runs (see :mod:`rollwatch.integrity`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from rollwatch.cli._common import Context, common, require_log, run_async
from rollwatch.errors import AuditFailure, UsageError


@click.command()
@click.option("--url", required=True, help="the service, e.g. https://rollwatch.example.org")
@click.option(
    "--keep",
    type=click.Path(dir_okay=False),
    default=None,
    help="file with the checkpoint (and key) of the last audit: check consistency from it, then keep the new one",
)
@click.option("--item", default=None, help="check that this released item (rollout id) is in the signed log")
@click.option(
    "--key", default=None, help="pin the verifier key (NAME+KEYID+BASE64) instead of trusting /public/key"
)
@click.option(
    "--timeout", "http_timeout", type=float, default=30.0, show_default=True, help="seconds per request"
)
@click.option(
    "--witness",
    "witnesses",
    multiple=True,
    help="a witness's cosignature key (NAME+KEYID+BASE64, type 0x04); repeat for each witness",
)
@click.option(
    "--quorum",
    type=click.IntRange(min=1),
    default=None,
    help="cosignatures needed (default: every --witness)",
)
@click.option(
    "--max-cosignature-age",
    default="1d",
    show_default=True,
    help="a cosignature older than this does not count (e.g. 1h, 1d)",
)
@click.option(
    "--no-archive",
    is_flag=True,
    default=False,
    help="skip the check of every line of results.jsonl (long for a huge archive)",
)
@click.option(
    "--inclusion-only",
    is_flag=True,
    default=False,
    help="with --item: check the item's inclusion only, not its proof bundle (a service older than the bundles)",
)
@click.option(
    "--export-wait",
    default="10m",
    show_default=True,
    help="how long to wait for an export being written into a static export to finish (0: not at all)",
)
@click.option(
    "--max-export-age",
    default=None,
    help="a static export must say, under its signature, it was made at most this long ago (e.g. 35d)",
)
@common
def audit(
    ctx: Context,
    url: str,
    keep: str | None,
    item: str | None,
    key: str | None,
    http_timeout: float,
    witnesses: tuple[str, ...],
    quorum: int | None,
    max_cosignature_age: str,
    no_archive: bool,
    inclusion_only: bool,
    export_wait: str,
    max_export_age: str | None,
) -> None:
    """Check the signed checkpoint, its consistency with the kept one, an item's inclusion, and
    every result of results.jsonl; exit 1 on failure."""
    from urllib.parse import urlsplit

    from rollwatch.integrity.audit import audit as run_audit

    usage = f"--url {url!r}: give the service's address with its scheme, e.g. https://host:8080"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError when not a number up to 65535)
    except ValueError:
        raise UsageError(usage) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(usage)
    if keep is not None and not keep.strip():
        # `--keep "$FILE"` with FILE unset named the working folder: exit 1, "Is a directory".
        raise UsageError("--keep: is empty; name the file the last audit's checkpoint is kept in")
    if not 0 < http_timeout <= 3600:  # also nan
        raise UsageError(
            f"--timeout {http_timeout}: give the seconds per request, more than 0 and at most 3600"
        )

    from rollwatch.config import parse_duration
    from rollwatch.integrity.witness import CosignatureVerifier

    def seconds(option: str, value: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as e:
            raise UsageError(f"{option}: {e}") from None

    max_age = seconds("--max-cosignature-age", max_cosignature_age)
    export_wait_s = seconds("--export-wait", export_wait)
    max_export_age_s = None if max_export_age is None else seconds("--max-export-age", max_export_age)
    for w in witnesses:
        try:
            CosignatureVerifier.from_vkey(w)
        except ValueError as e:
            raise UsageError(f"--witness: {e}") from None
    if quorum is not None and quorum > len(witnesses):
        raise UsageError(f"--quorum {quorum} is more than the {len(witnesses)} --witness keys given")

    # A line count on a terminal about once a second, while a long results.jsonl is checked.
    progress = None
    shown = [time.monotonic(), 0.0]  # when last shown; whether a count is on the line

    if sys.stderr.isatty():

        def progress(n: int) -> None:
            now = time.monotonic()
            if now - shown[0] >= 1.0:
                shown[0], shown[1] = now, 1.0
                click.echo(f"\rarchive: {n} lines checked", err=True, nl=False)

    def waiting(line: str) -> None:
        if shown[1]:
            click.echo(err=True)
            shown[1] = 0.0
        click.echo(line, err=True)

    async def main() -> int:
        try:
            report = await run_audit(
                url,
                keep=Path(keep) if keep is not None else None,
                item=item,
                key=key,
                http_timeout=http_timeout,
                witnesses=witnesses,
                quorum=quorum,
                max_cosignature_age=max_age,
                archive=not no_archive,
                bundle=not inclusion_only,
                progress=progress,
                export_wait=export_wait_s,
                max_export_age=max_export_age_s,
                waiting=waiting,
            )
        except ValueError as e:
            raise UsageError(f"--key: {e}") from None
        except AuditFailure as e:
            if shown[1]:
                click.echo(err=True)
            click.echo(f"FAILED {e.check}: {e.message}", err=True)
            return 1
        if shown[1]:
            click.echo(err=True)
        for line in report.lines:
            click.echo(line)
        if report.failure is not None:
            click.echo(f"FAILED {report.failure.check}: {report.failure.message}", err=True)
            return 1
        click.echo("ok")
        return 0

    sys.exit(run_async(main))


@click.group()
def key() -> None:
    """The checkpoint signing key."""


@key.command()
@click.option(
    "--new-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="a key you made (PEM Ed25519, as openssl genpkey writes); default: a new one is generated",
)
@common
def rotate(ctx: Context, new_key: Path | None) -> None:
    """Retire the checkpoint key: the old key signs the new one into the log.

    The running daemon signs with the new key from its next checkpoint; auditors who
    pinned the old key follow the rotation (`rollwatch audit`). The old key is kept
    beside the new as `<key file>.retired-<key id>`.
    """
    from rollwatch.integrity.identity import resolve_origin
    from rollwatch.integrity.rotation import rotate_key
    from rollwatch.store import open_store

    config = ctx.config
    require_log(config)
    key_file = config.integrity.key_path(config.store)

    async def main() -> None:
        async with open_store(config.store) as store:
            integrity = await resolve_origin(
                config.integrity,
                config.integrity.state_dir(config.store),
                store,
                create=False,
                store_url=config.store.url,
            )
            old, new, rec = await rotate_key(
                store, key_file, integrity.name, integrity.origin, new_key_file=new_key, node=config.node
            )
        click.echo(f"rotated at seq {rec.seq}")
        click.echo(f"old key: {old.vkey}")
        click.echo(f"new key: {new.vkey}")

    run_async(main)
