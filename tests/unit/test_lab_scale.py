"""`./lab scale` (tools/lab_scale.py): its hosts and inventories, the fits and verdicts of its report,
the table, the plot, and the order of its steps (no containers: podman and the playbooks are stood in
for)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import lab  # noqa: E402
import lab_scale  # noqa: E402
import lab_timings  # noqa: E402

LAB_TREE = yaml.safe_load((REPO / "inventory/lab/hosts.yml").read_text())


def run(seconds: float, cpu: float = 0.0, changed: int = 0, rc: int = 0) -> dict[str, object]:
    return {"seconds": seconds, "controller_cpu_s": cpu, "rc": rc, "changed": changed, "failed": 0, "hosts": {}}


def size(workers: int, cold: float, rerun: float, verify: float, cpu: float = 10.0, **kw: int) -> dict[str, object]:
    return {"workers": workers, "cold": run(cold), "rerun": run(rerun, cpu, **kw), "verify": run(verify)}


def test_forks_are_read_from_the_projects_ansible_cfg(tmp_path: Path) -> None:
    assert lab_scale.ansible_forks() == 10
    (tmp_path / "ansible.cfg").write_text("[defaults]\nroles_path = roles\n")
    assert lab_scale.ansible_forks(tmp_path / "ansible.cfg") == 5  # Ansible's own default


def test_scale_hosts_are_a_head_at_10_and_workers_after_it() -> None:
    hosts = lab_scale.scale_hosts("bs", "10.89.43.0/24", 3)
    assert [(h.name, h.ip) for h in hosts] == [
        ("bs-head", "10.89.43.10"), ("bs-worker1", "10.89.43.11"), ("bs-worker2", "10.89.43.12"),
        ("bs-worker3", "10.89.43.13"),
    ]
    assert [h.is_head for h in hosts] == [True, False, False, False]
    # The lab's own names and addresses for 2 workers: the lab itself.
    assert lab_scale.scale_hosts("bt", lab.Lab().subnet, 2) == lab.Lab().hosts
    with pytest.raises(SystemExit, match="bittrader_cluster_cidr"):  # the nodes' firewalls would refuse it
        lab_scale.scale_hosts("bs", "192.168.50.0/24", 2)
    with pytest.raises(SystemExit, match="do not fit"):
        lab_scale.scale_hosts("bs", "10.89.43.0/28", 8)


def test_scale_inventory_keeps_the_labs_groups_and_host_variables() -> None:
    # For the lab's own hosts it is inventory/lab/hosts.yml itself.
    assert lab_scale.scale_inventory(lab.Lab().hosts, LAB_TREE) == LAB_TREE
    tree = lab_scale.scale_inventory(lab_scale.scale_hosts("bs", "10.89.43.0/24", 4), LAB_TREE)
    cluster = tree["ray_cluster"]["children"]  # type: ignore[index]
    assert cluster["ray_head"]["hosts"] == {"bs-head": {"bittrader_node_ip": "10.89.43.10", "bittrader_num_cpus": 0}}
    workers = cluster["ray_workers"]["children"]["workers_linux"]["hosts"]
    assert list(workers) == ["bs-worker1", "bs-worker2", "bs-worker3", "bs-worker4"]
    assert [w["bittrader_node_ip"] for w in workers.values()] == [f"10.89.43.{i}" for i in range(11, 15)]
    assert all(w["bittrader_num_cpus"] == 1 for w in workers.values())
    lab_workers = LAB_TREE["ray_cluster"]["children"]["ray_workers"]["children"]["workers_linux"]["hosts"]
    assert {k: v for k, v in workers["bs-worker2"].items() if k != "bittrader_node_ip"} == {
        k: v for k, v in lab_workers["bt-worker2"].items() if k != "bittrader_node_ip"
    }  # the throttle where inventory/lab has it, and nowhere else
    assert [w.get("bittrader_throttle_enabled", False) for w in workers.values()] == [False, True, False, False]
    assert cluster["ray_workers"]["children"]["workers_macos"] == {"hosts": {}}
    assert cluster["ray_workers"]["children"]["workers_windows"] == {"hosts": {}}
    assert LAB_TREE["ray_cluster"]["children"]["ray_head"]["hosts"] == {  # the lab's tree is left alone
        "bt-head": {"bittrader_node_ip": "10.89.42.10", "bittrader_num_cpus": 0}
    }


def test_a_written_scale_inventory_has_the_labs_group_vars(tmp_path: Path) -> None:
    hosts = lab_scale.scale_hosts("bs", "10.89.43.0/24", 3)
    folder = lab_scale.write_scale_inventory(hosts, tmp_path / "scale" / "inventory-3")
    assert lab_scale.write_scale_inventory(hosts, folder) == folder  # written again over itself
    assert (folder / "group_vars").resolve() == (REPO / "inventory/lab/group_vars").resolve()
    assert not Path((folder / "group_vars").readlink()).is_absolute()
    assert yaml.safe_load((folder / "hosts.yml").read_text()) == lab_scale.scale_inventory(hosts, LAB_TREE)
    # As Ansible reads it: every host in its groups, with the lab's group_vars (SSH login, network mode).
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(folder), "--list"],
        capture_output=True, text=True, check=True, env={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PATH": ""},
    )  # fmt: skip
    listed = json.loads(res.stdout)
    assert listed["ray_head"]["hosts"] == ["bs-head"]
    assert listed["workers_linux"]["hosts"] == ["bs-worker1", "bs-worker2", "bs-worker3"]
    worker3 = listed["_meta"]["hostvars"]["bs-worker3"]
    assert worker3["ansible_user"] == lab.SSH_USER and worker3["bittrader_network_mode"] == "lan"
    assert worker3["bittrader_node_ip"] == "10.89.43.13"


def test_least_squares_and_growth() -> None:
    assert lab_scale.least_squares([2, 4, 8], [30.0, 40.0, 60.0]) == (20.0, 5.0)
    assert lab_scale.least_squares([2, 2], [1.0, 2.0]) is None
    flat = lab_scale.growth([2, 4, 8], [100.0, 110.0, 130.0])
    assert flat is not None
    assert flat["time_ratio"] == 1.3 and flat["workers_ratio"] == 4.0 and flat["sublinear"] is True
    assert 0 < float(flat["exponent"]) < 0.2  # type: ignore[arg-type]
    proportional = lab_scale.growth([2, 4, 8], [100.0, 200.0, 400.0])
    assert proportional is not None and proportional["exponent"] == 1.0 and proportional["sublinear"] is False
    # The limit: k = 0.8 passes, just above fails.
    assert lab_scale.growth([2, 8], [100.0, 100.0 * 4**0.8])["sublinear"] is True  # type: ignore[index]
    assert lab_scale.growth([2, 8], [100.0, 100.0 * 4**0.81])["sublinear"] is False  # type: ignore[index]
    assert lab_scale.growth([2], [100.0]) is None


def test_scale_report_fits_each_run_kind_and_judges_the_rerun() -> None:
    sizes = [size(2, 250.0, 60.0, 20.0, cpu=40.0), size(4, 300.0, 70.0, 24.0, cpu=50.0),
             size(8, 400.0, 90.0, 32.0, cpu=70.0)]  # fmt: skip
    report = lab_scale.scale_report(sizes, forks=10, cores=2, network="n")
    assert report["schema"] == "bittrader-scale/1" and report["network"] == "n" and report["forks"] == 10
    assert report["fit"] == {
        "cold": {"fixed_s": 200.0, "per_worker_s": 25.0},
        "rerun": {"fixed_s": 50.0, "per_worker_s": 5.0},
        "verify": {"fixed_s": 16.0, "per_worker_s": 2.0},
        "rerun_controller_cpu": {"fixed_s": 30.0, "per_worker_s": 5.0},
    }
    rows = report["sizes"]
    assert [(r["workers"], r["hosts"], r["batches"]) for r in rows] == [(2, 3, 1), (4, 5, 1), (8, 9, 1)]  # type: ignore[attr-defined]
    assert [r["rerun_fraction_of_cold"] for r in rows] == [0.24, 0.233, 0.225]  # type: ignore[attr-defined]
    assert rows[0]["rerun_controller_busy"] == round(40.0 / (60.0 * 2), 3)  # type: ignore[index]
    assert report["rerun_growth"]["time_ratio"] == 1.5 and report["rerun_growth"]["sublinear"] is True  # type: ignore[index]
    assert report["ok"] == {"runs": True, "rerun_changed_0": True, "rerun_sublinear": True}
    assert report["largest_workers_handled_well"] == 8
    assert "forks = 10" in str(report["forks_note"]) and "5.0 s of CPU per re-run" in str(report["forks_note"])
    assert "(30 + 5.0 N) / 2 s" in str(report["forks_note"])


def test_scale_report_past_forks_and_with_a_busy_controller() -> None:
    """Sizes past forks - 1 workers run in batches, and a controller busy on all its cores is the
    limit: neither is handled well."""
    sizes = [size(2, 250.0, 60.0, 20.0, cpu=40.0), size(4, 300.0, 70.0, 24.0, cpu=135.0),
             size(8, 400.0, 90.0, 32.0, cpu=70.0)]  # fmt: skip
    report = lab_scale.scale_report(sizes, forks=5, cores=2)
    assert [r["batches"] for r in report["sizes"]] == [1, 1, 2]  # type: ignore[attr-defined]
    assert report["largest_workers_handled_well"] == 2  # 4 workers: 135 s of CPU in 70 s on 2 cores
    assert "up to 4 workers" in str(report["forks_note"]) and "batches of 5 hosts" in str(report["forks_note"])


def test_scale_report_keeps_a_failed_size_out_of_the_fits() -> None:
    failed = {"workers": 8, "cold": run(400.0), "rerun": run(90.0, rc=2)}
    report = lab_scale.scale_report([size(2, 250.0, 60.0, 20.0), size(4, 300.0, 70.0, 24.0), failed], 10, 2)
    assert report["ok"]["runs"] is False  # type: ignore[index]
    assert report["fit"]["cold"] == {"fixed_s": 200.0, "per_worker_s": 25.0}  # type: ignore[index]
    assert report["rerun_growth"]["to_workers"] == 4  # type: ignore[index]
    assert "rerun_fraction_of_cold" not in report["sizes"][2]  # type: ignore[index]
    changed = lab_scale.scale_report([size(2, 250.0, 60.0, 20.0, changed=1), size(4, 300.0, 70.0, 24.0)], 10, 2)
    assert changed["ok"]["rerun_changed_0"] is False  # type: ignore[index]
    # One size: no fit and no verdict on growth (undecided, not failed).
    one = lab_scale.scale_report([size(2, 250.0, 60.0, 20.0)], 10, 2)
    assert one["fit"] == {"cold": None, "rerun": None, "verify": None, "rerun_controller_cpu": None}
    assert one["ok"] == {"runs": True, "rerun_changed_0": True, "rerun_sublinear": None}
    assert one["forks_note"].endswith("ANSIBLE_FORKS).")  # type: ignore[union-attr]
    assert lab_scale.scale_report([], 10, 2)["ok"] == {"runs": False, "rerun_changed_0": False, "rerun_sublinear": None}


def test_scale_table_has_a_row_per_size_and_says_why() -> None:
    sizes = [size(2, 250.0, 60.0, 20.0, cpu=40.0), size(4, 300.0, 70.0, 24.0, cpu=50.0),
             size(8, 400.0, 90.0, 32.0, cpu=70.0)]  # fmt: skip
    lines = lab_scale.scale_table(lab_scale.scale_report(sizes, 10, 2)).splitlines()
    assert lines[0].split() == ["workers", "hosts", "cold", "re-run", "verify", "re-run/cold", "re-run",
                                "+s/worker", "ctrl", "CPU", "re-run"]  # fmt: skip
    assert lines[1].split() == ["2", "3", "250.0", "s", "60.0", "s", "20.0", "s", "0.24", "-", "40.0", "s"]
    assert lines[2].split()[-3:] == ["5.0", "50.0", "s"]  # (70 - 60) / (4 - 2)
    assert lines[3].split()[-3:] == ["5.0", "70.0", "s"]
    assert lines[4].startswith("least squares") and "idempotent re-run 50.0 + 5.00 N" in lines[4]
    assert lines[5].startswith("re-run(8) / re-run(2) = 1.50 for 4x the workers") and "sub-linear" in lines[5]
    assert lines[6].startswith("why: the fixed 50.0 s") and "56 % of the re-run at 8 workers" in lines[6]
    assert "8 workers" in lines[7] and lines[-1].startswith("forks = 10")
    failed = lab_scale.scale_report([{"workers": 2, "cold": run(300.0, rc=2)}], 10, 2)
    assert lab_scale.scale_table(failed).splitlines()[1].split() == ["2", "3", "300.0", "s", "(rc", "2)", "-", "-",
                                                                      "-", "-", "-"]  # fmt: skip


def test_scale_plot_writes_a_png(tmp_path: Path) -> None:
    sizes = [size(2, 250.0, 60.0, 20.0), size(4, 300.0, 70.0, 24.0), {"workers": 8, "cold": run(1.0, rc=2)}]
    lab_scale.scale_plot(lab_scale.scale_report(sizes, 10, 2), tmp_path / "out" / "scale.png")
    png = (tmp_path / "out" / "scale.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_measure_size_runs_cold_rerun_verify_then_removes_the_containers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    monkeypatch.setattr(lab, "up_containers", lambda the_lab: steps.append("up " + the_lab.network))
    monkeypatch.setattr(lab, "run", lambda cmd, **kw: steps.append(" ".join(cmd)))
    monkeypatch.setattr(lab_timings, "timed_playbook", lambda inv, path, *e: steps.append(path) or run(9.0))
    the_lab = lab.Lab("bt-scale", "10.89.43.0/24", lab_scale.scale_hosts("bs", "10.89.43.0/24", 2))
    got = lab_scale.measure_size(the_lab, tmp_path)
    assert steps == ["up bt-scale", "site.yml", "site.yml", "playbooks/verify.yml",
                     "podman rm -f -t 5 bs-head bs-worker1 bs-worker2"]  # fmt: skip
    assert got["workers"] == 2 and got["nodes"] == ["bs-head", "bs-worker1", "bs-worker2"] and lab_scale.complete(got)
    # A failed cold converge stops the size; an interrupted run still removes the containers.
    steps.clear()
    monkeypatch.setattr(lab_timings, "timed_playbook", lambda inv, path, *e: steps.append(path) or run(9.0, rc=2))
    got = lab_scale.measure_size(the_lab, tmp_path)
    assert steps[1:] == ["site.yml", "podman rm -f -t 5 bs-head bs-worker1 bs-worker2"] and "rerun" not in got
    steps.clear()

    def interrupted(inv: Path, path: str, *e: str) -> dict[str, object]:
        raise KeyboardInterrupt

    monkeypatch.setattr(lab_timings, "timed_playbook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lab_scale.measure_size(the_lab, tmp_path)
    assert steps[-1] == "podman rm -f -t 5 bs-head bs-worker1 bs-worker2"


def test_scale_measures_each_size_in_turn_and_writes_its_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []

    def fake_podman(cmd: list[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        steps.append(" ".join(cmd))
        return subprocess.CompletedProcess(cmd, 1 if cmd[1:3] == ["network", "exists"] else 0)

    timings = iter([250.0, 60.0, 20.0, 300.0, 70.0, 24.0])
    monkeypatch.setattr(lab, "run", fake_podman)
    monkeypatch.setattr(lab, "up_containers", lambda the_lab: steps.append(f"up {len(the_lab.hosts)}"))
    monkeypatch.setattr(lab_timings, "timed_playbook", lambda inv, path, *e: steps.append(path) or run(next(timings)))
    report = lab_scale.scale([2, 4], "bt-scale", "10.89.43.0/24", "bs", tmp_path)
    workers4 = " ".join(f"bs-worker{i}" for i in range(1, 5))
    assert steps == [
        "podman network exists bt-scale",
        f"podman rm -f -t 5 bs-head {workers4}",  # left by an interrupted run
        "up 3", "site.yml", "site.yml", "playbooks/verify.yml", "podman rm -f -t 5 bs-head bs-worker1 bs-worker2",
        "up 5", "site.yml", "site.yml", "playbooks/verify.yml", f"podman rm -f -t 5 bs-head {workers4}",
        "podman network rm -f bt-scale",  # made for the measurement: removed after it
    ]
    assert json.loads((tmp_path / "scale.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "scale" / "inventory-4" / "hosts.yml").is_file()
    assert report["requested_sizes"] == [2, 4] and report["prefix"] == "bs" and report["subnet"] == "10.89.43.0/24"
    assert report["sizes"][1]["inventory"] == str(tmp_path / "scale" / "inventory-4")  # type: ignore[index]
    # A network that was there (the lab's) stays; a re-run that changed something fails the verb.
    steps.clear()
    rerun_changes = iter([run(250.0, changed=60), run(60.0, changed=1), run(20.0)])
    monkeypatch.setattr(
        lab, "run", lambda cmd, **kw: steps.append(" ".join(cmd)) or subprocess.CompletedProcess(cmd, 0)
    )
    monkeypatch.setattr(lab_timings, "timed_playbook", lambda inv, path, *e: next(rerun_changes))
    with pytest.raises(SystemExit, match="changed"):
        lab_scale.scale([2], "bittrader-lab", "10.89.42.0/24", "bt", tmp_path)
    assert not any("network rm" in s for s in steps)


def test_scale_verb_takes_sizes_network_subnet_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(lab, "build_image", lambda force=False: calls.append(("image", force)))
    monkeypatch.setattr(lab_scale, "scale", lambda *args: calls.append(args) or {})
    assert lab.main(["scale"]) == 0
    assert calls == [("image", False), ([2, 4, 8], "bittrader-lab", "10.89.42.0/24", "bt", REPO / "results")]
    calls.clear()
    argv = ["scale", "--", "4", "2", "--network", "bt-scale", "--subnet", "10.89.43.0/24", "--prefix", "bs"]
    assert lab.main(argv) == 0
    assert calls[1] == ([2, 4], "bt-scale", "10.89.43.0/24", "bs", REPO / "results")
    with pytest.raises(SystemExit):
        lab.main(["scale", "--", "0"])
    assert "|scale|" in (REPO / "lab").read_text(encoding="utf-8")  # ./lab passes the verb on to tools/lab.py
