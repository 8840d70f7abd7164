"""Helpers for the Molecule cluster's testinfra tests (hosts reached with podman://NAME)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "module_utils"))

from bittrader_cluster import PROBE, parse_probe_output

HEAD = "mol-head"
WORKERS = ["mol-worker1", "mol-worker2"]
IPS = {"mol-head": "10.89.77.10", "mol-worker1": "10.89.77.11", "mol-worker2": "10.89.77.12"}
# mol-worker2 runs the throttle: 1 CPU while its (simulated) owner is active, which is what the
# daemon assumes until the tests write the activity file (test_throttle), 2 while idle.
CPUS = {"mol-head": 0, "mol-worker1": 1, "mol-worker2": 1}
USER = "bittrader"
HOME = f"/home/{USER}"


def base_dir(name: str) -> str:
    return f"{HOME}/.bittrader_head" if name == HEAD else f"{HOME}/.bittrader_worker"


def as_user(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """A shell command that runs cmd as the service user with env."""
    prefix = ["runuser", "-u", USER, "--", "env"] + [f"{k}={v}" for k, v in (env or {}).items()]
    return " ".join(shlex.quote(p) for p in prefix + cmd)


def probe_cluster(head: Any, tasks: bool = True, timeout: int = 120) -> dict[str, Any]:
    """Run the verification module's probe on the head as the service user; returns its JSON."""
    base = base_dir(HEAD)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{base}/auth_token"}
    args = json.dumps({"address": f"{IPS[HEAD]}:6379", "tasks": tasks, "task_timeout": timeout})
    res = head.run(as_user([f"{base}/venv/bin/python", "-c", PROBE, args], env))
    assert res.rc == 0, res.stderr[-2000:]
    return parse_probe_output(res.stdout)


def alive_ips(data: dict[str, Any]) -> dict[str, float]:
    return {n["ip"]: n["cpus"] for n in data["nodes"] if n["alive"]}


def wait_for_all_alive(head: Any, timeout: float) -> float:
    """Seconds until every host is alive again with its CPUs; fails after timeout."""
    started = time.monotonic()
    last: dict[str, float] = {}
    while time.monotonic() - started < timeout:
        try:
            last = alive_ips(probe_cluster(head, tasks=False, timeout=20))
        except AssertionError:
            last = {}
        if all(last.get(ip) == CPUS[name] for name, ip in IPS.items()):
            return time.monotonic() - started
        time.sleep(2)
    pytest.fail(f"not all nodes alive after {timeout:.0f} s: {last}")
