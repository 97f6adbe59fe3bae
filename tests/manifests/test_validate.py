"""Offline checks of the cluster files: they build, they validate, they pass the security lint.

No Kubernetes API server can run here, so: every kustomization builds with `kubectl kustomize`
(manifests/kfp excluded: remote upstream bases, fetched at `make up`), every rendered object
validates against the JSON schema of the pinned kind node's Kubernetes version with
kubernetes-validate --strict, and checkov finds no failed check in the rendered manifests or the
Dockerfile, except skips written next to the object with a reason.
"""

from __future__ import annotations

import json
import re
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.manifests.helpers import (
    BASE,
    KIND_CONFIG,
    KIND_OVERLAY,
    MANIFESTS,
    REPO_ROOT,
    kind_node_version,
    kustomizations,
    render,
    render_text,
    tool,
)

DOCKERFILE = REPO_ROOT / "Dockerfile"


def test_the_kustomizations_are_all_found():
    found = {p.relative_to(REPO_ROOT).as_posix() for p in kustomizations()}
    assert {"manifests/base", "manifests/overlays/kind", "monitoring"} <= found
    assert not any(p.startswith("manifests/kfp") for p in found)
    for component in ("mlflow", "serving", "monitor", "retrainer", "prometheus", "alertmanager", "grafana"):
        assert f"manifests/base/{component}" in found


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_kustomization_builds(path):
    objects = render(path)
    assert objects, f"{path} renders nothing"
    assert all({"apiVersion", "kind", "metadata"} <= set(o) for o in objects)


@pytest.mark.parametrize("path", [BASE, KIND_OVERLAY], ids=["base", "overlays/kind"])
def test_every_rendered_object_validates_strictly_for_the_kind_node_version(path):
    version = kind_node_version()
    errors = []
    for obj in render(path):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_a_misspelt_field():
    """The validator really is strict: an unknown field in a container is an error, not ignored."""
    deployment = next(o for o in render(KIND_OVERLAY) if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "IfNotPresent"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kind_node_version(), strict=True)


def test_kind_node_version_has_a_schema():
    version = kind_node_version()
    # kubernetes-validate knows this minor version (else validation above would silently be skipped).
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}, version
    )


def checkov_results(tmp_path) -> dict[str, dict]:
    rendered = tmp_path / "kind-rendered.yaml"
    rendered.write_text(render_text(KIND_OVERLAY))
    base = tmp_path / "base-rendered.yaml"
    # The base has no image tag (the overlay sets it): lint it too, minus what only the tag fixes.
    base.write_text(render_text(BASE))
    checkov = tool("checkov", "run `make setup` (checkov is a dev dependency)")
    result = subprocess.run(
        [checkov, "-f", str(rendered), "-f", str(base), "-f", str(DOCKERFILE),
         "--framework", "kubernetes", "dockerfile", "--skip-download", "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {r["check_type"]: r for r in reports}


@pytest.mark.slow  # checkov loads ~1,000 checks
def test_checkov_finds_no_failed_check(tmp_path):
    reports = checkov_results(tmp_path)
    assert set(reports) == {"kubernetes", "dockerfile"}
    failed = []
    for report in reports.values():
        for check in report["results"]["failed_checks"]:
            base_only = (
                check["file_path"].endswith("base-rendered.yaml") and check["check_id"] == "CKV_K8S_14"
            )
            if not base_only:  # CKV_K8S_14 "image tag": the base leaves the tag to its overlay, by design
                failed.append(
                    f"{check['check_id']} {check['check_name']} ({check['resource']}, {check['file_path']})"
                )
    assert not failed, "\n".join(failed)
    assert reports["kubernetes"]["summary"]["passed"] > 300
    skipped = {c["check_id"] for r in reports.values() for c in r["results"]["skipped_checks"]}
    assert skipped == set(written_skips()), (
        "every skip checkov applied is one written with a reason, and back"
    )


def written_skips() -> dict[str, list[str]]:
    """Check id -> the reasons written next to the objects (manifest annotations, Dockerfile comments)."""
    skips: dict[str, list[str]] = {}
    for path in MANIFESTS.glob("**/*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            annotations = (doc or {}).get("metadata", {}).get("annotations") or {}
            for key, value in annotations.items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    skips.setdefault(check, []).append(reason)
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"#\s*checkov:skip=(CKV\w+):(.*)", line.strip())
        if match:
            skips.setdefault(match.group(1), []).append(match.group(2))
    return skips


def test_every_checkov_skip_says_why():
    skips = written_skips()
    assert skips, "no skips found: the parser is broken or the skips moved"
    for check, reasons in skips.items():
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), check
        for reason in reasons:
            assert len(reason.split()) >= 6, f"{check}: the reason must say why, got {reason!r}"


def test_dockerfile_is_multi_stage_pinned_non_root_without_build_tools():
    text = DOCKERFILE.read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    name, _, tag = default.partition(":")
    assert name == "python" and re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), f"pin a patch release: {default}"
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert (
        len(stages) == 2
        and stages[0].startswith("${BASE_IMAGE} AS build")
        and stages[1].startswith("${BASE_IMAGE}")
    )
    final = stages[1]
    assert re.search(r"^USER 10001:10001$", final, re.M), "the final stage runs as the numeric non-root user"
    assert "COPY --from=build /opt/venv /opt/venv" in final
    for tool_name in ("gcc", "build-essential", "uv pip", "apt-get install"):
        assert tool_name not in final, f"{tool_name} in the final stage"
    # The .dockerignore is an allow-list of exactly what the build copies.
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :][:5] == [
        "!pyproject.toml",
        "!README.md",
        "!sandbox/",
        "!pipelines/",
        "!services/",
    ]
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in copied.split():
            assert (REPO_ROOT / source).exists(), source


def test_kind_config_names_the_cluster_and_binds_loopback_only():
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["name"] == "mlops-sandbox"
    (node,) = config["nodes"]
    assert all(m["listenAddress"] == "127.0.0.1" for m in node["extraPortMappings"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", kind_node_version())
