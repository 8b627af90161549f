"""Code extraction from answers: which block, and why."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rollwatch.scoring.extract import extract_code


class TestFencedBlocks:
    def test_the_block_defining_the_entry_point_wins(self) -> None:
        """With several blocks, the one defining the entry point is taken, not the usage example after it."""
        text = "```python\ndef f(x):\n    return x * x\n```\nUsage:\n```python\nprint(f(2))\n```\n"
        ex = extract_code(text, "f")
        assert (ex.method, ex.blocks) == ("fenced-entry-point", 2)
        assert ex.code == "def f(x):\n    return x * x\n"

    def test_the_last_defining_block_wins(self) -> None:
        """A corrected second version of the function beats the first."""
        text = "```py\ndef f(x):\n    return 0\n```\nOops, fixed:\n```py\ndef f(x):\n    return 1\n```"
        assert extract_code(text, "f").code == "def f(x):\n    return 1\n"

    def test_classes_and_assignments_define_an_entry_point(self) -> None:
        """`class f` and `f = ...` at the top level count as defining f."""
        assert (
            extract_code("```\nclass f:\n    pass\n```\n```\nx = 1\n```", "f").method == "fenced-entry-point"
        )
        assert extract_code("```\nf = lambda x: x\n```\n```\nx = 1\n```", "f").method == "fenced-entry-point"
        assert extract_code("```\nx = 1\n```\n```\nx = 2\n```", "f").method == "fenced-last"

    def test_only_that_name_defined_at_the_top_level_counts(self) -> None:
        """A longer name, a use, a comparison or an indented definition of f does not define f; a later line does."""
        for block in (
            "def fx(a):\n    return a\n",
            "fx = 1\n",
            "class fx:\n    pass\n",
            "print(f(2))\nf == 3\n",
            "if True:\n    def f(a):\n        return a\n",
            "async = 1\nfoo: f = 2\n",
        ):
            assert extract_code(f"```\n{block}```\n```\nx = 1\n```", "f").method == "fenced-last", block
        defining = "x = 1\nasync def f(a):\n    return a\n"
        assert extract_code(f"```\n{defining}```\n```\nx = 1\n```", "f").code == defining
        assert extract_code("```\nf: int = 3\n```\n```\nx = 1\n```", "f").method == "fenced-entry-point"

    def test_without_entry_point_the_last_python_block(self) -> None:
        """No entry point (stdio): the last Python or untagged block."""
        text = "```python\na = 1\n```\n```\nb = 2\n```\n```bash\npython3 main.py\n```\n"
        ex = extract_code(text)
        assert (ex.code, ex.method, ex.blocks) == ("b = 2\n", "fenced-last", 2)

    def test_other_languages_are_not_code(self) -> None:
        """Blocks tagged bash, text or json are skipped; tildes and longer fences work."""
        text = "```text\nnot code\n```\n~~~python3\nx = 1\n~~~\n````python\ny = '```'\n````\n```json\n{}\n```"
        ex = extract_code(text)
        assert ex.code == "y = '```'\n"
        assert ex.blocks == 2

    def test_an_unclosed_block_runs_to_the_end(self) -> None:
        """A truncated answer still yields its code."""
        assert (
            extract_code("Sure:\n```python\ndef f():\n    return 1\n", "f").code == "def f():\n    return 1\n"
        )

    def test_reasoning_is_dropped(self) -> None:
        """Code drafted inside <think> is not the answer."""
        text = "<think>\n```python\ndef f(): return 'draft'\n```\n</think>\nFinal:\n```python\ndef f(): return 'final'\n```"
        ex = extract_code(text, "f")
        assert "final" in (ex.code or "")
        assert ex.blocks == 1


class TestFallbacks:
    def test_whole_text_when_it_parses(self) -> None:
        """A bare program without fences is taken whole."""
        ex = extract_code("import sys\nprint(sum(map(int, sys.stdin.read().split())))\n")
        assert ex.method == "whole-text"
        assert ex.blocks == 0

    def test_prose_is_not_code(self) -> None:
        """Prose, a lone word, or nothing: no code."""
        for text in ("I cannot solve this.", "Sorry", "", "   \n"):
            ex = extract_code(text)
            assert (ex.code, ex.method) == (None, "none"), text

    @given(st.text(alphabet=st.characters(blacklist_characters="`~\r", blacklist_categories=("Cs",))))
    def test_any_fenced_body_round_trips(self, body: str) -> None:
        """Whatever a python block holds (without fence characters) comes back verbatim."""
        text = "Answer:\n```python\n" + body + "\n```\ntrailing words"
        ex = extract_code(text)
        assert ex.method == "fenced-last"
        assert ex.code == body + "\n"
