"""Vectorized backtest: moving-average crossover with a rolling-quantile volatility filter.

Strategy (decided on each bar's close, applied from the next bar on, so there is no look-ahead):

1. Trend signal: +1 when the fast simple moving average of ``close`` is above the slow one; when it is
   below, -1 if ``long_short`` else 0 (flat).
2. Regime filter: realized volatility is the rolling standard deviation of hourly log returns over
   ``vol_window`` bars. The strategy trades only while the current volatility is at or below the
   ``vol_quantile`` quantile of its own recent history: the last ``quantile_window`` bars sampled every
   ``quantile_step`` bars (the current bar included). This rolling quantile over the whole series is
   the heavy part of an evaluation (about 1.4 s of one core at 297,000 bars with the defaults).
3. Costs: ``fee_bps + slippage_bps`` basis points of traded notional, charged on every position
   change (a flip from -1 to +1 costs twice).

Per-bar net return ``r[t] = held[t] * (close[t] / close[t-1] - 1) - cost[t]`` where ``held[t]`` is the
target decided at bar ``t-1``; equity is the cumulative product of ``1 + r`` starting at 1. The last
position is marked to market, not closed.

Metrics (all floats except ``n_trades``):

- ``sharpe``: mean / sample standard deviation of per-bar net returns times ``sqrt(8760)`` (hourly
  bars, markets open 24/7); 0 when the returns have no variance.
- ``total_return``: final equity - 1.
- ``max_drawdown``: largest peak-to-trough fall of equity, as a positive fraction of the peak.
- ``n_trades``: number of bars at which the held position changes.
- ``exposure``: fraction of bars with a non-zero held position.
- ``annual_volatility``: sample standard deviation of per-bar net returns times ``sqrt(8760)``.
- ``final_equity``: equity after the last bar.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from bittrader_workload.candles import CANDLE_DTYPE

HOURS_PER_YEAR = 24 * 365
"""Hourly bars in a year of a market that never closes; annualizes Sharpe and volatility."""

FloatArray = NDArray[np.float64]

METRIC_NAMES: tuple[str, ...] = (
    "sharpe",
    "total_return",
    "max_drawdown",
    "n_trades",
    "exposure",
    "annual_volatility",
    "final_equity",
)


@dataclass(frozen=True)
class StrategyParams:
    """One parameter set of the strategy."""

    fast: int
    slow: int
    vol_window: int = 48
    vol_quantile: float = 0.7
    quantile_window: int = 720
    quantile_step: int = 4
    long_short: bool = False
    fee_bps: float = 10.0
    slippage_bps: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.fast < self.slow:
            raise ValueError(f"need 1 <= fast < slow, got fast={self.fast} slow={self.slow}")
        if self.vol_window < 2:
            raise ValueError("vol_window must be at least 2")
        if not 0.0 <= self.vol_quantile <= 1.0:
            raise ValueError("vol_quantile must be within [0, 1]")
        if self.quantile_step < 1 or self.quantile_window < self.quantile_step:
            raise ValueError("need 1 <= quantile_step <= quantile_window")
        if self.fee_bps < 0 or self.slippage_bps < 0:
            raise ValueError("fees and slippage must be non-negative")

    @property
    def warmup(self) -> int:
        """Index of the first bar at which every indicator is defined (a target position exists)."""
        return max(self.slow - 1, self.vol_window + self.quantile_window - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StrategyParams:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown strategy parameters: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class BacktestResult:
    """Per-bar series and metrics of one backtest."""

    position: FloatArray
    """Position held during each bar (-1, 0 or +1)."""
    net_returns: FloatArray
    equity: FloatArray
    metrics: dict[str, float | int]


def rolling_mean(x: FloatArray, window: int) -> FloatArray:
    """Simple moving average; NaN for the first ``window - 1`` values."""
    out = np.full(x.shape[0], np.nan)
    if window > x.shape[0]:
        return out
    csum = np.concatenate(([0.0], np.cumsum(x)))
    out[window - 1 :] = (csum[window:] - csum[:-window]) / window
    return out


def rolling_std(x: FloatArray, window: int) -> FloatArray:
    """Rolling sample standard deviation (ddof=1); NaN where the window is incomplete or holds NaN."""
    out = np.full(x.shape[0], np.nan)
    if window > x.shape[0]:
        return out
    clean = np.where(np.isnan(x), 0.0, x)
    bad = np.concatenate(([0], np.cumsum(np.isnan(x), dtype=np.int64)))
    s1 = np.concatenate(([0.0], np.cumsum(clean)))
    s2 = np.concatenate(([0.0], np.cumsum(clean * clean)))
    n = float(window)
    sum1 = s1[window:] - s1[:-window]
    sum2 = s2[window:] - s2[:-window]
    var = np.maximum((sum2 - sum1 * sum1 / n) / (n - 1.0), 0.0)
    res = np.sqrt(var)
    res[(bad[window:] - bad[:-window]) > 0] = np.nan
    out[window - 1 :] = res
    return out


def rolling_quantile(x: FloatArray, window: int, q: float, step: int = 1, chunk: int = 4096) -> FloatArray:
    """Rolling ``q`` quantile (linear interpolation, like ``np.quantile``) of ``x``.

    The window ending at bar ``t`` holds ``x[t], x[t - step], x[t - 2 step], ...`` within the last
    ``window`` bars. NaN where the window is incomplete or holds NaN. Computed exactly by partial sorts
    of chunks of windows, so memory stays bounded (``chunk * window / step`` floats).
    """
    n = x.shape[0]
    out = np.full(n, np.nan)
    if window > n:
        return out
    # Windows ending at t = window-1 .. n-1, newest sample first: x[t], x[t-step], ...
    views = sliding_window_view(x, window)[:, ::-1][:, ::step]
    m = views.shape[1]
    pos = q * (m - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, m - 1)
    frac = pos - lo
    kth = (lo,) if hi == lo else (lo, hi)
    for start in range(0, views.shape[0], chunk):
        block = np.partition(views[start : start + chunk], kth, axis=1)
        a = block[:, lo]
        b = block[:, hi]
        # Same interpolation formula as numpy's quantile, so results match np.quantile bit for bit.
        if frac == 0.0:
            vals = a.copy()
        elif frac >= 0.5:
            vals = b - (b - a) * (1.0 - frac)
        else:
            vals = a + (b - a) * frac
        out[window - 1 + start : window - 1 + start + vals.shape[0]] = vals
    out[_windows_with_nan(x, window, step, m)] = np.nan
    return out


def _windows_with_nan(x: FloatArray, window: int, step: int, m: int) -> NDArray[np.bool_]:
    """Mask of bars whose sampled window (``x[t], x[t-step], ...``, ``m`` samples) holds a NaN."""
    n = x.shape[0]
    isnan = np.isnan(x).astype(np.int64)
    # count[t] = NaNs among x[t], x[t-step], x[t-2 step], ... (a cumulative sum per residue class).
    count = np.zeros(n, dtype=np.int64)
    for r in range(min(step, n)):
        count[r::step] = np.cumsum(isnan[r::step])
    mask = np.zeros(n, dtype=np.bool_)
    t = np.arange(window - 1, n)
    before = t - m * step
    in_window = count[t] - np.where(before >= 0, count[np.maximum(before, 0)], 0)
    mask[window - 1 :] = in_window > 0
    return mask


def target_positions(close: FloatArray, params: StrategyParams) -> FloatArray:
    """Target position decided at each bar's close (0 until every indicator is defined)."""
    fast = rolling_mean(close, params.fast)
    slow = rolling_mean(close, params.slow)
    log_ret = np.empty_like(close)
    log_ret[0] = np.nan
    log_ret[1:] = np.diff(np.log(close))
    vol = rolling_std(log_ret, params.vol_window)
    threshold = rolling_quantile(vol, params.quantile_window, params.vol_quantile, params.quantile_step)

    with np.errstate(invalid="ignore"):
        up = fast > slow
        down = fast < slow
        calm = vol <= threshold  # False where either side is NaN
    signal = up.astype(np.float64)
    if params.long_short:
        signal -= down.astype(np.float64)
    return np.where(calm, signal, 0.0)


def simulate(
    close: FloatArray, target: FloatArray, fee_bps: float, slippage_bps: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Apply targets with a one-bar delay and costs. Returns ``(held, net_returns, equity)``."""
    n = close.shape[0]
    held = np.zeros(n)
    held[1:] = target[:-1]
    bar_ret = np.zeros(n)
    bar_ret[1:] = close[1:] / close[:-1] - 1.0
    turnover = np.abs(np.diff(held, prepend=0.0))
    cost = turnover * (fee_bps + slippage_bps) * 1e-4
    net = held * bar_ret - cost
    equity: FloatArray = np.cumprod(1.0 + net, dtype=np.float64)
    return held, net, equity


def max_drawdown(equity: FloatArray) -> float:
    """Largest peak-to-trough fall of ``equity`` as a positive fraction of the running peak."""
    if equity.shape[0] == 0:
        return 0.0
    peak = np.maximum.accumulate(equity)
    return float(np.max(1.0 - equity / peak))


def sharpe_ratio(returns: FloatArray, periods_per_year: int = HOURS_PER_YEAR) -> float:
    """Annualized Sharpe ratio (zero risk-free rate); 0 when the returns have no variance."""
    if returns.shape[0] < 2:
        return 0.0
    std = float(np.std(returns, ddof=1))
    if std == 0.0 or not math.isfinite(std):
        return 0.0
    return float(np.mean(returns)) / std * math.sqrt(periods_per_year)


def compute_metrics(held: FloatArray, net: FloatArray, equity: FloatArray) -> dict[str, float | int]:
    """The metrics of a simulated run (see the module docstring)."""
    n = held.shape[0]
    changes = int(np.count_nonzero(np.diff(held, prepend=0.0)))
    ann_vol = float(np.std(net, ddof=1)) * math.sqrt(HOURS_PER_YEAR) if n > 1 else 0.0
    return {
        "sharpe": sharpe_ratio(net),
        "total_return": float(equity[-1] - 1.0) if n else 0.0,
        "max_drawdown": max_drawdown(equity),
        "n_trades": changes,
        "exposure": float(np.count_nonzero(held)) / n if n else 0.0,
        "annual_volatility": ann_vol,
        "final_equity": float(equity[-1]) if n else 1.0,
    }


def closes_of(candles: NDArray[Any]) -> FloatArray:
    """The close prices as a contiguous float64 array (accepts candles or a plain price array)."""
    if candles.dtype == CANDLE_DTYPE:
        return np.ascontiguousarray(candles["close"], dtype=np.float64)
    return np.ascontiguousarray(candles, dtype=np.float64)


def run_backtest(candles: NDArray[Any], params: StrategyParams) -> BacktestResult:
    """Backtest ``params`` on candles (structured array of ``CANDLE_DTYPE``) or a close-price array."""
    close = closes_of(candles)
    if close.ndim != 1 or close.shape[0] < 2:
        raise ValueError("need a 1-D series of at least 2 prices")
    if not np.all(np.isfinite(close)) or not np.all(close > 0):
        raise ValueError("prices must be finite and positive")
    target = target_positions(close, params)
    held, net, equity = simulate(close, target, params.fee_bps, params.slippage_bps)
    return BacktestResult(position=held, net_returns=net, equity=equity, metrics=compute_metrics(held, net, equity))


def evaluate(candles: NDArray[Any], params: StrategyParams) -> dict[str, float | int]:
    """Metrics only: what one task of the parameter sweep returns."""
    return run_backtest(candles, params).metrics
