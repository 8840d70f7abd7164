"""The parameter grid of the sweep: deterministic order, stable ids.

The full grid is the Cartesian product of :data:`FAST`, :data:`SLOW`, :data:`VOL_WINDOWS`,
:data:`VOL_QUANTILES` and :data:`LONG_SHORT` (600 sets). It is shuffled once by a fixed, portable
pseudo-random permutation (splitmix64 with :data:`GRID_SEED`, independent of Python's and numpy's
generators), so the first ``count`` sets cover the whole space evenly. Set ``i`` is always the same
parameters whatever ``count`` is: a grid of 80 is the first 80 sets of a grid of 600, which keeps ids
meaningful across resumed runs.

Every set shares ``quantile_window`` / ``quantile_step`` (the cost of an evaluation does not depend on
the set) and the cost model (``fee_bps``, ``slippage_bps``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from bittrader_workload.backtest import StrategyParams

FAST: tuple[int, ...] = (4, 8, 12, 24, 48)
SLOW: tuple[int, ...] = (72, 120, 168, 336, 504)
VOL_WINDOWS: tuple[int, ...] = (24, 48, 96)
VOL_QUANTILES: tuple[float, ...] = (0.5, 0.7, 0.85, 0.95)
LONG_SHORT: tuple[bool, ...] = (False, True)

DEFAULT_PARAMS = 80
"""Default number of parameter sets."""

GRID_SEED = 0x5EED_B17_7ADE
"""Seed of the fixed permutation of the full grid. Changing it changes what every id means."""

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ParamSet:
    """A parameter set with its id (its position in the grid)."""

    id: int
    params: StrategyParams

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "params": self.params.to_dict()}


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def _permutation(size: int, seed: int) -> list[int]:
    """Fisher-Yates shuffle of ``range(size)`` driven by splitmix64 (portable, version independent)."""
    order = list(range(size))
    state = seed & _MASK64
    for i in range(size - 1, 0, -1):
        state, z = _splitmix64(state)
        j = z % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def full_grid(
    quantile_window: int = 720, quantile_step: int = 4, fee_bps: float = 10.0, slippage_bps: float = 5.0
) -> list[StrategyParams]:
    """Every parameter set, in the grid's canonical (shuffled) order."""
    product = [
        StrategyParams(
            fast=fast,
            slow=slow,
            vol_window=vol_window,
            vol_quantile=q,
            quantile_window=quantile_window,
            quantile_step=quantile_step,
            long_short=long_short,
            fee_bps=fee_bps,
            slippage_bps=slippage_bps,
        )
        for fast, slow, vol_window, q, long_short in itertools.product(
            FAST, SLOW, VOL_WINDOWS, VOL_QUANTILES, LONG_SHORT
        )
    ]
    return [product[k] for k in _permutation(len(product), GRID_SEED)]


MAX_PARAMS = len(FAST) * len(SLOW) * len(VOL_WINDOWS) * len(VOL_QUANTILES) * len(LONG_SHORT)
"""Size of the full grid (600)."""


def make_grid(count: int = DEFAULT_PARAMS, **overrides: Any) -> list[ParamSet]:
    """The first ``count`` parameter sets, with ids ``0 .. count-1``.

    ``overrides`` (``quantile_window``, ``quantile_step``, ``fee_bps``, ``slippage_bps``) apply to every
    set.
    """
    if not 1 <= count <= MAX_PARAMS:
        raise ValueError(f"count must be within 1..{MAX_PARAMS}, got {count}")
    return [ParamSet(id=i, params=p) for i, p in enumerate(full_grid(**overrides)[:count])]
