"""Provisioning timings of the lab (`./lab timings`): cold converge, idempotent re-run, a worker added
with --limit, and a cold converge without the wheelhouse; results/provisioning.json.

The targets are ratios measured in one run (machines of one kind differ by up to 2x in absolute
seconds): the idempotent re-run at most IDEMPOTENT_MAX_FRACTION of the cold converge, adding a
worker (`site.yml --limit NEW`) at most ADD_WORKER_MAX_FRACTION of it, with the head unchanged.
tools/lab_scale.py measures the same runs against labs of growing size.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import lab

RECAP_LINE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)
# 2: the targets are ratios of the cold converge only (no absolute seconds); the add-worker ratio
# and the head's changes in the --limit run are reported; each run has the controller's CPU seconds.
PROVISIONING_SCHEMA = "bittrader-provisioning-timings/2"
# The targets (issue #16), as fractions of a cold converge measured in the same run.
IDEMPOTENT_MAX_FRACTION = 0.12
ADD_WORKER_MAX_FRACTION = 0.25


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """Per-host counters of the PLAY RECAP in ansible-playbook's output (the last recap wins)."""
    hosts: dict[str, dict[str, int]] = {}
    for m in RECAP_LINE.finditer(output):
        hosts[m["host"]] = {k: int(v) for k, v in m.groupdict().items() if k != "host"}
    return hosts


def children_cpu_s() -> float:
    """CPU seconds (user and system) of this process's finished children and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_playbook(inventory: Path, path: str, *extra: str) -> dict[str, object]:
    """Run a playbook (its output shown as it runs) and return its wall time, exit code, recap and
    the admin machine's CPU seconds for it (ansible-playbook, its forks and their ssh clients; not
    the nodes' own work)."""
    cmd = ["ansible-playbook", "-i", str(inventory), str(lab.REPO / path), *extra]
    print("+ " + " ".join(cmd), flush=True)
    cpu_before = children_cpu_s()
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=lab.REPO, env=lab.lab_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        rc = proc.wait()
    seconds = time.monotonic() - started
    recap = parse_recap("".join(lines))
    print(f"{path}: {seconds:.1f} s", flush=True)
    return {
        "command": " ".join(["ansible-playbook", path, *extra]),
        "seconds": round(seconds, 1),
        "controller_cpu_s": round(children_cpu_s() - cpu_before, 1),
        "rc": rc,
        "hosts": recap,
        "changed": sum(h["changed"] for h in recap.values()),
        "failed": sum(h["failed"] + h["unreachable"] for h in recap.values()),
        "tasks_ok": sum(h["ok"] for h in recap.values()),
    }


def head_changes(run: dict[str, object]) -> int:
    """Changes the run's recap counts on head hosts (named *-head, as the lab's and lab_scale's)."""
    hosts: dict[str, dict[str, int]] = run["hosts"]  # type: ignore[assignment]
    return sum(c["changed"] for name, c in hosts.items() if lab.is_head_name(name))


def fraction_of(run: dict[str, object] | None, cold: dict[str, object]) -> float | None:
    """run's wall time over the cold converge's, rounded (None when either is missing)."""
    if run is None or float(cold["seconds"]) <= 0:  # type: ignore[arg-type]
        return None
    return round(float(run["seconds"]) / float(cold["seconds"]), 3)  # type: ignore[arg-type]


def provisioning_report(
    cold: dict[str, object],
    idempotent: dict[str, object] | None,
    add_worker: dict[str, object] | None,
    cold_index: dict[str, object] | None = None,
    **context: object,
) -> dict[str, object]:
    """The provisioning timings and whether they meet the targets (IDEMPOTENT_MAX_FRACTION and
    ADD_WORKER_MAX_FRACTION of the cold converge; no change on the head while a worker is added).

    cold_index is the cold converge without the wheelhouse (each node installs from the package
    index), when it was measured. A run that was not reached (an earlier one failed) is None and
    fails the targets it decides.
    """
    idempotent_fraction = fraction_of(idempotent, cold)
    add_fraction = fraction_of(add_worker, cold)
    saved = None
    if cold_index is not None and cold["rc"] == 0 and cold_index["rc"] == 0:
        saved = round(float(cold_index["seconds"]) - float(cold["seconds"]), 1)  # type: ignore[arg-type]
    return {
        "schema": PROVISIONING_SCHEMA,
        **context,
        "cold_converge": cold,
        "idempotent_rerun": idempotent,
        "add_worker": add_worker,
        "cold_converge_index": cold_index,
        "wheelhouse_saved_s": saved,
        "idempotent_fraction_of_cold": idempotent_fraction,
        "add_worker_fraction_of_cold": add_fraction,
        "targets": {
            "idempotent_max_fraction": IDEMPOTENT_MAX_FRACTION,
            "add_worker_max_fraction": ADD_WORKER_MAX_FRACTION,
        },
        "ok": {
            "runs": idempotent is not None
            and add_worker is not None
            and all(run["rc"] == 0 for run in (cold, idempotent, add_worker, cold_index) if run is not None),
            "idempotent_changed_0": idempotent is not None and idempotent["changed"] == 0,
            "idempotent_under_fraction": idempotent_fraction is not None
            and idempotent_fraction <= IDEMPOTENT_MAX_FRACTION,
            "add_worker_under_fraction": add_fraction is not None and add_fraction <= ADD_WORKER_MAX_FRACTION,
            # With --limit the recap lists only the new worker: any head in it that changed fails.
            "add_worker_head_changed_0": add_worker is not None
            and add_worker["rc"] == 0
            and head_changes(add_worker) == 0,
        },
    }


def provisioning_table(report: dict[str, object]) -> str:
    """A short text table of a provisioning report."""
    rows = [("run", "wall", "of cold", "changed", "failed", "rc")]
    for key, label, share_key in (
        ("cold_converge", "cold converge", None),
        ("idempotent_rerun", "idempotent re-run", "idempotent_fraction_of_cold"),
        ("add_worker", "add a worker (--limit)", "add_worker_fraction_of_cold"),
        ("cold_converge_index", "cold converge, no wheelhouse", None),
    ):
        run = report.get(key)
        if isinstance(run, dict):
            share = report.get(share_key) if share_key else None
            rows.append((
                label, f"{float(run['seconds']):.1f} s", "-" if share is None else f"{float(share):.2f}",  # type: ignore[arg-type]
                str(run["changed"]), str(run["failed"]), str(run["rc"]),
            ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    ok: dict[str, bool] = report["ok"]  # type: ignore[assignment]
    fraction = report.get("idempotent_fraction_of_cold")
    if fraction is not None:
        lines.append(
            f"idempotent / cold = {float(fraction):.2f} (target <= {IDEMPOTENT_MAX_FRACTION:g}): "  # type: ignore[arg-type]
            + ("met" if ok["idempotent_under_fraction"] else "missed")
        )
    add_fraction = report.get("add_worker_fraction_of_cold")
    if add_fraction is not None:
        lines.append(
            f"add a worker / cold = {float(add_fraction):.2f} (target <= {ADD_WORKER_MAX_FRACTION:g}): "  # type: ignore[arg-type]
            + ("met" if ok["add_worker_under_fraction"] else "missed")
            + ("; the head unchanged" if ok["add_worker_head_changed_0"] else "; the head CHANGED or the run failed")
        )
    saved = report.get("wheelhouse_saved_s")
    if saved is not None:
        lines.append(f"the wheelhouse saved {float(saved):.1f} s of the cold converge")  # type: ignore[arg-type]
    return "\n".join(lines)


def timings(
    the_lab: lab.Lab, inventory: Path, out: Path, worker: str | None = None, index: bool = True
) -> dict[str, object]:
    """Provisioning timings of the lab, from fresh containers: cold converge, idempotent re-run, and
    one worker's container removed, recreated and provisioned with site.yml --limit. The wheels in the
    controller's wheelhouse (once per machine) and the image are cached; everything else is not.

    With index, the lab is then made again and converged cold without the wheelhouse
    (ray_node_wheelhouse_cache empty): every node downloads the pinned packages from the package
    index itself, as a cluster without wheelhouse mode does. That run needs the index reachable
    from the containers."""
    worker = worker or the_lab.hosts[-1].name
    load_before = os.getloadavg()
    lab.down_containers(the_lab)
    lab.up_containers(the_lab)
    cold = timed_playbook(inventory, "site.yml")
    idempotent: dict[str, object] | None = None
    add_worker: dict[str, object] | None = None
    if cold["rc"] == 0:  # each run needs the one before it to have succeeded
        idempotent = timed_playbook(inventory, "site.yml")
    if idempotent is not None and idempotent["rc"] == 0:
        lab.run(["podman", "rm", "-f", "-t", "5", worker])
        lab.up_containers(the_lab)
        add_worker = {**timed_playbook(inventory, "site.yml", "--limit", worker), "worker": worker}
    cold_index: dict[str, object] | None = None
    if index and add_worker is not None and add_worker["rc"] == 0:
        lab.down_containers(the_lab)
        lab.up_containers(the_lab)
        cold_index = timed_playbook(inventory, "site.yml", "-e", "ray_node_wheelhouse_cache=")
    report = provisioning_report(
        cold,
        idempotent,
        add_worker,
        cold_index,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=machine(load_before),
        nodes=[h.name for h in the_lab.hosts],
        inventory=str(inventory),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(provisioning_table(report))
    print(f"wrote {out}")
    if not report["ok"]["runs"]:  # type: ignore[index]
        raise SystemExit("a provisioning run failed or was not reached: see its output above")
    return report


def machine(load_before: tuple[float, float, float]) -> dict[str, object]:
    """The admin machine a measurement ran on: cores, platform and its load before and after."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
