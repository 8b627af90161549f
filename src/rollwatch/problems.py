"""Problem sets: folders of ``problem.toml`` problems, or HumanEval-format JSONL.

Every problem has a content hash over everything that defines it (prompt, scorer
settings, tests, cases, checker, reference), recorded with every rollout: a later
change to a problem's tests shows in the archive.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

from rollwatch.config import ProblemSetConfig, parse_duration
from rollwatch.errors import ProblemError

ScorerKind = Literal["python-function", "stdio", "command"]

DEFAULT_TEMPLATES: dict[str, str] = {
    "python-function": (
        "Complete the following Python function. Answer with the whole function, including its"
        " signature and any imports it needs, in one ```python fenced code block.\n\n{prompt}"
    ),
    "stdio": (
        "{prompt}\n\nWrite a complete Python 3 program that reads the input from standard input and"
        " writes the answer to standard output. Answer with one ```python fenced code block."
    ),
    "command": "{prompt}\n\nAnswer with one ```python fenced code block.",
}

_TOP_KEYS = {"id", "title", "released", "prompt", "prompt_file", "scorer", "reference", "tags"}
_SCORER_KEYS = {
    "python-function": {"kind", "entry_point", "tests", "timeout"},
    "stdio": {"kind", "timeout", "float_tolerance", "cases"},
    "command": {"kind", "command", "timeout"},
}


@dataclass(frozen=True)
class Case:
    """One stdio test case: input and expected output."""

    name: str
    input: str
    output: str


@dataclass(frozen=True)
class Problem:
    """One problem, loaded and self-contained (no file reads after loading)."""

    id: str
    title: str
    prompt: str
    scorer: ScorerKind
    content_hash: str
    released: date | None = None
    entry_point: str | None = None
    tests: str = ""
    """python-function: the test code defining ``check(candidate)``."""
    cases: tuple[Case, ...] = ()
    float_tolerance: float | None = None
    command: tuple[str, ...] = ()
    """command: the operator's checker argv; the solution path is appended."""
    timeout: float = 10.0
    reference_solution: str | None = None
    folder: Path | None = None
    tags: tuple[str, ...] = ()


@dataclass
class ProblemSet:
    """Problems by id, with the prompt template of their set."""

    name: str
    problems: list[Problem] = field(default_factory=list)
    template: str | None = None

    def get(self, problem_id: str) -> Problem:
        """The problem ``problem_id`` (KeyError when the set has none)."""
        for p in self.problems:
            if p.id == problem_id:
                return p
        raise KeyError(problem_id)

    def prompt(self, problem: Problem) -> str:
        """The text sent to the model."""
        template = self.template or DEFAULT_TEMPLATES[problem.scorer]
        return template.replace("{prompt}", problem.prompt)


def _hash(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _read(folder: Path, rel: str, where: str) -> str:
    p = (folder / rel).resolve()
    if folder.resolve() not in p.parents and p != folder.resolve():
        raise ProblemError(f"{where}: {rel!r} points outside the problem folder")
    try:
        return p.read_text(encoding="utf-8")
    except OSError as e:
        raise ProblemError(f"{where}: cannot read {rel!r}: {e.strerror or e}") from None


def load_problem(folder: Path) -> Problem:
    """One problem from its folder; ProblemError naming the file and key on any mistake."""
    toml_path = folder / "problem.toml"
    where = str(toml_path)
    try:
        data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProblemError(f"{where}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProblemError(f"{where}: not valid TOML: {e}") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ProblemError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    pid = str(data.get("id") or folder.name)
    if "prompt" in data and "prompt_file" in data:
        raise ProblemError(f"{where}: set only one of prompt and prompt_file")
    if "prompt_file" in data:
        prompt = _read(folder, str(data["prompt_file"]), f"{where}: prompt_file")
    elif "prompt" in data:
        prompt = str(data["prompt"])
    else:
        raise ProblemError(f"{where}: prompt or prompt_file is required")
    scorer = data.get("scorer")
    if not isinstance(scorer, dict):
        raise ProblemError(f"{where}: [scorer] table is required")
    kind = scorer.get("kind")
    if kind not in _SCORER_KEYS:
        raise ProblemError(f"{where}: scorer.kind: {kind!r} is not one of python-function, stdio, command")
    unknown = set(scorer) - _SCORER_KEYS[kind]
    if unknown:
        raise ProblemError(f"{where}: scorer: unknown key(s) {', '.join(sorted(unknown))} for kind {kind}")
    try:
        timeout = parse_duration(scorer.get("timeout", "10s"))
    except ValueError as e:
        raise ProblemError(f"{where}: scorer.timeout: {e}") from None
    released = data.get("released")
    if released is not None and not isinstance(released, date):
        raise ProblemError(f"{where}: released: use a TOML date such as 2026-01-15")
    reference = data.get("reference") or {}
    if set(reference) - {"solution"}:
        raise ProblemError(f"{where}: reference: only 'solution' is allowed")
    ref = _read(folder, reference["solution"], f"{where}: reference.solution") if "solution" in reference else None

    parts: dict[str, Any] = {"id": pid, "prompt": prompt, "scorer": {k: v for k, v in scorer.items() if k != "tests"}}
    fields: dict[str, Any] = {}
    if kind == "python-function":
        if "entry_point" not in scorer or "tests" not in scorer:
            raise ProblemError(f"{where}: scorer: python-function needs entry_point and tests")
        fields["entry_point"] = str(scorer["entry_point"])
        fields["tests"] = _read(folder, str(scorer["tests"]), f"{where}: scorer.tests")
        parts["tests"] = fields["tests"]
    elif kind == "stdio":
        cases_dir = folder / str(scorer.get("cases", "cases"))
        ins = sorted(cases_dir.glob("*.in"))
        if not ins:
            raise ProblemError(f"{where}: stdio needs cases: no *.in files in {cases_dir}")
        cases = []
        for f in ins:
            out = f.with_suffix(".out")
            if not out.exists():
                raise ProblemError(f"{where}: case {f.name} has no {out.name}")
            cases.append(Case(f.stem, f.read_text(), out.read_text()))
        fields["cases"] = tuple(cases)
        tol = scorer.get("float_tolerance")
        fields["float_tolerance"] = float(tol) if tol is not None else None
        parts["cases"] = [[c.name, c.input, c.output] for c in cases]
    else:
        cmd = scorer.get("command")
        if not (isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd)):
            raise ProblemError(f"{where}: scorer.command: a list of strings, e.g. [\"python3\", \"check.py\"]")
        resolved = tuple(str((folder / c).resolve()) if (folder / c).exists() else c for c in cmd)
        fields["command"] = resolved
        parts["checker"] = [(folder / c).read_text() if (folder / c).is_file() else c for c in cmd]
    parts["reference"] = ref
    return Problem(
        id=pid, title=str(data.get("title", pid)), prompt=prompt, scorer=kind, content_hash=_hash(parts),
        released=released, timeout=timeout, reference_solution=ref, folder=folder,
        tags=tuple(data.get("tags", ())), **fields,
    )


def load_humaneval(path: Path) -> list[Problem]:
    """HumanEval-format JSONL (``.jsonl`` or ``.jsonl.gz``): task_id, prompt, entry_point, test, canonical_solution."""
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    pid = str(d["task_id"]).replace("/", "-")
                    tests = d["test"]
                    ref = d["prompt"] + d["canonical_solution"]
                    out.append(Problem(
                        id=pid, title=str(d["task_id"]), prompt=d["prompt"], scorer="python-function",
                        entry_point=d["entry_point"], tests=tests, reference_solution=ref, timeout=10.0,
                        content_hash=_hash({"prompt": d["prompt"], "test": tests, "entry_point": d["entry_point"], "reference": ref}),
                    ))
                except (KeyError, TypeError, json.JSONDecodeError) as e:
                    raise ProblemError(f"{path}:{n}: not a HumanEval record ({e})") from None
    except OSError as e:
        raise ProblemError(f"{path}: cannot read: {e.strerror or e}") from None
    return out


def load_problem_set(cfg: ProblemSetConfig) -> ProblemSet:
    """The problem set ``cfg`` describes; ProblemError naming every broken problem."""
    path = Path(cfg.path)
    if cfg.format == "humaneval":
        return ProblemSet(cfg.name, load_humaneval(path), cfg.prompt_template)
    if not path.is_dir():
        raise ProblemError(f"problem set {cfg.name!r}: {path} is not a folder")
    problems, errors = [], []
    for folder in sorted(p for p in path.iterdir() if (p / "problem.toml").is_file()):
        try:
            problems.append(load_problem(folder))
        except ProblemError as e:
            errors.append(str(e))
    if errors:
        raise ProblemError(f"problem set {cfg.name!r}:\n  " + "\n  ".join(errors))
    ids = [p.id for p in problems]
    dups = {i for i in ids if ids.count(i) > 1}
    if dups:
        raise ProblemError(f"problem set {cfg.name!r}: duplicate problem id(s) {', '.join(sorted(dups))}")
    if not problems:
        raise ProblemError(f"problem set {cfg.name!r}: no problem.toml under {path}")
    return ProblemSet(cfg.name, problems, cfg.prompt_template)
