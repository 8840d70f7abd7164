"""Lifecycle on the live cluster: the head's health record and status command; remove_worker.yml on
worker1 while a job runs (the job loses nothing, the others stay alive, the health record warns);
the add-worker path (`site.yml --limit WORKER1`: the head unchanged, the worker back with its CPUs);
upgrade.yml's failure path (a host that cannot take the new versions: nothing is switched), then a
real switch to another Ray release and back (about 5 min: the other release's wheels, a second
environment on every node; BITTRADER_TEST_UPGRADE_SWITCH=0 skips it). Leaves all three nodes alive
with their CPUs. Playbooks run against the inventory in MOLECULE_INVENTORY_FILE."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest
import testinfra
from conftest import (
    CPUS,
    HEAD,
    HEAD_BASE,
    IPS,
    JOB_API,
    PYTHON,
    RAY_VERSION,
    REPO,
    TOKEN_ENV,
    WORKERS,
    alive_ips,
    as_user,
    base_dir,
    job_status,
    probe_cluster,
    recap,
    run_playbook,
    wait_for_all_alive,
)

testinfra_hosts = [f"podman://{HEAD}"]
WORKER = WORKERS[0]
# The threshold the Molecule head's host_vars set (bittrader_health_missing_warn_s).
WARN_AFTER_S = 15
OTHER_RAY = os.environ.get("BITTRADER_TEST_OTHER_RAY", "2.59.0")
TIMES: dict[str, float] = {}


def playbook(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a playbook (an absolute path or one relative to the repository) against the Molecule inventory."""
    return run_playbook(*args)[0]


def tail(res: subprocess.CompletedProcess[str]) -> str:
    return res.stdout[-4000:] + res.stderr[-2000:]


def health_check(head: Any) -> dict[str, Any]:
    """Run one health check now, as the timer's service does, and return the latest record. (Not
    `systemctl start`: while the timer's own run is under way that only waits for it, and its record
    may predate what the test waits for.)"""
    res = head.run(as_user([f"{HEAD_BASE}/venv/bin/python", f"{HEAD_BASE}/venv/bin/bittrader-health", "check",
                            "--quiet", "--config", f"{HEAD_BASE}/health.json"]))
    assert res.rc == 0, res.stderr
    status = head.run(as_user([f"{HEAD_BASE}/bin/bittrader-status", "--json"]))
    record: dict[str, Any] = json.loads(status.stdout)
    return record



def service_stamps(names: list[str]) -> dict[str, str]:
    """When each node's Ray service last started (changes with every restart)."""
    stamps = {}
    for name in names:
        node = testinfra.get_host(f"podman://{name}")
        unit = "bittrader-ray-head" if name == HEAD else "bittrader-ray-worker"
        stamps[name] = node.run(f"systemctl show -p ActiveEnterTimestampMonotonic -p MainPID {unit}").stdout
    return stamps


def venv_state(name: str) -> str:
    node = testinfra.get_host(f"podman://{name}")
    return node.run(f"stat -c '%F %N' {base_dir(name)}/venv").stdout.strip()


def ray_versions(head: Any) -> dict[str, str]:
    data = probe_cluster(head, tasks=True, timeout=60)
    return {n["ip"]: (n["task"] or {}).get("ray", "?") for n in data["nodes"] if n["alive"]}


def test_health_record_and_status(host) -> None:  # type: ignore[no-untyped-def]
    assert host.service("bittrader-health.timer").is_enabled
    assert host.service("bittrader-health.timer").is_running
    started = time.monotonic()
    record = health_check(host)
    TIMES["health check"] = time.monotonic() - started
    assert (record["alive"], record["expected"]) == (3, 3), record
    assert record["cpus"] == sum(CPUS.values())
    assert {r["name"]: r["state"] for r in record["nodes"]} == {name: "alive" for name in IPS}
    throttled = {r["name"]: r["throttle"] for r in record["nodes"]}
    assert throttled[WORKERS[1]] and throttled[HEAD] is None, throttled
    lines = host.file(f"{HEAD_BASE}/logs/health.log").content_string.splitlines()
    assert lines and "alive=3/3" in lines[-1] and f"{HEAD}=0" in lines[-1], lines[-3:]
    status = host.run(as_user([f"{HEAD_BASE}/bin/bittrader-status"]))
    assert status.rc == 0, status.stdout + status.stderr
    assert "3/3 inventory hosts alive" in status.stdout
    print(f"health check (one run of the timer's service) took {TIMES['health check']:.1f} s")


def test_remove_worker_while_a_job_runs(host) -> None:  # type: ignore[no-untyped-def]
    code = f"{HEAD_BASE}/jobs/lifecycle/code"
    host.run(f"mkdir -p {code}")
    subprocess.run(["podman", "cp", str(REPO / "workload") + "/.", f"{HEAD}:{code}"], check=True)
    host.run(f"chown -R bittrader {HEAD_BASE}/jobs")
    job = f"lifecycle-{int(time.time())}"
    out = f"{HEAD_BASE}/jobs/lifecycle/{job}"
    submit = host.run(as_user([
        f"{HEAD_BASE}/venv/bin/ray", "job", "submit", f"--address={JOB_API}", f"--submission-id={job}",
        f"--working-dir={code}", "--no-wait", "--", f"{HEAD_BASE}/venv/bin/python", "-m", "bittrader_workload.job",
        "--candles=40000", "--params=120", "--no-ship-code", "--quiet", f"--results={out}.jsonl",
        f"--summary={out}.json"], TOKEN_ENV))
    assert submit.rc == 0, submit.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until tasks have landed on the worker to remove
        done = host.run(f"cat {out}.jsonl 2>/dev/null").stdout
        if WORKER in done:
            break
        time.sleep(1)
    assert WORKER in host.run(f"cat {out}.jsonl 2>/dev/null").stdout, "no task ran on the worker before its removal"
    assert job_status(host, job) == "RUNNING"

    started = time.monotonic()
    res = playbook(str(REPO / "playbooks/remove_worker.yml"), "-e", f"host={WORKER}")
    TIMES["remove_worker.yml"] = time.monotonic() - started
    assert res.returncode == 0, tail(res)
    assert "Drain the worker's Ray node" in res.stdout

    worker = testinfra.get_host(f"podman://{WORKER}")
    assert not worker.service("bittrader-ray-worker").is_running
    assert not worker.service("bittrader-ray-worker").is_enabled
    assert not worker.file(f"{base_dir(WORKER)}/run/hold").exists
    assert worker.file(f"{base_dir(WORKER)}/venv/bin/python").exists  # kept without purge=true
    after = job_status(host, job)
    data = probe_cluster(host, tasks=False)
    alive = alive_ips(data)
    assert IPS[WORKER] not in alive
    # It left through the drain (its raylet exited by itself, with the drain's message), not killed.
    reasons = [n["death_reason"] for n in data["nodes"] if n["ip"] == IPS[WORKER] and not n["alive"]]
    assert any("remove_worker.yml" in r for r in reasons), reasons
    assert alive == {IPS[HEAD]: float(CPUS[HEAD]), IPS[WORKERS[1]]: alive[IPS[WORKERS[1]]]}

    deadline = time.monotonic() + 300
    status = job_status(host, job)
    while status in {"RUNNING", "PENDING"} and time.monotonic() < deadline:
        time.sleep(2)
        status = job_status(host, job)
    assert status == "SUCCEEDED", status
    summary = json.loads(host.file(f"{out}.json").content_string)
    by_host = {row["hostname"]: row["tasks"] for row in summary["nodes"]}
    print(f"remove_worker.yml took {TIMES['remove_worker.yml']:.1f} s while the job ran (job {after} when it "
          "ended); job "
          f"{summary['evaluations_done']}/{summary['evaluations_expected']} evaluations, "
          f"{summary['evaluations_failed']} failed, {summary['wall_s']:.1f} s, tasks by node {by_host}")
    assert summary["evaluations_done"] == summary["evaluations_expected"] == 120
    assert summary["evaluations_failed"] == 0 and summary["status"] == "complete"
    assert by_host.get(WORKER, 0) > 0

    # The health record: worker1 is still in the inventory, so it is missing, then warned about. A
    # node counts as missing from the first check that does not find it (as the timer's next run
    # would): one check now, the next after the warning threshold.
    first = health_check(host)
    assert first["alive"] == 2, first
    missing = {r["name"]: r["missing_s"] for r in first["nodes"] if r["state"] == "missing"}
    assert list(missing) == [WORKER], first
    time.sleep(max(0.0, WARN_AFTER_S + 1 - missing[WORKER]))
    record = health_check(host)
    warned = [w for w in record["warnings"] if w.startswith(f"{WORKER} ({IPS[WORKER]}) missing for")]
    assert record["alive"] == 2 and warned, record
    log = host.file(f"{HEAD_BASE}/logs/health.log").content_string
    assert f" WARN {WORKER} ({IPS[WORKER]}) missing for" in log
    status = host.run(as_user([f"{HEAD_BASE}/bin/bittrader-status"]))
    assert status.rc == 1 and f"WARN {WORKER}" in status.stdout


def test_add_the_worker_back_with_limit(host) -> None:  # type: ignore[no-untyped-def]
    files = " ".join(f"{HEAD_BASE}/{f}"
                     for f in ("node.json", "auth_token", "health.json", "venv/bin/bittrader-health"))
    before = host.run(f"md5sum {files} /etc/systemd/system/bittrader-ray-head.service; "
                      "systemctl show -p ActiveEnterTimestampMonotonic bittrader-ray-head").stdout
    started = time.monotonic()
    res = playbook(str(REPO / "site.yml"), "--limit", WORKER)
    TIMES["site.yml --limit worker"] = time.monotonic() - started
    assert res.returncode == 0, tail(res)
    counts = recap(res.stdout)
    assert counts[WORKER]["changed"] > 0, counts
    assert counts.get(HEAD, {"changed": 0})["changed"] == 0, counts
    after = host.run(f"md5sum {files} /etc/systemd/system/bittrader-ray-head.service; "
                     "systemctl show -p ActiveEnterTimestampMonotonic bittrader-ray-head").stdout
    assert after == before  # the head was only read
    took = wait_for_all_alive(host, timeout=90)
    assert f"{WORKER}" in res.stdout and "Cluster: 3 nodes alive" in res.stdout
    record = health_check(host)
    assert record["alive"] == 3 and record["warnings"] == []
    print(f"site.yml --limit {WORKER} took {TIMES['site.yml --limit worker']:.1f} s (head changed=0, files and "
          f"service untouched); all alive {took:.1f} s after")


def test_a_rerun_repairs_drift_and_then_only_checks(host) -> None:  # type: ignore[no-untyped-def]
    """The node's record (ray_node's state.yml, library/bittrader_node_state.py): a re-run that finds a
    managed file edited by hand and another's mode loosened names both, provisions the node again and puts
    them back; the run after it only checks (changed=0, nothing provisioned)."""
    name = WORKERS[1]
    worker = testinfra.get_host(f"podman://{name}")
    unit, config = "/etc/systemd/system/bittrader-ray-worker.service", f"{base_dir(name)}/node.json"
    before = worker.run(f"md5sum {unit} {config}; stat -c %a {config}").stdout
    assert worker.run(f"echo '# edited by hand' >> {unit} && chmod 0666 {config}").rc == 0
    started = time.monotonic()
    res = playbook(str(REPO / "site.yml"), "--limit", name)
    TIMES["site.yml --limit worker (drift)"] = time.monotonic() - started
    assert res.returncode == 0, tail(res)
    said = " ".join(res.stdout.split())  # the callback folds long messages
    assert f"{name} is provisioned:" in said, tail(res)
    assert f"{unit}: content changed" in said and f"{config}: mode changed" in said, tail(res)
    assert recap(res.stdout)[name]["changed"] > 0
    assert worker.run(f"md5sum {unit} {config}; stat -c %a {config}").stdout == before
    started = time.monotonic()
    again = playbook(str(REPO / "site.yml"), "--limit", name)
    TIMES["site.yml --limit worker (current)"] = time.monotonic() - started
    assert again.returncode == 0, tail(again)
    assert recap(again.stdout)[name]["changed"] == 0 and "is provisioned:" not in again.stdout
    took = wait_for_all_alive(host, timeout=90)
    print(f"drift repaired by site.yml --limit {name} in {TIMES['site.yml --limit worker (drift)']:.1f} s; the next "
          f"run only checked: {TIMES['site.yml --limit worker (current)']:.1f} s; all alive {took:.1f} s after")


def test_upgrade_with_a_host_that_cannot_take_it_switches_nothing(host) -> None:  # type: ignore[no-untyped-def]
    blocked = f"{base_dir(WORKERS[1])}/venvs/ray{OTHER_RAY}-py{PYTHON}"
    worker2 = testinfra.get_host(f"podman://{WORKERS[1]}")
    assert worker2.run(f"mkdir -p {base_dir(WORKERS[1])}/venvs && echo in-the-way > {blocked}").rc == 0
    stamps, venvs = service_stamps(list(IPS)), {name: venv_state(name) for name in IPS}
    try:
        started = time.monotonic()
        res = playbook(str(REPO / "playbooks/upgrade.yml"), "-e", f"bittrader_ray_version={OTHER_RAY}")
        TIMES["upgrade.yml (failing host)"] = time.monotonic() - started
    finally:
        worker2.run(f"rm -f {blocked}")
    assert res.returncode != 0, tail(res)
    assert f"{blocked} exists and is not a folder" in res.stdout, tail(res)
    assert "Switch the cluster" not in res.stdout  # stopped before any switch
    assert service_stamps(list(IPS)) == stamps  # no node restarted
    assert {name: venv_state(name) for name in IPS} == venvs
    assert set(ray_versions(host).values()) == {RAY_VERSION}
    print(f"upgrade.yml with a failing host stopped after {TIMES['upgrade.yml (failing host)']:.1f} s; "
          "nothing switched or restarted")


@pytest.mark.skipif(os.environ.get("BITTRADER_TEST_UPGRADE_SWITCH") == "0",
                    reason="BITTRADER_TEST_UPGRADE_SWITCH=0: the real switch (another Ray release) is skipped")
def test_upgrade_switches_to_another_release_and_back(host) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    res = playbook(str(REPO / "playbooks/upgrade.yml"), "-e", f"bittrader_ray_version={OTHER_RAY}")
    TIMES[f"upgrade.yml to {OTHER_RAY}"] = time.monotonic() - started
    assert res.returncode == 0, tail(res)
    assert set(ray_versions(host).values()) == {OTHER_RAY}
    for name in IPS:
        assert venv_state(name).endswith(f"-> '{base_dir(name)}/venvs/ray{OTHER_RAY}-py{PYTHON}'"), venv_state(name)
    old = f"{base_dir(HEAD)}/venvs/ray{RAY_VERSION}-py{PYTHON}"
    stamp = host.run(f"stat -c %Y {old}/pyvenv.cfg").stdout

    started = time.monotonic()
    res = playbook(str(REPO / "playbooks/upgrade.yml"))
    TIMES[f"upgrade.yml back to {RAY_VERSION}"] = time.monotonic() - started
    assert res.returncode == 0, tail(res)
    assert set(ray_versions(host).values()) == {RAY_VERSION}
    assert host.run(f"stat -c %Y {old}/pyvenv.cfg").stdout == stamp  # the previous environment, reused
    for name in IPS:
        assert venv_state(name).endswith(f"-> '{base_dir(name)}/venvs/ray{RAY_VERSION}-py{PYTHON}'"), venv_state(name)
    wait_for_all_alive(host, timeout=120)
    print(f"upgrade.yml to Ray {OTHER_RAY}: {TIMES[f'upgrade.yml to {OTHER_RAY}']:.1f} s; back to {RAY_VERSION} "
          f"(environment reused): {TIMES[f'upgrade.yml back to {RAY_VERSION}']:.1f} s")


def test_cluster_as_found_and_times(host) -> None:  # type: ignore[no-untyped-def]
    took = wait_for_all_alive(host, timeout=120)
    print("lifecycle times: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMES.items())
          + f"; all nodes alive with their CPUs ({took:.1f} s)")
