"""The monitor's status page (``GET /``): ``templates/status.html`` filled from ``Monitor.status()``."""

from __future__ import annotations

import time
from functools import cache

import jinja2

from services.monitor.drift import INSUFFICIENT
from services.monitor.evaluator import MonitorConfig

VERDICT_STYLE = {
    "drift": ("#c62828", "DRIFT"),
    "no_drift": ("#2e7d32", "no drift"),
    INSUFFICIENT: ("#757575", "insufficient data"),
}
NOT_EVALUATED = ("#757575", "not evaluated yet")
OUTCOMES = {"promoted": "promoted", "rejected": "rejected by the gate", "failed": "failed",
            "shadow": "challenger in shadow", "rolled_back": "rolled back"}  # fmt: skip


def fmt(value, digits: int = 3) -> str:
    """A value for the page: floats to ``digits`` places, None as a dash (the template escapes it)."""
    if value is None or isinstance(value, jinja2.Undefined):  # Undefined: a key the status lacks
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = max(0, time.time() - ts)
    text = f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"
    return f"{time.strftime('%H:%M:%S', time.localtime(ts))} ({text})"


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("services.monitor", "templates"),
        autoescape=True,  # every value on the page is text: model names, errors, alert labels
        undefined=jinja2.ChainableUndefined,  # a missing key renders empty, as dict.get would
    )
    env.filters.update(fmt=fmt, ago=ago)
    env.globals.update(
        verdict_style=lambda verdict: VERDICT_STYLE.get(verdict, NOT_EVALUATED),
        outcome=lambda state: OUTCOMES.get(state, state),
    )
    return env.get_template("status.html")


def render_status_page(status: dict, config: MonitorConfig) -> str:
    return _template().render(status=status, config=config)
