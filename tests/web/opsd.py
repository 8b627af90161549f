"""A real `rollwatch serve` with runs in its log, for the console's tests.

Two providers: the built-in ``reference`` one (it passes, so the heatmap and the public
page have passes) and a loopback OpenAI-compatible fake whose every answer is hostile
HTML. Schedules: ``ref-hourly`` and ``fake-hostile`` fire at start; ``fake-slow``
(cron, next January) fires only when triggered, and takes seconds (the fake answers
after a delay, one request at a time), for watching live progress.

The problems are four small Python functions (``PROBLEMS``, ids that sort differently
as text and as numbers), quick to score: the daemon is up with its two runs in a few
seconds. ``p10`` sets no timeout, so its time limit is calibrated from its reference
solution. One daemon serves every console and browser test of a pytest worker
(``tests/web/conftest.py``): a test changes only what it owns (a schedule it pauses and
resumes, the problem it edits) and reads the log for what it checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from rollwatch.store.sqlite import SQLiteEventStore
from tests.helpers import rollwatch
from tests.publication.helpers import add_subscriber
from tests.test_daemon import ROOT, events, free_port, wait_until

HOSTILE = (
    "Here you go <script>window.__pwned = 1</script> and "
    '<img src=x onerror="window.__pwned = 2">:\n\n'
    "```python\ndef solve():\n    return '</pre><script>window.__pwned = 3</script>'\n```\n"
)
FAKE_KEY = "sk-console-test-0123456789"
PROBLEMS = ("p1", "p2", "p9", "p10")
"""In natural order (as text: p1, p10, p2, p9)."""
EDITED = "p9"
"""The problem a test edits (a new version, recorded on SIGHUP); no other test reads its hash."""


def write_problems(root: Path) -> Path:
    """The four problems: ``solve(x)`` returns ``x + N``; p10 has no timeout (calibrated)."""
    for i, pid in enumerate(PROBLEMS):
        d = root / pid
        d.mkdir(parents=True)
        timeout = "" if pid == "p10" else 'timeout = "5s"\n'
        (d / "problem.toml").write_text(
            f'title = "Add {i}"\nreleased = 2026-01-0{i + 1}\n'
            f"prompt = '''\ndef solve(x: int) -> int:\n    \"\"\"Return x + {i}.\"\"\"\n'''\n"
            f'[scorer]\nkind = "python-function"\nentry_point = "solve"\ntests = "tests.py"\n{timeout}'
            '[reference]\nsolution = "solution.py"\n'
        )
        (d / "tests.py").write_text(f"def check(candidate):\n    assert candidate(1) == {1 + i}\n")
        (d / "solution.py").write_text(f"def solve(x):\n    return x + {i}\n")
    return root


@dataclass
class Daemon:
    """A running daemon: its base URL, config file, log file and an ``ops``-scoped key."""

    url: str
    config: Path
    db: Path
    ops_key: str
    feed_key: str
    problems: Path
    pid: int = 0

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``rollwatch --config CONFIG ARGS``."""
        return rollwatch("--config", str(self.config), *args, env={"FAKE_PROVIDER_KEY": FAKE_KEY})

    def schedules(self) -> dict[str, dict[str, object]]:
        """``rollwatch schedules list --json``, by schedule name."""
        out = self.cli("schedules", "list", "--json")
        assert out.returncode == 0, out.stderr
        return {r["schedule"]: r for r in json.loads(out.stdout)}


def _config(tmp: Path, fake_url: str, problems: Path) -> Path:
    cfg = tmp / "rollwatch.toml"
    cfg.write_text(f"""
node = "console-test"
[store]
url = "sqlite:{tmp / "events.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[publication]
embargo = "1s"
release_check = "200ms"
[scoring]
workers = 2
[integrity]
checkpoint_interval = "1s"
[[problem_sets]]
name = "favorites"
path = "{problems}"
[[providers]]
name = "reference"
kind = "reference"
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake_url}"
api_key_env = "FAKE_PROVIDER_KEY"
max_concurrency = 1
[providers.prices]
"m1" = {{ input = 1.0, output = 2.0 }}
"m-slow" = {{ input = 1.0, output = 2.0 }}
[[schedules]]
name = "ref-hourly"
provider = "reference"
models = ["reference"]
problem_set = "favorites"
rollouts = 2
every = "1h"
[[schedules]]
name = "fake-hostile"
provider = "fake"
models = ["m1"]
problem_set = "favorites"
rollouts = 1
every = "1h"
[[schedules]]
name = "fake-slow"
provider = "fake"
models = ["m-slow"]
problem_set = "favorites"
rollouts = 3
cron = "0 0 1 1 *"
""")
    return cfg


async def _add_subscribers(db: Path) -> tuple[str, str]:
    async with SQLiteEventStore(db) as store:
        return await add_subscriber(store, "ops-user", scopes=["ops"]), await add_subscriber(
            store, "feed-user", scopes=["feed"]
        )


def _setup(tmp: Path, fake_url: str) -> tuple[Path, Path]:
    problems = write_problems(tmp / "problems")
    return _config(tmp, fake_url, problems), problems


@contextmanager
def running_daemon(
    tmp: Path,
    *,
    setup: Callable[[Path, str], tuple[Path, Path]] = _setup,
    answer: str = HOSTILE,
    runs: int = 2,
) -> Iterator[Daemon]:
    """Start the fake provider and the daemon, wait for the first ``runs`` runs, stop both after.

    ``setup(tmp, fake_url)`` writes the problems and the config (the fake provider at
    ``fake_url``) and returns the config's path and the problems' folder; the fake
    answers every request with ``answer``."""
    port_file, req_log = tmp / "port", tmp / "requests.jsonl"
    req_log.touch()
    fake = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_provider.py"), str(port_file), str(req_log), "0.3"],
        env={**os.environ, "FAKE_PROVIDER_ANSWER": answer},
    )
    proc: subprocess.Popen[bytes] | None = None
    err_file = tmp / "serve.err"
    try:
        port = wait_until(lambda: port_file.exists() and port_file.read_text(), 20, "the fake provider")
        cfg, problems = setup(tmp, f"http://127.0.0.1:{port}/v1")
        d = Daemon(url="", config=cfg, db=tmp / "events.db", ops_key="", feed_key="", problems=problems)
        # The subscribers' events, appended through the store API as the CLI appends them
        # (without two more interpreters starting; `subscribers add` has its own tests).
        d.ops_key, d.feed_key = anyio.run(_add_subscribers, d.db)
        # Its log to a file, not a pipe: a session's worth of log lines would fill a pipe
        # nobody reads until the end, and the daemon would block writing.
        with err_file.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "FAKE_PROVIDER_KEY": FAKE_KEY},
            )
        d.pid = proc.pid
        listen = cfg.read_text().split('listen = "')[1].split('"')[0]
        d.url = f"http://{listen}"
        wait_until(lambda: len(events(d.db, "RunFinished")) >= runs, 90, f"the first {runs} runs")
        yield d
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            assert proc.returncode == 0, err_file.read_text()[-3000:]
        fake.kill()
        fake.wait()
