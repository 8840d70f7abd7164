"""The checks validate.yml and preflight.yml run before any host changes (filter_plugins/bittrader_validation.py,
bittrader_network.py, bittrader_versions.py, bittrader_preflight.py; roles/cluster_facts/files/node_probe.py).
The same cases run against real hosts in tests/integration/test_bad_input.py; here each rule is pinned down on
its own, fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "filter_plugins"))

import bittrader_network  # noqa: E402
import bittrader_preflight  # noqa: E402
import bittrader_validation  # noqa: E402
import bittrader_versions  # noqa: E402
from filter_modules import all_filters, node_probe  # noqa: E402

probe = node_probe()

DEFAULTS: dict[str, Any] = yaml.safe_load((REPO / "roles/cluster_facts/defaults/main.yml").read_text())
FACTS = {
    "Linux": {"system": "Linux", "architecture": "x86_64", "distribution": "Debian", "distribution_version": "12.8",
              "processor_vcpus": 8, "memtotal_mb": 16000},
    "Darwin": {"system": "Darwin", "architecture": "arm64", "distribution": "MacOSX", "distribution_version": "15.2",
               "processor_vcpus": 12, "memtotal_mb": 32768},
    "Win32NT": {"system": "Win32NT", "architecture": "64-bit", "distribution": "Microsoft Windows 11 Pro",
                "distribution_version": "10.0.22631.0", "processor_vcpus": 16, "memtotal_mb": 32768},
}
GROUP_SYSTEM = {"ray_head": "Darwin", "workers_linux": "Linux", "workers_macos": "Darwin", "workers_windows": "Win32NT"}


def settings(host: str = "w1", groups: tuple[str, ...] = ("workers_linux",), **values: Any) -> dict[str, Any]:
    """What validate.yml hands to bittrader_host_problems, from the role's defaults plus values."""
    v = {**DEFAULTS, **{f"bittrader_{k}": val for k, val in values.items() if k not in {"head"}}}
    return {
        "host": host,
        "groups": list(groups),
        "head_group": v["bittrader_head_group"],
        "worker_groups": v["bittrader_worker_groups"],
        "ray_version": v["bittrader_ray_version"],
        "python_version": v["bittrader_python_version"],
        "ray_extras": v["bittrader_ray_extras"],
        "optuna_version": v["bittrader_optuna_version"],
        "psutil_version": v["bittrader_psutil_version"],
        "numpy_version": v["bittrader_numpy_version"],
        "extra_pip_packages": v["bittrader_extra_pip_packages"],
        "network_mode": v["bittrader_network_mode"],
        "cluster_cidr": v["bittrader_cluster_cidr"],
        "node_ip": v["bittrader_node_ip"],
        "num_cpus": v["bittrader_num_cpus"],
        "object_store_memory": v["bittrader_object_store_memory"],
        "ports": v["bittrader_ports"],
        "user": v["bittrader_user"],
        "throttle_enabled": v["bittrader_throttle_enabled"],
        "throttle": {k: v[f"bittrader_throttle_{k}"] for k in (
            "cpus_active", "idle_threshold_s", "battery_policy", "hysteresis_s", "load_guard", "activity_source",
            "activity_file")},
        "head": values.get("head", {
            "host": "head",
            "ray_version": DEFAULTS["bittrader_ray_version"],
            "python_version": DEFAULTS["bittrader_python_version"],
            "ports": DEFAULTS["bittrader_ports"],
            "ray_extras": DEFAULTS["bittrader_ray_extras"],
            "optuna_version": DEFAULTS["bittrader_optuna_version"],
        }),
    }


def problems(facts: str = "Linux", **kw: Any) -> list[str]:
    return bittrader_validation.host_problems(settings(**kw), FACTS[facts])


def test_the_defaults_have_no_problem_on_any_os() -> None:
    assert problems() == []
    assert problems("Darwin", groups=("workers_macos",)) == []
    assert problems("Win32NT", groups=("workers_windows",)) == []
    assert problems("Darwin", host="head", groups=("ray_head",), num_cpus=0) == []


@pytest.mark.parametrize("inventory", ["example", "example-linux-head", "lab"])
def test_the_shipped_inventories_pass(inventory: str) -> None:
    """Every host of the shipped inventories passes, with facts of its group's OS."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inv = InventoryManager(loader=loader, sources=[str(REPO / "inventory" / inventory)])
    vm = VariableManager(loader=loader, inventory=inv)
    head = inv.groups["ray_head"].get_hosts()[0].name
    head_vars = {**DEFAULTS, **vm.get_vars(host=inv.get_host(head))}
    for host in inv.groups["ray_cluster"].get_hosts():
        hv = {**DEFAULTS, **vm.get_vars(host=host)}
        group = next(g for g in GROUP_SYSTEM if g in hv["group_names"])
        linux_head = group == "ray_head" and inventory != "example"
        system = "Linux" if linux_head or inventory == "lab" else GROUP_SYSTEM[group]
        values = {k.removeprefix("bittrader_"): v for k, v in hv.items() if k.startswith("bittrader_")}
        values["head"] = {"host": head, "ray_version": head_vars["bittrader_ray_version"],
                          "python_version": head_vars["bittrader_python_version"],
                          "ports": head_vars["bittrader_ports"], "ray_extras": head_vars["bittrader_ray_extras"],
                          "optuna_version": head_vars["bittrader_optuna_version"]}
        host_settings = settings(host.name, tuple(hv["group_names"]), **values)
        found = bittrader_validation.host_problems(host_settings, FACTS[system])
        assert found == [], (host.name, found)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"groups": ()}, "is in none of the groups"),
        ({"groups": ("workers_linux", "workers_macos")}, "is in workers_linux and workers_macos"),
        ({"groups": ("ray_head", "workers_linux")}, "belongs to exactly one of"),
        ({"groups": ("workers_macos",)}, "is in workers_macos but runs Linux (Debian 12.8): move it to workers_linux"),
        ({"groups": ("workers_windows",)}, "move it to workers_linux"),
        ({"num_cpus": -1}, "whole number of CPUs, got -1"),
        ({"num_cpus": "1.5"}, "whole number of CPUs, got '1.5'"),
        ({"num_cpus": True}, "whole number of CPUs"),
        ({"num_cpus": 0}, "is 0 on a worker"),
        ({"num_cpus": 9}, "is 9 but this host has 8 logical CPUs: set at most 8"),
        ({"object_store_memory": "1GB"}, "a number of bytes, got '1GB'"),
        ({"object_store_memory": 1000}, "below Ray's minimum"),
        ({"object_store_memory": 16000 * 2**20}, "of memory"),
        ({"network_mode": "lan"}, "bittrader_cluster_cidr is empty"),
        ({"cluster_cidr": "10.0.0.0/33"}, "is not an address range"),
        ({"cluster_cidr": "0.0.0.0/0"}, "public internet addresses"),
        ({"cluster_cidr": "8.8.8.0/24"}, "public internet addresses"),
        ({"node_ip": "head.local"}, "is not an IP address"),
        ({"node_ip": "127.0.0.1"}, "is a loopback address"),
        ({"node_ip": "::1"}, "is a loopback address"),
        ({"ray_version": "2.60"}, "is not an exact release"),
        ({"ray_version": "2.99.0"}, "is not a Ray release these roles know"),
        ({"ray_version": "2.51.2"}, "has no token authentication"),
        ({"python_version": "3.12"}, "is not an exact Python 3 release"),
        ({"python_version": "3.15.0"}, "has no wheel for Python 3.15.0"),
        ({"python_version": "3.9.18"}, "the last with Python 3.9 is 2.51.2"),
        ({"user": "root"}, "never 'root'"),
        ({"user": "Administrator"}, "never 'Administrator'"),
        ({"user": ""}, "must be an ordinary account"),
        ({"user": "bit trader"}, "is not a valid Linux user name"),
        ({"extra_pip_packages": ["pandas>=2"]}, "is not pinned"),
        ({"extra_pip_packages": ["ray==2.59.0"]}, "contradicts bittrader_ray_version (2.60.0)"),
        ({"extra_pip_packages": "pandas==2.3.3"}, "must be a list"),
        ({"extra_pip_packages": ["optuna==4.5.0"]}, "contradicts bittrader_optuna_version (5.0.0)"),
        ({"ray_extras": "tune"}, "bittrader_ray_extras must be a list"),
        ({"ray_extras": ["default", "tunes"]}, "'tunes', which these roles do not install: choose from default, tune"),
        ({"ray_extras": ["tune"]}, "lacks default: the head's dashboard and job API"),
        ({"ray_extras": ["default", "tune", "Tune"]}, "lists an extra twice"),
        ({"ray_extras": ["default"]}, "is ray[default] here but ray[default,tune] on the head head"),
        ({"optuna_version": "5.0"}, "bittrader_optuna_version '5.0' is not an exact release"),
        ({"optuna_version": "4.5.0"}, "bittrader_optuna_version is 4.5.0 here but 5.0.0 on the head head"),
        ({"optuna_version": ""}, "is empty (none) here but 5.0.0 on the head head"),
        ({"ports": {**DEFAULTS["bittrader_ports"], "gcs": 70000}}, "outside 1024-65535"),
        ({"ports": {**DEFAULTS["bittrader_ports"], "gcs": 70000}}, "differ from the head head's (gcs 70000 here"),
        ({"ray_version": "2.59.0"}, "is 2.59.0 here but 2.60.0 on the head head"),
        ({"python_version": "3.12.11"}, "Ray refuses a node whose Python release differs"),
        ({"throttle_enabled": True, "num_cpus": 1}, "cpus_active (2) must not exceed bittrader_num_cpus (1)"),
        ({"throttle_enabled": True, "throttle_battery_policy": "often"}, "bittrader_throttle_battery_policy must be"),
        ({"throttle_enabled": True, "throttle_idle_threshold_s": 0}, "bittrader_throttle_idle_threshold_s must be"),
        ({"throttle_enabled": True, "throttle_load_guard": 150}, "bittrader_throttle_load_guard must be"),
        ({"throttle_enabled": True, "throttle_activity_source": "ioreg"}, "only works on darwin"),
    ],
)
def test_each_bad_value_is_named_with_its_fix(change: dict[str, Any], fragment: str) -> None:
    kw = dict(change)
    groups = kw.pop("groups", ("workers_linux",))
    found = problems(groups=groups, **kw)
    assert any(fragment in p for p in found), found


def test_ray_requirement_spells_the_extras_one_way() -> None:
    assert bittrader_versions.ray_requirement("2.60.0", ["tune", "default"]) == "ray[default,tune]==2.60.0"
    assert bittrader_versions.ray_requirement("2.60.0", ["default", "Tune", "tune"]) == "ray[default,tune]==2.60.0"
    assert bittrader_versions.ray_requirement("2.60.0", []) == "ray==2.60.0"
    assert bittrader_versions.ray_requirement(" 2.60.0 ", ("default",)) == "ray[default]==2.60.0"


def test_extras_and_optuna_are_the_cluster_wide_defaults() -> None:
    """Tune and Optuna on every node by default; a cluster may leave them out, consistently."""
    assert DEFAULTS["bittrader_ray_extras"] == ["default", "tune"]
    assert bittrader_versions.ray_extras_problem(DEFAULTS["bittrader_ray_extras"]) == ""
    assert bittrader_versions.optuna_version_problem(DEFAULTS["bittrader_optuna_version"]) == ""
    head = {"host": "head", "ray_version": DEFAULTS["bittrader_ray_version"],
            "python_version": DEFAULTS["bittrader_python_version"], "ports": DEFAULTS["bittrader_ports"],
            "ray_extras": ["default"], "optuna_version": ""}
    assert problems(ray_extras=["default"], optuna_version="", head=head) == []
    # A caller that predates the extras passes neither: nothing to compare.
    s = settings()
    del s["ray_extras"], s["optuna_version"]
    assert bittrader_validation.host_problems(s, FACTS["Linux"]) == []


def test_a_head_may_give_ray_no_cpu_and_lives_on_linux_or_macos() -> None:
    assert problems(host="head", groups=("ray_head",), num_cpus=0) == []
    found = bittrader_validation.host_problems(settings(host="head", groups=("ray_head",)), FACTS["Win32NT"])
    assert any("the head runs on Linux or macOS" in p for p in found)


def test_throttle_settings_pass_when_the_throttle_is_off() -> None:
    assert problems(throttle_battery_policy="often", num_cpus=1) == []


@pytest.mark.parametrize(
    ("version", "fragment"),
    [("2.60.0", ""), ("2.52.0", ""), ("2.51.2", "token"), ("2.61.0", "not a Ray release"), ("v2.60.0", "exact")],
)
def test_ray_version_problem(version: str, fragment: str) -> None:
    problem = bittrader_versions.ray_version_problem(version)
    assert (fragment in problem) if fragment else problem == ""


@pytest.mark.parametrize(
    ("cidr", "fragment"),
    [
        ("100.64.0.0/10", ""),
        ("192.168.1.0/24", ""),
        ("fd7a:115c:a1e0::/48", ""),
        ("10.0.0.1", "no prefix length"),
        ("10.0.0.0/8/8", "not an address range"),
        ("::/0", "public"),
        ("2001:4860::/32", "public"),
    ],
)
def test_cidr_problem(cidr: str, fragment: str) -> None:
    problem = bittrader_network.cidr_problem(cidr)
    assert (fragment in problem) if fragment else problem == ""


def test_pip_problems_accept_pins_and_urls_and_name_conflicts() -> None:
    pins = {"ray": "2.60.0", "numpy": "2.4.6"}
    fine = ["pandas==2.3.3", "ta-lib[extra]==0.6.0", "mylib @ https://x.test/mylib.whl"]
    assert bittrader_versions.pip_problems(fine, pins) == []
    assert bittrader_versions.pip_problems(["numpy==2.4.6"], pins) == []  # the same pin twice is harmless
    found = bittrader_versions.pip_problems(["Pandas==2.3.3", "pandas==2.2.0", "NumPy==2.3.4"], pins)
    assert len(found) == 2 and "bittrader_numpy_version" in found[1]


def test_duplicate_addresses_name_every_host_from_its_side() -> None:
    addresses = {"head": "10.0.0.1", "w1": "10.0.0.2", "w2": "10.0.0.2", "w3": ""}
    assert bittrader_network.duplicate_addresses(addresses) == [
        "w1 and w2 advertise the same address 10.0.0.2: every node needs its own; fix ansible_host or "
        "bittrader_node_ip of w2"
    ]
    assert "w2 advertises 10.0.0.2, the address of w1 too" in bittrader_network.duplicate_addresses(addresses, "w2")[0]
    assert bittrader_network.duplicate_addresses(addresses, "head") == []
    assert bittrader_network.duplicate_addresses(addresses, "w3") == []


def test_busy_ports_skip_rays_own_and_the_other_roles_ports() -> None:
    ports = DEFAULTS["bittrader_ports"]
    listening = [[22, "root"], [6379, "redis"], [8076, "bittrader"], [8080, "www-data"], [10100, "root"]]
    head = bittrader_preflight.busy_ports(listening, ports, "head", "bittrader")
    assert any("port 6379 (bittrader_ports.gcs) is already in use by another program (user redis)" in p for p in head)
    assert any("port 8080 (bittrader_ports.metrics_export)" in p for p in head)
    assert not any("8076" in p.split(":")[0] for p in head)  # Ray's own raylet
    assert any("worker port range 10002-10299" in p and "10100" in p for p in head)
    worker = bittrader_preflight.busy_ports(listening, ports, "worker", "bittrader")
    assert not any("6379" in p for p in worker)  # the GCS is the head's port only
    assert bittrader_preflight.busy_ports([], ports, "head", "bittrader") == []


def test_filters_are_exported() -> None:
    names = all_filters()
    for name in ("bittrader_host_problems", "bittrader_ray_version_problem", "bittrader_cidr_problem",
                 "bittrader_duplicate_addresses", "bittrader_busy_ports", "bittrader_ray_requirement",
                 "bittrader_ray_extras_problem"):
        assert name in names


# --- the node probe preflight runs on each host ---
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3FFB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0A595A0B:1F94 0A595A0A:18EB 01 00000000:00000000 00:00000000 00000000  1000        0 2 1
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 3 1
"""

LSOF = "p101\nLroot\nf4\nn*:6379\np202\nLtrader\nf7\nn127.0.0.1:8265\nf8\nn[::1]:8265\n"


def test_probe_parses_proc_net_tcp_listeners_only() -> None:
    assert probe.parse_proc_net_tcp(PROC_NET_TCP) == [(16379, 0), (8080, 1000)]


def test_probe_parses_lsof() -> None:
    assert probe.parse_lsof(LSOF) == [(6379, "root"), (8265, "trader"), (8265, "trader")]


def test_probe_runs_and_prints_what_preflight_reads(tmp_path: Path) -> None:
    source = (REPO / "roles/cluster_facts/files/node_probe.py").read_text()
    res = subprocess.run([sys.executable, "-B", "-c", source, str(tmp_path / "no-venv/bin/python")],
                         capture_output=True, text=True, check=True, timeout=60)
    report = json.loads(res.stdout)
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["venv"] == ""
    assert isinstance(report["listening"], list)
    if sys.platform.startswith("linux"):
        assert report["shm_bytes"] is None or report["shm_bytes"] > 0
    assert list(tmp_path.iterdir()) == []  # it wrote nothing


# --- what preflight concludes from each host's read ---
def preflight(found: dict[str, Any] | None = None, **values: Any) -> list[str]:
    s = {
        "python_source": "system", "python_version": "3.11.2", "system_python": "/usr/bin/python3",
        "system": "Linux", "user": "bittrader", "account": None, "object_store_memory": "",
        "ports": DEFAULTS["bittrader_ports"], "role": "worker", "head_host": "head", "head_token_missing": False,
        "head_token_file": "/home/bittrader/.bittrader_head/auth_token", **values,
    }
    return bittrader_preflight.preflight_problems({"python": "3.11.2", "venv": "", "shm_bytes": 2**30, "listening": [],
                                 **(found or {})}, s)


def test_preflight_accepts_a_fresh_host_and_a_provisioned_one() -> None:
    assert preflight() == []
    provisioned = ["x", "1001", "1001", "", "/home/bittrader", ""]
    assert preflight({"listening": [[8076, "bittrader"]]}, account=provisioned) == []
    assert preflight(python_source="uv", found=None) == []


@pytest.mark.parametrize(
    ("found", "values", "fragment"),
    [
        ({"python": "3.11.9"}, {}, "/usr/bin/python3 is Python 3.11.9, not the pinned 3.11.2"),
        ({"python": ""}, {}, "/usr/bin/python3 did not run here"),
        ({}, {"account": ["x", "0", "0", "", "/root", ""], "user": "toor"}, "bittrader_user toor has uid 0"),
        ({}, {"account": ["x", "1", "1", "", "/usr/sbin", ""], "user": "daemon"}, "is a system account here (uid 1)"),
        ({"shm_bytes": 64 * 2**20}, {"object_store_memory": 2**28}, "/dev/shm here holds only 67108864 bytes"),
        ({"listening": [[8080, "www-data"]]}, {}, "port 8080 (bittrader_ports.metrics_export) is already in use"),
        ({}, {"head_token_missing": True}, "the head head has no auth token yet"),
    ],
)
def test_preflight_names_each_problem(found: dict[str, Any], values: dict[str, Any], fragment: str) -> None:
    problems = preflight(found, **values)
    assert any(fragment in p for p in problems), problems


def test_preflight_leaves_macs_own_accounts_and_the_heads_token_alone() -> None:
    assert preflight(system="Darwin", account=["x", "501", "20", "", "/Users/trader", ""], user="trader") == []
    assert preflight(role="head", head_token_missing=True) == []
    assert preflight({"shm_bytes": None}, object_store_memory=2**40) == []  # no /dev/shm (macOS)
