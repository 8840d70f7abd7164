"""How provisioning grows with the cluster (`./lab scale`): labs of 1 head + N workers.

For each size N (default 2, 4 and 8) a lab of its own is made from fresh containers (PREFIX-head and
PREFIX-worker1..N at .10, .11, ... of the subnet), with an inventory of inventory/lab's layout, host
variables and group_vars; then site.yml cold, site.yml again (idempotent: changed=0) and
playbooks/verify.yml are timed, and the containers are removed before the next size. Writes
results/scale.json (each run's wall and controller CPU seconds and recap, the least-squares cost of
an added worker for each run kind, how the re-run grows, what `forks` allows) and results/scale.png
(time against workers), and prints a table.

    ./lab scale                       # N = 2, 4, 8 on the lab's network and names (bt-*)
    ./lab scale -- 2 4 --network bt-scale --subnet 10.89.43.0/24 --prefix bs
"""

from __future__ import annotations

import argparse
import configparser
import copy
import ipaddress
import json
import math
import os
import time
from pathlib import Path

import lab
import lab_timings
import yaml

SCALE_SCHEMA = "bittrader-scale/1"
SIZES = (2, 4, 8)
# The run kinds measured at each size, in order (each needs the one before it to have succeeded).
RUNS = (("cold", "site.yml"), ("rerun", "site.yml"), ("verify", "playbooks/verify.yml"))
RUN_LABELS = {"cold": "cold converge", "rerun": "idempotent re-run", "verify": "verify"}
# The re-run must grow clearly less than linearly with the workers: time ~ workers^k with k at most
# this (k = 1 is proportional; k = 0.8 makes twice the workers cost at most 1.74x the time).
RERUN_MAX_EXPONENT = 0.8
# The admin machine handles a size well while Ansible's own CPU during the re-run stays under this
# share of its cores (beyond it, the controller is what the run waits for).
CONTROLLER_BUSY_MAX = 0.9
HEAD_OFFSET = 10  # the head at .10 of the subnet, worker i at .10+i (as inventory/lab)


def ansible_forks(cfg: Path = lab.REPO / "ansible.cfg") -> int:
    """[defaults] forks of the project's ansible.cfg (Ansible's default, 5, when unset)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(cfg)
    return parser.getint("defaults", "forks", fallback=5)


def cluster_cidr() -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The lab's bittrader_cluster_cidr (inventory/lab/group_vars/all.yml): the nodes' firewalls
    admit Ray's ports from it, so every scale lab's subnet must lie inside it."""
    group_vars = yaml.safe_load((lab.REPO / "inventory/lab/group_vars/all.yml").read_text())
    return ipaddress.ip_network(group_vars["bittrader_cluster_cidr"])


def scale_hosts(prefix: str, subnet: str, workers: int) -> tuple[lab.LabHost, ...]:
    """PREFIX-head at .10 of the subnet and PREFIX-worker1..N at .11 onwards."""
    net = ipaddress.ip_network(subnet)
    if not net.subnet_of(cluster_cidr()):  # type: ignore[arg-type]
        raise SystemExit(f"--subnet {subnet} is not inside the lab's bittrader_cluster_cidr {cluster_cidr()}")
    if workers < 1 or HEAD_OFFSET + workers >= net.num_addresses - 1:
        raise SystemExit(f"{workers} workers do not fit in {subnet} from .{HEAD_OFFSET + 1}")
    return (
        lab.LabHost(f"{prefix}-head", str(net[HEAD_OFFSET])),
        *(lab.LabHost(f"{prefix}-worker{i}", str(net[HEAD_OFFSET + i])) for i in range(1, workers + 1)),
    )


def scale_inventory(hosts: tuple[lab.LabHost, ...], lab_tree: dict[str, object]) -> dict[str, object]:
    """inventory/lab's groups (lab_tree, its hosts.yml) with other hosts: the head takes the lab
    head's variables, worker i the lab's worker i's (the first lab worker's past the lab's workers:
    the throttle stays where inventory/lab sets it), each with its own bittrader_node_ip."""
    tree = copy.deepcopy(lab_tree)
    head = [h for h in hosts if h.is_head]
    workers = [h for h in hosts if not h.is_head]
    placed = 0

    def place(group: dict[str, object]) -> None:
        nonlocal placed
        old: dict[str, dict[str, object] | None] = group.get("hosts") or {}  # type: ignore[assignment]
        if old:
            old_vars = [dict(v or {}) for v in old.values()]
            new = head if all(lab.is_head_name(name) for name in old) else workers
            group["hosts"] = {
                h.name: {**(old_vars[i] if i < len(old_vars) else old_vars[0]), "bittrader_node_ip": h.ip}
                for i, h in enumerate(new)
            }
            placed += len(new)
        for child in (group.get("children") or {}).values():  # type: ignore[attr-defined]
            place(child)

    for group in tree.values():
        place(group)  # type: ignore[arg-type]
    if placed != len(hosts):
        raise SystemExit("inventory/lab/hosts.yml must have one group of head hosts and one of workers")
    return tree


def write_scale_inventory(hosts: tuple[lab.LabHost, ...], folder: Path) -> Path:
    """Write folder/hosts.yml (scale_inventory) and link folder/group_vars to inventory/lab's; the
    folder is the inventory to pass to ansible-playbook -i."""
    lab_inventory = lab.REPO / "inventory" / "lab"
    tree = scale_inventory(hosts, yaml.safe_load((lab_inventory / "hosts.yml").read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    header = f"# Made by tools/lab_scale.py: inventory/lab's layout for {len(hosts) - 1} workers.\n"
    (folder / "hosts.yml").write_text("---\n" + header + yaml.safe_dump(tree, sort_keys=False))
    link = folder / "group_vars"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(lab_inventory / "group_vars", folder))
    return folder


def least_squares(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Intercept and slope of the least-squares line through (xs, ys); None for fewer than two xs."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def growth(workers: list[int], seconds: list[float]) -> dict[str, object] | None:
    """How a run's time grows with the workers: the largest size's time over the smallest's against
    the workers' ratio, and k of time ~ workers^k (least squares in log-log)."""
    if len(set(workers)) < 2 or min(seconds) <= 0:
        return None
    fit = least_squares([math.log(w) for w in workers], [math.log(s) for s in seconds])
    assert fit is not None
    exponent = round(fit[1], 3)
    first, last = workers.index(min(workers)), workers.index(max(workers))
    return {
        "from_workers": workers[first],
        "to_workers": workers[last],
        "time_ratio": round(seconds[last] / seconds[first], 3),
        "workers_ratio": round(workers[last] / workers[first], 3),
        "exponent": exponent,
        "sublinear": exponent <= RERUN_MAX_EXPONENT,
    }


def seconds_of(size: dict[str, object], kind: str, key: str = "seconds") -> float:
    return float(size[kind][key])  # type: ignore[index]


def complete(size: dict[str, object]) -> bool:
    """Whether every run of RUNS was reached and succeeded at this size."""
    return all(isinstance(size.get(kind), dict) and size[kind]["rc"] == 0 for kind, _ in RUNS)  # type: ignore[index]


def scale_report(sizes: list[dict[str, object]], forks: int, cores: int, **context: object) -> dict[str, object]:
    """The figures of each size (sizes: measure_size's results, in the order measured), the
    least-squares fixed part and cost per added worker of each run kind, how the re-run grows, and
    what forks and the admin machine's cores allow. A size whose runs did not all succeed is kept
    but left out of the fits."""
    done = [s for s in sizes if complete(s)]
    workers = [int(s["workers"]) for s in done]  # type: ignore[call-overload]
    rows = []
    for size in sizes:
        row = dict(size)
        n_hosts = int(size["workers"]) + 1  # type: ignore[call-overload]
        row["hosts"] = n_hosts
        row["batches"] = math.ceil(n_hosts / forks)  # Ansible runs each task on at most forks hosts at once
        if complete(size):
            row["rerun_fraction_of_cold"] = round(seconds_of(size, "rerun") / seconds_of(size, "cold"), 3)
            row["rerun_controller_busy"] = round(
                seconds_of(size, "rerun", "controller_cpu_s") / (seconds_of(size, "rerun") * cores), 3
            )
        rows.append(row)
    fits: dict[str, dict[str, float] | None] = {}
    fitted = [(kind, kind, "seconds") for kind, _ in RUNS] + [("rerun_controller_cpu", "rerun", "controller_cpu_s")]
    for name, kind, key in fitted:
        fit = least_squares([float(w) for w in workers], [seconds_of(s, kind, key) for s in done])
        fits[name] = None if fit is None else {"fixed_s": round(fit[0], 1), "per_worker_s": round(fit[1], 2)}
    rerun_growth = growth(workers, [seconds_of(s, "rerun") for s in done])
    well = [
        int(r["workers"])  # type: ignore[call-overload]
        for r in rows
        if r["batches"] == 1 and float(r.get("rerun_controller_busy", 1.0)) < CONTROLLER_BUSY_MAX  # type: ignore[arg-type]
    ]
    return {
        "schema": SCALE_SCHEMA,
        **context,
        "forks": forks,
        "cores": cores,
        "sizes": rows,
        "fit": fits,
        "rerun_growth": rerun_growth,
        "largest_workers_handled_well": max(well) if well else None,
        "forks_note": forks_note(forks, fits.get("rerun_controller_cpu"), cores),
        "targets": {"rerun_max_exponent": RERUN_MAX_EXPONENT, "controller_busy_max": CONTROLLER_BUSY_MAX},
        "ok": {
            "runs": bool(sizes) and len(done) == len(sizes),
            "rerun_changed_0": bool(done) and all(s["rerun"]["changed"] == 0 for s in done),  # type: ignore[index]
            # Undecided (None) with fewer than two sizes measured.
            "rerun_sublinear": None if rerun_growth is None else bool(rerun_growth["sublinear"]),
        },
    }


def forks_note(forks: int, controller: dict[str, float] | None, cores: int) -> str:
    """What forks allows, and what to set beyond it, with the measured controller cost per worker."""
    text = (
        f"forks = {forks} (ansible.cfg): each task runs on up to {forks} hosts at once, so up to "
        f"{forks - 1} workers (and the head) run side by side; larger clusters run each task in batches of "
        f"{forks} hosts. Beyond {forks - 1} workers set forks to at least the number of hosts "
        "(ansible.cfg [defaults] forks, or ANSIBLE_FORKS)"
    )
    if controller is None:
        return text + "."
    return text + (
        f", while the admin machine has the CPU for it: each added worker cost it {controller['per_worker_s']:.1f} s "
        f"of CPU per re-run, so {cores} cores run a re-run of N workers in no less than about "
        f"({controller['fixed_s']:.0f} + {controller['per_worker_s']:.1f} N) / {cores} s."
    )


def scale_table(report: dict[str, object]) -> str:
    """Text table: one row per size, then the fits, the re-run's growth and the forks note."""
    rows = [("workers", "hosts", "cold", "re-run", "verify", "re-run/cold", "re-run +s/worker", "ctrl CPU re-run")]
    previous: tuple[int, float] | None = None
    for size in report["sizes"]:  # type: ignore[attr-defined]
        n = int(size["workers"])

        def wall(kind: str, size: dict[str, object] = size) -> str:
            run = size.get(kind)
            if not isinstance(run, dict):
                return "-"
            return f"{float(run['seconds']):.1f} s" + ("" if run["rc"] == 0 else f" (rc {run['rc']})")

        slope, fraction, cpu = "-", "-", "-"
        if "rerun_fraction_of_cold" in size:
            rerun = seconds_of(size, "rerun")
            fraction = f"{float(size['rerun_fraction_of_cold']):.2f}"
            cpu = f"{seconds_of(size, 'rerun', 'controller_cpu_s'):.1f} s"
            if previous is not None:
                slope = f"{(rerun - previous[1]) / (n - previous[0]):.1f}"
            previous = (n, rerun)
        rows.append((str(n), str(size["hosts"]), wall("cold"), wall("rerun"), wall("verify"), fraction, slope, cpu))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    fits: dict[str, dict[str, float] | None] = report["fit"]  # type: ignore[assignment]
    if all(fits.get(kind) for kind, _ in RUNS):
        lines.append("least squares, seconds = fixed + per worker x N: " + "; ".join(
            f"{RUN_LABELS[kind]} {fits[kind]['fixed_s']:.1f} + {fits[kind]['per_worker_s']:.2f} N"  # type: ignore[index]
            for kind, _ in RUNS
        ))  # fmt: skip
    grown: dict[str, object] | None = report.get("rerun_growth")  # type: ignore[assignment]
    fit = fits.get("rerun")
    if grown is not None and fit is not None:
        verdict = "sub-linear" if grown["sublinear"] else "NOT clearly sub-linear"
        lines.append(
            f"re-run({grown['to_workers']}) / re-run({grown['from_workers']}) = {float(grown['time_ratio']):.2f} "  # type: ignore[arg-type]
            f"for {float(grown['workers_ratio']):g}x the workers: time ~ workers^{grown['exponent']}, "  # type: ignore[arg-type]
            f"{verdict} (target: exponent <= {RERUN_MAX_EXPONENT:g})"
        )
        at = int(grown["to_workers"])  # type: ignore[call-overload]
        total = fit["fixed_s"] + fit["per_worker_s"] * at
        if total > 0:
            lines.append(
                f"why: the fixed {fit['fixed_s']:.1f} s (the head, the run-once plays, Ansible's start) is "
                f"{100 * fit['fixed_s'] / total:.0f} % of the re-run at {at} workers; an added worker's tasks "
                f"run beside the others' (forks), adding {fit['per_worker_s']:.1f} s, not a host's whole chain"
            )
    largest = report.get("largest_workers_handled_well")
    if largest is not None:
        lines.append(
            f"largest size measured that runs in one batch of forks with the admin machine's CPU under "
            f"{CONTROLLER_BUSY_MAX:.0%} busy in the re-run: {largest} workers"
        )
    lines.append(str(report["forks_note"]))
    return "\n".join(lines)


def scale_plot(report: dict[str, object], path: Path) -> None:
    """results/scale.png: each run kind's wall seconds against the workers (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes: list[dict[str, object]] = report["sizes"]  # type: ignore[assignment]
    for kind, _ in RUNS:
        points = [
            (int(s["workers"]), seconds_of(s, kind))  # type: ignore[call-overload]
            for s in sizes
            if isinstance(s.get(kind), dict) and s[kind]["rc"] == 0  # type: ignore[index]
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=RUN_LABELS[kind])
    forks = int(report["forks"])  # type: ignore[call-overload]
    measured = sorted({int(s["workers"]) for s in sizes})  # type: ignore[call-overload]
    if measured and forks - 1 <= measured[-1] + 1:  # where batching starts, when near the sizes measured
        ax.axvline(forks - 1, color="#c0504d", linestyle="--", linewidth=1, label=f"forks - 1 = {forks - 1}")
    ax.set_xticks(measured)
    ax.set_xlabel("workers (1 head + N workers, 1 CPU each)")
    ax.set_ylabel("wall seconds")
    ax.set_title(f"Provisioning time against workers ({report['cores']} cores, forks={forks})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure_size(the_lab: lab.Lab, inventory: Path) -> dict[str, object]:
    """Fresh containers for the_lab, the runs of RUNS timed in order (stopping at a failed one),
    then the containers removed (in one podman call) whatever happens."""
    workers = len(the_lab.hosts) - 1
    measured: dict[str, object] = {
        "workers": workers, "nodes": [h.name for h in the_lab.hosts], "inventory": str(inventory)
    }
    lab.up_containers(the_lab)
    try:
        for kind, path in RUNS:
            result = lab_timings.timed_playbook(inventory, path)
            measured[kind] = result
            if result["rc"] != 0:
                break
    finally:
        lab.run(["podman", "rm", "-f", "-t", "5", *(h.name for h in the_lab.hosts)], check=False)
    return measured


def scale(sizes: list[int], network: str, subnet: str, prefix: str, results: Path) -> dict[str, object]:
    """Measure each size in turn (see the module's docstring); write results/scale.json and
    results/scale.png and print the table. The network is removed at the end if this made it."""
    forks = ansible_forks()
    labs = [lab.Lab(network, subnet, scale_hosts(prefix, subnet, n)) for n in sizes]
    largest = max(labs, key=lambda x: len(x.hosts))
    made_network = lab.run(["podman", "network", "exists", network], check=False).returncode != 0
    load_before = os.getloadavg()
    # Containers of these names left by an interrupted run (or the lab's, on its network) go first.
    lab.run(["podman", "rm", "-f", "-t", "5", *(h.name for h in largest.hosts)], check=False)
    measured: list[dict[str, object]] = []
    try:
        for the_lab in labs:
            n = len(the_lab.hosts) - 1
            print(f"== scale: 1 head + {n} workers", flush=True)
            inventory = write_scale_inventory(the_lab.hosts, results / "scale" / f"inventory-{n}")
            measured.append(measure_size(the_lab, inventory))
            if not complete(measured[-1]):
                break  # a failed run: the larger sizes would fail alike
    finally:
        if made_network:
            lab.run(["podman", "network", "rm", "-f", network], check=False)
    report = scale_report(
        measured,
        forks,
        os.cpu_count() or 1,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=lab_timings.machine(load_before),
        requested_sizes=sizes,
        network=network,
        subnet=subnet,
        prefix=prefix,
    )
    out = results / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    scale_plot(report, results / "scale.png")
    print(scale_table(report))
    print(f"wrote {out} and {results / 'scale.png'}")
    ok: dict[str, bool | None] = report["ok"]  # type: ignore[assignment]
    if not ok["runs"] or not ok["rerun_changed_0"]:
        raise SystemExit("a scale run failed, or a re-run changed something: see its output above")
    return report


def main(argv: list[str]) -> dict[str, object]:
    """`./lab scale [--] [N ...] [--network NAME] [--subnet CIDR] [--prefix NAME]`."""
    defaults = lab.Lab()
    parser = argparse.ArgumentParser(prog="lab scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=list(SIZES), help="workers per lab (default: 2 4 8)")
    parser.add_argument("--network", default=defaults.network, help=f"podman network (default {defaults.network})")
    parser.add_argument("--subnet", default=defaults.subnet, help=f"its subnet (default {defaults.subnet})")
    parser.add_argument("--prefix", default="bt", help="container names PREFIX-head, PREFIX-workerN (default bt)")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.sizes):
        parser.error("each size is a number of workers, at least 1")
    sizes = sorted(set(args.sizes))
    return scale(sizes, args.network, args.subnet, args.prefix, lab.REPO / "results")
