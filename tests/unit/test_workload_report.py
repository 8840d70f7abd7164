"""Speedup report: numbers on synthetic summaries, JSON and PNG written."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workload"))

from bittrader_workload import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def summaries() -> tuple[dict[str, Any], dict[str, Any]]:
    serial = {
        "mode": "serial", "status": "complete", "candles": 297000, "params": 80, "seed": 0,
        "wall_s": 112.0, "evaluations_run": 80, "evaluations_skipped": 0, "cluster_cpus": 1.0,
        "nodes": [{"hostname": "head", "node_id": None, "tasks": 80, "busy_s": 111.5}],
    }  # fmt: skip
    cluster = {
        "mode": "cluster", "status": "complete", "candles": 297000, "params": 80, "seed": 0,
        "wall_s": 61.0, "wall_started_at": 1000.0, "evaluations_run": 80, "evaluations_skipped": 0,
        "cluster_cpus": 2.0,
        "nodes": [
            {"hostname": "worker1", "node_id": "aa" * 28, "tasks": 41, "busy_s": 57.0},
            {"hostname": "worker2", "node_id": "bb" * 28, "tasks": 39, "busy_s": 55.0},
        ],
    }  # fmt: skip
    return serial, cluster


def results(node_ids: dict[str, str], per_node: int, metric_shift: float = 0.0) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    i = 0
    for host, node_id in node_ids.items():
        for k in range(per_node):
            out[i] = {
                "id": i, "params": {"fast": i}, "metrics": {"sharpe": 0.5 + i + metric_shift, "n_trades": 3},
                "hostname": host, "node_id": node_id, "start": 1000.5 + 1.4 * k, "end": 1001.9 + 1.4 * k,
                "duration": 1.4,
            }  # fmt: skip
            i += 1
    return out


def test_numbers() -> None:
    serial, cluster = summaries()
    rep = report.compute_report(serial, cluster)
    assert rep["speedup"] == pytest.approx(112.0 / 61.0)
    assert rep["cpus_used"] == 2.0 and rep["ideal_speedup"] == 2.0
    assert rep["efficiency"] == pytest.approx(112.0 / 61.0 / 2.0)
    assert rep["busy_s"] == pytest.approx(112.0)
    assert rep["ray_overhead_s"] == pytest.approx(61.0 - 112.0 / 2.0)
    assert [(n["hostname"], n["tasks"]) for n in rep["nodes"]] == [("worker1", 41), ("worker2", 39)]
    assert rep["comparable"] is True and rep["warnings"] == []
    assert rep["serial_s_per_evaluation"] == pytest.approx(1.4)


def test_cpus_used_is_capped_by_the_tasks_and_warnings() -> None:
    serial, cluster = summaries()
    cluster = {**cluster, "cluster_cpus": 8.0, "evaluations_run": 4, "evaluations_skipped": 76}
    rep = report.compute_report(serial, cluster)
    assert rep["cpus_used"] == 4.0
    assert rep["comparable"] is False
    assert any("resumed 76" in w for w in rep["warnings"])
    with pytest.raises(ValueError):
        report.compute_report(serial, {**cluster, "wall_s": 0.0})


def test_results_comparison_in_the_report() -> None:
    serial, cluster = summaries()
    ids = {"worker1": "aa" * 28, "worker2": "bb" * 28}
    same = report.compute_report(serial, cluster, results(ids, 3), results(ids, 3))
    assert same["results_comparison"]["ok"] is True
    differ = report.compute_report(serial, cluster, results(ids, 3), results(ids, 3, metric_shift=1e-6))
    assert differ["results_comparison"]["ok"] is False and differ["comparable"] is False


def test_cli_writes_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serial, cluster = summaries()
    ids = {"worker1": "aa" * 28, "worker2": "bb" * 28}
    (tmp_path / "s.json").write_text(json.dumps(serial), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps(cluster), encoding="utf-8")
    for name, recs in (("s.jsonl", results({"head": ""}, 6)), ("c.jsonl", results(ids, 3))):
        # The serial run computed the same ids on one host.
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in recs.values()), encoding="utf-8")
    out = tmp_path / "out"
    rc = report.main(
        [
            "--serial", str(tmp_path / "s.json"), "--cluster", str(tmp_path / "c.json"),
            "--serial-results", str(tmp_path / "s.jsonl"), "--cluster-results", str(tmp_path / "c.jsonl"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["schema"] == report.REPORT_SCHEMA
    assert data["speedup"] == pytest.approx(112.0 / 61.0)
    assert data["results_comparison"]["ok"] is True
    png = (out / "report.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000
    printed = capsys.readouterr().out
    assert "speedup" in printed and "worker1" in printed and "results match serial: yes" in printed


def test_lanes_do_not_overlap() -> None:
    spans = [(0.0, 2.0), (0.5, 1.5), (2.0, 3.0), (1.6, 2.5)]
    lanes = report._lanes(spans)
    for i, (s1, e1) in enumerate(spans):
        for j, (s2, e2) in enumerate(spans):
            if i < j and lanes[i] == lanes[j]:
                assert e1 <= s2 or e2 <= s1
    assert max(lanes) == 1


def with_cpu(records: dict[int, dict[str, Any]], duration: float, cpu: float) -> dict[int, dict[str, Any]]:
    return {i: {**r, "duration": duration, "cpu_s": cpu} for i, r in records.items()}


def test_task_profile_splits_a_cluster_tasks_extra_time() -> None:
    serial, cluster = summaries()
    ids = {"worker1": "aa" * 28, "worker2": "bb" * 28}
    rep = report.compute_report(
        serial, cluster, with_cpu(results({"head": ""}, 6), 1.32, 1.30), with_cpu(results(ids, 3), 1.62, 1.35)
    )
    prof = rep["task_profile"]
    assert prof["serial"]["tasks"] == 6 and prof["cluster"]["tasks"] == 6
    assert prof["wall_ratio"] == pytest.approx(1.62 / 1.32)
    assert prof["cpu_ratio"] == pytest.approx(1.35 / 1.30)
    assert prof["cluster"]["waiting_share"] == pytest.approx(1 - 1.35 / 1.62)
    table = report.format_table(rep)
    assert "cluster/serial: wall x1.23, CPU x1.04; 17% of a cluster task's wall waiting for a core" in table
    # Older results files have no cpu_s: wall only, no ratio.
    old = report.compute_report(serial, cluster, results({"head": ""}, 6), results(ids, 3))
    assert old["task_profile"]["cpu_ratio"] is None and old["task_profile"]["cluster"]["cpu_s_mean"] is None
    assert report.compute_report(serial, cluster)["task_profile"] is None


def test_provisioning_timings_join_the_report(tmp_path: Path) -> None:
    assert report.load_provisioning(None) is None
    assert report.load_provisioning(tmp_path / "missing.json") is None
    path = tmp_path / "provisioning.json"
    path.write_text(json.dumps({
        "created": "2026-11-29T01:00:00Z", "cold_converge": {"seconds": 240.5, "changed": 70},
        "idempotent_rerun": {"seconds": 24.1, "changed": 0}, "add_worker": {"seconds": 150.0, "changed": 30},
        "idempotent_fraction_of_cold": 0.1, "ok": {"runs": True},
    }), encoding="utf-8")  # fmt: skip
    prov = report.load_provisioning(path)
    assert prov is not None
    assert (prov["cold_converge_s"], prov["idempotent_rerun_s"], prov["add_worker_s"]) == (240.5, 24.1, 150.0)
    assert prov["idempotent_changed"] == 0 and prov["idempotent_fraction_of_cold"] == 0.1
    serial, cluster = summaries()
    rep = {**report.compute_report(serial, cluster), "provisioning": prov}
    table = report.format_table(rep)
    assert "idempotent re-run" in table and "24.1 s" in table and "240.5 s" in table
    assert prov["cold_converge_index_s"] is None and "no wheelhouse" not in table
    # The cold converge without the wheelhouse, where the timings measured it.
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update({"cold_converge_index": {"seconds": 301.0, "changed": 60}, "wheelhouse_saved_s": 60.5})
    path.write_text(json.dumps(data), encoding="utf-8")
    prov = report.load_provisioning(path)
    assert prov is not None and prov["cold_converge_index_s"] == 301.0 and prov["wheelhouse_saved_s"] == 60.5
    table = report.format_table({**rep, "provisioning": prov})
    assert "cold, no wheelhouse" in table and "301.0 s" in table
