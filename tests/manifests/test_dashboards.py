"""The Grafana dashboards (monitoring/grafana/dashboards/*.json), read as files: no server.

No Grafana runs here (there is no Debian package), so the dashboards are checked in two ways. Here,
their JSON model: panels complete, on the ``prometheus`` datasource uid, on the grid, variables
defined; every metric an expression names is defined in services/ (or is a Prometheus / BentoML
built-in). tests/integration/test_dashboards.py runs every expression (panels, template variables,
annotations, and the alert rules) against a real Prometheus, with the helpers below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
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


# --- the JSON model ----------------------------------------------------------------------------------


def test_the_three_dashboards_exist_with_unique_uids_and_titles():
    found = dashboards()
    assert set(found) == EXPECTED
    uids = [d["uid"] for d in found.values()]
    titles = [d["title"] for d in found.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for name, dashboard in found.items():
        assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]), name  # Grafana: at most 40 characters
        assert dashboard["schemaVersion"] >= 36, name  # Grafana 9+ model (datasource as {type, uid})
        assert dashboard.get("id") is None, f"{name}: provisioned dashboards carry no database id"
        assert "mlops-sandbox" in dashboard["tags"], name
        assert dashboard["time"]["from"].startswith("now-") and dashboard["refresh"], name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_is_complete_and_queries_the_prometheus_datasource(name):
    dashboard = load(name)
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"panel ids not unique: {ids}"
    assert sum(p["type"] != "row" for p in panels) >= 8
    for panel in panels:
        where = f"{name}: panel {panel['id']} {panel.get('title')!r}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel.get("title"), where
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{where}: say what the panel shows"
        assert panel.get("datasource") == DATASOURCE, where
        targets = panel.get("targets")
        assert targets, f"{where}: no targets"
        ref_ids = [t.get("refId") for t in targets]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), where
        for target in targets:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, where
            assert target.get("expr", "").strip(), f"{where} {target.get('refId')}: empty expr"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
            assert label_values(variable_query(variable)), (
                f"{variable['name']}: label_values(<metric>, <label>)"
            )
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == DATASOURCE and annotation["expr"], annotation["name"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_sit_on_the_grid_without_overlapping(name):
    cells: dict[tuple[int, int], str] = {}
    for panel in load(name)["panels"]:  # the top level: the grid Grafana lays out
        pos = panel["gridPos"]
        assert all(isinstance(pos.get(k), int) for k in "hwxy"), panel["title"]
        assert pos["w"] >= 1 and pos["h"] >= 1 and pos["x"] >= 0 and pos["y"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']!r} is wider than the 24-column grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_variable_an_expression_uses_is_defined(name):
    dashboard = load(name)
    defined = {v["name"] for v in dashboard["templating"]["list"]} | set(GRAFANA_VARIABLES)
    for where, expr in queries(dashboard):
        used = {a or b for a, b in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", expr)}
        assert used <= defined, f"{name} {where}: undefined {used - defined}"


def test_metric_name_extraction():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(bentoml_service_request_duration_seconds_bucket{endpoint="/predict"}[5m])))'
    ) == {"bentoml_service_request_duration_seconds_bucket"}
    assert metric_names(
        '(time() - sandbox_monitor_last_evaluation_timestamp_seconds > 300) or up{job="monitor"} == 0'
    ) == {"sandbox_monitor_last_evaluation_timestamp_seconds", "up"}
    assert metric_names(
        'max by (alertname) (ALERTS{alertstate="firing"}) * 2 or max without (instance) (a:b_c offset 5m) unless on (x) group_left (y) z'
    ) == {"ALERTS", "a:b_c", "z"}
    expr = 'count(x) or vector(0) > bool 1e3 and label_replace(y, "d", "$1", "s", "(.*)")'
    assert metric_names(expr) == {"x", "y"}


def test_every_metric_an_expression_names_is_defined_in_the_code():
    known = known_names()
    # The checker is not vacuous: the code defines what the services export, and a typo is unknown.
    assert {"sandbox_drift_share", "sandbox_predictions_total", "sandbox_retrain_runs_total"} <= known
    assert "sandbox_drift_shares" not in known and "sandbox_predictions" not in known
    unknown = [
        f"{source} {where}: {sorted(metric_names(expr) - known)}"
        for source, where, expr in all_expressions()
        if metric_names(expr) - known
    ]
    assert not unknown, "metrics no service exports (typo?):\n" + "\n".join(unknown)
    named = set().union(*(metric_names(expr) for _, _, expr in all_expressions()))
    # Each service's metrics have a place on the dashboards.
    prefixes = (
        "bentoml_service_",
        "sandbox_model_",
        "sandbox_predictions",
        "sandbox_drift",
        "sandbox_retrain_",
    )
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in named), prefix


def test_bentoml_metric_families_exist_in_the_installed_bentoml():
    import _bentoml_impl
    import bentoml

    sources = "".join(
        path.read_text(errors="ignore")
        for root in (Path(bentoml.__file__).parent, Path(_bentoml_impl.__file__).parent)
        for path in root.rglob("*.py")
    )
    assert f'"{BENTOML_NAMESPACE}"' in sources
    for family, kind in BENTOML_FAMILIES.items():
        assert re.search(rf'\.{kind}\(\s*namespace=[^)]*?name="{family}"', sources, re.S), family
