"""``rollwatch run`` as a user runs it: resuming after a kill, and refusing what a
provider cannot serve (issue 17: never paying twice from the command line)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from rollwatch.config import load_config
from rollwatch.daemon import open_services
from rollwatch.runs import Run
from tests.helpers import rollwatch, write_config
from tests.test_daemon import ROOT, config, events, one_problem, wait_until

ENV = {"FAKE_PROVIDER_KEY": "sk-test-secret-123"}


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def held_provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The loopback provider, answering the first 5 requests and holding the rest
    until ``requests.jsonl.release`` exists; yields (base_url, request log)."""
    port_file, log = tmp_path / "port", tmp_path / "requests.jsonl"
    log.touch()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_provider.py"), str(port_file), str(log), "0.02", "5"]
    )
    try:
        port = wait_until(lambda: port_file.exists() and port_file.read_text(), 20, "the fake provider")
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        proc.kill()
        proc.wait()


class TestResume:
    def test_a_killed_run_resumes_and_the_provider_serves_each_rollout_once(
        self, tmp_path: Path, held_provider: tuple[str, Path]
    ) -> None:
        """`rollwatch run` killed with SIGKILL mid-run, then run again: the second
        command resumes the same run, and the provider answered exactly as many
        requests as the run has rollouts (none answered twice, none paid twice)."""
        base_url, req_log = held_provider
        cfg = config(tmp_path, base_url, rollouts=2)
        db = tmp_path / "events.db"
        first = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "run", "fake-often"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **ENV},
        )
        try:
            # Five answered and recorded; the rest held at the provider, unanswered.
            wait_until(
                lambda: len(_lines(req_log)) == 5 and len(events(db, "RolloutResponded")) == 5,
                60,
                "five answers recorded",
            )
            first.send_signal(signal.SIGKILL)
        finally:
            first.kill()
            first.communicate()
        assert first.returncode == -signal.SIGKILL
        assert not events(db, "RunFinished")
        (tmp_path / "requests.jsonl.release").touch()

        again = rollwatch("--config", str(cfg), "run", "fake-often", env=ENV, timeout=120)
        assert again.returncode == 0, again.stderr
        started = events(db, "RunStarted")
        assert len(started) == 1, "the second command started a new run instead of resuming"
        run_id = started[0][2]["run_id"]
        assert f"resuming run {run_id}" in again.stderr
        total = started[0][2]["rollouts"] * len(started[0][2]["problems"]) * len(started[0][2]["models"])
        finished = events(db, "RunFinished")
        assert [f[2]["status"] for f in finished] == ["completed"]
        assert finished[0][2]["run_id"] == run_id
        assert len(_lines(req_log)) == total
        answered = Counter(d["rollout_id"] for _, _, d in events(db, "RolloutResponded"))
        assert len(answered) == total
        assert set(answered.values()) == {1}
        scored = Counter(d["rollout_id"] for _, _, d in events(db, "RolloutScored"))
        assert len(scored) == total
        assert set(scored.values()) == {1}

    def _unfinished(self, tmp_path: Path) -> tuple[Path, str]:
        """A config on the reference provider (one bundled problem: the ten cost 15 s of
        scoring a run) and a run of its schedule started and never driven (as after a crash
        before its first request)."""
        cfg = write_config(
            tmp_path,
            '[[schedules]]\nname = "ref"\nprovider = "reference"\nmodels = ["reference"]\n'
            'problem_set = "favorites"\nrollouts = 1\nevery = "1h"\n',
            problems=str(one_problem(tmp_path)),
        )

        async def start() -> str:
            conf = load_config(str(cfg))
            async with open_services(conf) as svc:
                run = await Run.start(svc, conf.schedule("ref"), trigger="manual")
                return run.run_id

        return cfg, anyio.run(start)

    def test_run_resumes_the_unfinished_run_and_new_starts_another(self, tmp_path: Path) -> None:
        """With an unfinished run of the schedule, `run` finishes that run (no second
        RunStarted); `--new` starts a second run and leaves nothing unfinished behind it."""
        cfg, run_id = self._unfinished(tmp_path)
        db = tmp_path / "events.db"
        res = rollwatch("--config", str(cfg), "run", "ref")
        assert res.returncode == 0, res.stderr
        assert [d["run_id"] for _, _, d in events(db, "RunStarted")] == [run_id]
        assert [(d["run_id"], d["status"]) for _, _, d in events(db, "RunFinished")] == [
            (run_id, "completed")
        ]
        again = rollwatch("--config", str(cfg), "run", "ref")
        assert again.returncode == 0, again.stderr
        assert len(events(db, "RunStarted")) == 2, "a finished run is never resumed"

    def test_new_starts_a_run_beside_the_unfinished_one(self, tmp_path: Path) -> None:
        """`run --new` does not touch the unfinished run: a second run starts and ends."""
        cfg, run_id = self._unfinished(tmp_path)
        db = tmp_path / "events.db"
        res = rollwatch("--config", str(cfg), "run", "ref", "--new")
        assert res.returncode == 0, res.stderr
        runs = [d["run_id"] for _, _, d in events(db, "RunStarted")]
        assert len(runs) == 2
        assert runs[0] == run_id
        assert [d["run_id"] for _, _, d in events(db, "RunFinished")] == [runs[1]]

    def test_other_options_than_the_unfinished_runs_are_bad_usage(self, tmp_path: Path) -> None:
        """`run --rollouts 4` while a 1-rollout run is unfinished: exit 2 naming the run
        and `--new`; nothing is appended."""
        cfg, run_id = self._unfinished(tmp_path)
        db = tmp_path / "events.db"
        before = len(events(db))
        res = rollwatch("--config", str(cfg), "run", "ref", "--rollouts", "4")
        assert res.returncode == 2
        assert run_id in res.stderr
        assert "--new" in res.stderr
        assert "Traceback" not in res.stderr
        assert len(events(db)) == before


@pytest.fixture
def fake_provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The loopback provider (lists m1 and m2); yields (base_url, request log)."""
    port_file, log = tmp_path / "port", tmp_path / "requests.jsonl"
    log.touch()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_provider.py"), str(port_file), str(log)]
    )
    try:
        port = wait_until(lambda: port_file.exists() and port_file.read_text(), 20, "the fake provider")
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        proc.kill()
        proc.wait()


class TestModelsAProviderCannotServe:
    def test_the_reference_provider_serves_only_reference(self, tmp_path: Path) -> None:
        """`run --models gpt-5` on the reference provider: exit 2 naming what it
        serves, and the log gets nothing (no "reference / gpt-5 100%" forever)."""
        cfg = write_config(
            tmp_path,
            '[[schedules]]\nname = "ref"\nprovider = "reference"\nmodels = ["reference"]\n'
            'problem_set = "favorites"\nrollouts = 1\nevery = "1h"\n',
        )
        res = rollwatch("--config", str(cfg), "run", "ref", "--models", "gpt-5")
        assert res.returncode == 2, res.stderr
        assert "cannot serve gpt-5" in res.stderr
        assert "serves: reference" in res.stderr
        assert "Traceback" not in res.stderr
        assert events(tmp_path / "events.db") == []

    def test_a_model_missing_from_the_providers_list_is_refused(
        self, tmp_path: Path, fake_provider: tuple[str, Path]
    ) -> None:
        """An OpenAI-compatible host lists m1 and m2 at GET /models: `--models m1,m3`
        is exit 2 naming m3 and the listed models; no rollout is requested."""
        base_url, req_log = fake_provider
        cfg = config(tmp_path, base_url)
        res = rollwatch("--config", str(cfg), "run", "fake-often", "--models", "m1,m3", env=ENV)
        assert res.returncode == 2, res.stderr
        assert "cannot serve m3" in res.stderr
        assert "its model list" in res.stderr
        assert "m1, m2" in res.stderr
        assert "sk-test-secret-123" not in res.stderr + res.stdout
        assert events(tmp_path / "events.db") == []
        assert _lines(req_log) == []

    def test_without_a_model_list_the_configured_models_decide(
        self, tmp_path: Path, fake_provider: tuple[str, Path]
    ) -> None:
        """A host whose model list cannot be read (404 here): only the models the
        configuration names for the provider are accepted; the message says why."""
        base_url, _req_log = fake_provider
        cfg = config(tmp_path, base_url.replace("/v1", "/nowhere"))
        res = rollwatch("--config", str(cfg), "run", "fake-often", "--models", "m2", env=ENV)
        assert res.returncode == 2, res.stderr
        assert "cannot serve m2" in res.stderr
        assert "configuration" in res.stderr
        assert "serves: m1" in res.stderr
        assert events(tmp_path / "events.db") == []
