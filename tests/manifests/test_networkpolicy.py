"""NetworkPolicies allow exactly the data flow of DESIGN.md, nothing more.

A small evaluator of the rendered NetworkPolicies (podSelector / namespaceSelector / ipBlock peers,
matchLabels and `In` expressions, ports) decides, for every pair of workloads and every port of the
platform, whether a connection is allowed: the source's egress and the destination's ingress must
both admit it (pods no policy selects are unrestricted, as in Kubernetes). The result must equal the
table below, in both directions.
"""

from __future__ import annotations

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
    ("prometheus", "serving", 3000),
    ("prometheus", "monitor", 8001),
    ("prometheus", "retrainer", 8002),
    ("prometheus", "alertmanager", 9093),  # scrape and send alerts
    ("alertmanager", "retrainer", 8002),  # the webhook
    ("grafana", "prometheus", 9090),
    ("kfp-step", "mlflow", 5000),
    ("kfp-step", "monitor", 8001),
}
WORKLOADS = {
    **{name: (NAMESPACE, {"app.kubernetes.io/name": name}) for name in PORTS},
    "kfp-api": ("kubeflow", {"app": "ml-pipeline"}),
    "kfp-step": ("kubeflow", {"workflows.argoproj.io/workflow": "train-and-register-x7k2p"}),
    "kube-dns": ("kube-system", {"k8s-app": "kube-dns"}),
}
ALL_PORTS = sorted(set(PORTS.values()) | {8888, 53})
HOST = "host"  # traffic from outside the pod network (kind's NodePort arrives from the node's address)


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


def peer_matches(peer: dict, policy_namespace: str, who: str) -> bool:
    if who == HOST:
        return "ipBlock" in peer
    if "ipBlock" in peer:
        return False  # a pod's own address is not what an ipBlock rule is for (Kubernetes docs)
    namespace, labels = WORKLOADS[who]
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}):
            return False
    elif namespace != policy_namespace:
        return False
    return matches(peer.get("podSelector"), labels)


def rule_admits(rule: dict, peers_key: str, namespace: str, who: str, port: int) -> bool:
    peers = rule.get(peers_key)
    if peers is not None and not any(peer_matches(p, namespace, who) for p in peers):
        return False
    ports = rule.get("ports")
    return ports is None or any(p.get("port") == port for p in ports)


def side_allows(policies: list[dict], direction: str, subject: str, other: str, port: int) -> bool:
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
        rule_admits(rule, peers_key, namespace, other, port)
        for p in selecting
        for rule in p["spec"].get(key) or []
    )


def allowed(policies: list[dict], source: str, destination: str, port: int) -> bool:
    egress = source == HOST or side_allows(policies, "Egress", source, destination, port)
    return egress and side_allows(policies, "Ingress", destination, source, port)


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
        assert allowed(policies, HOST, name, port) == (name != "retrainer"), name
        assert not allowed(policies, HOST, name, 22)
    # The overlay adds host access only: pod-to-pod stays as in the base.
    assert not allowed(policies, "grafana", "mlflow", 5000)
    assert not allowed(policies, "serving", "retrainer", 8002)


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
