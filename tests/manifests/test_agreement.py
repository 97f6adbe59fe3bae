"""The manifests agree with the code: names, ports, commands, health paths, env vars, metrics, configs.

Everything here reads the rendered manifests (what `kubectl apply -k` sends), not the source files,
and compares them with the code's own definitions (Settings, the embedded stack's programs,
the pipeline's image, the services' routes and metrics, monitoring/).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from sandbox.local_stack import programs
from sandbox.settings import Settings
from tests.manifests.helpers import (
    HOST_PORTS,
    KIND_CONFIG,
    MANIFESTS,
    MONITORING,
    NAMESPACE,
    PORTS,
    PROJECT_COMPONENTS,
    REPO_ROOT,
    objects_of,
    tool,
)

SERVICES_CODE = "\n".join(p.read_text() for p in (REPO_ROOT / "services").glob("**/*.py"))


def deployment(objects, name) -> dict:
    return objects_of(objects, "Deployment")[name]


def container(objects, name) -> dict:
    (main,) = deployment(objects, name)["spec"]["template"]["spec"]["containers"]
    return main


def config_map(objects, prefix) -> dict:
    """A generated ConfigMap by its name before the hash suffix."""
    (found,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and re.fullmatch(prefix + r"-[a-z0-9]{10}", o["metadata"]["name"])
    ]
    return found


def mounted_config_map(objects, component, prefix) -> str:
    """The mount path of a generated ConfigMap in a component's pod (the reference is resolved)."""
    pod = deployment(objects, component)["spec"]["template"]["spec"]
    name = config_map(objects, prefix)["metadata"]["name"]
    (volume,) = [v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == name]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume]
    return mount["mountPath"]


# --- names and ports -----------------------------------------------------------------------------


def test_one_deployment_and_service_per_component_with_the_design_ports(kind_objects):
    deployments, services = objects_of(kind_objects, "Deployment"), objects_of(kind_objects, "Service")
    assert set(deployments) == set(PORTS)
    assert set(services) == set(PORTS) | {"ml-pipeline-ui-nodeport"}
    for name, port in PORTS.items():
        assert deployments[name]["metadata"]["namespace"] == NAMESPACE
        assert container(kind_objects, name)["ports"] == [{"name": "http", "containerPort": port}]
        (service_port,) = services[name]["spec"]["ports"]
        assert service_port["port"] == port and service_port["targetPort"] == "http", name
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert deployments[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}


def test_settings_defaults_are_the_cluster_ports():
    settings = Settings()
    for name in ("mlflow", "serving", "monitor", "retrainer", "prometheus", "alertmanager"):
        assert getattr(settings, f"{name}_port") == PORTS[name], name


def test_kind_maps_every_nodeport_to_its_design_host_port(kind_objects):
    mappings = {
        m["containerPort"]: m["hostPort"]
        for m in yaml.safe_load(KIND_CONFIG.read_text())["nodes"][0]["extraPortMappings"]
    }
    exposed = {}
    for name, service in objects_of(kind_objects, "Service").items():
        if service["spec"].get("type") == "NodePort":
            (port,) = service["spec"]["ports"]
            exposed[name] = mappings[port["nodePort"]]
    assert exposed == HOST_PORTS
    assert len(mappings) == len(HOST_PORTS), "a kind port mapping leads to no Service"
    assert objects_of(kind_objects, "Service")["retrainer"]["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_kfp_ui_nodeport_targets_the_upstream_ui(kind_objects):
    service = objects_of(kind_objects, "Service")["ml-pipeline-ui-nodeport"]
    assert service["metadata"]["namespace"] == "kubeflow"
    assert service["spec"]["selector"] == {"app": "ml-pipeline-ui"}
    assert service["spec"]["ports"][0]["targetPort"] == 3000


# --- the same programs as the embedded stack -------------------------------------------------------


def normalised(args: list[str]) -> list[str]:
    """['--workers', '1'] and ['--workers=1'] alike."""
    out = []
    for arg in args:
        out += arg.split("=", 1) if arg.startswith("--") and "=" in arg else [arg]
    return out


def test_commands_are_the_embedded_stacks(kind_objects, tmp_path):
    embedded = {p.name: p for p in programs(Settings(home=tmp_path))}
    mlflow = normalised(
        container(kind_objects, "mlflow")["command"] + container(kind_objects, "mlflow")["args"]
    )
    assert mlflow[:2] == ["mlflow", "server"]
    local = normalised(embedded["mlflow"].command)
    for flag in ("--serve-artifacts", "--backend-store-uri", "--artifacts-destination"):
        assert flag in local and flag in mlflow, flag
    assert mlflow[mlflow.index("--workers") + 1] == local[local.index("--workers") + 1] == "1"
    assert mlflow[mlflow.index("--backend-store-uri") + 1].startswith("sqlite:////data/")
    assert "--allowed-hosts" in mlflow, "MLflow answers 403 to Service names without it"
    allowed = mlflow[mlflow.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow.mlops.svc.cluster.local:*", "mlflow:*", "localhost:*"} <= set(allowed)

    serving = container(kind_objects, "serving")
    assert serving["command"][:2] == ["bentoml", "serve"]
    assert serving["command"][2] == embedded["serving"].command[2] == "services.serving.service:Serving"
    for name in ("monitor", "retrainer"):
        spec = container(kind_objects, name)
        assert spec["command"] == ["uvicorn", f"services.{name}.app:create_app", "--factory"]
        if name in embedded:
            assert f"services.{name}.app:create_app" in embedded[name].command
            assert "--factory" in embedded[name].command
        assert importlib.util.find_spec(f"services.{name}.app") is not None
    for name in PROJECT_COMPONENTS:
        args = normalised(container(kind_objects, name)["args"])
        assert args[args.index("--host") + 1] == "0.0.0.0"
        assert args[args.index("--port") + 1] == str(PORTS[name])


def probe_paths(spec: dict) -> dict[str, str]:
    return {
        kind: spec[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if kind in spec
    }


def test_probes_use_the_real_health_endpoints(kind_objects, tmp_path):
    embedded = {p.name: p.health_path for p in programs(Settings(home=tmp_path))}
    expected = {
        "mlflow": {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/health"},
        "serving": {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"},
        "monitor": dict.fromkeys(("startupProbe", "livenessProbe", "readinessProbe"), "/healthz"),
        "retrainer": dict.fromkeys(("startupProbe", "livenessProbe", "readinessProbe"), "/healthz"),
        "prometheus": {"livenessProbe": "/-/healthy", "readinessProbe": "/-/ready"},
        "alertmanager": {"livenessProbe": "/-/healthy", "readinessProbe": "/-/ready"},
        "grafana": dict.fromkeys(("startupProbe", "livenessProbe", "readinessProbe"), "/api/health"),
    }
    for name, paths in expected.items():
        assert probe_paths(container(kind_objects, name)) == paths, name
        if name in embedded:  # the path the embedded stack waits on is the cluster's liveness/readiness
            assert embedded[name] in paths.values(), name
    # The routes exist where the code defines them.
    for service in ("monitor", "retrainer"):
        source = (REPO_ROOT / "services" / service / "app.py").read_text()
        assert '@app.get("/healthz")' in source, service
    bentoml_root = Path(importlib.util.find_spec("bentoml").origin).parent
    bentoml_code = "\n".join(
        p.read_text(errors="ignore") for p in (bentoml_root / "_internal" / "server").glob("**/*.py")
    )
    assert '"/livez"' in bentoml_code and '"/readyz"' in bentoml_code
    mlflow_root = Path(importlib.util.find_spec("mlflow").origin).parent
    assert (
        '"/health"'
        in (mlflow_root / "server" / "__init__.py").read_text()
        + (mlflow_root / "server" / "security_utils.py").read_text()
    )


# --- environment -----------------------------------------------------------------------------------


def sandbox_env(objects) -> dict[str, dict[str, str]]:
    return {
        name: {
            e["name"]: e["value"]
            for e in container(objects, name).get("env", [])
            if e["name"].startswith("SANDBOX_")
        }
        for name in PROJECT_COMPONENTS
    }


def test_every_sandbox_env_var_is_a_setting_and_parses(kind_objects, monkeypatch):
    fields = set(Settings.model_fields)
    dockerfile_env = set(re.findall(r"\b(SANDBOX_[A-Z_]+)=", (REPO_ROOT / "Dockerfile").read_text()))
    assert dockerfile_env == {"SANDBOX_HOME", "SANDBOX_HOST"}
    for name, env in sandbox_env(kind_objects).items():
        assert bool(env) == (name != "mlflow"), f"{name}: SANDBOX_ variables {env}"  # mlflow is not ours
        for var in set(env) | dockerfile_env:
            assert var.removeprefix("SANDBOX_").lower() in fields, f"{name}: {var} is not a Settings field"
        for var, value in {**env, "SANDBOX_HOME": "/data", "SANDBOX_HOST": "0.0.0.0"}.items():
            monkeypatch.setenv(var, value)
        settings = Settings()
        assert settings.host == "0.0.0.0" and str(settings.home) == "/data"
        for var in env:
            monkeypatch.delenv(var)


def test_service_urls_in_env_name_real_services_and_the_pipelines_in_cluster_addresses(kind_objects):
    from pipelines import remote

    services = objects_of(kind_objects, "Service")
    urls = {
        value
        for env in sandbox_env(kind_objects).values()
        for value in env.values()
        if value.startswith("http")
    }
    assert urls, "no service URL in the env"
    for url in urls:
        parsed = urlparse(url)
        name, namespace = parsed.hostname.split(".")[:2]
        if namespace == "kubeflow":
            assert url == remote.IN_CLUSTER_KFP_HOST
            continue
        assert namespace == NAMESPACE and parsed.hostname == f"{name}.{NAMESPACE}.svc.cluster.local", url
        assert services[name]["spec"]["ports"][0]["port"] == parsed.port, url
    # The retrainer hands the pipeline the addresses its pods (namespace kubeflow) use.
    env = sandbox_env(kind_objects)
    assert env["retrainer"]["SANDBOX_MLFLOW_TRACKING_URI"] == remote.IN_CLUSTER_MLFLOW_URI
    assert env["retrainer"]["SANDBOX_MONITOR_BASE_URL"] == remote.IN_CLUSTER_MONITOR_URL
    assert env["retrainer"]["SANDBOX_KFP_HOST"] == remote.IN_CLUSTER_KFP_HOST
    assert env["serving"]["SANDBOX_MONITOR_BASE_URL"] == remote.IN_CLUSTER_MONITOR_URL


def test_project_containers_run_the_pipelines_image(kind_objects):
    from pipelines.components import PROJECT_IMAGE

    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"mlops-sandbox:{version}" == PROJECT_IMAGE
    for name in PROJECT_COMPONENTS:
        assert container(kind_objects, name)["image"] == PROJECT_IMAGE, name


def test_kfp_pin_is_one_release_matching_the_sdk():
    from importlib.metadata import version

    refs = {
        path.relative_to(REPO_ROOT).as_posix(): re.findall(r"\?ref=([\w.]+)", path.read_text())
        for path in (MANIFESTS / "kfp").glob("**/kustomization.yaml")
    }
    assert len(refs) == 2 and all(len(r) == 1 for r in refs.values()), refs
    (ref,) = {r[0] for r in refs.values()}
    assert ref.split(".")[:2] == version("kfp").split(".")[:2], f"KFP backend {ref} vs SDK {version('kfp')}"
    assert ref in (REPO_ROOT / "docs" / "kind.md").read_text()


# --- Prometheus and Alertmanager ---------------------------------------------------------------------


def test_cluster_prometheus_config_is_the_embedded_one_with_service_names(kind_objects, tmp_path):
    embedded = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    cluster = yaml.safe_load(config_map(kind_objects, "prometheus-config")["data"]["prometheus.yml"])
    assert cluster["global"] == embedded["global"]
    assert [j["job_name"] for j in cluster["scrape_configs"]] == [
        j["job_name"] for j in embedded["scrape_configs"]
    ]
    services = objects_of(kind_objects, "Service")
    for job in cluster["scrape_configs"]:
        (target,) = job["static_configs"][0]["targets"]
        host, port = target.split(":")
        if job["job_name"] == "prometheus":
            assert target == "localhost:9090"
            continue
        assert host == job["job_name"] and services[host]["spec"]["ports"][0]["port"] == int(port), target
    (am_target,) = cluster["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_target == f"alertmanager:{PORTS['alertmanager']}"
    # The rule files are monitoring/'s, byte for byte, mounted where the config looks for them.
    rules = config_map(kind_objects, "prometheus-rules")["data"]
    assert rules == {p.name: p.read_text() for p in (MONITORING / "prometheus" / "rules").glob("*.yml")}
    (pattern,) = cluster["rule_files"]
    assert Path(pattern).parent.as_posix() == mounted_config_map(
        kind_objects, "prometheus", "prometheus-rules"
    )
    config_mount = mounted_config_map(kind_objects, "prometheus", "prometheus-config")
    assert f"--config.file={config_mount}" in container(kind_objects, "prometheus")["args"]

    # promtool on exactly what the pod gets (the rule path moved into tmp_path).
    (tmp_path / "rules").mkdir()
    for name, text in rules.items():
        (tmp_path / "rules" / name).write_text(text)
    cluster["rule_files"] = [str(tmp_path / "rules" / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cluster))
    promtool = tool("promtool", "run `make setup` (Debian: apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr and "8 rules found" in result.stdout + result.stderr


def test_cluster_alertmanager_config_routes_like_the_embedded_one_to_the_retrainer_service(
    kind_objects, tmp_path
):
    embedded = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
    text = config_map(kind_objects, "alertmanager-config")["data"]["alertmanager.yml"]
    cluster = yaml.safe_load(text)
    assert cluster["route"] == embedded["route"] and cluster["inhibit_rules"] == embedded["inhibit_rules"]
    hooks = {r["name"]: [h["url"] for h in r.get("webhook_configs", [])] for r in cluster["receivers"]}
    assert set(hooks) == {"default", "human", "retrainer"}
    from sandbox.settings import Settings
    from services.retrainer.app import create_app

    retrainer_posts = {
        r.path
        for r in create_app(Settings(home=tmp_path), release_controller=False).routes
        if "POST" in r.methods
    }
    for receiver, path in (("retrainer", "/alerts"), ("human", "/notifications")):
        (hook,) = hooks[receiver]
        url = urlparse(hook)
        assert url.hostname == "retrainer.mlops.svc.cluster.local" and url.port == PORTS["retrainer"]
        assert url.path == path and path in retrainer_posts, path
    for receiver in cluster["receivers"]:
        for h in receiver.get("webhook_configs", []):
            h["url"] = "X"
    for receiver in embedded["receivers"]:
        for h in receiver.get("webhook_configs", []):
            h["url"] = "X"
    assert cluster["receivers"] == embedded["receivers"]
    config_mount = mounted_config_map(kind_objects, "alertmanager", "alertmanager-config")
    assert f"--config.file={config_mount}/alertmanager.yml" in container(kind_objects, "alertmanager")["args"]

    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    amtool = tool("amtool", "run `make setup` (Debian: apt-get install prometheus-alertmanager)")
    check = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    routed = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={path}", "alertname=DataDriftDetected", "action=retrain"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert routed.stdout.strip() == "retrainer", routed.stdout + routed.stderr
    paged = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={path}", "alertname=DataQualityDegraded", "action=page"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert paged.stdout.strip() == "human", paged.stdout + paged.stderr


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b((?:sandbox|bentoml)_[a-z0-9_]+)", text))


def defined_in_code(name: str) -> bool:
    base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
    if name.startswith("bentoml_"):
        bentoml_root = Path(importlib.util.find_spec("bentoml").origin).parent
        suffix = base.removeprefix("bentoml_").removeprefix("service_")
        return any(suffix in p.read_text(errors="ignore") for p in bentoml_root.glob("_internal/**/*.py"))
    return f'"{name}"' in SERVICES_CODE or f'"{base}"' in SERVICES_CODE or f'"{base}_total"' in SERVICES_CODE


def test_every_metric_the_rules_and_dashboards_use_exists_in_the_services():
    rules = "\n".join(p.read_text() for p in (MONITORING / "prometheus" / "rules").glob("*.yml"))
    used = metric_names(rules)
    assert {"sandbox_drift_share", "bentoml_service_request_duration_seconds_bucket"} <= used
    dashboards = {}
    for path in (MONITORING / "grafana" / "dashboards").glob("*.json"):
        exprs = re.findall(r'"expr"\s*:\s*"((?:[^"\\]|\\.)*)"', path.read_text())
        dashboards[path.name] = metric_names("\n".join(exprs))
    missing = {name for name in used if not defined_in_code(name)}
    missing |= {
        f"{board}: {name}"
        for board, names in dashboards.items()
        for name in names
        if not defined_in_code(name)
    }
    assert not missing, f"metrics used but defined nowhere in services/: {sorted(missing)}"
    assert not defined_in_code("sandbox_no_such_metric_seconds")


# --- Grafana -----------------------------------------------------------------------------------------


def test_grafana_is_provisioned_from_monitoring(kind_objects):
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    listed = {
        Path(f).name
        for generator in kustomization["configMapGenerator"]
        if generator["name"] == "grafana-dashboards"
        for f in generator["files"]
    }
    on_disk = {p.name for p in (MONITORING / "grafana" / "dashboards").glob("*.json")}
    assert listed == on_disk, (
        "list every monitoring/grafana/dashboards/*.json in monitoring/kustomization.yaml"
    )
    dashboards = config_map(kind_objects, "grafana-dashboards")["data"]
    assert set(dashboards) == on_disk
    datasources = yaml.safe_load(config_map(kind_objects, "grafana-datasources")["data"]["prometheus.yml"])[
        "datasources"
    ]
    uids = {d["uid"] for d in datasources}
    for name, text in dashboards.items():
        refs = {d["uid"] for d in _datasource_refs(json.loads(text)) if isinstance(d, dict) and "uid" in d}
        assert refs and refs <= uids, f"{name} refers to data sources {refs - uids} that are not provisioned"
    (prometheus,) = datasources
    url = urlparse(prometheus["url"])
    assert url.hostname == "prometheus" and url.port == PORTS["prometheus"]
    providers = yaml.safe_load(config_map(kind_objects, "grafana-dashboard-providers")["data"]["sandbox.yml"])
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == mounted_config_map(kind_objects, "grafana", "grafana-dashboards")
    assert (
        mounted_config_map(kind_objects, "grafana", "grafana-datasources")
        == "/etc/grafana/provisioning/datasources"
    )
    assert (
        mounted_config_map(kind_objects, "grafana", "grafana-dashboard-providers")
        == "/etc/grafana/provisioning/dashboards"
    )
    env = {e["name"]: e["value"] for e in container(kind_objects, "grafana")["env"]}
    home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent.as_posix() == provider["options"]["path"] and home.name in on_disk


def _datasource_refs(node):
    if isinstance(node, dict):
        if "datasource" in node:
            yield node["datasource"]
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_grafana_admin_password_comes_from_a_secret_that_is_not_in_git(kind_objects):
    assert not [o for o in kind_objects if o["kind"] == "Secret"], "no Secret may be rendered from git"
    pod = deployment(kind_objects, "grafana")["spec"]["template"]["spec"]
    (admin,) = [v for v in pod["volumes"] if "secret" in v]
    assert admin["secret"]["secretName"] == "grafana-admin"
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == admin["name"]]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["GF_SECURITY_ADMIN_USER__FILE"] == f"{mount['mountPath']}/admin-user"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == f"{mount['mountPath']}/admin-password"
    assert not any("PASSWORD" in name and not name.endswith("__FILE") for name in env)


@pytest.mark.parametrize("component", sorted(PORTS))
def test_every_container_is_locked_down_and_sized(kind_objects, component):
    pod = deployment(kind_objects, component)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == component
    service_account = objects_of(kind_objects, "ServiceAccount")[component]
    assert service_account["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for spec in pod["containers"] + pod.get("initContainers", []):
        security = spec["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["runAsNonRoot"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        resources = spec["resources"]
        for kind in ("cpu", "memory"):
            assert resources["requests"][kind] and resources["limits"][kind], (component, kind)
        port_names = {p["name"] for p in spec["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert spec[probe]["httpGet"]["port"] in port_names
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in spec["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{component}: bound the emptyDir {mount['name']}"


def test_no_kubernetes_api_rights_are_granted(kind_objects):
    kinds = {o["kind"] for o in kind_objects}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    (namespace,) = objects_of(kind_objects, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- issue 15: pins and first-boot settings ---------------------------------------------------------


def test_the_kind_node_image_is_pinned_by_digest_for_the_kind_release_ci_installs():
    from sandbox import kind_stack

    config = yaml.safe_load((REPO_ROOT / "kind-config.yaml").read_text())
    image = config["nodes"][0]["image"]
    assert re.fullmatch(r"kindest/node:v1\.35\.8@sha256:[0-9a-f]{64}", image), image
    # The digest kind v0.33.0's release notes give for v1.35.8 (docs/kind.md says where it came from).
    assert image.endswith("@sha256:07b2536e30b803ed61d1677a79df6115f798ce64c80f9e22f6ed45afd09323c0")
    workflow = yaml.safe_load((REPO_ROOT / ".github/workflows/kind-e2e.yml").read_text())
    assert workflow["env"]["KIND_VERSION"] == "v" + ".".join(map(str, kind_stack.KIND_RELEASE))


def test_grafana_does_not_preinstall_plugins_on_every_start(kind_objects):
    env = {e["name"]: e.get("value") for e in container(kind_objects, "grafana")["env"]}
    assert env["GF_PLUGINS_PREINSTALL_DISABLED"] == "true"


def test_the_deployments_restarted_on_a_new_image_are_those_running_it(kind_objects):
    from sandbox import kind_stack

    assert sorted(kind_stack.PROJECT_DEPLOYMENTS) == sorted(PROJECT_COMPONENTS)
    others = set(kind_stack.DEPLOYMENTS) - set(kind_stack.PROJECT_DEPLOYMENTS)
    assert all(not container(kind_objects, n)["image"].startswith("mlops-sandbox") for n in others)


def test_the_e2e_workflow_frees_disk_and_keeps_the_evidence_of_a_failure():
    workflow = yaml.safe_load((REPO_ROOT / ".github/workflows/kind-e2e.yml").read_text())
    steps = workflow["jobs"]["e2e"]["steps"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    assert names.index("free disk space") < names.index(
        "make up (cluster, image, KFP, platform, first training)"
    )
    free = steps[names.index("free disk space")]["run"]
    assert "/usr/local/lib/android" in free and "df -h" in free and "docker system df" in free
    upload = steps[names.index("upload diagnostics")]
    assert upload["if"] == "failure()" and upload["uses"].startswith("actions/upload-artifact@")
    diagnostics = steps[names.index("diagnostics")]["run"]
    assert "get events" in diagnostics and "logs" in diagnostics and upload["with"]["path"] == "diagnostics/"
