"""``rollwatch rescore``: archived answers judged again against the current problem versions."""

from __future__ import annotations

import click

from rollwatch.cli._common import Context, common, run_async


@click.command("rescore")
@click.option("--problem-set", "problem_set", default=None, help="only rollouts of runs on this problem set")
@click.option("--problem", default=None, help="only rollouts of this problem")
@click.option("--run", "run_id", default=None, help="only rollouts of this run")
@common
def rescore_cmd(ctx: Context, problem_set: str | None, problem: str | None, run_id: str | None) -> None:
    """Re-score archived answers against each problem's current version, in the sandbox.

    No provider is called. Each new verdict names the problem version (content hash)
    and scorer version it used; earlier verdicts stay in the log. Prints, per
    problem, how many verdicts flipped each way.
    """
    from rollwatch.daemon import open_services
    from rollwatch.progress import Progress
    from rollwatch.publication.clock import deciding_clock
    from rollwatch.runs.rescore import rescore

    config = ctx.config

    async def main() -> None:
        # No provider client is even opened: a re-score never asks one.
        async with open_services(config, providers={}) as svc:
            # A flip to pass is decided by this clock: checked against the log first.
            svc.decision_time = (await deciding_clock(svc.store)).decision_time
            # On a terminal, a line that moves (thousands of answers judged again in the
            # sandbox showed nothing until the end); off one, Progress prints nothing.
            bar = Progress("rescore", 0)
            try:
                summary = await rescore(
                    svc, problem_set=problem_set, problem=problem, run=run_id, progress=bar.set
                )
            finally:
                bar.close()
        for v in summary.versions:
            click.echo(
                f"problem {v.problem_set}/{v.problem_id}: new version {v.problem_hash[:19]}"
                f" (was {(v.previous_hash or '-')[:19]})"
            )
        if not summary.problems:
            click.echo("nothing to re-score: every verdict is under its problem's current version")
        else:
            click.echo(
                f"{'PROBLEM':<28} {'VERSION':<19} {'RESCORED':>8} {'FAIL->PASS':>10} {'PASS->FAIL':>10}"
            )
            for pid, f in sorted(summary.problems.items()):
                click.echo(
                    f"{pid:<28} {f.problem_hash[:19]:<19} {f.rescored:>8} {f.to_pass:>10} {f.to_fail:>10}"
                )
            click.echo(f"rescore {summary.rescore_id}: {summary.rescored} verdicts recorded")
        for why, n in sorted(summary.skipped.items()):
            click.echo(f"skipped {n}: {why}")

    run_async(main)
