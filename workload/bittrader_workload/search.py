"""Search mode: Ray Tune with Optuna's sampler over the reference strategy's parameter space.

Where the grid mode (``job.py``) evaluates a fixed list of parameter sets, the search lets Optuna's
TPE sampler (Tune's ``OptunaSearch``) choose each next set from the results so far, within a trial
budget. Run on a cluster node (or anywhere ``ray.init`` reaches the cluster)::

    python -m bittrader_workload.job --mode search --storage ~/.bittrader_head/tune \\
        --results trials.jsonl --summary search.json --table search.txt

The space is the grid's (:data:`SPACE`: the same 600 sets), so a search can be compared with the
grid's best. The candles are put into Ray's object store once (``tune.with_parameters``), every trial
reads them from there. Concurrency defaults to the cluster's CPUs, the budget to
:data:`DEFAULT_ROUNDS` trials per CPU, at least :data:`DEFAULT_MIN_TRIALS` (at most the space's size).

Resume: Tune keeps the experiment (trial states, the Optuna sampler's state) in ``STORAGE/NAME`` and
this module keeps a ledger there, one flushed JSON line per finished evaluation
(``bittrader-trials.jsonl``). Run the same command again after a head restart or a stopped job:
``Tuner.can_restore`` finds the experiment, ``Tuner.restore(..., resume_errored=True)`` continues it,
and a trial that Tune's last snapshot still counts as running although its evaluation had finished
takes its result from the ledger instead of evaluating again (``replayed``). The name is derived
from the run's settings, so a changed setting starts a new experiment; ``--fresh`` starts over.

A progress line per finished trial::

    [7/24] trial 3f2a_00006 sharpe=1.23 best=1.50 node=worker1 fast=12 slow=168 vol_window=48 ...

The summary (``bittrader-workload-search/1``) holds the results table (the trials in the order they
finished, with the best Sharpe so far), the plot's data (best Sharpe against trials, trials per node)
and the bookkeeping of the resume. ``python -m bittrader_workload.report --search SUMMARY --out DIR``
draws the plot on the controller (matplotlib is not needed on the nodes).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

import bittrader_workload
from bittrader_workload.backtest import METRIC_NAMES, StrategyParams
from bittrader_workload.candles import DEFAULT_CANDLES, generate_candles, size_mib
from bittrader_workload.cli import EXIT_USAGE, UsageParser, positive_int
from bittrader_workload.grid import FAST, LONG_SHORT, MAX_PARAMS, SLOW, VOL_QUANTILES, VOL_WINDOWS

try:  # Ray Tune (ray[tune]) on the driver; the pure parts of this module work without it.
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - a node without the tune extra
    _TuneCallback = object  # type: ignore[misc,assignment]

SEARCH_SCHEMA = "bittrader-workload-search/1"
TRIAL_SCHEMA = "bittrader-workload-trial/1"
LEDGER_NAME = "bittrader-trials.jsonl"
METRIC = "sharpe"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TOO_FEW_NODES = 2
EXIT_MISMATCH = 3

SPACE: dict[str, tuple[Any, ...]] = {
    "fast": FAST,
    "slow": SLOW,
    "vol_window": VOL_WINDOWS,
    "vol_quantile": VOL_QUANTILES,
    "long_short": LONG_SHORT,
}
"""The searched parameters and their values: the grid's space (every fast < every slow)."""

DEFAULT_ROUNDS = 12
"""Default budget: this many trials per concurrent trial (CPU); see :func:`trial_budget`."""

DEFAULT_MIN_TRIALS = 64
"""Default budget's floor. Measured with quality.py (20,000 candles, sampler seeds 0-2): the search
reached the best of the grid's 600 sets after 61, 53 and 28 trials."""

DEFAULT_SEARCH_SEED = 0


# --------------------------------------------------------------------------------------------------
# The space, the budget (pure)
# --------------------------------------------------------------------------------------------------


def space_size(space: Mapping[str, Sequence[Any]] = SPACE) -> int:
    """Number of distinct parameter sets in the space (600 for :data:`SPACE`)."""
    return math.prod(len(values) for values in space.values())


def tune_space(space: Mapping[str, Sequence[Any]] = SPACE) -> dict[str, Any]:
    """Tune's search space: one categorical ``tune.choice`` per parameter (Optuna's
    CategoricalDistribution once OptunaSearch converts it)."""
    from ray import tune

    return {name: tune.choice(list(values)) for name, values in space.items()}


def params_from_config(config: Mapping[str, Any]) -> StrategyParams:
    """The strategy parameters of a trial's config (the space's keys; the rest keep their defaults)."""
    return StrategyParams(
        fast=int(config["fast"]),
        slow=int(config["slow"]),
        vol_window=int(config["vol_window"]),
        vol_quantile=float(config["vol_quantile"]),
        long_short=bool(config["long_short"]),
    )


def concurrency_for(cpus: float, requested: int | None = None) -> int:
    """Trials at once: the requested number, else one per whole CPU of the cluster (at least 1)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"concurrency must be at least 1, got {requested}")
        return requested
    return max(1, math.floor(cpus + 1e-9))


def trial_budget(concurrency: int, requested: int | None = None, rounds: int = DEFAULT_ROUNDS,
                 floor: int = DEFAULT_MIN_TRIALS, cap: int = MAX_PARAMS) -> int:
    """Trials of the search: the requested number (1..cap), else ``rounds`` per concurrent trial, so a
    bigger cluster searches more sets in the same time, and at least ``floor`` (what the search needed
    to find the grid's best); never more than the space holds."""
    if requested is not None:
        if not 1 <= requested <= cap:
            raise ValueError(f"trials must be within 1..{cap}, got {requested}")
        return requested
    return max(1, min(cap, max(floor, rounds * max(1, concurrency))))


def experiment_name(candles: int, seed: int, trials: int, search_seed: int) -> str:
    """Tune's experiment name for a run's settings: the same settings resume the same experiment."""
    return f"search-c{candles}-s{seed}-t{trials}-o{search_seed}"


# --------------------------------------------------------------------------------------------------
# Ledger and resume bookkeeping (pure)
# --------------------------------------------------------------------------------------------------


def read_ledger(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ledger's evaluation records in the order they were written; a missing file is empty, lines
    that are not complete records (one cut by a crash) are skipped."""
    return [rec for rec in bittrader_workload.jsonl_records(path)
            if isinstance(rec.get("trial_id"), str) and isinstance(rec.get("metrics"), dict)]


@dataclass
class ResumeState:
    """What a ledger says about an experiment: its finished trials and whether any was evaluated twice."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The first evaluation record of each finished trial, by trial id, in ledger order."""
    evaluations: int = 0
    repeated: list[str] = field(default_factory=list)
    """Trial ids with more than one evaluation (a resume that repeated work: must stay empty)."""
    attempts: dict[str, int] = field(default_factory=dict)
    """Evaluations per driver attempt (each invocation of the search)."""


def resume_state(records: Iterable[dict[str, Any]]) -> ResumeState:
    state = ResumeState()
    for rec in records:
        state.evaluations += 1
        trial_id = str(rec["trial_id"])
        if trial_id in state.done:
            if trial_id not in state.repeated:
                state.repeated.append(trial_id)
        else:
            state.done[trial_id] = rec
        attempt = str(rec.get("attempt", "?"))
        state.attempts[attempt] = state.attempts.get(attempt, 0) + 1
    return state


def replay_results(state: ResumeState) -> dict[str, dict[str, Any]]:
    """What a restored trial that already finished reports instead of evaluating: its ledger metrics
    and where they were computed, by trial id."""
    return {
        trial_id: {"metrics": rec["metrics"], "hostname": rec.get("hostname"), "node_id": rec.get("node_id"),
                   "duration": rec.get("duration", 0.0)}
        for trial_id, rec in state.done.items()
    }


# --------------------------------------------------------------------------------------------------
# Table and plot data (pure)
# --------------------------------------------------------------------------------------------------


def _sharpe(rec: Mapping[str, Any]) -> float:
    value = float(rec["metrics"][METRIC])
    return value if math.isfinite(value) else -math.inf


def best_so_far(values: Iterable[float]) -> list[float]:
    """Running maximum."""
    out: list[float] = []
    best = -math.inf
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


def trials_to_reach(curve: Sequence[float], target: float, rel_tol: float = 0.0) -> int | None:
    """1-based number of trials after which the best-so-far curve is within ``rel_tol`` (a fraction) of
    ``target`` (``>= target - rel_tol * |target|``); None when it never gets there."""
    threshold = target - rel_tol * abs(target)
    for i, value in enumerate(curve, start=1):
        if value >= threshold - 1e-12:
            return i
    return None


TABLE_COLUMNS: tuple[str, ...] = (
    "n", "trial_id", "node", *SPACE, "sharpe", "best_sharpe", "total_return", "max_drawdown", "n_trades",
    "duration_s",
)


def results_table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished trial in the order they finished, with the best Sharpe so far."""
    done = resume_state(records).done.values()
    curve = best_so_far(_sharpe(r) for r in done)
    rows: list[dict[str, Any]] = []
    for n, (rec, best) in enumerate(zip(done, curve, strict=True), start=1):
        metrics, params = rec["metrics"], rec.get("params", {})
        rows.append({
            "n": n,
            "trial_id": rec["trial_id"],
            "node": rec.get("hostname"),
            **{name: params.get(name) for name in SPACE},
            "sharpe": float(metrics[METRIC]),
            "best_sharpe": best,
            "total_return": float(metrics["total_return"]),
            "max_drawdown": float(metrics["max_drawdown"]),
            "n_trades": int(metrics["n_trades"]),
            "duration_s": float(rec.get("duration", 0.0)),
        })
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """The results table as aligned text (what the playbook prints and fetches)."""
    cells = [list(columns)] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.rjust(w) for text, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(row))
    return buf.getvalue()


def plot_data(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The plot's series: each trial's Sharpe and the best so far against the trial number, and the
    number of trials each node ran (sorted by node name)."""
    nodes: dict[str, int] = {}
    for row in rows:
        name = str(row.get("node"))
        nodes[name] = nodes.get(name, 0) + 1
    return {
        "trial": [int(r["n"]) for r in rows],
        "sharpe": [float(r["sharpe"]) for r in rows],
        "best_sharpe": [float(r["best_sharpe"]) for r in rows],
        "trials_per_node": dict(sorted(nodes.items())),
    }


# --------------------------------------------------------------------------------------------------
# The trial (runs on the nodes) and the driver's ledger callback
# --------------------------------------------------------------------------------------------------


def run_trial(config: dict[str, Any], candles: NDArray[Any], replay: dict[str, dict[str, Any]]) -> None:
    """Tune's function trainable: one backtest of the config, reported once. ``candles`` comes from the
    object store (``tune.with_parameters`` put it there once). A trial that the ledger already holds
    (finished after Tune's last snapshot, before the stop) reports the ledger's result instead."""
    from ray import tune

    from bittrader_workload.backtest import evaluate
    from bittrader_workload.job import SINGLE_THREAD_ENV, code_fingerprint

    for name, value in SINGLE_THREAD_ENV.items():
        os.environ[name] = value
    trial_id = tune.get_context().get_trial_id() or ""
    node_id = None
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside a Ray worker (never on a cluster)
        node_id = None
    earlier = replay.get(trial_id)
    if earlier is not None:
        tune.report({**earlier["metrics"], "hostname": earlier["hostname"], "node_id": earlier["node_id"],
                     "duration": earlier["duration"], "replayed": True, "start": 0.0, "end": 0.0})
        return
    start = time.time()
    t0 = time.perf_counter()
    metrics = evaluate(candles, params_from_config(config))
    duration = time.perf_counter() - t0
    tune.report({**metrics, "hostname": socket.gethostname(), "node_id": node_id, "duration": duration,
                 "replayed": False, "start": start, "end": time.time(), "code": code_fingerprint()["sha256"]})


class LedgerWriter:
    """Appends evaluation records to the ledger, flushed and fsynced one by one."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = path.exists() and path.stat().st_size > 0 and path.read_bytes()[-1:] != b"\n"
        self._fh: IO[str] = path.open("a", encoding="utf-8")
        if needs_newline:
            self._fh.write("\n")

    def write(self, record: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def trial_record(trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any], run: Mapping[str, Any],
                 attempt: str) -> dict[str, Any]:
    """The ledger line of one finished evaluation, from the trial's reported result."""
    return {
        "schema": TRIAL_SCHEMA,
        "trial_id": trial_id,
        "params": {name: config[name] for name in SPACE},
        "metrics": {name: result[name] for name in METRIC_NAMES},
        "hostname": result.get("hostname"),
        "node_id": result.get("node_id"),
        "duration": float(result.get("duration") or 0.0),
        "start": float(result.get("start") or 0.0),
        "end": float(result.get("end") or 0.0),
        "code": result.get("code"),
        "candles": int(run["candles"]),
        "seed": int(run["seed"]),
        "attempt": attempt,
    }


@dataclass
class _Tally:
    """The driver's account of this invocation: the ledger so far, what ran now, the progress lines."""

    total: int
    quiet: bool
    out: IO[str]
    state: ResumeState
    attempt: str
    run: dict[str, Any]
    writer: LedgerWriter | None = None
    evaluated: list[dict[str, Any]] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    errored: list[str] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max((_sharpe(r) for r in self.state.done.values()), default=-math.inf)

    def finished(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        if result.get("replayed"):
            self.replayed.append(trial_id)
            return
        record = trial_record(trial_id, config, result, self.run, self.attempt)
        if self.writer is not None:
            self.writer.write(record)
        self.evaluated.append(record)
        self.state.evaluations += 1
        if trial_id in self.state.done:
            self.state.repeated.append(trial_id)
        else:
            self.state.done[trial_id] = record
        if self.quiet:
            return
        width = len(str(self.total))
        params = " ".join(f"{k}={v}" for k, v in record["params"].items())
        self.out.write(
            f"[{len(self.state.done):>{width}}/{self.total}] trial {trial_id} sharpe={_sharpe(record):.3f} "
            f"best={self.best:.3f} node={record['hostname']} {params} {record['duration']:.2f}s\n"
        )
        self.out.flush()


class LedgerCallback(_TuneCallback):  # type: ignore[misc,valid-type]
    """Tune callback on the driver: each finished trial's evaluation goes to the ledger, with its progress
    line. Tune pickles its run configuration with the experiment: the tally (an open file) is not part
    of the pickled state, and a restored run attaches a new one."""

    def __init__(self, tally: _Tally | None = None) -> None:
        super().__init__()
        self.tally = tally

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tally = None

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if self.tally is not None and METRIC in result:
            self.tally.finished(trial.trial_id, trial.config, result)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if self.tally is not None:
            self.tally.errored.append(trial.trial_id)
        print(f"warning: trial {trial.trial_id} failed", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="python -m bittrader_workload.job --mode search",
        description="Ray Tune + Optuna search of the reference strategy's parameters (resumable).",
    )
    parser.add_argument("--mode", choices=("search",), default="search", help=argparse.SUPPRESS)
    parser.add_argument("--candles", type=positive_int, default=DEFAULT_CANDLES, help="hourly candles (297000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic candles (0)")
    parser.add_argument("--trials", type=positive_int, default=None,
                        help=f"trial budget, 1..{MAX_PARAMS} (default {DEFAULT_ROUNDS} per concurrent trial, at least "
                        f"{DEFAULT_MIN_TRIALS})")
    parser.add_argument("--concurrency", type=positive_int, default=None,
                        help="trials at once (default: the cluster's CPUs)")
    parser.add_argument("--search-seed", type=int, default=DEFAULT_SEARCH_SEED, help="Optuna sampler's seed (0)")
    parser.add_argument("--storage", type=Path, default=Path("~/bittrader-search"),
                        help="folder of Tune's experiments on the driver's machine (the head)")
    parser.add_argument("--name", default=None, help="experiment name (default: from the run's settings)")
    parser.add_argument("--fresh", action="store_true", help="remove the experiment first instead of resuming it")
    parser.add_argument("--address", default="auto", help='Ray address for ray.init ("auto")')
    parser.add_argument("--local-cpus", type=positive_int, default=None,
                        help="start a Ray of this many CPUs in this process instead of joining a cluster")
    parser.add_argument("--results", type=Path, default=None, help="copy of the ledger (JSON lines, every trial)")
    parser.add_argument("--summary", type=Path, default=None, help="summary JSON (table, plot data, resume)")
    parser.add_argument("--table", type=Path, default=None, help="results table as text (a .csv beside it)")
    parser.add_argument("--expect-nodes", type=int, default=None,
                        help="exit 2 unless at least N distinct nodes ran trials (over the whole experiment)")
    parser.add_argument("--no-ship-code", action="store_true",
                        help="do not upload this package to the workers (py_modules)")
    parser.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    return parser


def _write_text(path: Path, text: str) -> None:
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _check_ledger(records: Sequence[dict[str, Any]], run: Mapping[str, Any]) -> str | None:
    for rec in records:
        if rec.get("candles") != run["candles"] or rec.get("seed") != run["seed"]:
            return (f"the experiment's ledger holds trial {rec.get('trial_id')} of another run (candles="
                    f"{rec.get('candles')}, seed={rec.get('seed')}): use another --name or --fresh")
    return None


def _sigterm_to_sigint(signum: int, frame: FrameType | None) -> None:
    """`ray job stop` sends SIGTERM: let Tune stop as on Ctrl-C (it saves the experiment's state)."""
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    started_at = time.time()
    total_t0 = time.perf_counter()
    run = {"candles": args.candles, "seed": args.seed, "mode": "search"}
    # Tune's experiment snapshot after every step of its loop (default: every 10 s or more): a stopped
    # run then loses at most the trials that finished in the last step, and those are replayed from the
    # ledger, not evaluated again.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    owns_ray = False
    if not ray.is_initialized():
        package_dir = os.path.dirname(bittrader_workload.__file__)
        runtime_env = None if args.no_ship_code else {"py_modules": [package_dir]}
        if args.local_cpus is not None:
            ray.init(num_cpus=args.local_cpus, runtime_env=runtime_env, logging_level=logging.WARNING,
                     include_dashboard=False)
        else:
            ray.init(address=args.address, runtime_env=runtime_env, logging_level=logging.WARNING)
        owns_ray = True
    try:
        from bittrader_workload.job import cluster_resources

        cpus, alive = cluster_resources()
        concurrency = concurrency_for(cpus, args.concurrency)
        try:
            trials = trial_budget(concurrency, args.trials)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        concurrency = min(concurrency, trials)
        name = args.name or experiment_name(args.candles, args.seed, trials, args.search_seed)
        storage = args.storage.expanduser().resolve()
        exp_dir = storage / name
        if args.fresh and exp_dir.exists():
            import shutil

            shutil.rmtree(exp_dir)
        ledger_path = exp_dir / LEDGER_NAME
        previous = read_ledger(ledger_path)
        problem = _check_ledger(previous, run)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_MISMATCH
        state = resume_state(previous)
        resumed = len(state.done)
        restored = tune.Tuner.can_restore(str(exp_dir))
        attempt = f"{socket.gethostname()}-{os.getpid()}-{int(started_at)}"
        print(
            f"bittrader search: candles={args.candles} seed={args.seed} trials={trials} concurrency={concurrency} "
            f"search-seed={args.search_seed}; cluster: {alive} alive nodes, {cpus:g} CPUs; experiment {exp_dir} "
            f"({'resumed: ' + str(len(state.done)) + ' trials already finished' if restored else 'new'})",
            flush=True,
        )

        t0 = time.perf_counter()
        candles = generate_candles(args.candles, args.seed)
        data_s = time.perf_counter() - t0
        tally = _Tally(total=trials, quiet=args.quiet, out=sys.stdout, state=state, attempt=attempt, run=run)
        tally.writer = LedgerWriter(ledger_path)
        # Candles into the object store once; every trial gets the same object (zero-copy per node).
        trainable = tune.with_parameters(run_trial, candles=candles, replay=replay_results(state))
        run_config = tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                    callbacks=[LedgerCallback(tally)])
        if restored:
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_errored=True)
        else:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            searcher = OptunaSearch(metric=METRIC, mode="max", seed=args.search_seed)
            tuner = tune.Tuner(
                trainable,
                param_space=tune_space(),
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials,
                                            max_concurrent_trials=concurrency, reuse_actors=True),
                run_config=run_config,
            )
        if restored:
            # The restored experiment keeps its RunConfig (name, storage) but not the callbacks (code):
            # give it the ledger callback again.
            local: Any = tuner._local_tuner
            local._run_config.callbacks = [LedgerCallback(tally)]
            local._run_config.verbose = 0
        previous_handler = signal.signal(signal.SIGTERM, _sigterm_to_sigint)
        wall_t0 = time.perf_counter()
        try:
            tuner.fit()
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            tally.writer.close()
        wall_s = time.perf_counter() - wall_t0
    finally:
        if owns_ray:
            ray.shutdown()

    records = read_ledger(ledger_path)
    final = resume_state(records)
    rows = results_table(records)
    plot = plot_data(rows)
    nodes = plot["trials_per_node"]
    complete = len(final.done) >= trials and not final.repeated
    nodes_ok = args.expect_nodes is None or len(nodes) >= args.expect_nodes
    best = max(final.done.values(), key=_sharpe, default=None)
    summary: dict[str, Any] = {
        "schema": SEARCH_SCHEMA,
        "mode": "search",
        "status": "complete" if complete else "incomplete",
        "candles": args.candles,
        "candles_mib": size_mib(candles),
        "seed": args.seed,
        "search_seed": args.search_seed,
        "sampler": "optuna TPESampler (ray.tune.search.optuna.OptunaSearch)",
        "space": {k: list(v) for k, v in SPACE.items()},
        "space_size": space_size(),
        "trials_expected": trials,
        "trials_done": len(final.done),
        "trials_run": len(tally.evaluated),
        "trials_resumed": resumed,
        "trials_replayed": len(tally.replayed),
        "trials_errored": len(tally.errored),
        "evaluations": final.evaluations,
        "repeated": final.repeated,
        "attempts": final.attempts,
        "restored": restored,
        "concurrency": concurrency,
        "cluster_cpus": cpus,
        "alive_nodes": alive,
        "expect_nodes": args.expect_nodes,
        "expect_nodes_ok": nodes_ok,
        "experiment": str(exp_dir),
        "ledger": str(ledger_path),
        "wall_s": wall_s,
        "total_s": time.perf_counter() - total_t0,
        "data_s": data_s,
        "started_at": started_at,
        "finished_at": time.time(),
        "best": None if best is None else {"trial_id": best["trial_id"], "params": best["params"],
                                          "metrics": best["metrics"], "hostname": best.get("hostname")},
        "table": rows,
        "plot": plot,
        "driver_hostname": socket.gethostname(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "ray": ray.__version__,
                     "optuna": _optuna_version(), "workload": bittrader_workload.__version__},
    }
    if args.results is not None:
        _write_text(args.results, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    if args.summary is not None:
        _write_text(args.summary, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if args.table is not None:
        _write_text(args.table, format_table(rows))
        _write_text(args.table.with_suffix(".csv"), table_csv(rows))
    print(
        f"done: {summary['status']}, {len(final.done)}/{trials} trials ({len(tally.evaluated)} now, "
        f"{resumed} resumed, {len(tally.replayed)} replayed, {len(final.repeated)} repeated) in "
        f"{wall_s:.2f}s on {len(nodes)} node(s); best sharpe "
        f"{'-' if best is None else format(_sharpe(best), '.4f')}"
        + ("" if best is None else f" {best['params']}"),
        flush=True,
    )
    for node, count in nodes.items():
        print(f"  {node:<24} {count:>5} trials", flush=True)
    if not complete:
        return EXIT_FAILED
    if not nodes_ok:
        print(f"error: {len(nodes)} distinct node(s) ran trials, expected at least {args.expect_nodes}",
              file=sys.stderr, flush=True)
        return EXIT_TOO_FEW_NODES
    return EXIT_OK


def _optuna_version() -> str | None:
    try:
        import optuna

        return str(optuna.__version__)
    except ImportError:
        return None


if __name__ == "__main__":
    from bittrader_workload.search import main as _main

    sys.exit(_main())
