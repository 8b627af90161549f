"""``python -m rollwatch``: the same as the ``rollwatch`` console script."""

from rollwatch import _interrupt

_interrupt.while_loading()

from rollwatch.cli import main  # noqa: E402 (after the handler: importing takes a while)

main()
