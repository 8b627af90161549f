"""The exported ``index.html`` carries its own Content-Security-Policy.

``/public/`` is served with a policy allowing no script; ``publish export``'s copy of the
same page, served by whatever static host the operator picks, carried none (a README
limit until session 28). It now holds the same policy in a ``<meta>`` at the top of its
``<head>``, before anything the page shows, and a real browser enforces it on the file.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from rollwatch.publication.routes import _PAGE_HEADERS
from tests.publication.test_releases import Log

CHROMIUM = Path("/usr/bin/chromium")
META = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">')


async def _exported(log: Log, tmp_path: Path) -> Path:
    now = datetime.now(UTC)
    await log.results(2, now - timedelta(hours=1))
    out = tmp_path / "site"
    await log.export(out)
    return out / "index.html"


@pytest.mark.anyio
async def test_the_exported_page_states_the_policy_of_the_live_one_before_its_content(
    log: Log, tmp_path: Path
) -> None:
    html = (await _exported(log, tmp_path)).read_text()
    head = html.split("<head>", 1)[1].split("</head>", 1)[0]
    assert META.findall(head) == [_PAGE_HEADERS["Content-Security-Policy"]]
    assert head.index('http-equiv="Content-Security-Policy"') < head.index("<title>")
    assert META.findall(html.split("</head>", 1)[1]) == []


@pytest.mark.anyio
@pytest.mark.parametrize("kept", [True, False], ids=["policy", "control"])
async def test_markup_that_slipped_into_the_exported_page_runs_no_script_in_chromium(
    log: Log, tmp_path: Path, kept: bool
) -> None:
    """A script put into the exported page's body (as model text would be, had it ever
    slipped past the escaping) does not run when Chromium opens the file; the control,
    the same file without the policy's line, runs it (so the test can fail)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system` installs it (apt-get install chromium)")
    page_file = await _exported(log, tmp_path)
    html = page_file.read_text()
    if not kept:
        html = META.sub("", html)
    slipped = "<script>document.title = 'ran'</script><img src=x onerror=\"document.title = 'ran'\">"
    page_file.write_text(html.replace("</body>", slipped + "</body>"))
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(page_file.as_uri())
            await page.wait_for_load_state("load")
            assert (await page.title() == "ran") is not kept
        finally:
            await browser.close()
