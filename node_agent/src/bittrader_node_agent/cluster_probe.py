"""The cluster probe: what the Ray cluster reports about its nodes, and what a task on each node sees.

Run on the head by the modules ray_cluster_info and ray_cluster_check (library/), with the Python of the
node's Ray virtual environment, which has this package:

    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=... <venv>/bin/python -m bittrader_node_agent.cluster_probe \
        '{"address": "HEAD_IP:6379", "tasks": true, "task_timeout": 60}'

It prints one line, MARKER followed by JSON: {"nodes": [...], "driver_ray", "driver_python"}, each node with
its resources (the scheduler's live totals, which the throttle resizes) and, with tasks, what a zero-CPU
task pinned to it saw (versions, host, user, GPUs, the strategy code: code_info). Without tasks no driver
joins the cluster: the nodes are read from the GCS alone (read_gcs). The modules parse it with
module_utils/bittrader_cluster.py's parse_probe_output.

Standard library and Ray only. Run with -m, this module is __main__, so Ray pickles the task function
and the helpers it calls by value: the nodes need not have this package installed to answer.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

# The result line's prefix (Ray may print other lines). module_utils/bittrader_cluster.py has the same
# constant for the parser; tests/unit/test_cluster_probe.py checks that they agree.
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
    Self-contained (standard library only, imports inside): Ray sends it to the nodes by value when this
    file runs as __main__, so a node without the package still answers.
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


def nvidia_gpus() -> int | None:
    """The NVIDIA GPUs this host has, as Ray's own detection counts them (NVML: every device, whatever
    CUDA_VISIBLE_DEVICES says); None when that cannot be read."""
    try:
        from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

        return int(NvidiaGPUAcceleratorManager.get_current_node_num_accelerators())
    except Exception:  # noqa: BLE001 - no driver, no NVML, another Ray: the count is unknown
        return None


def task_report() -> dict[str, Any]:
    """What a task sees on the node it runs on (the body of the probe's zero-CPU task)."""
    import ray

    try:
        import psutil

        mem: int | None = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - psutil missing or unreadable: memory unknown
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


def node_rows(nodes: list[Mapping[str, Any]], live_totals: Mapping[str, Mapping[str, float]],
              seen: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per node of ray.nodes(): its resources (the live totals over the registered ones),
    whether it is alive and the head, why it died, and what its task saw (seen, by node id)."""
    out: list[dict[str, Any]] = []
    for node in nodes:
        res = dict(node.get("Resources") or {})
        res.update(live_totals.get(str(node.get("NodeID")), {}))
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
            "task": seen.get(str(node.get("NodeID"))),
        })
    return out


def read_gcs(address: str) -> tuple[list[Mapping[str, Any]], Mapping[str, Mapping[str, float]]]:
    """Every node (as ray.nodes() gives them) and the scheduler's live totals, read from the GCS alone.

    What ray.nodes() and the state API read, without ray.init(): no driver joins the cluster (a core
    worker, a job left in the GCS's job table at every call). Measured on the lab's head: about 10 %
    less of its CPU per probe than a driver's (importing Ray is most of the rest). Ray's own
    services.wait_for_node reads the node table the same way. The token comes from the
    environment (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH) as for a driver."""
    from ray._private import state
    from ray._raylet import GcsClientOptions  # type: ignore[attr-defined]

    gcs = state.GlobalState()
    gcs._initialize_global_state(  # Ray's own way to read the GCS without a driver
        GcsClientOptions.create(address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False)
    )
    try:
        nodes = list(gcs.node_table())
        try:
            live: Mapping[str, Mapping[str, float]] = gcs.total_resources_per_node()
        except Exception:  # noqa: BLE001 - a Ray without that view: the registered resources stand
            live = {}
    finally:
        gcs.disconnect()
    return nodes, live


def probe(address: str, tasks: bool = True, task_timeout: float = 60.0) -> dict[str, Any]:
    """Read every node of the cluster at address and, with tasks, run task_report on each alive one (as a
    driver); without tasks the nodes are read from the GCS alone (read_gcs)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not tasks:
        table, live = read_gcs(address)
        return {"nodes": node_rows(table, live, {}), "driver_ray": ray.__version__,
                "driver_python": platform.python_version()}
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
    try:
        nodes = ray.nodes()
        # ray.nodes() gives the resources a node registered with; the scheduler's live totals (changed by
        # the throttle's in-place resize) come from the GCS resource view.
        try:
            from ray._private import state

            live_totals: Mapping[str, Mapping[str, float]] = state.total_resources_per_node()
        except Exception:  # noqa: BLE001 - a Ray without that view: the registered resources stand
            live_totals = {}
        seen: dict[str, Any] = {}
        where = ray.remote(num_cpus=0, max_retries=0)(task_report)
        refs = {}
        for node in nodes:
            if node.get("Alive"):
                strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
                refs[str(node["NodeID"])] = where.options(scheduling_strategy=strategy).remote()
        deadline = time.time() + float(task_timeout)
        for node_id, ref in refs.items():
            try:
                seen[node_id] = ray.get(ref, timeout=max(1.0, deadline - time.time()))
            except Exception as exc:  # noqa: BLE001 - any failure of the task is the node's answer
                seen[node_id] = {"error": type(exc).__name__ + ": " + str(exc)[:300]}
        rows = node_rows(nodes, live_totals, seen)
    finally:
        ray.shutdown()
    return {"nodes": rows, "driver_ray": ray.__version__, "driver_python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    """Entry point: one JSON argument ({"address", "tasks", "task_timeout"}), one MARKER line printed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print('usage: python -m bittrader_node_agent.cluster_probe \'{"address": "IP:PORT"}\'', file=sys.stderr)
        return 2
    options = json.loads(args[0])
    result = probe(str(options["address"]), bool(options.get("tasks", True)),
                   float(options.get("task_timeout", 60)))
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
