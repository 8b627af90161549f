"""The HTML pages' template environment (Jinja2): the console's and the public page's.

Autoescaping is on for every template: model answers, problem ids, notes and
subscriber names are hostile input and only ever reach a page as text.
"""

from __future__ import annotations

import functools
import re

import jinja2


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
    env.filters.update(pct=pct, usd=usd, when=when, day=day)
    return env


def compile_templates() -> None:
    """Compile every template now (Jinja keeps them), so that the first page a daemon
    serves does not wait for it (the public page's took 35 ms)."""
    env = templates()
    for name in env.list_templates(extensions=("html",)):
        env.get_template(name)
