"""The Grafana dashboards' JSON model, read as files (no server): panels complete, on the ``prometheus``
datasource uid, on the grid, variables defined; every metric an expression names is defined in
services/ (or is a Prometheus / BentoML built-in). No Grafana runs here (there is no Debian package):
tests/integration/test_dashboards.py runs every expression against a real Prometheus."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.manifests.dashboards import (
    BENTOML_FAMILIES,
    BENTOML_NAMESPACE,
    DATASOURCE,
    EXPECTED,
    GRAFANA_VARIABLES,
    PANEL_TYPES,
    all_expressions,
    all_panels,
    dashboards,
    known_names,
    label_values,
    load,
    metric_names,
    queries,
    variable_query,
)

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
