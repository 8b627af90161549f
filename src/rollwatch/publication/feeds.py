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
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from rollwatch.publication.public import PublicView, Released, Series

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
    """An item's title: who solved what."""
    return f"{r.model} ({r.provider}) solved {r.problem_id}"


def summary_of(r: Released) -> str:
    """One line about a released result: model, problem, when, score, cost."""
    cost = f", cost ${r.cost_usd:.4f}" if r.cost_usd is not None else ""
    score = f", score {r.score:g}" if r.score is not None else ""
    return (
        f"{r.model} ({r.provider}) solved problem {r.problem_id} in run {r.run_id}, sample {r.sample}; "
        f"scored {r.scored_at}{score}{cost}; released {r.released_at}."
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
        if extra is not None and r.rollout_id in extra:
            meta.update(extra[r.rollout_id])
        items.append(
            {
                "id": item_id(r.rollout_id),
                "url": item_url(base_url, r.rollout_id),
                "title": title_of(r),
                "summary": summary_of(r),
                "content_text": content_of(r),
                "date_published": r.released_at,
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
        sub(entry, "updated", r.released_at)
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


def svg_chart(series: list[Series], width: int = 760, height: int = 320) -> str:
    """Pass rate per disclosed run over time, one line per provider/model, as inline SVG."""
    left, right, top, bottom = 48, 200, 16, 40
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}"'
        f' height="{height}" role="img" aria-label="Pass rate over time by model">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>',
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
    if t1 - t0 < 1:
        t0, t1 = t0 - 43200, t1 + 43200

    def x(ts: float) -> float:
        return left + pw * (ts - t0) / (t1 - t0)

    def y(rate: float) -> float:
        return top + ph - ph * rate

    short = t1 - t0 < 3 * 86400
    for i in range(5):
        ts = t0 + (t1 - t0) * i / 4
        when = datetime.fromtimestamp(ts, UTC)
        label = when.strftime("%m-%d %H:%M") if short else when.strftime("%Y-%m-%d")
        out.append(
            f'<text x="{x(ts):.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle">{label}</text>'
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
        ly = top + 14 + 18 * i
        out.append(f'<rect x="{left + pw + 12}" y="{ly - 9}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{left + pw + 30}" y="{ly + 1}" font-size="12">{_e(s.label)}</text>')
    out.append("</svg>")
    return "".join(out)


def html_page(view: PublicView, *, embargo_s: float) -> str:
    """The public page: what is measured, results by model and problem, the chart, recent releases."""
    days = embargo_s / 86400
    embargo = f"{days:g} days" if days >= 1 else f"{embargo_s:g} seconds"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        '<link rel=icon href="data:,">',
        f"<title>{_e(TITLE)}</title><style>{_CSS}</style>",
        '<link rel=alternate type="application/feed+json" href="feed.json" title="JSON Feed">',
        '<link rel=alternate type="application/atom+xml" href="feed.atom" title="Atom">',
        "</head><body>",
        f"<h1>{_e(TITLE)}</h1>",
        "<h2>What is measured</h2>",
        "<p>rollwatch sends a fixed set of programming problems to large language models, many times "
        "each (rollouts), on a schedule. Every answer is scored by running its code against the "
        "problem's tests in a sandbox. Every request, answer, score and publication decision is "
        "appended to a hash-chained, append-only log.</p>",
        f"<p>Solved problems are released here after an embargo (currently {_e(embargo)}; each "
        "result keeps the embargo in force when it was scored). Failed attempts are never listed "
        "one by one; they count in the pass rates of runs whose results are all released.</p>",
        f"<p class=muted>{view.total_released} released results. Updated "
        f'{_e(view.updated or "never")}. Feeds: <a href="feed.json">JSON Feed</a>, '
        '<a href="feed.atom">Atom</a>; all results: <a href="results.jsonl">results.jsonl</a>.</p>',
        "<h2>Pass rate over time</h2>",
        "<p class=muted>Each point is one run of one model: the share of its rollouts that passed.</p>",
        svg_chart(view.series),
        "<h2>By model</h2>",
    ]
    if view.models:
        parts.append(
            "<table><tr><th>provider</th><th>model</th><th>released solutions</th>"
            "<th>problems solved</th><th>pass rate (disclosed runs)</th><th>rollouts</th>"
            "<th>first release</th><th>latest release</th></tr>"
        )
        for m in view.models:
            parts.append(
                f"<tr><td>{_e(m.provider)}</td><td>{_e(m.model)}</td><td class=n>{m.released}</td>"
                f"<td class=n>{m.problems_solved}</td><td class=n>{_pct(m.pass_rate)}</td>"
                f"<td class=n>{m.disclosed_rollouts}</td><td>{_day(m.first_released_at)}</td>"
                f"<td>{_day(m.last_released_at)}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>Nothing released yet.</p>")
    if view.problems:
        parts.append("<h2>By model and problem</h2>")
        parts.append("<p class=muted>Released solutions, and the day of the first.</p>")
        parts.append(
            "<table><tr><th>model</th>" + "".join(f"<th>{_e(p)}</th>" for p in view.problems) + "</tr>"
        )
        for m in view.models:
            row = [f"<tr><th>{_e(m.provider)}/{_e(m.model)}</th>"]
            for p in view.problems:
                cell = view.cells.get((m.provider, m.model, p))
                row.append(f"<td>{cell[0]} ({_day(cell[1])})</td>" if cell else "<td>-</td>")
            parts.append("".join(row) + "</tr>")
        parts.append("</table>")
    if view.recent:
        parts.append("<h2>Recent releases</h2>")
        for r in view.recent:
            parts.append(
                f'<details id="rollout-{_e(r.rollout_id)}"><summary>{_e(_day(r.released_at))} '
                f"{_e(title_of(r))}</summary><p>{_e(summary_of(r))} "
                f'<a href="rollouts/{_e(quote(r.rollout_id, safe=""))}.json">record</a></p>'
                f"<pre>{_e(r.answer or '')}</pre></details>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
