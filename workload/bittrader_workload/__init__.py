"""Bittrader reference workload: "the first test optimization".

A parameter sweep of a vectorized moving-average-crossover backtest with a rolling-quantile volatility
filter, over synthetic hourly candles, run as one Ray task per parameter set (or serially, for a
baseline). Modules:

- ``candles``: deterministic synthetic OHLCV candles (numpy structured array).
- ``backtest``: the strategy, its costs and its metrics.
- ``grid``: the deterministic parameter grid.
- ``job``: the Ray job (``python -m bittrader_workload.job``), resumable results, result comparison.
- ``report``: controller-side speedup report and chart (``python -m bittrader_workload.report``).

Importing the package caps the BLAS/OpenMP thread pools at one thread unless the caller already chose
a value: every evaluation is one task on one CPU, and multi-threaded numerical libraries would
oversubscribe the node's cores. Ray tasks set the same variables to 1 explicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

THREAD_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

for _name in THREAD_ENV_VARS:
    os.environ.setdefault(_name, "1")

__version__ = "1.0.0"

__all__ = ["THREAD_ENV_VARS", "__version__"]


def jsonl_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per complete line; blank lines and lines that are not
    complete JSON (one cut by a crash) are skipped; nothing when the file does not exist."""
    p = Path(path)
    if not p.exists():
        return
    with p.open("r", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec
