"""NetworkPolicies allow exactly the data flow of DESIGN.md, nothing more.

A small evaluator of the rendered NetworkPolicies (podSelector / namespaceSelector / ipBlock peers,
matchLabels and `In` expressions, ports) decides, for every pair of workloads and every port of the
platform, whether a connection is allowed: the source's egress and the destination's ingress must
both admit it (pods no policy selects are unrestricted, as in Kubernetes). The result must equal the
table below, in both directions.
"""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from tests.manifests.helpers import NAMESPACE, PORTS

# DESIGN.md's flows: (source, destination, port). "kfp-step" is a pipeline step pod in namespace
# kubeflow (logs to MLflow, reads labelled rows from the monitor); "kfp-api" the KFP API server.
FLOWS = {
    ("serving", "mlflow", 5000),  # load the champion
    ("serving", "monitor", 8001),  # POST /ingest
    ("monitor", "mlflow", 5000),  # reference samples
    ("monitor", "alertmanager", 9093),  # firing alerts on the status page
    ("monitor", "retrainer", 8002),  # the last retraining on the status page
    ("retrainer", "mlflow", 5000),  # the outcome of its runs
    ("retrainer", "kfp-api", 8888),  # start and follow train-and-register
    ("retrainer", "monitor", 8001),  # the data-quality verdict; the release controller's live records
    ("retrainer", "prometheus", 9090),  # the release controller's bake: serving's error rate and p99
    ("prometheus", "serving", 3000),
    ("prometheus", "monitor", 8001),
    ("prometheus", "retrainer", 8002),
    ("prometheus", "alertmanager", 9093),  # scrape and send alerts
    ("alertmanager", "retrainer", 8002),  # the webhooks: /alerts (retrain) and /notifications (page)
    ("grafana", "prometheus", 9090),
    ("kfp-step", "mlflow", 5000),
    ("kfp-step", "monitor", 8001),
}
WORKLOADS = {
    **{name: (NAMESPACE, {"app.kubernetes.io/name": name}) for name in PORTS},
    "kfp-api": ("kubeflow", {"app": "ml-pipeline"}),
    "kfp-step": ("kubeflow", {"workflows.argoproj.io/workflow": "train-and-register-x7k2p"}),
    "kube-dns": ("kube-system", {"k8s-app": "kube-dns"}),
    "stranger": ("default", {"app": "anything"}),  # any other pod of the cluster
}
ALL_PORTS = sorted(set(PORTS.values()) | {8888, 53})
HOST = "host"  # the host's connection to a NodePort, as kindnet's policy agent sees it
# Source addresses: pods get theirs from kind's pod subnet (kind-config.yaml); the host's connection
# arrives from Docker's side of the `kind` network (Engine: the bridge's gateway; Desktop: its VM's).
POD_SUBNET = ipaddress.ip_network("10.244.0.0/16")
ADDRESSES = {name: str(POD_SUBNET[10 + i]) for i, name in enumerate(WORKLOADS)}
HOST_ADDRESSES = ("172.18.0.1", "192.168.65.3")


def matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        operator, key = expression["operator"], expression["key"]
        assert operator in {"In", "Exists"}, "extend the evaluator for this operator"
        if (operator == "Exists" and key not in labels) or (
            operator == "In" and labels.get(key) not in expression["values"]
        ):
            return False
    return True


def in_block(block: dict, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip in ipaddress.ip_network(block["cidr"]) and not any(
        ip in ipaddress.ip_network(e) for e in block.get("except", [])
    )


def peer_matches(peer: dict, policy_namespace: str, who: str, address: str | None = None) -> bool:
    if who == HOST:
        return "ipBlock" in peer and in_block(peer["ipBlock"], address or HOST_ADDRESSES[0])
    if "ipBlock" in peer:
        # kindnet's agent applies ipBlocks to pod addresses too: 0.0.0.0/0 would admit every pod.
        return in_block(peer["ipBlock"], ADDRESSES[who])
    namespace, labels = WORKLOADS[who]
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}):
            return False
    elif namespace != policy_namespace:
        return False
    return matches(peer.get("podSelector"), labels)


def rule_admits(rule: dict, peers_key: str, namespace: str, who: str, port: int, address=None) -> bool:
    peers = rule.get(peers_key)
    if peers is not None and not any(peer_matches(p, namespace, who, address) for p in peers):
        return False
    ports = rule.get("ports")
    return ports is None or any(p.get("port") == port for p in ports)


def side_allows(
    policies: list[dict], direction: str, subject: str, other: str, port: int, address: str | None = None
) -> bool:
    namespace, labels = WORKLOADS[subject]
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and matches(p["spec"]["podSelector"], labels)
    ]
    if not selecting:
        return True  # no policy isolates this pod in this direction
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(
        rule_admits(rule, peers_key, namespace, other, port, address)
        for p in selecting
        for rule in p["spec"].get(key) or []
    )


def allowed(
    policies: list[dict], source: str, destination: str, port: int, address: str | None = None
) -> bool:
    egress = source == HOST or side_allows(policies, "Egress", source, destination, port)
    return egress and side_allows(policies, "Ingress", destination, source, port, address)


def policies_of(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def test_the_base_allows_exactly_the_design_flows(base_objects):
    policies = policies_of(base_objects)
    workloads = [w for w in WORKLOADS if w != "kube-dns"]
    actual = {
        (source, destination, port)
        for source, destination in itertools.permutations(workloads, 2)
        for port in ALL_PORTS
        if not (WORKLOADS[source][0] != NAMESPACE and WORKLOADS[destination][0] != NAMESPACE)
        and allowed(policies, source, destination, port)
    }
    assert actual - FLOWS == set(), "allowed, but not a flow of DESIGN.md"
    assert FLOWS - actual == set(), "a flow of DESIGN.md that the policies block"


@pytest.mark.parametrize("component", sorted(PORTS))
def test_every_pod_resolves_names_and_nothing_else_leaves(base_objects, component):
    policies = policies_of(base_objects)
    assert allowed(policies, component, "kube-dns", 53)
    assert not allowed(policies, component, "kube-dns", 443)
    assert not side_allows(policies, "Ingress", component, HOST, PORTS[component])


def test_kind_lets_the_host_reach_the_uis_but_not_the_retrainer(kind_objects):
    policies = policies_of(kind_objects)
    for name, port in PORTS.items():
        for address in HOST_ADDRESSES:
            assert allowed(policies, HOST, name, port, address) == (name != "retrainer"), (name, address)
        assert not allowed(policies, HOST, name, 22)
    # The overlay adds host access only: pod-to-pod stays as in the base.
    assert not allowed(policies, "grafana", "mlflow", 5000)
    assert not allowed(policies, "serving", "retrainer", 8002)


def test_host_access_admits_no_pod_of_any_namespace(kind_objects):
    """The host-ui rule is for the host: a pod elsewhere in the cluster does not reach the UIs by it."""
    policies = policies_of(kind_objects)
    for name, port in PORTS.items():
        for pod in ("stranger", "kube-dns", "kfp-api"):
            assert not allowed(policies, pod, name, port), (pod, name)
    # Had the rule said 0.0.0.0/0, the evaluator would have let them in: it tests what it claims.
    wide = [
        {**p, "spec": {**p["spec"], "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}}
        if p["metadata"]["name"] == "host-ui"
        else p
        for p in policies
    ]
    assert allowed(wide, "stranger", "mlflow", 5000)


def test_no_pod_or_service_address_of_kind_falls_in_the_host_ranges(kind_objects):
    import yaml

    from tests.manifests.helpers import KIND_CONFIG

    networking = yaml.safe_load(KIND_CONFIG.read_text())["networking"]
    (host_ui,) = [p for p in policies_of(kind_objects) if p["metadata"]["name"] == "host-ui"]
    blocks = [ipaddress.ip_network(peer["ipBlock"]["cidr"]) for peer in host_ui["spec"]["ingress"][0]["from"]]
    assert ipaddress.ip_network(networking["podSubnet"]) == POD_SUBNET
    for subnet in (networking["podSubnet"], networking["serviceSubnet"]):
        assert not any(ipaddress.ip_network(subnet).overlaps(b) for b in blocks), subnet
    assert not any(b.prefixlen == 0 for b in blocks)


def test_the_evaluator_denies_without_a_rule_and_allows_with_one():
    deny = {
        "metadata": {"namespace": NAMESPACE},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    assert not allowed([deny], "serving", "mlflow", 5000)
    open_ingress = {
        "metadata": {"namespace": NAMESPACE},
        "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}, "ingress": [{}]},
    }
    open_egress = {
        "metadata": {"namespace": NAMESPACE},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 5000}]}]},
    }
    assert allowed([deny, open_ingress, open_egress], "serving", "mlflow", 5000)
    assert not allowed([deny, open_ingress, open_egress], "serving", "mlflow", 5001)
