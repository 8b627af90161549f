"""Problem sets: folders of ``problem.toml`` problems, or HumanEval-format JSONL.

A folder problem (SPEC §5)::

    id = "two-sum"                 # default: the folder's name
    title = "Two sum"
    released = 2026-01-15          # when the problem became public
    prompt_file = "prompt.md"      # or prompt = \"\"\"...\"\"\"
    tags = ["arrays"]              # optional
    [scorer]
    kind = "python-function"       # python-function | stdio | command
    entry_point = "two_sum"        # python-function: the tests call check(entry_point)
    tests = "tests.py"             # python-function: defines check(candidate)
    timeout = "10s"                # per sample (stdio and command: per run of the program)
    cases = "cases"                # stdio: NAME.in / NAME.out pairs (the default folder)
    float_tolerance = 1e-6         # stdio: compare numbers token by token within this
    command = ["python3", "check.py"]  # command: run with the solution's path appended
    checker_timeout = "120s"       # command: the checker's whole budget
    [reference]
    solution = "solution.py"

Unknown keys are errors naming the file and the key. Every problem has a
``content_hash``: SHA-256 over a canonical listing of everything that defines it
(its settings and every file of its folder), recorded with each rollout so a later
change to its tests shows in the log.

Prompts: each scorer kind has a default template asking for one fenced code block
(HumanEval: the whole function); a problem set may override it with its own
``prompt_template`` holding a ``{prompt}`` placeholder (``{entry_point}``,
``{title}`` and ``{id}`` are filled in too).
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import itertools
import json
import keyword
import math
import os
import re
import stat
import tomllib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal, Protocol

from rollwatch.config import has_control
from rollwatch.errors import ProblemError

__all__ = [
    "DEFAULT_TEMPLATES",
    "Case",
    "Problem",
    "ProblemSet",
    "ScorerKind",
    "describe_problems",
    "load_folder_set",
    "load_humaneval",
    "load_problem",
    "load_problem_set",
]

ScorerKind = Literal["python-function", "stdio", "command"]
KINDS: tuple[str, ...] = ("python-function", "stdio", "command")

_FENCE_ASK = "Answer with exactly one fenced ```python code block holding the complete solution."

DEFAULT_TEMPLATES: dict[str, str] = {
    "python-function": (
        "{prompt}\n\n"
        "Write the Python function `{entry_point}` (with any imports and helpers it needs). " + _FENCE_ASK
    ),
    "humaneval": (
        "Complete the following Python function.\n\n```python\n{prompt}```\n\n"
        "Answer with the whole function (its signature, the imports and any helper functions "
        "it needs) in exactly one fenced ```python code block."
    ),
    "stdio": (
        "{prompt}\n\n"
        "Write a complete Python 3 program that reads the input from standard input and "
        "writes the answer to standard output. " + _FENCE_ASK
    ),
    "command": "{prompt}\n\nWrite a complete Python 3 program. " + _FENCE_ASK,
}
_PLACEHOLDERS = ("prompt", "entry_point", "title", "id")
# ``\Z``, not ``$``: ``$`` matches before a final line break, and "two-sum\n" loaded as
# a problem of its own (an entry point "f\n" as a function no test could find).
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}\Z")
#: The largest prompt, tests or reference solution read: a tests file is sent to every
#: sample, a prompt to the provider (paid per token); 300 MB ones were read whole.
MAX_FILE_BYTES = 8 * 1024 * 1024
#: The most a stdio problem's cases hold in all (inputs and outputs): each is bounded by
#: :data:`MAX_FILE_BYTES`, but a thousand of them were read whole, 8 GB held for the
#: daemon's life. Every case goes to every sample, so a set this large is no benchmark.
MAX_CASES_BYTES = 128 * 1024 * 1024
#: The largest HumanEval file read, decompressed (HumanEval's own is under 1 MB).
MAX_HUMANEVAL_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Case:
    """One stdio case: the bytes given on stdin and the expected stdout."""

    name: str
    input: bytes
    output: bytes


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One problem, loaded, validated and self-contained (no file reads after loading)."""

    id: str
    title: str
    prompt: str
    scorer: ScorerKind
    """python-function, stdio or command."""
    content_hash: str
    released: date | None = None
    entry_point: str | None = None
    tests: str = ""
    """python-function: the source of the tests; it defines ``check(candidate)``."""
    cases: tuple[Case, ...] = ()
    float_tolerance: float | None = None
    command: tuple[str, ...] = ()
    """command: the checker's argv (its file resolved in the folder); the solution's path is appended."""
    timeout: float | None = None
    """Seconds per sample (stdio, command: per run of the program); None: the pool's default."""
    checker_timeout: float | None = None
    """command: the checker's whole budget; None: ten times the timeout."""
    reference_solution: str | None = None
    folder: Path | None = None
    """The problem's folder (None for HumanEval problems)."""
    file: Path | None = None
    """HumanEval problems: the JSONL file they were read from (the pool refuses to score one
    the sandbox shows, as it does a folder: every answer could read its tests)."""
    prelude: str = ""
    """Code run before the candidate's and before the tests (HumanEval: the prompt)."""
    source: Literal["folder", "humaneval"] = "folder"
    tags: tuple[str, ...] = ()

    def scorer_settings(self) -> dict[str, Any]:
        """The scalar scorer settings as JSON (part of the content hash)."""
        out: dict[str, Any] = {"kind": self.scorer}
        for key in ("entry_point", "timeout", "float_tolerance", "checker_timeout"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.command:
            # Files of the folder by their relative name: the hash must not depend on
            # where the problem set is installed.
            root = self.folder.resolve() if self.folder else None
            out["command"] = [
                Path(a).relative_to(root).as_posix() if root and Path(a).is_relative_to(root) else a
                for a in self.command
            ]
        return out


class _SetConfig(Protocol):
    """What ``load_problem_set`` reads of a ``[[problem_sets]]`` entry (``ProblemSetConfig``)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def prompt_template(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ProblemSet:
    """A named, ordered set of problems and the prompt template they are asked with."""

    name: str
    path: Path
    format: Literal["folder", "humaneval"]
    problems: list[Problem]
    prompt_template: str | None = None
    _by_id: dict[str, Problem] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for p in self.problems:
            self._by_id[p.id] = p

    def get(self, problem_id: str) -> Problem:
        """The problem ``problem_id``; KeyError when the set has none."""
        return self._by_id[problem_id]

    def __len__(self) -> int:
        return len(self.problems)

    def prompt(self, problem: Problem) -> str:
        """The text sent to a model for ``problem``."""
        template = self.prompt_template
        if template is None:
            template = DEFAULT_TEMPLATES["humaneval" if problem.source == "humaneval" else problem.scorer]
        values = {
            "prompt": problem.prompt,
            "entry_point": problem.entry_point or "",
            "title": problem.title,
            "id": problem.id,
        }
        # Literal replacement, not str.format: prompts and templates are full of braces.
        return re.sub(r"\{(prompt|entry_point|title|id)\}", lambda m: values[m.group(1)], template)


# -- loading -----------------------------------------------------------------------------------


def load_problem_set(config: _SetConfig) -> ProblemSet:
    """The problem set a ``[[problem_sets]]`` entry describes; ProblemError naming what is wrong."""
    template = config.prompt_template
    if template is not None and "{prompt}" not in template:
        raise ProblemError(
            f"problem set {config.name!r}: prompt_template has no {{prompt}} placeholder; "
            "add one where the problem's text goes"
        )
    if not config.path.strip():
        raise ProblemError(f"problem set {config.name!r}: path is empty; name its folder or HumanEval file")
    path = Path(config.path)
    if config.format == "humaneval":
        return load_humaneval(path, name=config.name, prompt_template=template)
    if config.format != "folder":
        raise ProblemError(
            f"problem set {config.name!r}: format {config.format!r} is not one of folder, humaneval"
        )
    return load_folder_set(path, name=config.name, prompt_template=template)


def load_folder_set(path: Path, *, name: str | None = None, prompt_template: str | None = None) -> ProblemSet:
    """Every problem folder under ``path`` (or ``path`` itself when it holds a problem.toml)."""
    if not path.is_dir():
        raise ProblemError(f"{path}: no such folder of problems (problem_sets.path)")
    if (path / "problem.toml").is_file():
        folders = [path]
    else:
        folders = []
        for child in sorted(path.iterdir()):
            if not child.is_dir() or child.name.startswith((".", "_")):
                continue
            if not (child / "problem.toml").is_file():
                raise ProblemError(f"{child}: a folder of a problem set without a problem.toml")
            folders.append(child)
    if not folders:
        raise ProblemError(f"{path}: holds no problems (a folder with a problem.toml in each of its folders)")
    problems = [load_problem(f) for f in folders]
    _no_duplicates(problems, path)
    return ProblemSet(
        name=name or path.name,
        path=path,
        format="folder",
        problems=problems,
        prompt_template=prompt_template,
    )


def _no_duplicates(problems: Iterable[Problem], where: Path) -> None:
    seen: dict[str, Problem] = {}
    for p in problems:
        if p.id in seen:
            both = f" ({seen[p.id].folder} and {p.folder})" if p.folder is not None else ""
            raise ProblemError(f"{where}: problem id {p.id!r} is used twice{both}")
        seen[p.id] = p


_TOP_KEYS = {"id", "title", "released", "prompt_file", "prompt", "tags", "scorer", "reference"}
_SCORER_KEYS = {
    "kind",
    "entry_point",
    "tests",
    "timeout",
    "cases",
    "float_tolerance",
    "command",
    "checker_timeout",
}
_KIND_KEYS: dict[str, set[str]] = {
    "python-function": {"kind", "entry_point", "tests", "timeout"},
    "stdio": {"kind", "timeout", "cases", "float_tolerance"},
    "command": {"kind", "timeout", "command", "checker_timeout"},
}
_REFERENCE_KEYS = {"solution"}


class _Reader:
    """Typed access to one problem.toml with errors that name the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path.parent

    def fail(self, key: str, message: str) -> ProblemError:
        return ProblemError(f"{self.path}: {key}: {message}")

    def unknown(self, table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(prefix + key, f"unknown key; allowed here: {', '.join(sorted(allowed))}")

    def string(
        self, table: Mapping[str, Any], key: str, prefix: str = "", *, required: bool = False
    ) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                raise self.fail(prefix + key, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(prefix + key, f"expected a non-empty string, got {value!r}")
        return value

    def file(
        self, table: Mapping[str, Any], key: str, prefix: str = "", *, required: bool = False
    ) -> Path | None:
        name = self.string(table, key, prefix, required=required)
        if name is None:
            return None
        try:
            p = _resolve(self.root / name)
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name ("embedded null byte")
            raise self.fail(
                prefix + key, f"{name!r}: cannot be resolved ({getattr(e, 'strerror', None) or e})"
            ) from None
        if not p.is_relative_to(self.root.resolve()):
            raise self.fail(prefix + key, f"{name!r} is outside the problem's folder")
        if not p.is_file():
            raise self.fail(prefix + key, f"{name!r}: no such file in {self.root}")
        return p

    def text(self, p: Path, key: str) -> str:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise self.fail(key, f"{p.name} {_too_large()}")
        try:
            return p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(key, f"{p.name} is not UTF-8 text ({e})") from None

    def duration(self, table: Mapping[str, Any], key: str, prefix: str) -> float | None:
        from rollwatch.config import parse_duration

        value = table.get(key)
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise self.fail(prefix + key, str(e)) from None
        if seconds <= 0:
            raise self.fail(prefix + key, "must be more than zero")
        return seconds


def _compile(source: str, filename: str) -> None:
    """Compile ``source`` to see that it is Python; SyntaxError when it is not. Expressions
    nested thousands deep (``-----…1``, ``1+1+…``) raised MemoryError or RecursionError from
    the compiler, and a NUL byte ValueError: each a traceback of every command that loads
    the problem set."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except ValueError as e:
        raise SyntaxError(str(e)) from None
    except (MemoryError, RecursionError):
        raise SyntaxError("expressions or blocks nested too deep for the compiler") from None


def _too_large() -> str:
    return f"is larger than {MAX_FILE_BYTES // 2**20} MB; a problem's file is at most that"


def _resolve(p: Path) -> Path:
    """``p.resolve()``; a symlink loop is an OSError (Python 3.11 raises RuntimeError)."""
    try:
        return p.resolve()
    except RuntimeError as e:
        if isinstance(e, RecursionError):
            raise
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(p)) from None


def load_problem(folder: Path) -> Problem:
    """The problem in ``folder`` (which holds a problem.toml)."""
    try:
        return _load_problem(folder)
    except OSError as e:
        # A file of the folder that cannot be read (gone or changed while it is read,
        # unreadable, a link to something that fails): the problem's error, not a traceback.
        raise ProblemError(f"{folder / 'problem.toml'}: cannot read the problem's files: {e}") from None


def _load_problem(folder: Path) -> Problem:
    path = folder / "problem.toml"
    r = _Reader(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ProblemError(f"{path}: {_too_large()}")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ProblemError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProblemError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise ProblemError(f"{path}: not valid TOML: arrays or tables nested too deep") from None
    r.unknown(data, _TOP_KEYS, "")

    pid = r.string(data, "id") or folder.name
    if not _ID.match(pid):
        raise r.fail("id", f"{pid!r}: use letters, digits and . _ - / (at most 128)")
    if any(part in ("", ".", "..") for part in pid.split("/")):
        # Ids are paths of URLs (/ops/problems/ID), where "a/../b" is another page.
        raise r.fail("id", f"{pid!r}: no part between slashes may be empty, '.' or '..'")
    title = r.string(data, "title") or pid
    if has_control(title):
        # A title is one line of `problems list`: a line break forged a row of its own.
        raise r.fail("title", f"{title!r}: a title is one line without control characters")
    released = data.get("released")
    if isinstance(released, str):
        try:
            released = date.fromisoformat(released)
        except ValueError:
            raise r.fail("released", f"{released!r} is not a date (YYYY-MM-DD)") from None
    if released is not None and (not isinstance(released, date) or hasattr(released, "hour")):
        raise r.fail("released", f"expected a date such as 2026-01-15, got {released!r}")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise r.fail("tags", "expected a list of strings")
    if bad := next((t for t in tags if has_control(t) or not t.strip()), None):
        # Tags are shown in `problems list` and the console, one row a problem.
        raise r.fail("tags", f"{bad!r}: a tag is a word or two, not empty, without control characters")

    if "prompt" in data and "prompt_file" in data:
        raise r.fail("prompt", "give prompt or prompt_file, not both")
    prompt_path = r.file(data, "prompt_file")
    inline = r.string(data, "prompt")
    if prompt_path is not None:
        prompt = r.text(prompt_path, "prompt_file")
    elif inline is not None:
        prompt = inline
    else:
        raise r.fail("prompt", "is required (or prompt_file)")

    scorer = data.get("scorer")
    if not isinstance(scorer, dict):
        raise r.fail("scorer", "a [scorer] table is required")
    r.unknown(scorer, _SCORER_KEYS, "scorer.")
    kind = scorer.get("kind")
    if kind not in KINDS:
        raise r.fail("scorer.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    for key in scorer:
        if key not in _KIND_KEYS[kind]:
            raise r.fail(f"scorer.{key}", f"does not apply to kind {kind!r}")
    fields: dict[str, Any] = {"timeout": r.duration(scorer, "timeout", "scorer.")}
    if kind == "python-function":
        entry = r.string(scorer, "entry_point", "scorer.", required=True)
        assert entry is not None
        if not _IDENT.match(entry) or keyword.iskeyword(entry):
            # A keyword ("class") loaded, and every test's check(class) was a SyntaxError.
            raise r.fail("scorer.entry_point", f"{entry!r} is not a Python identifier")
        tests_path = r.file(scorer, "tests", "scorer.", required=True)
        assert tests_path is not None
        tests = r.text(tests_path, "scorer.tests")
        try:
            _compile(tests, str(tests_path))
        except SyntaxError as e:
            raise r.fail("scorer.tests", f"{tests_path.name} does not compile: {e}") from None
        if not re.search(r"^def check\(", tests, re.M):
            raise r.fail("scorer.tests", f"{tests_path.name} defines no check(candidate) function")
        fields.update(entry_point=entry, tests=tests)
    elif kind == "stdio":
        tol = scorer.get("float_tolerance")
        # inf passed every number for every other: a problem no answer could fail.
        bad_tol = isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < math.inf
        if tol is not None and bad_tol:
            raise r.fail("scorer.float_tolerance", f"expected a finite number >= 0, got {tol!r}")
        fields.update(
            cases=_read_cases(r, r.string(scorer, "cases", "scorer.") or "cases"),
            float_tolerance=float(tol) if tol is not None else None,
        )
    else:
        command = scorer.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
            raise r.fail("scorer.command", 'expected a list of strings such as ["python3", "check.py"]')
        if any("\0" in a for a in command):
            # No program can be given one: "embedded null byte", a traceback at the first score.
            raise r.fail(
                "scorer.command", f"{next(a for a in command if chr(0) in a)!r}: an argument holds NUL"
            )
        # Every argument naming a file of the folder is resolved to it, so the checker
        # can be given as "check.py" whatever the working folder.
        resolved = []
        for i, arg in enumerate(command):
            f = folder / arg
            if "/" in arg and i == 0 and not f.is_file():
                raise r.fail("scorer.command", f"{arg!r}: no such file in {folder}")
            resolved.append(str(f.resolve()) if f.is_file() else arg)
        fields.update(
            command=tuple(resolved), checker_timeout=r.duration(scorer, "checker_timeout", "scorer.")
        )

    reference = data.get("reference", {})
    if not isinstance(reference, dict):
        raise r.fail("reference", "expected a [reference] table")
    r.unknown(reference, _REFERENCE_KEYS, "reference.")
    ref_path = r.file(reference, "solution", "reference.")
    solution = r.text(ref_path, "reference.solution") if ref_path is not None else None

    problem = Problem(
        id=pid,
        title=title,
        prompt=prompt,
        scorer=kind,
        content_hash="",
        released=released,
        reference_solution=solution,
        folder=folder,
        source="folder",
        tags=tuple(tags),
        **fields,
    )
    settings = {
        "id": pid,
        "title": title,
        "released": released.isoformat() if released else None,
        "prompt": prompt,
        "tags": tags,
        "scorer": problem.scorer_settings(),
        "reference": solution is not None,
    }
    return dataclasses.replace(problem, content_hash=_folder_hash(folder, settings))


def _read_cases(r: _Reader, name: str) -> tuple[Case, ...]:
    try:
        folder = _resolve(r.root / name)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name ("embedded null byte")
        raise r.fail(
            "scorer.cases", f"{name!r}: cannot be resolved ({getattr(e, 'strerror', None) or e})"
        ) from None
    if not folder.is_relative_to(r.root.resolve()) or not folder.is_dir():
        raise r.fail("scorer.cases", f"{name!r}: no such folder in {r.root} (it holds NAME.in and NAME.out)")
    cases = []
    total = 0
    for inp in sorted(folder.glob("*.in")):
        out = inp.with_suffix(".out")
        if not out.exists():
            raise r.fail("scorer.cases", f"{inp.name} has no {out.name} beside it")
        case = Case(name=inp.stem, input=_case_bytes(r, inp), output=_case_bytes(r, out))
        total += len(case.input) + len(case.output)
        if total > MAX_CASES_BYTES:
            raise r.fail(
                "scorer.cases",
                f"{folder.name}: the cases hold more than {MAX_CASES_BYTES // 2**20} MB in all"
                f" (past it at {inp.name}); a problem's cases are at most that",
            )
        cases.append(case)
    for out in folder.glob("*.out"):
        if not out.with_suffix(".in").is_file():
            raise r.fail("scorer.cases", f"{out.name} has no {out.stem}.in beside it")
    if not cases:
        raise r.fail("scorer.cases", f"{folder} holds no NAME.in / NAME.out pairs")
    return tuple(cases)


def _case_bytes(r: _Reader, p: Path) -> bytes:
    """A stdio case file's bytes: a regular file (a FIFO blocked the load forever) of at
    most :data:`MAX_FILE_BYTES` (every case is given to every sample), inside the problem's
    folder as its other files are (a symlink to /etc/passwd was read as a case)."""
    try:
        if not _resolve(p).is_relative_to(r.root.resolve()):
            raise r.fail("scorer.cases", f"{p.name} is outside the problem's folder (a symlink out of it)")
        with open(p, "rb", buffering=0, opener=_nonblocking) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise r.fail("scorer.cases", f"{p.name} is not a regular file")
            if st.st_size > MAX_FILE_BYTES:
                raise r.fail("scorer.cases", f"{p.name} {_too_large()}")
            return f.read()
    except OSError as e:
        raise r.fail("scorer.cases", f"{p.name}: cannot read ({e.strerror or e})") from None


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)


def _hashed_files(folder: Path) -> Iterable[Path]:
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if p.is_file() and p.suffix != ".pyc" and rel != Path("problem.toml"):
            yield p


def _file_sha256(p: Path) -> str:
    """A file's SHA-256, read in chunks (a data file of gigabytes was read whole)."""
    with p.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _folder_hash(folder: Path, settings: dict[str, Any]) -> str:
    """SHA-256 over the parsed settings and (path, SHA-256) of every file of the folder."""
    files = [[p.relative_to(folder).as_posix(), _file_sha256(p)] for p in _hashed_files(folder)]
    listing = {"format": "rollwatch-problem/1", "settings": settings, "files": files}
    # A file name that is not UTF-8 hashes as its bytes (the settings are text already).
    return "sha256:" + hashlib.sha256(_canonical(listing, "surrogateescape")).hexdigest()


def _canonical(obj: Any, errors: str = "strict") -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", errors)


# -- HumanEval ---------------------------------------------------------------------------------

_HUMANEVAL_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def load_humaneval(path: Path, *, name: str | None = None, prompt_template: str | None = None) -> ProblemSet:
    """A HumanEval-format JSONL file (``.jsonl`` or ``.jsonl.gz``): one problem per line."""
    if not path.is_file():
        raise ProblemError(f"{path}: no such HumanEval file (problem_sets.path)")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    left = MAX_HUMANEVAL_BYTES
    try:
        with opener(path, "rb") as f:
            for lineno in itertools.count(1):
                # Read within the bound (decompressed): a 2 MB gzip of one 2 GB line was
                # read whole, a MemoryError traceback or the OOM killer.
                raw = f.readline(left + 1)
                if not raw:
                    break
                left -= len(raw)
                if left < 0:
                    raise ProblemError(
                        f"{path}: is larger than {MAX_HUMANEVAL_BYTES // 2**20} MB (decompressed); "
                        "a HumanEval file is at most that"
                    )
                line = raw.decode("utf-8")
                if line.strip():
                    problems.append(_humaneval_problem(path, lineno, line))
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as e:
        # zlib.error: a gzip file whose compressed data is damaged (not truncated).
        raise ProblemError(f"{path}: cannot read: {e}") from None
    if not problems:
        raise ProblemError(f"{path}: holds no problems")
    _no_duplicates(problems, path)
    return ProblemSet(
        name=name or path.name.split(".")[0],
        path=path,
        format="humaneval",
        problems=problems,
        prompt_template=prompt_template,
    )


def _humaneval_problem(path: Path, lineno: int, line: str) -> Problem:
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as e:  # RecursionError: arrays nested thousands deep
        raise ProblemError(f"{where}: not a JSON object: {e}") from None
    if not isinstance(row, dict):
        raise ProblemError(f"{where}: not a JSON object")
    for key in _HUMANEVAL_KEYS:
        if key not in row and key != "canonical_solution":
            raise ProblemError(f"{where}: {key}: is required")
        if key in row and not isinstance(row[key], str):
            raise ProblemError(f"{where}: {key}: expected a string")
        if key in row and not row[key].isascii():
            try:
                row[key].encode()
            except UnicodeEncodeError as e:  # "\ud800" in the JSON: a lone surrogate
                raise ProblemError(
                    f"{where}: {key}: holds {e.object[e.start]!r}, which is no Unicode character"
                ) from None
    if not _IDENT.match(row["entry_point"]) or keyword.iskeyword(row["entry_point"]):
        raise ProblemError(f"{where}: entry_point: {row['entry_point']!r} is not a Python identifier")
    prompt, test, entry = row["prompt"], row["test"], row["entry_point"]
    canonical = row.get("canonical_solution")
    # "/" is awkward in paths and URLs; the original id stays the title.
    pid = row["task_id"].replace("/", "-")
    if not _ID.match(pid):
        raise ProblemError(
            f"{where}: task_id: {row['task_id']!r}: use letters, digits and . _ - / (at most 128)"
        )
    try:
        _compile(test, "test")
    except SyntaxError as e:
        raise ProblemError(f"{where}: test: does not compile: {e}") from None
    if not re.search(r"^def check\(", test, re.M):
        raise ProblemError(f"{where}: test: defines no check(candidate) function")
    listing = {"format": "rollwatch-humaneval/1", **{k: row.get(k) for k in _HUMANEVAL_KEYS}}
    return Problem(
        id=pid,
        title=row["task_id"],
        prompt=prompt,
        scorer="python-function",
        content_hash="sha256:" + hashlib.sha256(_canonical(listing)).hexdigest(),
        entry_point=entry,
        tests=test,
        reference_solution=prompt + canonical if canonical is not None else None,
        prelude=prompt,
        source="humaneval",
        file=path,
    )


# -- listing -----------------------------------------------------------------------------------


def describe_problems(problem_set: ProblemSet) -> list[dict[str, Any]]:
    """One JSON-ready row per problem, for ``rollwatch problems list``."""
    rows = []
    for p in problem_set.problems:
        rows.append(
            {
                "problem_set": problem_set.name,
                "id": p.id,
                "title": p.title,
                "released": p.released.isoformat() if p.released else None,
                "scorer": p.scorer,
                "entry_point": p.entry_point,
                "cases": len(p.cases),
                "timeout_s": p.timeout,
                "reference": p.reference_solution is not None,
                "tags": list(p.tags),
                "content_hash": p.content_hash,
            }
        )
    return rows
