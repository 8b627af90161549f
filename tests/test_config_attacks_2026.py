"""A careless or hostile operator's config and problem files: one clear line each, never a
traceback, a hang or a half-started daemon.

Most cases load the config as every command does (:func:`load_config`); a few run the real
command (``python -m rollwatch``) to show the line, the exit status and that nothing started.
Each case here was accepted, or refused with a line naming no key, before its fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rollwatch.config import load_config
from rollwatch.errors import ConfigError
from tests.helpers import make_log, rollwatch, write_config

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = (
    '[[schedules]]\nname = "s"\nprovider = "reference"\nmodels = ["reference"]\nproblem_set = "favorites"\n'
    'every = "1h"\n'
)
OPENAI = '[[providers]]\nname = "o"\nkind = "openai"\n'
EMPTY_PATH = "is empty; name a file, or leave the key out for its default"

# An empty string (or spaces only) where nothing empty means anything -> the problem line.
# Before, each loaded: a projections, key or tree path of "" fell back to the default
# unasked, a problem set's path "" and a template "" were found out only when a schedule
# could not run, a key variable "" read as "no key", a price for model "" or a parameter
# "" were sent or kept for nothing. ``sqlite:`` was "(top level): PosixPath('.') has an
# empty name".
EMPTY = {
    "projections": ('[store]\nprojections = ""\n', f"store.projections: {EMPTY_PATH}"),
    "sqlite-no-file": (
        '[store]\nurl = "sqlite:"\n',
        "store.url: 'sqlite:' names no file; use sqlite:PATH (sqlite:///abs/path.db)",
    ),
    "set-path": (
        '[[problem_sets]]\nname = "e"\npath = ""\n',
        "problem_sets[1].path: is empty; name the problem set's folder or HumanEval file",
    ),
    "set-template": (
        f'[[problem_sets]]\nname = "e"\npath = "{ROOT / "config" / "problems"}"\nprompt_template = ""\n',
        "problem_sets[1].prompt_template: has no {prompt} placeholder; add one where the problem's text goes",
    ),
    "api-key-env": (
        OPENAI + 'api_key_env = ""\n',
        "providers[1].api_key_env: is empty; name the environment variable that holds the key",
    ),
    "api-key-file": (
        OPENAI + 'api_key_file = ""\n',
        "providers[1].api_key_file: is empty; name the file (or systemd credential) that holds the key",
    ),
    "key-file": ('[integrity]\nkey_file = ""\n', f"integrity.key_file: {EMPTY_PATH}"),
    "tree": ('[integrity]\ntree = ""\n', f"integrity.tree: {EMPTY_PATH}"),
    "model": (
        SCHEDULE.replace('models = ["reference"]', 'models = [""]'),
        "schedules[0].models[0]: a model name cannot be empty",
    ),
    "price-model": (
        OPENAI + '[providers.prices]\n"" = { input = 1.0, output = 1.0 }\n',
        "providers[1].prices: a model name cannot be empty",
    ),
    "param-name": (
        SCHEDULE + '[schedules.params]\n"" = 1\n',
        "schedules[0].params: a parameter name cannot be empty",
    ),
}


def _spaces(toml: str) -> str:
    """The same case with a string of spaces where the empty one was."""
    return toml.replace('""', '"   "').replace('"sqlite:"', '"sqlite:   "')


@pytest.mark.parametrize("case", EMPTY)
@pytest.mark.parametrize("blank", [str, _spaces], ids=["empty", "spaces"])
def test_an_empty_string_where_empty_means_nothing_is_refused(
    tmp_path: Path, case: str, blank: object
) -> None:
    """One line naming the key and what to write instead; spaces only are empty too."""
    extra, line = EMPTY[case]
    text = blank(extra)  # type: ignore[operator]
    if extra.startswith("[store]"):  # alone: write_config has a [store] table of its own
        config = tmp_path / "rollwatch.toml"
        config.write_text(text)
    else:
        config = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert e.value.problems == [line]


def test_an_empty_string_that_means_something_still_loads(tmp_path: Path) -> None:
    """Left alone: a system prompt "" (no system prompt, as without the key), a parameter's
    value "" (the provider's to judge), no trusted peers ``[]`` (behind a proxy)."""
    extra = (
        "[server]\ntrusted_peers = []\n"
        + OPENAI
        + 'system_prompt = ""\napi_key_env = "OPENAI_API_KEY"\n'
        + SCHEDULE
        + '[schedules.params]\nstop = ""\n'
    )
    config = load_config(write_config(tmp_path, extra))
    assert config.providers[1].system_prompt == ""
    assert config.schedules[0].params == {"stop": ""}


# Control characters where they can only do harm, each refused naming its key. A model
# name with a line break was accepted: it is printed in `schedules list`, `report` tables
# and CSV, and on a terminal's log lines, where it forged a line of its own. A NUL in a
# path was "(top level): embedded null byte".
CONTROL = {
    "model-newline": (
        SCHEDULE.replace('models = ["reference"]', 'models = ["gpt-5\\nrun_finished ok"]'),
        "schedules[0].models[0]: 'gpt-5\\nrun_finished ok': a model name cannot hold control characters "
        "(line breaks, tabs, NUL, bidi marks)",
    ),
    # Not only ASCII's: a bidi override turns the rest of a table row around, U+2028 is a
    # line break to many readers (Python's splitlines among them).
    "model-bidi": (
        SCHEDULE.replace('models = ["reference"]', 'models = ["gpt\\u202e5"]'),
        "schedules[0].models[0]: 'gpt\\u202e5': a model name cannot hold control characters "
        "(line breaks, tabs, NUL, bidi marks)",
    ),
    "model-line-separator": (
        SCHEDULE.replace('models = ["reference"]', 'models = ["gpt\\u20285"]'),
        "schedules[0].models[0]: 'gpt\\u20285': a model name cannot hold control characters "
        "(line breaks, tabs, NUL, bidi marks)",
    ),
    "model-nul": (
        SCHEDULE.replace('models = ["reference"]', 'models = ["gpt\\u0000"]'),
        "schedules[0].models[0]: 'gpt\\x00': a model name cannot hold control characters (line breaks, tabs, NUL, bidi marks)",
    ),
    "price-model-newline": (
        OPENAI + '[providers.prices]\n"a\\nb" = { input = 1.0, output = 1.0 }\n',
        "providers[1].prices: 'a\\nb': a model name cannot hold control characters (line breaks, tabs, NUL, bidi marks)",
    ),
    "param-name-newline": (
        SCHEDULE + '[schedules.params]\n"a\\nb" = 1\n',
        "schedules[0].params: 'a\\nb': a parameter name cannot hold control characters (line breaks, tabs, NUL, bidi marks)",
    ),
    "tree-nul": (
        '[integrity]\ntree = "m\\u0000.db"\n',
        "integrity.tree: 'm\\x00.db': a path cannot hold control characters (line breaks, tabs, NUL, bidi marks)",
    ),
    "key-file-newline": (
        '[integrity]\nkey_file = "k\\n.pem"\n',
        "integrity.key_file: 'k\\n.pem': a path cannot hold control characters (line breaks, tabs, NUL, bidi marks)",
    ),
    "set-path-nul": (
        '[[problem_sets]]\nname = "e"\npath = "a\\u0000"\n',
        "problem_sets[1].path: 'a\\x00': a path cannot hold control characters (line breaks, tabs, NUL, bidi marks)",
    ),
    "api-key-env-equals": (
        OPENAI + 'api_key_env = "A=B"\n',
        "providers[1].api_key_env: 'A=B' cannot name an environment variable (no '=', spaces or "
        "control characters)",
    ),
    "node-newline": (
        'node = "n1\\nn2"\n',
        "node: 'n1\\nn2': a node name holds no control characters and no spaces at either end",
    ),
    # Numbers no machine takes: the sandbox's setrlimit overflowed on every sample (each
    # scored as a sandbox failure), a rate of 1e-308 requests a minute waited forever.
    "memory-huge": (
        "[scoring]\nmemory_mb = 9223372036854775807\n",
        "scoring.memory_mb: 9223372036854775807: must be at most 1048576",
    ),
    "rpm-tiny": (
        OPENAI + "requests_per_minute = 1e-308\n",
        "providers[1].requests_per_minute: 1e-308: must be at least 0.001",
    ),
    "tpm-tiny": (
        OPENAI + "tokens_per_minute = 1e-308\n",
        "providers[1].tokens_per_minute: 1e-308: must be at least 1.0",
    ),
    # Periods that turn a guarantee off while looking set: a scrub every century never
    # reads the log again, a release check every year releases results a year late.
    "release-check-year": (
        '[publication]\nrelease_check = "52w"\n',
        "publication.release_check: '52w': must be at most 86400s",
    ),
    "checkpoint-interval-year": (
        '[integrity]\ncheckpoint_interval = "52w"\n',
        "integrity.checkpoint_interval: '52w': must be at most 86400s",
    ),
    "scrub-interval-century": (
        '[integrity]\nscrub_interval = "5200w"\n',
        "integrity.scrub_interval: '5200w': must be at most 604800s",
    ),
}


@pytest.mark.parametrize("case", CONTROL)
def test_a_value_that_can_only_do_harm_is_refused_naming_its_key(tmp_path: Path, case: str) -> None:
    """One line: the key, the value as written (escaped, so the line stays one), what is allowed."""
    extra, line = CONTROL[case]
    config = write_config(tmp_path, "" if extra.startswith("node") else extra)
    if extra.startswith("node"):
        config.write_text(extra + config.read_text())
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert e.value.problems == [line]


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command printed (exit 2, no traceback, no log records)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_cli_refuses_an_empty_path_before_it_starts(tmp_path: Path) -> None:
    """Through the real command: exit 2, the file and the key; the problem set's empty path
    was a schedule that "cannot run" in `schedules list` (exit 0) and a daemon that started
    degraded."""
    config = write_config(
        tmp_path, '[[problem_sets]]\nname = "e"\npath = "  "\n' + SCHEDULE.replace("favorites", "e")
    )
    make_log(tmp_path / "events.db")
    for command in (("schedules", "list"), ("serve",)):
        proc = rollwatch("--config", str(config), *command)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.splitlines() == [
            f"error: {config}: invalid configuration:",
            "  problem_sets[1].path: is empty; name the problem set's folder or HumanEval file",
        ]


def test_a_config_that_is_no_regular_file_is_one_line(tmp_path: Path) -> None:
    """A device (``/dev/zero`` was read until the kernel killed the process), a named pipe
    (read forever, waiting for a writer), a folder (four lines of click usage) and a file
    over 10 MB: each the file and one problem, exit 2, at once."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (10 * 1024 * 1024 + 1))
    cases = {
        "/dev/zero": "is not a regular file (a device, a pipe or a socket); name a TOML file",
        str(fifo): "is not a regular file (a device, a pipe or a socket); name a TOML file",
        str(tmp_path): "is a folder; name the TOML file in it",
        str(big): "is larger than 10 MB; is it the right file?",
    }
    for path, problem in cases.items():
        proc = rollwatch("--config", path, "schedules", "list", timeout=20)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [f"error: {path}: invalid configuration:", f"  {problem}"]


def _problem(tmp_path: Path, edit: dict[str, str] | None = None) -> tuple[Path, Path]:
    """A config whose one problem set is a copy of the sample ``lru-cache``, its
    problem.toml edited (old text -> new text); (config, the problem's folder)."""
    folder = tmp_path / "set" / "lru"
    shutil.copytree(ROOT / "config" / "problems" / "lru-cache", folder)
    toml = folder / "problem.toml"
    text = toml.read_text()
    for old, new in (edit or {}).items():
        assert old in text
        text = text.replace(old, new)
    toml.write_text(text)
    return write_config(tmp_path, problems=str(tmp_path / "set")), folder


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        # `$` matched before a final line break: the id "lru\n" loaded as a problem of its own.
        (
            {"title =": 'id = "lru\\n"\ntitle ='},
            "id: 'lru\\n': use letters, digits and . _ - / (at most 128)",
        ),
        # Ids are paths of URLs (/ops/problems/ID): ".." in one is a different page.
        (
            {"title =": 'id = "a/../b"\ntitle ='},
            "id: 'a/../b': no part between slashes may be empty, '.' or '..'",
        ),
        # A title is one line of `problems list`: a line break forged a row of it.
        (
            {'title = "LRU cache"': 'title = "LRU\\n  forged   python-function"'},
            "title: 'LRU\\n  forged   python-function': a title is one line without control characters",
        ),
        (
            {'title = "LRU cache"': 'title = "LRU\\u2028cache"'},
            "title: 'LRU\\u2028cache': a title is one line without control characters",
        ),
    ],
    ids=["id-newline", "id-dotdot", "title-newline", "title-line-separator"],
)
def test_a_problem_id_or_title_that_forges_a_line_or_path_is_refused(
    tmp_path: Path, edit: dict[str, str], problem: str
) -> None:
    """`problems list` exits 2 with one line naming the file and the key."""
    config, folder = _problem(tmp_path, edit)
    proc = rollwatch("--config", str(config), "problems", "list")
    assert _one_line(proc) == f"error: {folder / 'problem.toml'}: {problem}"


def test_a_huge_problem_file_is_refused(tmp_path: Path) -> None:
    """A tests file of 300 MB was read, compiled and hashed whole (and sent to every
    sample); a prompt that size went to the provider, paid per token. Over 8 MB: one line."""
    config, folder = _problem(tmp_path)
    with (folder / "tests.py").open("a") as f:
        f.write("#" * 8 * 1024 * 1024 + "\n")
    proc = rollwatch("--config", str(config), "problems", "list")
    assert _one_line(proc) == (
        f"error: {folder / 'problem.toml'}: scorer.tests: tests.py is larger than 8 MB; a problem's file is at most that"
    )


# A valid witness key's shape (the config checks the shape only).
WITNESS_KEY = "w.example/w1+1a2b3c4d+BAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://", "'http://': needs a host, e.g. https://rollwatch.example.org"),
        (
            "https://w.example/\\nx",
            "'https://w.example/\\nx': needs a host, e.g. https://rollwatch.example.org",
        ),
    ],
    ids=["no-host", "line-break"],
)
def test_a_witness_url_without_a_host_is_refused(tmp_path: Path, url: str, problem: str) -> None:
    """A witness URL was checked for its scheme only: "http://" loaded, and every checkpoint
    was then submitted to nowhere (a failure logged each time, never a config error)."""
    extra = f'[integrity]\nwitnesses = [{{ url = "{url}", key = "{WITNESS_KEY}" }}]\n'
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, extra))
    assert e.value.problems == [f"integrity.witnesses[0].url: {problem}"]


def test_a_model_listed_twice_is_refused(tmp_path: Path) -> None:
    """Both entries planned the same rollouts (one rollout id each): every second append was
    a conflict, 10 of 20 rollouts "not_requested", the run `partial`, exit 1."""
    extra = SCHEDULE.replace('models = ["reference"]', 'models = ["reference", "x", " reference"]')
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, extra))
    assert e.value.problems == ["schedules[0].models: 'reference' is listed twice"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("reference,reference", "error: --models: 'reference' is listed twice"),
        (" , ", "error: --models names no model; give them comma-separated, or leave the option out"),
    ],
    ids=["twice", "none"],
)
def test_run_models_that_repeat_or_name_none_are_bad_usage(tmp_path: Path, option: str, message: str) -> None:
    """`run --models` is refused before the run starts: a model twice made the run partial
    (as above), a list of nothing ran every model of the schedule."""
    config = write_config(tmp_path, SCHEDULE)
    proc = rollwatch("--config", str(config), "run", "s", "--models", option)
    assert _one_line(proc) == message
    assert not (tmp_path / "events.db").exists()


def test_a_jitter_as_long_as_the_period_is_refused(tmp_path: Path) -> None:
    """``every = "1h"`` with ``jitter = "5000w"`` loaded: the first fire waited up to a
    century, `schedules list` showing a next fire decades away."""
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, SCHEDULE + 'jitter = "1h"\n'))
    assert e.value.problems == ["schedules[0]: jitter (3600s) must be shorter than every (3600s)"]


def test_a_huge_problem_toml_is_refused(tmp_path: Path) -> None:
    """An inline prompt lives in problem.toml: one of 300 MB was read whole and sent to the
    provider with every request."""
    config, folder = _problem(tmp_path, {"prompt = '''": "prompt = '''" + "x" * 8 * 1024 * 1024})
    proc = rollwatch("--config", str(config), "problems", "list")
    assert _one_line(proc) == (
        f"error: {folder / 'problem.toml'}: is larger than 8 MB; a problem's file is at most that"
    )


@pytest.mark.parametrize(
    ("provider", "params", "problem"),
    [
        (
            'kind = "openai"\n',
            'model = "other"\n',
            "schedules[0].params: model may not be set: rollwatch sets it for provider 'p' (kind 'openai')",
        ),
        (
            'kind = "openai"\napi = "responses"\n',
            'instructions = "x"\n',
            "schedules[0].params: instructions may not be set: rollwatch sets it for provider 'p' (kind 'openai')",
        ),
        (
            'kind = "anthropic"\n',
            'system = "x"\nmessages = []\n',
            "schedules[0].params: messages, system may not be set: rollwatch sets them for provider 'p' "
            "(kind 'anthropic')",
        ),
        (
            'kind = "gemini"\n',
            'system_instruction = "x"\n',
            "schedules[0].params: system_instruction may not be set: rollwatch sets it for provider 'p' "
            "(kind 'gemini')",
        ),
        (
            'kind = "openai"\n',
            "stream = true\n",
            "schedules[0].params.stream: not for schedules; set stream = true on the provider instead",
        ),
    ],
    ids=["openai-model", "responses-instructions", "anthropic-system", "gemini-system", "stream"],
)
def test_params_that_rollwatch_sets_itself_are_refused(
    tmp_path: Path, provider: str, params: str, problem: str
) -> None:
    """Found only as each request was built: the run started, every rollout failed
    (invalid_request, "not_requested"), the run ended partial; the daemon served such a
    schedule without a word until it fired."""
    extra = (
        '[[providers]]\nname = "p"\n'
        + provider
        + 'api_key_env = "K"\n'
        + SCHEDULE.replace('provider = "reference"', 'provider = "p"')
        + "[schedules.params]\n"
        + params
    )
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, extra))
    assert e.value.problems == [problem]


@pytest.mark.parametrize("where", ["before", "after"])
def test_an_empty_or_folder_config_option_is_refused(tmp_path: Path, where: str) -> None:
    """``--config "$CFG"`` with CFG unset silently read ./config/rollwatch.toml (or /etc's):
    now bad usage. ``--config FOLDER`` after the command was four lines of click usage."""

    def run(path: str) -> subprocess.CompletedProcess[str]:
        if where == "before":
            return rollwatch("--config", path, "schedules", "list")
        return rollwatch("schedules", "list", "--config", path)

    assert _one_line(run("")) == "error: --config is empty; name the configuration file"
    proc = run(str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {tmp_path}: invalid configuration:",
        "  is a folder; name the TOML file in it",
    ]


@pytest.mark.parametrize(
    "extra",
    [
        OPENAI + 'base_url = "https://user:hunter2-secret@llm.example.org/v1"\n',
        '[server]\nbase_url = "https://ops:hunter2-secret@rollwatch.example.org"\n',
    ],
    ids=["provider", "server"],
)
def test_a_url_holding_a_password_is_refused_without_quoting_it(tmp_path: Path, extra: str) -> None:
    """A credential in a provider's URL or the server's public base URL
    (``https://user:password@host``) is refused at load, and the error line shows the URL
    without it (the line goes to a terminal or the journal). Before, a provider's loaded
    (httpx sent it as Basic auth beside the key) and the server's was written into every
    feed and page."""
    config = write_config(tmp_path, extra)
    with pytest.raises(ConfigError) as e:
        load_config(config)
    text = "\n".join(e.value.problems)
    assert "holds a user name or password" in text, text
    assert "hunter2" not in text, text
    proc = rollwatch("--config", str(config), "schedules", "list")
    assert proc.returncode == 2, proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_bad_witness_url_is_refused_without_quoting_its_password(tmp_path: Path) -> None:
    """A witness's URL may carry a credential (sent as Basic auth; see test_witness.py), but
    one that is no URL (a port that is no number) was quoted whole in the error line."""
    witness = (
        '[integrity]\n[[integrity.witnesses]]\nurl = "https://w:hunter2-secret@witness.example:99999"\n'
        'key = "w+00000000+AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"\n'
    )
    config = write_config(tmp_path, witness)
    with pytest.raises(ConfigError) as e:
        load_config(config)
    text = "\n".join(e.value.problems)
    assert "integrity.witnesses[0].url: 'https://…@witness.example:99999': not a URL" in text, text
    assert "hunter2" not in text, text
