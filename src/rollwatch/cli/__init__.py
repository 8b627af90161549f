"""The ``rollwatch`` command line: thin, on top of the library.

One module per command group, joined here with ``add_command``; they share
:mod:`rollwatch.cli._common` and never import this module, so there is no cycle.
Exit codes: 0 ok, 1 a check failed, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import click

from rollwatch.cli import (
    daemon,
    events,
    integrity,
    problems,
    publish,
    report,
    rescore,
    schedules,
    store,
    witness,
)
from rollwatch.cli._common import Context, run_command

__all__ = ["cli", "main"]


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


for command in (
    events.events,
    store.verify,
    store.rebuild,
    store.migrate,
    daemon.serve,
    daemon.run_cmd,
    schedules.schedules,
    problems.problems,
    integrity.audit,
    integrity.key,
    publish.subscribers,
    publish.publish,
    report.report_cmd,
    witness.witness,
    rescore.rescore_cmd,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point: map errors to exit codes and clear messages."""
    run_command(cli)
