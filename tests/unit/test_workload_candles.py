"""Synthetic candles: deterministic, well formed, with distinct volatility regimes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workload"))

from bittrader_workload.candles import (
    CANDLE_DTYPE,
    DEFAULT_CANDLES,
    RegimeModel,
    generate_candles,
    generate_candles_with_regimes,
    hourly_timestamps,
    size_mib,
    validate_candles,
)


def test_deterministic_for_a_seed() -> None:
    a = generate_candles(20_000, seed=7)
    b = generate_candles(20_000, seed=7)
    c = generate_candles(20_000, seed=8)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_shape_dtype_and_reference_size() -> None:
    candles = generate_candles(1_000, seed=1)
    assert candles.shape == (1_000,)
    assert candles.dtype == CANDLE_DTYPE
    assert candles.dtype.names == ("open", "high", "low", "close", "volume")
    assert CANDLE_DTYPE.itemsize == 40
    # The reference size: 297,000 rows of 5 float64 columns is about 11.3 MiB.
    full = generate_candles(DEFAULT_CANDLES, seed=0)
    assert full.shape == (297_000,)
    assert size_mib(full) == pytest.approx(11.33, abs=0.01)
    validate_candles(full)


def test_ohlc_consistency() -> None:
    candles = generate_candles(50_000, seed=3)
    o, h, lo, c, v = (candles[k] for k in ("open", "high", "low", "close", "volume"))
    assert np.all(lo <= o) and np.all(lo <= c)
    assert np.all(o <= h) and np.all(c <= h)
    assert np.all(lo > 0) and np.all(v > 0)
    assert np.all(np.isfinite(candles["close"]))
    # Each bar opens near the previous close (a small gap, not a jump).
    gap = np.abs(np.log(o[1:] / c[:-1]))
    assert float(np.median(gap)) < 0.002
    validate_candles(candles)


def test_regimes_have_different_volatility_and_volume() -> None:
    candles, regimes = generate_candles_with_regimes(100_000, seed=11)
    assert regimes.shape == (100_000,)
    assert set(np.unique(regimes).tolist()) == {0, 1, 2}
    log_ret = np.diff(np.log(candles["close"]))
    vol = [float(np.std(log_ret[regimes[1:] == k])) for k in range(3)]
    volume = [float(np.mean(candles["volume"][regimes == k])) for k in range(3)]
    assert vol[0] < vol[1] < vol[2]
    assert vol[2] > 3 * vol[0]
    assert volume[0] < volume[1] < volume[2]
    # Regimes persist: far fewer switches than bars.
    assert int(np.count_nonzero(np.diff(regimes))) < 100_000 // 50


def test_custom_model_and_validation_errors() -> None:
    calm = RegimeModel(vols=(0.001,), drifts=(0.0,), transition=((1.0,),))
    candles, regimes = generate_candles_with_regimes(2_000, seed=0, model=calm)
    assert np.all(regimes == 0)
    assert float(np.std(np.diff(np.log(candles["close"])))) < 0.002
    with pytest.raises(ValueError):
        generate_candles(1)
    with pytest.raises(ValueError):
        generate_candles(100, model=RegimeModel(vols=(0.01, 0.02), drifts=(0.0,), transition=((1.0,),)))
    bad = generate_candles(100, seed=0)
    bad["high"][5] = bad["low"][5] * 0.5
    with pytest.raises(ValueError, match="OHLC"):
        validate_candles(bad)


def test_hourly_timestamps() -> None:
    ts = hourly_timestamps(3, start=1_000)
    assert ts.tolist() == [1_000, 4_600, 8_200]
