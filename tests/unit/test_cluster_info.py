"""The verification module: the probe's output parsed, expectations compared, and the module run
end to end with a stand-in for the venv's Python."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
import ansible.module_utils  # noqa: E402

if str(REPO / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(REPO / "module_utils"))
sys.path.insert(0, str(REPO / "library"))

from ansible.module_utils.bittrader_cluster import MARKER, evaluate, latest_nodes, parse_probe_output  # noqa: E402


def node(ip: str, cpus: float, alive: bool = True, **task: Any) -> dict[str, Any]:
    return {
        "node_id": ip.replace(".", ""),
        "alive": alive,
        "ip": ip,
        "hostname": f"h{ip[-1]}",
        "cpus": cpus,
        "memory": 8 * 2**30,
        "object_store_memory": 2**30,
        "is_head": ip.endswith(".10"),
        "death_reason": "" if alive else "heartbeat timeout",
        "task": task or None,
    }


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


def run_module(args: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any]]:
    import ray_cluster_info
    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes

    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args})))
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    captured: dict[str, Any] = {}

    def fake_exit(self: Any, **kw: Any) -> None:
        captured.update(kw)
        raise SystemExit(0)

    def fake_fail(self: Any, msg: str, **kw: Any) -> None:
        captured.update(kw, msg=msg, failed=True)
        raise SystemExit(1)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", fake_exit)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fake_fail)
    with pytest.raises(SystemExit) as exit_info:
        ray_cluster_info.main()
    return int(exit_info.value.code or 0), captured


def fake_python(tmp_path: Path, nodes: list[dict[str, Any]], rc: int = 0) -> str:
    """An executable that stands in for the venv's Python: prints what the probe would."""
    script = tmp_path / "python"
    payload = MARKER + json.dumps({"nodes": nodes, "driver_ray": "2.60.0", "driver_python": "3.11.2"})
    script.write_text(
        f"#!/bin/sh\necho 'noise from ray'\necho '{payload}'\ntest -n \"$RAY_AUTH_TOKEN_PATH\" || exit 9\nexit {rc}\n"
    )
    script.chmod(0o755)
    return str(script)


def test_module_reports_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [node("10.0.0.10", 0, **OK_TASK), node("10.0.0.11", 2, **OK_TASK), node("10.0.0.12", 1, **OK_TASK)]
    code, out = run_module(
        {
            "address": "10.0.0.10:6379",
            "python": fake_python(tmp_path, nodes),
            "token_file": str(tmp_path / "token"),
            "expected_nodes": EXPECTED,
            "min_total_cpus": 3,
            "ray_version": "2.60.0",
            "python_version": "3.11.2",
            "_ansible_check_mode": True,
        },
        monkeypatch,
    )
    assert code == 0, out
    assert out["changed"] is False and out["problems"] == [] and out["summary"]["cpus"] == 3
    assert out["attempts"] == 1


def test_module_fails_naming_the_missing_host_after_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _s: None)
    nodes = [node("10.0.0.10", 0, **OK_TASK), node("10.0.0.11", 2, **OK_TASK)]
    code, out = run_module(
        {
            "address": "10.0.0.10:6379",
            "python": fake_python(tmp_path, nodes),
            "token_file": str(tmp_path / "token"),
            "expected_nodes": EXPECTED,
            "wait_timeout": 1,
        },
        monkeypatch,
    )
    assert code == 1
    assert "w2 (10.0.0.12) has not joined the cluster" in out["msg"]
    assert out["attempts"] >= 1


def test_module_fails_clearly_when_the_cluster_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run_module(
        {"address": "10.0.0.10:6379", "python": fake_python(tmp_path, [], rc=3), "token_file": str(tmp_path / "token")},
        monkeypatch,
    )
    assert code == 1
    assert "cannot read the cluster at 10.0.0.10:6379 (exit 3)" in out["msg"]


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
