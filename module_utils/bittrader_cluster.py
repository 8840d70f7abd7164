"""Shared logic of the cluster verification module: the probe run on the head, and the comparison
of what the cluster reports with what the inventory expects. Pure Python, unit-tested."""

from __future__ import annotations

import inspect
import json
from typing import Any

MARKER = "BITTRADER_PROBE_JSON:"


def code_info(site_dir: str | None = None, sys_path: list[str] | None = None, max_files: int = 5000,
              max_file_bytes: int = 1 << 20) -> dict[str, Any]:
    """Which strategy code this Python sees (run inside a Ray task on each node by the probe).

    Reads the .pth file that the roles put in the venv's site-packages (bittrader_code_mode folder or
    git; none in working_dir mode, where each job ships its code). Returns mode, root, path, whether the
    folder exists and is on this process's import path, the checkout's commit (git mode, read from
    .git without running git) and a fingerprint of the folder's files: sha256 over the relative names
    and contents of every file up to max_file_bytes (larger ones by size), skipping hidden entries,
    __pycache__ and .pyc files. A VERSION file's first line is returned as label.
    Self-contained (standard library only): the probe sends its source to the nodes.
    """
    import hashlib
    import json as _json
    import os
    import sys
    import sysconfig

    site = site_dir if site_dir is not None else sysconfig.get_path("purelib")
    path_list = list(sys.path if sys_path is None else sys_path)
    pth = os.path.join(site, "bittrader_code.pth")
    try:
        with open(pth, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {"mode": "working_dir", "version": "shipped with each job"}
    header: dict[str, Any] = {}
    for line in lines:
        if line.startswith("# bittrader-code "):
            try:
                header = _json.loads(line[len("# bittrader-code "):])
            except ValueError:
                header = {}
    mode = str(header.get("mode") or "folder")
    root = str(header.get("root") or "")
    path = str(header.get("path") or root)
    info: dict[str, Any] = {"mode": mode, "root": root, "path": path, "pinned": str(header.get("version") or ""),
                            "exists": os.path.isdir(path), "error": ""}
    norm = os.path.normcase(os.path.abspath(path)) if path else ""
    info["on_path"] = bool(norm) and any(
        os.path.normcase(os.path.abspath(entry)) == norm for entry in path_list if entry)
    if not info["exists"]:
        info["version"] = "missing"
        return info
    if mode == "git":
        commit = ""
        gitdir = os.path.join(root, ".git")
        try:
            if os.path.isfile(gitdir):  # a worktree or submodule: "gitdir: PATH"
                with open(gitdir, encoding="utf-8") as handle:
                    gitdir = os.path.join(root, handle.read().split(":", 1)[1].strip())
            with open(os.path.join(gitdir, "HEAD"), encoding="utf-8") as handle:
                head = handle.read().strip()
            if head.startswith("ref: "):
                ref = head[5:]
                ref_file = os.path.join(gitdir, *ref.split("/"))
                if os.path.isfile(ref_file):
                    with open(ref_file, encoding="utf-8") as handle:
                        commit = handle.read().strip()
                else:
                    with open(os.path.join(gitdir, "packed-refs"), encoding="utf-8") as handle:
                        for line in handle:
                            parts = line.split()
                            if len(parts) == 2 and parts[1] == ref:
                                commit = parts[0]
            else:
                commit = head
        except (OSError, IndexError) as exc:
            info["error"] = f"cannot read the checkout's commit: {exc}"
        info["commit"] = commit
    digest = hashlib.sha256()
    count = 0
    truncated = False
    label = ""
    # What this process could not read. On a Mac a LaunchDaemon's Python is refused (EPERM, "Operation
    # not permitted") inside privacy-protected folders such as ~/Library/CloudStorage, where os.walk
    # would otherwise just see an empty folder.
    unreadable: list[str] = []

    def _refused(exc: OSError) -> None:
        unreadable.append(f"{getattr(exc, 'filename', '') or path}: {exc.strerror or exc}")

    for current, dirs, files in os.walk(path, onerror=_refused):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                continue
            if count >= max_files:
                truncated = True
                break
            full = os.path.join(current, name)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            try:
                size = os.path.getsize(full)
                if size > max_file_bytes:
                    content = f"size:{size}".encode()
                else:
                    with open(full, "rb") as binary:
                        content = binary.read()
            except OSError as exc:
                _refused(exc)
                continue
            digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + content + b"\0")
            count += 1
            if rel == "VERSION":
                label = content.decode("utf-8", "replace").strip().splitlines()[0][:80] if content.strip() else ""
        if truncated:
            break
    info.update(sha256=digest.hexdigest()[:16], files=count, truncated=truncated, label=label)
    if unreadable:
        hint = ("macOS keeps daemons out of ~/Library/CloudStorage and iCloud Drive: use a plain folder kept in "
                "sync, or git mode" if "/Library/CloudStorage/" in path + "/" or "/Library/Mobile Documents/" in path
                else "give the account Ray runs as read access, or move the code to a plain folder")
        info["error"] = (f"Ray's processes cannot read {len(unreadable)} entries of {path} (first: {unreadable[0]}); "
                         f"{hint}")
    info["version"] = (str(info["commit"])[:12] if mode == "git" and info.get("commit")
                       else f"sha256 {info['sha256']}")
    return info


# Run by the node's own Python (the Ray virtual environment), not by Ansible's interpreter:
#   python -c PROBE '{"address": "IP:6379", "tasks": true, "task_timeout": 60}'
# Prints one line MARKER + JSON with every node, and (with tasks) what a task on each alive node saw.
_PROBE = r'''from __future__ import annotations
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

def nvidia_gpus():
    # The NVIDIA GPUs this host has, as Ray's own detection counts them (NVML: every device, whatever
    # CUDA_VISIBLE_DEVICES says); None when that cannot be read.
    try:
        from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
        return int(NvidiaGPUAcceleratorManager.get_current_node_num_accelerators())
    except Exception:
        return None

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
        "code": code_info(),
        "nvidia_gpus": nvidia_gpus(),
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
        "gpus": res.get("GPU", 0.0),
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
# The probe's tasks call code_info(): its source goes into the script, and Ray sends a function of the
# script (__main__) to the nodes by value.
PROBE = _PROBE.replace("\nimport ray\n", "\n" + inspect.getsource(code_info) + "\nimport ray\n", 1)


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
    alive = [n for n in current if n.get("alive")]
    total_cpus = sum(float(n.get("cpus") or 0) for n in alive)
    if min_total_cpus is not None and total_cpus < float(min_total_cpus):
        problems.append(f"the cluster has {_num(total_cpus)} CPUs, {_num(float(min_total_cpus) - total_cpus)} short "
                        f"of the {_num(min_total_cpus)} the inventory expects")
    summary = {
        "alive_nodes": len(alive),
        "dead_nodes": len([n for n in nodes if not n.get("alive")]),
        "cpus": _num(total_cpus),
        "gpus": _num(sum(float(n.get("gpus") or 0) for n in alive)),
        "memory_gb": round(sum(float(n.get("memory") or 0) for n in alive) / 2**30, 1),
        "object_store_gb": round(sum(float(n.get("object_store_memory") or 0) for n in alive) / 2**30, 2),
    }
    return {"problems": problems, "warnings": warnings, "summary": summary, "rows": rows}


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

