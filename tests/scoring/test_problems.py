"""Loading problem sets: folders and HumanEval JSONL, validation, content hashes, prompts."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tracemalloc
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import ClassVar

import pytest

from rollwatch.errors import ProblemError
from rollwatch.problems import (
    DEFAULT_TEMPLATES,
    describe_problems,
    load_folder_set,
    load_humaneval,
    load_problem,
    load_problem_set,
)

from .conftest import PROBLEMS


@dataclass
class SetConfig:
    name: str
    path: str
    format: str = "folder"
    prompt_template: str | None = None


def write_problem(folder: Path, toml: str, files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problem.toml").write_text(toml)
    for name, text in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


FUNCTION_TOML = """
title = "Square"
released = 2026-01-15
prompt = "def sq(x): ..."
[scorer]
kind = "python-function"
entry_point = "sq"
tests = "tests.py"
timeout = "2s"
[reference]
solution = "solution.py"
"""
FUNCTION_FILES = {
    "tests.py": "def check(candidate):\n    assert candidate(3) == 9\n",
    "solution.py": "def sq(x):\n    return x * x\n",
}


class TestBundledSet:
    def test_loads_with_every_kind(self) -> None:
        """The sample set has at least 8 problems over all three scorers, each with a reference."""
        ps = load_problem_set(SetConfig(name="favorites", path=str(PROBLEMS)))
        assert len(ps.problems) >= 8
        assert {p.scorer for p in ps.problems} == {"python-function", "stdio", "command"}
        assert all(p.reference_solution for p in ps.problems)
        assert all(p.content_hash.startswith("sha256:") for p in ps.problems)
        assert ps.get("dijkstra").title == "Shortest paths (Dijkstra)"
        assert ps.get("closest-pair").float_tolerance == 1e-6
        with pytest.raises(KeyError):
            ps.get("nope")

    def test_describe_rows(self) -> None:
        """describe_problems gives one JSON-ready row per problem for `problems list`."""
        rows = describe_problems(load_folder_set(PROBLEMS, name="favorites"))
        row = next(r for r in rows if r["id"] == "n-queens")
        assert row["scorer"] == "command"
        assert row["reference"] is True
        assert row["released"] == "2026-04-01"
        json.dumps(rows)


class TestFolderProblems:
    def test_defaults_and_fields(self, tmp_path: Path) -> None:
        """id defaults to the folder name; the scorer table and reference are read."""
        p = load_problem(write_problem(tmp_path / "square", FUNCTION_TOML, FUNCTION_FILES))
        assert (p.id, p.title, p.released, p.scorer, p.entry_point, p.timeout) == (
            "square",
            "Square",
            date(2026, 1, 15),
            "python-function",
            "sq",
            2.0,
        )
        assert p.reference_solution == FUNCTION_FILES["solution.py"]

    def test_stdio_cases(self, tmp_path: Path) -> None:
        """stdio problems read NAME.in/NAME.out pairs in name order, as bytes."""
        folder = write_problem(
            tmp_path / "echo",
            'prompt_file = "p.md"\n[scorer]\nkind = "stdio"\nfloat_tolerance = 0.001\n',
            {"p.md": "Echo", "cases/b.in": "2", "cases/b.out": "2", "cases/a.in": "1", "cases/a.out": "1"},
        )
        p = load_problem(folder)
        assert [(c.name, c.input, c.output) for c in p.cases] == [("a", b"1", b"1"), ("b", b"2", b"2")]
        assert p.prompt == "Echo"
        assert p.float_tolerance == 0.001

    @pytest.mark.parametrize("case", ["huge-in", "huge-out", "fifo-in", "fifo-out"])
    def test_a_stdio_case_that_is_huge_or_no_file_is_refused(self, tmp_path: Path, case: str) -> None:
        """A case file over 8 MB was read whole (and given to every sample); a case that is a
        FIFO blocked the load forever. Now each is one ProblemError naming the file."""
        folder = write_problem(
            tmp_path / "echo",
            'prompt = "Echo"\n[scorer]\nkind = "stdio"\n',
            {"cases/a.in": "1", "cases/a.out": "1"},
        )
        target = folder / "cases" / ("a.in" if case.endswith("-in") else "a.out")
        target.unlink()
        if case.startswith("fifo"):
            os.mkfifo(target)
        else:
            with target.open("wb") as f:  # sparse: no disk taken
                f.truncate(8 * 1024 * 1024 + 1)
        with pytest.raises(ProblemError, match=rf"{target.name} (is larger than 8 MB|is not a regular file)"):
            load_problem(folder)

    def test_a_huge_file_beside_the_problem_is_hashed_without_reading_it_whole(self, tmp_path: Path) -> None:
        """Every file of a problem's folder goes into its content hash: one of 1 GB (sparse)
        is hashed in chunks (it was read whole into memory)."""
        folder = write_problem(tmp_path / "sq", FUNCTION_TOML, FUNCTION_FILES)
        with (folder / "data.bin").open("wb") as f:
            f.truncate(1 << 30)
        tracemalloc.start()
        try:
            load_problem(folder)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024 * 1024, peak

    @pytest.mark.parametrize(
        ("toml", "files", "message"),
        [
            ('prompt = "x"\ncolour = 1\n[scorer]\nkind = "stdio"\n', {}, "problem.toml: colour: unknown key"),
            (
                'prompt = "x"\n[scorer]\nkind = "stdio"\nentry_pont = "f"\n',
                {},
                "problem.toml: scorer.entry_pont: unknown key",
            ),
            (
                'prompt = "x"\n[scorer]\nkind = "stdio"\nentry_point = "f"\n',
                {},
                "scorer.entry_point: does not apply",
            ),
            ('prompt = "x"\n[scorer]\nkind = "java"\n', {}, "scorer.kind: 'java' is not one of"),
            ('prompt = "x"\n[scorer]\nkind = "stdio"\n', {}, "scorer.cases: 'cases': no such folder"),
            ('prompt = "x"\n[scorer]\nkind = "stdio"\n', {"cases/a.in": "1"}, "a.in has no a.out"),
            ('[scorer]\nkind = "stdio"\n', {}, "prompt: is required"),
            (
                'prompt = "x"\n[scorer]\nkind = "python-function"\nentry_point = "f"\ntests = "t.py"\n',
                {},
                "scorer.tests: 't.py': no such file",
            ),
            (
                'prompt = "x"\n[scorer]\nkind = "python-function"\nentry_point = "f"\ntests = "t.py"\n',
                {"t.py": "x = 1\n"},
                "defines no check(candidate)",
            ),
            (
                'prompt = "x"\n[scorer]\nkind = "python-function"\nentry_point = "f"\ntests = "t.py"\ntimeout = "soon"\n',
                {"t.py": "def check(c): pass\n"},
                "scorer.timeout: 'soon' is not a duration",
            ),
            (
                'prompt = "x"\n[scorer]\nkind = "command"\ncommand = "check.py"\n',
                {},
                "scorer.command: expected a list",
            ),
            (
                'prompt = "x"\n[scorer]\nkind = "command"\ncommand = ["python3"]\n[reference]\nfile = "s.py"\n',
                {},
                "reference.file: unknown key",
            ),
            (
                'prompt = "x"\nreleased = "someday"\n[scorer]\nkind = "command"\ncommand = ["true"]\n',
                {},
                "released:",
            ),
            (
                'prompt = "x"\n[scorer]\nkind = "command"\ncommand = ["../../etc/passwd"]\n',
                {},
                "no such file",
            ),
        ],
    )
    def test_errors_name_the_file_and_the_key(
        self, tmp_path: Path, toml: str, files: dict[str, str], message: str
    ) -> None:
        """Every mistake is a ProblemError naming problem.toml, the key and what is wrong."""
        folder = write_problem(tmp_path / "bad", toml, files)
        with pytest.raises(ProblemError) as err:
            load_problem(folder)
        assert str(folder / "problem.toml") in str(err.value)
        assert message in str(err.value)

    def test_duplicate_ids_and_strays(self, tmp_path: Path) -> None:
        """Two problems with one id, or a folder without problem.toml, make the set invalid."""
        write_problem(tmp_path / "a", 'id = "x"\n' + FUNCTION_TOML, FUNCTION_FILES)
        write_problem(tmp_path / "b", 'id = "x"\n' + FUNCTION_TOML, FUNCTION_FILES)
        with pytest.raises(ProblemError, match="problem id 'x' is used twice"):
            load_folder_set(tmp_path)
        shutil.rmtree(tmp_path / "b")
        (tmp_path / "notes").mkdir()
        with pytest.raises(ProblemError, match=r"without a problem\.toml"):
            load_folder_set(tmp_path)
        (tmp_path / "notes").rename(tmp_path / "_notes")
        assert [p.id for p in load_folder_set(tmp_path).problems] == ["x"]


class TestContentHash:
    def test_stable_across_locations(self, tmp_path: Path) -> None:
        """The same problem in another folder (another install) has the same hash."""
        a = load_problem(shutil.copytree(PROBLEMS / "n-queens", tmp_path / "one" / "n-queens"))
        b = load_problem(shutil.copytree(PROBLEMS / "n-queens", tmp_path / "two" / "n-queens"))
        assert a.content_hash == b.content_hash == load_problem(PROBLEMS / "n-queens").content_hash

    @pytest.mark.parametrize(
        "change",
        ["tests", "reference", "settings", "prompt", "new-file"],
    )
    def test_any_defining_change_shows(self, tmp_path: Path, change: str) -> None:
        """Changing the tests, reference, scorer settings, prompt or any file changes the hash."""
        folder = write_problem(tmp_path / "square", FUNCTION_TOML, FUNCTION_FILES)
        before = load_problem(folder).content_hash
        if change == "tests":
            (folder / "tests.py").write_text(FUNCTION_FILES["tests.py"] + "    assert candidate(0) == 0\n")
        elif change == "reference":
            (folder / "solution.py").write_text("def sq(x):\n    return x ** 2\n")
        elif change == "settings":
            (folder / "problem.toml").write_text(FUNCTION_TOML.replace('"2s"', '"3s"'))
        elif change == "prompt":
            (folder / "problem.toml").write_text(FUNCTION_TOML.replace("def sq(x)", "def sq(y)"))
        else:
            (folder / "data.txt").write_text("more")
        assert load_problem(folder).content_hash != before

    def test_comments_and_caches_do_not(self, tmp_path: Path) -> None:
        """A comment in problem.toml, __pycache__ and dotfiles leave the hash alone."""
        folder = write_problem(tmp_path / "square", FUNCTION_TOML, FUNCTION_FILES)
        before = load_problem(folder).content_hash
        (folder / "problem.toml").write_text("# a note\n" + FUNCTION_TOML)
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__" / "tests.cpython-311.pyc").write_bytes(b"\0")
        (folder / ".swp").write_text("x")
        assert load_problem(folder).content_hash == before


class TestHumanEval:
    RECORD: ClassVar[dict[str, str]] = {
        "task_id": "HumanEval/0",
        "prompt": 'def add(a, b):\n    """Sum."""\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
        "entry_point": "add",
    }

    @pytest.mark.parametrize("gz", [False, True])
    def test_jsonl_and_gz(self, tmp_path: Path, gz: bool) -> None:
        """Plain and gzipped JSONL load; ids lose their slash; the prompt is the prelude."""
        path = tmp_path / ("he.jsonl.gz" if gz else "he.jsonl")
        data = (json.dumps(self.RECORD) + "\n\n").encode()
        path.write_bytes(gzip.compress(data) if gz else data)
        ps = load_problem_set(SetConfig(name="he", path=str(path), format="humaneval"))
        (p,) = ps.problems
        assert (p.id, p.title, p.entry_point, p.source) == ("HumanEval-0", "HumanEval/0", "add", "humaneval")
        assert p.prelude == self.RECORD["prompt"]
        assert p.reference_solution == self.RECORD["prompt"] + self.RECORD["canonical_solution"]
        assert "Complete the following Python function" in ps.prompt(p)
        assert self.RECORD["prompt"] in ps.prompt(p)

    def test_bad_lines_are_named(self, tmp_path: Path) -> None:
        """A broken record names the file and the line."""
        path = tmp_path / "he.jsonl"
        path.write_text(json.dumps(self.RECORD) + "\n" + json.dumps({"task_id": "x"}) + "\n")
        with pytest.raises(ProblemError, match=r"he.jsonl:2: prompt: is required"):
            load_humaneval(path)

    def test_hash_changes_with_the_tests(self, tmp_path: Path) -> None:
        """A HumanEval problem's hash covers its tests."""
        path = tmp_path / "he.jsonl"
        path.write_text(json.dumps(self.RECORD))
        a = load_humaneval(path).problems[0].content_hash
        path.write_text(json.dumps({**self.RECORD, "test": self.RECORD["test"] + "    assert True\n"}))
        assert load_humaneval(path).problems[0].content_hash != a


class TestPrompts:
    def test_default_template_per_kind(self) -> None:
        """Each kind asks for one fenced code block; python-function names the entry point."""
        ps = load_folder_set(PROBLEMS)
        for p in ps.problems:
            text = ps.prompt(p)
            assert p.prompt in text
            assert "```python" in text
        assert "`lru_run`" in ps.prompt(ps.get("lru-cache"))
        assert "standard input" in ps.prompt(ps.get("dijkstra"))
        assert set(DEFAULT_TEMPLATES) == {"python-function", "humaneval", "stdio", "command"}

    def test_override_per_set(self) -> None:
        """A set's prompt_template replaces the default; braces elsewhere are left alone."""
        cfg = SetConfig(name="s", path=str(PROBLEMS), prompt_template="Solve {title} ({id}) {{x}}:\n{prompt}")
        ps = load_problem_set(cfg)
        p = ps.get("dijkstra")
        assert ps.prompt(p) == f"Solve {p.title} (dijkstra) {{{{x}}}}:\n{p.prompt}"

    def test_template_without_placeholder_is_an_error(self) -> None:
        """A template that would drop the problem's text is refused."""
        with pytest.raises(ProblemError, match=r"prompt_template has no \{prompt\}"):
            load_problem_set(SetConfig(name="s", path=str(PROBLEMS), prompt_template="Solve it."))
