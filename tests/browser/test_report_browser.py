"""The report in a real headless browser (Debian's chromium driven by Playwright): no errors, no requests, summary first."""

import shutil
from pathlib import Path

import pytest

from yolo_compile.report.archive import SCREENSHOT, verify_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}


def open_report(report: Path, screenshot: Path | None = None) -> dict:
    """Load report in headless chromium; return console errors, requests that failed or left file://, summary box."""
    from playwright.sync_api import sync_playwright

    seen = {"console_errors": [], "failed_requests": [], "outside_requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda m: seen["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen["console_errors"].append(str(e)))
            page.on("requestfailed", lambda r: seen["failed_requests"].append(r.url))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else seen["outside_requests"].append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            seen["summary"] = page.locator("#summary").bounding_box()
            seen["title"] = page.title()
            seen["open_inputs"] = page.locator("details.nb-in[open]").count()
            seen["closed_inputs"] = page.locator("details.nb-in:not([open])").count()
            if screenshot:
                page.screenshot(path=str(screenshot), clip={"x": 0, "y": 0, **VIEWPORT})
        finally:
            browser.close()
    return seen


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install -y chromium; .ci/run does)")
def test_report_loads_in_chromium_without_errors_or_requests_and_shows_the_summary_first(finished_run, tmp_path):
    pytest.importorskip("playwright", reason="pip install playwright (the dev extra)")
    run = tmp_path / finished_run.name
    shutil.copytree(finished_run, run)
    seen = open_report(run / "report.html", run / SCREENSHOT)
    assert seen["console_errors"] == [] and seen["failed_requests"] == [] and seen["outside_requests"] == []
    box = seen["summary"]
    assert box and box["y"] + box["height"] <= VIEWPORT["height"], "the summary card must fit the first screen"
    assert "passed" in seen["title"]
    assert seen["closed_inputs"] >= 2 and seen["open_inputs"] >= 1  # code collapsed, parameters shown
    assert (run / SCREENSHOT).stat().st_size > 10_000
    assert verify_run(run) == []  # the screenshot is not an artifact of the run: the folder still verifies
