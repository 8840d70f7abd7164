"""The cluster's read side: the probe's output parsed, the summary and the comparison with what the
inventory expects (module_utils/bittrader_cluster.py), the inventory's expectations rendered, and the
module ray_cluster_info run in-process with a stand-in for the venv's Python. ray_cluster_check, which
waits and fails, is tested in test_cluster_check.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from module_harness import fake_python, node, probe_calls, run_module

from ansible.module_utils.bittrader_cluster import (  # isort: skip
    MARKER,
    evaluate,
    latest_nodes,
    parse_probe_output,
    probe_command,
    summarize,
)


EXPECTED = [
    {"name": "head", "ip": "10.0.0.10", "cpus": 0},
    {"name": "w1", "ip": "10.0.0.11", "cpus": 2},
    {"name": "w2", "ip": "10.0.0.12", "cpus": None},
]
OK_TASK = {"ray": "2.60.0", "python": "3.11.2", "uid": 1000}


def test_all_expectations_hold() -> None:
    nodes = [node("10.0.0.10", 0, **OK_TASK), node("10.0.0.11", 2, **OK_TASK), node("10.0.0.12", 4, **OK_TASK)]
    result = evaluate(nodes, EXPECTED, 2, "2.60.0", "3.11.2")
    assert result["problems"] == []
    assert result["summary"]["alive_nodes"] == 3 and result["summary"]["cpus"] == 6
    assert [r["state"] for r in result["rows"]] == ["alive"] * 3


def test_missing_dead_and_short_hosts_are_named() -> None:
    nodes = [node("10.0.0.10", 0), node("10.0.0.11", 1), node("10.0.0.12", 4, alive=False)]
    problems = evaluate(nodes, EXPECTED, 8)["problems"]
    assert any("w1 (10.0.0.11) gives Ray 1 CPUs, the inventory expects 2" in p for p in problems)
    assert any("w2 (10.0.0.12) is dead: heartbeat timeout" in p for p in problems)
    assert any("has 1 CPUs, 7 short of the 8" in p for p in problems)
    problems = evaluate([node("10.0.0.10", 0)], EXPECTED)["problems"]
    assert "w1 (10.0.0.11) has not joined the cluster" in problems


def test_version_mismatch_root_and_task_errors() -> None:
    nodes = [
        node("10.0.0.10", 0, ray="2.59.0", python="3.11.2", uid=0),
        node("10.0.0.11", 2, error="GetTimeoutError: timed out"),
        node("10.0.0.12", 2, **OK_TASK),
    ]
    problems = evaluate(nodes, EXPECTED, None, "2.60.0", "3.11.2")["problems"]
    assert any("head (10.0.0.10) runs Ray 2.59.0" in p for p in problems)
    assert any("runs Ray as root" in p for p in problems)
    assert any("w1 (10.0.0.11) did not run a task" in p for p in problems)


def test_a_restarted_node_counts_once_and_strangers_are_warned() -> None:
    nodes = [node("10.0.0.11", 2, alive=False), node("10.0.0.11", 2), node("10.0.0.99", 1)]
    assert [n["alive"] for n in latest_nodes(nodes)] == [True, True]
    result = evaluate(nodes, [EXPECTED[1]])
    assert result["problems"] == []
    assert result["summary"]["dead_nodes"] == 1
    assert "10.0.0.99" in result["warnings"][0]


def test_parse_probe_output_ignores_noise() -> None:
    out = "2026 INFO connecting\n" + MARKER + json.dumps({"nodes": []}) + "\n"
    assert parse_probe_output(out) == {"nodes": []}
    with pytest.raises(ValueError):
        parse_probe_output("no marker here")


def test_info_reports_the_cluster_in_check_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [node("10.0.0.10", 0, **OK_TASK), node("10.0.0.11", 2, **OK_TASK), node("10.0.0.12", 1, **OK_TASK)]
    code, out = run_module(
        "ray_cluster_info",
        {"address": "10.0.0.10:6379", "python": fake_python(tmp_path, nodes), "token_file": str(tmp_path / "token"),
         "_ansible_check_mode": True},
        monkeypatch,
    )
    assert code == 0, out
    assert out["changed"] is False and out["nodes"] == nodes
    assert out["summary"] == {"alive_nodes": 3, "dead_nodes": 0, "cpus": 3, "gpus": 0, "memory_gb": 24.0,
                              "object_store_gb": 3.0}
    assert out["driver"] == {"ray": "2.60.0", "python": "3.11.2"}
    assert probe_calls(tmp_path) == [{"address": "10.0.0.10:6379", "tasks": True, "task_timeout": 90}]


def test_info_never_fails_because_of_what_it_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dead nodes, a task that failed, another Ray: reported, not judged (that is ray_cluster_check's job)."""
    nodes = [node("10.0.0.10", 0, ray="2.59.0", python="3.11.2", uid=0), node("10.0.0.11", 2, alive=False),
             node("10.0.0.12", 2, error="GetTimeoutError: timed out")]
    code, out = run_module(
        "ray_cluster_info",
        {"address": "10.0.0.10:6379", "python": fake_python(tmp_path, nodes), "token_file": str(tmp_path / "t"),
         "probe_tasks": False, "probe_timeout": 20},
        monkeypatch,
    )
    assert code == 0, out
    assert "failed" not in out and "problems" not in out
    assert out["summary"]["alive_nodes"] == 2 and out["summary"]["dead_nodes"] == 1
    assert probe_calls(tmp_path) == [{"address": "10.0.0.10:6379", "tasks": False, "task_timeout": 10}]


def test_info_fails_only_when_the_cluster_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run_module(
        "ray_cluster_info",
        {"address": "10.0.0.10:6379", "python": fake_python(tmp_path, [], rc=3), "token_file": str(tmp_path / "t")},
        monkeypatch,
    )
    assert code == 1
    assert "cannot read the cluster at 10.0.0.10:6379 (exit 3)" in out["msg"]


def test_info_names_a_missing_node_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = fake_python(tmp_path, [], rc=1, stderr="No module named bittrader_node_agent")
    code, out = run_module(
        "ray_cluster_info", {"address": "10.0.0.10:6379", "python": python, "token_file": str(tmp_path / "t")},
        monkeypatch,
    )
    assert code == 1
    assert f"the node agent package is not installed in the environment of {python}" in out["msg"]


def test_probe_command_runs_the_node_agents_module() -> None:
    argv = probe_command("/srv/venv/bin/python", "10.0.0.10:6379", tasks=False, probe_timeout=120)
    assert argv[:3] == ["/srv/venv/bin/python", "-m", "bittrader_node_agent.cluster_probe"]
    assert json.loads(argv[3]) == {"address": "10.0.0.10:6379", "tasks": False, "task_timeout": 90}


def test_summary_counts_a_restarted_node_once() -> None:
    nodes = [node("10.0.0.11", 2, alive=False), node("10.0.0.11", 2), node("10.0.0.12", 4)]
    assert summarize(nodes)["alive_nodes"] == 2 and summarize(nodes)["dead_nodes"] == 1
    assert summarize(nodes)["cpus"] == 6
    assert summarize([]) == {"alive_nodes": 0, "dead_nodes": 0, "cpus": 0, "gpus": 0, "memory_gb": 0.0,
                             "object_store_gb": 0.0}


def expected_nodes(hostvars: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """bittrader_expected_nodes (roles/cluster_facts/vars/main.yml) rendered by Ansible's templating."""
    sys.path.insert(0, str(Path(__file__).parent))
    from ansible_render import render_value, role_defaults

    value = role_defaults("cluster_facts")["bittrader_expected_nodes"]
    result = render_value(value, {"groups": {"ray_cluster": list(hostvars)}, "hostvars": hostvars})
    return list(result)


def test_expected_nodes_take_the_cpus_a_run_resolved() -> None:
    hostvars: dict[str, dict[str, Any]] = {
        "head": {"ansible_host": "10.0.0.10", "bittrader_advertise_ip": "10.0.0.10", "bittrader_expected_cpus": 0},
        "w1": {"ansible_host": "10.0.0.11", "bittrader_advertise_ip": "10.0.0.11", "bittrader_expected_cpus": 2},
        "laptop": {"ansible_host": "10.0.0.12", "bittrader_throttle_enabled": True, "bittrader_expected_cpus": None},
    }
    assert expected_nodes(hostvars) == [
        {"name": "head", "ip": "10.0.0.10", "cpus": 0, "gpus": None},
        {"name": "w1", "ip": "10.0.0.11", "cpus": 2, "gpus": None},
        {"name": "laptop", "ip": "10.0.0.12", "cpus": None, "gpus": None},
    ]


def test_expected_nodes_of_hosts_a_limited_run_did_not_read_keep_the_inventorys_cpus() -> None:
    """`site.yml --limit head` resolves facts on the head only: the workers' CPUs still come from the
    inventory where it names them, so the head's health check keeps checking them."""
    hostvars: dict[str, dict[str, Any]] = {
        "head": {"ansible_host": "10.0.0.10", "bittrader_advertise_ip": "10.0.0.10", "bittrader_expected_cpus": 0},
        "w1": {"ansible_host": "10.0.0.11", "bittrader_num_cpus": 1},
        "w2": {"ansible_host": "10.0.0.12", "bittrader_node_ip": "100.64.0.12", "bittrader_num_cpus": "3"},
        "laptop": {"ansible_host": "10.0.0.13", "bittrader_num_cpus": 4, "bittrader_throttle_enabled": True},
        "unsized": {"ansible_host": "10.0.0.14"},
        "zero": {"ansible_host": "10.0.0.15", "bittrader_num_cpus": 0},
    }
    assert expected_nodes(hostvars) == [
        {"name": "head", "ip": "10.0.0.10", "cpus": 0, "gpus": None},
        {"name": "w1", "ip": "10.0.0.11", "cpus": 1, "gpus": None},
        {"name": "w2", "ip": "100.64.0.12", "cpus": 3, "gpus": None},
        {"name": "laptop", "ip": "10.0.0.13", "cpus": None, "gpus": None},
        {"name": "unsized", "ip": "10.0.0.14", "cpus": None, "gpus": None},
        {"name": "zero", "ip": "10.0.0.15", "cpus": 0, "gpus": None},
    ]
