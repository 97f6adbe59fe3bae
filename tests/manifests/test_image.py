"""`make test-image` (opt-in, root, not in CI): the project image, built and run as the manifests run it.

No registry is reachable here, so the base is made with debootstrap + ``docker import`` (Debian 12's
Python 3.11, with this machine's CA certificates so that pip/uv in the build trust its proxy), the
project image is built on it (``--build-arg BASE_IMAGE``), and the mlflow, serving, monitor and
retrainer containers are started with the command, args, env, ports and limits of the rendered kind
overlay, the pod's security settings (read-only root, UID 10001, no capabilities, no new privileges)
and the Service names as network aliases. Then: health endpoints, serving's 503 without a champion, a
training run inside the image (`sandbox train` against the MLflow container), the champion served,
a prediction, and the monitor receiving serving's feed. Memory per container is written to
``build/image-test/stats.json``.

A Docker engine is started by hand if none answers; it is stopped afterwards, and the iptables rules
and the docker0 bridge it created are restored to what they were.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from sandbox.settings import REPO_ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("SANDBOX_TEST_IMAGE") != "1", reason="opt-in: `make test-image` (needs root and Docker)"
)

WORK = REPO_ROOT / "build" / "image-test"
BASE_IMAGE = "sandbox-base:bookworm"
NETWORK = "sandbox-image-test"
PREFIX = "sandbox-image-test-"
COMPONENTS = ["mlflow", "monitor", "retrainer", "serving"]
HEALTH = {"mlflow": "/health", "monitor": "/healthz", "retrainer": "/healthz", "serving": "/livez"}


def docker_cli() -> str:
    # Debian's docker.io CLI does BuildKit; a newer CLI earlier on PATH may lack buildx.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("docker is missing: apt-get install --no-install-recommends docker.io")


def docker(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:3])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="module")
def engine():
    """A reachable Docker engine; started by hand (and cleaned up after) if none answers."""
    if docker("info", check=False, timeout=30).returncode == 0:
        yield
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.fail("no Docker engine answers and this is not root with dockerd: apt-get install docker.io")
    WORK.mkdir(parents=True, exist_ok=True)
    rules_before = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    forwarding_before = forwarding.read_text()
    had_bridge = Path("/sys/class/net/docker0").exists()
    log = (WORK / "dockerd.log").open("w")
    daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while docker("info", check=False, timeout=30).returncode != 0:
            assert daemon.poll() is None, f"dockerd exited: see {WORK / 'dockerd.log'}"
            assert time.monotonic() < deadline, "dockerd did not answer within 60 s"
            time.sleep(1)
        yield
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        # dockerd adds chains and NAT rules, sets FORWARD to DROP and turns IP forwarding on: undo all.
        if rules_before:
            subprocess.run(["iptables-restore"], input=rules_before, text=True, check=False)
        if forwarding.read_text() != forwarding_before:
            forwarding.write_text(forwarding_before)
        if not had_bridge and Path("/sys/class/net/docker0").exists():
            subprocess.run(["ip", "link", "delete", "docker0"], check=False)


def make_base_image() -> None:
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing: apt-get install --no-install-recommends debootstrap")
    rootfs = WORK / "rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             "bookworm", str(rootfs), "http://deb.debian.org/debian"],
            check=True, capture_output=True, timeout=1200,
        )  # fmt: skip
    # Trust what this machine trusts (an HTTPS proxy's CA), or pip in the build cannot verify PyPI.
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(cert, rootfs / "usr" / "local" / "share" / "ca-certificates" / cert.name)
    subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        [docker_cli(), "import", "-", BASE_IMAGE], stdin=tar.stdout, check=True, capture_output=True
    )
    tar.wait()


@pytest.fixture(scope="module")
def image(engine) -> str:
    from pipelines.components import PROJECT_IMAGE

    WORK.mkdir(parents=True, exist_ok=True)
    make_base_image()
    started = time.monotonic()
    result = subprocess.run(
        [docker_cli(), "build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", PROJECT_IMAGE, str(REPO_ROOT)],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )  # fmt: skip
    (WORK / "build.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"docker build failed: see {WORK / 'build.log'}\n{result.stderr[-2000:]}"
    print(f"image built in {time.monotonic() - started:.0f} s")
    return PROJECT_IMAGE


def rendered_containers() -> dict[str, dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO_ROOT / "manifests" / "overlays" / "kind")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = {}
    for obj in yaml.safe_load_all(out.stdout):
        if obj and obj["kind"] == "Deployment" and obj["metadata"]["name"] in COMPONENTS:
            pod = obj["spec"]["template"]["spec"]
            found[obj["metadata"]["name"]] = {"container": pod["containers"][0], "pod": pod}
    return found


def run_args(name: str, spec: dict, image: str) -> list[str]:
    """`docker run` arguments that reproduce the pod: command, env, limits, security, volumes, aliases."""
    container, pod = spec["container"], spec["pod"]
    security = pod.get("securityContext", {})
    args = [
        "run", "-d", "--name", PREFIX + name, "--network", NETWORK,
        "--user", f"{security['runAsUser']}:{security['runAsGroup']}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--memory", container["resources"]["limits"]["memory"].replace("Mi", "m").replace("Gi", "g"),
        "--cpus", str(int(container["resources"]["limits"]["cpu"].rstrip("m")) / 1000
                      if container["resources"]["limits"]["cpu"].endswith("m")
                      else container["resources"]["limits"]["cpu"]),
        "-p", f"127.0.0.1::{container['ports'][0]['containerPort']}",
    ]  # fmt: skip
    if container["securityContext"].get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for alias in (name, f"{name}.mlops", f"{name}.mlops.svc", f"{name}.mlops.svc.cluster.local"):
        args += ["--network-alias", alias]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" in volume:
            args += [
                "--mount",
                f"type=volume,source={PREFIX}{name}-{mount['name']},destination={mount['mountPath']}",
            ]
        else:
            args += ["--mount", f"type=tmpfs,destination={mount['mountPath']}"]  # emptyDir
    for env in container.get("env", []):
        args += ["-e", f"{env['name']}={env['value']}"]
    args += [
        "--entrypoint",
        container["command"][0],
        image,
        *container["command"][1:],
        *container.get("args", []),
    ]
    return args


def host_url(name: str, port: int) -> str:
    mapped = docker("port", PREFIX + name, str(port)).stdout.split()[0]
    return "http://" + mapped


def wait_for(url: str, timeout: float, status: int = 200) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == status:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(2)
    raise AssertionError(f"{url} did not answer {status} within {timeout:.0f} s (last: {last})")


@pytest.fixture(scope="module")
def stack(image):
    specs = rendered_containers()
    assert set(specs) == set(COMPONENTS)
    cleanup()
    docker("network", "create", NETWORK)
    try:
        urls = {}
        for name in COMPONENTS:
            docker(*run_args(name, specs[name], image))
            urls[name] = host_url(name, specs[name]["container"]["ports"][0]["containerPort"])
        for name in COMPONENTS:
            try:
                wait_for(urls[name] + HEALTH[name], timeout=240)
            except AssertionError:
                print(docker("logs", "--tail", "60", PREFIX + name, check=False).stdout)
                raise
        yield {"urls": urls, "image": image}
    finally:
        for name in COMPONENTS:
            logs = docker("logs", PREFIX + name, check=False)
            (WORK / f"{name}.log").write_text(logs.stdout + logs.stderr)
        cleanup()


def cleanup() -> None:
    for name in COMPONENTS:
        docker("rm", "-f", "-v", PREFIX + name, check=False)
    docker("network", "rm", NETWORK, check=False)
    for volume in docker("volume", "ls", "-q", "--filter", f"name={PREFIX}", check=False).stdout.split():
        docker("volume", "rm", volume, check=False)


def test_image_runs_the_platform_as_the_manifests_do(stack):
    urls = stack["urls"]
    # No champion yet: serving is alive, not ready, and says what to do.
    assert httpx.get(urls["serving"] + "/livez", timeout=5).status_code == 200
    assert httpx.get(urls["serving"] + "/readyz", timeout=5).status_code != 200
    early = httpx.post(urls["serving"] + "/predict", json={"rows": [{}]}, timeout=10)
    assert early.status_code == 503 and "sandbox train" in early.text

    # The pipeline inside the image (kfp.local, as the embedded mode), against the MLflow container.
    started = time.monotonic()
    train = docker(
        "run", "--rm", "--network", NETWORK, "--user", "10001:10001", "--read-only",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--mount", "type=tmpfs,destination=/tmp,tmpfs-mode=1777",
        # A volume, not a tmpfs: Docker's tmpfs takes the image directory's mode but not its owner.
        "--mount", f"type=volume,source={PREFIX}train-data,destination=/data",
        "-e", "SANDBOX_MLFLOW_TRACKING_URI=http://mlflow.mlops.svc.cluster.local:5000",
        stack["image"], "sandbox", "train", "--n-rows", "3000", "--json",
        timeout=900,
    )  # fmt: skip
    result = json.loads(train.stdout.strip().splitlines()[-1])
    print(f"training in the image: {time.monotonic() - started:.0f} s, {result.get('metrics')}")
    assert result["promoted"] is True and result["champion_version"] == result["model_version"]

    # Serving picks the champion up by polling the alias, then predicts its own input example.
    wait_for(urls["serving"] + "/readyz", timeout=180)
    model = httpx.get(urls["serving"] + "/model", timeout=10).json()
    assert model["version"] == result["model_version"]
    rows = model["input_example"]
    answer = httpx.post(urls["serving"] + "/predict", json={"rows": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()
    assert len(predictions) == len(rows)
    assert all(p["prediction"] in (0, 1) and 0.0 <= p["probability"] <= 1.0 for p in predictions)
    assert {p["model_version"] for p in predictions} == {result["model_version"]}

    # The feed reaches the monitor by its Service name (SANDBOX_MONITOR_BASE_URL of the manifest).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        metrics = httpx.get(urls["monitor"] + "/metrics", timeout=10).text
        ingested = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("sandbox_monitor_ingested_records") and not line.startswith("#")
        ]
        if ingested and max(ingested) >= len(rows):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"the monitor did not receive serving's records: {ingested}")

    stats = {}
    for name in COMPONENTS:
        line = docker("stats", "--no-stream", "--format", "{{json .}}", PREFIX + name).stdout.strip()
        stats[name] = json.loads(line)["MemUsage"]
    (WORK / "stats.json").write_text(json.dumps(stats, indent=2))
    print("memory in use (container / limit):", json.dumps(stats, indent=2))
