"""The reference Ray job: a resumable parameter sweep of the backtest.

Run on a cluster node (or anywhere ``ray.init(address=...)`` reaches the cluster)::

    python -m bittrader_workload.job --results sweep.jsonl --summary sweep.json --expect-nodes 2

or as a Ray job (the working dir puts the package on the workers' path)::

    ray job submit --address http://HEAD:8265 --working-dir workload -- \\
        python -m bittrader_workload.job --results /tmp/sweep.jsonl --summary /tmp/sweep.json

``--mode serial`` runs every evaluation in this process on one CPU with the same code: the baseline of
the speedup report. Results are JSON lines appended and flushed as each evaluation completes; a re-run
with the same ``--results`` file skips the ids already there (resume after a head restart).

Exit codes: 0 done; 1 some evaluations failed or a task raised; 2 fewer distinct nodes than
``--expect-nodes`` ran tasks; 3 the results file belongs to another run (other candles, seed or grid);
64 bad command line.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import ray
from numpy.typing import NDArray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import bittrader_workload
from bittrader_workload import THREAD_ENV_VARS, client, jsonl_records
from bittrader_workload.backtest import METRIC_NAMES, StrategyParams, evaluate
from bittrader_workload.candles import DEFAULT_CANDLES, generate_candles, size_mib
from bittrader_workload.cli import EXIT_USAGE, UsageParser, positive_int
from bittrader_workload.grid import DEFAULT_PARAMS, MAX_PARAMS, ParamSet, make_grid

RESULT_SCHEMA = "bittrader-workload-result/1"
SUMMARY_SCHEMA = "bittrader-workload-summary/1"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TOO_FEW_NODES = 2
EXIT_RESULTS_MISMATCH = 3

DEFAULT_MAX_RETRIES = 3
SINGLE_THREAD_ENV: dict[str, str] = {name: "1" for name in THREAD_ENV_VARS}


# --------------------------------------------------------------------------------------------------
# One evaluation (the same function runs in serial mode and inside a Ray task)
# --------------------------------------------------------------------------------------------------


@functools.cache
def code_fingerprint() -> dict[str, Any]:
    """Which copy of this package the process runs: its folder, ``__version__`` and a sha256 (16 hex
    digits) over the relative names and contents of its ``.py`` files.

    Shipped with the job, the folder lies in Ray's runtime resources (``.../working_dir_files/_ray_pkg_<hash>``
    or ``py_modules_files``); imported from the node (``--no-ship-code`` with bittrader_code_mode folder or
    git), it is the node's synced folder or checkout.
    """
    root = Path(bittrader_workload.__file__).resolve().parent
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"path": str(root), "version": bittrader_workload.__version__, "sha256": digest.hexdigest()[:16],
            "files": len(files)}


def evaluate_param_set(
    candles: NDArray[Any], param_set: dict[str, Any], run: dict[str, Any], node_id: str | None = None
) -> dict[str, Any]:
    """Backtest one parameter set and return its result record (one JSON line of the results file).

    ``param_set`` is ``ParamSet.to_dict()``; ``run`` holds ``candles``, ``seed`` and ``mode``.
    """
    for name in THREAD_ENV_VARS:
        os.environ[name] = "1"
    start = time.time()
    t0 = time.perf_counter()
    cpu0 = time.thread_time()
    metrics = evaluate(candles, StrategyParams.from_dict(param_set["params"]))
    cpu_s = time.thread_time() - cpu0
    duration = time.perf_counter() - t0
    end = time.time()
    return {
        "schema": RESULT_SCHEMA,
        "id": int(param_set["id"]),
        "params": param_set["params"],
        "metrics": metrics,
        "hostname": socket.gethostname(),
        "node_id": node_id,
        "pid": os.getpid(),
        "start": start,
        "end": end,
        "duration": duration,
        # CPU seconds of the evaluating thread: duration - cpu_s is time spent waiting for a core.
        "cpu_s": cpu_s,
        "candles": int(run["candles"]),
        "seed": int(run["seed"]),
        "mode": str(run["mode"]),
        "code": code_fingerprint(),
    }


@ray.remote
def evaluate_task(candles: NDArray[Any], param_set: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Ray task: ``candles`` arrives from the object store (zero-copy, read-only)."""
    return evaluate_param_set(candles, param_set, run, node_id=ray.get_runtime_context().get_node_id())


# --------------------------------------------------------------------------------------------------
# Results files
# --------------------------------------------------------------------------------------------------


def read_results(path: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """Result records of a JSON-lines file by id (first record of an id wins).

    A missing file is empty; lines that are not complete JSON objects with an ``id`` (a line cut by a
    crash) are ignored.
    """
    records: dict[int, dict[str, Any]] = {}
    for rec in jsonl_records(path):
        if isinstance(rec.get("id"), int) and isinstance(rec.get("metrics"), dict):
            records.setdefault(rec["id"], rec)
    return records


def _metric_close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return bool(a == b)
    fa, fb = float(a), float(b)
    if math.isnan(fa) or math.isnan(fb):
        return math.isnan(fa) and math.isnan(fb)
    return abs(fa - fb) <= tol * max(1.0, abs(fa), abs(fb))


@dataclass
class Comparison:
    """Outcome of comparing two results files."""

    ids_a: int = 0
    ids_b: int = 0
    only_in_a: list[int] = field(default_factory=list)
    only_in_b: list[int] = field(default_factory=list)
    params_differ: list[int] = field(default_factory=list)
    metric_mismatches: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.params_differ or self.metric_mismatches)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ids_a": self.ids_a,
            "ids_b": self.ids_b,
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "params_differ": self.params_differ,
            "metric_mismatches": self.metric_mismatches,
            "max_abs_diff": self.max_abs_diff,
        }


def compare_results(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], tol: float = 1e-12) -> Comparison:
    """Compare two sets of result records: same ids, same params, every metric equal within ``tol``.

    Metrics match when ``|x - y| <= tol * max(1, |x|, |y|)`` (absolute below 1, relative above).
    """
    cmp = Comparison(ids_a=len(a), ids_b=len(b))
    cmp.only_in_a = sorted(set(a) - set(b))
    cmp.only_in_b = sorted(set(b) - set(a))
    for i in sorted(set(a) & set(b)):
        ra, rb = a[i], b[i]
        if ra.get("params") != rb.get("params"):
            cmp.params_differ.append(i)
        ma, mb = ra["metrics"], rb["metrics"]
        for name in sorted(set(ma) | set(mb)):
            va, vb = ma.get(name), mb.get(name)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                diff = abs(float(va) - float(vb))
                if math.isfinite(diff):
                    cmp.max_abs_diff = max(cmp.max_abs_diff, diff)
            if not _metric_close(va, vb, tol):
                cmp.metric_mismatches.append({"id": i, "metric": name, "a": va, "b": vb})
    return cmp


def compare_results_files(
    path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], tol: float = 1e-12
) -> Comparison:
    """Compare two results files (e.g. a serial run and a cluster run); see :func:`compare_results`."""
    return compare_results(read_results(path_a), read_results(path_b), tol)


class ResultsWriter:
    """Appends result records to a JSON-lines file, flushed and fsynced one by one."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self._fh: IO[str] | None = None
        if path is None:
            return
        p = Path(path)
        if p.parent != Path(""):
            p.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = False
        if p.exists() and p.stat().st_size > 0:
            with p.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                needs_newline = fh.read(1) != b"\n"
        self._fh = p.open("a", encoding="utf-8")
        if needs_newline:  # the last line was cut by a crash: start on a fresh line
            self._fh.write("\n")

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="python -m bittrader_workload.job",
        description="Bittrader reference workload: resumable parameter sweep of an SMA-crossover backtest.",
    )
    parser.add_argument("--candles", type=positive_int, default=DEFAULT_CANDLES, help="hourly candles (297000)")
    parser.add_argument(
        "--params", type=positive_int, default=DEFAULT_PARAMS, help=f"parameter sets, 1..{MAX_PARAMS} (80)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic candles (0)")
    parser.add_argument(
        "--mode",
        choices=("cluster", "serial", "search"),
        default="cluster",
        help="cluster (Ray), serial, or search (Ray Tune + Optuna; its options: --mode search --help)",
    )
    parser.add_argument("--address", default="auto", help='Ray address for ray.init ("auto")')
    parser.add_argument("--results", type=Path, default=None, help="JSON-lines results file (appended; resumable)")
    parser.add_argument("--summary", type=Path, default=None, help="final summary JSON file")
    parser.add_argument(
        "--expect-nodes",
        type=int,
        default=None,
        help="exit 2 unless at least N distinct nodes ran tasks; implies --every-node",
    )
    parser.add_argument(
        "--every-node",
        action="store_true",
        help="give each alive node with CPUs one evaluation of its own before Ray schedules the rest, so every "
        "node runs some even when the tasks are too short for Ray to spill them over to a second node",
    )
    parser.add_argument(
        "--max-retries", type=int, default=DEFAULT_MAX_RETRIES, help="Ray retries of a task lost to a node failure (3)"
    )
    parser.add_argument(
        "--no-ship-code",
        action="store_true",
        help="do not upload this package to the workers (py_modules): when the job was submitted with "
        "--working-dir, or the nodes have it on their import path (bittrader_code_mode folder or git)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-evaluation progress lines")
    return parser


@dataclass
class _Progress:
    total: int
    done: int
    quiet: bool
    out: IO[str]

    def line(self, record: dict[str, Any]) -> None:
        self.done += 1
        if self.quiet:
            return
        width = len(str(self.total))
        sharpe = float(record["metrics"]["sharpe"])
        self.out.write(
            f"[{self.done:>{width}}/{self.total}] set {record['id']} sharpe={sharpe:.2f} "
            f"node={record['hostname']} {float(record['duration']):.2f}s\n"
        )
        self.out.flush()


def _node_key(record: dict[str, Any]) -> str:
    node_id = record.get("node_id")
    return str(node_id) if node_id else f"host:{record.get('hostname', '?')}"


def per_node(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks and busy seconds per node (Ray node id, or hostname when there is none)."""
    table: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = _node_key(rec)
        row = table.setdefault(
            key,
            {"node_id": rec.get("node_id"), "hostname": rec.get("hostname"), "tasks": 0, "busy_s": 0.0, "code": []},
        )
        row["tasks"] += 1
        row["busy_s"] += float(rec["duration"])
        code = rec.get("code")
        if isinstance(code, dict) and code not in row["code"]:
            row["code"].append(code)
    return sorted(table.values(), key=lambda r: (str(r["hostname"]), str(r["node_id"])))


def job_ships_code() -> bool:
    """Whether this job's runtime environment brings code to the workers (working_dir or py_modules, from
    ``ray job submit --working-dir`` or this driver's ``ray.init``); else they import from their node."""
    env = ray.get_runtime_context().runtime_env
    return bool(env.get("working_dir") or env.get("py_modules"))


def cpu_node_ids() -> list[str]:
    """Hex ids of the alive nodes that registered with CPUs (the head gives none), in ray.nodes() order."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [n["NodeID"] for n in nodes if n.get("Alive") and float(n.get("Resources", {}).get("CPU", 0)) > 0]


def cluster_resources() -> tuple[float, int]:
    """(CPUs the scheduler has over alive nodes, number of alive nodes) of the connected cluster.

    The CPU total comes from ray.cluster_resources(), the scheduler's live view: ray.nodes() keeps the
    count each node registered with, which a throttled node's in-place resize does not change.
    """
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    alive = sum(1 for node in nodes if node.get("Alive"))
    cpus = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
    return cpus, alive


def _run_serial(
    candles: NDArray[Any], todo: Sequence[ParamSet], run: dict[str, Any], writer: ResultsWriter, progress: _Progress
) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    for ps in todo:
        record = evaluate_param_set(candles, ps.to_dict(), run)
        writer.write(record)
        progress.line(record)
        done.append(record)
    return done


@dataclass
class _ClusterOutcome:
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    fatal: bool = False
    put_s: float = 0.0
    pinned: int = 0  # evaluations given to one node each (--every-node)


def _run_cluster(
    candles: NDArray[Any],
    todo: Sequence[ParamSet],
    run: dict[str, Any],
    writer: ResultsWriter,
    progress: _Progress,
    max_retries: int,
    every_node: bool = False,
) -> _ClusterOutcome:
    outcome = _ClusterOutcome()
    t0 = time.perf_counter()
    candles_ref = ray.put(candles)  # once: every task reads the same object (zero-copy on each node)
    outcome.put_s = time.perf_counter() - t0
    options: dict[str, Any] = {
        "num_cpus": 1,
        "max_retries": max_retries,
        "retry_exceptions": False,  # an exception in the backtest is a bug: never retried
        "runtime_env": {"env_vars": SINGLE_THREAD_ENV},
    }
    task = evaluate_task.options(**options)
    # A worker lease is reused for the next queued task of the same kind, so short tasks can all finish
    # on the first node before a second node has started a worker. A node affinity is part of a task's
    # scheduling class: each pinned task gets a lease of its own, on its node.
    pinned = cpu_node_ids() if every_node else []
    outcome.pinned = len(pinned[: len(todo)])
    ids: dict[ray.ObjectRef[Any], int] = {}
    for i, ps in enumerate(todo):
        where = task
        if i < len(pinned):  # soft: a node that died or lost its CPUs meanwhile hands it to the scheduler
            affinity = NodeAffinitySchedulingStrategy(pinned[i], soft=True)
            where = evaluate_task.options(**options, scheduling_strategy=affinity)
        ids[where.remote(candles_ref, ps.to_dict(), run)] = ps.id
    pending = list(ids)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            try:
                record = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                outcome.failures.append({"id": ids[ref], "error": f"{type(exc).__name__}: {exc}"})
                outcome.fatal = True
                print(f"error: set {ids[ref]} raised; cancelling the rest:\n{exc}", file=sys.stderr, flush=True)
                for other in pending:
                    ray.cancel(other)
                pending = []
                break
            except ray.exceptions.RayError as exc:  # lost after every retry (node died, object lost, ...)
                outcome.failures.append({"id": ids[ref], "error": f"{type(exc).__name__}: {exc}"})
                print(f"warning: set {ids[ref]} failed: {type(exc).__name__}", file=sys.stderr, flush=True)
                continue
            writer.write(record)
            progress.line(record)
            outcome.records.append(record)
    return outcome


def _check_existing(
    existing: dict[int, dict[str, Any]], grid: Sequence[ParamSet], run: dict[str, Any]
) -> tuple[dict[int, dict[str, Any]], str | None]:
    """Records of this run's ids, or an error message when the file belongs to another run."""
    by_id = {ps.id: ps for ps in grid}
    mine: dict[int, dict[str, Any]] = {}
    for i, rec in existing.items():
        if rec.get("candles") != run["candles"] or rec.get("seed") != run["seed"]:
            return {}, (
                f"results file holds set {i} of another run (candles={rec.get('candles')}, seed={rec.get('seed')}; "
                f"this run: candles={run['candles']}, seed={run['seed']}): use another --results file"
            )
        ps = by_id.get(i)
        if ps is None:
            continue  # an id beyond this run's --params: kept in the file, not counted
        if rec.get("params") != ps.params.to_dict():
            return {}, f"results file holds set {i} with other parameters than this grid's: use another --results file"
        mine[i] = rec
    return mine, None


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ray": ray.__version__,
        "workload": bittrader_workload.__version__,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def search_requested(argv: Sequence[str]) -> bool:
    """Whether the command line asks for the search mode (``--mode search``: bittrader_workload.search)."""
    args = list(argv)
    return "--mode=search" in args or any(pair == ("--mode", "search") for pair in itertools.pairwise(args))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if search_requested(argv):
        # Ray Tune + Optuna (ray[tune], optuna on the nodes); imported only for this mode.
        from bittrader_workload.search import main as search_main

        return search_main(argv)
    args = build_parser().parse_args(argv)
    every_node = args.every_node or args.expect_nodes is not None
    if args.params > MAX_PARAMS:
        print(f"error: --params must be at most {MAX_PARAMS}", file=sys.stderr)
        return EXIT_USAGE
    total_t0 = time.perf_counter()
    started_at = time.time()
    run = {"candles": args.candles, "seed": args.seed, "mode": args.mode}
    grid = make_grid(args.params)

    previous: dict[int, dict[str, Any]] = {}
    if args.results is not None:
        previous, problem = _check_existing(read_results(args.results), grid, run)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_RESULTS_MISMATCH
    todo = [ps for ps in grid if ps.id not in previous]

    t0 = time.perf_counter()
    candles = generate_candles(args.candles, args.seed)
    data_s = time.perf_counter() - t0
    print(
        f"bittrader workload: mode={args.mode} candles={args.candles} ({size_mib(candles):.2f} MiB) "
        f"params={args.params} seed={args.seed}; {len(previous)} already in the results file, {len(todo)} to run",
        flush=True,
    )

    progress = _Progress(total=len(grid), done=len(previous), quiet=args.quiet, out=sys.stdout)
    writer = ResultsWriter(args.results)
    owns_ray = False
    failures: list[dict[str, Any]] = []
    fatal = False
    put_s = 0.0
    pinned = 0
    shipped = False
    try:
        if args.mode == "serial":
            cpus, alive = 1.0, 1
            wall_started_at = time.time()
            wall_t0 = time.perf_counter()
            new = _run_serial(candles, todo, run, writer, progress)
            wall_s = time.perf_counter() - wall_t0
        else:
            if not ray.is_initialized():
                # Ray Client without the token only times out after about 30 s: say why at once.
                if client.effective_address(args.address).startswith("ray://") and client.auth_problem():
                    print(f"error: {client.auth_problem()}", file=sys.stderr)
                    return EXIT_USAGE
                package_dir = os.path.dirname(bittrader_workload.__file__)
                runtime_env = None if args.no_ship_code else {"py_modules": [package_dir]}
                ray.init(address=args.address, runtime_env=runtime_env, logging_level=logging.WARNING)
                owns_ray = True
            cpus, alive = cluster_resources()
            shipped = job_ships_code()
            print(f"cluster: {alive} alive nodes, {cpus:g} CPUs; code "
                  f"{'shipped with the job' if shipped else 'imported from each node'}", flush=True)
            wall_started_at = time.time()
            wall_t0 = time.perf_counter()
            outcome = _run_cluster(candles, todo, run, writer, progress, args.max_retries, every_node)
            wall_s = time.perf_counter() - wall_t0
            new, failures, fatal, put_s = outcome.records, outcome.failures, outcome.fatal, outcome.put_s
            pinned = outcome.pinned
    finally:
        writer.close()
        if owns_ray:
            ray.shutdown()

    all_records = dict(previous)
    for rec in new:
        all_records.setdefault(int(rec["id"]), rec)
    distinct_nodes = len({_node_key(r) for r in all_records.values()})
    nodes_ok = args.expect_nodes is None or distinct_nodes >= args.expect_nodes
    complete = len(all_records) == len(grid)
    status = "failed" if fatal else ("complete" if complete else "incomplete")
    best = max(all_records.values(), key=lambda r: float(r["metrics"]["sharpe"]), default=None)
    node_rows = per_node(new)
    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA,
        "mode": args.mode,
        "status": status,
        "candles": args.candles,
        "candles_mib": size_mib(candles),
        "params": args.params,
        "seed": args.seed,
        "evaluations_expected": len(grid),
        "evaluations_done": len(all_records),
        "evaluations_run": len(new),
        "evaluations_skipped": len(previous),
        "evaluations_failed": len(failures),
        "failures": failures,
        "wall_s": wall_s,
        "wall_started_at": wall_started_at,
        "total_s": time.perf_counter() - total_t0,
        "data_s": data_s,
        "put_s": put_s,
        "started_at": started_at,
        "finished_at": time.time(),
        "cluster_cpus": cpus,
        "alive_nodes": alive,
        "max_retries": args.max_retries,
        "pinned_to_nodes": pinned,
        "nodes": node_rows,
        "busy_s": sum(float(r["busy_s"]) for r in node_rows),
        "distinct_nodes": distinct_nodes,
        "expect_nodes": args.expect_nodes,
        "expect_nodes_ok": nodes_ok,
        "best": None if best is None else {"id": best["id"], "params": best["params"], "metrics": best["metrics"]},
        "results_file": None if args.results is None else str(args.results),
        "metric_names": list(METRIC_NAMES),
        "driver_hostname": socket.gethostname(),
        "versions": _versions(),
        "code": {"driver": code_fingerprint(), "shipped_by_job": shipped},
    }
    if args.summary is not None:
        _write_json(args.summary, summary)

    print(
        f"done: {status}, {len(all_records)}/{len(grid)} evaluations ({len(new)} now, {len(previous)} resumed, "
        f"{len(failures)} failed) in {wall_s:.2f}s on {distinct_nodes} node(s), {cpus:g} CPUs",
        flush=True,
    )
    for row in node_rows:
        code = ", ".join(f"{c['version']} {c['sha256']} {c['path']}" for c in row["code"]) or "-"
        print(f"  {row['hostname']:<24} {row['tasks']:>5} tasks {row['busy_s']:>9.2f}s busy  code {code}", flush=True)
    if status != "complete":
        return EXIT_FAILED
    if not nodes_ok:
        print(
            f"error: {distinct_nodes} distinct node(s) ran tasks, expected at least {args.expect_nodes}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_TOO_FEW_NODES
    return EXIT_OK


if __name__ == "__main__":
    # Re-import under the package name so Ray pickles the task by reference, not as __main__ code.
    from bittrader_workload.job import main as _main

    sys.exit(_main())
