"""The reference job on the live cluster: the benchmark at its smoke size (report fields checked
against their definitions, results identical to the serial run, nothing left on the head), and the
three ways the strategy code reaches the workers (bittrader_code_mode): shipped with the job, a synced
folder named per host, a git checkout pinned to a commit. Playbooks run against the inventory in
MOLECULE_INVENTORY_FILE; the code settings come from a second inventory made here. Leaves the cluster
as it found it: working_dir mode, no .pth file, every node alive with its CPUs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CPUS,
    HEAD,
    HEAD_BASE,
    HOME,
    IPS,
    JOB_API,
    REPO,
    TOKEN_ENV,
    USER,
    WORKERS,
    as_user,
    base_dir,
    probe_cluster,
    ray_temp_dir,
    run_playbook,
)

testinfra_hosts = [f"podman://{HEAD}"]
VENV_PY = f"{HEAD_BASE}/venv/bin/python"
RAY_TMP = ray_temp_dir(HEAD)
# The smoke size must finish within 2 minutes (playbook included) on a quiet machine; a loaded
# developer machine may raise the limit.
SMOKE_LIMIT_S = float(os.environ.get("BITTRADER_TEST_SMOKE_LIMIT_S", "120"))

# Where the code lives in the code-mode test: the head and worker1 keep a "synced folder" (one with
# "~/", one absolute with a space, as Dropbox and Google Drive folders are), worker2 a git checkout.
FOLDER_HOSTS = {HEAD: ("~/Dropbox/strategies", f"{HOME}/Dropbox/strategies"),
                WORKERS[0]: ("/srv/Google Drive/strategies", "/srv/Google Drive/strategies")}
GIT_HOST = WORKERS[1]
GIT_REPO = "/srv/bittrader-strategy.git"
GIT_CHECKOUT = f"{base_dir(GIT_HOST)}/strategy"


playbook = run_playbook


def tail(res: subprocess.CompletedProcess[str]) -> str:
    return res.stdout[-5000:] + res.stderr[-2000:]


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True, timeout=120)


def node_shell(name: str, script: str) -> str:
    return podman("exec", name, "sh", "-c", script).stdout


def fingerprint(package_parent: Path) -> dict[str, Any]:
    """The job's code_fingerprint() of the bittrader_workload copy under package_parent, computed here."""
    code = "import json; from bittrader_workload.job import code_fingerprint; print(json.dumps(code_fingerprint()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(package_parent)})
    return dict(json.loads(out.stdout))


def head_files(head: Any) -> set[str]:
    """Every path in the service user's home and in /tmp, except the node's Ray session folder (the
    running cluster's logs and caches, which the benchmark does not own)."""
    res = head.run(f"find {HOME} /tmp -xdev -path {RAY_TMP} -prune -o -print")
    assert res.rc == 0, res.stderr
    return set(res.stdout.split())


# --------------------------------------------------------------------------------------------------
# The benchmark at its smoke size
# --------------------------------------------------------------------------------------------------


def test_smoke_benchmark_report_and_cleanup(host) -> None:  # type: ignore[no-untyped-def]
    before = head_files(host)
    ray_before = int(host.run(f"find {RAY_TMP} -xdev | wc -l").stdout.strip() or 0)
    with tempfile.TemporaryDirectory(prefix="bt-bench-") as out:
        res, took = playbook("playbooks/benchmark.yml", "-e", "bench_size=smoke", "-e", f"bench_results_dir={out}")
        assert res.returncode == 0, tail(res)
        runs = list(Path(out).glob("benchmark-*"))
        assert len(runs) == 1, runs
        run = runs[0]
        report = json.loads((run / "report.json").read_text())
        serial = json.loads(next(run.glob("*-serial.json")).read_text())
        cluster = json.loads(next(run.glob("*-cluster.json")).read_text())
        png = (run / "report.png").read_bytes()
        local = fingerprint(REPO / "workload")
    after = head_files(host)
    ray_after = int(host.run(f"find {RAY_TMP} -xdev | wc -l").stdout.strip() or 0)
    print(f"\nsmoke benchmark: playbook {took:.1f} s; serial {report['serial_wall_s']:.2f} s, cluster "
          f"{report['cluster_wall_s']:.2f} s, speedup {report['speedup']:.2f}x on {report['cpus_used']:g} CPUs, "
          f"efficiency {report['efficiency'] * 100:.0f} %, Ray overhead {report['ray_overhead_s']:.2f} s")
    for row in report["nodes"]:
        print(f"  {row['hostname']:<14} {row['tasks']:>3} tasks {row['busy_s']:7.2f} s busy")
    print(f"  head: {len(after - before)} new and {len(before - after)} removed paths in {HOME} and /tmp; "
          f"Ray's session folder grew by {ray_after - ray_before} entries (its logs, not checked)")

    assert took < SMOKE_LIMIT_S, f"the smoke benchmark took {took:.0f} s"
    # The size and the completeness of both runs.
    for summary, mode in ((serial, "serial"), (cluster, "cluster")):
        assert summary["mode"] == mode and summary["status"] == "complete"
        assert (summary["candles"], summary["params"]) == (20000, 12)
        assert summary["evaluations_done"] == summary["evaluations_expected"] == 12
    # The report's figures, from their definitions and the two summaries.
    assert report["serial_wall_s"] == serial["wall_s"] and report["cluster_wall_s"] == cluster["wall_s"]
    assert report["speedup"] == pytest.approx(serial["wall_s"] / cluster["wall_s"])
    workers_cpus = float(sum(CPUS[w] for w in WORKERS))
    assert report["cluster_cpus"] == cluster["cluster_cpus"] == workers_cpus
    assert report["cpus_used"] == min(workers_cpus, 12.0)
    assert report["efficiency"] == pytest.approx(report["speedup"] / report["cpus_used"])
    assert report["ray_overhead_s"] == pytest.approx(report["cluster_wall_s"] - report["busy_s"] / report["cpus_used"])
    assert report["comparable"] is True and report["warnings"] == []
    # Per node: every worker ran tasks, the head (0 CPUs) none; busy time is the tasks' durations.
    by_host = {row["hostname"]: row for row in report["nodes"]}
    assert set(by_host) == set(WORKERS), by_host
    assert sum(row["tasks"] for row in report["nodes"]) == 12
    for name in WORKERS:
        assert by_host[name]["tasks"] >= 1 and by_host[name]["busy_s"] > 0
    assert report["busy_s"] == pytest.approx(sum(row["busy_s"] for row in report["nodes"]))
    # Identical to the serial run, bit for bit.
    cmp = report["results_comparison"]
    assert cmp["ok"] is True and cmp["ids_a"] == cmp["ids_b"] == 12 and cmp["max_abs_diff"] == 0.0
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # The code each task ran: this repository's package, shipped with the job (Ray's working_dir).
    assert cluster["code"]["shipped_by_job"] is True
    for row in cluster["nodes"]:
        assert [c["sha256"] for c in row["code"]] == [local["sha256"]], row
        assert "/runtime_resources/" in row["code"][0]["path"], row
    assert serial["code"]["driver"]["sha256"] == local["sha256"]
    # Nothing of the benchmark is left on the head.
    assert after - before == set(), sorted(after - before)[:20]


# --------------------------------------------------------------------------------------------------
# The strategy code: synced folders and a pinned git checkout
# --------------------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def copy_workload(dest: Path, version: str) -> None:
    """The reference package with another __version__: the 'strategy' a node must import."""
    shutil.copytree(REPO / "workload" / "bittrader_workload", dest / "bittrader_workload",
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "bittrader_workload" / "__init__.py"
    text = init.read_text()
    assert '__version__ = "' in text
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', text))


class Strategy:
    """What the test put on the nodes, and what the nodes must report."""

    def __init__(self, work: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.folder_version = f"1.0.0+folder.{tag}"
        self.git_version = f"1.0.0+git.{tag}"
        self.folder = work / "folder"
        copy_workload(self.folder, self.folder_version)
        (self.folder / "VERSION").write_text(f"folder {tag}\n")
        repo = work / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        copy_workload(repo / "src", self.git_version)
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", "strategy")
        self.commit = git(repo, "rev-parse", "HEAD")
        (repo / "NEWER").write_text("a commit after the pinned one\n")  # main moves on; the pin must hold
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", "newer")
        self.bare = work / "bittrader-strategy.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(self.bare)], check=True)
        self.folder_print = fingerprint(self.folder)
        self.git_print = fingerprint(repo / "src")
        self.inventory = work / "code.yml"
        hosts: dict[str, Any] = {
            name: {"bittrader_code_mode": "folder", "bittrader_code_folder": setting}
            for name, (setting, _path) in FOLDER_HOSTS.items()
        }
        hosts[GIT_HOST] = {"bittrader_code_mode": "git", "bittrader_code_git_repo": GIT_REPO,
                           "bittrader_code_git_version": self.commit, "bittrader_code_subdir": "src"}
        self.inventory.write_text(json.dumps({"ray_cluster": {"hosts": hosts}}))


def pth_present(name: str) -> bool:
    pth = f"{base_dir(name)}/venv/lib/python3*/site-packages/bittrader_code.pth"
    out = node_shell(name, f"ls {pth} 2>/dev/null || true")
    return bool(out.strip())


@pytest.fixture(scope="module")
def strategy(host) -> Iterator[Strategy]:  # type: ignore[no-untyped-def]
    work = Path(tempfile.mkdtemp(prefix="bt-code-"))
    made = Strategy(work)
    for name, (_setting, path) in FOLDER_HOSTS.items():
        parent = str(Path(path).parent)
        node_shell(name, f"mkdir -p {shlex.quote(parent)}")
        podman("cp", str(made.folder), f"{name}:{path}")
        node_shell(name, f"chown -R {USER}: {shlex.quote(parent)}")
    podman("cp", str(made.bare), f"{GIT_HOST}:{GIT_REPO}")
    node_shell(GIT_HOST, f"chown -R {USER}: {GIT_REPO}")
    yield made
    # As found: working_dir mode through the role (the .pth files go), then the test's files.
    res, took = playbook("playbooks/code.yml")
    print(f"\ncode.yml back to working_dir: {took:.1f} s")
    for name, (_setting, path) in FOLDER_HOSTS.items():
        node_shell(name, f"rm -rf {shlex.quote(str(Path(path).parent))}")
    node_shell(GIT_HOST, f"rm -rf {GIT_REPO} {GIT_CHECKOUT}")
    shutil.rmtree(work, ignore_errors=True)
    assert res.returncode == 0, tail(res)
    assert not any(pth_present(name) for name in IPS), "a .pth file is left"
    data = probe_cluster(host, tasks=True)
    assert {n["task"]["code"]["mode"] for n in data["nodes"] if n["alive"]} == {"working_dir"}
    alive = {n["ip"]: n["cpus"] for n in data["nodes"] if n["alive"]}
    assert alive == {IPS[name]: float(CPUS[name]) for name in IPS}


def test_code_folders_and_pinned_checkout_reach_every_node(host, strategy: Strategy) -> None:  # type: ignore[no-untyped-def]
    res, took = playbook("playbooks/code.yml", extra_inventory=strategy.inventory)
    assert res.returncode == 0, tail(res)
    print(f"\ncode.yml (folders on {', '.join(FOLDER_HOSTS)}, git on {GIT_HOST}) with verify: {took:.1f} s")
    # git only where git mode is on.
    for name in IPS:
        has_git = node_shell(name, "command -v git || true").strip() != ""
        assert has_git is (name == GIT_HOST), name
    # The checkout is the pinned commit, not the branch's newer head, made by the service user.
    head_commit = node_shell(GIT_HOST, f"cat {GIT_CHECKOUT}/.git/HEAD").strip()
    assert head_commit == strategy.commit
    assert node_shell(GIT_HOST, f"stat -c %U {GIT_CHECKOUT}/src").strip() == USER
    # Verify's table shows what each node sees. Its rows are list items now, which the YAML callback folds
    # at about 80 characters: read the output with the folds undone.
    shown = " ".join(res.stdout.split())
    assert f"git {strategy.commit[:12]}" in shown
    assert shown.count("folder sha256 ") >= 2
    assert "sync client may not have caught up" not in shown
    # The probe, from the head, as verify runs it.
    data = probe_cluster(host, tasks=True)
    code = {n["ip"]: n["task"]["code"] for n in data["nodes"] if n["alive"]}
    for name, (_setting, path) in FOLDER_HOSTS.items():
        seen = code[IPS[name]]
        assert (seen["mode"], seen["path"], seen["exists"], seen["on_path"]) == ("folder", path, True, True), seen
        assert seen["label"].startswith("folder ")
    folder_prints = {code[IPS[name]]["sha256"] for name in FOLDER_HOSTS}
    assert len(folder_prints) == 1
    seen = code[IPS[GIT_HOST]]
    assert (seen["mode"], seen["commit"], seen["on_path"]) == ("git", strategy.commit, True), seen
    assert seen["path"] == f"{GIT_CHECKOUT}/src"
    for name in IPS:
        print(f"  {name:<12} {code[IPS[name]]['mode']:<7} {code[IPS[name]]['version']}")


def test_a_job_without_shipped_code_runs_each_nodes_own_code(host, strategy: Strategy) -> None:  # type: ignore[no-untyped-def]
    run = f"{HEAD_BASE}/jobs/nodecode-{uuid.uuid4().hex[:6]}"
    assert host.run(as_user(["mkdir", "-p", run])).rc == 0
    submit = [f"{HEAD_BASE}/venv/bin/ray", "job", "submit", f"--address={JOB_API}",
              "--", VENV_PY, "-m", "bittrader_workload.job", "--no-ship-code", "--candles=5000", "--params=8",
              f"--results={run}/r.jsonl", f"--summary={run}/s.json", "--expect-nodes=2", "--quiet"]
    started = time.monotonic()
    res = host.run(as_user(["timeout", "300", *submit], TOKEN_ENV))
    took = time.monotonic() - started
    try:
        assert res.rc == 0, res.stdout[-3000:] + res.stderr[-2000:]
        summary = json.loads(host.file(f"{run}/s.json").content_string)
        records = [json.loads(line) for line in host.file(f"{run}/r.jsonl").content_string.splitlines() if line]
    finally:
        host.run(as_user(["rm", "-rf", run]))
        host.run(as_user(["rmdir", "--ignore-fail-on-non-empty", f"{HEAD_BASE}/jobs"]))
    print(f"\njob without shipped code: {took:.1f} s, {len(records)} evaluations")
    assert summary["status"] == "complete" and summary["code"]["shipped_by_job"] is False
    assert summary["pinned_to_nodes"] == 2  # --expect-nodes: one of the 8 short tasks given to each worker
    driver = summary["code"]["driver"]
    assert driver["path"] == f"{FOLDER_HOSTS[HEAD][1]}/bittrader_workload"
    assert (driver["version"], driver["sha256"]) == (strategy.folder_version, strategy.folder_print["sha256"])
    expected = {
        WORKERS[0]: (f"{FOLDER_HOSTS[WORKERS[0]][1]}/bittrader_workload", strategy.folder_version,
                     strategy.folder_print["sha256"]),
        GIT_HOST: (f"{GIT_CHECKOUT}/src/bittrader_workload", strategy.git_version, strategy.git_print["sha256"]),
    }
    ran = {r["hostname"] for r in records}
    assert ran == set(WORKERS), ran
    for rec in records:
        assert (rec["code"]["path"], rec["code"]["version"], rec["code"]["sha256"]) == expected[rec["hostname"]]
    for name in WORKERS:
        print(f"  {name:<12} {sum(r['hostname'] == name for r in records)} tasks ran "
              f"{expected[name][1]} from {expected[name][0]}")
