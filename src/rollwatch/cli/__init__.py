"""The ``rollwatch`` command line: thin, on top of the library.

One module per command group, joined here with ``add_command``; they share
:mod:`rollwatch.cli._common` and never import this module, so there is no cycle.
Exit codes: 0 ok, 1 a check failed, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import importlib

import click

from rollwatch.cli._common import Context, config_option, run_command

__all__ = ["cli", "main"]

#: Each command's name and where it lives (``module:attribute`` under rollwatch.cli). A
#: command's module is imported only when that command runs (or ``--help`` lists them
#: all): ``rollwatch events tail`` need not import the web server, the sandbox or Jinja2.
COMMANDS = {
    "events": "events:events",
    "verify": "store:verify",
    "rebuild": "store:rebuild",
    "migrate": "store:migrate",
    "serve": "daemon:serve",
    "run": "daemon:run_cmd",
    "schedules": "schedules:schedules",
    "problems": "problems:problems",
    "audit": "integrity:audit",
    "key": "integrity:key",
    "subscribers": "publish:subscribers",
    "publish": "publish:publish",
    "report": "report:report_cmd",
    "witness": "witness:witness",
    "rescore": "rescore:rescore_cmd",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name].split(":")
        command = getattr(importlib.import_module(f"rollwatch.cli.{module}"), attribute)
        if not isinstance(command, click.Command) or command.name != cmd_name:
            raise TypeError(f"rollwatch.cli.{module}.{attribute} is not the command {cmd_name!r}")
        return command

    def invoke(self, ctx: click.Context) -> object:
        """The command. A broken pipe on its output (``rollwatch verify | true``) passes click
        inside a group: click ends the command with exit 1 on it, a failed check's status, and
        run_command ends it with SIGPIPE's (141)."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise ExceptionGroup("the reader of standard output went away", [e]) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(), default=None, help="config file")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.version_option(package_name="rollwatch")
@click.pass_context
def cli(click_ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """rollwatch: measure LLMs on programming problems, into a tamper-evident log."""
    ctx = click_ctx.ensure_object(Context)
    ctx.config_path = None if config_path is None else config_option(config_path)
    ctx.log_level = log_level


def main() -> None:
    """Console-script entry point: map errors to exit codes and clear messages."""
    run_command(cli)
