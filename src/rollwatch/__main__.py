"""``python -m rollwatch`` and the ``rollwatch`` console script."""

from rollwatch import _interrupt


def main() -> None:
    """Run the command line; Ctrl-C while its modules load ends it with one line (exit 130)."""
    _interrupt.while_loading()
    from rollwatch.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
