#!/usr/bin/python
"""Ansible module: read a Ray cluster's nodes (read-only; never fails because of what it finds)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ray_cluster_info
short_description: Read a Ray cluster's nodes, CPUs, memory, GPUs and versions
description:
  - Connects to the Ray cluster at I(address) with the cluster's auth token, using the Python of the
    node's Ray virtual environment, and returns every node (alive, address, hostname, CPUs, memory,
    object store, GPUs) with a summary of the alive ones.
  - With I(probe_tasks), also what a zero-CPU task saw on each alive node - its Ray and Python versions,
    host, user, NVIDIA GPUs and the strategy code it sees (C(bittrader_code_mode)) - and the versions of
    the Python that read the cluster (C(driver)).
  - Reports only. It never fails because of what it finds (dead nodes, a node that did not run its task,
    other versions); compare the result with what you expect, or use M(ray_cluster_check), which waits
    and fails with the mismatch. It fails only when the cluster cannot be read at all.
  - Runs the probe C(python -m bittrader_node_agent.cluster_probe), which the node agent package puts in
    every node's Ray virtual environment.
version_added: "1.0.0"
author: Bittrader
extends_documentation_fragment:
  - bittrader_cluster
options:
  probe_timeout:
    description: Seconds the probe of the cluster may take (its tasks get 30 seconds less, at least 10).
    type: int
    default: 120
attributes:
  check_mode:
    details: Reads only; runs the same in check mode.
notes:
  - Run it on (or delegate it to) the head, as the account Ray runs as.
seealso:
  - module: ray_cluster_check
"""

EXAMPLES = r"""
- name: Read the cluster
  ray_cluster_info:
    address: "{{ bittrader_head_address }}"
    python: "{{ bittrader_venv_python }}"
    token_file: "{{ bittrader_token_file }}"
  register: cluster

- name: Print the alive nodes
  ansible.builtin.debug:
    msg: "{{ cluster.summary.alive_nodes }} nodes, {{ cluster.summary.cpus }} CPUs"

- name: Count the nodes that give Ray CPUs, without running tasks
  ray_cluster_info:
    address: "{{ bittrader_head_address }}"
    python: "{{ bittrader_venv_python }}"
    token_file: "{{ bittrader_token_file }}"
    probe_tasks: false
  register: cluster
"""

RETURN = r"""
nodes:
  description:
    - Every node the cluster knows, alive or dead.
    - C(task) is what its probe task saw (none without I(probe_tasks)), or C(error) when it ran none.
  returned: success
  type: list
  elements: dict
  sample: [{node_id: "a1b2", alive: true, ip: "100.77.179.14", hostname: head, cpus: 0, gpus: 0, memory: 8.5e9,
            object_store_memory: 2.1e9, is_head: true, death_reason: "",
            task: {ray: 2.60.0, python: 3.12.12, nvidia_gpus: 0, code: {mode: git, commit: 0a1b2c..., on_path: true}}}]
summary:
  description: Alive and dead nodes, CPUs, GPUs, memory and object store (GiB) of the alive nodes.
  returned: success
  type: dict
  sample: {alive_nodes: 3, dead_nodes: 0, cpus: 22, gpus: 2, memory_gb: 17.2, object_store_gb: 7.4}
driver:
  description: Ray and Python versions of the interpreter that read the cluster (I(python)).
  returned: success
  type: dict
  sample: {ray: 2.60.0, python: 3.12.12}
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.bittrader_cluster import run_probe, summarize

ARGUMENT_SPEC: dict[str, Any] = dict(
    address=dict(type="str", required=True),
    python=dict(type="path", required=True),
    token_file=dict(type="path", no_log=False),
    probe_tasks=dict(type="bool", default=True),
    probe_timeout=dict(type="int", default=120),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        data = run_probe(module.run_command, module.params)
        nodes = list(data["nodes"])
    except (RuntimeError, ValueError, KeyError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=False,
        nodes=nodes,
        summary=summarize(nodes),
        driver={"ray": data.get("driver_ray", ""), "python": data.get("driver_python", "")},
    )


if __name__ == "__main__":
    main()
