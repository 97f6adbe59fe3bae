"""The demo's report in a real headless Chromium: rendered from recorded series, the page as a reader sees it.

The DOM is what Chromium built after running the page's (inlined, offline) plotly.js, and the
screenshot is kept in test-artifacts/report.png.
"""

from __future__ import annotations

import re
import time

import pytest

from sandbox.report import VERSION_COLOURS, write_report
from tests.support.browser import pixels_near, render, skip_without_chromium, text_of
from tests.unit.test_report import ALERT, END, EVENTS, recorded, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SIZE = (1280, 2600)  # the whole page: numbers, timeline, six panels, the folded JSON
OFFLINE_PLOTLY = (
    "--disable-background-networking",  # offline: the page must need nothing from the network
    "--virtual-time-budget=5000",  # let plotly draw before the screenshot
)
skip_without_chromium()


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_the_report_shows_numbers_timeline_and_labelled_plots_of_the_recovery(tmp_path):
    started = time.time() - END
    events, result = run(started)
    page = write_report(
        tmp_path, events, result, recorded(started), started=started, alert=ALERT, final_scrape_timeout=5
    )
    dom, image = render(page.as_uri(), "report", tmp_path / "profile", SIZE, OFFLINE_PLOTLY)
    text = text_of(dom)

    assert "<title>mlops-sandbox demo</title>" in dom and "loop closed" in text
    for label, value in [
        ("time to detect", "22 s"), ("time to retrain", "68 s"), ("time to recover", "136 s"),
        ("versions", "v1 → v2"), ("requests", "5,612"), ("failed requests", "34"),
    ]:  # fmt: skip
        assert re.search(rf'<div class="label">{label}</div><div class="value">{value}</div>', dom), label
    assert "246.5 s DataDriftDetected resolved" in text
    # plotly ran: the figure is an SVG with its six panels and a text label for every event marker.
    assert 'class="main-svg"' in dom
    svg_text = set(re.findall(r"<text[^>]*>([^<]+)</text>", dom))
    assert {name for _, name, _ in EVENTS} <= svg_text, svg_text
    assert {"drift share", "per-feature drift score", "requests/s", f"{ALERT} state"} <= svg_text
    assert {"inactive", "pending", "firing"} <= svg_text
    assert len(re.findall(r'class="trace scatter', dom)) >= 11  # events, 2 versions, 5 features, 3 panels
    # The JSON is at the bottom, folded.
    assert re.search(r'<details id="summary">\s*<summary>The result as JSON</summary>', dom)
    assert image.size == SIZE
    assert len(image.getcolors(maxcolors=SIZE[0] * SIZE[1])) > 50, "a blank screenshot: nothing rendered"
    # The drift share on v2 is drawn (in its own colour), not just present in the data.
    assert pixels_near(image, hex_rgb(VERSION_COLOURS[1]), tolerance=20) > 100
