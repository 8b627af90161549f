"""Bad input an operator or a file supplies: one clear line, the right exit code, no traceback.

Each case runs the real command (``python -m rollwatch``) on a real SQLite log; each was a
Python traceback (or, for Ctrl-C in a rebuild, a segmentation fault) before its fix.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rollwatch._sqlite import ThreadConnection
from tests.helpers import make_log, rollwatch, write_config

SCHEDULE = (
    '[[schedules]]\nname = "s"\nprovider = "reference"\nmodels = ["reference"]\nproblem_set = "favorites"\n'
)


def _clean(proc: subprocess.CompletedProcess[str], code: int) -> list[str]:
    """The stderr lines that are not structured log records, after checking the exit code
    and that no traceback reached the user."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line and not line.startswith("{")]


# The config file as given -> the key the error must name. Each passed validation and
# then crashed a command: inf/nan/huge durations overflow timedelta (`schedules list`, the
# scheduler), inf money and TOML dates in params cannot be written to the log as JSON
# (the run's first append), a bad port reached asyncpg's parser or socket.connect.
BAD_CONFIGS = {
    "every-inf": (SCHEDULE + "every = inf\n", "schedules[0].every"),
    "every-nan": (SCHEDULE + "every = nan\n", "schedules[0].every"),
    "every-huge": (SCHEDULE + 'every = "99999999999999999999w"\n', "schedules[0].every"),
    "jitter-huge": (SCHEDULE + 'every = "1h"\njitter = "99999999999999w"\n', "schedules[0].jitter"),
    "budget-inf": (SCHEDULE + 'every = "1h"\nbudget_usd = inf\n', "schedules[0].budget_usd"),
    "params-date": (SCHEDULE + 'every = "1h"\nparams = { seed = 1979-05-27 }\n', "schedules[0].params"),
    "params-nan": (SCHEDULE + 'every = "1h"\nparams = { temperature = nan }\n', "schedules[0].params"),
    "embargo-inf": ("[publication]\nembargo = inf\n", "publication.embargo"),
    # Zero where only more than zero works: a release check in a busy loop, every sample
    # timed out (blamed on the model), every request or stream timed out, batches polled
    # without pause; a base URL with no host made links like "http:///feed.json".
    "release-check-0": ('[publication]\nrelease_check = "0s"\n', "publication.release_check"),
    "scoring-timeout-0": ('[scoring]\ntimeout = "0s"\n', "scoring.timeout"),
    "provider-timeout-0": (
        '[[providers]]\nname = "oa"\nkind = "openai"\ntimeout = "0s"\n',
        "providers[1].timeout",
    ),
    "batch-poll-0": (
        '[[providers]]\nname = "oa"\nkind = "openai"\nbatch_poll = "0s"\n',
        "providers[1].batch_poll",
    ),
    "stream-idle-0": (
        '[[providers]]\nname = "oa"\nkind = "openai"\nstream_idle_timeout = "0s"\n',
        "providers[1].stream_idle_timeout",
    ),
    "base-url-no-host": ('[server]\nbase_url = "http://"\n', "server.base_url"),
    "price-inf": (
        '[[providers]]\nname = "oa"\nkind = "openai"\n[providers.prices]\nm = { input = inf, output = 1.0 }\n',
        "providers[1].prices.m.input",
    ),
}


@pytest.mark.parametrize(("extra", "key"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_bad_config_value_is_a_config_error_naming_its_key(tmp_path: Path, extra: str, key: str) -> None:
    config = write_config(tmp_path, extra)
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch("schedules", "list", "--config", str(config)), 2)
    assert lines[0] == f"error: {config}: invalid configuration:", lines
    assert any(line.strip().startswith(f"{key}:") for line in lines[1:]), lines


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1:99999/db", "postgresql://u@127.0.0.1:abc/db"])
def test_a_postgres_url_with_a_bad_port_is_a_config_error(tmp_path: Path, url: str) -> None:
    config = tmp_path / "rollwatch.toml"
    config.write_text(f'[store]\nurl = "{url}"\n')
    lines = _clean(rollwatch("report", "--config", str(config)), 2)
    assert lines[-1] == "  store.url: the port must be a number up to 65535", lines


@pytest.mark.parametrize("value", ['"0s"', "inf", '"-1s"'])
def test_a_busy_timeout_of_zero_or_forever_is_a_config_error(tmp_path: Path, value: str) -> None:
    """Zero would fail every append the moment another process reads the log's lock."""
    config = tmp_path / "rollwatch.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\nbusy_timeout = {value}\n')
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch("report", "--config", str(config)), 2)
    assert any(line.strip().startswith("store.busy_timeout:") for line in lines[1:]), lines


def test_projections_that_name_a_folder_are_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "rollwatch.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\nprojections = "{tmp_path}"\n')
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch("report", "--config", str(config)), 2)
    assert lines[-1].startswith(f"  store.projections: '{tmp_path}' is a folder"), lines


def test_projections_that_cannot_be_made_are_one_line(tmp_path: Path) -> None:
    """A parent that is a file: the read models' folder cannot be made (was an OSError traceback)."""
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "rollwatch.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/events.db"\nprojections = "{tmp_path}/a-file/p.db"\n'
    )
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch("report", "--config", str(config)), 1)
    assert lines == [f"error: cannot use {tmp_path}/a-file: File exists"], lines


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\n", b"sk-SECRET\x00abc\n", b"sk-SECRET\nabc\n", "sk-SECRÉT".encode()],
    ids=["not-utf8", "nul", "two-lines", "not-ascii"],
)
def test_an_api_key_file_no_header_can_carry_is_a_missing_key(tmp_path: Path, content: bytes) -> None:
    """Not UTF-8: a UnicodeDecodeError traceback. A NUL or a line break inside: httpx
    refused each request with an error quoting the header, the key in it, into the log;
    not ASCII: a UnicodeEncodeError. Now the run does not start, and the key is not shown."""
    key = tmp_path / "key"
    key.write_bytes(content)
    config = write_config(
        tmp_path,
        f'[[providers]]\nname = "oa"\nkind = "openai"\nbase_url = "http://127.0.0.1:9"\napi_key_file = "{key}"\n'
        + SCHEDULE.replace('"reference"]', '"m"]').replace('provider = "reference"', 'provider = "oa"')
        + 'every = "1h"\n[scoring]\nrequire_isolation = false\nisolation = "none"\nworkers = 1\n',
    )
    proc = rollwatch("run", "s", "--config", str(config))
    lines = _clean(proc, 2)
    assert lines[-1].startswith(f"  api_key_file: '{key}' cannot be read, is empty, or holds spaces"), lines
    assert "SECRET" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_an_api_key_file_that_is_a_fifo_or_huge_is_a_missing_key(tmp_path: Path, kind: str) -> None:
    """A FIFO with no writer was read on the event loop, which waited forever; a file of
    gigabytes (a key file pointed at the wrong file) was read whole into memory. Now each
    is one line naming the file, exit 2, at once, and the key is not read."""
    key = tmp_path / "key"
    if kind == "fifo":
        os.mkfifo(key)
    else:
        with key.open("wb") as f:  # sparse: 8 GiB that take no disk
            f.write(b"sk-SECRET")
            f.truncate(8 << 30)
    config = write_config(
        tmp_path,
        f'[[providers]]\nname = "oa"\nkind = "openai"\nbase_url = "http://127.0.0.1:9"\napi_key_file = "{key}"\n'
        + SCHEDULE.replace('"reference"]', '"m"]').replace('provider = "reference"', 'provider = "oa"')
        + 'every = "1h"\n[scoring]\nrequire_isolation = false\nisolation = "none"\nworkers = 1\n',
    )
    proc = rollwatch("run", "s", "--config", str(config))
    lines = _clean(proc, 2)
    assert str(key) in lines[-1], lines  # named (a FIFO is no file: "has no API key (set ...)")
    assert "SECRET" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["events", "tail", "--after", "99999999999999999999999"], "Invalid value for '--after'"),
        (["audit", "--url", "http://[::1"], "error: --url 'http://[::1': give the service's address"),
        (["audit", "--url", "http://127.0.0.1:9", "--timeout", "nan"], "error: --timeout nan:"),
        (["audit", "--url", "http://127.0.0.1:9", "--timeout", "-1"], "error: --timeout -1.0:"),
    ],
    ids=["after-too-big", "url-unclosed-ipv6", "timeout-nan", "timeout-negative"],
)
def test_bad_option_values_are_bad_usage(tmp_path: Path, args: list[str], message: str) -> None:
    config = write_config(tmp_path)
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch(*args, "--config", str(config)), 2)
    assert lines[-1].startswith(message) or any(message in line for line in lines), lines


@pytest.mark.parametrize(
    "program",
    [[sys.executable, "-m", "rollwatch"], [str(Path(sys.executable).parent / "rollwatch")]],
    ids=["python-m", "console-script"],
)
def test_ctrl_c_while_the_command_loads_prints_one_line(tmp_path: Path, program: list[str]) -> None:
    """SIGINT soon after start lands while the modules are imported (before click runs the
    command): it was a KeyboardInterrupt traceback. Several moments, each checked; the later
    ones land as the finished command exits, where Python died of SIGINT with no word said."""
    config = write_config(tmp_path)
    make_log(tmp_path / "events.db")
    for delay in (0.05, 0.15, 0.25, 0.35):
        proc = subprocess.Popen(
            [*program, "schedules", "list", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        time.sleep(delay)  # the moment of the Ctrl-C is the input under test, not a wait
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if delay < 0.1 and proc.returncode != 0 and not re.search(r'File "[^"]*/rollwatch[/"]', err):
            # A loaded machine: Python itself was still starting (its `site`, `runpy`: "Could
            # not import runpy module"), no line of rollwatch had run to catch anything.
            continue
        assert "Traceback" not in err, (delay, err)
        assert "KeyboardInterrupt" not in err, (delay, err)
        if proc.returncode == -signal.SIGINT and not err and delay < 0.1:
            continue  # before the interpreter ran a line (a loaded machine): the system's default
        if proc.returncode != 0:  # 0: it had finished before the signal
            assert proc.returncode in (130, -signal.SIGINT), (delay, proc.returncode, err)
            assert err.strip().splitlines()[-1:] == ["interrupted"], (delay, proc.returncode, err)


def test_a_connection_is_closed_only_after_a_unit_cancelled_under_it_ends(tmp_path: Path) -> None:
    """Ctrl-C under asyncio.run cancels the main task natively, through the shield of
    ThreadConnection.run: the unit goes on in its thread. close() must wait for it (it
    closed the connection under it, a segmentation fault in `rollwatch rebuild`)."""
    events: list[str] = []
    started = threading.Event()

    def unit(db: object) -> None:
        started.set()
        time.sleep(0.3)
        events.append("unit ended")

    async def main() -> None:
        conn = await ThreadConnection.open(tmp_path / "x.db", [])
        task = asyncio.ensure_future(conn.run(unit))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await conn.close()
        events.append("closed")

    asyncio.run(main())
    assert events == ["unit ended", "closed"]


@pytest.mark.parametrize("timeout", ["inf", "nan", '"9999999999999w"'])
def test_a_problem_timeout_that_is_no_duration_is_a_problem_error(tmp_path: Path, timeout: str) -> None:
    """`problems check` crashed on these (OverflowError, ValueError) once a scorer used them."""
    source = Path(__file__).resolve().parents[1] / "config" / "problems" / "lis-length"
    problem = tmp_path / "problems" / "lis-length"
    shutil.copytree(source, problem)
    toml = problem / "problem.toml"
    toml.write_text(toml.read_text().replace('timeout = "10s"', f"timeout = {timeout}"))
    config = write_config(tmp_path, problems=str(tmp_path / "problems"))
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1].startswith(f"error: {toml}: scorer.timeout: "), lines


HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": "def f(x):\n",
    "entry_point": "f",
    "canonical_solution": "    return x\n",
    "test": "def check(candidate):\n    assert candidate(1) == 1\n",
}
BAD_HUMANEVAL = {
    # line -> what the error must say after "FILE:1: "
    "nested-deep": ("[" * 100_000 + "]" * 100_000, "not a JSON object: maximum recursion depth"),
    "test-syntax": (json.dumps({**HUMANEVAL, "test": "def check(:"}), "test: does not compile"),
    "test-nul": (json.dumps({**HUMANEVAL, "test": "def check(c):\x00 pass"}), "test: does not compile"),
    "test-no-check": (json.dumps({**HUMANEVAL, "test": "assert True"}), "test: defines no check"),
    "id-dots": (json.dumps({**HUMANEVAL, "task_id": "../../etc"}), "task_id: '../../etc': use letters"),
    "id-control": (json.dumps({**HUMANEVAL, "task_id": "a\x07b"}), "task_id: 'a\\x07b': use letters"),
    "id-empty": (json.dumps({**HUMANEVAL, "task_id": ""}), "task_id: '': use letters"),
    # A lone surrogate ("\\ud800" in the JSON) in the prompt: a UnicodeEncodeError traceback
    # from every command that loads the set, the daemon's start included.
    "prompt-surrogate": (
        json.dumps({**HUMANEVAL, "prompt": "def f(x):\n    '\ud800'\n"}),
        "prompt: holds '\\ud800', which is no Unicode character",
    ),
    "solution-surrogate": (
        json.dumps({**HUMANEVAL, "canonical_solution": "    return '\udcff'\n"}),
        "canonical_solution: holds '\\udcff', which is no Unicode character",
    ),
}


@pytest.mark.parametrize(("line", "message"), BAD_HUMANEVAL.values(), ids=BAD_HUMANEVAL.keys())
def test_a_bad_humaneval_line_is_a_problem_error(tmp_path: Path, line: str, message: str) -> None:
    """A RecursionError traceback, or loaded as if fine: a test that cannot run (every model
    would fail it), an id with control characters or dot-dot."""
    data = tmp_path / "he.jsonl"
    data.write_text(line + "\n")
    config = tmp_path / "rollwatch.toml"
    config.write_text(f'[[problem_sets]]\nname = "he"\nformat = "humaneval"\npath = "{data}"\n')
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1].startswith(f"error: {data}:1: {message}"), lines


def _lis_length(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the bundled ``lis-length`` problem under ``tmp_path``; (its folder, a config)."""
    problem = tmp_path / "problems" / "lis-length"
    shutil.copytree(Path(__file__).resolve().parents[1] / "config" / "problems" / "lis-length", problem)
    return problem, write_config(tmp_path, problems=str(tmp_path / "problems"))


@pytest.mark.parametrize(
    ("name", "key"), [("tests.py", "scorer.tests"), ("solution.py", "reference.solution")]
)
def test_a_problem_file_that_is_a_symlink_loop_is_a_problem_error(
    tmp_path: Path, name: str, key: str
) -> None:
    """A problem's file that is a symlink to itself: Python 3.11's ``Path.resolve`` raised
    ``RuntimeError: Symlink loop``, a traceback from every command that loads the set."""
    problem, config = _lis_length(tmp_path)
    (problem / name).unlink()
    (problem / name).symlink_to(name)
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1].startswith(f"error: {problem / 'problem.toml'}: {key}: {name!r}: cannot be resolved"), (
        lines
    )


def test_a_file_of_a_problem_folder_that_cannot_be_read_is_a_problem_error(tmp_path: Path) -> None:
    """Every file of the folder is part of the problem's version: one that cannot be read
    (here a link to ``/proc/self/mem``, which fails with EIO even for root; a file removed
    or made unreadable while the folder is read fails the same way) was an ``OSError``
    traceback."""
    problem, config = _lis_length(tmp_path)
    (problem / "data.bin").symlink_to("/proc/self/mem")
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1].startswith(f"error: {problem / 'problem.toml'}: cannot read the problem's files: "), (
        lines
    )
    assert "Input/output error" in lines[-1], lines


def test_a_file_name_that_is_not_utf8_is_part_of_the_version(tmp_path: Path) -> None:
    """A file of the folder whose name is not UTF-8 (a Latin-1 name out of an old archive):
    a UnicodeEncodeError traceback from every command that loads the set. Its name's bytes
    are hashed now: the problem loads, and renaming the file is a new version."""
    problem, config = _lis_length(tmp_path)

    def listed() -> str:
        """The version (a hash prefix) ``problems list`` shows."""
        proc = rollwatch("problems", "list", "--config", str(config))
        _clean(proc, 0)
        (version,) = [w for w in proc.stdout.split() if w.startswith("sha256:")]
        return version

    before = listed()
    name = os.fsencode(problem) + b"/caf\xe9.txt"
    with open(name, "wb") as f:
        f.write(b"data\n")
    latin = listed()
    os.rename(name, os.fsencode(problem) + b"/caf\xc3\xa9.txt")  # the same name in UTF-8
    assert len({before, latin, listed()}) == 3


def test_toml_nested_too_deep_is_a_config_or_problem_error(tmp_path: Path) -> None:
    """tomllib recurses per level: 5,000 nested arrays were a RecursionError traceback (in
    `serve`, for a problem file, the daemon's death instead of one problem set degraded)."""
    deep = "[" * 5000 + "]" * 5000
    config = tmp_path / "rollwatch.toml"
    config.write_text(f"x = {deep}\n")
    lines = _clean(rollwatch("schedules", "list", "--config", str(config)), 2)
    assert lines[-1] == "  not valid TOML: arrays or tables nested too deep", lines

    problem = tmp_path / "problems" / "lis-length"
    shutil.copytree(Path(__file__).resolve().parents[1] / "config" / "problems" / "lis-length", problem)
    toml = problem / "problem.toml"
    toml.write_text(f"tags = {deep}\n" + toml.read_text())
    config = write_config(tmp_path, problems=str(tmp_path / "problems"))
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1] == f"error: {toml}: not valid TOML: arrays or tables nested too deep", lines


def test_a_problem_set_with_no_problems_or_no_path_is_a_problem_error(tmp_path: Path) -> None:
    """An empty folder listed 0 problems (every run of it does nothing); an empty path meant
    the working directory (now a configuration error); a HumanEval id used twice said "(None and None)"."""
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tmp_path / "rollwatch.toml"
    config.write_text(f'[[problem_sets]]\nname = "e"\npath = "{empty}"\n')
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1].startswith(f"error: {empty}: holds no problems"), lines
    config.write_text('[[problem_sets]]\nname = "e"\npath = ""\n')
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    # Known from the file alone, so refused with the configuration (exit 2 as before).
    assert lines[-1] == "  problem_sets[0].path: is empty; name the problem set's folder or HumanEval file", (
        lines
    )
    data = tmp_path / "he.jsonl"
    data.write_text(json.dumps(HUMANEVAL) + "\n" + json.dumps(HUMANEVAL) + "\n")
    config.write_text(f'[[problem_sets]]\nname = "he"\nformat = "humaneval"\npath = "{data}"\n')
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1] == f"error: {data}: problem id 'HumanEval-0' is used twice", lines


def test_sighup_on_a_broken_problem_keeps_its_last_good_version_and_says_why(tmp_path: Path) -> None:
    """`serve`, then a problem's tests file turned into a symlink loop, then SIGHUP: one
    ``problem_set_invalid`` line naming the file and the key, and the set is not reloaded
    (it keeps the version it had); the daemon goes on, and the next SIGHUP, on a fixed
    folder, reloads it. Before: ``problems_reload_failed`` with a Python traceback in the
    log, every frame's local variables included."""
    from tests.test_daemon import ROOT, daemon_toml, wait_until

    problem, _ = _lis_length(tmp_path)
    cfg = tmp_path / "rollwatch.toml"
    cfg.write_text(daemon_toml(tmp_path).replace(str(ROOT / "config" / "problems"), str(problem.parent)))
    err_path = tmp_path / "serve.err"

    def log_lines() -> list[dict[str, object]]:
        return [json.loads(ln) for ln in err_path.read_text().splitlines() if ln.startswith("{")]

    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwatch", "--config", str(cfg), "serve", "--grace", "5"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(lambda: any(o["event"] == "daemon_ready" for o in log_lines()), 60, "the daemon")
        tests = problem / "tests.py"
        good = tests.read_text()
        tests.unlink()
        tests.symlink_to("tests.py")
        proc.send_signal(signal.SIGHUP)
        (invalid,) = wait_until(
            lambda: [o for o in log_lines() if o["event"] == "problem_set_invalid"],
            30,
            "the reload's refusal",
        )
        assert f"{problem / 'problem.toml'}: scorer.tests: 'tests.py': cannot be resolved" in str(
            invalid["error"]
        )
        tests.unlink()
        tests.write_text(good + "\n# strengthened\n")
        proc.send_signal(signal.SIGHUP)
        reloads = wait_until(
            lambda: [o["problem_sets"] for o in log_lines() if o["event"] == "problems_reloaded"][1:],
            30,
            "the second reload",
        )
        assert reloads == [["favorites"]]
        assert next(o["problem_sets"] for o in log_lines() if o["event"] == "problems_reloaded") == []
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    text = err_path.read_text()
    assert "exception" not in {k for o in log_lines() for k in o}, text[-3000:]
    assert "Traceback" not in text
