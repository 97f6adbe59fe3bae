"""Reading the Grafana dashboards (monitoring/grafana/dashboards/*.json) and the alert rules: their
panels, variables, PromQL expressions and the metric names those select; the metric names the code
defines. Shared by the static checks (test_dashboard_model.py) and the live ones
(tests/integration/test_dashboards.py)."""

from __future__ import annotations

import json
import re

import yaml

from sandbox.names import REPO_ROOT

DASHBOARDS = REPO_ROOT / "monitoring" / "grafana" / "dashboards"
RULES = REPO_ROOT / "monitoring" / "prometheus" / "rules"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
EXPECTED = {"model-overview", "drift", "loop"}
PANEL_TYPES = {"row", "stat", "timeseries", "state-timeline", "bargauge", "table", "gauge", "heatmap", "text"}

# Grafana's own variables, replaced by concrete values before an expression goes to Prometheus.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
# Series Prometheus makes itself.
PROMETHEUS_BUILTINS = {
    "ALERTS",
    "ALERTS_FOR_STATE",
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
# BentoML's serving metrics (namespace bentoml_service): family -> type. Checked against the
# installed BentoML by test_bentoml_metric_families_exist_in_the_installed_bentoml.
BENTOML_NAMESPACE = "bentoml_service"
BENTOML_FAMILIES = {
    "request_duration_seconds": "Histogram",
    "request_total": "Counter",
    "request_in_progress": "Gauge",
    "last_request_timestamp_seconds": "Gauge",
    "adaptive_batch_size": "Histogram",
}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


# --- reading the dashboards ------------------------------------------------------------------------


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def variable_query(variable: dict) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def label_values(query: str) -> tuple[str, str] | None:
    """``label_values(<selector>, <label>)`` -> (selector, label); None for ``label_values(<label>)``."""
    match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
    return (match.group(1), match.group(2)) if match else None


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, query variable and annotation of a dashboard."""
    out = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            out.append(
                (f"panel {panel['id']} {panel['title']!r} {target.get('refId')}", target.get("expr", ""))
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable_query(variable)
            selector = label_values(query)
            out.append((f"variable ${variable['name']}", selector[0] if selector else query))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn"):
            continue
        out.append((f"annotation {annotation['name']!r}", annotation.get("expr", "")))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f"{path.name} {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return out


def all_expressions() -> list[tuple[str, str, str]]:
    """(source, where, expression with every variable replaced by a concrete value)."""
    out = []
    for name, dashboard in dashboards().items():
        values = {**GRAFANA_VARIABLES}
        for variable in dashboard.get("templating", {}).get("list", []):
            values[variable["name"]] = variable.get("allValue") or ".*"
        out.extend((name, where, substitute(expr, values)) for where, expr in queries(dashboard))
    out.extend(("rules", where, expr) for where, expr in rule_expressions())
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"undefined variable ${name} in {expr!r}")
        return values[name]

    # $name, ${name} and ${name:format}
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, labels or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if match.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


# --- metric names the code defines ------------------------------------------------------------------

METRIC_DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"']([A-Za-z_:][\w:]*)[\"']"
)


def exposed_names(kind: str, name: str) -> set[str]:
    """The sample names prometheus_client exposes for a metric defined as ``kind(name)``."""
    if kind == "Counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Info":
        return {f"{name}_info"}
    return {name}


def defined_in_code() -> set[str]:
    names = set()
    for path in (REPO_ROOT / "services").rglob("*.py"):
        for kind, name in METRIC_DEFINITION.findall(path.read_text()):
            names |= exposed_names(kind, name)
    return names


def known_names() -> set[str]:
    bentoml = set()
    for family, kind in BENTOML_FAMILIES.items():
        bentoml |= exposed_names(kind, f"{BENTOML_NAMESPACE}_{family}")
    return defined_in_code() | bentoml | PROMETHEUS_BUILTINS
