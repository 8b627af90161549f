"""The public release rendered: JSON Feed 1.1, Atom 1.0, and an HTML page with an SVG chart.

Pure functions of a :class:`~rollwatch.publication.public.PublicView`: the HTTP routes
and ``rollwatch publish export`` render the same bytes. The page has no external
assets (styles inline, chart drawn here as SVG), so the export works from a plain
file server or a disk.

``base_url`` is where the public release lives, ending in ``/`` (e.g.
``https://example.org/public/``); feeds need absolute URLs.
"""

from __future__ import annotations

import html
import json
import math
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from rollwatch.publication.public import PublicView, Released, Series
from rollwatch.web.render import natural_key, templates

TITLE = "rollwatch: released results"
ATOM_NS = "http://www.w3.org/2005/Atom"
EPOCH = "1970-01-01T00:00:00.000000Z"

# XML 1.0 forbids most control characters even when escaped; model answers may hold them.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(s: str) -> str:
    return _XML_INVALID.sub("\ufffd", s)


def item_id(rollout_id: str) -> str:
    """A permanent id for a released result: ``urn:uuid:`` for UUID rollout ids."""
    try:
        return uuid.UUID(rollout_id).urn
    except ValueError:
        return "urn:rollwatch:rollout:" + quote(rollout_id, safe="")


def item_url(base_url: str, rollout_id: str) -> str:
    """Where the released record of one result is (``rollouts/{id}.json`` under the base)."""
    return f"{base_url}rollouts/{quote(rollout_id, safe='')}.json"


def title_of(r: Released) -> str:
    """An item's title: who solved what (marked when a re-score superseded it)."""
    mark = "[superseded] " if r.superseded_at is not None else ""
    return f"{mark}{r.model} ({r.provider}) solved {r.problem_id}"


def summary_of(r: Released) -> str:
    """One line about a released result: model, problem, when, score, cost."""
    cost = f", cost ${r.cost_usd:.4f}" if r.cost_usd is not None else ""
    score = f", score {r.score:g}" if r.score is not None else ""
    return (
        f"{r.model} ({r.provider}) solved problem {r.problem_id} in run {r.run_id}, sample {r.sample}; "
        f"scored {r.scored_at}{score}{cost}; released {r.released_at}."
        + (
            f" Superseded {r.superseded_at}: the answer fails the problem's newer version"
            f" {(r.superseded_hash or '')[:19]} (its tests were strengthened)."
            if r.superseded_at is not None
            else ""
        )
    )


def content_of(r: Released) -> str:
    """An item's text: the summary, then the answer as the model gave it."""
    if r.answer is None:
        return summary_of(r)
    return summary_of(r) + "\n\nAnswer:\n\n" + r.answer


# --- JSON Feed 1.1 ---------------------------------------------------------------------------


def json_feed(
    view: PublicView, base_url: str, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON Feed 1.1 document (https://www.jsonfeed.org/version/1.1/).

    ``extra`` maps rollout ids to more fields for their items' ``_rollwatch`` object
    (the inclusion proofs of :mod:`rollwatch.publication.inclusion`).
    """
    items = []
    for r in view.recent:
        meta = r.to_json()
        meta.pop("answer")
        if extra is not None:
            # The item's proof bundle: every event of its claim against one checkpoint.
            meta["proof_url"] = item_url(base_url, r.rollout_id)
            if r.rollout_id in extra:
                meta.update(extra[r.rollout_id])
        items.append(
            {
                "id": item_id(r.rollout_id),
                "url": item_url(base_url, r.rollout_id),
                "title": title_of(r),
                "summary": summary_of(r),
                "content_text": content_of(r),
                "date_published": r.released_at,
                "date_modified": r.updated,
                "tags": [r.provider, r.model, r.problem_id],
                "_rollwatch": meta,
            }
        )
    return {
        "version": "https://jsonfeed.org/version/1.1",
        "title": TITLE,
        "home_page_url": base_url,
        "feed_url": base_url + "feed.json",
        "description": "Programming problems solved by LLMs, released after the embargo.",
        "language": "en",
        "authors": [{"name": "rollwatch"}],
        "items": items,
    }


def json_feed_bytes(
    view: PublicView, base_url: str, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> bytes:
    """The JSON Feed as UTF-8 bytes."""
    return json.dumps(json_feed(view, base_url, extra), ensure_ascii=False, indent=1).encode()


# --- Atom 1.0 -------------------------------------------------------------------------------------


def atom_feed(view: PublicView, base_url: str) -> bytes:
    """The Atom 1.0 document (RFC 4287), UTF-8."""
    ET.register_namespace("", ATOM_NS)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        el = ET.SubElement(parent, f"{{{ATOM_NS}}}{tag}", attrs)
        if text is not None:
            el.text = _xml_text(text)
        return el

    feed = ET.Element(f"{{{ATOM_NS}}}feed")
    sub(feed, "id", base_url + "feed.atom")
    sub(feed, "title", TITLE)
    sub(feed, "subtitle", "Programming problems solved by LLMs, released after the embargo.")
    sub(feed, "updated", view.updated or EPOCH)
    author = sub(feed, "author")
    sub(author, "name", "rollwatch")
    sub(feed, "link", rel="self", href=base_url + "feed.atom", type="application/atom+xml")
    sub(feed, "link", rel="alternate", href=base_url, type="text/html")
    sub(feed, "generator", "rollwatch")
    for r in view.recent:
        entry = sub(feed, "entry")
        sub(entry, "id", item_id(r.rollout_id))
        sub(entry, "title", title_of(r))
        sub(entry, "updated", r.updated)
        sub(entry, "published", r.released_at)
        sub(entry, "link", rel="alternate", href=item_url(base_url, r.rollout_id))
        sub(entry, "summary", summary_of(r))
        sub(entry, "content", content_of(r), type="text")
        for term in (r.provider, r.model, r.problem_id):
            sub(entry, "category", term=term)
    body: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return body


# --- the HTML page ----------------------------------------------------------------------------------

_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;font-size:.9rem}th{background:#f5f5f5}td.n{text-align:right}
pre{background:#f7f7f7;padding:.5rem;overflow:auto;font-size:.8rem;max-height:30rem}
.muted{color:#666}svg{max-width:100%;height:auto}
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _day(at: str | None) -> str:
    return at[:10] if at else "-"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# Tick steps for the time axis, smallest first: (seconds, label format). The axis takes
# the smallest step that gives at most six ticks, placed on whole steps (midnight, the
# hour, the 1st of a month), so no two ticks can carry the same label.
_DAY = 86400
_STEPS: tuple[tuple[float, str], ...] = (
    (60, "%H:%M"),
    (300, "%H:%M"),
    (900, "%H:%M"),
    (3600, "%H:%M"),
    (3 * 3600, "%m-%d %H:%M"),
    (6 * 3600, "%m-%d %H:%M"),
    (12 * 3600, "%m-%d %H:%M"),
    (_DAY, "%m-%d"),
    (2 * _DAY, "%m-%d"),
    (7 * _DAY, "%Y-%m-%d"),
    (14 * _DAY, "%Y-%m-%d"),
)
_MONTHS = (1, 2, 3, 6, 12, 24, 60)


def time_ticks(t0: float, t1: float, most: int = 6) -> list[tuple[float, str]]:
    """Ticks for a time axis from ``t0`` to ``t1`` (epoch seconds): at most ``most``, on whole
    minutes, hours, days or months, each label distinct."""
    span = t1 - t0
    for step, fmt in _STEPS:
        if span / step <= most - 1:
            first = math.ceil(t0 / step) * step
            ticks = [first + i * step for i in range(int((t1 - first) // step) + 1)]
            return _distinct([(t, datetime.fromtimestamp(t, UTC).strftime(fmt)) for t in ticks])
    months = next((k for k in _MONTHS if span / (k * 30.44 * _DAY) <= most - 1), _MONTHS[-1])
    start = datetime.fromtimestamp(t0, UTC)
    m = -(-(start.year * 12 + start.month - 1) // months) * months  # a whole multiple of the step

    def month(i: int) -> datetime:
        return datetime(i // 12, i % 12 + 1, 1, tzinfo=UTC)

    while month(m).timestamp() < t0:
        m += months
    out = []
    while month(m).timestamp() <= t1:
        out.append((month(m).timestamp(), month(m).strftime("%Y" if months >= 12 else "%Y-%m")))
        m += months
    return _distinct(out)


def _distinct(ticks: list[tuple[float, str]]) -> list[tuple[float, str]]:
    seen: set[str] = set()
    out = []
    for t, label in ticks:
        if label not in seen:
            seen.add(label)
            out.append((t, label))
    return out


def svg_chart(series: list[Series], width: int = 760, height: int = 340) -> str:
    """Pass rate per disclosed run over time, one line per provider/model, as inline SVG.

    Each axis is labelled once (its title), its ticks on whole units of time; the legend
    sits below the plot so that long model names never squeeze it.
    """
    left, right, top, bottom = 56, 16, 16, 56
    legend_rows = (len(series) + 2) // 3
    height += 18 * legend_rows
    pw, ph = width - left - right, height - top - bottom - 18 * legend_rows
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}"'
        f' height="{height}" role="img" aria-label="Pass rate over time by model">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>',
        f'<text x="14" y="{top + ph / 2:.1f}" font-size="12" text-anchor="middle"'
        f' transform="rotate(-90 14 {top + ph / 2:.1f})">pass rate</text>',
    ]
    for i in range(5):
        gy = top + ph - ph * i / 4
        out.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{left + pw}" y2="{gy:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" font-size="11" text-anchor="end">{25 * i}%</text>')
    points = [p for s in series for p in s.points]
    if not points:
        out.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" font-size="13" text-anchor="middle"'
            ' fill="#666">No disclosed runs yet</text>'
        )
        out.append("</svg>")
        return "".join(out)
    t0 = min(p.ts for p in points)
    t1 = max(p.ts for p in points)
    pad = max((t1 - t0) * 0.03, 1800.0)
    t0, t1 = t0 - pad, t1 + pad

    def x(ts: float) -> float:
        return left + pw * (ts - t0) / (t1 - t0)

    def y(rate: float) -> float:
        return top + ph - ph * rate

    for ts, label in time_ticks(t0, t1):
        out.append(
            f'<line x1="{x(ts):.1f}" y1="{top + ph}" x2="{x(ts):.1f}" y2="{top + ph + 4}" stroke="#999"/>'
        )
        out.append(
            f'<text x="{x(ts):.1f}" y="{top + ph + 17}" font-size="11" text-anchor="middle">{_e(label)}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{top + ph + 36}" font-size="12" text-anchor="middle">'
        "run finished (UTC)</text>"
    )
    for i, s in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        coords = " ".join(f"{x(p.ts):.1f},{y(p.rate):.1f}" for p in s.points)
        if len(s.points) > 1:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        for p in s.points:
            tip = f"{s.label} run {p.run_id}: {p.passed}/{p.rollouts} passed ({_pct(p.rate)}), {p.at}"
            out.append(
                f'<circle cx="{x(p.ts):.1f}" cy="{y(p.rate):.1f}" r="3.5" fill="{color}">'
                f"<title>{_e(tip)}</title></circle>"
            )
        lx = left + (i % 3) * (pw / 3)
        ly = top + ph + 54 + 18 * (i // 3)
        out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 18:.1f}" y="{ly + 1}" font-size="12">{_e(s.label[:40])}</text>')
    out.append("</svg>")
    return "".join(out)


def release_groups(recent: list[Released]) -> list[tuple[str, list[tuple[str, list[Released]]]]]:
    """Recent releases by day (newest first), then by provider/model, problems in natural order."""
    days: dict[str, dict[str, list[Released]]] = {}
    for r in recent:
        days.setdefault(_day(r.released_at), {}).setdefault(f"{r.provider}/{r.model}", []).append(r)
    return [
        (
            d,
            [
                (label, sorted(items, key=lambda r: (natural_key(r.problem_id), r.sample)))
                for label, items in sorted(models.items())
            ],
        )
        for d, models in sorted(days.items(), reverse=True)
    ]


def html_page(view: PublicView, *, embargo_s: float, witnessed: str | None = None) -> str:
    """The public page: what is measured, the evidence, counts under embargo, the chart, results
    by model and problem, recent releases by day and model (``templates/public/index.html``).

    ``witnessed``: a sentence on the latest witnessed checkpoint (how fresh it is).
    """
    days = embargo_s / 86400
    embargo = f"{days:g} days" if days >= 1 else f"{embargo_s:g} seconds"
    return (
        templates()
        .get_template("public/index.html")
        .render(
            title=TITLE,
            view=view,
            witnessed=witnessed,
            embargo=embargo,
            chart=Markup(svg_chart(view.series)),  # noqa: S704 (svg_chart escapes every text it draws)
            groups=release_groups(view.recent),
            summary_of=summary_of,
            quote=lambda s: quote(s, safe=""),
        )
    )
