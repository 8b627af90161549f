"""Every command of SPEC §2 driven through a real subprocess with hostile input: a config
that is wrong in every way a hand can make it, state files that are folders or FIFOs,
problem folders with links out of them, Ctrl-C in the middle of long commands, a second
daemon on the same log. Each answer is one clear line and the stated exit code (2 for
bad usage or configuration), never a traceback; an interrupted command leaves nothing
half-written. Attacks that other files already make are not repeated here
(test_config*, test_bad_input, test_cli_usage, test_cli_hostile_2026, test_ctrl_c,
test_storage_faults)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tests.helpers import make_log, rollwatch, write_config

ROOT = Path(__file__).resolve().parents[1]

SCHEDULE = (
    '[[schedules]]\nname = "s"\nprovider = "reference"\nmodels = ["reference"]\nproblem_set = "favorites"\n'
)


def _lines(done: subprocess.CompletedProcess[str], code: int) -> list[str]:
    """The stderr lines that are no structured log record, once the exit code is ``code``
    and no traceback reached the operator."""
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("{")]


# A schedule's or provider's keys as an operator might mistype them -> the text the error
# must hold (the key, and what is wrong with it).
BAD_SCHEDULES = {
    "rollouts = 0\nevery = '1h'": "schedules[0].rollouts: 0: must be at least 1",
    "rollouts = -3\nevery = '1h'": "schedules[0].rollouts: -3: must be at least 1",
    "rollouts = 99999999999999999999\nevery = '1h'": "schedules[0].rollouts",
    "rollouts = nan\nevery = '1h'": "schedules[0].rollouts: nan is not an integer",
    "rollouts = inf\nevery = '1h'": "schedules[0].rollouts: inf is not an integer",
    "rollouts = 1\nevery = '1h'\nbudget_usd = nan": "schedules[0].budget_usd",
    "rollouts = 1\nevery = '1h'\nbudget_usd = inf": "schedules[0].budget_usd",
    "rollouts = 1\nevery = '1h'\nbudget_usd = -1.0": "schedules[0].budget_usd: -1.0: must be at least 0",
    "rollouts = 1\nevery = '-1h'": "schedules[0].every: '-1h' is not a duration",
    "rollouts = 1\nevery = '0s'": "every must be at least 1s",
    "rollouts = 1\nevery = '99999999999d'": "schedules[0].every: '99999999999d' is longer than",
    "rollouts = 1\nevery = '1h'\njitter = '-5m'": "schedules[0].jitter: '-5m' is not a duration",
    "rollouts = 1\ncron = '0 0 31 2 *'": "'0 0 31 2 *' never fires",
    "rollouts = 1\ncron = '0 0 30,31 2 *'": "'0 0 30,31 2 *' never fires",
    "rollouts = 1\ncron = '0 0 31 4,6 *'": "'0 0 31 4,6 *' never fires",
    "rollouts = 1\ncron = '61 * * * *'": "schedules[0].cron: '61 * * * *' is not a crontab expression",
    "rollouts = 1\ncron = '* * *'": "schedules[0].cron: '* * *' is not a crontab expression",
    "rollouts = 1\ncron = '@reboot'": "schedules[0].cron: '@reboot' is not a crontab expression",
    "rollouts = 1\ncron = '0 3 * * *'\nevery = '1h'": "set exactly one of every",
    "rollouts = 1": "set exactly one of every",
    "rollouts = 1\ncron = '0 3 * * *'\ntimezone = '../../etc/passwd'": "is not an IANA time zone",
    "rollouts = 1\nevery = '1h'\nbogus = 1": "schedules[0].bogus: unknown key",
}


@pytest.mark.parametrize("keys", sorted(BAD_SCHEDULES))
def test_a_schedule_with_a_bad_value_is_a_config_error_naming_its_key(tmp_path: Path, keys: str) -> None:
    """Held: out of range, NaN/inf, negative or huge durations, a cron that never fires or
    is no cron, unknown keys: exit 2 naming the file and the key."""
    cfg = write_config(tmp_path, SCHEDULE + keys + "\n")
    lines = _lines(rollwatch("schedules", "list", "--config", str(cfg)), 2)
    assert lines[0] == f"error: {cfg}: invalid configuration:", lines
    assert BAD_SCHEDULES[keys] in "\n".join(lines), lines


BAD_PROVIDERS = {
    "max_concurrency = 0": "providers[1].max_concurrency: 0: must be at least 1",
    "max_concurrency = 100000000": "providers[1].max_concurrency: 100000000: must be at most",
    "requests_per_minute = -5": "providers[1].requests_per_minute: -5",
    "timeout = '0s'": "providers[1].timeout: '0s': must be more than 0s",
    "timeout = 'inf'": "providers[1].timeout: 'inf' is not a duration",
    "api_key = 'sk-INLINE-SECRET'": "providers[1].api_key: unknown key",
    "api_key_env = 'X'\napi_key_file = '/etc/hostname'": "set only one of api_key_env and api_key_file",
    "base_url = 'http://u:sk-URL-SECRET@h/v1'": "holds a user name or password",
    "[providers.prices]\n'gpt-5' = { input = nan, output = 1.0 }": "providers[1].prices.gpt-5.input",
    "[providers.prices]\n'gpt-5' = { input = 1.0 }": "providers[1].prices.gpt-5.output: required key",
}


@pytest.mark.parametrize("keys", sorted(BAD_PROVIDERS))
def test_a_provider_with_a_bad_value_is_a_config_error_that_never_shows_a_key(
    tmp_path: Path, keys: str
) -> None:
    """Held: and a key given inline (an unknown key) or in the URL is never echoed."""
    cfg = write_config(tmp_path, f'[[providers]]\nname = "o"\nkind = "openai"\n{keys}\n')
    done = rollwatch("schedules", "list", "--config", str(cfg))
    lines = _lines(done, 2)
    assert BAD_PROVIDERS[keys] in "\n".join(lines), lines
    assert "SECRET" not in done.stderr + done.stdout


@pytest.mark.parametrize("table", ["providers", "schedules", "problem_sets"])
def test_two_tables_of_one_name_are_a_config_error(tmp_path: Path, table: str) -> None:
    """Held: two providers, schedules or problem sets called alike."""
    extra = {
        "providers": '[[providers]]\nname = "reference"\nkind = "reference"\n',
        "schedules": (SCHEDULE + "rollouts = 1\nevery = '1h'\n") * 2,
        "problem_sets": f'[[problem_sets]]\nname = "favorites"\npath = "{ROOT / "config" / "problems"}"\n',
    }[table]
    cfg = write_config(tmp_path, extra)
    lines = _lines(rollwatch("schedules", "list", "--config", str(cfg)), 2)
    assert f"{table}[1].name:" in lines[-1], lines
    assert "is defined twice" in lines[-1], lines


@pytest.mark.parametrize("kind", ["folder", "fifo"])
@pytest.mark.parametrize("command", [["serve"], ["run", "s"], ["verify"], ["report"]])
def test_a_store_url_naming_a_folder_or_a_fifo_is_a_config_error(
    tmp_path: Path, kind: str, command: list[str]
) -> None:
    """Broke: serve and run said "unable to open database file" (a folder) or "disk I/O
    error" (a FIFO), exit 1; verify and report "there is no event log" (a folder)."""
    cfg = write_config(tmp_path, SCHEDULE + "rollouts = 1\nevery = '1h'\n")
    log = tmp_path / "events.db"
    if kind == "folder":
        log.mkdir()
    else:
        os.mkfifo(log)
    lines = _lines(rollwatch(*command, "--config", str(cfg), timeout=60), 2)
    assert lines[0] == f"error: {cfg}: invalid configuration:", lines
    assert lines[1].startswith(f"  store.url: 'sqlite:{log}' names"), lines
    assert ("a folder" if kind == "folder" else "no regular file") in lines[1], lines


def test_a_store_url_naming_a_file_that_is_no_database_is_one_line(tmp_path: Path) -> None:
    """Held (exit 1, as an empty file: the log may be damaged, not the configuration)."""
    cfg = write_config(tmp_path, SCHEDULE + "rollouts = 1\nevery = '1h'\n")
    (tmp_path / "events.db").write_bytes(b"garbage, not SQLite\n" * 300)
    for command in (["verify"], ["rebuild"], ["events", "tail"], ["report"], ["run", "s"]):
        lines = _lines(rollwatch(*command, "--config", str(cfg), "--log-level", "error"), 1)
        assert lines == [
            f"error: cannot {'open' if command[0] == 'run' else 'read'} the event log "
            f"{tmp_path / 'events.db'}: file is not a database"
        ], (command, lines)


def test_run_with_a_key_file_that_is_a_folder_says_what_is_wrong_with_it(tmp_path: Path) -> None:
    """Broke: "provider 'o' has no API key (set /tmp/...)": "set" a folder? Now the reason,
    as the scheduler gives it (the file cannot be read, or is not a regular file)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    cfg = write_config(
        tmp_path,
        f'[[providers]]\nname = "o"\nkind = "openai"\napi_key_file = "{keys}"\n'
        '[[schedules]]\nname = "s"\nprovider = "o"\nmodels = ["gpt-5"]\nproblem_set = "favorites"\n'
        "rollouts = 1\nevery = '1h'\n",
    )
    lines = _lines(rollwatch("run", "s", "--config", str(cfg), timeout=120), 2)
    assert lines[-1].startswith("error: schedule 's': provider 'o' has no API key (api_key_file: "), lines
    assert f"{str(keys)!r} cannot be read" in lines[-1], lines
    assert "not a regular file" in lines[-1], lines


def _problem_set(tmp_path: Path) -> Path:
    """A copy of two bundled problems (a python-function one and a stdio one)."""
    problems = tmp_path / "problems"
    for name in ("edit-distance", "dijkstra"):
        shutil.copytree(ROOT / "config" / "problems" / name, problems / name)
    return problems


def test_a_stdio_case_linked_out_of_the_problem_is_a_problem_error(tmp_path: Path) -> None:
    """Broke: tests.py linked out of the folder was refused, cases/*.in and *.out were
    read through the link (here /etc/passwd, fed to every sample and hashed into the
    problem's version); `problems check` ran them and failed the reference solution."""
    problems = _problem_set(tmp_path)
    secret = tmp_path / "outside.txt"
    secret.write_text("1 2\n")
    (problems / "dijkstra" / "cases" / "zz.in").symlink_to(secret)
    (problems / "dijkstra" / "cases" / "zz.out").symlink_to(secret)
    cfg = write_config(tmp_path, problems=str(problems))
    for command in (["problems", "list"], ["problems", "check"]):
        lines = _lines(rollwatch(*command, "--config", str(cfg), "--log-level", "error"), 2)
        assert lines == [
            f"error: {problems / 'dijkstra' / 'problem.toml'}: scorer.cases: zz.in is outside the "
            "problem's folder (a symlink out of it)"
        ], lines


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("toml", "problem.toml: not valid TOML"),
        ("binary-tests", "scorer.tests: tests.py is not UTF-8 text"),
        ("tests-linked-out", "scorer.tests: 'tests.py' is outside the problem's folder"),
        ("tests-dotdot", "scorer.tests: '../../../etc/passwd' is outside the problem's folder"),
        ("folder-linked-out", "a folder of a problem set without a problem.toml"),
    ],
)
def test_a_broken_problem_folder_is_a_problem_error(tmp_path: Path, damage: str, expected: str) -> None:
    """Held."""
    problems = _problem_set(tmp_path)
    problem = problems / "edit-distance"
    if damage == "toml":
        with (problem / "problem.toml").open("a") as f:
            f.write('title = "x\n')
    elif damage == "binary-tests":
        (problem / "tests.py").write_bytes(bytes(range(128, 256)) * 8)
    elif damage == "tests-linked-out":
        (tmp_path / "t.py").write_bytes((problem / "tests.py").read_bytes())
        (problem / "tests.py").unlink()
        (problem / "tests.py").symlink_to(tmp_path / "t.py")
    elif damage == "tests-dotdot":
        toml = problem / "problem.toml"
        toml.write_text(toml.read_text().replace('tests = "tests.py"', 'tests = "../../../etc/passwd"'))
    else:
        (problems / "etc").symlink_to("/etc")
    cfg = write_config(tmp_path, problems=str(problems))
    for command in (["problems", "list"], ["problems", "check"]):
        lines = _lines(rollwatch(*command, "--config", str(cfg), "--log-level", "error"), 2)
        assert len(lines) == 1, lines
        assert expected in lines[0], lines


def _fill(db: Path, n: int) -> None:
    """A log of ``n`` small events, appended 500 at a time (seconds to verify or rebuild)."""
    from rollwatch.events import SchedulePaused
    from rollwatch.store.sqlite import SQLiteEventStore

    async def fill() -> None:
        async with SQLiteEventStore(db) as store:
            for i in range(0, n, 500):
                await store.append(
                    f"s{i % 7}", [SchedulePaused(schedule=f"s{j}", note="x" * 200) for j in range(500)]
                )

    anyio.run(fill)


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of 300k events, made once for this module's Ctrl-C tests (each copies it)."""
    db = tmp_path_factory.mktemp("big") / "events.db"
    _fill(db, 300_000)
    return db


def _interrupted(cfg: Path, args: list[str], when: float | None = None, until: Path | None = None) -> str:
    """``rollwatch ARGS`` stopped with SIGINT (Ctrl-C) after ``when`` seconds, or once a new
    ``*.db`` appears in folder ``until``; its standard error, once it ended with 130 or 0."""
    # What this process does with SIGINT now, in case the command did not see it (CI once saw
    # three commands of this module on one xdist worker each end 0, silently, after their Ctrl-C).
    here = (signal.getsignal(signal.SIGINT), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a terminal's Ctrl-C finds a command: SIGINT neither ignored nor blocked, whatever
        # the test process inherited or was left with.
        preexec_fn=_sigint_default,
    )
    if until is not None:
        before = set(until.glob("*.db"))
        deadline = time.monotonic() + 30
        while not set(until.glob("*.db")) - before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    else:
        time.sleep(when or 1.0)
    assert proc.poll() is None, ("ended before the Ctrl-C", proc.communicate())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-3000:]
    if proc.returncode == 0 and not err:
        print(f"the command ended 0 after its Ctrl-C; this process's SIGINT handler and mask: {here}")
    return f"{proc.returncode}|{err}"


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def _copy_log(big_log: Path, tmp_path: Path) -> Path:
    cfg = write_config(tmp_path)
    shutil.copyfile(big_log, tmp_path / "events.db")
    return cfg


def test_ctrl_c_during_rebuild_leaves_the_projections_in_use_and_no_half_built_file(
    big_log: Path, tmp_path: Path
) -> None:
    """Broke: the unfinished build (``events.projections.gen/*.db``) was left behind, as large
    as the build got, until the next build; the projections in use were intact."""
    cfg = _copy_log(big_log, tmp_path)
    done = rollwatch("rebuild", "--config", str(cfg), "--log-level", "error", timeout=120)
    assert done.returncode == 0, done.stderr
    link = tmp_path / "events.projections.db"
    in_use = link.resolve()
    gen = tmp_path / "events.projections.gen"
    out = _interrupted(cfg, ["rebuild", "--log-level", "error"], until=gen)
    assert out.split("|")[0] == "130", out
    assert out.endswith("interrupted\n"), out
    assert link.resolve() == in_use
    assert sorted(gen.glob("*.db")) == [in_use], "a half-built file was left"
    assert rollwatch("report", "--config", str(cfg)).returncode == 0


def test_ctrl_c_during_verify_and_tail_f_exits_quietly_leaving_the_log_as_it_was(
    big_log: Path, tmp_path: Path
) -> None:
    """Held: verify ends with 130 and "interrupted", ``events tail -f`` (ended by Ctrl-C as
    a rule) with 0 and nothing on standard error; the log's bytes are unchanged."""
    cfg = _copy_log(big_log, tmp_path)
    before = (tmp_path / "events.db").read_bytes()
    out = _interrupted(cfg, ["verify", "--log-level", "error"], when=1.5)
    assert out.split("|")[0] == "130", out
    assert out.endswith("interrupted\n"), out
    out = _interrupted(cfg, ["events", "tail", "-f", "--log-level", "error"], when=3.0)
    assert out == "0|", out
    assert (tmp_path / "events.db").read_bytes() == before


def test_ctrl_c_during_export_leaves_the_previous_export_whole(tmp_path: Path) -> None:
    """Held: an export interrupted at any moment leaves the folder's files as a whole
    export wrote them (the same names), no temporary file; interrupted while it wrote, also
    its mark, which the next export, run to its end, removes."""
    cfg = write_config(tmp_path)
    make_log(tmp_path / "events.db")
    export = tmp_path / "export"
    assert rollwatch("publish", "export", str(export), "--config", str(cfg)).returncode == 0
    before = [f.name for f in export.iterdir()]
    for when in (0.3, 0.8, 1.2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "publish", "export", str(export)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(when)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, 130, -signal.SIGINT), err
        assert "Traceback" not in err, err
        left = sorted(f.name for f in export.iterdir())
        # Interrupted while it wrote (a loaded machine: it had started by then), an export
        # leaves its mark, by design: the next one knows the folder was left mid-way (and
        # `audit` that an export is under way). No temporary file, nothing else.
        if proc.returncode != 0:
            left = [n for n in left if n != ".export-in-progress"]
        assert left == sorted(before), when
    again = rollwatch("publish", "export", str(export), "--config", str(cfg))
    assert again.returncode == 0, again.stderr
    assert sorted(f.name for f in export.iterdir()) == sorted(before)


def test_export_to_a_read_only_filesystem_is_one_line(tmp_path: Path) -> None:
    """Held (a read-only tmpfs; as root, modes alone do not refuse)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cfg = write_config(tmp_path)
        make_log(tmp_path / "events.db")
        lines = _lines(rollwatch("publish", "export", str(ro / "out"), "--config", str(cfg)), 2)
        assert lines == [f"error: {ro / 'out'}: cannot write the export: Read-only file system"], lines
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _healthy(port: int, proc: subprocess.Popen[str]) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not answer /healthz")


def test_a_second_serve_on_the_same_sqlite_log_is_refused(tmp_path: Path) -> None:
    """Broke: a second ``serve`` on another port (another config naming the same log) ran
    beside the first: two leaders of a log that has one by construction, both firing every
    schedule and resuming the same runs. Now exit 2 naming the first; once it has
    stopped, a new serve starts."""
    port_a, port_b = _free_port(), _free_port()
    cfg_a = write_config(tmp_path, f'[server]\nlisten = "127.0.0.1:{port_a}"\n')
    cfg_b = tmp_path / "other.toml"
    cfg_b.write_text(cfg_a.read_text().replace(str(port_a), str(port_b)))
    first = _serve(cfg_a)
    try:
        _healthy(port_a, first)
        second = _serve(cfg_b)
        try:
            _, err = second.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            second.send_signal(signal.SIGTERM)
            second.communicate(timeout=30)
            raise AssertionError("a second serve ran on the same log") from None
        lines = _lines(subprocess.CompletedProcess([], second.returncode, "", err), 2)
        assert lines == [
            f"error: another `rollwatch serve` (pid {first.pid}) already serves the log "
            f"{tmp_path / 'events.db'} (it holds {tmp_path / 'events.db.serve.lock'}); one daemon per "
            "SQLite log: stop that one first, or move to PostgreSQL for several (README, Moving to PostgreSQL)"
        ], lines
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0
    again = _serve(cfg_b)
    try:
        _healthy(port_b, again)
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=60)


@pytest.mark.parametrize("after", [0.3, 1.0, 2.5])
def test_sigterm_while_serve_starts_stops_it_at_once_without_a_traceback(
    tmp_path: Path, after: float
) -> None:
    """Held: before Python's handler is in, the signal's default (systemd counts a SIGTERM
    death clean); after, a clean stop with 0."""
    cfg = write_config(tmp_path, f'[server]\nlisten = "127.0.0.1:{_free_port()}"\n')
    proc = _serve(cfg)
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode in (0, -signal.SIGTERM), err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def test_ctrl_c_during_migrate_leaves_a_copy_that_a_second_migrate_finishes(
    big_log: Path, tmp_path: Path
) -> None:
    """Held: 130 and "interrupted"; the events copied so far are whole batches (of the
    same seq, id and hash), and ``migrate`` run again copies the rest and verifies."""
    from tests.pg import scratch_database

    cfg = _copy_log(big_log, tmp_path)

    async def main() -> None:
        async with scratch_database() as url:
            out = await anyio.to_thread.run_sync(
                lambda: _interrupted(cfg, ["migrate", "--to", url, "--log-level", "error"], when=2.5)
            )
            assert out.split("|")[0] == "130", out
            assert out.endswith("interrupted\n"), out
            again = await anyio.to_thread.run_sync(
                lambda: rollwatch("--config", str(cfg), "migrate", "--to", url, timeout=300)
            )
            assert again.returncode == 0, again.stderr[-3000:]
            assert "the PostgreSQL log verifies and ends with the same hash" in again.stdout, again.stdout
            pg_cfg = tmp_path / "pg.toml"
            pg_cfg.write_text(f'[store]\nurl = "{url}"\nprojections = "{tmp_path / "pg.db"}"\n')
            ver = await anyio.to_thread.run_sync(
                lambda: rollwatch("--config", str(pg_cfg), "verify", timeout=300)
            )
            assert ver.returncode == 0, ver.stderr[-3000:]
            assert "ok: 300000 events" in ver.stdout, ver.stdout

    anyio.run(main)


def test_problems_check_on_a_terminal_shows_progress(tmp_path: Path) -> None:
    """Broke: `problems check` printed nothing until every reference solution had run (6 s
    for the 10 bundled problems on two cores, minutes for a HumanEval set). On a terminal it
    now draws a progress line per set; off one (this test's stdout) it stays silent."""
    import pty

    cfg = write_config(tmp_path)
    main, tty = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rollwatch",
                "--config",
                str(cfg),
                "problems",
                "check",
                "--log-level",
                "error",
            ],
            stdout=subprocess.PIPE,
            stderr=tty,
            text=True,
        )
        os.close(tty)
        out, _ = proc.communicate(timeout=300)
        seen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
    assert proc.returncode == 0, (out, seen)
    text = seen.decode(errors="replace")
    assert "Traceback" not in text, text
    assert "\rcheck favorites [" in text, text
    assert "10/10" in text, text
    assert "\r" not in out, out


def _on_a_terminal(cfg: Path, *args: str, timeout: float = 300) -> tuple[int, str, str]:
    """``rollwatch ARGS`` with its standard error on a pseudo-terminal: (status, stdout,
    what the terminal showed)."""
    import pty
    import threading

    main, tty = pty.openpty()
    seen: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), *args, "--log-level", "error"],
            stdout=subprocess.PIPE,
            stderr=tty,
            text=True,
        )
        os.close(tty)
        out, _ = proc.communicate(timeout=timeout)
        reader.join(timeout=5)
    finally:
        os.close(main)
    return proc.returncode, out, b"".join(seen).decode(errors="replace")


def test_rescore_on_a_terminal_shows_progress(tmp_path: Path) -> None:
    """Broke: `rescore` judged every archived answer again in the sandbox (thousands, after
    a problem's tests changed) with nothing on the terminal until the end."""
    problems = _problem_set(tmp_path)
    cfg = write_config(tmp_path, SCHEDULE + "rollouts = 2\nevery = '1h'\n", problems=str(problems))
    done = rollwatch("run", "s", "--config", str(cfg), "--log-level", "error", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with (problems / "edit-distance" / "tests.py").open("a") as f:
        f.write("\n# a new version of the tests\n")
    status, out, shown = _on_a_terminal(cfg, "rescore")
    assert status == 0, (out, shown)
    assert "Traceback" not in shown, shown
    assert "\rrescore [" in shown, shown
    assert "2/2" in shown, shown
    assert "rescore " in out, out
