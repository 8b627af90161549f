"""What a passing run printed stays out of the log (session 35).

A released pass is public with its verdict's bytes: its proof bundle proves the pass by
them, and ``publish export`` and ``/public/`` serve that bundle. A passing verdict's
``detail`` held what ran printed: the candidate's stderr (``stderr_tail``), a ``command``
checker's streams and its JSON verdict. Tests that print their expected values, a checker
that logs each case, and a candidate that prints the arguments the hidden tests call it
with, all put the hidden tests there, on their way to the public once the embargo ends.
A pass now records its figures and the names of what it left out (``output_not_kept``);
a failure keeps its tails (never public: its bundle gives it by leaf hash alone).

End to end: the real ``rollwatch run`` and ``rollwatch rescore`` on a loopback provider,
the real sandbox, the log read from its SQLite file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import rollwatch
from tests.test_daemon import _provider, events, free_port

ENV = {"FAKE_PROVIDER_KEY": "sk-test-secret-123"}
HIDDEN = ("HIDDEN-EXPECTED-8042", "ARG-4021", "CHECKER-OUT-77", "CHECKER-ERR-78", "CHECKER-JSON-79")

ECHOES = (
    "```python\nimport sys\ndef solve(x: int) -> int:\n"
    "    print('ARG-' + str(x), file=sys.stderr)\n    return x * 2\n```"
)
WRONG = "```python\nimport sys\ndef solve(x: int) -> int:\n    print('ARG-' + str(x), file=sys.stderr)\n    return x\n```"
SCRIPT = [
    ["MARK-fn-right", {"answer": ECHOES}],
    ["MARK-fn-wrong", {"answer": WRONG}],
    ["MARK-cmd", {"answer": "```python\nprint('hello')\n```"}],
]
TESTS = (
    "import sys\ndef check(candidate):\n    print('HIDDEN-EXPECTED-8042', file=sys.stderr)\n"
    "    assert candidate(4021) == 8042\n"
)
CHECKER = (
    "import json, sys\n"
    "print('case 1: CHECKER-OUT-77')\n"
    "print('case 1: CHECKER-ERR-78', file=sys.stderr)\n"
    "print(json.dumps({'passed': True, 'score': 1.0, 'note': 'CHECKER-JSON-79'}))\n"
)


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("FAKE_PROVIDER_SCRIPT", json.dumps(SCRIPT))
    for url, _ in _provider(tmp_path, 0.01):
        yield url


def _setup(tmp_path: Path, base_url: str) -> Path:
    problems = tmp_path / "problems"
    for name in ("fn-right", "fn-wrong"):
        d = problems / name
        d.mkdir(parents=True)
        (d / "problem.toml").write_text(
            f'title = "{name}"\nreleased = 2026-01-01\nprompt = """\n# MARK-{name}\n'
            'def solve(x: int) -> int:\n    ...\n"""\n[scorer]\nkind = "python-function"\n'
            'entry_point = "solve"\ntests = "tests.py"\ntimeout = "5s"\n'
        )
        (d / "tests.py").write_text(TESTS)
    d = problems / "cmd"
    d.mkdir(parents=True)
    (d / "problem.toml").write_text(
        'title = "cmd"\nreleased = 2026-01-01\nprompt = "# MARK-cmd"\n[scorer]\nkind = "command"\n'
        'command = ["python3", "check.py"]\ntimeout = "5s"\n'
    )
    (d / "check.py").write_text(CHECKER)
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f"""
node = "test-node"
[store]
url = "sqlite:{tmp_path / "events.db"}"
[server]
listen = "127.0.0.1:{free_port()}"
[scoring]
workers = 2
[[problem_sets]]
name = "set"
path = "{problems}"
[[providers]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_PROVIDER_KEY"
[[schedules]]
name = "sched"
provider = "fake"
models = ["m1"]
problem_set = "set"
rollouts = 1
every = "24h"
""")
    return cfg


def _verdicts(db: Path, type_: str) -> dict[str, dict]:
    """The verdicts of ``type_`` by problem (read through each rollout's request)."""
    problem = {d["rollout_id"]: d["problem_id"] for _, _, d in events(db, "RolloutRequested")}
    return {problem[d["rollout_id"]]: d for _, _, d in events(db, type_)}


def test_a_pass_records_nothing_its_run_printed_a_failure_keeps_its_tail(
    tmp_path: Path, scripted: str
) -> None:
    cfg = _setup(tmp_path, scripted)
    assert rollwatch("--config", str(cfg), "schedules", "pause", "sched").returncode == 0
    res = rollwatch("--config", str(cfg), "run", "sched", env=ENV, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    db = tmp_path / "events.db"
    scored = _verdicts(db, "RolloutScored")
    assert scored["fn-right"]["passed"] is True, scored["fn-right"]
    assert scored["cmd"]["passed"] is True, scored["cmd"]
    assert scored["fn-wrong"]["passed"] is False, scored["fn-wrong"]
    assert scored["fn-right"]["detail"]["output_not_kept"] == ["stderr_tail"]
    assert scored["cmd"]["detail"]["output_not_kept"] == [
        "checker_stdout_tail",
        "checker_stderr_tail",
        "checker",
    ]
    # The figures stay: the code that ran, its time.
    assert scored["fn-right"]["detail"]["code_sha256"]
    assert "wall_ms" in scored["fn-right"]["detail"]
    # A failure keeps what an operator needs (the failing test, its output): withheld
    # from the public, shown to subscribers.
    assert "ARG-4021" in scored["fn-wrong"]["detail"]["stderr_tail"]
    for name in ("fn-right", "cmd"):
        text = json.dumps(scored[name])
        assert not [h for h in HIDDEN if h in text], (name, scored[name])

    # A re-score judges the same answers again (the problems' tests changed: a comment
    # line, a new version): its passes record no output either.
    problems = tmp_path / "problems"
    for name in ("fn-right", "fn-wrong"):
        (problems / name / "tests.py").write_text("# v2\n" + TESTS)
    (problems / "cmd" / "check.py").write_text("# v2\n" + CHECKER)
    res = rollwatch("--config", str(cfg), "rescore", timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    rescored = _verdicts(db, "RolloutRescored")
    assert {"fn-right", "cmd"} <= rescored.keys(), rescored
    for name in ("fn-right", "cmd"):
        assert rescored[name]["passed"] is True, rescored[name]
        text = json.dumps(rescored[name])
        assert not [h for h in HIDDEN if h in text], (name, rescored[name])
        assert rescored[name]["detail"]["output_not_kept"]
