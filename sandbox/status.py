"""What the running platform says about itself: the control plane's read-only queries, in one place.

``sandbox status``, ``sandbox demo`` and the kind commands ask these; each answers ``None`` (or
``False``) when the service does not answer, so a caller can say which one is missing.
"""

from __future__ import annotations

import httpx

from sandbox.settings import Settings

TIMEOUT = 5.0


def _get(url: str, **params) -> httpx.Response | None:
    """The 200 answer to a GET, or None when the service does not answer or answers otherwise."""
    try:
        response = httpx.get(url, params=params or None, timeout=TIMEOUT)
    except httpx.HTTPError:
        return None
    return response if response.status_code == 200 else None


def _get_json(url: str, **params):
    response = _get(url, **params)
    if response is None:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def mlflow_answers(settings: Settings) -> bool:
    try:
        return httpx.get(f"{settings.mlflow_uri.rstrip('/')}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def champion(settings: Settings) -> dict | None:
    """The champion: name, version, run id and its metrics (per-slice ones left out); None if there is none."""
    from mlflow.tracking import MlflowClient

    from pipelines.registry import current_champion

    client = MlflowClient(settings.mlflow_uri)
    version = current_champion(client, settings.model_name)
    if version is None:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    return {
        "name": settings.model_name,
        "version": version.version,
        "run_id": version.run_id,
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("slice_")},
    }


def served_model(settings: Settings) -> dict | None:
    """What serving says it serves (``GET /model`` without the input example)."""
    model = _get_json(f"{settings.serving_url}/model")
    return {k: v for k, v in model.items() if k != "input_example"} if model else None


def workers_serving(settings: Settings) -> dict[str, int] | None:
    """How many serving workers serve each model version now (``sandbox_model_workers``); None if
    serving does not answer. ``GET /model`` answers from whichever worker takes the connection, and
    each worker loads the champion on its own poll: this says when all of them do."""
    from prometheus_client.parser import text_string_to_metric_families

    response = _get(f"{settings.serving_url}/metrics")
    if response is None:
        return None
    return {
        sample.labels["version"]: int(sample.value)
        for family in text_string_to_metric_families(response.text)
        if family.name == "sandbox_model_workers"
        for sample in family.samples
        if sample.labels.get("model") == settings.model_name and sample.value > 0
    }


def served_version(settings: Settings) -> str | None:
    model = served_model(settings)
    return model["version"] if model else None


def firing_alerts(settings: Settings) -> list[dict] | None:
    """Alertmanager's active, unsilenced alerts; None when Alertmanager does not answer."""
    alerts = _get_json(f"{settings.alertmanager_url}/api/v2/alerts", active="true", silenced="false")
    if alerts is None:
        return None
    return [
        {
            "name": a["labels"].get("alertname"),
            "summary": a["annotations"].get("summary", ""),
            "since": a.get("startsAt"),
        }
        for a in alerts
    ]


def inhibited_alerts(settings: Settings) -> list[dict] | None:
    """Alerts Alertmanager holds back by an inhibit rule (name, action label, by whom); None when it does not answer."""
    alerts = _get_json(f"{settings.alertmanager_url}/api/v2/alerts", active="true", inhibited="true")
    if alerts is None:
        return None
    return [
        {
            "name": a["labels"].get("alertname"),
            "action": a["labels"].get("action"),
            "by": a["status"]["inhibitedBy"],
        }
        for a in alerts
        if a.get("status", {}).get("inhibitedBy")
    ]


def prometheus_alerts_page(settings: Settings) -> str:
    """Prometheus' alerts page: ``/alerts``, or ``/classic/alerts`` where the build has no React UI
    (Debian's package), and ``/alerts`` when Prometheus does not answer (the upstream default)."""
    classic = f"{settings.prometheus_url}/classic/alerts"
    try:
        if httpx.get(f"{settings.prometheus_url}/alerts", timeout=TIMEOUT).status_code == 404:
            return classic
    except httpx.HTTPError:
        pass
    return f"{settings.prometheus_url}/alerts"


def alert_firing(settings: Settings, alertname: str) -> bool:
    """Whether Prometheus has ``alertname`` firing now (its ALERTS series)."""
    query = f'ALERTS{{alertname="{alertname}", alertstate="firing"}}'
    answer = _get_json(f"{settings.prometheus_url}/api/v1/query", query=query)
    return bool(answer and answer["data"]["result"])


def monitor_status(settings: Settings) -> dict | None:
    return _get_json(f"{settings.monitor_url}/api/status")


def retrainer_status(settings: Settings) -> dict | None:
    return _get_json(f"{settings.retrainer_url}/api/status")


def release_status(settings: Settings) -> dict | None:
    """The release controller's state (the retrainer's ``GET /api/release``); None when it does not answer."""
    return _get_json(f"{settings.retrainer_url}/api/release")


def release_line(release: dict) -> str:
    """One line for ``sandbox status``: the phase, the versions, since when, what it waits for."""
    import time

    since = f" for {time.time() - release['since']:.0f}s" if release.get("since") else ""
    if release["phase"] == "shadow":
        live = release.get("live") or {}
        return (
            f"release: v{release['challenger']} in shadow{since} next to champion v{release['champion']}: "
            f"{live.get('paired_rows', 0)}/{live.get('needed')} paired labelled rows"
        )
    if release["phase"] == "bake":
        return f"release: champion v{release['champion']} baking{since} (previous v{release['previous']})"
    last = (release.get("outcomes") or [None])[-1]
    told = f"; last: v{last['version']} {last['outcome']}: {last['reason']}" if last else ""
    return f"release: idle, waiting for {release['waits_for']}{told}"
