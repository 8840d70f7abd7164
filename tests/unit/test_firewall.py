"""The firewall role's rules: ports by node role, sources, ufw bookkeeping, and the rendered nftables
ruleset (parsed by `nft -c` where nft is installed and we are root)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "filter_plugins"))

import bittrader_network
from ansible_render import render, role_defaults

PORTS = role_defaults("cluster_facts")["bittrader_ports"]


def test_every_pinned_port_is_covered_once_by_role() -> None:
    head = bittrader_network.firewall_ports(PORTS, "head")
    worker = bittrader_network.firewall_ports(PORTS, "worker")
    assert head["admin"] == ["8265", "10001", "44217", "44227"]
    assert worker["admin"] == []
    assert "6379" in head["cluster"] and "6379" not in worker["cluster"]
    assert head["cluster"][-1] == worker["cluster"][-1] == "10002-10299"
    singles = {str(v) for k, v in PORTS.items() if k not in {"min_worker", "max_worker"}}
    assert set(head["cluster"][:-1]) | set(head["admin"]) == singles
    assert not set(head["cluster"]) & set(head["admin"])


def test_changed_ports_change_the_rules() -> None:
    ports = dict(PORTS, gcs=7000, min_worker=20000, max_worker=20100)
    rules = bittrader_network.firewall_ports(ports, "head")
    assert "7000" in rules["cluster"] and "6379" not in rules["cluster"]
    assert rules["cluster"][-1] == "20000-20100"


def test_node_addresses_prefer_the_resolved_address() -> None:
    hostvars = {
        "head": {"bittrader_advertise_ip": "100.64.0.1", "bittrader_node_ip": "100.64.0.9", "ansible_host": "mac"},
        "w1": {"bittrader_node_ip": "100.64.0.2", "ansible_host": "w1.local"},
        "w2": {"ansible_host": "100.64.0.3"},
        "w3": {"ansible_host": "w3.local"},
    }
    got = bittrader_network.node_addresses(hostvars, ["head", "w1", "w2", "w3", "absent"])
    assert got == {"head": "100.64.0.1", "w1": "100.64.0.2", "w2": "100.64.0.3", "w3": "", "absent": ""}


def test_ufw_rules_allow_then_deny() -> None:
    ports = bittrader_network.firewall_ports(PORTS, "head")
    rules = bittrader_network.ufw_rules(ports, ["10.0.0.1", "10.0.0.2"], ["10.0.0.1", "10.0.0.2", "10.9.9.9"])
    allows = [r for r in rules if r["rule"] == "allow"]
    denies = [r for r in rules if r["rule"] == "deny"]
    assert len(allows) == 2 * len(ports["cluster"]) + 3 * len(ports["admin"])
    assert len(denies) == len(ports["cluster"]) + len(ports["admin"])
    assert rules.index(denies[0]) > rules.index(allows[-1])
    assert {"rule": "allow", "from_ip": "10.9.9.9", "port": "8265"} in rules
    assert {"rule": "allow", "from_ip": "10.9.9.9", "port": "6379"} not in rules


def test_ufw_stale_finds_only_our_outdated_rules() -> None:
    added = [
        "ufw allow 22/tcp",
        "ufw allow from 10.0.0.1 to any port 6379 proto tcp comment 'bittrader'",
        "ufw allow from 10.0.0.7 to any port 6379 proto tcp comment 'bittrader'",
        "ufw allow from 10.0.0.7 to any port 6379 proto tcp comment 'someone-else'",
        "ufw deny to any port 10002:10299 proto tcp comment 'bittrader'",
        "ufw deny to any port 9999 proto tcp comment 'bittrader'",
    ]
    wanted = [
        {"rule": "allow", "from_ip": "10.0.0.1", "port": "6379"},
        {"rule": "deny", "from_ip": "any", "port": "10002-10299"},
    ]
    stale = bittrader_network.ufw_stale(added, wanted, "bittrader")
    assert stale == [
        {"rule": "allow", "from_ip": "10.0.0.7", "port": "6379"},
        {"rule": "deny", "from_ip": "any", "port": "9999"},
    ]
    assert len(bittrader_network.ufw_stale(added, [], "bittrader")) == 4


def _nft(role: str, action: str = "drop") -> str:
    variables = {
        **role_defaults("cluster_facts", "ray_firewall"),
        "inventory_hostname": f"{role}-1",
        "bittrader_node_role": role,
        "ray_firewall_mode": "nodes",
        "ray_firewall_action": action,
        "ray_firewall_ports": bittrader_network.firewall_ports(PORTS, role),
        "ray_firewall_cluster_sources": ["10.89.77.10", "10.89.77.11"],
        "ray_firewall_admin_sources": ["10.89.77.10", "10.89.77.11", "100.64.0.0/10"],
    }
    return render("roles/ray_firewall/templates/firewall.nft.j2", variables)


@pytest.mark.parametrize(("role", "action"), [("head", "drop"), ("worker", "drop"), ("head", "reject")])
def test_nft_ruleset_renders(role: str, action: str, tmp_path: Path) -> None:
    text = _nft(role, action)
    assert "10002-10299" in text
    assert ("admin_ports" in text) == (role == "head")
    assert ("reject with tcp reset" in text) == (action == "reject")
    assert not re.search(r"\b22\b", text.split("table inet bittrader {", 1)[1])  # SSH is never named
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if os.geteuid() != 0 or not os.path.exists(nft):
        pytest.skip("nft -c needs root and nftables")
    path = tmp_path / "rules.nft"
    path.write_text(text)
    res = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
