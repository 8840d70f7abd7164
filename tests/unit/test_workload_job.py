"""The Ray job: cluster versus serial, resumability, --expect-nodes, results files.

The Ray tests start one local Ray instance (2 CPUs, no dashboard) for the module and run small sweeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WORKLOAD = Path(__file__).resolve().parents[2] / "workload"
sys.path.insert(0, str(WORKLOAD))

from bittrader_workload import job  # noqa: E402
from bittrader_workload.candles import generate_candles  # noqa: E402
from bittrader_workload.grid import make_grid  # noqa: E402

SMALL = ["--candles", "5000", "--params", "6", "--seed", "3"]


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[str]:
    """A local Ray instance; RAY_AUTH_MODE unset; workers find the package through PYTHONPATH."""
    ray = pytest.importorskip("ray")
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "PYTHONPATH")}
    os.environ.pop("RAY_AUTH_MODE", None)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(WORKLOAD), saved["PYTHONPATH"]) if p)
    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield str(ctx.address_info["gcs_address"])
    finally:
        ray.shutdown()
        for name, value in saved.items():  # ray.init may have set RAY_AUTH_MODE=token in this process
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_cluster_matches_serial(ray_local: str, tmp_path: Path) -> None:
    serial_res, serial_sum = tmp_path / "s.jsonl", tmp_path / "s.json"
    cluster_res, cluster_sum = tmp_path / "c.jsonl", tmp_path / "c.json"
    rc = job.main([*SMALL, "--mode", "serial", "--results", str(serial_res), "--summary", str(serial_sum)])
    assert rc == job.EXIT_OK
    rc = job.main(
        [
            *SMALL,
            "--mode",
            "cluster",
            "--results",
            str(cluster_res),
            "--summary",
            str(cluster_sum),
            "--expect-nodes",
            "1",
        ]
    )
    assert rc == job.EXIT_OK

    cmp = job.compare_results_files(serial_res, cluster_res)
    assert cmp.ok, cmp.to_dict()
    assert cmp.max_abs_diff == 0.0  # same code, same numpy: bit for bit

    records = read_lines(cluster_res)
    assert sorted(r["id"] for r in records) == list(range(6))
    first = records[0]
    assert first["schema"] == job.RESULT_SCHEMA and first["mode"] == "cluster"
    assert isinstance(first["node_id"], str) and first["node_id"]
    assert first["hostname"] and first["end"] >= first["start"] and first["duration"] > 0
    assert first["params"] == make_grid(6)[first["id"]].params.to_dict()

    summary = json.loads(cluster_sum.read_text(encoding="utf-8"))
    assert summary["schema"] == job.SUMMARY_SCHEMA
    assert summary["status"] == "complete" and summary["mode"] == "cluster"
    assert summary["evaluations_done"] == summary["evaluations_expected"] == summary["evaluations_run"] == 6
    assert summary["cluster_cpus"] == 2.0 and summary["alive_nodes"] == 1
    assert summary["distinct_nodes"] == 1 and summary["expect_nodes_ok"] is True
    assert sum(n["tasks"] for n in summary["nodes"]) == 6
    assert summary["busy_s"] == pytest.approx(sum(r["duration"] for r in records))
    assert summary["wall_s"] > 0

    serial = json.loads(serial_sum.read_text(encoding="utf-8"))
    assert serial["mode"] == "serial" and serial["cluster_cpus"] == 1.0
    assert serial["pinned_to_nodes"] == 0 and summary["pinned_to_nodes"] == 1
    assert all(r["node_id"] is None for r in read_lines(serial_res))


def test_resume_runs_only_the_missing_ids(ray_local: str, tmp_path: Path) -> None:
    reference = tmp_path / "ref.jsonl"
    assert job.main([*SMALL, "--mode", "serial", "--results", str(reference), "--quiet"]) == job.EXIT_OK
    by_id = {r["id"]: r for r in read_lines(reference)}

    # A results file left by an interrupted run: sets 0, 2, 4 and a line cut mid-write.
    partial = tmp_path / "partial.jsonl"
    kept = "".join(json.dumps(by_id[i]) + "\n" for i in (0, 2, 4))
    partial.write_text(kept + '{"id": 1, "metr', encoding="utf-8")
    summary_path = tmp_path / "resume.json"
    rc = job.main([*SMALL, "--mode", "cluster", "--results", str(partial), "--summary", str(summary_path)])
    assert rc == job.EXIT_OK

    lines = read_lines_tolerant(partial)
    new_ids = [r["id"] for r in lines[3:]]
    assert sorted(new_ids) == [1, 3, 5]  # only the rest ran
    assert all(r["mode"] == "cluster" for r in lines[3:])
    assert sorted(job.read_results(partial)) == list(range(6))
    assert job.compare_results_files(reference, partial).ok

    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["evaluations_skipped"] == 3 and summary["evaluations_run"] == 3
    assert summary["evaluations_done"] == 6 and summary["status"] == "complete"
    assert summary["pinned_to_nodes"] == 0  # neither --every-node nor --expect-nodes

    # Nothing left: a third run computes nothing and succeeds.
    assert job.main([*SMALL, "--mode", "cluster", "--results", str(partial), "--quiet"]) == job.EXIT_OK
    assert len(read_lines_tolerant(partial)) == 6


def read_lines_tolerant(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def test_expect_nodes_fails_with_exit_code_2(ray_local: str, tmp_path: Path) -> None:
    """The real CLI, as a separate driver connecting to the running instance (package shipped by py_modules)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(WORKLOAD)
    summary_path = tmp_path / "nodes.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bittrader_workload.job",
            "--candles",
            "3000",
            "--params",
            "2",
            "--address",
            ray_local,
            "--expect-nodes",
            "2",
            "--summary",
            str(summary_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == job.EXIT_TOO_FEW_NODES, proc.stdout + proc.stderr
    assert "[1/2] set " in proc.stdout and " sharpe=" in proc.stdout and " node=" in proc.stdout
    assert "expected at least 2" in proc.stderr
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["status"] == "complete" and summary["expect_nodes_ok"] is False
    assert summary["pinned_to_nodes"] == 1  # --expect-nodes: one evaluation given to the one node with CPUs
    assert summary["distinct_nodes"] == 1


class _BrokenSet:
    """Quacks like a ParamSet; its evaluation raises inside the task (a bug, not a node failure)."""

    def __init__(self, id_: int) -> None:
        self.id = id_

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "params": {"fast": 50, "slow": 5}}


def test_a_task_that_raises_is_not_retried_and_fails_the_run(ray_local: str, tmp_path: Path) -> None:
    todo: list[Any] = [make_grid(1)[0], _BrokenSet(1)]
    writer = job.ResultsWriter(tmp_path / "r.jsonl")
    progress = job._Progress(total=2, done=0, quiet=True, out=sys.stdout)
    run = {"candles": 3000, "seed": 0, "mode": "cluster"}
    try:
        outcome = job._run_cluster(generate_candles(3000, 0), todo, run, writer, progress, max_retries=3)
    finally:
        writer.close()
    assert outcome.fatal is True
    assert [f["id"] for f in outcome.failures] == [1]
    assert "fast < slow" in outcome.failures[0]["error"]


def test_results_file_of_another_run_is_refused(tmp_path: Path) -> None:
    results = tmp_path / "other.jsonl"
    assert job.main(["--candles", "3000", "--params", "1", "--mode", "serial", "--results", str(results)]) == 0
    rc = job.main(["--candles", "3500", "--params", "1", "--mode", "serial", "--results", str(results)])
    assert rc == job.EXIT_RESULTS_MISMATCH


def test_bad_command_line_exits_64() -> None:
    with pytest.raises(SystemExit) as info:
        job.main(["--mode", "nowhere"])
    assert info.value.code == job.EXIT_USAGE


def test_compare_results_detects_differences() -> None:
    base = {"id": 0, "params": {"fast": 1}, "metrics": {"sharpe": 1.0, "n_trades": 3}}
    a = {0: base, 1: {**base, "id": 1}}
    b = {0: {**base, "metrics": {"sharpe": 1.0 + 1e-13, "n_trades": 3}}, 2: {**base, "id": 2}}
    cmp = job.compare_results(a, b)
    assert not cmp.ok
    assert cmp.only_in_a == [1] and cmp.only_in_b == [2]
    assert cmp.metric_mismatches == []  # 1e-13 is within 1e-12
    b[0] = {**base, "metrics": {"sharpe": 1.0 + 1e-9, "n_trades": 3}}
    cmp = job.compare_results({0: base}, {0: b[0]})
    assert not cmp.ok and cmp.metric_mismatches[0]["metric"] == "sharpe"
    assert job.compare_results({0: base}, {0: dict(base)}).ok
