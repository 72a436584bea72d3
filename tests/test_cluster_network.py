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


def test_networkpolicy_admits_only_the_namespace():
    docs = list(yaml.safe_load_all((REPO / "cluster" / "networkpolicy.yaml").read_text()))
    (pol,) = docs
    assert pol["apiVersion"] == "networking.k8s.io/v1" and pol["kind"] == "NetworkPolicy"
    spec = pol["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    (rule,) = spec["ingress"]
    # one source: every pod of the policy's own namespace (no namespaceSelector, no ipBlock)
    assert rule["from"] == [{"podSelector": {}}] and "ports" not in rule
    assert "networkpolicy.yaml" in (REPO / "cluster" / "README.md").read_text()
