"""``rollwatch problems list|check``: the problem sets and their reference solutions."""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

import click

from rollwatch.cli._common import Context, common, run_async
from rollwatch.errors import UsageError

if TYPE_CHECKING:
    from rollwatch.config import Config


@click.group()
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
    from rollwatch.progress import Progress
    from rollwatch.scoring import ScoringPool, check_references, settings_from_config

    sets = _problem_sets(ctx.config, problem_set)

    async def main() -> int:
        bad = 0
        async with ScoringPool(settings_from_config(ctx.config.scoring)) as pool:
            for ps in sets:
                # On a terminal, a line that moves: nothing showed until every reference had
                # run (minutes for a HumanEval set). Off one, Progress prints nothing.
                bar = Progress(f"check {ps.name}", len(ps.problems))
                try:
                    failures = await check_references(
                        ps, pool, on_checked=functools.partial(bar.update, advance=1)
                    )
                finally:
                    bar.close()
                for pid, why in failures:
                    click.echo(f"FAIL {ps.name}/{pid}: {why}")
                for p in ps.problems:
                    limit = await pool.time_limit(p)
                    measured = (
                        f"reference {limit.reference_ms:g} ms, " if limit.reference_ms is not None else ""
                    )
                    click.echo(f"  {p.id:<28} time limit {limit.seconds:g}s ({measured}{limit.source})")
                bad += len(failures)
                click.echo(
                    f"{ps.name}: {len(ps.problems) - len(failures)}/{len(ps.problems)} reference solutions pass"
                )
        return 1 if bad else 0

    sys.exit(run_async(main))
