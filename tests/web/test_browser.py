"""The console and the public page in a real browser: Playwright driving Debian's Chromium
(``/usr/bin/chromium``, installed by ``make system``; never a browser Playwright downloads)
against a real daemon with runs in its log.

These tests are never skipped: without the browser they fail and say how to install it.
They share the worker's daemon with the HTTP tests (``tests/web/conftest.py``) and one
browser per module; each test opens its own browser context. ``ROLLWATCH_SCREENSHOTS=DIR`` keeps the
screenshots there (the README's come from ``ROLLWATCH_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.test_daemon import events, wait_until
from tests.web.opsd import Daemon

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.browser


# Module scope, not session: Playwright's sync API keeps an asyncio loop running while
# the browser is open, and the anyio tests that a worker runs afterwards need their own.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system` installs it (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page that records console errors and uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            self.errors.append(f"{msg.type}: {msg.text} ({msg.location.get('url')})")


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield Watched(ctx.new_page())
    finally:
        ctx.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Watched]:
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        yield Watched(ctx.new_page())
    finally:
        ctx.close()


def _shots(tmp_path: Path) -> Path:
    d = Path(os.environ.get("ROLLWATCH_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run_id(daemon: Daemon, schedule: str) -> str:
    return next(d["run_id"] for _, _, d in events(daemon.db, "RunStarted") if d["schedule"] == schedule)


def _hostile_rollout(daemon: Daemon) -> str:
    return next(d["rollout_id"] for _, _, d in events(daemon.db, "RolloutRequested") if d["model"] == "m1")


def _pages(daemon: Daemon) -> list[str]:
    return [
        "/ops/",
        f"/ops/runs/{_run_id(daemon, 'ref-hourly')}",
        f"/ops/runs/{_run_id(daemon, 'fake-hostile')}",
        f"/ops/rollouts/{_hostile_rollout(daemon)}",
        "/ops/schedules",
        "/ops/subscribers",
        "/ops/problems",
        "/ops/problems/p10",
        "/public/",
    ]


def test_every_page_renders_without_console_errors(daemon: Daemon, page: Watched, tmp_path: Path) -> None:
    """Each console page and the public page load (200), show their heading, and log no
    error, no warning and no uncaught exception (the CSP would report a blocked inline script)."""
    shots = _shots(tmp_path)
    names = {
        "/ops/": "console-runs",
        "/ops/schedules": "console-schedules",
        "/ops/problems": "console-problems",
        "/public/": "public-page",
    }
    for path in _pages(daemon):
        resp = page.page.goto(daemon.url + path)
        assert resp is not None
        assert resp.status == 200, path
        assert page.page.locator("h1").count() >= 1, path
        name = names.get(path) or ("console-rollout" if "/rollouts/" in path else None)
        if name is None and path.endswith(_run_id(daemon, "ref-hourly")):
            name = "console-run"
        if name:
            page.page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    # the runs page's live script makes its first poll without an error
    page.page.goto(daemon.url + "/ops/")
    expect(page.page.locator("#live-state")).to_have_text(re.compile(r"^live at seq \d+"))
    assert page.errors == []


def test_an_answer_with_script_renders_as_text(daemon: Daemon, page: Watched) -> None:
    """The fake model's answer holds ``<script>``, an ``onerror`` image and a ``</pre>`` in its
    code: the page shows all of it as text and none of it runs."""
    page.page.goto(daemon.url + f"/ops/rollouts/{_hostile_rollout(daemon)}")
    answer = page.page.locator("#answer").inner_text()
    assert "<script>window.__pwned = 1</script>" in answer
    assert '<img src=x onerror="window.__pwned = 2">' in answer
    assert "</pre><script>window.__pwned = 3</script>" in answer
    assert page.page.evaluate("typeof window.__pwned") == "undefined"
    assert page.page.locator("#answer img, #answer script").count() == 0
    # the block that was scored is the highlighted one
    assert "def solve" in page.page.locator("#answer mark.code").inner_text()
    assert page.errors == []


def test_a_schedule_paused_from_the_console_shows_in_schedules_list(daemon: Daemon, page: Watched) -> None:
    """Pause with a note by the form's button; `rollwatch schedules list` says paused with that
    note; the page now offers Resume, which undoes it (the resume read back from the page
    and the log: each `schedules list` costs seconds)."""
    p = page.page
    p.goto(daemon.url + "/ops/schedules")
    card = p.locator("#schedule-ref-hourly")
    card.locator("input[name=note]").fill("maintenance <b>window</b>")
    card.get_by_role("button", name="Pause").click()
    p.wait_for_url("**/ops/schedules?done=pause*")
    listed = daemon.schedules()["ref-hourly"]
    assert listed["state"] == "paused"
    assert listed["note"] == "maintenance <b>window</b>"
    card = p.locator("#schedule-ref-hourly")
    assert card.locator("[data-field=note]").inner_text() == "maintenance <b>window</b>"
    card.get_by_role("button", name="Resume").click()
    p.wait_for_url("**/ops/schedules?done=resume*")
    assert p.locator("#schedule-ref-hourly [data-field=state]").inner_text() == "active"
    assert [d["schedule"] for _, _, d in events(daemon.db, "ScheduleResumed")][-1] == "ref-hourly"
    assert page.errors == []


def test_live_progress_moves_without_a_reload(daemon: Daemon, page: Watched, tmp_path: Path) -> None:
    """A run triggered from the console shows on the runs page, and its done count climbs
    while the page stays loaded (the long poll, not a reload, moves it)."""
    p = page.page
    p.goto(daemon.url + "/ops/schedules")
    before = len(events(daemon.db, "RunStarted"))
    p.locator("#schedule-fake-slow").get_by_role("button", name="Trigger now").click()
    p.wait_for_url("**/ops/schedules?done=trigger*")
    wait_until(lambda: len(events(daemon.db, "RunStarted")) > before, 30, "the triggered run")
    run_id = _run_id(daemon, "fake-slow")
    p.goto(daemon.url + "/ops/")
    p.evaluate("window.__sameDocument = true")
    row = p.locator(f"#run-{run_id}")
    start = int(row.locator("[data-field=done]").inner_text())
    assert row.locator("[data-field=status]").inner_text() == "running"
    # (no wait_for_function: it evaluates a string, which the console's CSP forbids)
    wait_until(
        lambda: int(row.locator("[data-field=done]").inner_text()) > start, 30, "the done count to move"
    )
    assert p.evaluate("window.__sameDocument") is True
    p.screenshot(path=str(_shots(tmp_path) / "console-live.png"))
    wait_until(
        lambda: any(d["run_id"] == run_id for _, _, d in events(daemon.db, "RunFinished")), 90, "the run"
    )
    assert page.errors == []


def test_pages_fit_a_phone(daemon: Daemon, phone: Watched, tmp_path: Path) -> None:
    """At 390 px wide no page scrolls sideways as a whole: wide tables scroll inside their box."""
    for path in _pages(daemon):
        phone.page.goto(daemon.url + path)
        width = phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px phone"
    phone.page.goto(daemon.url + "/ops/")
    phone.page.screenshot(path=str(_shots(tmp_path) / "console-phone.png"), full_page=True)
    assert phone.errors == []


@pytest.mark.parametrize("width", [1280, 390])
def test_public_page_stays_readable_at_200_problems_and_20_models(
    browser: Browser, width: int, tmp_path: Path
) -> None:
    """A public page of 200 problems × 20 models: the page itself never scrolls sideways, the
    problem table scrolls inside its box with the problem column and model header in view,
    problems in natural order."""
    from datetime import UTC, datetime

    from rollwatch.publication.feeds import html_page
    from rollwatch.publication.public import ModelRow, Point, PublicView, Series

    now = datetime(2026, 11, 30, tzinfo=UTC)
    models = [
        ModelRow("prov", f"model-with-a-long-name-{i}", released=40, problems_solved=30) for i in range(20)
    ]
    problems = [f"p{i}" for i in range(1, 201)]
    cells = {
        ("prov", m.model, p): (1 + (i + j) % 3, "2026-11-01T00:00:00Z")
        for i, m in enumerate(models)
        for j, p in enumerate(problems)
        if (i * 7 + j) % 4 == 0
    }
    series = [
        Series(
            "prov",
            m.model,
            [
                Point(at="", ts=now.timestamp() - 86400 * d, run_id=f"r{d}", rollouts=20, passed=(i + d) % 20)
                for d in range(0, 730, 30)
            ],
        )
        for i, m in enumerate(models[:6])
    ]
    view = PublicView(
        generated_at=now,
        total_released=800,
        recent=[],
        models=models,
        problems=problems,
        cells=cells,
        series=series,
    )
    ctx = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = Watched(ctx.new_page())
        page.page.set_content(html_page(view, embargo_s=90 * 86400))
        assert page.page.evaluate("document.documentElement.scrollWidth") <= width
        box = page.page.locator(".heat")
        # the table scrolls inside its box: down always, sideways where 20 columns do not fit
        assert box.evaluate("e => e.scrollHeight > e.clientHeight")
        assert box.evaluate("e => e.scrollWidth > e.clientWidth") == (width < 800)
        assert box.evaluate("e => e.clientHeight") < 900
        rows = page.page.locator("#by-problem tbody th.p").all_inner_texts()
        assert rows[:3] == ["p1", "p2", "p3"]
        assert rows[9:11] == ["p10", "p11"]
        assert len(rows) == 200
        # scrolled to the far corner, the problem column and the model header stay in view
        box.evaluate("e => { e.scrollTop = e.scrollHeight; e.scrollLeft = e.scrollWidth; }")
        first_col = page.page.locator("#by-problem tbody tr:last-child th.p").bounding_box()
        heat = box.bounding_box()
        assert first_col is not None
        assert heat is not None
        assert abs(first_col["x"] - heat["x"]) < 2
        if width == 1280:
            box.evaluate("e => { e.scrollTop = 0; e.scrollLeft = 0; }")
            page.page.screenshot(path=str(_shots(tmp_path) / "public-200x20.png"), full_page=False)
        assert page.errors == []
    finally:
        ctx.close()
