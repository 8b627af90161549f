"""A provider disabled by a rejected key is tried again when one of its schedules next
fires, without a restart: a real ``rollwatch serve``, the loopback provider of
``tests/fake_provider.py`` (it refuses the key ``sk-rejected`` with 401 and counts each
refusal), the key in an ``api_key_file`` the test replaces. A batch schedule the same way
against the loopback batch server (``tests/providers/batch_server.py``, run in a thread
of its own), and ``rollwatch schedules trigger`` as the operator's "try now"."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio.from_thread
import httpx
import pytest

from tests.providers.batch_server import batch_provider
from tests.test_daemon import _provider, events
from tests.test_schedules_over_time import serving, write_config


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    yield from _provider(tmp_path, 0.05)


def _config(tmp_path: Path, base_url: str, key_file: Path, rollouts: int) -> Path:
    return write_config(
        tmp_path,
        "[[schedules]]\n"
        'name = "often"\nprovider = "fake"\nmodels = ["m1"]\nproblem_set = "favorites"\n'
        f'rollouts = {rollouts}\nevery = "2s"\n',
        extra=(
            f'[[providers]]\nname = "fake"\nkind = "openai"\nbase_url = "{base_url}"\n'
            f'api_key_file = "{key_file}"\nmax_concurrency = 4\nmax_attempts = 2\n'
        ),
    )


def _url(cfg: Path, path: str) -> str:
    listen = next(line for line in cfg.read_text().splitlines() if line.startswith("listen"))
    return "http://" + listen.split('"')[1] + path


def _healthz(cfg: Path) -> int:
    try:
        return httpx.get(_url(cfg, "/healthz"), timeout=5).status_code
    except httpx.HTTPError:
        return 0


def _gauge(cfg: Path, provider: str) -> float | None:
    """The ``rollwatch_provider_disabled`` gauge of ``provider`` (None: not scraped)."""
    try:
        text = httpx.get(_url(cfg, "/metrics"), timeout=5).text
    except httpx.HTTPError:
        return None
    m = re.search(rf'^rollwatch_provider_disabled{{provider="{provider}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def _agree(cfg: Path, provider: str, disabled: bool) -> bool:
    """/healthz and the ``disabled`` gauge both say ``disabled``."""
    return _healthz(cfg) == (503 if disabled else 200) and _gauge(cfg, provider) == float(disabled)


def _rejected(log: Path) -> int:
    path = Path(f"{log}.rejected")
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_replaced_key_file_enables_the_provider_at_the_next_fire(
    tmp_path: Path, provider: tuple[str, Path]
) -> None:
    """The key file holds a key the provider refuses: the first run ends ``partial``, the
    provider is disabled, /healthz degraded. The operator replaces the file; at the next
    fire the key is read anew, its first request is answered, the provider is enabled
    again (INFO ``provider_enabled`` saying why it had been disabled), /healthz is ok and
    the run completes, with no restart. Before, every later run ended at once with
    ``provider_failed`` until the daemon restarted."""
    url, log = provider
    key = tmp_path / "key"
    key.write_text("sk-rejected\n")
    cfg = _config(tmp_path, url, key, rollouts=4)
    with serving(cfg) as d:
        first = d.until(lambda: d.events("RunFinished"), "the first run to end")
        assert first[0][2]["status"] == "partial", first
        d.until(lambda: _healthz(cfg) == 503, "/healthz degraded while disabled")
        answered = len(log.read_text().splitlines())
        key.write_text("sk-good-key-0123456789\n")
        d.until(
            lambda: any(r[2]["status"] == "completed" for r in d.events("RunFinished")),
            "a run to complete after the key was replaced",
        )
        assert len(log.read_text().splitlines()) >= answered + 4
        d.until(lambda: _healthz(cfg) == 200, "/healthz ok once enabled")
        text = d.stop()
    assert answered == 0
    enabled = [x for x in text.splitlines() if "provider_enabled" in x]
    assert len(enabled) == 1, text[-3000:]
    assert "Incorrect API key" in enabled[0], enabled
    # What the log says of the runs while disabled did not change.
    failed = events(tmp_path / "events.db", "RolloutFailed")
    assert failed
    assert all(f[2]["kind"] == "auth" for f in failed)


def test_a_key_that_stays_rejected_costs_one_request_per_fire(
    tmp_path: Path, provider: tuple[str, Path]
) -> None:
    """A key the provider keeps refusing, runs of 12 rollouts firing every 2 s: after the
    first run (which may have had its 4 concurrent requests in flight when the 401 came),
    each run sends exactly one request (its first rollout; the others wait for its answer
    and are not requested), each refusal is one WARNING ``provider_still_disabled``, and
    the provider counts exactly the requests the log records. Before, a disabled provider
    was never tried again: no run after the first sent anything."""
    url, log = provider
    key = tmp_path / "key"
    key.write_text("sk-rejected\n")
    cfg = _config(tmp_path, url, key, rollouts=12)
    with serving(cfg) as d:
        d.until(lambda: len(d.events("RunFinished")) >= 4, "four runs to end", seconds=90)
        text = d.stop()
    db = tmp_path / "events.db"
    started = [s[2]["run_id"] for s in events(db, "RunStarted")]
    finished = events(db, "RunFinished")
    assert len(finished) == len(started), "a run was left unfinished"
    run_of = {r[2]["rollout_id"]: r[2]["run_id"] for r in events(db, "RolloutRequested")}
    per_run = Counter(run_of[f[2]["rollout_id"]] for f in events(db, "RolloutFailed"))
    assert len(events(db, "RolloutRequested")) == sum(per_run.values())  # every request refused
    sent = [per_run[run] for run in started]
    assert 1 <= sent[0] <= 4, sent
    assert sent[1:] == [1] * (len(started) - 1), sent
    assert _rejected(log) == sum(sent)  # counted at the provider: nothing unrecorded
    assert log.read_text() == ""
    for _, _, f in finished:
        assert f["status"] == "partial", f
        assert sum(f["failures"].values()) == 12, f
    still = [x for x in text.splitlines() if "provider_still_disabled" in x]
    assert len(still) == len(started) - 1, text[-3000:]
    assert all("Incorrect API key" in x for x in still), still
    assert text.count("provider disabled") == 1, text[-3000:]


def test_a_malformed_key_file_keeps_the_provider_disabled_and_says_why(
    tmp_path: Path, provider: tuple[str, Path]
) -> None:
    """The key file holding a malformed key (a space inside) when a fire tries the key
    again: nothing is sent, the provider stays disabled (/healthz degraded), and each
    fire's WARNING names the file."""
    url, log = provider
    key = tmp_path / "key"
    key.write_text("sk-rejected\n")
    cfg = _config(tmp_path, url, key, rollouts=2)

    def still(text: str) -> list[str]:
        return [x for x in text.splitlines() if "provider_still_disabled" in x]

    with serving(cfg) as d:
        d.until(lambda: d.events("RunFinished"), "the first run to end")
        key.write_text("sk bad key\n")
        d.until(lambda: any("api_key_file" in x for x in still(d.err.read_text())), "the key read anew")
        rejected, runs = _rejected(log), len(d.events("RunFinished"))
        d.until(lambda: len(d.events("RunFinished")) >= runs + 2, "two more runs")
        assert _rejected(log) == rejected  # nothing sent with the malformed key
        assert _healthz(cfg) == 503
        text = d.stop()
    lines = still(text)
    first = next(i for i, x in enumerate(lines) if "api_key_file" in x)
    assert len(lines[first:]) >= 2, lines
    assert all("api_key_file" in x and str(key) in x for x in lines[first:]), lines


def test_a_batch_schedule_tries_a_replaced_key_at_its_next_fire(tmp_path: Path) -> None:
    """A batch schedule (``batch = true``) whose key the provider refuses: the first run's
    batch create gets a 401, the provider is disabled (/healthz degraded, gauge 1). At
    the next fires, while the key is still refused, each run's one try (the batch's first
    request) is refused again: one request and one WARNING per fire. The operator replaces
    the key file; the next fire's batch is the try, answered: INFO ``provider_enabled``, a
    run completes, /healthz ok, gauge 0. Before, a batch run never tried the key again:
    every later run ended at once with ``provider_failed`` until a restart."""
    key = tmp_path / "key"
    key.write_text("sk-rejected\n")
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(
            batch_provider("openai", lambda b, i, c: "ok", polls_in_progress=0)
        ) as server,
    ):
        server.rejected_key = "sk-rejected"
        cfg = write_config(
            tmp_path,
            "[[schedules]]\n"
            'name = "nightly"\nprovider = "acme"\nmodels = ["m1"]\nproblem_set = "favorites"\n'
            'rollouts = 2\nevery = "2s"\nbatch = true\n',
            extra=(
                f'[[providers]]\nname = "acme"\nkind = "openai"\nbase_url = "{server.url}"\n'
                f'api_key_file = "{key}"\nmax_attempts = 2\nbackoff_base = "10ms"\n'
                'batch_poll = "20ms"\nbatch_linger = "50ms"\n'
            ),
        )
        with serving(cfg) as d:
            d.until(lambda: len(d.events("RunFinished")) >= 3, "three runs to end with the key refused")
            d.until(lambda: _agree(cfg, "acme", True), "/healthz and the gauge to say disabled")
            runs, refused = len(d.events("RunStarted")), server.rejections
            assert refused <= runs, (refused, runs)  # one request per fire, at most
            assert server.creates == 0
            key.write_text("sk-good-key-0123456789\n")
            d.until(
                lambda: any(r[2]["status"] == "completed" for r in d.events("RunFinished")),
                "a batch run to complete after the key was replaced",
                seconds=30,
            )
            d.until(lambda: _agree(cfg, "acme", False), "/healthz and the gauge to say enabled")
            text = d.stop()
    still = [x for x in text.splitlines() if "provider_still_disabled" in x]
    assert still, text[-3000:]
    assert all("Incorrect API key" in x for x in still), still
    enabled = [x for x in text.splitlines() if "provider_enabled" in x]
    assert len(enabled) == 1, text[-3000:]
    assert text.count("provider disabled") == 1, text[-3000:]


def _trigger(cfg: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "schedules", "trigger", name],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _listed(cfg: Path) -> list[dict[str, str]]:
    """``rollwatch schedules list --json``."""
    out = subprocess.run(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "schedules", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_manual_trigger_tries_a_disabled_providers_key_now(
    tmp_path: Path, provider: tuple[str, Path]
) -> None:
    """``rollwatch schedules trigger`` for a schedule whose provider is disabled is the
    operator saying "try now": the triggered run's first request is the try. Key still
    refused: the trigger is answered in the log (a run of it, ``trigger_seq``), the
    command says in one line that the provider is still disabled and why, and exits 1.
    The key fixed but the provider down (503): the same, naming the 503, and so does the
    WARNING (it named the old 401 before). The provider up: the run goes on and completes,
    the command exits 0. /healthz and the gauge follow each step. Before, the trigger was
    refused (exit 2) for as long as the provider was disabled."""
    url, log = provider
    key = tmp_path / "key"
    key.write_text("sk-rejected\n")
    cfg = _config(tmp_path, url, key, rollouts=3).resolve()
    # A cron schedule, not ``every``: an ``every`` schedule that never ran fires at start,
    # and under load that fire came before the first trigger (a run of trigger_seq 0 beside
    # the two triggered ones, in CI once).
    text = cfg.read_text().replace('every = "2s"', 'cron = "0 0 1 1 *"')
    cfg.write_text(text)
    with serving(cfg) as d:
        d.until(lambda: _healthz(cfg) == 200, "the daemon to serve")
        first = _trigger(cfg, "often")
        assert first.returncode == 0, first.stderr
        d.until(lambda: d.events("RunFinished"), "the first run to end")
        d.until(lambda: _agree(cfg, "fake", True), "/healthz and the gauge to say disabled")

        # Disabled, the schedule still fires (each fire tries the key): list shows when.
        (row,) = _listed(cfg)
        assert row["state"] == "cannot run", row
        assert row["next"] != "-", row
        assert "tried again at the next fire" in row["why"], row
        assert "Incorrect API key" in row["why"], row

        again = _trigger(cfg, "often")  # the key still refused
        assert again.returncode == 1, (again.stdout, again.stderr)
        assert "still disabled" in again.stderr, again.stderr
        assert "Incorrect API key" in again.stderr, again.stderr
        assert len(again.stderr.strip().splitlines()) == 1, again.stderr
        seqs = [e[0] for e in d.events("ScheduleTriggered")]
        started = [e[2] for e in d.events("RunStarted")]
        assert [s["trigger_seq"] for s in started] == seqs, (started, seqs)  # each trigger answered
        assert _agree(cfg, "fake", True)

        key.write_text("sk-good-key-0123456789\n")
        down = Path(f"{log}.down")
        down.touch()
        outage = _trigger(cfg, "often")
        assert outage.returncode == 1, (outage.stdout, outage.stderr)
        assert "503" in outage.stderr, outage.stderr
        assert "Incorrect API key" not in outage.stderr, outage.stderr
        assert _agree(cfg, "fake", True)

        down.unlink()
        ok = _trigger(cfg, "often")
        assert ok.returncode == 0, (ok.stdout, ok.stderr)
        assert "enabled again" in ok.stdout, ok.stdout
        d.until(
            lambda: any(r[2]["status"] == "completed" for r in d.events("RunFinished")),
            "the triggered run to complete",
        )
        d.until(lambda: _agree(cfg, "fake", False), "/healthz and the gauge to say enabled")
        text = d.stop()
    still = [x for x in text.splitlines() if "provider_still_disabled" in x]
    assert len(still) == 2, still
    assert "Incorrect API key" in still[0], still
    assert "503" in still[1], still
    assert "Incorrect API key" not in still[1], still
    assert len([x for x in text.splitlines() if "provider_enabled" in x]) == 1, text[-3000:]
    assert len(Path(f"{log}.down.seen").read_text().splitlines()) == 2  # max_attempts, no more


def test_a_manual_trigger_of_a_batch_schedule_tries_the_key_now(tmp_path: Path) -> None:
    """``schedules trigger`` on a batch schedule (``batch = true``) whose provider is
    disabled: the triggered run's batch create is the try. Key still refused: exit 1, one
    line naming the refusal, no batch created. Key replaced: exit 0 ("enabled again"), the
    batch is created and the run completes, /healthz and the gauge say enabled."""
    key = tmp_path / "key"
    key.write_text("sk-rejected\n")
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(
            batch_provider("openai", lambda b, i, c: "ok", polls_in_progress=0)
        ) as server,
    ):
        server.rejected_key = "sk-rejected"
        cfg = write_config(
            tmp_path,
            "[[schedules]]\n"
            'name = "nightly"\nprovider = "acme"\nmodels = ["m1"]\nproblem_set = "favorites"\n'
            'rollouts = 2\nevery = "24h"\nbatch = true\n',
            extra=(
                f'[[providers]]\nname = "acme"\nkind = "openai"\nbase_url = "{server.url}"\n'
                f'api_key_file = "{key}"\nmax_attempts = 2\nbackoff_base = "10ms"\n'
                'batch_poll = "20ms"\nbatch_linger = "50ms"\n'
            ),
        ).resolve()
        with serving(cfg) as d:
            # An ``every`` schedule fires at start: that run meets the refused key.
            d.until(lambda: d.events("RunFinished"), "the first run to end")
            d.until(lambda: _agree(cfg, "acme", True), "/healthz and the gauge to say disabled")

            again = _trigger(cfg, "nightly")
            assert again.returncode == 1, (again.stdout, again.stderr)
            assert "still disabled" in again.stderr, again.stderr
            assert "Incorrect API key" in again.stderr, again.stderr
            assert len(again.stderr.strip().splitlines()) == 1, again.stderr
            assert server.creates == 0

            key.write_text("sk-good-key-0123456789\n")
            ok = _trigger(cfg, "nightly")
            assert ok.returncode == 0, (ok.stdout, ok.stderr)
            assert "enabled again" in ok.stdout, ok.stdout
            d.until(
                lambda: any(r[2]["status"] == "completed" for r in d.events("RunFinished")),
                "the triggered batch run to complete",
                seconds=30,
            )
            assert server.creates >= 1
            d.until(lambda: _agree(cfg, "acme", False), "/healthz and the gauge to say enabled")
            d.stop()
