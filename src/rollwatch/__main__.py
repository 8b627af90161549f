"""``python -m rollwatch``: the same as the ``rollwatch`` console script."""

from rollwatch.cli import main

main()
