"""The HTML pages' template environment (Jinja2): the console's and the public page's.

Autoescaping is on for every template: model answers, problem ids, notes and
subscriber names are hostile input and only ever reach a page as text.
"""

from __future__ import annotations

import functools
import re

import jinja2
import markupsafe


def natural_key(s: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``p2`` before ``p10`` (runs of digits compared as numbers)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", s) if p)


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal, or an en dash for none."""
    return "–" if x is None else f"{100 * x:.1f}%"


def usd(x: float | None) -> str:
    """Dollars: four decimals under one dollar, two above."""
    return "–" if x is None else f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def when(at: str | None) -> str:
    """An RFC 3339 time as ``YYYY-MM-DD HH:MM:SS`` (UTC), or an en dash."""
    return "–" if not at else at.replace("T", " ")[:19]


def day(at: str | None) -> str:
    """The date of an RFC 3339 time."""
    return at[:10] if at else "–"


# Characters that hide or reorder what a page shows while the code runs as written: C0
# and C1 controls (but tab and line ends), bidirectional embeddings, overrides and
# isolates (Trojan Source, CVE-2021-42574), zero-width and other invisible characters
# (Python takes the Hangul fillers as letters of a name), Unicode tags and the
# supplementary variation selectors (text smuggled past a reader).
_HIDDEN = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e"
    "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)


SHOWN_MAX = 200_000
"""Characters of one text a page shows; the rest is said, not shown (the log has it all)."""
MARKED_MAX = 2_000
"""Hidden characters of one text a page writes out; the text is cut at the next one."""


def shown(text: object) -> markupsafe.Markup:
    """``text`` escaped, with every character that would hide or reorder what is shown
    (``_HIDDEN``) written out as a marked ``⟨U+XXXX⟩``: an operator reads the code that ran,
    not what a right-to-left override or a zero-width space makes it look like.

    At most :data:`SHOWN_MAX` characters and :data:`MARKED_MAX` marked ones are shown, then
    how many more there are: a model's answer may be 64 MiB, and one of zero-width
    characters made a page forty times that (each written out as a marked code point),
    built in the daemon's memory."""
    s = str(text)
    total = len(s)
    if total > SHOWN_MAX:
        s = s[:SHOWN_MAX]
    for n, m in enumerate(_HIDDEN.finditer(s), 1):
        if n > MARKED_MAX:
            s = s[: m.start()]
            break
    escaped = str(markupsafe.escape(s))
    out = _HIDDEN.sub(lambda m: f'<span class="ctl">⟨U+{ord(m[0]):04X}⟩</span>', escaped)
    if len(s) < total:
        out += (
            f'<span class="ctl">⟨{total - len(s):,} more characters not shown: the event log holds the'
            " whole text⟩</span>"
        )
    return markupsafe.Markup(out)  # noqa: S704 (escaped first; the additions are constant markup)


@functools.cache
def templates() -> jinja2.Environment:
    """The shared environment (templates under ``rollwatch/web/templates``), autoescaping on."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("rollwatch.web", "templates"),
        autoescape=True,  # every template is HTML; model text must never become markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=pct, usd=usd, when=when, day=day, shown=shown)
    return env


def compile_templates() -> None:
    """Compile every template now (Jinja keeps them), so that the first page a daemon
    serves does not wait for it (the public page's took 35 ms)."""
    env = templates()
    for name in env.list_templates(extensions=("html",)):
        env.get_template(name)
