"""Filters used by preflight, validation and the firewall: addresses, wheels, ports, tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "filter_plugins"))

import bittrader_basics
import bittrader_network
import bittrader_versions
from ansible_render import role_defaults
from filter_modules import all_filters

DEFAULT_PORTS = role_defaults("cluster_facts")["bittrader_ports"]  # Ray's pinned ports, as the roles default them


@pytest.mark.parametrize(
    ("value", "expected"), [("100.77.179.14", True), ("::1", True), ("head.local", False), ("", False)]
)
def test_is_ip(value: str, expected: bool) -> None:
    assert bittrader_basics.is_ip(value) is expected


def test_in_cidr_and_loopback() -> None:
    assert bittrader_basics.in_cidr("100.77.179.14", "100.64.0.0/10")
    assert not bittrader_basics.in_cidr("192.168.1.5", "100.64.0.0/10")
    assert not bittrader_basics.in_cidr("not-an-ip", "100.64.0.0/10")
    assert bittrader_basics.is_loopback("127.0.0.1") and not bittrader_basics.is_loopback("10.0.0.1")


@pytest.mark.parametrize(
    ("ray", "py", "system", "arch", "fragment"),
    [
        ("2.60.0", "3.12.12", "Linux", "x86_64", ""),
        ("2.60.0", "3.12.12", "Linux", "aarch64", ""),
        ("2.60.0", "3.12.12", "Darwin", "arm64", ""),
        ("2.60.0", "3.12.12", "Darwin", "x86_64", "Intel Macs"),
        ("2.49.2", "3.12.12", "Darwin", "x86_64", ""),
        ("2.60.0", "3.13.5", "Win32NT", "64-bit", ""),
        ("2.57.0", "3.13.5", "Win32NT", "64-bit", "Windows has 3.13+ from 2.58"),
        ("2.60.0", "3.9.6", "Linux", "x86_64", "last with Python 3.9 is 2.51.2"),
        ("2.51.2", "3.9.6", "Linux", "x86_64", ""),
        ("2.60.0", "3.15.0", "Linux", "x86_64", "no wheel for Python 3.15"),
        ("2.60.0", "3.12.12", "Linux", "armv7l", "x86_64 and aarch64 only"),
        ("2.60.0", "3.12.12", "FreeBSD", "amd64", "no wheel for FreeBSD"),
    ],
)
def test_ray_wheel_problem(ray: str, py: str, system: str, arch: str, fragment: str) -> None:
    problem = bittrader_versions.ray_wheel_problem(ray, py, system, arch)
    if fragment:
        assert fragment in problem
    else:
        assert problem == ""


def test_default_ports_have_no_problem() -> None:
    assert bittrader_network.port_problems(DEFAULT_PORTS) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"gcs": 70000}, "outside 1024-65535"),
        ({"gcs": 22}, "outside 1024-65535"),
        ({"dashboard": 6379}, "are both 6379"),
        ({"node_manager": 10005}, "inside the worker port range"),
        ({"max_worker": 10005}, "too small"),
        ({"gcs": "six"}, "not a number"),
    ],
)
def test_port_problems(change: dict[str, object], fragment: str) -> None:
    problems = bittrader_network.port_problems({**DEFAULT_PORTS, **change})
    assert any(fragment in p for p in problems), problems


def test_port_list_by_role() -> None:
    worker = bittrader_network.port_list(DEFAULT_PORTS, "worker")
    head = bittrader_network.port_list(DEFAULT_PORTS, "head")
    assert 6379 not in worker and 6379 in head and 8265 in head
    assert set(head) - set(worker) == {6379, 8265, 10001, 44217, 44227}
    assert 10002 not in head
    # Metrics off (bittrader_ray_metrics_enabled, the default): no export port listens, and none is opened.
    assert 8080 in worker
    assert bittrader_network.port_list(DEFAULT_PORTS, "worker", False) == sorted(set(worker) - {8080})
    assert bittrader_network.port_list(DEFAULT_PORTS, "head", "no") == sorted(set(head) - {8080})
    assert "8080" not in bittrader_network.firewall_ports(DEFAULT_PORTS, "worker", False)["cluster"]
    assert "8080" in bittrader_network.firewall_ports(DEFAULT_PORTS, "worker", True)["cluster"]
    # The same reading of the variable as the one that sets Ray's environment (bittrader_ray_env):
    # whatever turns the metrics on there opens their port here.
    for on in (True, 1, "yes", " On "):
        assert bittrader_network.port_list(DEFAULT_PORTS, "worker", on) == worker
    for off in (False, 0, "no", "", None):
        assert bittrader_network.port_list(DEFAULT_PORTS, "worker", off) == sorted(set(worker) - {8080})


def test_is_on_reads_booleans_as_ansible_does() -> None:
    assert [bittrader_basics.is_on(v) for v in (True, 1, "true", "Yes", "on", "1", "y")] == [True] * 7
    assert [bittrader_basics.is_on(v) for v in (False, 0, 2, "false", "no", "off", "", None, [1])] == [False] * 9


def test_text_table_aligns_and_blanks_none() -> None:
    out = bittrader_basics.text_table(
        [{"host": "head", "cpus": 0, "problem": None}, {"host": "air-2", "cpus": 10}], ["host", "cpus", "problem"]
    )
    lines = out.splitlines()
    assert lines[0].split() == ["host", "cpus", "problem"]
    assert lines[2].split() == ["head", "0"]
    assert lines[3].startswith("air-2  10")


def test_filter_module_exports() -> None:
    names = all_filters()
    assert {"bittrader_is_ip", "bittrader_ray_wheel_problem", "bittrader_port_problems"} <= set(names)


def test_expected_cpus_follow_the_throttle_then_the_inventory_then_the_hardware() -> None:
    assert bittrader_basics.expected_cpus(4, True, 8) is None  # the throttle moves them: not checked
    assert bittrader_basics.expected_cpus(4, False, 8) == 4
    assert bittrader_basics.expected_cpus("3", False) == 3
    assert bittrader_basics.expected_cpus(0, False, 8) == 0  # a coordinating head
    assert bittrader_basics.expected_cpus("", False, 8) == 8  # all the host's CPUs
    assert bittrader_basics.expected_cpus(None, False, 8) == 8
    assert bittrader_basics.expected_cpus("", False) is None  # a host this run did not read
    assert "bittrader_expected_cpus" in all_filters()


def test_every_filter_the_roles_and_playbooks_use_is_registered_once() -> None:
    """The filters are split by concern over several files: none lost or registered twice (all_filters)."""
    import re

    repo = Path(__file__).resolve().parents[2]
    used: set[str] = set()
    for path in [*repo.glob("roles/**/*.yml"), *repo.glob("roles/**/*.j2"), *repo.glob("playbooks/**/*.yml"),
                 repo / "site.yml"]:
        used |= set(re.findall(r"\|\s*(bittrader_\w+)", path.read_text()))
    tests = {"bittrader_is_ip", "bittrader_in_cidr", "bittrader_is_loopback"}
    assert used, "no filter found: the search is broken"
    assert sorted(used - set(all_filters()) - tests) == []
