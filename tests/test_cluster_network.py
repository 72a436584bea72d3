"""The cluster's network rules: SSH only from the user's CIDR, Ray pods only from their namespace."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_security_group_never_opens_ssh_to_the_world():
    cfg = yaml.safe_load((REPO / "ray-cluster.yaml").read_text())
    sg = cfg["provider"]["security_group"]
    assert sg["GroupName"]
    rules = sg["IpPermissions"]
    ssh = [r for r in rules if r["FromPort"] <= 22 <= r["ToPort"]]
    assert ssh, "SSH must be admitted from the admins' CIDR, or ray up cannot reach the head"
    for r in rules:
        for ip in r.get("IpRanges", []):
            net = ipaddress.ip_network(ip["CidrIp"])
            assert net.prefixlen > 0 and net.num_addresses <= 1 << 16, f"{net} is too wide"
        assert not r.get("Ipv6Ranges"), "no IPv6 rule (::/0 would be the world)"


RAY_PODS = {"ray.io/is-ray-node": "yes"}   # the label KubeRay puts on every Ray pod it creates


def _policies() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((REPO / "cluster" / "networkpolicy.yaml").read_text()) if d]
    for pol in docs:
        assert pol["apiVersion"] == "networking.k8s.io/v1" and pol["kind"] == "NetworkPolicy"
        assert pol["spec"]["policyTypes"] == ["Ingress"]
    return {p["metadata"]["name"]: p for p in docs}


def _redis_pod_labels() -> dict:
    docs = yaml.safe_load_all((REPO / "cluster" / "redis.yaml").read_text())
    (dep,) = [d for d in docs if d and d["kind"] == "Deployment"]
    return dep["spec"]["template"]["metadata"]["labels"]


def _selects(pol: dict, labels: dict) -> bool:
    sel = pol["spec"]["podSelector"]
    assert set(sel) <= {"matchLabels"}, "matchLabels only, so that this test can evaluate it"
    return sel.get("matchLabels", {}).items() <= labels.items()


def test_networkpolicy_admits_only_the_namespace():
    pols = [p for p in _policies().values() if p["spec"]["podSelector"] == {"matchLabels": RAY_PODS}]
    (pol,) = pols
    (rule,) = pol["spec"]["ingress"]
    # one source: every pod of the policy's own namespace (no namespaceSelector, no ipBlock)
    assert rule["from"] == [{"podSelector": {}}] and "ports" not in rule
    assert "networkpolicy.yaml" in (REPO / "cluster" / "README.md").read_text()


def test_networkpolicy_admits_redis_only_from_ray_pods():
    redis = _redis_pod_labels()
    assert not RAY_PODS.items() <= redis.items(), "the Redis pods must not look like Ray pods"
    # Policies add up, so exactly one may select the Redis pods (the Ray pods' policy, which admits the
    # whole namespace, must not), and it admits only Ray pods of the namespace, on the Redis port.
    pols = [p for p in _policies().values() if _selects(p, redis)]
    assert len(pols) == 1, [p["metadata"]["name"] for p in pols]
    (rule,) = pols[0]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": RAY_PODS}}]   # no namespaceSelector, no ipBlock
    docs = list(yaml.safe_load_all((REPO / "cluster" / "redis.yaml").read_text()))
    (svc,) = [d for d in docs if d and d["kind"] == "Service"]
    (dep,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (redis_port,) = [p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]]
    assert rule["ports"] == [{"protocol": "TCP", "port": redis_port}]
    assert [p["port"] for p in svc["spec"]["ports"]] == [redis_port]
