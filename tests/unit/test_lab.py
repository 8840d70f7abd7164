"""The lab tool: its podman settings and that its hosts agree with inventory/lab and Molecule."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import lab  # noqa: E402


def test_containers_conf_caps_nofile_at_the_hard_limit() -> None:
    text = lab.containers_conf_text(20000)
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=16384:16384"]' in text
    assert 'runtime = "runc"' in text and 'cgroup_manager = "cgroupfs"' in text
    assert "nofile=65536:65536" in lab.containers_conf_text(1_000_000)


def test_cache_dir_follows_bittrader_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITTRADER_CACHE", str(tmp_path))
    assert lab.cache_dir() == tmp_path / "bittrader-lab"
    assert lab.cache_dir().is_dir()


def inventory_hosts() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((REPO / "inventory/lab/hosts.yml").read_text())
    found: dict[str, dict[str, object]] = {}

    def walk(group: dict[str, object]) -> None:
        for name, hostvars in (group.get("hosts") or {}).items():  # type: ignore[union-attr]
            found[name] = hostvars or {}
        for child in (group.get("children") or {}).values():  # type: ignore[union-attr]
            walk(child)

    walk(data["ray_cluster"])
    return found


def test_lab_containers_match_the_lab_inventory() -> None:
    hosts = inventory_hosts()
    the_lab = lab.Lab()
    assert {h.name for h in the_lab.hosts} == set(hosts)
    subnet = ipaddress.ip_network(the_lab.subnet)
    for host in the_lab.hosts:
        assert hosts[host.name]["bittrader_node_ip"] == host.ip
        assert ipaddress.ip_address(host.ip) in subnet


def test_lab_gives_ray_no_more_cpus_than_a_two_core_machine() -> None:
    assert sum(int(h["bittrader_num_cpus"]) for h in inventory_hosts().values()) <= 2  # type: ignore[call-overload]


def test_lab_and_molecule_addresses_lie_in_the_lab_cidr() -> None:
    group_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/all.yml").read_text())
    cidr = ipaddress.ip_network(group_vars["bittrader_cluster_cidr"])
    molecule = yaml.safe_load((REPO / "molecule/default/molecule.yml").read_text())
    for platform in molecule["platforms"]:
        assert ipaddress.ip_address(platform["ip"]) in cidr
        host_vars = yaml.safe_load((REPO / "molecule/default/host_vars" / f"{platform['name']}.yml").read_text())
        assert host_vars["bittrader_node_ip"] == platform["ip"]
    for host in lab.Lab().hosts:
        assert ipaddress.ip_address(host.ip) in cidr
