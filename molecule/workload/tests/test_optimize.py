"""The Ray Tune + Optuna search (workload/bittrader_workload/search.py, playbooks/optimize.yml) on the
live cluster, with nothing but the nodes' own venvs (ray[default,tune] and optuna from the role; no
runtime_env packages): a search submitted from the head is stopped halfway with `ray job stop`, then
optimize.yml runs the same search, which resumes it: every trial finishes once, on both workers, and
the admin machine gets the table and the plot. Small by design (60,000 candles, 24 trials; `ray job
stop` takes a few seconds, in which trials go on finishing: a stop after 4 of 16 landed after 13).
Leaves the cluster as it found it (the test's experiment and files removed)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HEAD,
    HEAD_BASE,
    JOB_API,
    REPO,
    TOKEN_ENV,
    USER,
    WORKERS,
    as_user,
    base_dir,
    job_status,
    run_playbook,
)

testinfra_hosts = [f"podman://{HEAD}"]
VENV = f"{HEAD_BASE}/venv/bin"
JOBS = f"{HEAD_BASE}/jobs/optimize-test"
CODE = f"{JOBS}/code"
STORAGE = f"{HEAD_BASE}/tune"  # playbooks/optimize.yml's fixed folder
NAME = f"molecule-{os.getpid()}"
LEDGER = f"{STORAGE}/{NAME}/bittrader-trials.jsonl"
# Trials of about a second (at 20,000 candles a trial took a fraction of one and the whole search could
# end before `ray job stop` reached it).
CANDLES, TRIALS, STOP_AFTER = 60000, 24, 3
TIME_LIMIT_S = float(os.environ.get("BITTRADER_TEST_OPTIMIZE_LIMIT_S", "240"))


def root(host: Any, cmd: str) -> str:
    res = host.run(cmd)
    assert res.rc == 0, f"{cmd}: {res.stdout[-500:]} {res.stderr[-1000:]}"
    return str(res.stdout)


def ledger(host: Any) -> list[dict[str, Any]]:
    res = host.run(f"cat {LEDGER}")
    if res.rc != 0:
        return []
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip().endswith("}")]


def ray_job(host: Any, verb: str, *args: str) -> Any:
    """`ray job VERB --address=... ARGS` on the head as the service user, with the token."""
    return host.run(as_user([f"{VENV}/ray", "job", verb, f"--address={JOB_API}", *args], TOKEN_ENV))


@pytest.fixture(scope="module")
def head(host: Any) -> Iterator[Any]:
    root(host, f"rm -rf {JOBS} {STORAGE}/{NAME} && mkdir -p {CODE}")
    subprocess.run(["podman", "cp", str(REPO / "workload") + "/.", f"{HEAD}:{CODE}"], check=True)
    root(host, f"chown -R {USER} {HEAD_BASE}/jobs")
    yield host
    host.run(f"rm -rf {JOBS} {STORAGE}/{NAME}")


def test_the_nodes_have_tune_and_optuna_without_runtime_env(head: Any) -> None:
    for name in [HEAD, *WORKERS]:
        node = head if name == HEAD else __import__("testinfra").get_host(f"podman://{name}")
        base = base_dir(name)
        res = node.run(as_user([f"{base}/venv/bin/python", "-c",
                                "import fsspec, pandas, pyarrow, tensorboardX, optuna, ray.tune.search.optuna; "
                                "print(optuna.__version__)"]))
        assert res.rc == 0 and res.stdout.strip() == "5.0.0", f"{name}: {res.stderr[-1500:]}"


def test_a_stopped_search_resumes_without_repeating_a_finished_trial(head: Any) -> None:
    started = time.monotonic()
    job = f"optimize-test-{os.getpid()}"
    # 1. The search as a Ray job (the job ships the code with --working-dir, not packages).
    res = ray_job(head, "submit", f"--submission-id={job}", f"--working-dir={CODE}", "--no-wait", "--",
                  f"{VENV}/python", "-m", "bittrader_workload.job", "--mode=search", f"--candles={CANDLES}",
                  f"--trials={TRIALS}", f"--storage={STORAGE}", f"--name={NAME}", "--no-ship-code")
    assert res.rc == 0, res.stdout[-1000:] + res.stderr[-1000:]
    # 2. Stopped halfway, once STOP_AFTER trials have finished.
    deadline = time.monotonic() + 150
    while len(ledger(head)) < STOP_AFTER:
        status = job_status(head, job)
        assert status in {"RUNNING", "PENDING"}, f"{job}: {status}\n{ray_job(head, 'logs', job).stdout[-3000:]}"
        assert time.monotonic() < deadline, f"fewer than {STOP_AFTER} trials in 150 s"
        time.sleep(0.5)
    res = ray_job(head, "stop", job)
    assert res.rc == 0, res.stderr[-1000:]
    deadline = time.monotonic() + 60
    while job_status(head, job) not in {"STOPPED", "FAILED", "SUCCEEDED"}:
        assert time.monotonic() < deadline, f"{job} did not stop"
        time.sleep(1)
    before = ledger(head)
    assert job_status(head, job) == "STOPPED", f"{len(before)} trials finished before the stop"
    assert STOP_AFTER <= len(before) < TRIALS, len(before)
    # 3. The playbook runs the same search: it resumes the experiment and finishes only the rest.
    with tempfile.TemporaryDirectory(prefix="bittrader-optimize-") as tmp:
        done, seconds = run_playbook(
            "playbooks/optimize.yml", "-e", f"optimize_candles={CANDLES}", "-e", f"optimize_trials={TRIALS}",
            "-e", f"optimize_name={NAME}", "-e", "optimize_expect_nodes=2", "-e", f"optimize_results_dir={tmp}")
        assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
        runs = list(Path(tmp).glob("optimize-*"))
        assert len(runs) == 1, runs
        out = runs[0]
        summary = json.loads((out / "search.json").read_text())
        png = (out / "search.png").read_bytes()
        table = (out / "search.txt").read_text()
        csv_lines = (out / "search.csv").read_text().splitlines()
        trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    after = ledger(head)
    print(f"\nstopped after {len(before)} finished trials; the resumed run finished {summary['trials_run']} "
          f"({summary['trials_replayed']} replayed) in {summary['wall_s']:.1f} s; playbook {seconds:.1f} s; "
          f"trials per node {summary['plot']['trials_per_node']}; whole test {time.monotonic() - started:.1f} s")
    ids = [r["trial_id"] for r in after]
    assert len(ids) == len(set(ids)) == TRIALS, "a finished trial ran again, or one is missing"
    assert ids[: len(before)] == [r["trial_id"] for r in before]
    assert summary["status"] == "complete" and summary["restored"] is True
    assert summary["trials_done"] == TRIALS and summary["trials_resumed"] == len(before)
    assert summary["trials_run"] == TRIALS - len(before) and summary["repeated"] == []
    assert summary["evaluations"] == TRIALS and len(summary["attempts"]) == 2
    # Trials on both workers (the head gives Ray no CPU), the table and the plot on the admin machine.
    hosts = {r["hostname"] for r in after}
    assert hosts == set(WORKERS), hosts
    assert set(summary["plot"]["trials_per_node"]) == set(WORKERS)
    assert summary["concurrency"] == 2
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(table.splitlines()) == TRIALS + 2 and len(csv_lines) == TRIALS + 1
    assert [t["trial_id"] for t in trials] == ids
    best = max(r["metrics"]["sharpe"] for r in after)
    assert summary["best"]["metrics"]["sharpe"] == best == summary["table"][-1]["best_sharpe"]
    # The run's files are gone from the head; the experiment stays for a later resume.
    assert not head.file(f"{HEAD_BASE}/jobs/optimize").exists
    assert head.file(f"{STORAGE}/{NAME}/tuner.pkl").exists
    assert time.monotonic() - started < TIME_LIMIT_S
