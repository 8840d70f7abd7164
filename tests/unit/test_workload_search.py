"""The search mode (workload/bittrader_workload/search.py): its space, budget, ledger and resume
bookkeeping, table and plot data, and the command line; the plot drawn by report.py. Pure parts
only: the search itself on a cluster is tested in molecule/workload/tests/test_optimize.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

WORKLOAD = Path(__file__).resolve().parents[2] / "workload"
sys.path.insert(0, str(WORKLOAD))

from bittrader_workload import job, search  # noqa: E402
from bittrader_workload.backtest import METRIC_NAMES  # noqa: E402
from bittrader_workload.grid import MAX_PARAMS, full_grid  # noqa: E402


def metrics(sharpe: float) -> dict[str, Any]:
    base: dict[str, Any] = {name: 0.0 for name in METRIC_NAMES}
    return {**base, "sharpe": sharpe, "n_trades": 3, "total_return": 0.1, "max_drawdown": 0.2}


def record(trial_id: str, sharpe: float, host: str = "w1", attempt: str = "a1", **params: Any) -> dict[str, Any]:
    p = {"fast": 4, "slow": 72, "vol_window": 24, "vol_quantile": 0.5, "long_short": False, **params}
    return {"schema": search.TRIAL_SCHEMA, "trial_id": trial_id, "params": p, "metrics": metrics(sharpe),
            "hostname": host, "node_id": f"node-{host}", "duration": 0.5, "start": 1.0, "end": 1.5,
            "candles": 1000, "seed": 0, "attempt": attempt}


# --- space and budget -------------------------------------------------------------------------------


def test_the_space_is_the_grids_space() -> None:
    grid = {tuple(getattr(p, k) for k in search.SPACE) for p in full_grid()}
    space = {tuple(c) for c in __import__("itertools").product(*search.SPACE.values())}
    assert space == grid
    assert search.space_size() == MAX_PARAMS == 600


def test_a_config_becomes_the_strategys_parameters() -> None:
    params = search.params_from_config(
        {"fast": 12, "slow": 168, "vol_window": 48, "vol_quantile": 0.85, "long_short": True})
    assert (params.fast, params.slow, params.vol_window, params.vol_quantile, params.long_short) == (
        12, 168, 48, 0.85, True)
    assert params.quantile_window == 720 and params.fee_bps == 10.0  # the grid's fixed settings


def test_the_tune_space_is_one_categorical_per_parameter() -> None:
    tune = pytest.importorskip("ray.tune")
    space = search.tune_space()
    assert set(space) == set(search.SPACE)
    for name, domain in space.items():
        assert isinstance(domain, tune.search.sample.Categorical)
        assert list(domain.categories) == list(search.SPACE[name])


@pytest.mark.parametrize(("cpus", "requested", "expected"), [
    (2.0, None, 2), (0.0, None, 1), (7.5, None, 7), (7.9999999999, None, 8), (2.0, 5, 5), (16.0, 1, 1)])
def test_concurrency_follows_the_clusters_cpus(cpus: float, requested: int | None, expected: int) -> None:
    assert search.concurrency_for(cpus, requested) == expected


def test_concurrency_refuses_zero() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        search.concurrency_for(2.0, 0)


def test_the_budget_is_rounds_per_concurrent_trial_within_the_space() -> None:
    assert search.trial_budget(2) == search.DEFAULT_MIN_TRIALS == 64  # a small cluster: the floor
    assert search.trial_budget(8) == 8 * search.DEFAULT_ROUNDS == 96
    assert search.trial_budget(4, rounds=5, floor=1) == 20
    assert search.trial_budget(100) == MAX_PARAMS  # never more than the space holds
    assert search.trial_budget(2, requested=7) == 7
    for bad in (0, MAX_PARAMS + 1):
        with pytest.raises(ValueError, match=r"within 1\.\.600"):
            search.trial_budget(2, requested=bad)


def test_the_experiment_name_follows_the_settings() -> None:
    a = search.experiment_name(20000, 0, 12, 0)
    assert a == search.experiment_name(20000, 0, 12, 0)
    assert len({a, search.experiment_name(20001, 0, 12, 0), search.experiment_name(20000, 1, 12, 0),
                search.experiment_name(20000, 0, 13, 0), search.experiment_name(20000, 0, 12, 1)}) == 5


# --- ledger and resume -------------------------------------------------------------------------------


def test_the_ledger_skips_a_line_cut_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / search.LEDGER_NAME
    assert search.read_ledger(path) == []
    writer = search.LedgerWriter(path)
    writer.write(record("t1", 0.5))
    writer.close()
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"trial_id": "t2", "metr')  # the driver was killed mid-line
    writer = search.LedgerWriter(path)  # starts on a fresh line
    writer.write(record("t3", 0.7))
    writer.close()
    assert [r["trial_id"] for r in search.read_ledger(path)] == ["t1", "t3"]


def test_resume_state_counts_finished_trials_and_repeats() -> None:
    state = search.resume_state([record("t1", 0.1, attempt="a1"), record("t2", 0.2, attempt="a1"),
                                 record("t3", 0.3, attempt="a2"), record("t2", 0.25, attempt="a2")])
    assert list(state.done) == ["t1", "t2", "t3"]
    assert state.done["t2"]["metrics"]["sharpe"] == 0.2  # the first evaluation counts
    assert state.evaluations == 4
    assert state.repeated == ["t2"]
    assert state.attempts == {"a1": 2, "a2": 2}
    clean = search.resume_state([record("t1", 0.1), record("t2", 0.2)])
    assert clean.repeated == []


def test_a_finished_trial_is_replayed_not_evaluated_again() -> None:
    replay = search.replay_results(search.resume_state([record("t1", 0.4, host="w2")]))
    assert replay == {"t1": {"metrics": metrics(0.4), "hostname": "w2", "node_id": "node-w2", "duration": 0.5}}


def test_the_tally_writes_evaluations_and_skips_replays(tmp_path: Path) -> None:
    out = tmp_path / "progress.txt"
    with out.open("w", encoding="utf-8") as fh:
        state = search.resume_state([record("t1", 0.4)])
        tally = search._Tally(total=3, quiet=False, out=fh, state=state, attempt="a2",
                              run={"candles": 1000, "seed": 0}, writer=search.LedgerWriter(tmp_path / "l.jsonl"))
        config = {"fast": 8, "slow": 120, "vol_window": 48, "vol_quantile": 0.7, "long_short": True}
        result = {**metrics(0.9), "hostname": "w2", "node_id": "n2", "duration": 1.25, "start": 5.0, "end": 6.25,
                  "replayed": False}
        tally.finished("t2", config, result)
        tally.finished("t1", config, {**result, "replayed": True})
        tally.writer.close()  # type: ignore[union-attr]
    ledger = search.read_ledger(tmp_path / "l.jsonl")
    assert [r["trial_id"] for r in ledger] == ["t2"]
    assert ledger[0]["params"] == config and ledger[0]["attempt"] == "a2" and ledger[0]["hostname"] == "w2"
    assert tally.replayed == ["t1"] and list(tally.state.done) == ["t1", "t2"]
    assert out.read_text() == ("[2/3] trial t2 sharpe=0.900 best=0.900 node=w2 fast=8 slow=120 vol_window=48 "
                               "vol_quantile=0.7 long_short=True 1.25s\n")


def test_a_ledger_of_another_run_is_refused() -> None:
    assert search._check_ledger([record("t1", 0.1)], {"candles": 1000, "seed": 0}) is None
    problem = search._check_ledger([record("t1", 0.1)], {"candles": 2000, "seed": 0})
    assert problem is not None and "another run" in problem


def test_the_ledger_callback_pickles_without_its_open_file(tmp_path: Path) -> None:
    """Tune pickles the run configuration (with its callbacks) into tuner.pkl."""
    pytest.importorskip("ray.tune")
    import pickle

    tally = search._Tally(total=1, quiet=True, out=sys.stdout, state=search.ResumeState(), attempt="a",
                          run={}, writer=search.LedgerWriter(tmp_path / "l.jsonl"))
    restored = pickle.loads(pickle.dumps(search.LedgerCallback(tally)))
    assert restored.tally is None
    tally.writer.close()  # type: ignore[union-attr]


# --- table and plot data ----------------------------------------------------------------------------


def test_best_so_far_and_trials_to_reach() -> None:
    curve = search.best_so_far([-1.0, -0.5, -0.7, 0.2, 0.1, 0.3])
    assert curve == [-1.0, -0.5, -0.5, 0.2, 0.2, 0.3]
    assert search.trials_to_reach(curve, 0.3) == 6
    assert search.trials_to_reach(curve, 0.3, rel_tol=0.5) == 4   # within 50 %: >= 0.15
    assert search.trials_to_reach(curve, 0.4) is None
    # A negative best: within 1 % means at least best - 1 % of |best|.
    assert search.trials_to_reach([-0.05, -0.0101], -0.01, rel_tol=0.01) == 2
    assert search.trials_to_reach([-0.05, -0.0102], -0.01, rel_tol=0.01) is None


def test_the_table_lists_finished_trials_in_order_with_the_best_so_far() -> None:
    ledger = [record("t1", 0.2, host="w1", fast=8), record("t2", -0.1, host="w2"), record("t3", 0.5, host="w1"),
              record("t2", 9.9, host="w2")]  # a repeat: not a row
    rows = search.results_table(ledger)
    assert [(r["n"], r["trial_id"], r["node"], r["sharpe"], r["best_sharpe"]) for r in rows] == [
        (1, "t1", "w1", 0.2, 0.2), (2, "t2", "w2", -0.1, 0.2), (3, "t3", "w1", 0.5, 0.5)]
    assert rows[0]["fast"] == 8 and rows[0]["n_trades"] == 3
    text = search.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == list(search.TABLE_COLUMNS)
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:3] == ["1", "t1", "w1"] and "0.5000" in lines[4]
    csv_lines = search.table_csv(rows).splitlines()
    assert csv_lines[0] == ",".join(search.TABLE_COLUMNS) and len(csv_lines) == 4


def test_plot_data_holds_the_curve_and_trials_per_node() -> None:
    rows = search.results_table([record("t1", 0.2, host="w2"), record("t2", 0.1, host="w1"),
                                 record("t3", 0.4, host="w2")])
    data = search.plot_data(rows)
    assert data == {"trial": [1, 2, 3], "sharpe": [0.2, 0.1, 0.4], "best_sharpe": [0.2, 0.2, 0.4],
                    "trials_per_node": {"w1": 1, "w2": 2}}
    assert search.plot_data([]) == {"trial": [], "sharpe": [], "best_sharpe": [], "trials_per_node": {}}


def test_a_nan_sharpe_never_becomes_the_best() -> None:
    rows = search.results_table([record("t1", float("nan")), record("t2", -3.0)])
    assert math.isinf(rows[0]["best_sharpe"]) and rows[1]["best_sharpe"] == -3.0


# --- command line ------------------------------------------------------------------------------------


def test_job_hands_the_search_mode_to_the_search_module() -> None:
    assert job.search_requested(["--mode", "search", "--trials", "4"])
    assert job.search_requested(["--mode=search"])
    assert not job.search_requested(["--mode", "cluster", "--params", "search"])
    assert not job.search_requested([])


def test_the_search_command_line() -> None:
    args = search.build_parser().parse_args(["--mode", "search", "--trials", "8", "--concurrency", "2",
                                             "--storage", "/x/tune", "--results", "r.jsonl", "--table", "t.txt"])
    assert (args.trials, args.concurrency, args.storage, args.fresh) == (8, 2, Path("/x/tune"), False)
    with pytest.raises(SystemExit) as exc:
        search.build_parser().parse_args(["--trials", "0"])
    assert exc.value.code == search.EXIT_USAGE


# --- the plot (report.py, on the controller) ---------------------------------------------------------


def test_the_report_draws_the_search_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bittrader_workload import report

    rows = search.results_table([record("t1", 0.2, host="w2"), record("t2", 0.1, host="w1"),
                                 record("t3", 0.4, host="w2")])
    summary = {"schema": search.SEARCH_SCHEMA, "status": "complete", "trials_done": 3, "trials_expected": 3,
               "best": {"trial_id": "t3", "params": rows[2], "metrics": metrics(0.4)}, "table": rows,
               "plot": search.plot_data(rows), "candles": 1000, "concurrency": 2, "trials_resumed": 0,
               "trials_run": 3, "repeated": []}
    path = tmp_path / "search.json"
    path.write_text(json.dumps(summary), encoding="utf-8")
    assert report.main(["--search", str(path), "--out", str(tmp_path / "out")]) == 0
    png = tmp_path / "out" / "search.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
