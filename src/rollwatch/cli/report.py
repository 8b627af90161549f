"""``rollwatch report``: the report of SPEC §2 on a terminal, or as JSON or CSV.

Thin: it catches the projections up with the log, asks :mod:`rollwatch.report` for
the views, and prints their rendering.
"""

from __future__ import annotations

import json
import sys

import click

from rollwatch.cli._common import Context, common, current_projections, require_log, run_async
from rollwatch.errors import UsageError


@click.command("report")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default=None,
    help="table (aligned, for people), json (a list of rows) or csv; "
    "default: table on a terminal, json otherwise",
)
@click.option(
    "--by",
    type=click.Choice(["model", "problem", "run"]),
    default="model",
    show_default=True,
    help="one row per provider and model, or per problem or per run of each",
)
@click.option(
    "--trend",
    is_flag=True,
    help="pass@1 per model per run over time, each change tested against noise",
)
@click.option(
    "--release-impact",
    is_flag=True,
    help="pass@1 of every model before and after each problem's solution was released",
)
@click.option(
    "--problem-version",
    default=None,
    help="verdicts under this version (content hash or a prefix) of one problem, "
    "instead of each rollout's newest",
)
@common
def report_cmd(
    ctx: Context, fmt: str | None, by: str, trend: bool, release_impact: bool, problem_version: str | None
) -> None:
    """Per provider and model: rollouts, pass@1 with its 95% interval, pass@k, cost.

    --trend and --release-impact show those views instead of the summary (--by
    applies to the summary); on a terminal both can be shown at once, while JSON
    and CSV hold one view each.
    """
    from rollwatch.report import (
        Report,
        build_release_impact,
        build_report,
        build_trend,
        to_csv,
        to_json,
        to_table,
    )
    from rollwatch.store import open_store

    fmt = fmt or ("table" if sys.stdout.isatty() else "json")
    if fmt != "table" and trend and release_impact:
        raise UsageError(f"report: --format {fmt} holds one view; choose --trend or --release-impact")
    config = ctx.config
    require_log(config)

    async def main() -> list[Report]:
        async with (
            open_store(config.store, read_only=True) as store,
            current_projections(config, store) as pdb,
        ):
            views = []
            if trend:
                views.append(await build_trend(pdb))
            if release_impact:
                views.append(await build_release_impact(pdb))
            if not views:
                views.append(await build_report(pdb, by, problem_version=problem_version))
            return views

    views = run_async(main)
    if fmt == "json":
        click.echo(json.dumps(to_json(views[0]), indent=2, ensure_ascii=False))
    elif fmt == "csv":
        click.echo(to_csv(views[0]), nl=False)
    else:
        click.echo(
            "\n".join(f"{v.title}\n{to_table(v)}" if len(views) > 1 else to_table(v) for v in views),
            nl=False,
        )
