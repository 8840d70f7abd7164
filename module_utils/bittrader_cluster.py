"""Shared logic of the cluster verification module: the probe run on the head, and the comparison
of what the cluster reports with what the inventory expects. Pure Python, unit-tested."""

from __future__ import annotations

import json
from typing import Any

MARKER = "BITTRADER_PROBE_JSON:"

# Run by the node's own Python (the Ray virtual environment), not by Ansible's interpreter:
#   python -c PROBE '{"address": "IP:6379", "tasks": true, "task_timeout": 60}'
# Prints one line MARKER + JSON with every node, and (with tasks) what a task on each alive node saw.
PROBE = r'''
import json, os, platform, socket, sys, time
args = json.loads(sys.argv[1])
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=args["address"], logging_level="ERROR", log_to_driver=False, configure_logging=False)
nodes = ray.nodes()
# ray.nodes() gives the resources a node registered with; the scheduler's live totals (changed by
# the throttle's in-place resize) come from the GCS resource view.
try:
    from ray._private import state
    live_totals = state.total_resources_per_node()
except Exception:
    live_totals = {}

@ray.remote(num_cpus=0, max_retries=0)
def where():
    import importlib.metadata as m
    try:
        import psutil
        mem = psutil.virtual_memory().total
    except Exception:
        mem = None
    return {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "node_id": ray.get_runtime_context().get_node_id(),
        "system": platform.system(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "host_memory": mem,
        "pid": os.getpid(),
        "user": os.environ.get("USER") or os.environ.get("USERNAME") or "",
        "uid": os.getuid() if hasattr(os, "getuid") else None,
    }

seen = {}
if args.get("tasks"):
    refs = {}
    for node in nodes:
        if node.get("Alive"):
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            refs[node["NodeID"]] = where.options(scheduling_strategy=strategy).remote()
    deadline = time.time() + float(args.get("task_timeout", 60))
    for node_id, ref in refs.items():
        try:
            seen[node_id] = ray.get(ref, timeout=max(1.0, deadline - time.time()))
        except Exception as exc:
            seen[node_id] = {"error": type(exc).__name__ + ": " + str(exc)[:300]}
out = []
for node in nodes:
    res = dict(node.get("Resources") or {})
    res.update(live_totals.get(node.get("NodeID"), {}))
    out.append({
        "node_id": node.get("NodeID"),
        "alive": bool(node.get("Alive")),
        "ip": node.get("NodeManagerAddress"),
        "hostname": node.get("NodeManagerHostname"),
        "cpus": res.get("CPU", 0.0),
        "memory": res.get("memory", 0.0),
        "object_store_memory": res.get("object_store_memory", 0.0),
        "is_head": any(k.startswith("node:__internal_head__") for k in res),
        "death_reason": node.get("DeathReasonMessage") or "",
        "task": seen.get(node.get("NodeID")),
    })
ray.shutdown()
summary = {"nodes": out, "driver_ray": ray.__version__, "driver_python": platform.python_version()}
print("BITTRADER_PROBE_JSON:" + json.dumps(summary))
'''


def parse_probe_output(stdout: str) -> dict[str, Any]:
    """The probe's JSON, from the line that starts with MARKER (Ray may print other lines)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            data: dict[str, Any] = json.loads(line[len(MARKER):])
            return data
    raise ValueError("the probe printed no result line")


def latest_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per address: the alive node when there is one (a restarted node leaves dead entries)."""
    by_ip: dict[str, dict[str, Any]] = {}
    for node in nodes:
        ip = str(node.get("ip"))
        current = by_ip.get(ip)
        if current is None or (node.get("alive") and not current.get("alive")):
            by_ip[ip] = node
    return list(by_ip.values())


def evaluate(
    nodes: list[dict[str, Any]],
    expected_nodes: list[dict[str, Any]],
    min_total_cpus: float | None = None,
    ray_version: str | None = None,
    python_version: str | None = None,
) -> dict[str, Any]:
    """Compare the cluster's nodes with the inventory's expectations.

    expected_nodes: [{"name": host, "ip": address, "cpus": int or None}]. Returns problems (each a
    sentence naming the host), warnings, the summary, and one row per inventory host.
    """
    current = latest_nodes(nodes)
    by_ip = {str(n.get("ip")): n for n in current}
    problems: list[str] = []
    warnings: list[str] = []
    rows: list[dict[str, Any]] = []
    expected_ips = set()
    for exp in expected_nodes:
        name, ip = str(exp["name"]), str(exp["ip"])
        expected_ips.add(ip)
        node = by_ip.get(ip)
        row: dict[str, Any] = {"host": name, "ip": ip, "state": "missing", "cpus": "-", "memory_gb": "-",
                               "object_store_gb": "-", "ray": "-", "python": "-"}
        if node is None:
            problems.append(f"{name} ({ip}) has not joined the cluster")
        elif not node.get("alive"):
            row["state"] = "dead"
            reason = node.get("death_reason") or "no reason given"
            problems.append(f"{name} ({ip}) is dead: {reason}")
        else:
            row.update(
                state="alive",
                cpus=_num(node.get("cpus")),
                memory_gb=round(float(node.get("memory") or 0) / 2**30, 1),
                object_store_gb=round(float(node.get("object_store_memory") or 0) / 2**30, 2),
            )
            task = node.get("task") or {}
            if task.get("error"):
                problems.append(f"{name} ({ip}) did not run a task: {task['error']}")
            if task.get("ray"):
                row.update(ray=task["ray"], python=task["python"])
                if ray_version and task["ray"] != ray_version:
                    problems.append(f"{name} ({ip}) runs Ray {task['ray']}, the cluster pins {ray_version}")
                if python_version and task["python"] != python_version:
                    problems.append(f"{name} ({ip}) runs Python {task['python']}, the cluster pins {python_version}")
                if task.get("uid") == 0:
                    problems.append(f"{name} ({ip}) runs Ray as root")
            want = exp.get("cpus")
            if want not in (None, "") and float(node.get("cpus") or 0) != float(want):
                problems.append(f"{name} ({ip}) gives Ray {_num(node.get('cpus'))} CPUs, the inventory expects {want}")
        rows.append(row)
    for node in current:
        if str(node.get("ip")) not in expected_ips and node.get("alive"):
            warnings.append(
                f"node {node.get('hostname')} ({node.get('ip')}) is in the cluster but not in the inventory"
            )
    alive = [n for n in current if n.get("alive")]
    total_cpus = sum(float(n.get("cpus") or 0) for n in alive)
    if min_total_cpus is not None and total_cpus < float(min_total_cpus):
        problems.append(f"the cluster has {_num(total_cpus)} CPUs, {_num(float(min_total_cpus) - total_cpus)} short "
                        f"of the {_num(min_total_cpus)} the inventory expects")
    summary = {
        "alive_nodes": len(alive),
        "dead_nodes": len([n for n in nodes if not n.get("alive")]),
        "cpus": _num(total_cpus),
        "memory_gb": round(sum(float(n.get("memory") or 0) for n in alive) / 2**30, 1),
        "object_store_gb": round(sum(float(n.get("object_store_memory") or 0) for n in alive) / 2**30, 2),
    }
    return {"problems": problems, "warnings": warnings, "summary": summary, "rows": rows}


def _num(value: Any) -> Any:
    number = float(value or 0)
    return int(number) if number.is_integer() else round(number, 2)

