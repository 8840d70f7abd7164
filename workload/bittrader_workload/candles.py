"""Synthetic hourly OHLCV candles: deterministic for a seed, realistic enough to backtest on.

Model
-----
* A Markov chain over volatility regimes (calm, normal, turbulent by default) with persistent states;
  each regime has its own hourly volatility and drift.
* Hourly log returns: ``drift[state] + vol[state] * seasonality(hour) * t``, with ``t`` Student-t noise
  scaled to unit variance (fat tails).
* ``close`` is the exponential of the cumulative log return times a start price; each bar opens at the
  previous close moved by a small gap; ``high``/``low`` extend beyond ``max/min(open, close)`` by
  half-normal excursions proportional to the regime's volatility, so ``low <= open, close <= high``.
* ``volume`` rises with the regime's volatility and the bar's absolute return, with log-normal noise
  and an intraday pattern.

Format
------
A one-dimensional numpy structured array of dtype :data:`CANDLE_DTYPE` (fields ``open``, ``high``,
``low``, ``close``, ``volume``, all float64: 40 bytes a row, 11.33 MiB for 297,000 rows). Bar ``i``
covers the hour starting at ``start + i * 3600`` seconds (see :func:`hourly_timestamps`); timestamps
are implicit to keep the array small. Access a column as ``candles["close"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

CANDLE_DTYPE = np.dtype([("open", "<f8"), ("high", "<f8"), ("low", "<f8"), ("close", "<f8"), ("volume", "<f8")])
"""Fields of one candle; every field is float64."""

DEFAULT_CANDLES = 297_000
"""Default number of hourly candles (about 34 years of hours; 11.33 MiB)."""

DEFAULT_START = 1_420_070_400
"""Default timestamp of the first bar: 2015-01-01T00:00:00Z (Unix seconds)."""

HOUR = 3600


@dataclass(frozen=True)
class RegimeModel:
    """Parameters of the synthetic market. Defaults resemble a liquid crypto pair's hourly bars."""

    vols: tuple[float, ...] = (0.0035, 0.0080, 0.0190)
    """Hourly standard deviation of log returns in each regime."""
    drifts: tuple[float, ...] = (0.00004, 0.000005, -0.0001)
    """Hourly mean log return in each regime."""
    transition: tuple[tuple[float, ...], ...] = (
        (0.9960, 0.0035, 0.0005),
        (0.0030, 0.9940, 0.0030),
        (0.0010, 0.0140, 0.9850),
    )
    """Row-stochastic matrix of hourly regime transitions (row: from, column: to)."""
    student_df: float = 5.0
    """Degrees of freedom of the return noise (fat tails); must exceed 2."""
    start_price: float = 20_000.0
    base_volume: float = 250.0
    """Typical volume of a bar in the first regime."""
    gap_fraction: float = 0.05
    """Open-versus-previous-close gap, as a fraction of the regime's volatility."""
    wick_fraction: float = 0.6
    """Scale of the high/low excursions beyond the body, as a fraction of the regime's volatility."""

    def validate(self) -> None:
        k = len(self.vols)
        if k < 1 or len(self.drifts) != k or len(self.transition) != k:
            raise ValueError("vols, drifts and transition must describe the same number of regimes")
        for row in self.transition:
            if len(row) != k or any(p < 0 for p in row) or abs(sum(row) - 1.0) > 1e-9:
                raise ValueError("each transition row must hold non-negative probabilities summing to 1")
        if any(v <= 0 for v in self.vols):
            raise ValueError("volatilities must be positive")
        if self.student_df <= 2:
            raise ValueError("student_df must exceed 2 (finite variance)")
        if self.start_price <= 0 or self.base_volume <= 0:
            raise ValueError("start_price and base_volume must be positive")


def _regime_path(n: int, model: RegimeModel, rng: np.random.Generator) -> NDArray[np.int8]:
    """Simulate the regime of each bar: geometric sojourns, then a jump to another regime."""
    k = len(model.vols)
    trans = np.asarray(model.transition, dtype=np.float64)
    states = np.empty(n, dtype=np.int8)
    # Start from the stationary distribution (left eigenvector of eigenvalue 1).
    evals, evecs = np.linalg.eig(trans.T)
    stationary = np.abs(np.real(evecs[:, int(np.argmin(np.abs(evals - 1.0)))]))
    stationary /= stationary.sum()
    state = int(rng.choice(k, p=stationary))
    pos = 0
    while pos < n:
        stay = float(trans[state, state])
        length = int(rng.geometric(1.0 - stay)) if stay < 1.0 else n - pos
        states[pos : pos + length] = state
        pos += length
        if k > 1:
            leave = trans[state].copy()
            leave[state] = 0.0
            state = int(rng.choice(k, p=leave / leave.sum()))
    return states


def generate_candles_with_regimes(
    n: int = DEFAULT_CANDLES, seed: int = 0, model: RegimeModel | None = None
) -> tuple[NDArray[np.void], NDArray[np.int8]]:
    """Return ``(candles, regimes)``: the candles and the regime index (0 = calmest) of each bar."""
    if n < 2:
        raise ValueError("at least 2 candles are needed")
    model = model or RegimeModel()
    model.validate()
    rng = np.random.default_rng(seed)
    regimes = _regime_path(n, model, rng)

    vols = np.asarray(model.vols, dtype=np.float64)[regimes]
    drifts = np.asarray(model.drifts, dtype=np.float64)[regimes]
    hours = np.arange(n, dtype=np.int64) % 24
    # Intraday activity: busier around 14:00-16:00 UTC, quieter at night.
    season = 1.0 + 0.25 * np.sin(2.0 * np.pi * (hours - 9) / 24.0)
    df = model.student_df
    noise = rng.standard_t(df, size=n) * np.sqrt((df - 2.0) / df)
    sigma = vols * season
    log_ret = drifts + sigma * noise
    log_ret[0] = 0.0

    close = model.start_price * np.exp(np.cumsum(log_ret))
    gap = rng.normal(0.0, 1.0, size=n) * sigma * model.gap_fraction
    open_ = np.empty(n, dtype=np.float64)
    open_[0] = model.start_price
    open_[1:] = close[:-1] * np.exp(gap[1:])
    body_hi = np.maximum(open_, close)
    body_lo = np.minimum(open_, close)
    wick_up = np.abs(rng.normal(0.0, 1.0, size=n)) * sigma * model.wick_fraction
    wick_dn = np.abs(rng.normal(0.0, 1.0, size=n)) * sigma * model.wick_fraction
    high = body_hi * np.exp(wick_up)
    low = body_lo * np.exp(-wick_dn)

    vol_ratio = vols / min(model.vols)
    abs_z = np.abs(log_ret - drifts) / sigma
    volume = (
        model.base_volume * vol_ratio**1.3 * season**2 * (0.6 + 0.4 * abs_z) * np.exp(rng.normal(-0.045, 0.3, size=n))
    )

    candles = np.empty(n, dtype=CANDLE_DTYPE)
    candles["open"] = open_
    candles["high"] = high
    candles["low"] = low
    candles["close"] = close
    candles["volume"] = volume
    return candles, regimes


def generate_candles(n: int = DEFAULT_CANDLES, seed: int = 0, model: RegimeModel | None = None) -> NDArray[np.void]:
    """Return ``n`` synthetic hourly candles (structured array of :data:`CANDLE_DTYPE`) for ``seed``."""
    return generate_candles_with_regimes(n, seed, model)[0]


def hourly_timestamps(n: int, start: int = DEFAULT_START) -> NDArray[np.int64]:
    """Unix timestamps (seconds) of the start of each of ``n`` hourly bars."""
    return start + HOUR * np.arange(n, dtype=np.int64)


def size_mib(candles: NDArray[np.void]) -> float:
    """Size of the candles' data in MiB (what ``ray.put`` ships)."""
    return float(candles.nbytes) / float(1 << 20)


def validate_candles(candles: NDArray[np.void]) -> None:
    """Raise ``ValueError`` unless the candles are well formed (dtype, finite, positive, OHLC-consistent)."""
    if candles.dtype != CANDLE_DTYPE or candles.ndim != 1:
        raise ValueError(f"candles must be a 1-D array of dtype {CANDLE_DTYPE}")
    for name in ("open", "high", "low", "close", "volume"):
        col = candles[name]
        if not np.all(np.isfinite(col)) or not np.all(col > 0):
            raise ValueError(f"column {name!r} must be finite and positive")
    o, h, lo, c = candles["open"], candles["high"], candles["low"], candles["close"]
    if not (np.all(lo <= o) and np.all(lo <= c) and np.all(o <= h) and np.all(c <= h)):
        raise ValueError("OHLC inconsistency: low <= open, close <= high is violated")
