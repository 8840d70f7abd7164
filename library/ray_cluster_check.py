#!/usr/bin/python
"""Ansible module: wait until a Ray cluster matches what the inventory expects, else fail naming why."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ray_cluster_check
short_description: Wait until a Ray cluster matches what the inventory expects
description:
  - Reads the Ray cluster at I(address) the way M(ray_cluster_info) does, with the probe
    C(python -m bittrader_node_agent.cluster_probe) of the node agent package, and compares it with
    what the inventory expects.
  - Waits up to I(wait_timeout) seconds, reading the cluster every I(poll_interval) seconds, until every
    one of I(expected_nodes) is alive with its CPUs and GPUs, the cluster has at least I(min_total_cpus)
    CPUs and, with I(probe_tasks), every node ran a task with the pinned Ray and Python and sees the
    strategy code the inventory sets.
  - Fails otherwise, naming the missing or dead hosts, the CPU shortfall and each mismatch, with the table
    of the expected hosts (C(rows)) in the message.
  - Reads only; runs the same in check mode.
version_added: "1.0.0"
author: Bittrader
extends_documentation_fragment:
  - bittrader_cluster
options:
  expected_nodes:
    description:
      - Nodes the inventory expects, each with C(name), C(ip) and optionally C(cpus), C(gpus) and C(code)
        (C(mode) working_dir, folder or git, and for git the pinned commit as C(version)).
      - C(cpus) or C(gpus) none leaves that count unchecked; for GPUs, a node whose probe task sees another
        number of NVIDIA GPUs than Ray counts then gives a warning.
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
  wait_timeout:
    description: Seconds to keep trying until the expectations hold; 0 checks once.
    type: int
    default: 0
  poll_interval:
    description: Seconds between two reads of the cluster while waiting.
    type: int
    default: 3
  probe_timeout:
    description: Seconds one read of the cluster may take (its tasks get 30 seconds less, at least 10).
    type: int
    default: 120
attributes:
  check_mode:
    details: Reads only; waits and checks the same in check mode.
notes:
  - Run it on (or delegate it to) the head, as the account Ray runs as.
  - The playbooks call it through the C(cluster_check) entry point of the C(cluster_facts) role, which
    fills these options from the inventory.
seealso:
  - module: ray_cluster_info
"""

EXAMPLES = r"""
- name: Wait until every inventory host is alive with its CPUs
  ray_cluster_check:
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

- name: The same through the role's entry point, with the inventory's expectations
  ansible.builtin.include_role:
    name: cluster_facts
    tasks_from: cluster_check.yml
"""

RETURN = r"""
nodes:
  description: Every node the cluster knows, alive or dead, at the last read (as M(ray_cluster_info) returns them).
  returned: always
  type: list
  elements: dict
rows:
  description: One row per expected host (host, ip, state, cpus, gpus, memory_gb, object_store_gb, ray, python, code).
  returned: always
  type: list
  elements: dict
  sample: [{host: rig, ip: 100.77.179.16, state: alive, cpus: 16, gpus: 2, memory_gb: 60.1, object_store_gb: 8.0,
            ray: 2.60.0, python: 3.12.12, code: "git 0a1b2c3d4e5f"}]
table:
  description: C(rows) as a plain-text table, as the failure message shows it.
  returned: always
  type: str
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
  description: Nodes in the cluster the inventory does not name; GPUs Ray does not count; synced folders that differ.
  returned: always
  type: list
  elements: str
attempts:
  description: Reads of the cluster made before the expectations held or the time ran out.
  returned: always
  type: int
elapsed:
  description: Seconds spent.
  returned: always
  type: float
"""

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.bittrader_cluster import check_until, evaluate, rows_table, run_probe

ARGUMENT_SPEC: dict[str, Any] = dict(
    address=dict(type="str", required=True),
    python=dict(type="path", required=True),
    token_file=dict(type="path", no_log=False),
    expected_nodes=dict(type="list", elements="dict", default=[]),
    min_total_cpus=dict(type="float"),
    ray_version=dict(type="str"),
    python_version=dict(type="str"),
    probe_tasks=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=0),
    poll_interval=dict(type="int", default=3),
    probe_timeout=dict(type="int", default=120),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    for exp in params["expected_nodes"]:
        if "name" not in exp or "ip" not in exp:
            module.fail_json(msg=f"each of expected_nodes needs name and ip, got {exp!r}")
    started = time.monotonic()

    def read() -> list[dict[str, Any]]:
        return list(run_probe(module.run_command, params)["nodes"])

    def judge(nodes: list[dict[str, Any]]) -> dict[str, Any]:
        return evaluate(nodes, params["expected_nodes"], params["min_total_cpus"], params["ray_version"],
                        params["python_version"])

    nodes, result, attempts = check_until(read, judge, params["wait_timeout"], params["poll_interval"])
    table = rows_table(result["rows"]) if result["rows"] else ""
    output = dict(
        changed=False,
        nodes=nodes,
        rows=result["rows"],
        table=table,
        summary=result["summary"],
        problems=result["problems"],
        warnings_found=result["warnings"],
        attempts=attempts,
        elapsed=round(time.monotonic() - started, 1),
    )
    if result["problems"]:
        msg = "The cluster does not match the inventory: " + "; ".join(result["problems"])
        module.fail_json(msg=msg + ("\n" + table if table else ""), **output)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
