"""The lab's provisioning timings (tools/lab_timings.py): recap parsing, the report and its targets,
the table, and the order of the runs (no containers: podman and ansible-playbook are stood in for)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import lab  # noqa: E402
import lab_timings  # noqa: E402

RECAP = """
PLAY RECAP *********************************************************************
bt-head                    : ok=61   changed=0    unreachable=0    failed=0    skipped=25   rescued=0    ignored=0
bt-worker1                 : ok=70   changed=2    unreachable=0    failed=0    skipped=21   rescued=0    ignored=0
bt-worker2                 : ok=12   changed=0    unreachable=1    failed=1    skipped=3    rescued=0    ignored=0
"""


def test_parse_recap_reads_every_hosts_counters() -> None:
    hosts = lab_timings.parse_recap("TASK [x]\nok: [bt-head]\n" + RECAP)
    assert set(hosts) == {"bt-head", "bt-worker1", "bt-worker2"}
    assert hosts["bt-worker1"] == {
        "ok": 70, "changed": 2, "unreachable": 0, "failed": 0, "skipped": 21, "rescued": 0, "ignored": 0
    }
    assert hosts["bt-worker2"]["unreachable"] == 1 and hosts["bt-worker2"]["failed"] == 1
    assert lab_timings.parse_recap("no recap here") == {}


def fake_run(seconds: float, changed: int = 0, rc: int = 0, hosts: dict | None = None) -> dict[str, object]:
    return {"seconds": seconds, "rc": rc, "changed": changed, "failed": 0, "hosts": hosts or {}}


def test_provisioning_report_checks_the_targets() -> None:
    good = lab_timings.provisioning_report(fake_run(240.0, changed=60), fake_run(25.0), fake_run(50.0, changed=30))
    assert good["schema"] == lab_timings.PROVISIONING_SCHEMA == "bittrader-provisioning-timings/2"
    assert good["idempotent_fraction_of_cold"] == round(25.0 / 240.0, 3)
    assert good["add_worker_fraction_of_cold"] == round(50.0 / 240.0, 3)
    assert good["targets"] == {"idempotent_max_fraction": 0.12, "add_worker_max_fraction": 0.25}
    assert all(good["ok"].values())  # type: ignore[union-attr]
    slow = lab_timings.provisioning_report(fake_run(200.0), fake_run(60.0), fake_run(90.0))
    assert slow["ok"] == {  # over 0.12 and over 0.25 of the cold converge
        "runs": True, "idempotent_changed_0": True, "idempotent_under_fraction": False,
        "add_worker_under_fraction": False, "add_worker_head_changed_0": True,
    }
    # The targets are ratios only: a slow machine that keeps them passes, at the limits too.
    limits = lab_timings.provisioning_report(fake_run(1000.0), fake_run(120.0), fake_run(250.0))
    assert limits["ok"]["idempotent_under_fraction"] and limits["ok"]["add_worker_under_fraction"]  # type: ignore[index]
    assert "targets" in limits and "idempotent_max_s" not in limits["targets"]  # type: ignore[operator]
    changed = lab_timings.provisioning_report(fake_run(200.0), fake_run(20.0, changed=1), fake_run(90.0, rc=2))
    assert changed["ok"]["idempotent_changed_0"] is False  # type: ignore[index]
    assert changed["ok"]["runs"] is False  # type: ignore[index]
    assert changed["ok"]["add_worker_head_changed_0"] is False  # type: ignore[index]  # failed: not shown
    # A failed cold converge stops the sequence: the later runs are missing and fail their targets.
    failed = lab_timings.provisioning_report(fake_run(300.0, rc=2), None, None)
    assert failed["idempotent_fraction_of_cold"] is None and failed["add_worker_fraction_of_cold"] is None
    assert not any(failed["ok"].values())  # type: ignore[union-attr]
    assert "idempotent /" not in lab_timings.provisioning_table(failed)


def test_adding_a_worker_must_leave_the_head_unchanged() -> None:
    """With --limit NEW the recap lists only NEW; a head in it that changed fails the check."""
    recap = lab_timings.parse_recap(RECAP)
    touched = fake_run(50.0, changed=3, hosts={**recap, "bt-head": {**recap["bt-head"], "changed": 1}})
    report = lab_timings.provisioning_report(fake_run(240.0), fake_run(25.0), touched)
    assert report["ok"]["add_worker_head_changed_0"] is False  # type: ignore[index]
    assert "the head CHANGED" in lab_timings.provisioning_table(report)
    only_worker = fake_run(50.0, changed=22, hosts={"bt-worker2": {**recap["bt-worker1"], "changed": 22}})
    report = lab_timings.provisioning_report(fake_run(240.0), fake_run(25.0), only_worker)
    assert report["ok"]["add_worker_head_changed_0"] is True  # type: ignore[index]
    assert lab_timings.head_changes(touched) == 1 and lab_timings.head_changes(only_worker) == 0


def test_provisioning_table_lists_the_three_runs() -> None:
    report = lab_timings.provisioning_report(fake_run(240.0, changed=60), fake_run(25.0), fake_run(50.0, changed=30))
    lines = lab_timings.provisioning_table(report).splitlines()
    assert lines[0].split() == ["run", "wall", "of", "cold", "changed", "failed", "rc"]
    assert lines[1].startswith("cold converge") and "240.0 s" in lines[1]
    assert lines[2].startswith("idempotent re-run") and "25.0 s" in lines[2] and "0.10" in lines[2]
    assert lines[3].startswith("add a worker (--limit)") and "50.0 s" in lines[3] and "0.21" in lines[3]
    assert lines[4].startswith("idempotent / cold = 0.10") and lines[4].endswith("(target <= 0.12): met")
    assert lines[5] == "add a worker / cold = 0.21 (target <= 0.25): met; the head unchanged"
    slow = lab_timings.provisioning_report(fake_run(200.0), fake_run(60.0), fake_run(90.0))
    assert "idempotent / cold = 0.30 (target <= 0.12): missed" in lab_timings.provisioning_table(slow)


def test_provisioning_report_compares_the_cold_converge_without_the_wheelhouse() -> None:
    report = lab_timings.provisioning_report(
        fake_run(240.0, changed=60), fake_run(25.0), fake_run(50.0, changed=30), fake_run(410.5, changed=60)
    )
    assert report["cold_converge_index"]["seconds"] == 410.5  # type: ignore[index]
    assert report["wheelhouse_saved_s"] == 170.5
    assert report["ok"]["runs"] is True  # type: ignore[index]
    lines = lab_timings.provisioning_table(report).splitlines()
    assert lines[4].startswith("cold converge, no wheelhouse") and "410.5 s" in lines[4]
    assert lines[-1] == "the wheelhouse saved 170.5 s of the cold converge"
    # An index run that failed (no index reachable) fails the runs and saves nothing.
    failed = lab_timings.provisioning_report(fake_run(240.0), fake_run(25.0), fake_run(50.0), fake_run(30.0, rc=2))
    assert failed["ok"]["runs"] is False and failed["wheelhouse_saved_s"] is None  # type: ignore[index]
    assert "saved" not in lab_timings.provisioning_table(failed)
    # Not measured: the three runs decide alone.
    alone = lab_timings.provisioning_report(fake_run(240.0), fake_run(25.0), fake_run(50.0))
    assert alone["wheelhouse_saved_s"] is None


def test_timings_verb_measures_the_lab_into_results(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(lab, "build_image", lambda force=False: calls.append(("image", force)))
    monkeypatch.setattr(
        lab_timings, "timings", lambda the_lab, inventory, out, index: calls.append((the_lab, inventory, out, index))
    )
    assert lab.main(["timings"]) == 0
    assert calls == [("image", False), (lab.Lab(), REPO / "inventory/lab", REPO / "results/provisioning.json", True)]
    calls.clear()
    assert lab.main(["timings", "--", "--no-index"]) == 0  # without the cold converge from the index
    assert calls[-1] == (lab.Lab(), REPO / "inventory/lab", REPO / "results/provisioning.json", False)
    with pytest.raises(SystemExit):
        lab.main(["nonsense"])


def test_timings_runs_cold_idempotent_limit_then_cold_from_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    seconds = iter([250.0, 20.0, 50.0, 400.0])
    monkeypatch.setattr(lab, "down_containers", lambda the_lab: steps.append("down"))
    monkeypatch.setattr(lab, "up_containers", lambda the_lab: steps.append("up"))
    monkeypatch.setattr(lab, "run", lambda cmd, **kw: steps.append(" ".join(cmd)))

    def playbook(inventory: Path, path: str, *extra: str) -> dict[str, object]:
        steps.append(" ".join([path, *extra]))
        return fake_run(next(seconds), changed=50 if steps.count("site.yml") == 1 and not extra else 0)

    monkeypatch.setattr(lab_timings, "timed_playbook", playbook)
    out = tmp_path / "results" / "provisioning.json"
    report = lab_timings.timings(lab.Lab(), tmp_path / "inv", out)
    assert steps == [
        "down", "up", "site.yml", "site.yml", "podman rm -f -t 5 bt-worker2", "up", "site.yml --limit bt-worker2",
        "down", "up", "site.yml -e ray_node_wheelhouse_cache=",
    ]
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(report))
    assert data["add_worker"]["worker"] == "bt-worker2" and data["nodes"] == ["bt-head", "bt-worker1", "bt-worker2"]
    assert data["idempotent_fraction_of_cold"] == 0.08 and data["add_worker_fraction_of_cold"] == 0.2
    assert all(data["ok"].values())
    assert data["cold_converge_index"]["seconds"] == 400.0 and data["wheelhouse_saved_s"] == 150.0
    assert data["machine"]["cpus"] == os.cpu_count()
    # Without the index run, the lab is left as the --limit run made it.
    steps.clear()
    seconds = iter([250.0, 20.0, 50.0])
    lab_timings.timings(lab.Lab(), tmp_path / "inv", out, index=False)
    assert steps[-1] == "site.yml --limit bt-worker2" and json.loads(out.read_text())["cold_converge_index"] is None


def test_timings_stops_at_a_failed_cold_converge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(lab, "down_containers", lambda the_lab: None)
    monkeypatch.setattr(lab, "up_containers", lambda the_lab: None)
    monkeypatch.setattr(
        lab_timings, "timed_playbook", lambda inv, path, *extra: calls.append(path) or fake_run(99.0, rc=2)
    )
    with pytest.raises(SystemExit):
        lab_timings.timings(lab.Lab(), tmp_path, tmp_path / "p.json")
    assert calls == ["site.yml"]
    assert json.loads((tmp_path / "p.json").read_text())["idempotent_rerun"] is None


def test_timed_playbook_reports_wall_recap_and_the_controllers_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in ansible-playbook that burns some CPU and prints a recap: its CPU is counted."""
    fake = tmp_path / "ansible-playbook"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end:\n"
        "    pass\n"
        "print(' '.join(sys.argv[1:]))\n"
        f"print('''{RECAP}''')\n"
        "sys.exit(2)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(lab, "lab_env", lambda: {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    result = lab_timings.timed_playbook(tmp_path / "inv", "site.yml", "--limit", "bt-worker2")
    assert result["command"] == "ansible-playbook site.yml --limit bt-worker2"
    assert result["rc"] == 2 and result["changed"] == 2 and result["failed"] == 2 and result["tasks_ok"] == 143
    assert set(result["hosts"]) == {"bt-head", "bt-worker1", "bt-worker2"}  # type: ignore[arg-type]
    assert 0.2 <= float(result["controller_cpu_s"]) <= float(result["seconds"]) + 0.2  # type: ignore[arg-type]
