"""The demo's report rendered from recorded series: headline numbers, labelled markers, the recovery plotted."""

from __future__ import annotations

import html
import math
import re
import time

from sandbox.report import (
    LAST_EVALUATION,
    SERVED_VERSION,
    figure_of,
    final_drift,
    headline,
    render_report,
    wait_for_final_scrape,
    write_report,
)

ALERT = "DataDriftDetected"
FEATURES = ["age", "income", "credit_score", "debt_to_income", "region"]
# A completed run as the demo's timeline records it: (seconds since start, event, detail).
EVENTS = [
    (22.0, "stack up", ""),
    (61.3, "v1 champion", "v1, first passing model"),
    (64.0, "serving v1", "v1"),
    (65.0, "clean traffic", "30 req/s x 2 rows, labels 2 s later"),
    (110.2, "clean: no drift", "3 verdicts, drift share 0, no alert"),
    (110.4, "incident", "covariate_shift (severity 1)"),
    (132.5, "DataDriftDetected firing", ""),
    (133.0, "retraining started", "run-abc"),
    (200.1, "v2 champion", "v2: roc_auc 0.81 >= champion 0.80 - 0.01 <ok>"),
    (204.0, "serving v2", "v2, zero-downtime swap"),
    (245.0, "v2: no drift", "1500 rows judged"),
    (246.5, "DataDriftDetected resolved", ""),
]
END = 262.0  # the report is written after the final scrape


def value_at(query: str, t: float) -> float | None:
    """What Prometheus would answer for ``query`` at ``t`` seconds into the run (None: no sample)."""
    v2_judged = t >= 245  # v2's first full window; before it, since the swap, too few rows (NaN)
    if query == LAST_EVALUATION:
        return 5 * math.floor((t - 2) / 5)  # every 5 s, scraped 2 s later (relative; shifted by the caller)
    if query == "sandbox_drift_share":
        if t < 80 or 205 <= t < 245:
            return math.nan
        return 0.0 if t < 115 or v2_judged else 0.18 if t >= 125 else 0.09
    if "bentoml_service_request_total" in query:
        if t < 20:  # serving is not up yet
            return None
        if "!~" in query:  # the total of non-2xx: a burst as traffic starts
            return 34.0 if t >= 70 else 0.0
        return 0.0 if t < 65 else 30.0
    if "ALERTS" in query:
        return 2.0 if 132.5 <= t < 246.5 else 1.0 if 122 <= t < 132.5 else 0.0
    raise AssertionError(f"unexpected query {query}")


def recorded(started: float, calls: list[str] | None = None):
    """A query_range over recorded series: Prometheus' matrix format, on the requested grid."""

    def grid(start: float, end: float, step: float) -> list[float]:
        n = int(math.floor((end - start) / step + 1e-9))
        return [start + i * step for i in range(n + 1)]

    def query_range(query: str, start: float, end: float, step: float) -> list[dict]:
        if calls is not None:
            calls.append(query)
        if query == SERVED_VERSION:  # rows/s predicted by each version; serving not scraped 150-170 s
            ts = [t for t in grid(start, end, step) if not 150 <= t - started < 170]
            v1 = [[t, "60" if t - started < 230 else "0"] for t in ts if t - started >= 70]
            v2 = [[t, "60"] for t in ts if t - started >= 209]
            return [{"metric": {"version": "1"}, "values": v1}, {"metric": {"version": "2"}, "values": v2}]
        if query == "sandbox_feature_drift_score":
            out = []
            for feature in FEATURES:
                values = []
                for t in grid(start, end, step):
                    share = value_at("sandbox_drift_share", t - started)
                    if share is not None and not math.isnan(share):
                        score = 0.31 if feature == "credit_score" and share > 0 else 0.03
                        values.append([t, str(score)])
                out.append({"metric": {"feature": feature}, "values": values})
            return out
        values = []
        for t in grid(start, end, step):
            v = value_at(query, t - started)
            if v is not None:
                values.append([t, str(started + v if query == LAST_EVALUATION else v)])
        return [{"metric": {}, "values": values}] if values else []

    return query_range


def run(started: float) -> tuple[list[dict], dict]:
    events = [{"event": name, "at": started + t, "t": t, "detail": detail} for t, name, detail in EVENTS]
    result = {
        "completed": True,
        "time_to_detect_s": 22.1,
        "time_to_retrain_s": 67.6,
        "time_to_recover_s": 136.1,
        "champion_before": "1",
        "champion_after": "2",
        "report": None,
        "failed_step": None,
        "error": None,
        "events": events,
        "traffic": {"requests": 5_612, "failed": {"503": 34}, "rows": 11_224},
        "requests": 5_612,
        "failed_requests": 34,
    }
    return events, result


def render(started: float = 1_700_000_000.0, end: float = END, result: dict | None = None) -> str:
    events, recorded_result = run(started)
    return render_report(
        events, result or recorded_result, recorded(started), started=started, end=started + end, alert=ALERT
    )


def numbers(page: str) -> dict[str, str]:
    section = re.search(r'<section class="headline" id="headline">(.*?)</section>', page, re.S).group(1)
    return dict(re.findall(r'<div class="label">([^<]+)</div><div class="value">([^<]+)</div>', section))


def test_headline_numbers_open_the_page():
    page = render()
    assert numbers(page) == {
        "time to detect": "22 s",
        "time to retrain": "68 s",
        "time to recover": "136 s",
        "versions": "v1 → v2",
        "requests": "5,612",
        "failed requests": "34",
    }
    # The story reads top to bottom: numbers, timeline, plots, and the JSON last and folded.
    order = [
        page.index(s) for s in ('id="headline"', 'id="timeline"', 'id="figure"', '<details id="summary"')
    ]
    assert order == sorted(order)
    assert '<details id="summary" open' not in page
    assert '"time_to_recover_s": 136.1' in html.unescape(page.split('<details id="summary">')[1])


def test_failed_requests_by_code_come_from_the_traffic_summary_when_the_result_lacks_them():
    _, result = run(0.0)
    del result["requests"], result["failed_requests"]
    result["traffic"] = {"requests": 4_272, "failed": {"503": 33, "connection": 2}}
    rows = {label: (value, note) for label, value, note in headline(result)}
    assert rows["requests"][0] == "4,272"
    assert rows["failed requests"] == ("35", "33 × 503, 2 × connection")


def test_a_failed_run_says_where_it_stopped_and_shows_no_recovery():
    _, result = run(0.0)
    result.update(completed=False, failed_step="drift falls on v2", error="v2's traffic still drifts: [x]")
    result.update(time_to_recover_s=None)
    page = render(result=result)
    assert "did not complete" in page and "failed at step <b>drift falls on v2</b>" in page
    assert "v2&#39;s traffic still drifts" in page  # escaped: details are text, not markup
    assert numbers(page)["time to recover"] == "—"


def test_every_event_is_a_labelled_marker():
    started = 1_700_000_000.0
    page = render(started)
    figure = figure_of(page)
    strip = next(t for t in figure["data"] if t["name"] == "events")
    assert strip["text"] == [name for _, name, _ in EVENTS]
    assert strip["x"] == [t for t, _, _ in EVENTS]
    # Events a fraction of a second apart get their labels on different rows.
    levels = dict(zip(strip["text"], strip["y"], strict=True))
    assert levels["clean: no drift"] != levels["incident"]
    assert levels["v2 champion"] != levels["serving v2"]
    # And a dotted line through every panel at each event.
    lines = [s for s in figure["layout"]["shapes"] if s["line"]["dash"] == "dot"]
    assert sorted(s["x0"] for s in lines) == [t for t, _, _ in EVENTS]
    assert all(s["yref"] == "paper" and (s["y0"], s["y1"]) == (0, 1) for s in lines)
    assert "&lt;ok&gt;" in page and "<ok>" not in page.replace("\\u003cok>", "")  # escaped in the table


def test_the_plots_end_with_drift_share_0_on_the_new_version():
    figure = figure_of(render())
    assert final_drift(figure) == ("2", 0.0)
    panels = {(t.get("meta") or {}).get("panel") for t in figure["data"]} - {None}
    assert panels == {
        "drift share", "per-feature drift score", "requests/s", "failed requests (non-2xx, total)",
        f"{ALERT} state",
    }  # fmt: skip
    drift = {
        t["meta"]["version"]: t for t in figure["data"] if t.get("meta", {}).get("panel") == "drift share"
    }
    assert set(drift) == {"1", "2"}
    assert max(y for y in drift["1"]["y"] if y is not None) == 0.18  # the incident, on v1
    assert {
        t["name"] for t in figure["data"] if t.get("meta", {}).get("panel") == "per-feature drift score"
    } == set(FEATURES)
    failed = next(t for t in figure["data"] if t.get("meta", {}).get("panel", "").startswith("failed"))
    assert failed["y"][-1] == 34.0 and failed["y"][0] == 0.0  # the burst as traffic started, plotted
    alert = next(t for t in figure["data"] if t.get("meta", {}).get("panel") == f"{ALERT} state")
    assert alert["y"][-1] == 0.0 and max(alert["y"]) == 2.0 and 1.0 in alert["y"]  # pending, firing, resolved


def test_a_report_written_before_the_final_scrape_misses_the_recovery():
    # What the report did before: written as the alert resolved, v2's verdict not yet in Prometheus.
    assert final_drift(figure_of(render(end=243.0))) == ("1", 0.18)


def test_write_report_waits_for_the_final_scrape_and_writes_an_offline_page(tmp_path):
    started = time.time() - END
    events, result = run(started)
    page_path = write_report(
        tmp_path, events, result, recorded(started), started=started, alert=ALERT, final_scrape_timeout=5
    )
    page = page_path.read_text()
    assert page_path.parent == tmp_path and page_path.name.startswith("demo-")
    assert final_drift(figure_of(page)) == ("2", 0.0)
    # Offline: plotly.js inlined, nothing fetched.
    assert "Plotly.newPlot" in page and not re.search(r"<script[^>]+src=|<link[^>]+href=", page)
    assert len(page) > 3_000_000


def test_the_final_scrape_wait_polls_until_an_evaluation_after_the_last_event_is_in_prometheus():
    now = time.time()
    answers = iter([now - 30, now - 30, now + 1])
    calls = []

    def query_range(query, start, end, step):
        calls.append(query)
        return [{"metric": {}, "values": [[end, str(next(answers))]]}]

    assert wait_for_final_scrape(query_range, after=now - 5, timeout=10, poll=0.01)
    assert calls == [LAST_EVALUATION] * 3
    stale = [{"metric": {}, "values": [[now, str(now - 30)]]}]
    started = time.monotonic()
    assert not wait_for_final_scrape(lambda *a: stale, after=now, timeout=0.2, poll=0.05)
    assert time.monotonic() - started < 2  # bounded
