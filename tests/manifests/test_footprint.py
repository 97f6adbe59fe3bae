"""`make footprint`: quantities parse as Kubernetes does, and the sums are those of the rendered manifests."""

from __future__ import annotations

import pytest

from sandbox import footprint
from tests.manifests.helpers import PORTS


@pytest.mark.parametrize(
    ("quantity", "millis"), [("250m", 250), ("1", 1000), ("0.5", 500), ("2", 2000), (None, 0), ("0", 0)]
)
def test_cpu_quantities(quantity, millis):
    assert footprint.cpu_millis(quantity) == millis


@pytest.mark.parametrize(
    ("quantity", "size"),
    [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1536Mi", 1536 * 2**20), ("1G", 10**9), ("128974848", 128974848),
     ("1e3", 1000), ("64Ki", 65536), (None, 0)],
)  # fmt: skip
def test_memory_quantities(quantity, size):
    assert footprint.memory_bytes(quantity) == size


def test_memory_quantity_rejects_garbage():
    with pytest.raises(ValueError):
        footprint.memory_bytes("lots")


def test_pod_counts_containers_and_the_largest_init_container():
    pod = {
        "containers": [
            {
                "resources": {
                    "requests": {"cpu": "100m", "memory": "100Mi"},
                    "limits": {"cpu": "1", "memory": "1Gi"},
                }
            },
            {"resources": {"requests": {"cpu": "50m", "memory": "28Mi"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "10Mi"}}}],
    }
    assert footprint.pod_footprint(pod) == (2000, 1000, 128 * 2**20, 2**30)


def test_sums_are_the_rendered_manifests(kind_objects):
    rows = {r.name: r for r in footprint.workloads(kind_objects)}
    assert set(rows) == set(PORTS)
    expected_requests = 0
    for obj in kind_objects:
        if obj["kind"] == "Deployment":
            (spec,) = obj["spec"]["template"]["spec"]["containers"]
            expected_requests += (
                footprint.memory_bytes(spec["resources"]["requests"]["memory"]) * obj["spec"]["replicas"]
            )
    result = footprint.summary(kind_objects, budget_gib=8)
    assert result["totals"]["ours"]["memory_request"] == expected_requests
    assert result["memory_requested_bytes"] == (
        expected_requests
        + result["totals"]["kfp"]["memory_request"]
        + result["totals"]["kind_system"]["memory_request"]
    )
    assert result["fits"], "the kind stack must fit a Docker Desktop with 8 GB"
    assert result["fits_worst_case"], "even with every pod of ours at its limit"
    assert not footprint.summary(kind_objects, budget_gib=4)["fits"]


def test_make_footprint_prints_a_table(capsys):
    assert footprint.main([]) == 0
    out = capsys.readouterr().out
    for word in ("serving", "mysql", "subtotal", "fits"):
        assert word in out
