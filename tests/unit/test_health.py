"""The head's health record (node_agent/src/bittrader_node_agent/health.py): summary, missing-since state,
warnings after the threshold, the log line, rotation, the status command; and its launchd job."""

from __future__ import annotations

import json
import plistlib
from pathlib import Path
from typing import Any

import pytest
from bittrader_node_agent import health

REPO = Path(__file__).resolve().parents[2]

EXPECTED = [
    {"name": "head", "ip": "10.0.0.10", "cpus": 0, "throttle": None},
    {"name": "w1", "ip": "10.0.0.11", "cpus": 1, "throttle": None},
    {"name": "laptop", "ip": "10.0.0.12", "cpus": None, "throttle": {"cpus_active": 1, "cpus_idle": 4}},
]


def node(ip: str, cpus: float, alive: bool = True, **extra: Any) -> dict[str, Any]:
    return {"node_id": ip.replace(".", ""), "ip": ip, "alive": alive, "draining": False, "cpus": cpus,
            "is_head": ip.endswith(".10"), **extra}


ALL_UP = [node("10.0.0.10", 0), node("10.0.0.11", 1), node("10.0.0.12", 4)]


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"address": "10.0.0.10:6379", "token_file": str(tmp_path / "token"), "expected": EXPECTED,
            "missing_warn_s": 60, "interval_s": 30, "log_file": str(tmp_path / "logs" / "health.log"),
            "state_file": str(tmp_path / "run" / "health_state.json"), **extra}


def test_all_alive_gives_one_line_and_no_warning() -> None:
    record, state = health.summarize(ALL_UP, EXPECTED, {}, 1000.0, 60)
    assert (record["alive"], record["expected"], record["cpus"]) == (3, 3, 5)
    assert record["warnings"] == [] and state["missing_since"] == {}
    line = health.format_line(record)
    assert "alive=3/3 cpus=5 head=0 w1=1 laptop=4(full 4/4)" in line
    assert health.log_lines(record) == [line]


@pytest.mark.parametrize(("cpus", "want"), [(4, "full 4/4"), (1, "throttled 1/4"), (0, "paused 0/4"),
                                            (2, "2 CPUs")])
def test_throttle_state_from_the_live_cpu_total(cpus: float, want: str) -> None:
    assert health.throttle_state(cpus, {"cpus_active": 1, "cpus_idle": 4}) == want
    assert health.throttle_state(cpus, None) is None


def test_a_missing_node_warns_only_after_the_threshold_and_remembers_since_when() -> None:
    up = [node("10.0.0.10", 0), node("10.0.0.12", 1)]
    record, state = health.summarize(up, EXPECTED, {}, 1000.0, 60)
    assert record["alive"] == 2 and record["warnings"] == []
    assert state["missing_since"] == {"w1": 1000.0}
    assert "w1=missing(0s)" in health.format_line(record)
    record, state = health.summarize(up, EXPECTED, state, 1059.0, 60)
    assert record["warnings"] == [] and state["missing_since"] == {"w1": 1000.0}
    record, state = health.summarize(up, EXPECTED, state, 1075.0, 60)
    assert len(record["warnings"]) == 1
    assert record["warnings"][0].startswith("w1 (10.0.0.11) missing for 75 s")
    lines = health.log_lines(record)
    assert len(lines) == 2 and " WARN w1 (10.0.0.11) missing for 75 s" in lines[1]
    # Back: the record forgets it, and a later loss starts a new count.
    record, state = health.summarize(ALL_UP, EXPECTED, state, 1100.0, 60)
    assert record["warnings"] == [] and state["missing_since"] == {}


def test_a_dead_entry_next_to_the_alive_one_counts_as_alive_and_dead_only_as_missing() -> None:
    restarted = [*ALL_UP, node("10.0.0.11", 1, alive=False)]
    record, _ = health.summarize(restarted, EXPECTED, {}, 1.0, 60)
    assert record["alive"] == 3
    dead = [node("10.0.0.10", 0), node("10.0.0.11", 1, alive=False), node("10.0.0.12", 1)]
    record, _ = health.summarize(dead, EXPECTED, {}, 1.0, 60)
    assert [r["state"] for r in record["nodes"]] == ["alive", "missing", "alive"]


def test_draining_wrong_cpus_and_nodes_not_in_the_inventory_are_shown() -> None:
    nodes = [node("10.0.0.10", 0), node("10.0.0.11", 2, draining=True), node("10.0.0.12", 1),
             node("10.0.0.99", 8)]
    record, _ = health.summarize(nodes, EXPECTED, {}, 1.0, 60)
    line = health.format_line(record)
    assert "w1=2(draining, expected 1 CPUs)" in line
    assert "laptop=1(throttled 1/4)" in line
    assert "not-in-inventory=10.0.0.99" in line
    assert record["cpus"] == 11


def test_an_unreachable_cluster_counts_every_host_missing_and_says_why() -> None:
    record, state = health.summarize(None, EXPECTED, {}, 0.0, 60, error="cannot read the cluster: timeout")
    assert record["alive"] == 0 and set(state["missing_since"]) == {"head", "w1", "laptop"}
    record, _ = health.summarize(None, EXPECTED, state, 61.0, 60, error="cannot read the cluster: timeout")
    assert len(record["warnings"]) == 3
    assert "ERROR cannot read the cluster: timeout" in health.format_line(record)


def test_check_appends_keeps_state_and_status_prints_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    seen = [[node("10.0.0.10", 0), node("10.0.0.12", 4)]]
    health.check(cfg, now=1000.0, reader=lambda *_: seen[0])
    health.check(cfg, now=1070.0, reader=lambda *_: seen[0])
    log = Path(cfg["log_file"]).read_text().splitlines()
    assert len(log) == 3 and "alive=2/3" in log[0] and " WARN w1 " in log[2]
    state = json.loads(Path(cfg["state_file"]).read_text())
    assert state["missing_since"] == {"w1": 1000.0}
    text, code = health.status_text(state, 1075.0, 30)
    assert code == 1 and "2/3 inventory hosts alive, 4 CPUs" in text and "WARN w1" in text
    assert "missing for 70 s" in text
    text, code = health.status_text(state, 1075.0 + 500, 30)
    assert code == 2 and "STALE" in text
    assert health.status_text({}, 0, 30)[1] == 2


def test_check_records_a_reader_failure(tmp_path: Path) -> None:
    def broken(*_: Any) -> list[dict[str, Any]]:
        raise ConnectionError("GCS unreachable")

    cfg = config(tmp_path)
    record = health.check(cfg, now=5.0, reader=broken)
    assert record["error"] and "ConnectionError: GCS unreachable" in record["error"]
    assert "ERROR cannot read the cluster at 10.0.0.10:6379" in Path(cfg["log_file"]).read_text()


def test_the_log_is_rotated(tmp_path: Path) -> None:
    cfg = config(tmp_path, log_max_bytes=400, log_backups=2)
    for i in range(20):
        health.check(cfg, now=float(i), reader=lambda *_: ALL_UP)
    logs = sorted(p.name for p in Path(cfg["log_file"]).parent.iterdir())
    assert logs == ["health.log", "health.log.1", "health.log.2"]
    assert all(p.stat().st_size <= 400 for p in Path(cfg["log_file"]).parent.iterdir())


def test_main_status_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    path = tmp_path / "health.json"
    path.write_text(json.dumps(cfg))
    assert health.main(["status", "--config", str(path)]) == 2
    health.check(cfg, reader=lambda *_: ALL_UP)
    capsys.readouterr()
    assert health.main(["status", "--config", str(path)]) == 0
    assert "3/3 inventory hosts alive, 5 CPUs" in capsys.readouterr().out
    assert health.main(["status", "--json", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["alive"] == 3
    path.write_text(json.dumps({"address": "x"}))
    assert health.main(["status", "--config", str(path)]) == health.EX_CONFIG


def test_the_launchd_job_runs_the_check_on_an_interval_as_the_user() -> None:
    from ansible_render import render, role_defaults

    variables = {**role_defaults("cluster_facts", "ray_node", "head"), "bittrader_user": "alice",
                 "bittrader_home": "/Users/alice", "bittrader_base_dir": "/Users/alice/.bittrader_head",
                 "bittrader_log_dir": "/Users/alice/.bittrader_head/logs",
                 "bittrader_venv_python": "/Users/alice/.bittrader_head/venv/bin/python",
                 "bittrader_venv_dir": "/Users/alice/.bittrader_head/venv",
                 "bittrader_health_interval_s": 60, "inventory_hostname": "mac-head"}
    plist = plistlib.loads(render("roles/head/templates/launchd-health.plist.j2", variables).encode())
    assert plist["Label"] == "com.bittrader.health"
    assert plist["UserName"] == "alice"
    assert plist["StartInterval"] == 60
    assert plist["ProgramArguments"] == ["/Users/alice/.bittrader_head/venv/bin/python",
                                         "/Users/alice/.bittrader_head/venv/bin/bittrader-health", "check", "--quiet",
                                         "--config", "/Users/alice/.bittrader_head/health.json"]
    assert "KeepAlive" not in plist
