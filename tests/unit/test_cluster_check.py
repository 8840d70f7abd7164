"""ray_cluster_check: waits until the cluster matches what the inventory expects, else fails naming why,
with the table of the expected hosts. Run in-process with a stand-in for the venv's Python; the wait
(check_until, module_utils/bittrader_cluster.py) with a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from module_harness import fake_python, node, probe_calls, run_module

from ansible.module_utils.bittrader_cluster import check_until, rows_table  # isort: skip

EXPECTED = [
    {"name": "head", "ip": "10.0.0.10", "cpus": 0},
    {"name": "w1", "ip": "10.0.0.11", "cpus": 2},
    {"name": "w2", "ip": "10.0.0.12", "cpus": None},
]
OK_TASK = {"ray": "2.60.0", "python": "3.11.2", "uid": 1000}


def test_module_reports_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [node("10.0.0.10", 0, **OK_TASK), node("10.0.0.11", 2, **OK_TASK), node("10.0.0.12", 1, **OK_TASK)]
    code, out = run_module(
        "ray_cluster_check",
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
    assert [row["state"] for row in out["rows"]] == ["alive"] * 3
    assert out["table"].splitlines()[0].split()[:3] == ["host", "ip", "state"]


def test_module_fails_naming_the_missing_host_after_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _s: None)
    nodes = [node("10.0.0.10", 0, **OK_TASK), node("10.0.0.11", 2, **OK_TASK)]
    code, out = run_module(
        "ray_cluster_check",
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
    # The failure shows the table of the expected hosts, the missing one included.
    assert any(line.split()[:3] == ["w2", "10.0.0.12", "missing"] for line in out["msg"].splitlines())
    assert len(probe_calls(tmp_path)) == out["attempts"]


def test_module_fails_clearly_when_the_cluster_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run_module(
        "ray_cluster_check",
        {"address": "10.0.0.10:6379", "python": fake_python(tmp_path, [], rc=3), "token_file": str(tmp_path / "token")},
        monkeypatch,
    )
    assert code == 1
    assert "cannot read the cluster at 10.0.0.10:6379 (exit 3)" in out["msg"]


def test_module_refuses_an_expected_node_without_name_or_ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run_module(
        "ray_cluster_check",
        {"address": "10.0.0.10:6379", "python": fake_python(tmp_path, []), "expected_nodes": [{"name": "w1"}]},
        monkeypatch,
    )
    assert code == 1 and "each of expected_nodes needs name and ip" in out["msg"]
    assert probe_calls(tmp_path) == []  # refused before reading the cluster


def test_module_passes_the_probe_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [node("10.0.0.10", 0)]
    code, out = run_module(
        "ray_cluster_check",
        {"address": "10.0.0.10:6379", "python": fake_python(tmp_path, nodes), "token_file": str(tmp_path / "t"),
         "expected_nodes": [EXPECTED[0]], "probe_tasks": False, "probe_timeout": 60},
        monkeypatch,
    )
    assert code == 0, out
    assert probe_calls(tmp_path) == [{"address": "10.0.0.10:6379", "tasks": False, "task_timeout": 30}]


class FakeClock:
    """time.monotonic and time.sleep for check_until: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def judge(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    problems = [] if len(nodes) >= 2 else [f"{2 - len(nodes)} missing"]
    return {"problems": problems, "warnings": [], "summary": {}, "rows": []}


def test_check_until_polls_until_the_expectations_hold() -> None:
    fake = FakeClock()
    reads = iter([[], [{"ip": "a"}], [{"ip": "a"}, {"ip": "b"}], [{"ip": "never read"}]])
    nodes, result, attempts = check_until(lambda: next(reads), judge, 60, 5, fake.clock, fake.sleep)
    assert attempts == 3 and result["problems"] == [] and len(nodes) == 2
    assert fake.sleeps == [5, 5]


def test_check_until_gives_up_at_the_timeout_and_counts_read_errors_as_problems() -> None:
    fake = FakeClock()

    def read() -> list[dict[str, Any]]:
        if fake.now > 110:
            raise RuntimeError("cannot read the cluster at 10.0.0.10:6379 (exit 1): refused")
        return [{"ip": "a"}]

    nodes, result, attempts = check_until(read, judge, 20, 3, fake.clock, fake.sleep)
    assert result["problems"] == ["cannot read the cluster at 10.0.0.10:6379 (exit 1): refused"]
    assert nodes == [{"ip": "a"}]  # the last nodes it could read
    assert attempts == 8 and fake.now >= 120


def test_check_until_with_no_wait_reads_once() -> None:
    fake = FakeClock()
    _, result, attempts = check_until(lambda: [], judge, 0, 3, fake.clock, fake.sleep)
    assert attempts == 1 and result["problems"] == ["2 missing"] and fake.sleeps == []


def test_rows_table_aligns_the_columns() -> None:
    rows = [{"host": "head", "ip": "10.0.0.10", "state": "alive"}, {"host": "w12", "ip": "10.0.0.12", "state": "dead"}]
    assert rows_table(rows, ("host", "ip", "state")).splitlines() == [
        "host  ip         state",
        "head  10.0.0.10  alive",
        "w12   10.0.0.12  dead",
    ]



def _dicts(node: Any) -> list[dict[str, Any]]:
    """Every mapping in a YAML document (plays, tasks, blocks, their rescue...), depth first."""
    if isinstance(node, dict):
        return [node] + [d for value in node.values() for d in _dicts(value)]
    if isinstance(node, list):
        return [d for item in node for d in _dicts(item)]
    return []


def test_the_playbooks_check_the_cluster_through_the_entry_point_only() -> None:
    """One place runs ray_cluster_check (roles/cluster_facts/tasks/cluster_check.yml); its options are the
    ones its argument spec declares, and the callers pass no others."""
    import re

    import yaml
    from module_harness import REPO

    role = REPO / "roles" / "cluster_facts"
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["cluster_check"]
    entry = (role / "tasks" / "cluster_check.yml").read_text()
    assert set(re.findall(r"cluster_facts_check_\w+", entry)) == set(spec["options"])
    callers = []
    for path in [*(REPO / "playbooks").glob("*.yml"), *(REPO / "roles").glob("*/tasks/*.yml"), REPO / "site.yml"]:
        for task in _dicts(yaml.safe_load(path.read_text())):
            assert "ray_cluster_check" not in task or path.name == "cluster_check.yml", path
            include = task.get("ansible.builtin.include_role", task.get("ansible.builtin.import_role"))
            if isinstance(include, dict) and include.get("tasks_from") == "cluster_check.yml":
                callers.append(path.name)
                assert set(task.get("vars", {})) <= set(spec["options"]), (path, task["name"])
    assert sorted(set(callers)) == ["remove_worker.yml", "upgrade.yml", "verify.yml"]
    assert callers.count("upgrade.yml") == 3
