"""Search quality against the grid: how many trials the Optuna search needs to reach the grid's best.

Evaluates the whole grid (every set of the search space, in this process), then runs the search
(:mod:`bittrader_workload.search`) once per sampler seed on a Ray started here with ``--cpus`` CPUs,
and reports for each seed the trials after which its best Sharpe reached the grid's best, and came
within 1 % of it; beside it, the same figures for the grid itself in its fixed shuffled order (what a
random order of the same sets needs). Small and local by design::

    python -m bittrader_workload.quality --candles 20000 --trials 60 --seeds 0 1 2 --out quality.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bittrader_workload.backtest import evaluate
from bittrader_workload.candles import generate_candles
from bittrader_workload.grid import MAX_PARAMS, make_grid
from bittrader_workload.search import best_so_far, trials_to_reach

REL_TOL = 0.01


def grid_sharpes(candles_n: int, seed: int) -> list[float]:
    """Sharpe of every grid set, in the grid's order (ids 0..599)."""
    candles = generate_candles(candles_n, seed)
    return [float(evaluate(candles, ps.params)["sharpe"]) for ps in make_grid(MAX_PARAMS)]


def reach(curve: Sequence[float], target: float) -> dict[str, int | None]:
    return {"best": trials_to_reach(curve, target), "within_1pct": trials_to_reach(curve, target, REL_TOL)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bittrader_workload.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candles", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0, help="candles' seed")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the sampler's seeds")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import ray

    from bittrader_workload import search

    t0 = time.perf_counter()
    sharpes = grid_sharpes(args.candles, args.seed)
    grid_s = time.perf_counter() - t0
    target = max(sharpes)
    report: dict[str, Any] = {
        "candles": args.candles, "seed": args.seed, "trials": args.trials, "cpus": args.cpus,
        "space_size": len(sharpes), "grid_best_sharpe": target, "grid_wall_s": grid_s,
        "grid_order": reach(best_so_far(sharpes), target), "runs": [],
    }
    print(f"grid: {len(sharpes)} sets in {grid_s:.1f} s, best sharpe {target:.4f}; grid order reaches it after "
          f"{report['grid_order']['best']} sets (within 1 %: {report['grid_order']['within_1pct']})", flush=True)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="bittrader-quality-") as tmp:
            for s in args.seeds:
                summary = Path(tmp) / f"seed{s}.json"
                started = time.perf_counter()
                code = search.main([
                    "--candles", str(args.candles), "--seed", str(args.seed), "--trials", str(args.trials),
                    "--concurrency", str(args.cpus), "--search-seed", str(s), "--storage", tmp, "--quiet",
                    "--summary", str(summary), "--no-ship-code",
                ])
                data = json.loads(summary.read_text())
                curve = data["plot"]["best_sharpe"]
                run = {"search_seed": s, "exit": code, "wall_s": time.perf_counter() - started,
                       "best_sharpe": max(curve),
                       "distinct_sets": len({tuple(row[k] for k in search.SPACE) for row in data["table"]}),
                       **reach(curve, target)}
                report["runs"].append(run)
                print(f"seed {s}: best {run['best_sharpe']:.4f} after {args.trials} trials "
                      f"({run['distinct_sets']} distinct sets); reached the grid's best after {run['best']} trials, "
                      f"within 1 % after {run['within_1pct']} ({run['wall_s']:.1f} s)", flush=True)
    finally:
        ray.shutdown()
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
