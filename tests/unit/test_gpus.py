"""GPUs: bittrader_num_gpus validated (Macs refused more than their one Apple silicon GPU), passed to
`ray start --num-gpus` (0 on a Mac by default), carried into the inventory's expectations, compared with
what each node gives Ray, and shown in the verify table. No GPU runs here: the cluster side is the
probe's JSON as a node with GPUs would report it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "filter_plugins"))
sys.path.insert(0, str(Path(__file__).parent))
import ansible.module_utils  # noqa: E402

if str(REPO / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(REPO / "module_utils"))

from ansible.module_utils.bittrader_cluster import evaluate, gpu_check  # noqa: E402
from ansible_render import render, render_value, role_defaults  # noqa: E402
from bittrader_basics import expected_gpus, text_table  # noqa: E402
from bittrader_validation import host_problems  # noqa: E402

# The probe the modules run on the head (python -m bittrader_node_agent.cluster_probe), as source text.
PROBE = (REPO / "node_agent" / "src" / "bittrader_node_agent" / "cluster_probe.py").read_text()
LINUX = {"system": "Linux", "architecture": "x86_64", "processor_vcpus": 16}
MAC = {"system": "Darwin", "architecture": "arm64", "processor_vcpus": 10}
INTEL_MAC = {"system": "Darwin", "architecture": "x86_64", "processor_vcpus": 8}


def settings(**over: Any) -> dict[str, Any]:
    base = {
        "host": "rig", "groups": ["workers_linux"], "head_group": "ray_head",
        "worker_groups": ["workers_linux", "workers_macos", "workers_windows"],
        "ray_version": "2.60.0", "python_version": "3.12.12", "network_mode": "lan",
        "cluster_cidr": "10.0.0.0/24", "node_ip": "", "num_cpus": "", "num_gpus": "",
        "object_store_memory": "", "ports": role_defaults("cluster_facts")["bittrader_ports"], "user": "bittrader",
        "extra_pip_packages": [], "firewall_admin_sources": [],
    }
    return {**base, **over}


def gpu_messages(facts: dict[str, Any], **over: Any) -> list[str]:
    return [p for p in host_problems(settings(**over), facts) if "bittrader_num_gpus" in p]


@pytest.mark.parametrize("value", ["", None, 0, "0", 2, "4"])
def test_num_gpus_accepted_on_linux(value: Any) -> None:
    assert gpu_messages(LINUX, num_gpus=value) == []


@pytest.mark.parametrize("value", [-1, "two", 1.5, "1.5", True])
def test_num_gpus_must_be_a_whole_number(value: Any) -> None:
    problems = gpu_messages(LINUX, num_gpus=value)
    assert len(problems) == 1 and "whole number of GPUs" in problems[0], problems


def test_a_mac_has_at_most_its_one_apple_silicon_gpu() -> None:
    mac = settings(groups=["workers_macos"])
    assert gpu_messages(MAC, **{**mac, "num_gpus": ""}) == []
    assert gpu_messages(MAC, **{**mac, "num_gpus": 0}) == []
    assert gpu_messages(MAC, **{**mac, "num_gpus": 1}) == []
    two = gpu_messages(MAC, **{**mac, "num_gpus": 2})
    assert len(two) == 1 and "one Apple silicon GPU and no NVIDIA GPU" in two[0]
    intel = gpu_messages(INTEL_MAC, **{**mac, "num_gpus": 1})
    assert len(intel) == 1 and "Intel Mac" in intel[0]


def test_expected_gpus() -> None:
    assert expected_gpus("", "Linux") is None  # Ray's own count
    assert expected_gpus(None, "Win32NT") is None
    assert expected_gpus("", "Darwin") == 0  # a Mac gives Ray no GPU unless told
    assert expected_gpus(1, "Darwin") == 1
    assert expected_gpus("2", "Linux") == 2
    assert expected_gpus(0, "Linux") == 0


def node_json(system: str, num_gpus: Any) -> dict[str, Any]:
    variables = {
        **role_defaults("cluster_facts"),
        "inventory_hostname": "rig", "bittrader_node_role": "worker", "bittrader_advertise_ip": "10.0.0.11",
        "bittrader_head_address": "10.0.0.10:6379",
        "bittrader_token_file": "/home/bittrader/.bittrader_worker/auth_token",
        "bittrader_ray_bin": "/home/bittrader/.bittrader_worker/venv/bin/ray",
        "bittrader_run_dir": "/home/bittrader/.bittrader_worker/run",
        "bittrader_log_dir": "/home/bittrader/.bittrader_worker/logs",
        "bittrader_ray_temp_path": "/home/bittrader/.bittrader_worker/ray",
        "ansible_facts": {"system": system}, "bittrader_num_gpus": num_gpus,
    }
    data: dict[str, Any] = json.loads(render("roles/ray_node/templates/node.json.j2", variables))
    return data


def gpu_args(node: dict[str, Any]) -> list[str]:
    return [a for a in node["start_args"] if a.startswith("--num-gpus")]


def test_ray_start_gets_num_gpus() -> None:
    assert gpu_args(node_json("Linux", "")) == []  # Ray counts the NVIDIA GPUs
    assert gpu_args(node_json("Linux", 2)) == ["--num-gpus=2"]
    assert gpu_args(node_json("Linux", "0")) == ["--num-gpus=0"]
    assert gpu_args(node_json("Darwin", "")) == ["--num-gpus=0"]  # not Ray 2.60's Apple "GPU"
    assert gpu_args(node_json("Darwin", 1)) == ["--num-gpus=1"]


def probe_node(ip: str, cpus: float, gpus: float, nvidia: int | None = 0) -> dict[str, Any]:
    return {"node_id": ip, "alive": True, "ip": ip, "hostname": ip, "cpus": cpus, "gpus": gpus,
            "memory": 8 * 2**30, "object_store_memory": 2**30, "is_head": False, "death_reason": "",
            "task": {"ray": "2.60.0", "python": "3.12.12", "uid": 1000, "nvidia_gpus": nvidia}}


def test_verify_checks_the_gpus_against_the_inventory() -> None:
    expected = [
        {"name": "head", "ip": "10.0.0.10", "cpus": 0, "gpus": 0},
        {"name": "rig", "ip": "10.0.0.11", "cpus": 16, "gpus": 2},
        {"name": "mac", "ip": "10.0.0.12", "cpus": 10, "gpus": 0},
        {"name": "auto", "ip": "10.0.0.13", "cpus": 8, "gpus": None},
    ]
    good = [probe_node("10.0.0.10", 0, 0), probe_node("10.0.0.11", 16, 2, nvidia=2),
            probe_node("10.0.0.12", 10, 0, nvidia=None), probe_node("10.0.0.13", 8, 1, nvidia=1)]
    result = evaluate(good, expected)
    assert result["problems"] == [] and result["warnings"] == []
    assert result["summary"]["gpus"] == 3
    assert [r["gpus"] for r in result["rows"]] == [0, 2, 0, 1]

    # A rig whose Ray started before its driver (0 GPUs), and a Mac that gives Ray its Apple GPU.
    bad = [probe_node("10.0.0.10", 0, 0), probe_node("10.0.0.11", 16, 0, nvidia=2),
           probe_node("10.0.0.12", 10, 1, nvidia=None), probe_node("10.0.0.13", 8, 0, nvidia=1)]
    result = evaluate(bad, expected)
    assert "rig (10.0.0.11) gives Ray 0 GPUs, the inventory expects 2 (bittrader_num_gpus)" in result["problems"]
    assert "mac (10.0.0.12) gives Ray 1 GPUs, the inventory expects 0 (bittrader_num_gpus)" in result["problems"]
    assert len(result["problems"]) == 2
    # Left to Ray's detection: a node with an NVIDIA GPU that Ray does not count is a warning, not a failure.
    assert result["warnings"] == ["auto (10.0.0.13) has 1 NVIDIA GPUs but gives Ray 0: restart its Ray service "
                                  "after installing the driver, or set bittrader_num_gpus"]


def test_gpu_check_without_a_task() -> None:
    """Without the probe's tasks (probe_tasks: false) only the inventory's count can be checked."""
    assert gpu_check({"gpus": 2.0, "task": None}, None) == ("", "")
    assert gpu_check({"gpus": 2.0, "task": None}, 2) == ("", "")
    assert gpu_check({"task": None}, 1)[0] == "gives Ray 0 GPUs, the inventory expects 1 (bittrader_num_gpus)"


def test_the_probe_reports_gpus() -> None:
    """The probe's script reads the GPU resource of each node and NVML's count in each node's task."""
    assert '"gpus": res.get("GPU", 0.0)' in PROBE
    assert '"nvidia_gpus": nvidia_gpus()' in PROBE
    compile(PROBE, "probe", "exec")


def verify_tasks() -> list[dict[str, Any]]:
    """The first play's tasks, with those inside blocks (and their rescue) in line."""
    plays = yaml.safe_load((REPO / "playbooks" / "verify.yml").read_text())
    tasks: list[dict[str, Any]] = []
    for task in plays[0]["tasks"]:
        tasks.extend([*task.get("block", []), *task.get("rescue", [])] if "block" in task else [task])
    return tasks


def test_verify_renders_the_expected_gpus_and_the_table() -> None:
    """verify.yml's expectations (rendered by Ansible's templating) carry each host's resolved GPUs, and
    its table shows them."""
    task = next(t for t in verify_tasks()
                if t.get("ansible.builtin.import_role", {}).get("tasks_from") == "cluster_check.yml")
    hostvars = {
        "head": {"bittrader_advertise_ip": "10.0.0.10", "bittrader_expected_cpus": 0, "bittrader_expected_gpus": 0},
        "rig": {"bittrader_advertise_ip": "10.0.0.11", "bittrader_expected_cpus": 16, "bittrader_expected_gpus": 2},
        "auto": {"bittrader_advertise_ip": "10.0.0.13", "bittrader_expected_cpus": 8,
                 "bittrader_expected_gpus": None},
    }
    variables = {**role_defaults("cluster_facts"), "groups": {"ray_cluster": list(hostvars)}, "hostvars": hostvars}
    expected = render_value(task["vars"]["cluster_facts_check_expected_nodes"], variables)
    assert [(e["name"], e["gpus"]) for e in expected] == [("head", 0), ("rig", 2), ("auto", None)]

    show = next(t for t in verify_tasks() if t.get("name") == "Show the cluster")
    rows = evaluate([probe_node("10.0.0.10", 0, 0), probe_node("10.0.0.11", 16, 2, nvidia=2),
                     probe_node("10.0.0.13", 8, 1, nvidia=1)], list(expected))
    assert rows["problems"] == []
    cluster = {**rows, "warnings_found": rows["warnings"]}
    context: dict[str, Any] = {"bittrader_cluster": cluster, "ansible_play_hosts": [], "hostvars": {}}
    context["verify__throttle_lines"] = render_value(show["vars"]["verify__throttle_lines"], context)
    lines = render_value(show["ansible.builtin.debug"]["msg"], context)
    assert lines[0].startswith("Cluster: 3 nodes alive, 24 CPUs, 3 GPUs, ")
    header = lines[1].split()
    assert header[:5] == ["host", "ip", "state", "cpus", "gpus"]
    rig = next(line for line in lines if line.startswith("rig")).split()
    assert rig[3:5] == ["16", "2"]
    assert text_table(rows["rows"], ["host", "gpus"]).splitlines()[2:] == ["head  0", "rig   2", "auto  1"]


def test_expected_nodes_carry_the_gpus() -> None:
    """bittrader_expected_nodes (health check, lifecycle playbooks): the resolved count, else the
    inventory's bittrader_num_gpus for a host this run did not read (0 on a Mac)."""
    value = role_defaults("cluster_facts")["bittrader_expected_nodes"]
    hostvars: dict[str, dict[str, Any]] = {
        "head": {"ansible_host": "10.0.0.10", "bittrader_expected_cpus": 0, "bittrader_expected_gpus": 0},
        "rig": {"ansible_host": "10.0.0.11", "bittrader_num_gpus": 2},
        "mac": {"ansible_host": "10.0.0.12", "ansible_facts": {"system": "Darwin"}},
        "auto": {"ansible_host": "10.0.0.13"},
    }
    out = render_value(value, {"groups": {"ray_cluster": list(hostvars)}, "hostvars": hostvars})
    assert [(e["name"], e["gpus"]) for e in out] == [("head", 0), ("rig", 2), ("mac", 0), ("auto", None)]
