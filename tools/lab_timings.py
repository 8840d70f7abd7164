"""Provisioning timings of the lab (`./lab timings`): cold converge, idempotent re-run, a worker added
with --limit, and a cold converge without the wheelhouse; results/provisioning.json."""

from __future__ import annotations

import json
import os
import platform
import re
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
PROVISIONING_SCHEMA = "bittrader-provisioning-timings/1"
# The targets of the provisioning timings: an idempotent re-run of site.yml on the 3-node lab under
# 30 s, and under a quarter of a cold converge.
IDEMPOTENT_MAX_S = 30.0
IDEMPOTENT_MAX_FRACTION = 0.25


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """Per-host counters of the PLAY RECAP in ansible-playbook's output (the last recap wins)."""
    hosts: dict[str, dict[str, int]] = {}
    for m in RECAP_LINE.finditer(output):
        hosts[m["host"]] = {k: int(v) for k, v in m.groupdict().items() if k != "host"}
    return hosts


def timed_playbook(inventory: Path, path: str, *extra: str) -> dict[str, object]:
    """Run a playbook (its output shown as it runs) and return its wall time, exit code and recap."""
    cmd = ["ansible-playbook", "-i", str(inventory), str(lab.REPO / path), *extra]
    print("+ " + " ".join(cmd), flush=True)
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
        "rc": rc,
        "hosts": recap,
        "changed": sum(h["changed"] for h in recap.values()),
        "failed": sum(h["failed"] + h["unreachable"] for h in recap.values()),
        "tasks_ok": sum(h["ok"] for h in recap.values()),
    }


def provisioning_report(
    cold: dict[str, object],
    idempotent: dict[str, object] | None,
    add_worker: dict[str, object] | None,
    cold_index: dict[str, object] | None = None,
    **context: object,
) -> dict[str, object]:
    """The provisioning timings and whether they meet the targets (IDEMPOTENT_MAX_S, _FRACTION).

    cold_index is the cold converge without the wheelhouse (each node installs from the package
    index), when it was measured. A run that was not reached (an earlier one failed) is None and
    fails the targets it decides.
    """

    def seconds(run: dict[str, object]) -> float:
        return float(run["seconds"])  # type: ignore[arg-type]

    fraction = seconds(idempotent) / seconds(cold) if idempotent is not None and seconds(cold) > 0 else None
    saved = None
    if cold_index is not None and cold["rc"] == 0 and cold_index["rc"] == 0:
        saved = round(seconds(cold_index) - seconds(cold), 1)
    return {
        "schema": PROVISIONING_SCHEMA,
        **context,
        "cold_converge": cold,
        "idempotent_rerun": idempotent,
        "add_worker": add_worker,
        "cold_converge_index": cold_index,
        "wheelhouse_saved_s": saved,
        "idempotent_fraction_of_cold": None if fraction is None else round(fraction, 3),
        "targets": {"idempotent_max_s": IDEMPOTENT_MAX_S, "idempotent_max_fraction": IDEMPOTENT_MAX_FRACTION},
        "ok": {
            "runs": idempotent is not None
            and add_worker is not None
            and all(run["rc"] == 0 for run in (cold, idempotent, add_worker, cold_index) if run is not None),
            "idempotent_changed_0": idempotent is not None and idempotent["changed"] == 0,
            "idempotent_under_max_s": idempotent is not None and seconds(idempotent) < IDEMPOTENT_MAX_S,
            "idempotent_under_fraction": fraction is not None and fraction < IDEMPOTENT_MAX_FRACTION,
        },
    }


def provisioning_table(report: dict[str, object]) -> str:
    """A short text table of a provisioning report."""
    rows = [("run", "wall", "changed", "failed", "rc")]
    for key, label in (
        ("cold_converge", "cold converge"),
        ("idempotent_rerun", "idempotent re-run"),
        ("add_worker", "add a worker (--limit)"),
        ("cold_converge_index", "cold converge, no wheelhouse"),
    ):
        run = report.get(key)
        if isinstance(run, dict):
            rows.append(
                (label, f"{float(run['seconds']):.1f} s", str(run["changed"]), str(run["failed"]), str(run["rc"]))
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    fraction = report.get("idempotent_fraction_of_cold")
    if fraction is not None:
        lines.append(
            f"idempotent / cold = {float(fraction):.2f} (targets: < {IDEMPOTENT_MAX_S:g} s and "  # type: ignore[arg-type]
            f"< {IDEMPOTENT_MAX_FRACTION:g} of cold)"
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
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
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

