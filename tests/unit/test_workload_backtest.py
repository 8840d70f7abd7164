"""Backtest: rolling indicators, the strategy's mechanics and its metrics on hand-made series."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workload"))

from bittrader_workload.backtest import (
    HOURS_PER_YEAR,
    METRIC_NAMES,
    StrategyParams,
    evaluate,
    max_drawdown,
    rolling_mean,
    rolling_quantile,
    rolling_std,
    run_backtest,
    sharpe_ratio,
    simulate,
    target_positions,
)
from bittrader_workload.candles import generate_candles

# Small windows so that hand-made series of a few thousand bars are enough.
SMALL = {"vol_window": 10, "quantile_window": 50, "quantile_step": 1}


def rising(n: int = 1_500, step: float = 0.001) -> np.ndarray:
    return 100.0 * (1.0 + step) ** np.arange(n, dtype=np.float64)


def test_rolling_mean_and_std_match_naive() -> None:
    x = np.random.default_rng(0).normal(size=500)
    mean = rolling_mean(x, 7)
    std = rolling_std(x, 7)
    assert np.all(np.isnan(mean[:6])) and np.all(np.isnan(std[:6]))
    for t in range(6, 500):
        assert mean[t] == pytest.approx(np.mean(x[t - 6 : t + 1]), abs=1e-12)
        assert std[t] == pytest.approx(np.std(x[t - 6 : t + 1], ddof=1), abs=1e-12)
    x[100] = np.nan
    std = rolling_std(x, 7)
    assert np.all(np.isnan(std[100:107])) and not np.isnan(std[107]) and not np.isnan(std[99])


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("step", [1, 3])
def test_rolling_quantile_equals_numpy_quantile(q: float, step: int) -> None:
    x = np.random.default_rng(1).random(600)
    x[:20] = np.nan
    got = rolling_quantile(x, 60, q, step, chunk=64)
    for t in range(600):
        window = x[max(0, t - 59) : t + 1][::-1][::step]
        if t < 59 or np.isnan(window).any():
            assert np.isnan(got[t])
        else:
            assert got[t] == np.quantile(window, q)  # bit for bit


def test_always_long_on_a_rising_series_has_the_known_return() -> None:
    close = rising()
    params = StrategyParams(fast=5, slow=20, vol_quantile=1.0, fee_bps=0.0, slippage_bps=0.0, **SMALL)
    res = run_backtest(close, params)
    warm = params.warmup
    assert warm == 10 + 50 - 1
    assert np.all(res.position[: warm + 1] == 0.0)
    assert np.all(res.position[warm + 1 :] == 1.0)
    m = res.metrics
    assert m["total_return"] == pytest.approx(close[-1] / close[warm] - 1.0, rel=1e-10)
    assert m["n_trades"] == 1
    assert m["exposure"] == pytest.approx((len(close) - warm - 1) / len(close))
    assert m["max_drawdown"] == pytest.approx(0.0, abs=1e-12)
    assert m["sharpe"] > 0
    assert set(m) == set(METRIC_NAMES)


def test_fees_and_slippage_reduce_the_return_by_the_known_amount() -> None:
    close = rising()
    free = StrategyParams(fast=5, slow=20, vol_quantile=1.0, fee_bps=0.0, slippage_bps=0.0, **SMALL)
    costly = StrategyParams(fast=5, slow=20, vol_quantile=1.0, fee_bps=10.0, slippage_bps=5.0, **SMALL)
    r_free = run_backtest(close, free).metrics["total_return"]
    r_cost = run_backtest(close, costly).metrics["total_return"]
    assert r_cost < r_free
    # One entry at bar warm+1: that bar's return r becomes r - 0.0015.
    r = 0.001
    expected = (1.0 + r_free) * (1.0 + r - 0.0015) / (1.0 + r) - 1.0
    assert r_cost == pytest.approx(expected, rel=1e-10)


def test_simulate_always_long_and_turnover_costs() -> None:
    close = np.array([100.0, 110.0, 99.0, 120.0])
    held, net, equity = simulate(close, np.ones(4), 0.0, 0.0)
    assert held.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert equity[-1] == pytest.approx(close[-1] / close[0])
    # A flip from long to short trades twice the notional.
    held, net, _ = simulate(close, np.array([1.0, -1.0, -1.0, 0.0]), 10.0, 0.0)
    assert held.tolist() == [0.0, 1.0, -1.0, -1.0]
    assert net[1] == pytest.approx(0.1 - 0.001)
    assert net[2] == pytest.approx(-1.0 * (99.0 / 110.0 - 1.0) - 0.002)


def test_long_short_profits_on_a_falling_series() -> None:
    close = rising(step=-0.001)
    long_only = StrategyParams(fast=5, slow=20, vol_quantile=1.0, **SMALL)
    long_short = StrategyParams(fast=5, slow=20, vol_quantile=1.0, long_short=True, **SMALL)
    assert run_backtest(close, long_only).metrics["exposure"] == 0.0
    m = run_backtest(close, long_short).metrics
    assert m["total_return"] > 0 and m["n_trades"] == 1


def test_max_drawdown_of_a_known_curve() -> None:
    assert max_drawdown(np.array([1.0, 1.2, 0.9, 1.1, 1.3, 0.65])) == pytest.approx(0.5)
    assert max_drawdown(np.array([1.0, 2.0, 3.0])) == 0.0
    assert max_drawdown(np.array([2.0, 1.5, 1.0])) == pytest.approx(0.5)


def test_sharpe_ratio() -> None:
    r = np.array([0.01, -0.01, 0.02, 0.0])
    expected = np.mean(r) / np.std(r, ddof=1) * math.sqrt(HOURS_PER_YEAR)
    assert sharpe_ratio(r) == pytest.approx(expected)
    assert sharpe_ratio(np.zeros(10)) == 0.0
    assert sharpe_ratio(np.array([0.5])) == 0.0


def test_filter_blocks_turbulent_bars() -> None:
    candles = generate_candles(6_000, seed=2)
    close = candles["close"]
    base = {"fast": 12, "slow": 72, "vol_window": 24}
    strict = target_positions(close, StrategyParams(vol_quantile=0.0, **base))
    loose = target_positions(close, StrategyParams(vol_quantile=1.0, **base))
    assert np.count_nonzero(strict) < np.count_nonzero(loose)


def test_no_look_ahead() -> None:
    candles = generate_candles(5_000, seed=4)
    params = StrategyParams(fast=8, slow=120, vol_window=24)
    full = target_positions(candles["close"], params)
    prefix = target_positions(candles["close"][:3_000], params)
    assert np.array_equal(full[:3_000], prefix)


def test_evaluate_is_deterministic_on_candles() -> None:
    candles = generate_candles(5_000, seed=5)
    params = StrategyParams(fast=4, slow=72, vol_window=24, long_short=True)
    a = evaluate(candles, params)
    b = evaluate(candles.copy(), params)
    assert a == b
    assert isinstance(a["n_trades"], int) and a["n_trades"] > 0
    assert all(math.isfinite(float(v)) for v in a.values())


def test_params_validation_and_round_trip() -> None:
    p = StrategyParams(fast=5, slow=20, long_short=True)
    assert StrategyParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError):
        StrategyParams(fast=20, slow=5)
    with pytest.raises(ValueError):
        StrategyParams(fast=5, slow=20, vol_quantile=1.5)
    with pytest.raises(ValueError, match="unknown"):
        StrategyParams.from_dict({"fast": 5, "slow": 20, "bogus": 1})
    with pytest.raises(ValueError):
        run_backtest(np.array([1.0, -1.0, 2.0]), p)
