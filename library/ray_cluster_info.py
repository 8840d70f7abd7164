#!/usr/bin/python
"""Ansible module: read a Ray cluster's nodes and check them against the inventory."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ray_cluster_info
short_description: Read a Ray cluster's nodes and check them against what the inventory expects
description:
  - Connects to the Ray cluster at I(address) with the cluster's auth token, using the Python of the
    node's Ray virtual environment, and returns every node (alive, address, hostname, CPUs, memory,
    object store, GPUs) and, with I(probe_tasks), the Ray and Python versions a task saw on each alive node,
    and the strategy code it sees (C(bittrader_code_mode) - the commit of a git checkout, a fingerprint
    of a synced folder's files, or nothing when each job ships its code).
  - With I(expected_nodes), waits up to I(wait_timeout) seconds until every expected node is alive
    with its CPUs and GPUs and the cluster has at least I(min_total_cpus) CPUs; fails otherwise, naming the
    missing or dead hosts and the CPU shortfall.
  - Reads only; runs the same in check mode.
version_added: "1.0.0"
author: Bittrader
options:
  address:
    description: The cluster's GCS address, C(HEAD_IP:PORT).
    type: str
    required: true
  python:
    description: Python of the node's Ray virtual environment (it must match the cluster's Ray and Python).
    type: path
    required: true
  token_file:
    description: File holding the cluster's auth token; passed to Ray as C(RAY_AUTH_TOKEN_PATH), never read here.
    type: path
  expected_nodes:
    description:
      - Nodes the inventory expects, each with C(name), C(ip) and optionally C(cpus), C(gpus) and C(code)
        (C(mode) working_dir, folder or git, and for git the pinned commit as C(version)).
      - C(gpus) none leaves the count to Ray's detection; a node whose probe task sees another number of
        NVIDIA GPUs than Ray counts then gives a warning.
      - With I(probe_tasks), a node whose code differs fails the check; synced folders whose files
        differ between nodes give a warning.
    type: list
    elements: dict
    default: []
  min_total_cpus:
    description: CPUs the alive nodes must add up to at least.
    type: float
  ray_version:
    description: Ray release every node must run (checked with I(probe_tasks)).
    type: str
  python_version:
    description: Python release every node must run (checked with I(probe_tasks)).
    type: str
  probe_tasks:
    description: Run a zero-CPU task on every alive node to read its versions and prove it runs work.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to keep trying until the expectations hold; 0 checks once.
    type: int
    default: 0
  probe_timeout:
    description: Seconds one probe of the cluster may take.
    type: int
    default: 120
requirements:
  - Ray in the virtual environment named by I(python).
notes:
  - Supports check mode; changes nothing.
"""

EXAMPLES = r"""
- name: Wait until every inventory host is alive with its CPUs
  ray_cluster_info:
    address: "{{ bittrader_head_address }}"
    python: "{{ bittrader_venv_python }}"
    token_file: "{{ bittrader_token_file }}"
    expected_nodes:
      - {name: head, ip: 100.77.179.14, cpus: 0}
      - {name: air, ip: 100.77.179.15, gpus: 0, code: {mode: folder}}
      - {name: rig, ip: 100.77.179.16, cpus: 16, gpus: 2}
    min_total_cpus: 10
    ray_version: 2.60.0
    python_version: 3.12.12
    wait_timeout: 120
  register: cluster

- name: Print the alive nodes
  ansible.builtin.debug:
    msg: "{{ cluster.summary.alive_nodes }} nodes, {{ cluster.summary.cpus }} CPUs"
"""

RETURN = r"""
nodes:
  description: Every node the cluster knows, alive or dead.
  returned: always
  type: list
  elements: dict
  sample: [{node_id: "a1b2", alive: true, ip: "100.77.179.14", hostname: head, cpus: 0, gpus: 0, memory: 8.5e9,
            object_store_memory: 2.1e9, is_head: true,
            task: {ray: 2.60.0, python: 3.12.12, nvidia_gpus: 0, code: {mode: git, commit: 0a1b2c..., on_path: true}}}]
rows:
  description: One row per expected host (host, ip, state, cpus, gpus, memory_gb, object_store_gb, ray, python, code).
  returned: always
  type: list
  elements: dict
summary:
  description: Alive and dead nodes, CPUs, GPUs, memory and object store (GiB) of the alive nodes.
  returned: always
  type: dict
  sample: {alive_nodes: 3, dead_nodes: 0, cpus: 22, gpus: 2, memory_gb: 17.2, object_store_gb: 7.4}
problems:
  description: Why the expectations do not hold; empty when they do.
  returned: always
  type: list
  elements: str
warnings_found:
  description: Nodes in the cluster that the inventory does not name; GPUs Ray does not count.
  returned: always
  type: list
  elements: str
attempts:
  description: Probes made before the expectations held or the time ran out.
  returned: always
  type: int
elapsed:
  description: Seconds spent.
  returned: always
  type: float
"""

import json
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.bittrader_cluster import PROBE, evaluate, parse_probe_output


def probe(module: AnsibleModule, params: dict[str, Any]) -> dict[str, Any]:
    """Run the probe once with the venv's Python; returns its JSON or raises RuntimeError."""
    env = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    if params["token_file"]:
        env["RAY_AUTH_TOKEN_PATH"] = params["token_file"]
    args = json.dumps({"address": params["address"], "tasks": params["probe_tasks"],
                       "task_timeout": max(10, params["probe_timeout"] - 30)})
    rc, out, err = module.run_command([params["python"], "-c", PROBE, args], environ_update=env, check_rc=False)
    if rc != 0:
        tail = "\n".join((err or out).strip().splitlines()[-5:])
        raise RuntimeError(f"cannot read the cluster at {params['address']} (exit {rc}): {tail}")
    return parse_probe_output(out)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            address=dict(type="str", required=True),
            python=dict(type="path", required=True),
            token_file=dict(type="path", no_log=False),
            expected_nodes=dict(type="list", elements="dict", default=[]),
            min_total_cpus=dict(type="float"),
            ray_version=dict(type="str"),
            python_version=dict(type="str"),
            probe_tasks=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=0),
            probe_timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for exp in params["expected_nodes"]:
        if "name" not in exp or "ip" not in exp:
            module.fail_json(msg=f"each of expected_nodes needs name and ip, got {exp!r}")
    started = time.monotonic()
    deadline = started + max(0, params["wait_timeout"])
    attempts = 0
    result: dict[str, Any] = {}
    nodes: list[dict[str, Any]] = []
    while True:
        attempts += 1
        try:
            data = probe(module, params)
            nodes = data["nodes"]
            result = evaluate(nodes, params["expected_nodes"], params["min_total_cpus"],
                              params["ray_version"], params["python_version"])
        except (RuntimeError, ValueError, KeyError) as exc:
            result = {"problems": [str(exc)], "warnings": [], "summary": {}, "rows": []}
        if not result["problems"] or time.monotonic() >= deadline:
            break
        time.sleep(3)
    output = dict(
        changed=False,
        nodes=nodes,
        rows=result["rows"],
        summary=result["summary"],
        problems=result["problems"],
        warnings_found=result["warnings"],
        attempts=attempts,
        elapsed=round(time.monotonic() - started, 1),
    )
    if result["problems"]:
        module.fail_json(msg="The cluster does not match the inventory: " + "; ".join(result["problems"]), **output)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
