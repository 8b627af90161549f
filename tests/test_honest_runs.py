"""Honest runs (issue 17): a run is ``completed`` only when every rollout is scored,
else ``partial`` with its unscored rollouts counted by cause, and `rollwatch run`
exits 1; the report (`rollwatch report`, ``/v1/report``) and the console's run page
show infra failures (provider error kinds, budget, scorer and sandbox errors) apart
from the model's (wrong answer, timeout, no code). End to end: the real command on a
loopback provider that fails some requests for good."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rollwatch.report.failures import rollout_cause, verdict_cause
from tests.helpers import rollwatch
from tests.test_daemon import _provider, events, free_port, serve, wait_until

ENV = {"FAKE_PROVIDER_KEY": "sk-test-secret-123"}
ROLLOUTS = 2
# Each problem's prompt carries a marker the fake provider answers by.
SCRIPT = [
    ["MARK-broken", {"status": 500}],
    ["MARK-nocode", {"answer": "I would rather not write code today."}],
    ["MARK-slow", {"answer": "```python\ndef solve():\n    while True:\n        pass\n```"}],
]


def _problem(root: Path, name: str, tests: str) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "problem.toml").write_text(
        f'title = "{name}"\nreleased = 2026-01-01\nprompt = """\n# MARK-{name}\ndef solve() -> int:\n'
        '    ...\n"""\n[scorer]\nkind = "python-function"\nentry_point = "solve"\ntests = "tests.py"\n'
        'timeout = "2s"\n'
    )
    (d / "tests.py").write_text(tests)


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """The loopback provider with :data:`SCRIPT` (it inherits the environment); yields
    (base_url, its request log)."""
    monkeypatch.setenv("FAKE_PROVIDER_SCRIPT", json.dumps(SCRIPT))
    yield from _provider(tmp_path, 0.01)


def _setup(tmp_path: Path, base_url: str) -> tuple[Path, int]:
    """Five problems: ``right`` (the answer 42 passes), ``wrong`` (it fails the tests),
    ``slow`` (the answer loops), ``nocode`` (the answer holds no code), ``broken`` (the
    provider answers 500 until the two attempts are spent); returns (config, port)."""
    problems = tmp_path / "problems"
    _problem(problems, "right", "def check(candidate):\n    assert candidate() == 42\n")
    _problem(problems, "wrong", "def check(candidate):\n    assert candidate() == 41\n")
    for name in ("slow", "nocode", "broken"):
        _problem(problems, name, "def check(candidate):\n    assert candidate() == 42\n")
    port = free_port()
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(f"""
node = "test-node"
[store]
url = "sqlite:{tmp_path / "events.db"}"
[server]
listen = "127.0.0.1:{port}"
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
max_concurrency = 4
max_attempts = 2
backoff_base = "50ms"
[providers.prices]
"m1" = {{ input = 5.0, output = 25.0 }}
[[schedules]]
name = "sched"
provider = "fake"
models = ["m1"]
problem_set = "set"
rollouts = {ROLLOUTS}
every = "24h"
[[schedules]]
name = "tight"
provider = "fake"
models = ["m1"]
problem_set = "set"
rollouts = 4
every = "24h"
budget_usd = 0.01
[schedules.params]
max_tokens = 50
[[schedules]]
name = "broke"
provider = "fake"
models = ["m1", "m2"]
problem_set = "set"
rollouts = 1
every = "24h"
budget_usd = 0.0001
[schedules.params]
max_tokens = 50
""")
    return cfg, port


def _partial_run(cfg: Path, schedule: str) -> subprocess.CompletedProcess[str]:
    """`rollwatch run SCHEDULE` with every schedule paused (none fires meanwhile); it
    must exit 1, as a run that ends `partial` does."""
    for name in ("sched", "tight", "broke"):
        assert rollwatch("--config", str(cfg), "schedules", "pause", name).returncode == 0
    res = rollwatch("--config", str(cfg), "run", schedule, env=ENV, timeout=180)
    assert res.returncode == 1, res.stderr[-2000:]
    return res


def _report(cfg: Path, *args: str) -> list[dict[str, object]]:
    res = rollwatch("--config", str(cfg), "report", "--format", "json", *args)
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, object]] = json.loads(res.stdout)
    return rows


class TestHonestRuns:
    def test_final_failures_make_a_partial_run_and_the_report_tells_them_from_the_models(
        self, tmp_path: Path, scripted: tuple[str, Path]
    ) -> None:
        """The provider fails `broken` for good: the run ends `partial` with the two
        unscored rollouts under `server_error`, and `rollwatch run` exits 1. The report
        (JSON, table, CSV, /v1/report by model and by problem) and the console's run
        page count the model's failures (wrong_answer, timeout, no_code) apart from the
        provider's (server_error); pass@1 counts only scored rollouts."""
        base_url, _ = scripted
        cfg, port = _setup(tmp_path, base_url)
        db = tmp_path / "events.db"
        res = _partial_run(cfg, "sched")
        assert "partial" in res.stdout
        assert "server_error" in res.stdout
        ((_, _, fin),) = events(db, "RunFinished")
        assert fin["status"] == "partial"
        assert fin["failures"] == {"server_error": ROLLOUTS}
        assert fin["scored"] == fin["planned"] - ROLLOUTS == 4 * ROLLOUTS
        finals = [d for _, _, d in events(db, "RolloutFailed") if d.get("final")]
        assert len(finals) == ROLLOUTS
        assert {d["attempt"] for d in finals} == {2}, "retried, then given up"

        (row,) = _report(cfg)
        assert (row["rollouts"], row["passed"]) == (4 * ROLLOUTS, ROLLOUTS)
        assert row["pass_at_1"] == 0.25
        assert row["model_failures"] == {"no_code": ROLLOUTS, "timeout": ROLLOUTS, "wrong_answer": ROLLOUTS}
        assert row["infra_failures"] == {"server_error": ROLLOUTS}
        by_problem = {str(r["problem_id"]): r for r in _report(cfg, "--by", "problem")}
        assert by_problem["broken"]["infra_failures"] == {"server_error": ROLLOUTS}
        assert by_problem["broken"]["model_failures"] == {}
        assert by_problem["nocode"]["model_failures"] == {"no_code": ROLLOUTS}
        assert by_problem["slow"]["model_failures"] == {"timeout": ROLLOUTS}
        assert by_problem["wrong"]["model_failures"] == {"wrong_answer": ROLLOUTS}
        assert by_problem["right"]["model_failures"] == by_problem["right"]["infra_failures"] == {}
        table = rollwatch("--config", str(cfg), "report", "--format", "table").stdout
        assert "MODEL FAILED" in table
        assert "INFRA FAILED" in table
        assert "infra failed server_error 2" in table
        csv = rollwatch("--config", str(cfg), "report", "--format", "csv").stdout
        assert f"server_error={ROLLOUTS}" in csv

        key = rollwatch("--config", str(cfg), "subscribers", "add", "alice").stdout.split()[0]
        daemon = serve(cfg)
        try:
            base = f"http://127.0.0.1:{port}"

            def report() -> list[dict[str, object]] | None:
                try:
                    r = httpx.get(f"{base}/v1/report", headers={"Authorization": f"Bearer {key}"}, timeout=5)
                except httpx.HTTPError:
                    return None
                return r.json() if r.status_code == 200 else None

            rows = wait_until(report, 60, "the report over HTTP")
            assert [(r["model_failures"], r["infra_failures"]) for r in rows] == [
                (row["model_failures"], row["infra_failures"])
            ]
            page = httpx.get(f"{base}/ops/runs/{fin['run_id']}", timeout=10).text
            infra = page.split('id="infra-failures"')[1].split("</ul>")[0]
            model = page.split('id="model-failures"')[1].split("</ul>")[0]
            assert f"server_error: {ROLLOUTS}" in infra
            assert "wrong_answer" not in infra
            for cause in ("wrong_answer", "timeout", "no_code"):
                assert f"{cause}: {ROLLOUTS}" in model
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.communicate(timeout=60)
            finally:
                daemon.kill()

    def test_a_budget_cut_counts_its_never_requested_rollouts_as_infra(
        self, tmp_path: Path, scripted: tuple[str, Path]
    ) -> None:
        """A run stopped by its budget: `partial`, exit 1, and the rollouts it never
        asked for are infra failures (`budget_exhausted`) in the report by model and by
        run, never model failures."""
        base_url, _ = scripted
        cfg, _ = _setup(tmp_path, base_url)
        _partial_run(cfg, "tight")
        ((_, _, fin),) = events(tmp_path / "events.db", "RunFinished")
        assert fin["status"] == "partial"
        never = fin["failures"].get("budget_exhausted", 0)
        assert never > 0
        for by in ("model", "run"):
            (row,) = _report(cfg, "--by", by)
            infra = row["infra_failures"]
            assert isinstance(infra, dict)
            assert infra["budget_exhausted"] == never, row
            assert sum(infra.values()) == sum(fin["failures"].values())
            assert "budget_exhausted" not in row["model_failures"]  # type: ignore[operator]

    def test_a_model_never_asked_for_still_has_its_row(
        self, tmp_path: Path, scripted: tuple[str, Path]
    ) -> None:
        """A budget too small for a single rollout: the run is `partial` (exit 1), nothing
        reaches the provider, and each model still has a report row: no rollout scored,
        every planned one an infra failure (`budget_exhausted`)."""
        base_url, req_log = scripted
        cfg, _ = _setup(tmp_path, base_url)
        _partial_run(cfg, "broke")
        ((_, _, fin),) = events(tmp_path / "events.db", "RunFinished")
        assert (fin["status"], fin["failures"]) == ("partial", {"budget_exhausted": 5 * 2})
        assert req_log.read_text() == ""
        rows = _report(cfg)
        assert [(r["model"], r["rollouts"], r["infra_failures"], r["model_failures"]) for r in rows] == [
            ("m1", 0, {"budget_exhausted": 5}, {}),
            ("m2", 0, {"budget_exhausted": 5}, {}),
        ]
        assert len(_report(cfg, "--by", "run")) == 2


class TestCauses:
    """The scorers' wording mapped to a side and a cause."""

    @pytest.mark.parametrize(
        ("reason", "side", "cause"),
        [
            ("scorer error: KeyError: 'x'", "infra", "scorer_error"),
            ("sandbox error: the judge ended without a verdict (status 1)", "infra", "sandbox_error"),
            ("sandbox lost on case 2 (b)", "infra", "sandbox_error"),
            ("sandbox error: the candidate sent a garbled frame", "model", "tampered"),
            (
                "sandbox error: something other than the judge wrote on the verdict channel",
                "model",
                "tampered",
            ),
            ("tampered with the standard library: builtins.len", "model", "tampered"),
            ("checker could not start: [Errno 2]", "infra", "checker_error"),
            ("no code found", "model", "no_code"),
            ("timeout", "model", "timeout"),
            ("timeout (CPU time limit) on case 1 (a)", "model", "timeout"),
            ("memory", "model", "limit"),
            ("output limit", "model", "limit"),
            ("AssertionError", "model", "wrong_answer"),
            ("wrong answer on case 1 (a)", "model", "wrong_answer"),
            ("syntax error: invalid syntax (line 1)", "model", "wrong_answer"),
            ("", "model", "wrong_answer"),
        ],
    )
    def test_a_failed_verdict_is_the_models_unless_our_judging_broke(
        self, reason: str, side: str, cause: str
    ) -> None:
        """A verdict whose reason says the scorer, the sandbox or the checker broke is
        infra; every other failed verdict is the model's, an attack on the harness that
        the sandbox reports as its own error included."""
        assert verdict_cause(reason) == (side, cause)

    def test_unscored_rollouts_are_infra(self) -> None:
        """A final provider failure counts under its kind; no answer or no verdict at the
        run's end are infra too."""
        assert rollout_cause("failed", "rate_limited", None) == ("infra", "rate_limited")
        assert rollout_cause("requested", None, None) == ("infra", "unanswered")
        assert rollout_cause("answered", None, None) == ("infra", "unscored")
