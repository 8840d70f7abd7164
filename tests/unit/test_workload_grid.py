"""Parameter grid: size, deterministic order, stable ids."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workload"))

from bittrader_workload.backtest import StrategyParams
from bittrader_workload.grid import (
    DEFAULT_PARAMS,
    FAST,
    LONG_SHORT,
    MAX_PARAMS,
    SLOW,
    VOL_QUANTILES,
    VOL_WINDOWS,
    full_grid,
    make_grid,
)


def test_default_size_and_ids() -> None:
    grid = make_grid()
    assert DEFAULT_PARAMS == 80
    assert len(grid) == 80
    assert [ps.id for ps in grid] == list(range(80))
    assert len({ps.params for ps in grid}) == 80


def test_deterministic_order_and_prefix_property() -> None:
    assert make_grid(80) == make_grid(80)
    assert make_grid(10) == make_grid(80)[:10]
    assert make_grid(MAX_PARAMS)[:80] == make_grid(80)
    # Pinned: set 0 must keep its meaning, or resumed results files would mix parameter sets.
    assert make_grid(1)[0].params == StrategyParams(fast=4, slow=504, vol_window=48, vol_quantile=0.7)


def test_full_grid_is_the_whole_product() -> None:
    every = full_grid()
    assert len(every) == MAX_PARAMS == len(FAST) * len(SLOW) * len(VOL_WINDOWS) * len(VOL_QUANTILES) * len(LONG_SHORT)
    assert len(set(every)) == MAX_PARAMS
    assert all(p.fast < p.slow for p in every)
    assert {p.quantile_window for p in every} == {720}


def test_first_80_cover_every_value() -> None:
    grid = [ps.params for ps in make_grid(80)]
    assert {p.fast for p in grid} == set(FAST)
    assert {p.slow for p in grid} == set(SLOW)
    assert {p.vol_window for p in grid} == set(VOL_WINDOWS)
    assert {p.vol_quantile for p in grid} == set(VOL_QUANTILES)
    assert {p.long_short for p in grid} == set(LONG_SHORT)


def test_overrides_and_bounds() -> None:
    grid = make_grid(5, fee_bps=0.0, quantile_window=240)
    assert all(ps.params.fee_bps == 0.0 and ps.params.quantile_window == 240 for ps in grid)
    assert grid[0].to_dict()["params"]["fee_bps"] == 0.0
    with pytest.raises(ValueError):
        make_grid(0)
    with pytest.raises(ValueError):
        make_grid(MAX_PARAMS + 1)
