"""Shared logic of the modules ray_cluster_info and ray_cluster_check: how they run the cluster probe on
the head (a module of the node agent, bittrader_node_agent.cluster_probe) and read its answer, the
cluster's summary, the comparison of what the cluster reports with what the inventory expects, and the
wait until it matches. Pure Python, unit-tested (tests/unit/test_cluster_info.py, test_cluster_check.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

MARKER = "BITTRADER_PROBE_JSON:"


# The probe is a module of the node agent package, installed in every node's Ray virtual environment:
#   RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=... <venv>/bin/python -m bittrader_node_agent.cluster_probe ARGS
# (node_agent/src/bittrader_node_agent/cluster_probe.py). It prints one line MARKER + JSON with every node
# and, with tasks, what a task on each alive node saw.
PROBE_MODULE = "bittrader_node_agent.cluster_probe"


def probe_command(python: str, address: str, tasks: bool = True, probe_timeout: int = 120) -> list[str]:
    """The probe's command line: the venv's Python, the module, and its one JSON argument. A task gets
    the probe's time less 30 s (at least 10) for Ray's connection and shutdown."""
    args = json.dumps({"address": address, "tasks": bool(tasks), "task_timeout": max(10, int(probe_timeout) - 30)})
    return [python, "-m", PROBE_MODULE, args]


def probe_environment(token_file: str | None) -> dict[str, str]:
    """What the probe's process needs: token authentication (the token read by Ray from token_file)."""
    env = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    if token_file:
        env["RAY_AUTH_TOKEN_PATH"] = token_file
    return env


def run_probe(run_command: Callable[..., tuple[int, str, str]], params: Mapping[str, Any]) -> dict[str, Any]:
    """Run the probe once through a module's run_command with its params (python, address, token_file,
    probe_tasks, probe_timeout); returns the probe's JSON, or raises RuntimeError naming the address."""
    argv = probe_command(params["python"], params["address"], params["probe_tasks"], params["probe_timeout"])
    rc, out, err = run_command(argv, environ_update=probe_environment(params.get("token_file")), check_rc=False)
    if rc != 0:
        tail = "\n".join((err or out).strip().splitlines()[-5:])
        if "No module named" in tail and PROBE_MODULE.split(".", 1)[0] in tail:
            tail += f" (the node agent package is not installed in the environment of {params['python']})"
        raise RuntimeError(f"cannot read the cluster at {params['address']} (exit {rc}): {tail}")
    return parse_probe_output(out)


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

    expected_nodes: [{"name": host, "ip": address, "cpus": int or None, "gpus": int or None, "code":
    {"mode", "version"} or None}]. Returns problems (each a sentence naming the host), warnings, the
    summary, and one row per inventory host.
    """
    current = latest_nodes(nodes)
    by_ip = {str(n.get("ip")): n for n in current}
    problems: list[str] = []
    warnings: list[str] = []
    rows: list[dict[str, Any]] = []
    folder_prints: dict[str, list[str]] = {}
    expected_ips = set()
    for exp in expected_nodes:
        name, ip = str(exp["name"]), str(exp["ip"])
        expected_ips.add(ip)
        node = by_ip.get(ip)
        row: dict[str, Any] = {"host": name, "ip": ip, "state": "missing", "cpus": "-", "gpus": "-", "memory_gb": "-",
                               "object_store_gb": "-", "ray": "-", "python": "-", "code": "-"}
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
                gpus=_num(node.get("gpus")),
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
            if isinstance(task.get("code"), dict):
                row["code"] = code_label(task["code"])
                problems.extend(f"{name} ({ip}) {p}" for p in code_problems(task["code"], exp.get("code")))
                if task["code"].get("mode") == "folder" and task["code"].get("sha256"):
                    folder_prints.setdefault(str(task["code"]["sha256"]), []).append(name)
            want = exp.get("cpus")
            if want not in (None, "") and float(node.get("cpus") or 0) != float(want):
                problems.append(f"{name} ({ip}) gives Ray {_num(node.get('cpus'))} CPUs, the inventory expects {want}")
            gpu_problem, gpu_warning = gpu_check(node, exp.get("gpus"))
            if gpu_problem:
                problems.append(f"{name} ({ip}) {gpu_problem}")
            if gpu_warning:
                warnings.append(f"{name} ({ip}) {gpu_warning}")
        rows.append(row)
    for node in current:
        if str(node.get("ip")) not in expected_ips and node.get("alive"):
            warnings.append(
                f"node {node.get('hostname')} ({node.get('ip')}) is in the cluster but not in the inventory"
            )
    if len(folder_prints) > 1:
        seen = "; ".join(f"{', '.join(hosts)}: sha256 {sha}" for sha, hosts in sorted(folder_prints.items()))
        warnings.append(f"the synced code folders differ ({seen}): a sync client may not have caught up")
    total_cpus = sum(float(n.get("cpus") or 0) for n in current if n.get("alive"))
    if min_total_cpus is not None and total_cpus < float(min_total_cpus):
        problems.append(f"the cluster has {_num(total_cpus)} CPUs, {_num(float(min_total_cpus) - total_cpus)} short "
                        f"of the {_num(min_total_cpus)} the inventory expects")
    return {"problems": problems, "warnings": warnings, "summary": summarize(nodes), "rows": rows}


def summarize(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Alive and dead nodes, and the CPUs, GPUs, memory and object store (GiB) of the alive ones; a
    restarted node counts once (latest_nodes)."""
    alive = [n for n in latest_nodes(nodes) if n.get("alive")]
    return {
        "alive_nodes": len(alive),
        "dead_nodes": len([n for n in nodes if not n.get("alive")]),
        "cpus": _num(sum(float(n.get("cpus") or 0) for n in alive)),
        "gpus": _num(sum(float(n.get("gpus") or 0) for n in alive)),
        "memory_gb": round(sum(float(n.get("memory") or 0) for n in alive) / 2**30, 1),
        "object_store_gb": round(sum(float(n.get("object_store_memory") or 0) for n in alive) / 2**30, 2),
    }


ROW_COLUMNS = ("host", "ip", "state", "cpus", "gpus", "memory_gb", "object_store_gb", "ray", "python", "code")


def rows_table(rows: list[Mapping[str, Any]], columns: tuple[str, ...] = ROW_COLUMNS) -> str:
    """The rows as a plain-text table (the check's failure message; verify prints the same columns)."""
    cells = [[str(c) for c in columns]] + [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def check_until(
    read: Callable[[], list[dict[str, Any]]],
    judge: Callable[[list[dict[str, Any]]], dict[str, Any]],
    wait_timeout: float,
    poll_interval: float = 3.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Read the cluster and judge it until judge finds no problem or wait_timeout seconds have passed (0:
    once). read raises RuntimeError, ValueError or KeyError when the cluster cannot be read; that counts
    as a problem. Returns the nodes last read, the last judgement and the attempts made."""
    deadline = clock() + max(0.0, float(wait_timeout))
    attempts = 0
    nodes: list[dict[str, Any]] = []
    while True:
        attempts += 1
        try:
            nodes = read()
            result = judge(nodes)
        except (RuntimeError, ValueError, KeyError) as exc:
            result = {"problems": [str(exc)], "warnings": [], "summary": {}, "rows": []}
        if not result["problems"] or clock() >= deadline:
            return nodes, result, attempts
        sleep(max(0.1, float(poll_interval)))


def gpu_check(node: dict[str, Any], expected: Any) -> tuple[str, str]:
    """(problem, warning) about the GPUs a node gives Ray, each a phrase or "".

    expected is the inventory's count (bittrader_num_gpus, or 0 on a Mac, whose GPU the roles do not give
    Ray): a node that gives Ray another number fails verify, like a CPU mismatch. None leaves the count to
    Ray's detection: then a node whose probe task saw more or fewer NVIDIA GPUs (NVML) than Ray counts
    gets a warning (a driver installed after Ray started; other vendors' GPUs, which Ray also counts).
    """
    gpus = float(node.get("gpus") or 0)
    if expected not in (None, ""):
        if gpus != float(expected):
            return (f"gives Ray {_num(gpus)} GPUs, the inventory expects {_num(expected)} (bittrader_num_gpus)", "")
        return "", ""
    seen = (node.get("task") or {}).get("nvidia_gpus")
    if isinstance(seen, int) and not isinstance(seen, bool) and float(seen) != gpus:
        return "", (f"has {seen} NVIDIA GPUs but gives Ray {_num(gpus)}: restart its Ray service after installing "
                    "the driver, or set bittrader_num_gpus")
    return "", ""


def code_label(code: dict[str, Any]) -> str:
    """The verify table's cell: the mode and the version the node sees."""
    mode = str(code.get("mode") or "?")
    if mode == "working_dir":
        return "working_dir (each job ships it)"
    label = f"{mode} {code.get('version', '?')}"
    if code.get("label"):
        label += f" VERSION {code['label']}"
    if code.get("files") is not None and code.get("exists"):
        label += f" ({code['files']} files)"
    return label


def code_problems(code: dict[str, Any], expected: dict[str, Any] | None) -> list[str]:
    """What is wrong with the code a node sees, against the inventory's bittrader_code_* (each a phrase)."""
    out: list[str] = []
    mode = str(code.get("mode") or "")
    want = dict(expected or {})
    want_mode = str(want.get("mode") or "")
    if want_mode and mode != want_mode:
        out.append(f"sees {mode} code, the inventory sets bittrader_code_mode {want_mode}")
        return out
    if mode == "working_dir":
        return out
    where = code.get("path") or code.get("root") or "?"
    if not code.get("exists"):
        kind = "checkout" if mode == "git" else "synced folder"
        out.append(f"has no {kind} {where} (missing, or the service user cannot read it)")
        return out
    if not code.get("on_path"):
        out.append(f"does not have {where} on the import path of Ray's workers")
    if code.get("error"):
        out.append(str(code["error"]))
    if mode == "git":
        pinned = str(want.get("version") or code.get("pinned") or "")
        commit = str(code.get("commit") or "")
        if pinned and commit != pinned:
            out.append(f"has commit {commit[:12] or 'none'} checked out, the inventory pins {pinned[:12]}")
    return out


def _num(value: Any) -> Any:
    number = float(value or 0)
    return int(number) if number.is_integer() else round(number, 2)

