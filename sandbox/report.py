"""The demo's report: one offline HTML page that tells the loop's story.

Headline numbers (time to detect, retrain, recover; versions; requests and failures), the timeline,
and what Prometheus recorded over the run: drift share by served version, per-feature drift scores,
request rate, failed requests and the alert's state, with every event marked and labelled. The
inputs are plain (the events, the result as a dict, a ``query_range`` function), so a test can
render a page from recorded series. The plotted data is embedded as JSON (``figure_of`` reads it
back): what a reader sees is what a test checks.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

# query_range(promql, start, end, step) -> Prometheus' matrix: [{"metric": {...}, "values": [[t, "v"], ...]}]
QueryRange = Callable[[str, float, float, float], list[dict]]

STEP_SECONDS = 5.0  # Prometheus' scrape interval (monitoring/prometheus/prometheus.yml): finer only repeats
RATE_WINDOW = "30s"  # six scrapes: a rate that a single late scrape does not break
LAST_EVALUATION = "sandbox_monitor_last_evaluation_timestamp_seconds"
# The versions whose predictions reached the monitor lately: the monitor judges the newest one's rows.
# (Not sandbox_model_info: in a loaded demo run its v2 series never reached Prometheus after the swap.)
SERVED_VERSION = f"max by (version) (rate(sandbox_predictions_total[{RATE_WINDOW}]))"
ALERT_STATES = ["inactive", "pending", "firing"]
# One colour per served version, in order of appearance (the browser test finds the second one).
VERSION_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]


def panels(alert: str) -> dict[str, str]:
    """Panel title -> PromQL, top to bottom below the event strip."""
    predict = 'bentoml_service_request_total{endpoint="/predict"}'
    failed = 'bentoml_service_request_total{endpoint="/predict", http_response_code!~"2.."}'
    return {
        "drift share": "sandbox_drift_share",
        "per-feature drift score": "sandbox_feature_drift_score",
        "requests/s": f"sum(rate({predict}[{RATE_WINDOW}]))",
        # A count, not a rate: a burst of failures creates its series with the burst already in it,
        # and rate() of a series' first sample is nothing (measured: 34 × 503 plotted as 0/s).
        # 0 while serving is scraped and nothing failed (no non-2xx series exists then); a gap while
        # serving is not scraped.
        "failed requests (non-2xx, total)": f"sum({failed}) or sum({predict}) * 0",
        f"{alert} state": (
            f'max(ALERTS{{alertname="{alert}", alertstate="firing"}}) * 2'
            f' or max(ALERTS{{alertname="{alert}", alertstate="pending"}}) or vector(0)'
        ),
    }


def prometheus_query_range(base_url: str) -> QueryRange:
    import httpx

    def query_range(query: str, start: float, end: float, step: float) -> list[dict]:
        response = httpx.get(
            f"{base_url}/api/v1/query_range",
            params={"query": query, "start": start, "end": end, "step": step},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["data"]["result"]

    return query_range


def points(series: dict) -> list[tuple[float, float | None]]:
    """(t, value) with NaN (the monitor's "too little data") as None: a gap in the plot."""
    out = []
    for t, v in series["values"]:
        value = float(v)
        out.append((float(t), None if math.isnan(value) else value))
    return out


def wait_for_final_scrape(query_range: QueryRange, after: float, timeout: float, poll: float = 1.0) -> bool:
    """Wait until Prometheus holds a monitor evaluation made after ``after``; False if none came.

    The demo ends when the alert resolves, which can happen before Prometheus has scraped the
    verdict that ended it: without this wait the plot stops before the recovery.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        latest = [v for s in query_range(LAST_EVALUATION, now - 60, now, 1.0) for _, v in points(s) if v]
        if latest and max(latest) > after:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def served_versions(query_range: QueryRange, start: float, end: float, step: float) -> dict[float, str]:
    """Prometheus time -> the newest version serving then (during a swap both are)."""
    newest: dict[float, str] = {}
    for series in query_range(SERVED_VERSION, start, end, step):
        version = series["metric"].get("version", "?")
        for t, v in points(series):
            if v and (t not in newest or version_key(version) > version_key(newest[t])):
                newest[t] = version
    return newest


def version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def label_placement(
    times: list[float], labels: list[str], span: float, width_px: float = 1100
) -> list[tuple]:
    """(row, side) for each event label, so that no two labels overlap and none runs off the right edge."""
    seconds_per_char = 6.5 * max(span, 1.0) / width_px  # ~6.5 px a character at the strip's font size
    rows: list[list[tuple[float, float]]] = []  # the spans of x each row's labels take
    placed = []
    for t, label in zip(times, labels, strict=True):
        width = (len(label) + 2) * seconds_per_char
        side, lo, hi = ("right", t, t + width) if t + width <= span else ("left", t - width, t)
        row = next((i for i, taken in enumerate(rows) if all(hi < a or lo > b for a, b in taken)), len(rows))
        if row == len(rows):
            rows.append([])
        rows[row].append((lo, hi))
        placed.append((row, side))
    return placed


def with_gaps(pts: list[tuple[float, float | None]], step: float) -> list[tuple[float, float | None]]:
    """A None where samples are missing (the monitor clears a gauge it has no verdict for): a gap, not a
    straight line across it."""
    out: list[tuple[float, float | None]] = []
    for t, v in pts:
        if out and t - out[-1][0] > 1.5 * step:
            out.append((out[-1][0] + step, None))
        out.append((t, v))
    return out


def build_figure(events: list[dict], query_range: QueryRange, started: float, end: float, alert: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    # End on a grid point: the last point is evaluated at `end`, after the final scrape, not up to a step before.
    start = end - math.ceil(max(end - started, STEP_SECONDS) / STEP_SECONDS) * STEP_SECONDS
    queries = panels(alert)
    titles = ["events", *queries]
    figure = make_subplots(
        rows=len(titles), cols=1, shared_xaxes=True, vertical_spacing=0.035, subplot_titles=titles,
        row_heights=[0.12, 0.2, 0.2, 0.16, 0.16, 0.16],
    )  # fmt: skip

    def since(t: float) -> float:  # the x axis: seconds since the demo started, as the timeline says
        return round(t - started, 2)

    times = [since(e["at"]) for e in events]
    names = [e["event"] for e in events]
    placement = label_placement(times, names, span=since(end))
    levels = [row for row, _ in placement]
    figure.add_trace(
        go.Scatter(
            x=times, y=levels, text=names, customdata=[e.get("detail", "") for e in events],
            mode="markers+text", textposition=[f"middle {side}" for _, side in placement],
            marker={"symbol": "line-ns-open", "size": 12}, name="events", showlegend=False,
            hovertemplate="%{x:.1f}s %{text}<br>%{customdata}<extra></extra>", cliponaxis=False,
        ),
        row=1, col=1,
    )  # fmt: skip
    figure.update_yaxes(visible=False, range=[max(levels, default=0) + 0.7, -0.7], row=1, col=1)

    versions = served_versions(query_range, start, end, STEP_SECONDS)
    colours: dict[str, str] = {}
    for series in query_range(queries["drift share"], start, end, STEP_SECONDS):
        by_version: dict[str, list[tuple[float, float | None]]] = {}
        version = "?"
        for t, v in points(series):
            version = versions.get(t, version)  # over a gap in serving's scrapes: the last known
            by_version.setdefault(version, []).append((t, v))
        for version, pts in by_version.items():
            if all(v is None for _, v in pts):  # no verdict while this version served: nothing to draw
                continue
            pts = with_gaps(pts, STEP_SECONDS)  # a version served twice (a rollback) is not joined up
            colour = colours.setdefault(version, VERSION_COLOURS[len(colours) % len(VERSION_COLOURS)])
            figure.add_trace(
                go.Scatter(
                    x=[since(t) for t, _ in pts], y=[v for _, v in pts], name=f"drift share · v{version}",
                    mode="lines+markers", line={"color": colour, "width": 3}, marker={"size": 5},
                    meta={"panel": "drift share", "version": version},
                ),
                row=2, col=1,
            )  # fmt: skip
    for series in query_range(queries["per-feature drift score"], start, end, STEP_SECONDS):
        pts = with_gaps(points(series), STEP_SECONDS)
        feature = series["metric"].get("feature", "?")
        figure.add_trace(
            go.Scatter(
                x=[since(t) for t, _ in pts], y=[v for _, v in pts], name=feature, mode="lines",
                meta={"panel": "per-feature drift score", "feature": feature},
            ),
            row=3, col=1,
        )  # fmt: skip
    single = zip(list(queries)[2:], ["#444444", "#c62828", "#ef6c00"], strict=True)
    for row, (title, colour) in enumerate(single, start=4):
        for series in query_range(queries[title], start, end, STEP_SECONDS):
            pts = with_gaps(points(series), STEP_SECONDS)
            figure.add_trace(
                go.Scatter(
                    x=[since(t) for t, _ in pts], y=[v for _, v in pts], name=title, mode="lines",
                    line={"color": colour, "shape": "linear" if title.endswith("/s") else "hv"},
                    meta={"panel": title}, showlegend=False,
                ),
                row=row, col=1,
            )  # fmt: skip
    figure.update_yaxes(range=[-0.05, 1.05], row=2, col=1)
    figure.update_yaxes(rangemode="tozero", row=5, col=1)
    figure.update_yaxes(tickvals=[0, 1, 2], ticktext=ALERT_STATES, range=[-0.2, 2.2], row=6, col=1)
    figure.update_xaxes(title_text="seconds since the demo started", row=len(titles), col=1)
    for t in times:  # one dotted marker through every panel; its label is in the event strip
        figure.add_shape(
            type="line", x0=t, x1=t, xref="x", yref="paper", y0=0, y1=1,
            line={"dash": "dot", "color": "grey", "width": 1},
        )  # fmt: skip
    figure.update_layout(
        height=1500, margin={"l": 60, "r": 30, "t": 40, "b": 50}, hovermode="x unified",
        legend={"orientation": "h", "y": -0.05}, template="plotly_white",
    )  # fmt: skip
    return figure


def headline(result: dict) -> list[tuple[str, str, str]]:
    """(label, value, note) for the numbers at the top of the page."""
    traffic = result.get("traffic") or {}
    requests = result.get("requests", traffic.get("requests"))
    failed = result.get("failed_requests")
    by_code = traffic.get("failed") or {}
    if failed is None and traffic:
        failed = sum(by_code.values())
    elif isinstance(failed, dict):
        by_code, failed = failed, sum(failed.values())

    def seconds(key: str) -> str:
        return "—" if result.get(key) is None else f"{result[key]:.0f} s"

    def version(key: str) -> str:
        return "—" if result.get(key) is None else f"v{result[key]}"

    codes = ", ".join(f"{n} × {code}" for code, n in sorted(by_code.items(), key=lambda kv: -kv[1]))
    versions = f"{version('champion_before')} → {version('champion_after')}"
    return [
        ("time to detect", seconds("time_to_detect_s"), "incident → alert firing"),
        ("time to retrain", seconds("time_to_retrain_s"), "alert firing → new champion"),
        ("time to recover", seconds("time_to_recover_s"), "incident → alert resolved"),
        ("versions", versions, "the champion, before → after"),
        ("requests", "—" if requests is None else f"{requests:,}", "sent by the demo's traffic"),
        ("failed requests", "—" if failed is None else f"{failed:,}", codes or "non-2xx or no answer"),
    ]


def render_report(
    events: list[dict], result: dict, query_range: QueryRange, *, started: float, end: float, alert: str
) -> str:
    from jinja2 import Environment, PackageLoader
    from plotly.offline import get_plotlyjs

    figure = build_figure(events, query_range, started, end, alert)
    env = Environment(loader=PackageLoader("sandbox", "templates"), autoescape=True)
    summary = {k: v for k, v in result.items() if k not in ("events", "report")}
    return env.get_template("report.html.j2").render(
        title="mlops-sandbox demo",
        completed=result.get("completed"),
        failed_step=result.get("failed_step"),
        error=result.get("error"),
        generated=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(end)),
        headline=headline(result),
        events=events,
        # JSON in a <script> block: "<" escaped so no string in it can close the block.
        figure_json=figure.to_json().replace("<", "\\u003c"),
        plotlyjs=get_plotlyjs(),  # inline: the page works offline
        summary_json=json.dumps(summary, indent=2, default=str),
    )


def write_report(
    directory: Path,
    events: list[dict],
    result: dict,
    query_range: QueryRange,
    *,
    started: float,
    alert: str,
    final_scrape_timeout: float,
) -> Path:
    """Wait (bounded) for the last evaluation to be scraped, then write ``demo-<time>.html``."""
    events = sorted(events, key=lambda e: e["at"])  # a step may record a moment before the last one's
    last_event = max((e["at"] for e in events), default=started)
    wait_for_final_scrape(query_range, after=last_event, timeout=final_scrape_timeout)
    page = render_report(events, result, query_range, started=started, end=time.time(), alert=alert)
    path = directory / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def figure_of(page: str) -> dict:
    """The plotted data of a report page (plotly's figure JSON)."""
    match = re.search(r'<script type="application/json" id="figure-data">(.*?)</script>', page, re.S)
    if match is None:
        raise ValueError("no figure data in this page")
    return json.loads(match.group(1))


def final_drift(figure: dict) -> tuple[str, float]:
    """(served version, drift share) of the last drift-share point the report plots."""
    last = max(
        (
            (x, trace["meta"]["version"], y)
            for trace in figure["data"]
            if (trace.get("meta") or {}).get("panel") == "drift share"
            for x, y in zip(trace["x"], trace["y"], strict=True)
            if y is not None
        ),
        default=None,
    )
    if last is None:
        raise ValueError("the report plots no drift share")
    return last[1], last[2]
