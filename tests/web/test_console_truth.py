"""The console shows what the log says: the code the scorer ran, the verdict that stands,
the counts, costs and states as the events have them (a daemon of its own: two problem
sets that both have a problem ``twin``, with different entry points)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_daemon import events, free_port
from tests.web.opsd import Daemon, running_daemon

TWIN_ANSWER = (
    "Two helpers, one per entry point:\n\n"
    "```python\ndef left_fn(x):\n    return x + 1\n```\n\n"
    "```python\ndef right_fn(x):\n    return x + 2\n```\n"
)
"""Both blocks define an entry point: the left set's problem takes the first, the right's the second."""


def _twin(root: Path, entry: str, add: int) -> Path:
    d = root / "twin"
    d.mkdir(parents=True)
    (d / "problem.toml").write_text(
        f'title = "Twin ({entry})"\nreleased = 2026-01-01\n'
        f"prompt = '''\nWrite {entry}(x) returning x + {add}.\n'''\n"
        f'[scorer]\nkind = "python-function"\nentry_point = "{entry}"\ntests = "tests.py"\ntimeout = "5s"\n'
        '[reference]\nsolution = "solution.py"\n'
    )
    (d / "tests.py").write_text(f"def check(candidate):\n    assert candidate(1) == {1 + add}\n")
    (d / "solution.py").write_text(f"def {entry}(x):\n    return x + {add}\n")
    return root


def _setup(tmp: Path, fake_url: str) -> tuple[Path, Path]:
    left = _twin(tmp / "left", "left_fn", 1)
    right = _twin(tmp / "right", "right_fn", 2)
    cfg = tmp / "rollwatch.toml"
    # "left" first: a console that takes the first set having the problem takes the wrong one.
    cfg.write_text(f"""
node = "console-truth"
[store]
url = "sqlite:{tmp / "events.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[scoring]
workers = 1
[[problem_sets]]
name = "left"
path = "{left}"
[[problem_sets]]
name = "right"
path = "{right}"
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake_url}"
api_key_env = "FAKE_PROVIDER_KEY"
max_concurrency = 1
[providers.prices]
"m1" = {{ input = 1.0, output = 2.0 }}
[[schedules]]
name = "twins-right"
provider = "fake"
models = ["m1"]
problem_set = "right"
rollouts = 1
every = "1h"
""")
    return cfg, right


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose one run asked the right set's ``twin`` and scored the answer."""
    with running_daemon(tmp_path_factory.mktemp("twins"), setup=_setup, answer=TWIN_ANSWER, runs=1) as d:
        yield d


def _marked(html: str) -> list[str]:
    """The highlighted (scored) parts of a rollout page's answer, as text."""
    answer = html.split('id="answer">', 1)[1].split("</pre>", 1)[0]
    return [re.sub(r"<[^>]+>", "", m) for m in re.findall(r'<mark class="code"[^>]*>(.*?)</mark>', answer, re.S)]


class TestScoredCode:
    def test_the_highlighted_block_is_the_one_the_run_s_problem_set_scored(self, twins: Daemon) -> None:
        """Two configured sets both have ``twin`` (entry points ``left_fn`` and ``right_fn``);
        the run asked the right set's. The answer defines both in two blocks: the page
        highlights the block the scorer ran (``right_fn``), not the one the first
        configured set's entry point would pick."""
        (rid,) = [d["rollout_id"] for _, _, d in events(twins.db, "RolloutRequested")]
        (scored,) = [d for _, _, d in events(twins.db, "RolloutScored")]
        assert scored["passed"] and scored["extraction"] == "fenced-entry-point"
        r = httpx.get(twins.url + f"/ops/rollouts/{rid}")
        assert r.status_code == 200
        marked = _marked(r.text)
        assert len(marked) == 1, marked
        assert "def right_fn" in marked[0]
        assert "left_fn" not in marked[0]
