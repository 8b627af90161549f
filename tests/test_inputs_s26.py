"""Bad input from operators and third parties, found in session 26: each case runs the real
command (``python -m rollwatch``) and was a Python traceback, a wrong exit code or an
unbounded read before its fix. One clear line naming the file and the key, exit 2."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.helpers import make_log, rollwatch, write_config
from tests.test_bad_input import HUMANEVAL


def _clean(proc: subprocess.CompletedProcess[str], code: int) -> list[str]:
    """The stderr lines that are not structured log records, after checking the exit code
    and that no traceback reached the user."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line and not line.startswith("{")]


def _humaneval_config(tmp_path: Path, data: Path) -> Path:
    config = tmp_path / "rollwatch.toml"
    config.write_text(f'[[problem_sets]]\nname = "he"\nformat = "humaneval"\npath = "{data}"\n')
    return config


#: Python that the compiler cannot take: nested thousands deep. ``-----…1`` was a MemoryError
#: from the parser, ``1+1+…+1`` a RecursionError from the compiler: tracebacks, exit 1.
TOO_DEEP = {
    "unary": "def check(candidate):\n    x = " + "-" * 200_000 + "1\n",
    "binary": "def check(candidate):\n    x = 1" + "+1" * 200_000 + "\n",
}


@pytest.mark.parametrize("tests", TOO_DEEP.values(), ids=TOO_DEEP.keys())
def test_a_tests_file_nested_too_deep_is_a_problem_error(tmp_path: Path, tests: str) -> None:
    """A folder problem whose tests.py the compiler cannot take names the file and the key."""
    problem = tmp_path / "problems" / "edit-distance"
    shutil.copytree(Path(__file__).resolve().parents[1] / "config" / "problems" / "edit-distance", problem)
    (problem / "tests.py").write_text(tests)
    config = write_config(tmp_path, problems=str(tmp_path / "problems"))
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1] == (
        f"error: {problem / 'problem.toml'}: scorer.tests: tests.py does not compile: "
        "expressions or blocks nested too deep for the compiler"
    ), lines


@pytest.mark.parametrize("tests", TOO_DEEP.values(), ids=TOO_DEEP.keys())
def test_a_humaneval_test_nested_too_deep_is_a_problem_error(tmp_path: Path, tests: str) -> None:
    """The same for a HumanEval line's ``test``."""
    data = tmp_path / "he.jsonl"
    data.write_text(json.dumps({**HUMANEVAL, "test": tests}) + "\n")
    lines = _clean(rollwatch("problems", "list", "--config", str(_humaneval_config(tmp_path, data))), 2)
    assert lines[-1].startswith(f"error: {data}:1: test: does not compile: expressions or blocks nested"), (
        lines
    )


def test_a_damaged_humaneval_gzip_is_a_problem_error(tmp_path: Path) -> None:
    """A .jsonl.gz whose compressed data is damaged (not cut short: that was handled) raised
    zlib.error, a traceback; now the file and what is wrong with it, exit 2."""
    packed = bytearray(gzip.compress((json.dumps(HUMANEVAL) + "\n").encode() * 50))
    packed[30] ^= 0xFF
    packed[40] ^= 0xFF
    data = tmp_path / "he.jsonl.gz"
    data.write_bytes(bytes(packed))
    lines = _clean(rollwatch("problems", "list", "--config", str(_humaneval_config(tmp_path, data))), 2)
    assert lines[-1].startswith(f"error: {data}: cannot read: Error -3 while decompressing data"), lines


def test_a_humaneval_file_past_its_bound_is_refused_unread(tmp_path: Path) -> None:
    """A 100 KB gzip holding a 70 MB line (a prompt of 70 MB) loaded whole: nothing bounded a
    HumanEval file, and a 2 MB gzip of one 2 GB line took 2 GB of memory before a MemoryError
    traceback (or the OOM killer). The file is read up to its bound (64 MB decompressed)."""
    data = tmp_path / "he.jsonl.gz"
    head, tail = json.dumps({**HUMANEVAL, "prompt": "@"}).split("@")
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    with data.open("wb") as f:
        f.write(packer.compress(head.encode()))
        chunk = b"#" * 2**20
        for _ in range(70):
            f.write(packer.compress(chunk))
        f.write(packer.compress(tail.encode() + b"\n"))
        f.write(packer.flush())
    assert data.stat().st_size < 200_000
    lines = _clean(rollwatch("problems", "list", "--config", str(_humaneval_config(tmp_path, data))), 2)
    assert lines[-1] == (
        f"error: {data}: is larger than 64 MB (decompressed); a HumanEval file is at most that"
    ), lines


@pytest.mark.parametrize("zone", ["America", "Etc", "A" * 300], ids=["folder", "folder-etc", "too-long"])
def test_a_time_zone_naming_no_zone_file_is_a_configuration_error(tmp_path: Path, zone: str) -> None:
    """``timezone = "America"`` (a folder of the zone database) or a name too long for a file
    was ``error: cannot use …/zoneinfo/America: Is a directory``, exit 1, naming no key."""
    config = write_config(
        tmp_path,
        '[[schedules]]\nname = "s"\nprovider = "reference"\nmodels = ["reference"]\n'
        f'problem_set = "favorites"\ncron = "0 3 * * *"\ntimezone = "{zone}"\n',
    )
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch("schedules", "list", "--config", str(config)), 2)
    assert lines[-1].startswith("  schedules[0].timezone: "), lines
    assert "is not an IANA time zone" in lines[-1], lines


@pytest.mark.parametrize("key", ["input", "output", "cached_input", "batch_input", "batch_output"])
def test_a_price_no_cost_can_be_counted_in_is_a_configuration_error(tmp_path: Path, key: str) -> None:
    """A finite price as large as ``1e308`` (USD per million tokens) passed validation and made
    every answer's cost infinite: ``rollwatch run`` died at its first answer with a traceback
    ("Out of range float values are not JSON compliant"), the run left without RunFinished.
    Prices are at most $1,000,000 per million tokens."""
    prices = {"input": 1.0, "output": 2.0, key: 1e308}
    row = ", ".join(f"{k} = {v!r}" for k, v in prices.items())
    config = write_config(
        tmp_path, f'[[providers]]\nname = "oa"\nkind = "openai"\n[providers.prices]\n"m1" = {{ {row} }}\n'
    )
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch("schedules", "list", "--config", str(config)), 2)
    assert f"  providers[1].prices.m1.{key}: 1e+308: must be at most 1000000.0" in lines, lines


def test_a_price_at_its_bound_is_taken(tmp_path: Path) -> None:
    """The bound itself is a price (no working config is refused below it)."""
    config = write_config(
        tmp_path,
        '[[providers]]\nname = "oa"\nkind = "openai"\n[providers.prices]\n'
        '"m1" = { input = 1000000.0, output = 1000000.0 }\n',
    )
    make_log(tmp_path / "events.db")
    _clean(rollwatch("schedules", "list", "--config", str(config)), 0)


def _copy(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A copy of the bundled problem ``name`` under ``tmp_path``; (its folder, a config)."""
    problem = tmp_path / "problems" / name
    shutil.copytree(Path(__file__).resolve().parents[1] / "config" / "problems" / name, problem)
    return problem, write_config(tmp_path, problems=str(tmp_path / "problems"))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# problem -> (the edit to its problem.toml, the line `problems list` must end with after
# "error: FOLDER/problem.toml: "). Each loaded before: a NUL in a file name was a
# ValueError traceback ("embedded null byte"); a NUL in a checker's argument loaded and
# was that traceback at `problems check` (and at every score); an infinite tolerance
# passed every number for every other (no answer could fail); a keyword as the entry
# point made every test's `check(class)` a SyntaxError (no answer could pass).
BAD_PROBLEMS = {
    "prompt-file-nul": (
        "dijkstra",
        ('prompt_file = "prompt.md"', 'prompt_file = "prompt\\u0000.md"'),
        "prompt_file: 'prompt\\x00.md': cannot be resolved (embedded null byte)",
    ),
    "solution-nul": (
        "dijkstra",
        ('solution = "solution.py"', 'solution = "solution\\u0000.py"'),
        "reference.solution: 'solution\\x00.py': cannot be resolved (embedded null byte)",
    ),
    "cases-nul": (
        "dijkstra",
        ('kind = "stdio"', 'kind = "stdio"\ncases = "ca\\u0000ses"'),
        "scorer.cases: 'ca\\x00ses': cannot be resolved (embedded null byte)",
    ),
    "command-nul": (
        "n-queens",
        ('command = ["python3", "check.py"]', 'command = ["python3", "check.py", "x\\u0000y"]'),
        "scorer.command: 'x\\x00y': an argument holds NUL",
    ),
    "tolerance-inf": (
        "closest-pair",
        ("float_tolerance = 1e-6", "float_tolerance = inf"),
        "scorer.float_tolerance: expected a finite number >= 0, got inf",
    ),
    "entry-point-keyword": (
        "edit-distance",
        ('entry_point = "edit_distance"', 'entry_point = "class"'),
        "scorer.entry_point: 'class' is not a Python identifier",
    ),
}


@pytest.mark.parametrize(("name", "edit", "message"), BAD_PROBLEMS.values(), ids=BAD_PROBLEMS.keys())
def test_a_problem_that_cannot_be_scored_is_refused_at_load(
    tmp_path: Path, name: str, edit: tuple[str, str], message: str
) -> None:
    problem, config = _copy(tmp_path, name)
    _edit(problem / "problem.toml", *edit)
    lines = _clean(rollwatch("problems", "list", "--config", str(config)), 2)
    assert lines[-1] == f"error: {problem / 'problem.toml'}: {message}", lines


def test_a_humaneval_entry_point_that_is_a_keyword_is_a_problem_error(tmp_path: Path) -> None:
    """The same for a HumanEval line: ``"entry_point": "def"`` loaded."""
    data = tmp_path / "he.jsonl"
    data.write_text(json.dumps({**HUMANEVAL, "entry_point": "def"}) + "\n")
    lines = _clean(rollwatch("problems", "list", "--config", str(_humaneval_config(tmp_path, data))), 2)
    assert lines[-1] == f"error: {data}:1: entry_point: 'def' is not a Python identifier", lines


@pytest.mark.parametrize("verb", ["pause", "resume", "trigger"])
@pytest.mark.parametrize("note", ["why\nd  active  every 3600s", "a\x1b[2Jb", "rtl\u202eetoN"])
def test_a_note_with_a_line_break_or_control_characters_is_refused(
    tmp_path: Path, verb: str, note: str
) -> None:
    """``schedules pause d --note "why<LF>d  active …"`` was appended as given, and its line
    break forged a row of ``schedules list``. Refused now, exit 2, nothing appended."""
    from tests.test_daemon import events

    config = write_config(
        tmp_path,
        '[[schedules]]\nname = "d"\nprovider = "reference"\nmodels = ["reference"]\n'
        'problem_set = "favorites"\nevery = "1h"\n',
    )
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch("schedules", verb, "d", "--note", note, "--config", str(config)), 2)
    assert lines[-1] == (
        f"error: --note: {note!r}: a note is one line without control characters "
        "(line breaks, tabs, escapes, bidi marks); nothing was appended"
    ), lines
    assert events(tmp_path / "events.db") == []
    listed = rollwatch("schedules", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 2, listed.stdout  # the header and one row


@pytest.mark.parametrize("option", ["--key", "--state", "--name"])
def test_an_empty_witness_option_is_bad_usage(tmp_path: Path, option: str) -> None:
    """``witness serve --state ""`` (``--state "$STATE"`` with STATE unset) was ``error: cannot
    use .: Is a directory``, exit 1, naming no option; ``--key ""`` called the working folder
    no key; ``--name ""`` quietly meant the default name. Each is bad usage now, exit 2,
    before any file is made."""
    from tests.test_cli_hostile_2026 import _vkey

    args = ["--key", str(tmp_path / "w.key"), "--state", str(tmp_path / "state.json"), option, ""]
    r = rollwatch("witness", "serve", "--listen", "127.0.0.1:0", "--log", _vkey(), *args, timeout=30)
    lines = _clean(r, 2)
    assert lines[-1] == f"error: {option}: is empty; give one, or leave the option out for its default", lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_verify_refuses_a_kept_checkpoint_that_is_no_regular_file(tmp_path: Path, kind: str) -> None:
    """``verify --checkpoint /dev/zero`` read until memory ran out, and a named pipe waited for
    a writer for good (``audit --keep`` had been fixed for both, ``verify`` not). One line
    naming the option, exit 2."""
    import os

    kept = Path("/dev/zero")
    if kind == "fifo":
        kept = tmp_path / "kept.fifo"
        os.mkfifo(kept)
    config = write_config(tmp_path)
    make_log(tmp_path / "events.db")
    lines = _clean(rollwatch("verify", "--checkpoint", str(kept), "--config", str(config), timeout=30), 2)
    assert lines[-1] == (
        f"error: --checkpoint {kept}: cannot read it: it is not a regular file "
        "(a pipe, a folder or a device was put in its place)"
    ), lines


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://a b/public/", "'http://a b/public/': needs a host"),
        ("http:///public/", "'http:///public/': needs a host"),
        ("http://h:99999/public/", "'http://h:99999/public/': not a URL (Port out of range 0-65535)"),
        ("https://user:pw@h/public/", "'https://…@h/public': holds a user name or password"),
    ],
    ids=["space", "no-host", "port", "credentials"],
)
def test_publish_export_checks_its_base_url_as_the_config_does(tmp_path: Path, url: str, why: str) -> None:
    """``publish export DIR --base-url URL`` checked only the scheme: a URL ``server.base_url``
    refuses (no host, a space, a port past 65535, a user and password) was written into
    every link of the export, whose closed months never change. Exit 2, nothing written."""
    config = write_config(tmp_path)
    make_log(tmp_path / "events.db")
    out = tmp_path / "export"
    lines = _clean(rollwatch("publish", "export", str(out), "--base-url", url, "--config", str(config)), 2)
    assert lines[-1].startswith(f"error: --base-url {why}"), lines
    assert not out.exists() or list(out.iterdir()) == []
    assert "pw" not in "\n".join(lines)


def test_stdio_cases_past_their_bound_in_all_are_refused(tmp_path: Path) -> None:
    """Each case file is bounded (8 MB), and so are a problem's cases in all (128 MB): a
    thousand cases of 8 MB were read whole and held for the daemon's life. Sparse files:
    nothing of their size is written to the disk."""
    from rollwatch.problems import MAX_CASES_BYTES, MAX_FILE_BYTES

    problem, config = _copy(tmp_path, "dijkstra")
    cases = problem / "cases"
    for i in range(MAX_CASES_BYTES // (2 * MAX_FILE_BYTES) + 1):
        for ext in ("in", "out"):
            with (cases / f"zz{i:03d}.{ext}").open("wb") as f:
                f.truncate(MAX_FILE_BYTES)
    lines = _clean(rollwatch("--config", str(config), "problems", "list"), 2)
    assert any("scorer.cases" in line and "128 MB in all" in line for line in lines), lines


def test_an_empty_audit_keep_is_bad_usage(tmp_path: Path) -> None:
    """``--keep "$FILE"`` with FILE unset: it named the working folder (exit 1, "Is a
    directory"); now bad usage, exit 2, before any request."""
    lines = _clean(rollwatch("audit", "--url", "http://127.0.0.1:9", "--keep", ""), 2)
    assert lines[-1].startswith("error: --keep: is empty"), lines
