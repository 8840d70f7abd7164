"""The cluster probe of the node agent (node_agent/src/bittrader_node_agent/cluster_probe.py), run as the
modules run it - `python -m bittrader_node_agent.cluster_probe ARGS` - against a stand-in `ray` package
that plays a cluster of three nodes; its one result line parsed by module_utils' parse_probe_output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from module_harness import REPO

from ansible.module_utils.bittrader_cluster import MARKER, PROBE_MODULE, parse_probe_output  # isort: skip

SRC = REPO / "node_agent" / "src"
sys.path.insert(0, str(SRC))
from bittrader_node_agent import cluster_probe  # noqa: E402

# A stand-in for Ray: three nodes (head, a worker, a dead worker), live totals that differ from the
# registered resources (the throttle's resize), and remote tasks that run in this process.
FAKE_RAY = {
    "ray/__init__.py": '''
        __version__ = "2.60.0"
        CALLS = []
        NODES = [
            {"NodeID": "h", "Alive": True, "NodeManagerAddress": "10.0.0.10", "NodeManagerHostname": "head",
             "Resources": {"CPU": 0.0, "memory": 2.0**31, "object_store_memory": 2.0**30,
                           "node:__internal_head__": 1.0}},
            {"NodeID": "w", "Alive": True, "NodeManagerAddress": "10.0.0.11", "NodeManagerHostname": "w1",
             "Resources": {"CPU": 4.0, "GPU": 1.0}},
            {"NodeID": "d", "Alive": False, "NodeManagerAddress": "10.0.0.12", "NodeManagerHostname": "w2",
             "Resources": {"CPU": 2.0}, "DeathReasonMessage": "heartbeat timeout"},
        ]
        def init(**kw):
            CALLS.append(("init", kw["address"]))
        def nodes():
            return NODES
        def shutdown():
            CALLS.append(("shutdown",))
        class _Context:
            def get_node_id(self):
                return "in-task"
        def get_runtime_context():
            return _Context()
        class _Remote:
            def __init__(self, fn, strategy=None):
                self.fn, self.strategy = fn, strategy
            def options(self, scheduling_strategy=None):
                return _Remote(self.fn, scheduling_strategy)
            def remote(self):
                if self.strategy.node_id == "w":
                    return RuntimeError("the worker's task failed")
                return self.fn()
        def remote(**kw):
            assert kw == {"num_cpus": 0, "max_retries": 0}, kw
            return _Remote
        def get(ref, timeout):
            assert timeout >= 1.0
            if isinstance(ref, Exception):
                raise ref
            return ref
    ''',
    "ray/util/__init__.py": "",
    "ray/util/scheduling_strategies.py": '''
        class NodeAffinitySchedulingStrategy:
            def __init__(self, node_id, soft):
                assert soft is False
                self.node_id = node_id
    ''',
    "ray/_private/__init__.py": "",
    "ray/_private/state.py": '''
        import ray
        def total_resources_per_node():
            return {"w": {"CPU": 2.0}}
        class GlobalState:
            """What read_gcs uses: the node table and live totals without ray.init()."""
            def _initialize_global_state(self, options):
                ray.CALLS.append(("gcs", options))
            def node_table(self):
                return ray.NODES
            def total_resources_per_node(self):
                return {"w": {"CPU": 2.0}}
            def disconnect(self):
                ray.CALLS.append(("gcs-disconnect",))
    ''',
    "ray/_raylet.py": '''
        class GcsClientOptions:
            @staticmethod
            def create(address, cluster_id, allow_cluster_id_nil, fetch_cluster_id_if_nil):
                assert cluster_id is None and allow_cluster_id_nil and not fetch_cluster_id_if_nil
                return "options for " + address
    ''',
}


@pytest.fixture
def fake_ray(tmp_path: Path) -> Path:
    for name, text in FAKE_RAY.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def run_probe(fake_ray: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_ray), str(SRC)])}
    return subprocess.run([sys.executable, "-m", PROBE_MODULE, *args], capture_output=True, text=True, env=env,
                          check=False, timeout=60)


def test_the_probe_runs_as_a_module_and_reports_every_node(fake_ray: Path) -> None:
    res = run_probe(fake_ray, json.dumps({"address": "10.0.0.10:6379", "tasks": True, "task_timeout": 20}))
    assert res.returncode == 0, res.stderr
    data = parse_probe_output(res.stdout)
    assert data["driver_ray"] == "2.60.0"
    head, worker, dead = data["nodes"]
    assert (head["ip"], head["is_head"], head["alive"], head["cpus"], head["memory"]) == (
        "10.0.0.10", True, True, 0.0, 2.0**31)
    assert head["task"]["ray"] == "2.60.0" and head["task"]["node_id"] == "in-task"
    assert head["task"]["code"]["mode"] == "working_dir"  # no bittrader_code.pth in this Python
    assert head["task"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert worker["cpus"] == 2.0 and worker["gpus"] == 1.0  # the live total wins over the registered 4
    assert worker["task"] == {"error": "RuntimeError: the worker's task failed"}
    assert dead["alive"] is False and dead["death_reason"] == "heartbeat timeout" and dead["task"] is None


def test_without_tasks_no_task_runs(fake_ray: Path) -> None:
    res = run_probe(fake_ray, json.dumps({"address": "10.0.0.10:6379", "tasks": False}))
    assert res.returncode == 0, res.stderr
    assert [n["task"] for n in parse_probe_output(res.stdout)["nodes"]] == [None, None, None]


def test_without_tasks_the_nodes_are_read_from_the_gcs_without_a_driver(fake_ray: Path) -> None:
    """No ray.init() (a driver joining the cluster costs the head seconds of CPU): the same rows, live
    totals included, from the GCS's node table, and the connection closed."""
    code = ("import json, ray; from bittrader_node_agent import cluster_probe as p; "
            "out = p.probe('10.0.0.10:6379', tasks=False); print(json.dumps([out, ray.CALLS]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_ray), str(SRC)])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    out, calls = json.loads(res.stdout)
    assert calls == [["gcs", "options for 10.0.0.10:6379"], ["gcs-disconnect"]]
    head, worker, dead = out["nodes"]
    assert (head["is_head"], worker["cpus"], worker["gpus"], dead["alive"]) == (True, 2.0, 1.0, False)
    assert dead["death_reason"] == "heartbeat timeout" and out["driver_ray"] == "2.60.0"


def test_the_probe_needs_its_one_argument(fake_ray: Path) -> None:
    res = run_probe(fake_ray)
    assert res.returncode == 2 and "usage: python -m bittrader_node_agent.cluster_probe" in res.stderr


def test_the_probe_and_the_parser_agree_on_the_marker() -> None:
    assert cluster_probe.MARKER == MARKER


def test_node_rows_take_the_live_totals_and_the_tasks() -> None:
    nodes: list[dict[str, Any]] = [{"NodeID": "x", "Alive": 1, "NodeManagerAddress": "10.0.0.9",
                                    "Resources": {"CPU": 8.0, "memory": 1.0}}]
    rows = cluster_probe.node_rows(nodes, {"x": {"CPU": 3.0}}, {"x": {"ray": "2.60.0"}})
    assert rows == [{"node_id": "x", "alive": True, "ip": "10.0.0.9", "hostname": None, "cpus": 3.0, "gpus": 0.0,
                     "memory": 1.0, "object_store_memory": 0.0, "is_head": False, "death_reason": "",
                     "task": {"ray": "2.60.0"}}]


def test_the_probe_is_stdlib_and_ray_only() -> None:
    """Nodes have the standard library and Ray (psutil, Ray's dependency, optionally): nothing else."""
    import ast

    tree = ast.parse(Path(cluster_probe.__file__).read_text())
    imported = {alias.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    imported |= {str(n.module).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported - set(sys.stdlib_module_names) == {"ray", "psutil"}
