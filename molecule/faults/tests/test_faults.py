"""Fault injection (issue #6): while the reference job runs on the cluster, worker1 loses its Ray
processes (SIGKILL), its host (container restart), its network (30 s, and 90 s: long enough for the
head to mark it dead) and its log files (disk full, folder unwritable), and the head's service
restarts. After each fault the cluster must
come back to all nodes alive with their CPUs by itself; every job must end complete, with every
evaluation present once and equal to a serial run of the same parameter sets. A head restart ends the
job's driver (Ray cannot save it): the job is re-run on its results file and computes only the rest.

Each recovery time (fault end -> all nodes alive with their CPUs) is printed in a table at the end
and written to results/faults.json. Faults hit worker1 only: worker2 is the throttled "laptop".
The tests run in this order and share one module-scoped campaign; each one starts from, and leaves,
a healthy cluster (later test files depend on it).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import testinfra
from conftest import (
    CPUS,
    HEAD,
    HEAD_BASE,
    IPS,
    JOB_API,
    REPO,
    TOKEN_ENV,
    USER,
    WORKERS,
    alive_ips,
    as_user,
    base_dir,
    job_status,
    node_id_of,
    probe_cluster,
    wait_for_all_alive,
)

testinfra_hosts = [f"podman://{HEAD}"]

WORKER = WORKERS[0]
UNIT = "bittrader-ray-worker"
# The reference job: 160 parameter sets of the backtest on 40,000 candles, about 0.3 s of CPU each.
CANDLES = 40_000
PARAMS = 160
# A fault is injected only into a job with at least this many evaluations still to run.
MIN_LEFT = PARAMS // 3
RECOVERY_TIMEOUT_S = 300
JOB_TIMEOUT_S = 900
JOBS = f"{HEAD_BASE}/jobs/faults"
CODE = f"{JOBS}/code"
VENV = f"{HEAD_BASE}/venv/bin"
LOGS = f"{base_dir(WORKER)}/logs"

# Run on the head with the workload's own code: results of a job against the serial reference
# (tolerance 0: every metric must be equal), and the ids written more than once.
COMPARE = r"""
import collections, json, sys
from bittrader_workload.job import compare_results_files
reference, results = sys.argv[1], sys.argv[2]
seen = collections.Counter()
with open(results, encoding="utf-8") as fh:
    for line in fh:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("id"), int):
            seen[rec["id"]] += 1
out = compare_results_files(reference, results, tol=0.0).to_dict()
out["duplicates"] = sorted(i for i, n in seen.items() if n > 1)
print(json.dumps(out))
"""
COUNT = "import sys; from bittrader_workload.job import read_results; print(len(read_results(sys.argv[1])))"


def podman(*args: str, check: bool = True) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=180)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def worker_host() -> Any:
    return testinfra.get_host(f"podman://{WORKER}")


def root(host: Any, cmd: str) -> str:
    res = host.run(cmd)
    assert res.rc == 0, f"{cmd}: {res.stdout[-500:]} {res.stderr[-1000:]}"
    return str(res.stdout)


def head_python(head: Any, code: str, *args: str) -> str:
    res = head.run(as_user([f"{VENV}/python", "-c", code, *args], {"PYTHONPATH": CODE}))
    assert res.rc == 0, res.stderr[-2000:]
    return str(res.stdout).strip()


def network_of(name: str) -> tuple[str, str, str]:
    """(network, IP address, MAC address) of a container with one network."""
    data = json.loads(podman("inspect", name, "--format", "{{json .NetworkSettings.Networks}}"))
    assert len(data) == 1, data
    network, settings = next(iter(data.items()))
    return network, str(settings["IPAddress"]), str(settings["MacAddress"])


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One submission of the reference job; a re-run (resume) uses the results file of another."""

    id: str
    results: str
    summary: str
    faults: list[str] = field(default_factory=list)
    resumed_from: int | None = None
    # The status the job ended with, seen while the job API still knew it: a head restart empties
    # the job table (its records live in the GCS), so a later status query says "does not exist".
    final: str | None = None
    summary_data: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)



def submit(head: Any, job_id: str, results: str | None = None) -> Job:
    """Submit the reference job (no wait); results names the file of an earlier run to resume."""
    job = Job(job_id, results or f"{JOBS}/{job_id}.jsonl", f"{JOBS}/{job_id}.json")
    cmd = [
        f"{VENV}/ray", "job", "submit", f"--address={JOB_API}", f"--submission-id={job_id}",
        f"--working-dir={CODE}", "--no-wait", "--",
        f"{VENV}/python", "-m", "bittrader_workload.job", f"--candles={CANDLES}", f"--params={PARAMS}",
        "--no-ship-code", "--quiet", f"--results={job.results}", f"--summary={job.summary}",
    ]  # fmt: skip
    deadline = time.monotonic() + 120  # the job API can lag behind the nodes after a head restart
    while True:
        res = head.run(as_user(cmd, TOKEN_ENV))
        out = res.stdout + res.stderr
        if res.rc == 0 or "already exists" in out:
            return job
        assert time.monotonic() < deadline, f"ray job submit: {out[-2000:]}"
        time.sleep(3)


def progress(head: Any, job: Job) -> int:
    """Lines in the job's results file (evaluations written so far)."""
    res = head.run(f"wc -l < {shlex.quote(job.results)}")
    return int(res.stdout.strip() or 0) if res.rc == 0 else 0


def wait_running(head: Any, job: Job, timeout: float = 180) -> None:
    """Until the job's tasks are under way (its first evaluations written)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if progress(head, job) >= 2:
            return
        status = job_status(head, job.id)
        assert status in {"RUNNING", "PENDING"} or status.startswith("UNKNOWN"), f"job {job.id}: {status}"
        time.sleep(2)
    pytest.fail(f"job {job.id} wrote no evaluation in {timeout:.0f} s")


def job_logs(head: Any, job: Job, chars: int = 3000) -> str:
    """The end of the job's driver output (for failure messages)."""
    res = head.run(as_user([f"{VENV}/ray", "job", "logs", f"--address={JOB_API}", job.id], TOKEN_ENV))
    return str(res.stdout + res.stderr)[-chars:]


def read_summary(head: Any, job: Job) -> dict[str, Any]:
    summary = head.file(job.summary)
    return json.loads(summary.content_string) if summary.exists else {}


def wait_finished(head: Any, job: Job, timeout: float = JOB_TIMEOUT_S) -> str:
    """The job's final status (remembered in job.final once the job has ended)."""
    if job.final is not None:
        return job.final
    started = time.monotonic()
    status = job_status(head, job.id)
    while status in {"RUNNING", "PENDING"} and time.monotonic() - started < timeout:
        time.sleep(3)
        status = job_status(head, job.id)
    if status in {"SUCCEEDED", "FAILED", "STOPPED"}:
        job.final = status
    return status


# --------------------------------------------------------------------------------------------------
# The campaign: the jobs, the serial reference, the table
# --------------------------------------------------------------------------------------------------


@dataclass
class Campaign:
    head: Any
    stamp: str
    jobs: list[Job] = field(default_factory=list)
    current: Job | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    serial_pid: str = ""
    started: float = field(default_factory=time.monotonic)

    def job_for_fault(self, fault: str) -> Job:
        """The running job, or a new one when it has fewer than MIN_LEFT evaluations to go."""
        job = self.current
        if job is not None and not (
            job_status(self.head, job.id) == "RUNNING" and progress(self.head, job) <= PARAMS - MIN_LEFT
        ):
            wait_finished(self.head, job)
            job = None
        if job is None:
            job = submit(self.head, f"faults-{self.stamp}-{len(self.jobs) + 1}")
            self.jobs.append(job)
            self.current = job
            wait_running(self.head, job)
        job.faults.append(fault)
        return job

    def record(self, fault: str, job: Job, fault_s: float, recovery_s: float, **extra: Any) -> None:
        row = {"fault": fault, "job": job.id, "fault_s": round(fault_s, 1), "recovery_s": round(recovery_s, 1)}
        row.update(extra)
        self.rows.append(row)
        print(f"\n{fault}: fault {fault_s:.1f} s, all nodes alive with their CPUs {recovery_s:.1f} s after its end")


@pytest.fixture(scope="module")
def campaign(host: Any) -> Iterator[Campaign]:
    root(host, f"rm -rf {JOBS} && mkdir -p {CODE}")
    subprocess.run(["podman", "cp", str(REPO / "workload") + "/.", f"{HEAD}:{CODE}"], check=True)
    root(host, f"chown -R {USER} {HEAD_BASE}/jobs")
    wait_for_all_alive(host, timeout=RECOVERY_TIMEOUT_S)
    camp = Campaign(head=host, stamp=time.strftime("%H%M%S"))
    # The serial reference: the same parameter sets in one process on the head, with the same code and
    # the same numpy as the workers, at the lowest priority so it takes only the CPU the cluster leaves.
    serial = as_user(
        [
            f"{VENV}/python", "-m", "bittrader_workload.job", "--mode=serial", f"--candles={CANDLES}",
            f"--params={PARAMS}", "--quiet", f"--results={JOBS}/serial.jsonl", f"--summary={JOBS}/serial.json",
        ],
        {"PYTHONPATH": CODE},
    )  # fmt: skip
    camp.serial_pid = root(host, f"setsid nice -n 19 {serial} > {JOBS}/serial.log 2>&1 < /dev/null & echo $!").strip()
    yield camp
    # Stop whatever of ours still runs (a failed test leaves its job), never anything else.
    if camp.current is not None and job_status(host, camp.current.id) in {"RUNNING", "PENDING"}:
        host.run(
            as_user([f"{VENV}/ray", "job", "stop", f"--address={JOB_API}", camp.current.id], TOKEN_ENV)
        )
    if camp.serial_pid.isdigit():
        host.run(f"kill -TERM -- -{camp.serial_pid} 2>/dev/null || true")


def recover(head: Any, replaced: dict[str, str] | None = None) -> float:
    """Seconds until all nodes are alive with their CPUs; replaced: {host: its Ray node's id before a
    fault that ends that node}, which must be dead and replaced by a new node."""
    return wait_for_all_alive(head, timeout=RECOVERY_TIMEOUT_S, replaced=replaced)


def others_alive(head: Any) -> bool:
    """The head and worker2 alive with their CPUs (worker1 may be anything)."""
    alive = alive_ips(probe_cluster(head, tasks=False, timeout=20))
    return all(alive.get(IPS[name]) == CPUS[name] for name in IPS if name != WORKER)


# --------------------------------------------------------------------------------------------------
# The faults, in order
# --------------------------------------------------------------------------------------------------


def test_1_log_folder_unwritable_and_disk_full(campaign: Campaign) -> None:
    """worker.log on a full disk (/dev/full: ENOSPC at every write), worker_error.log and the folder
    not writable by the service user, and the service (re)starting in that state, as at a boot."""
    head, worker = campaign.head, worker_host()
    job = campaign.job_for_fault("log folder unwritable + disk full (service restart)")
    before = root(worker, f"stat -c '%a %U:%G' {LOGS} {LOGS}/worker_error.log").split("\n")
    (dir_mode, dir_owner), (err_mode, err_owner) = (line.split() for line in before[:2])
    since = root(worker, "date +%s").strip()
    old_id = node_id_of(head, WORKER)
    root(
        worker,
        f"cd {LOGS} && mv worker.log worker.log.faults && ln -s /dev/full worker.log"
        " && chown root:root . worker_error.log && chmod 0755 . && chmod 0644 worker_error.log",
    )
    try:
        t0 = time.monotonic()
        root(worker, f"systemctl restart {UNIT}")
        fault_s = time.monotonic() - t0
        others = others_alive(head)
        recovery_s = recover(head, {WORKER: old_id})
        assert root(worker, f"systemctl is-active {UNIT}").strip() == "active"
        journal = root(worker, f"journalctl -u {UNIT} --since @{since} --no-pager -o cat")
        full = f"ERROR: cannot write the log file {LOGS}/worker.log: [Errno 28] No space left on device"
        denied = f"ERROR: cannot write the log file {LOGS}/worker_error.log: [Errno 13] Permission denied"
        print("the service's errors:\n  " + "\n  ".join(line for line in journal.splitlines() if "ERROR" in line))
        assert full in journal, journal[-3000:]
        assert denied in journal, journal[-3000:]
        assert journal.count(full) == 1, "reported once per supervisor start, not once per line"
        assert others, "the head or worker2 was not alive while worker1 restarted with broken logs"
    finally:
        root(
            worker,
            f"cd {LOGS} && rm -f worker.log && mv worker.log.faults worker.log"
            f" && chown {dir_owner} . && chmod {dir_mode} . && chown {err_owner} worker_error.log"
            f" && chmod {err_mode} worker_error.log",
        )
    campaign.record("5. log folder unwritable + disk full", job, fault_s, recovery_s)


def test_2_sigkill_of_the_workers_ray_processes(campaign: Campaign) -> None:
    """Every process of the service user but the supervisor itself, killed with SIGKILL; the
    supervisor, whose log files were restored after test 1, must write to them again by itself."""
    head, worker = campaign.head, worker_host()
    job = campaign.job_for_fault("SIGKILL of the worker's Ray processes")
    since = root(worker, "date +%s").strip()
    old_id = node_id_of(head, WORKER)
    t0 = time.monotonic()
    killed = root(
        worker,
        f"main=$(systemctl show -p MainPID --value {UNIT}); n=0; for p in $(pgrep -u {USER}); do"
        ' [ "$p" = "$main" ] || { kill -9 "$p" 2>/dev/null && n=$((n+1)); }; done; echo $n',
    ).strip()
    fault_s = time.monotonic() - t0
    recovery_s = recover(head, {WORKER: old_id})
    print(f"{killed} processes killed")
    assert int(killed) >= 2
    journal = root(worker, f"journalctl -u {UNIT} --since @{since} --no-pager -o cat")
    assert "ray exited with code -9" in journal, root(worker, f"journalctl -u {UNIT} -n 80 --no-pager -o cat")
    # The supervisor that started with broken logs (test 1) logs this exit to worker.log again.
    log = root(worker, f"tail -n 200 {LOGS}/worker.log")
    assert "ray exited with code -9" in log, "worker.log stayed unwritten after the log folder was restored"
    campaign.record("1. SIGKILL of the worker's Ray processes", job, fault_s, recovery_s, killed=int(killed))


def test_3_worker_host_restart(campaign: Campaign) -> None:
    head = campaign.head
    job = campaign.job_for_fault("worker host restart")
    before = network_of(WORKER)
    old_id = node_id_of(head, WORKER)
    t0 = time.monotonic()
    podman("restart", WORKER)
    fault_s = time.monotonic() - t0
    recovery_s = recover(head, {WORKER: old_id})
    assert network_of(WORKER) == before and before[1] == IPS[WORKER]  # same address, same MAC
    campaign.record("2. worker host restarted (podman restart)", job, fault_s, recovery_s)


# Ray's GCS marks a node dead once its health checks have failed for a while: the 30 s cut stays
# under that (the worker is still alive in the head's view 15 s into it), the long cut lasts well
# beyond it (the head's view is polled from DEAD_POLL_FROM_S on: it shows when the worker died, and
# the margin left). Measured on the 2-core machine, loaded: first seen dead 48 s and 66 s into the cut.
LONG_CUT_S = 90
DEAD_POLL_FROM_S = 20


def worker_alive_in_heads_view(head: Any) -> bool:
    return IPS[WORKER] in alive_ips(probe_cluster(head, tasks=False, timeout=20))


def cut_network(campaign: Campaign, seconds: int) -> None:
    head = campaign.head
    job = campaign.job_for_fault(f"network cut {seconds} s")
    network, ip, mac = network_of(WORKER)
    assert ip == IPS[WORKER]
    dead_after: float | None = None
    t0 = time.monotonic()
    podman("network", "disconnect", network, WORKER)
    try:
        if seconds >= 60:
            # Poll the head's view until it marks the worker dead, while the cut lasts.
            time.sleep(DEAD_POLL_FROM_S)
            while dead_after is None and time.monotonic() - t0 < seconds - 10:
                if not worker_alive_in_heads_view(head):
                    dead_after = time.monotonic() - t0
                else:
                    time.sleep(3)
        # Probe near the end of the cut (the probe takes a few seconds), then wait out the rest.
        time.sleep(max(0.0, seconds - 15 - (time.monotonic() - t0)))
        dead = not worker_alive_in_heads_view(head)
        if dead and dead_after is None and seconds >= 60:
            dead_after = time.monotonic() - t0
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    finally:
        # A real link comes back with its address (a Tailscale IP is stable) and its NIC's MAC:
        # reconnect with both. A new MAC would leave worker2's ARP entry stale for about 8 s.
        podman("network", "connect", "--ip", ip, "--mac-address", mac, network, WORKER)
    fault_s = time.monotonic() - t0
    recovery_s = recover(head)
    assert network_of(WORKER) == (network, IPS[WORKER], mac)
    seen = f" (first seen dead {dead_after:.0f} s into the cut)" if dead_after is not None else ""
    print(f"worker1 {'dead' if dead else 'still alive'} in the head's view near the end of the cut{seen}")
    if seconds >= 60:
        assert dead_after is not None, f"a {seconds} s cut did not mark the worker dead: the fault did not happen"
        assert dead, "the worker was alive again in the head's view before the cut ended"
    extra = {"marked_dead": dead} | ({"dead_after_s": round(dead_after, 1)} if dead_after is not None else {})
    campaign.record(f"4. network cut {seconds} s", job, fault_s, recovery_s, **extra)


def test_4_network_cut_30s(campaign: Campaign) -> None:
    cut_network(campaign, 30)


def test_5_network_cut_long(campaign: Campaign) -> None:
    cut_network(campaign, LONG_CUT_S)


def test_6_head_restart_and_resume(campaign: Campaign) -> None:
    """The head's restart ends the driver; the re-run on the same results file keeps what was written
    and computes only the rest."""
    head = campaign.head
    for earlier in campaign.jobs:  # their records go with the head's restart: note how they ended
        wait_finished(head, earlier)
    campaign.current = None
    job = campaign.job_for_fault("head service restart")
    deadline = time.monotonic() + 180
    while progress(head, job) < 10:
        assert time.monotonic() < deadline, f"job {job.id}: fewer than 10 evaluations in 180 s"
        time.sleep(1)
    t0 = time.monotonic()
    root(head, "systemctl restart bittrader-ray-head")
    fault_s = time.monotonic() - t0
    recovery_s = recover(head)
    kept = int(head_python(head, COUNT, job.results))
    time.sleep(3)
    assert int(head_python(head, COUNT, job.results)) == kept, "the first run's driver still writes"
    assert 0 < kept < PARAMS, f"{kept} evaluations before the restart: the job was not cut"
    rerun = submit(head, f"{job.id}-resume", results=job.results)
    rerun.resumed_from = kept
    rerun.faults.append("re-run after the head's restart")
    campaign.jobs.append(rerun)
    campaign.current = rerun
    t1 = time.monotonic()
    status = wait_finished(head, rerun)
    rerun_s = time.monotonic() - t1
    summary = read_summary(head, rerun)
    brief = {k: v for k, v in summary.items() if k.startswith("evaluations") or k in {"status", "failures"}}
    assert status == "SUCCEEDED", f"re-run {status}: {brief}\n{job_logs(head, rerun)}"
    print(
        f"head restart: {kept} evaluations kept from the first run; the re-run skipped "
        f"{summary['evaluations_skipped']} and ran {summary['evaluations_run']}"
    )
    assert summary["evaluations_skipped"] == kept
    assert summary["evaluations_run"] == PARAMS - kept
    assert summary["evaluations_done"] == PARAMS
    campaign.record(
        "3. head service restarted (job re-run)", rerun, fault_s, recovery_s, kept=kept, rerun_s=round(rerun_s, 1)
    )


def test_7_every_job_complete_and_equal_to_the_serial_run(campaign: Campaign) -> None:
    head = campaign.head
    started = time.monotonic()
    while not head.file(f"{JOBS}/serial.json").exists:
        assert time.monotonic() - started < JOB_TIMEOUT_S, head.run(f"tail -5 {JOBS}/serial.log").stdout
        time.sleep(3)
    serial = json.loads(head.file(f"{JOBS}/serial.json").content_string)
    assert serial["status"] == "complete" and serial["evaluations_done"] == PARAMS
    problems = []
    for job in campaign.jobs:
        if job.resumed_from is None and any(
            j.resumed_from is not None and j.results == job.results for j in campaign.jobs
        ):
            continue  # the head restart's first run: its results are checked through the re-run's file
        status = wait_finished(head, job)
        job.summary_data = read_summary(head, job)
        job.comparison = json.loads(head_python(head, COMPARE, f"{JOBS}/serial.jsonl", job.results))
        s = job.summary_data
        if not (
            status == "SUCCEEDED"
            and s.get("status") == "complete"
            and s.get("evaluations_done") == s.get("evaluations_expected") == PARAMS
            and s.get("evaluations_failed") == 0
            and job.comparison["ok"]
            and not job.comparison["duplicates"]
        ):
            brief = {k: v for k, v in s.items() if k.startswith("evaluations") or k in {"status", "failures"}}
            problems.append(
                {"job": job.id, "status": status, "summary": brief, "comparison": job.comparison,
                 "log": job_logs(head, job, 1500)}
            )  # fmt: skip
    assert wait_for_all_alive(head, timeout=RECOVERY_TIMEOUT_S) >= 0

    by_id = {job.id: job for job in campaign.jobs}
    lines = [
        "",
        f"fault injection on {WORKER} (head for 3.), reference job {PARAMS} x {CANDLES} candles, "
        f"serial reference {serial['wall_s']:.1f} s",
        f"{'fault':<42} {'fault s':>8} {'recovery s':>11} {'evaluations':>12} {'failed':>7}  equal to serial  job",
    ]
    for row in sorted(campaign.rows, key=lambda r: r["fault"]):
        job = by_id[row["job"]]
        s = job.summary_data
        row.update(
            evaluations_done=s.get("evaluations_done"),
            evaluations_expected=s.get("evaluations_expected"),
            evaluations_failed=s.get("evaluations_failed"),
            equal_to_serial=bool(job.comparison.get("ok")) and not job.comparison.get("duplicates"),
            job_faults=job.faults,
        )
        lines.append(
            f"{row['fault']:<42} {row['fault_s']:>8.1f} {row['recovery_s']:>11.1f} "
            f"{s.get('evaluations_done')!s:>5}/{s.get('evaluations_expected')!s:<6} {s.get('evaluations_failed')!s:>7}"
            f"  {'yes' if row['equal_to_serial'] else 'NO':<15}  {job.id}"
        )
    lines.append(f"whole suite {time.monotonic() - campaign.started:.0f} s")
    print("\n".join(lines))
    report = {
        "schema": "bittrader-faults/1",
        "worker": WORKER,
        "params": PARAMS,
        "candles": CANDLES,
        "suite_s": round(time.monotonic() - campaign.started, 1),
        "serial_wall_s": serial["wall_s"],
        "faults": campaign.rows,
        "jobs": [
            {"id": j.id, "faults": j.faults, "resumed_from": j.resumed_from, "summary": j.summary_data,
             "comparison": j.comparison} for j in campaign.jobs
        ],
    }  # fmt: skip
    try:
        out = REPO / "results"
        out.mkdir(exist_ok=True)
        (out / "faults.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"written: {out / 'faults.json'}")
    except OSError as exc:
        print(f"results/faults.json not written: {exc}")
    assert not problems, json.dumps(problems, indent=1)[:6000]
    assert len(campaign.rows) == 6, [r["fault"] for r in campaign.rows]
