"""The report's renderings: JSON rows, CSV, and an aligned terminal table.

A :class:`Report` is what every view builds and every renderer reads: its rows, the
keys of the JSON and CSV renderings, and the terminal table's columns.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """How a terminal table shows one column: its header, its text, its alignment."""

    header: str
    text: Callable[[Any], str]
    right: bool = True


@dataclass(frozen=True)
class Report:
    """Rows of one view and what the renderers need to show them.

    ``keys`` are the row fields of the JSON and CSV renderings, in order (a field a
    view does not use, like ``run_id`` outside ``--by run``, is left out).
    """

    title: str
    rows: tuple[Any, ...]
    """Frozen dataclasses with (at least) the fields named by ``keys``."""
    keys: tuple[str, ...]
    columns: tuple[Column, ...]
    notes: tuple[str, ...] = ()
    empty: str = "(no rollouts)"
    """What the table says when there are no rows (why the view has nothing to show)."""


def _plain(v: Any) -> Any:
    # JSON has no infinity or NaN; the estimators return None where those would be.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_json(report: Report) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (SPEC §2: a list of rows)."""
    return [{k: _plain(getattr(r, k)) for k in report.keys} for r in report.rows]


def to_csv(report: Report) -> str:
    """The rows as CSV with a header line; empty cells for nulls, ``true``/``false`` for flags."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(report.keys)
    for row in to_json(report):
        w.writerow([_cell(v) for v in row.values()])
    return buf.getvalue()


def _cell(v: Any) -> Any:
    """A CSV cell: empty for null, ``true``/``false``, counts by cause as ``a=1;b=2``."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return ";".join(f"{k}={n}" for k, n in v.items())
    return v


def to_table(report: Report) -> str:
    """The rows as an aligned table for a terminal, with the notes under it."""
    header = [c.header for c in report.columns]
    body = [[c.text(r) for c in report.columns] for r in report.rows]
    widths = [max([len(h), *(len(line[i]) for line in body)]) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if col.right else cell.ljust(w)
            for cell, w, col in zip(cells, widths, report.columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(header), *(fmt(line) for line in body)]
    if not body:
        lines.append(report.empty)
    lines += [f"  {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def _int(n: int) -> str:
    return f"{n:,}"


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    v = 100 * x
    if v == 0 or v == 100:
        return f"{v:.0f}%"
    return f"{v:.2f}%" if v < 10 else f"{v:.1f}%"


def _rate_ci(p: float | None, low: float | None, high: float | None) -> str:
    if p is None:
        return "-"
    return f"{_pct(p)} [{_pct(low)}, {_pct(high)}]"


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f} pp"


def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x >= 0.001 else "<0.001"


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"${x:,.0f}"
    return f"${x:.2f}" if x >= 1 else f"${x:.4f}"


def _num(x: float | None) -> str:
    return "∞" if x is None else f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def _when(at: str | None) -> str:
    return "-" if not at else at[:16].replace("T", " ")
