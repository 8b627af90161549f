"""One real daemon per pytest worker for the console's HTTP and browser tests.

Starting it (a fake provider, `rollwatch serve`, two runs scored in the sandbox) is
most of what these tests cost; every test of the session shares it and changes only
what it owns (see :mod:`tests.web.opsd`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.web.opsd import Daemon, running_daemon


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A running daemon with the two first runs finished in its log."""
    with running_daemon(tmp_path_factory.mktemp("opsd")) as d:
        yield d
