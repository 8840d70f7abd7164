"""Helpers for the Molecule cluster's testinfra tests (hosts reached with podman://NAME)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "module_utils"))

from bittrader_cluster import PROBE_MODULE, parse_probe_output

# Molecule's cluster: mol-head, mol-worker1, mol-worker2 on 10.89.77.0/24. A developer can point the
# tests at another cluster of the same shape with BITTRADER_TEST_PREFIX and BITTRADER_TEST_NET.
PREFIX = os.environ.get("BITTRADER_TEST_PREFIX", "mol")
NET = os.environ.get("BITTRADER_TEST_NET", "10.89.77")
HEAD = f"{PREFIX}-head"
WORKERS = [f"{PREFIX}-worker1", f"{PREFIX}-worker2"]
IPS = {HEAD: f"{NET}.10", WORKERS[0]: f"{NET}.11", WORKERS[1]: f"{NET}.12"}
# The second worker runs the throttle: 1 CPU while its (simulated) owner is active, which is what the
# daemon assumes until the tests write the activity file (test_throttle), 2 while idle.
CPUS = {HEAD: 0, WORKERS[0]: 1, WORKERS[1]: 1}
ALL_HOSTS = [f"podman://{name}" for name in IPS]
# Facts the roles own, read from their one place: the defaults, and the lab's group_vars (which
# Molecule links) for what the lab sets.
DEFAULTS: dict[str, Any] = yaml.safe_load((REPO / "roles/cluster_facts/defaults/main.yml").read_text())
LAB_VARS: dict[str, Any] = yaml.safe_load((REPO / "inventory/lab/group_vars/all.yml").read_text())
PORTS: dict[str, int] = DEFAULTS["bittrader_ports"]
WORKER_PORTS = range(PORTS["min_worker"], PORTS["max_worker"] + 1)  # Ray's worker processes
USER: str = DEFAULTS["bittrader_user"]
HOME = f"/home/{USER}"
RAY_VERSION: str = DEFAULTS["bittrader_ray_version"]
PYTHON: str = LAB_VARS["bittrader_python_version"]  # the lab's pinned Python
GCS_ADDRESS = f"{IPS[HEAD]}:{PORTS['gcs']}"  # the cluster's address
JOB_API = f"http://{IPS[HEAD]}:{PORTS['dashboard']}"  # the dashboard and job API


def run_playbook(*args: str, extra_inventory: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ansible-playbook with this repository's settings against the Molecule inventory (plus
    extra_inventory), uncoloured; returns the finished process and its seconds. Playbook paths are
    relative to the repository."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0"}
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"]]
    if extra_inventory is not None:
        cmd += ["-i", str(extra_inventory)]
    started = time.monotonic()
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, env=env, check=False)
    return done, time.monotonic() - started


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts per host."""
    found: dict[str, dict[str, int]] = {}
    for match in re.finditer(r"^(\S+)\s+: (ok=.*)$", output, re.M):
        found[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return found


def base_dir(name: str) -> str:
    return f"{HOME}/{DEFAULTS['bittrader_head_dir_name' if name == HEAD else 'bittrader_worker_dir_name']}"


def ray_temp_dir(name: str) -> str:
    """The node's own Ray temp/session folder (bittrader_ray_temp_dir), not Ray's default /tmp/ray."""
    return f"{base_dir(name)}/ray"


def as_user(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """A shell command that runs cmd as the service user with env."""
    prefix = ["runuser", "-u", USER, "--", "env"] + [f"{k}={v}" for k, v in (env or {}).items()]
    return " ".join(shlex.quote(p) for p in prefix + cmd)


HEAD_BASE = base_dir(HEAD)
TOKEN_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{HEAD_BASE}/auth_token"}


def job_status(head: Any, job: str) -> str:
    """SUCCEEDED, FAILED, STOPPED, RUNNING, PENDING, MISSING (the job API does not know the job: the
    head restarted since) or UNKNOWN: ... from `ray job status` (it prints "Job 'ID' succeeded" when
    done, "Status for job 'ID': RUNNING" before)."""
    res = head.run(as_user([f"{HEAD_BASE}/venv/bin/ray", "job", "status", f"--address={JOB_API}", job],
                           TOKEN_ENV))
    if "does not exist" in res.stdout + res.stderr:
        return "MISSING"
    text = (res.stdout + res.stderr).upper().replace(job.upper(), "")
    for word in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
        if word in text:
            return word
    return "UNKNOWN: " + (res.stdout + res.stderr)[-500:]


def probe_cluster(head: Any, tasks: bool = True, timeout: int = 120) -> dict[str, Any]:
    """Run the verification module's probe on the head as the service user; returns its JSON."""
    base = base_dir(HEAD)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{base}/auth_token"}
    args = json.dumps({"address": GCS_ADDRESS, "tasks": tasks, "task_timeout": timeout})
    res = head.run(as_user([f"{base}/venv/bin/python", "-m", PROBE_MODULE, args], env))
    assert res.rc == 0, res.stderr[-2000:]
    return parse_probe_output(res.stdout)


def alive_ips(data: dict[str, Any]) -> dict[str, float]:
    return {n["ip"]: n["cpus"] for n in data["nodes"] if n["alive"]}


def alive_node_ids(data: dict[str, Any]) -> dict[str, set[str]]:
    """The ids of the alive Ray nodes at each address."""
    ids: dict[str, set[str]] = {}
    for node in data["nodes"]:
        if node["alive"]:
            ids.setdefault(node["ip"], set()).add(str(node["node_id"]))
    return ids


def node_id_of(head: Any, name: str) -> str:
    """The id of the one alive Ray node of a host."""
    ids = alive_node_ids(probe_cluster(head, tasks=False, timeout=20)).get(IPS[name], set())
    assert len(ids) == 1, f"{name}: alive Ray nodes {ids}"
    return next(iter(ids))


def wait_for_all_alive(head: Any, timeout: float, replaced: dict[str, str] | None = None) -> float:
    """Seconds until every host is alive again with its CPUs; fails after timeout.

    replaced maps a host to the id its Ray node had before a fault that ends that node (a killed
    raylet, a restarted host): until the head knows the old node is dead and a new one has joined
    at the host's address, the cluster has not recovered (the old node can look alive for a while).
    """
    started = time.monotonic()
    last: dict[str, float] = {}
    ids: dict[str, set[str]] = {}
    while time.monotonic() - started < timeout:
        try:
            data = probe_cluster(head, tasks=False, timeout=20)
            last, ids = alive_ips(data), alive_node_ids(data)
        except AssertionError:
            last, ids = {}, {}
        fresh = all(ids.get(IPS[name], set()) - {old} and old not in ids.get(IPS[name], set())
                    for name, old in (replaced or {}).items())
        if fresh and all(last.get(ip) == CPUS[name] for name, ip in IPS.items()):
            return time.monotonic() - started
        time.sleep(2)
    pytest.fail(f"not all nodes alive after {timeout:.0f} s: {last}, node ids {ids}, replaced {replaced}")
