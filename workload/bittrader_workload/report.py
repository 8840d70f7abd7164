"""Controller-side speedup report: serial run versus cluster run.

    python -m bittrader_workload.report --serial S.json --cluster C.json \\
        --serial-results S.jsonl --cluster-results C.jsonl --out DIR

Definitions (wall times are the summaries' ``wall_s``: from the first evaluation, or ``ray.put``, to the
last completion; candle generation and ``ray.init`` excluded):

- speedup = serial wall / cluster wall
- CPUs used = min(cluster CPUs, evaluations run by the cluster run); ideal speedup = CPUs used
- efficiency = speedup / CPUs used
- Ray overhead = cluster wall - (sum of the cluster's task busy seconds / CPUs used)
- per task (from the results files): mean wall seconds and mean CPU seconds of one evaluation in each
  run; a task's wall minus its CPU is time it waited for a core (other processes on the same cores),
  its CPU above the serial run's is extra work or slower cores (shared caches, memory bandwidth)
- provisioning (``--provisioning``, written by ``tools/lab.py timings``): the cold converge, the
  idempotent re-run and the ``--limit`` add of a worker, shown with the benchmark

Writes ``DIR/report.json`` and ``DIR/report.png`` (per-node busy timeline from the cluster results'
start/end timestamps, and the speedup against the ideal), and prints a short table. Uses matplotlib's
Agg backend: no display needed. The results files are optional; with both, the report also checks
that the cluster reproduced the serial metrics (within 1e-12).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bittrader_workload.job import compare_results, read_results

REPORT_SCHEMA = "bittrader-workload-report/1"


def load_json(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def compute_report(
    serial: dict[str, Any],
    cluster: dict[str, Any],
    serial_results: dict[int, dict[str, Any]] | None = None,
    cluster_results: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report's numbers from two summaries (and, optionally, their result records)."""
    serial_wall = float(serial["wall_s"])
    cluster_wall = float(cluster["wall_s"])
    if serial_wall <= 0 or cluster_wall <= 0:
        raise ValueError("wall times must be positive")
    run = int(cluster.get("evaluations_run", cluster.get("evaluations_done", 0)))
    cluster_cpus = float(cluster["cluster_cpus"])
    cpus_used = min(cluster_cpus, float(run)) if run > 0 else cluster_cpus
    if cpus_used <= 0:
        raise ValueError("the cluster summary reports no CPUs")
    nodes = [
        {
            "hostname": row.get("hostname"),
            "node_id": row.get("node_id"),
            "tasks": int(row["tasks"]),
            "busy_s": float(row["busy_s"]),
        }
        for row in cluster.get("nodes", [])
    ]
    busy = sum(row["busy_s"] for row in nodes) if nodes else float(cluster.get("busy_s", 0.0))
    speedup = serial_wall / cluster_wall

    warnings: list[str] = []
    for name, summary in (("serial", serial), ("cluster", cluster)):
        if summary.get("status", "complete") != "complete":
            warnings.append(f"the {name} run is {summary.get('status')}")
        if int(summary.get("evaluations_skipped", 0)) > 0:
            skipped = summary["evaluations_skipped"]
            warnings.append(f"the {name} run resumed {skipped} evaluations: its wall time is partial")
    for key in ("candles", "params", "seed"):
        if serial.get(key) != cluster.get(key):
            warnings.append(f"the runs differ in {key}: {serial.get(key)} vs {cluster.get(key)}")
    if serial.get("mode") != "serial":
        warnings.append(f"the serial summary's mode is {serial.get('mode')!r}")

    comparison: dict[str, Any] | None = None
    if serial_results is not None and cluster_results is not None:
        cmp = compare_results(serial_results, cluster_results)
        comparison = cmp.to_dict()
        comparison["metric_mismatches"] = comparison["metric_mismatches"][:20]
        if not cmp.ok:
            warnings.append("the cluster results differ from the serial results")

    return {
        "schema": REPORT_SCHEMA,
        "serial_wall_s": serial_wall,
        "cluster_wall_s": cluster_wall,
        "speedup": speedup,
        "cluster_cpus": cluster_cpus,
        "cpus_used": cpus_used,
        "ideal_speedup": cpus_used,
        "efficiency": speedup / cpus_used,
        "ray_overhead_s": cluster_wall - busy / cpus_used,
        "busy_s": busy,
        "evaluations": run,
        "serial_s_per_evaluation": serial_wall / max(1, int(serial.get("evaluations_run", 1))),
        "cluster_task_s_mean": busy / run if run else 0.0,
        "nodes": nodes,
        "results_comparison": comparison,
        "comparable": not warnings,
        "warnings": warnings,
        "candles": cluster.get("candles"),
        "params": cluster.get("params"),
        "cluster_wall_started_at": cluster.get("wall_started_at"),
        "task_profile": task_profile(serial_results, cluster_results),
    }


def _task_stats(records: dict[int, dict[str, Any]] | None) -> dict[str, Any] | None:
    """Mean wall and CPU seconds of one evaluation, and the share of its wall spent off a core."""
    if not records:
        return None
    walls = [float(r["duration"]) for r in records.values()]
    cpus = [float(r["cpu_s"]) for r in records.values() if isinstance(r.get("cpu_s"), (int, float))]
    wall = sum(walls) / len(walls)
    stats: dict[str, Any] = {"tasks": len(walls), "wall_s_mean": wall, "wall_s_max": max(walls), "cpu_s_mean": None}
    if len(cpus) == len(walls):
        cpu = sum(cpus) / len(cpus)
        stats.update(cpu_s_mean=cpu, waiting_share=max(0.0, 1.0 - cpu / wall) if wall > 0 else 0.0)
    return stats


def task_profile(
    serial_results: dict[int, dict[str, Any]] | None, cluster_results: dict[int, dict[str, Any]] | None
) -> dict[str, Any] | None:
    """Where a cluster task's extra time goes, against the same evaluation run serially: waiting for a
    core (wall above CPU) or more CPU for the same work. None without both results files."""
    serial = _task_stats(serial_results)
    cluster = _task_stats(cluster_results)
    if serial is None or cluster is None:
        return None
    profile: dict[str, Any] = {
        "serial": serial,
        "cluster": cluster,
        "wall_ratio": cluster["wall_s_mean"] / serial["wall_s_mean"] if serial["wall_s_mean"] > 0 else None,
        "cpu_ratio": None,
    }
    if serial["cpu_s_mean"] and cluster["cpu_s_mean"] is not None:
        profile["cpu_ratio"] = cluster["cpu_s_mean"] / serial["cpu_s_mean"]
    return profile


def load_provisioning(path: Path | None) -> dict[str, Any] | None:
    """The lab's provisioning timings (tools/lab.py timings), or None when there are none."""
    if path is None or not path.is_file():
        return None
    data = load_json(path)

    def seconds(key: str) -> float | None:
        run = data.get(key)
        return float(run["seconds"]) if isinstance(run, dict) else None

    return {
        "file": str(path),
        "created": data.get("created"),
        "cold_converge_s": seconds("cold_converge"),
        "idempotent_rerun_s": seconds("idempotent_rerun"),
        "idempotent_changed": (data.get("idempotent_rerun") or {}).get("changed"),
        "add_worker_s": seconds("add_worker"),
        "cold_converge_index_s": seconds("cold_converge_index"),
        "wheelhouse_saved_s": data.get("wheelhouse_saved_s"),
        "idempotent_fraction_of_cold": data.get("idempotent_fraction_of_cold"),
        "ok": data.get("ok"),
    }


def _lanes(intervals: list[tuple[float, float]]) -> list[int]:
    """Greedy lane per interval so that intervals in one lane do not overlap (one lane = one busy CPU)."""
    order = sorted(range(len(intervals)), key=lambda i: intervals[i])
    lane_end: list[float] = []
    lanes = [0] * len(intervals)
    for i in order:
        start, end = intervals[i]
        for k, last in enumerate(lane_end):
            if last <= start + 1e-6:
                lane_end[k] = end
                lanes[i] = k
                break
        else:
            lane_end.append(end)
            lanes[i] = len(lane_end) - 1
    return lanes


def write_chart(report: dict[str, Any], cluster_results: dict[int, dict[str, Any]] | None, path: Path) -> None:
    """PNG: per-node busy timeline (top) and speedup against the ideal (bottom)."""
    fig, (ax_t, ax_s) = plt.subplots(2, 1, figsize=(11, 7.5), gridspec_kw={"height_ratios": [3, 1.2]})
    records = list((cluster_results or {}).values())
    if records:
        origin = report.get("cluster_wall_started_at")
        t0 = float(origin) if origin is not None else min(float(r["start"]) for r in records)
        by_node: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            key = f"{r.get('hostname')} ({str(r.get('node_id') or '-')[:8]})"
            by_node.setdefault(key, []).append(r)
        y = 0
        ticks: list[float] = []
        labels: list[str] = []
        colors = plt.get_cmap("tab10")
        for n, (name, recs) in enumerate(sorted(by_node.items())):
            spans = [(float(r["start"]) - t0, float(r["end"]) - t0) for r in recs]
            lanes = _lanes(spans)
            for (s, e), lane in zip(spans, lanes, strict=True):
                ax_t.broken_barh([(s, e - s)], (y + lane + 0.1, 0.8), facecolors=colors(n % 10), edgecolor="white")
            count = max(lanes) + 1
            for lane in range(count):
                ticks.append(y + lane + 0.5)
                labels.append(f"{name} slot {lane}")
            y += count
        ax_t.set_yticks(ticks, labels)
        ax_t.set_ylim(0, max(y, 1))
        ax_t.set_xlim(left=min(0.0, min(float(r["start"]) - t0 for r in records)))
        ax_t.set_xlabel("seconds since the cluster run started (ray.put); dashed: its end")
        ax_t.axvline(report["cluster_wall_s"], color="grey", linestyle="--", linewidth=1)
    else:
        ax_t.text(0.5, 0.5, "no cluster results given", ha="center", va="center", transform=ax_t.transAxes)
    ax_t.set_title(
        f"Cluster run: {report['evaluations']} evaluations of {report.get('candles')} candles, "
        f"wall {report['cluster_wall_s']:.1f}s (serial {report['serial_wall_s']:.1f}s)"
    )

    ideal = float(report["ideal_speedup"])
    speedup = float(report["speedup"])
    ax_s.barh([1, 0], [ideal, speedup], color=["lightgrey", "tab:green"])
    ax_s.set_yticks([1, 0], [f"ideal ({ideal:g} CPUs)", "measured"])
    ax_s.set_xlim(0, max(ideal, speedup) * 1.35)
    ax_s.set_xlabel("speedup over serial")
    ax_s.annotate(
        f"{speedup:.2f}x of ideal {ideal:g}x: efficiency {report['efficiency'] * 100:.0f}%, "
        f"Ray overhead {report['ray_overhead_s']:.1f}s",
        xy=(speedup, 0),
        xytext=(6, 0),
        textcoords="offset points",
        va="center",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"serial wall     {report['serial_wall_s']:10.2f} s",
        f"cluster wall    {report['cluster_wall_s']:10.2f} s",
        f"speedup         {report['speedup']:10.2f} x  (ideal {report['ideal_speedup']:g}x)",
        f"efficiency      {report['efficiency'] * 100:10.1f} %",
        f"Ray overhead    {report['ray_overhead_s']:10.2f} s",
        "",
        f"{'node':<28} {'tasks':>6} {'busy s':>10}",
    ]
    for row in report["nodes"]:
        lines.append(f"{row['hostname']!s:<28} {row['tasks']:>6} {row['busy_s']:>10.2f}")
    cmp = report.get("results_comparison")
    if cmp is not None:
        lines.append("")
        lines.append(f"results match serial: {'yes' if cmp['ok'] else 'NO'} (max abs diff {cmp['max_abs_diff']:.3g})")
    profile = report.get("task_profile")
    if profile is not None:
        lines.append("")
        lines.append(f"{'one evaluation':<28} {'wall s':>10} {'CPU s':>10}")
        for name in ("serial", "cluster"):
            st = profile[name]
            cpu = "-" if st["cpu_s_mean"] is None else f"{st['cpu_s_mean']:.3f}"
            lines.append(f"{name:<28} {st['wall_s_mean']:>10.3f} {cpu:>10}")
        if profile["cpu_ratio"] is not None:
            lines.append(
                f"cluster/serial: wall x{profile['wall_ratio']:.2f}, CPU x{profile['cpu_ratio']:.2f}; "
                f"{profile['cluster']['waiting_share'] * 100:.0f}% of a cluster task's wall waiting for a core"
            )
    prov = report.get("provisioning")
    if prov is not None:
        lines.append("")
        lines.append(f"provisioning ({prov['created']}):")
        for key, label in (("cold_converge_s", "cold converge"), ("idempotent_rerun_s", "idempotent re-run"),
                           ("add_worker_s", "add a worker (--limit)"),
                           ("cold_converge_index_s", "cold, no wheelhouse")):
            if prov[key] is not None:
                lines.append(f"  {label:<26} {prov[key]:>8.1f} s")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def write_search_chart(summary: dict[str, Any], path: Path) -> None:
    """The search's plot (bittrader_workload.search summary): each trial's Sharpe and the best so far
    against the trials in the order they finished, and the trials each node ran."""
    plot = summary["plot"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    ax1.scatter(plot["trial"], plot["sharpe"], s=14, color="#9db4d0", label="trial")
    ax1.step(plot["trial"], plot["best_sharpe"], where="post", color="#1f4e79", linewidth=2, label="best so far")
    resumed = int(summary.get("trials_resumed") or 0)
    if 0 < resumed < len(plot["trial"]):
        ax1.axvline(resumed + 0.5, color="#c0504d", linestyle="--", linewidth=1, label="resumed here")
    ax1.set_xlabel("trials (in the order they finished)")
    ax1.set_ylabel("Sharpe (annualized)")
    best = summary.get("best") or {}
    best_sharpe = (best.get("metrics") or {}).get("sharpe")
    title = f"Optuna search: {summary.get('trials_done')}/{summary.get('trials_expected')} trials"
    if best_sharpe is not None:
        title += f", best Sharpe {float(best_sharpe):.3f}"
    ax1.set_title(title)
    ax1.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    nodes = plot["trials_per_node"]
    ax2.bar(list(nodes), list(nodes.values()), color="#1f4e79")
    ax2.set_title("trials per node")
    ax2.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_text(summary: dict[str, Any]) -> str:
    """A short account of a search for the playbook's output."""
    best = summary.get("best") or {}
    params = ", ".join(f"{k}={v}" for k, v in sorted((best.get("params") or {}).items()))
    nodes = ", ".join(f"{k} {v}" for k, v in summary["plot"]["trials_per_node"].items())
    sharpe = (best.get("metrics") or {}).get("sharpe")
    return "\n".join([
        f"search: {summary.get('status')}, {summary.get('trials_done')}/{summary.get('trials_expected')} trials "
        f"({summary.get('trials_run')} this run, {summary.get('trials_resumed')} resumed, "
        f"{len(summary.get('repeated') or [])} repeated), concurrency {summary.get('concurrency')}",
        f"best: sharpe {'-' if sharpe is None else format(float(sharpe), '.4f')} ({params})",
        f"trials per node: {nodes}",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bittrader_workload.report", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--search", type=Path, default=None,
                        help="summary JSON of a search (--mode search): draw search.png into --out instead")
    parser.add_argument("--serial", type=Path, default=None, help="summary JSON of the serial run")
    parser.add_argument("--cluster", type=Path, default=None, help="summary JSON of the cluster run")
    parser.add_argument("--serial-results", type=Path, default=None, help="results JSON lines of the serial run")
    parser.add_argument("--cluster-results", type=Path, default=None, help="results JSON lines of the cluster run")
    parser.add_argument("--out", required=True, type=Path, help="output folder (report.json, report.png)")
    parser.add_argument(
        "--provisioning", type=Path, default=None, help="provisioning timings to include (tools/lab.py timings)"
    )
    args = parser.parse_args(argv)
    if args.search is not None:
        summary = load_json(args.search)
        args.out.mkdir(parents=True, exist_ok=True)
        write_search_chart(summary, args.out / "search.png")
        print(search_text(summary))
        return 0
    if args.serial is None or args.cluster is None:
        parser.error("--serial and --cluster are required (or --search)")

    serial_results = read_results(args.serial_results) if args.serial_results else None
    cluster_results = read_results(args.cluster_results) if args.cluster_results else None
    report = compute_report(load_json(args.serial), load_json(args.cluster), serial_results, cluster_results)
    report["provisioning"] = load_provisioning(args.provisioning)
    args.out.mkdir(parents=True, exist_ok=True)
    chart = args.out / "report.png"
    write_chart(report, cluster_results, chart)
    report["chart"] = str(chart)
    (args.out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(format_table(report))
    cmp = report.get("results_comparison")
    return 1 if cmp is not None and not cmp["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
