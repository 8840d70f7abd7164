"""The throttle on mol-worker2: a job of many short tasks runs while the (simulated) owner becomes
active and idle again; Ray's CPUs on that node follow, and the job loses nothing."""

from __future__ import annotations

import json
import subprocess
import time

import testinfra
from conftest import HEAD, IPS, JOB_API, REPO, WORKERS, as_user, base_dir, job_status, probe_cluster

testinfra_hosts = [f"podman://{HEAD}"]
WORKER = WORKERS[1]
ACTIVITY = f"{base_dir(WORKER)}/run/activity"


def worker_cpus(head) -> float | None:  # type: ignore[no-untyped-def]
    nodes = probe_cluster(head, tasks=False, timeout=20)["nodes"]
    alive = [n for n in nodes if n["alive"] and n["ip"] == IPS[WORKER]]
    return alive[0]["cpus"] if alive else None


def set_activity(state: str) -> None:
    worker = testinfra.get_host(f"podman://{WORKER}")
    res = worker.run(as_user(["sh", "-c", f"echo {state} > {ACTIVITY}"]))
    assert res.rc == 0, res.stderr


def wait_cpus(head, want: float, timeout: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < timeout:
        seen = worker_cpus(head)
        if seen == want:
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"{WORKER} has {seen} CPUs after {timeout:.0f} s, expected {want}")



def test_cpus_follow_activity_while_a_job_runs_and_nothing_is_lost(host) -> None:  # type: ignore[no-untyped-def]
    base = base_dir(HEAD)
    code = f"{base}/jobs/throttle/code"
    host.run(f"mkdir -p {code} && chown -R bittrader {base}/jobs")
    subprocess.run(["podman", "cp", str(REPO / "workload") + "/.", f"{HEAD}:{code}"], check=True)
    host.run(f"chown -R bittrader {base}/jobs")
    set_activity("idle")
    try:
        run_job_while_the_owner_comes_and_goes(host, base, code)
    finally:
        # As found: the daemon's start state (an owner at the machine: 1 CPU), which the later
        # suites expect (conftest.CPUS).
        set_activity("active")
        wait_cpus(host, 1.0, 120)
        testinfra.get_host(f"podman://{WORKER}").run(f"rm -f {ACTIVITY}")


def run_job_while_the_owner_comes_and_goes(host, base: str, code: str) -> None:  # type: ignore[no-untyped-def]
    reactions = {"start->idle": wait_cpus(host, 2.0, 60)}

    job = f"throttle-{int(time.time())}"
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{base}/auth_token"}
    submit = host.run(
        as_user(
            [
                f"{base}/venv/bin/ray",
                "job",
                "submit",
                f"--address={JOB_API}",
                f"--submission-id={job}",
                f"--working-dir={code}",
                "--no-wait",
                "--",
                f"{base}/venv/bin/python",
                "-m",
                "bittrader_workload.job",
                "--candles=40000",
                "--params=240",
                "--no-ship-code",
                "--quiet",
                f"--results={base}/jobs/throttle/{job}.jsonl",
                f"--summary={base}/jobs/throttle/{job}.json",
            ],
            env,
        )
    )
    assert submit.rc == 0, submit.stderr
    # Until the job runs (at most the 8 s this once slept for), then it must be running or pending.
    started = time.monotonic()
    while job_status(host, job) != "RUNNING" and time.monotonic() - started < 8:
        time.sleep(1)
    assert job_status(host, job) in {"RUNNING", "PENDING"}

    set_activity("active")
    reactions["idle->active"] = wait_cpus(host, 1.0, 90)
    set_activity("idle")
    reactions["active->idle"] = wait_cpus(host, 2.0, 90)
    set_activity("active")
    reactions["idle->active (2)"] = wait_cpus(host, 1.0, 90)
    set_activity("idle")
    reactions["active->idle (2)"] = wait_cpus(host, 2.0, 90)
    print(
        "throttle reaction times (s, until ray.nodes() showed the new CPUs): "
        + ", ".join(f"{k} {v:.1f}" for k, v in reactions.items())
    )

    deadline = time.monotonic() + 600
    status = job_status(host, job)
    while status in {"RUNNING", "PENDING"} and time.monotonic() < deadline:
        time.sleep(3)
        status = job_status(host, job)
    assert status == "SUCCEEDED", status
    summary = json.loads(host.file(f"{base}/jobs/throttle/{job}.json").content_string)
    print(
        f"job: {summary['evaluations_done']}/{summary['evaluations_expected']} evaluations, "
        f"{summary['evaluations_failed']} failed, {summary['wall_s']:.1f} s, nodes {summary['nodes']}"
    )
    assert summary["evaluations_done"] == summary["evaluations_expected"] == 240
    assert summary["evaluations_failed"] == 0
    assert summary["status"] == "complete"

    worker = testinfra.get_host(f"podman://{WORKER}")
    log = worker.file(f"{base_dir(WORKER)}/logs/throttle.log").content_string
    assert log.count("\n") >= 4
    status_line = json.loads(worker.file(f"{base_dir(WORKER)}/run/throttle_status.json").content_string)
    assert status_line["state"] in {"IDLE", "idle"}
