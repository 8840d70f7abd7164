"""The throttle's Ray calls (num_cpus_file, live resize, drain) and daemon loop with fakes; one measured
run of the real daemon process (RSS, reaction time, CPU). The fakes are test_throttle_sources.py's."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
from agent_throttle import console_script
from test_throttle_sources import TOKEN, FakeRunner, bt, config, helper_out, ok

REPO = Path(__file__).resolve().parents[2]

# -- Ray: num_cpus_file, live resize, drain ---------------------------------------------------------


NODE = "5c126911d3b90eb0693db80ffa7958c1d8e396c376b31438711d0424"
HEAD = "12c55eb57fde05fd3a5cbcd1644c01a833ec6efd894f0f134afddf54"


def test_helper_script_compiles_and_its_argv(tmp_path):
    compile(bt.RAY_HELPER, "<helper>", "exec")
    sync = bt.RaySync(config(tmp_path), FakeRunner())
    argv = sync.helper_argv(2)
    assert argv[:3] == ["/home/bittrader/.bittrader_worker/venv/bin/python", "-c", bt.RAY_HELPER]
    assert json.loads(argv[3]) == {"address": "100.64.0.1:6379", "node_ip": "100.64.0.2", "resize": 2, "timeout": 20}
    assert "resize" not in json.loads(sync.helper_argv(None)[3])


def test_live_resize_converges_without_drain(tmp_path):
    cfg = config(tmp_path)
    runner = FakeRunner(helper_out([{"node_id": NODE, "is_head": False, "cpus": 8.0}], {"node_id": NODE, "cpus": 2.0}))
    sync = bt.RaySync(cfg, runner, clock=lambda: 100.0)
    assert sync.request(2, "input 1 s ago") == "num_cpus_file=2; Ray update queued"
    assert (tmp_path / "run" / "num_cpus").read_text() == "2\n"
    assert sync.due(100.0)
    assert sync.attempt() == f"ray: node {NODE[:12]} has 2 CPUs (live resize)"
    assert not sync.pending and len(runner.calls) == 1
    assert sync.attempt() == ""


def test_busy_node_is_drained_with_exact_argv(tmp_path):
    cfg = config(tmp_path, drain_deadline_s=900)
    nodes = [{"node_id": HEAD, "is_head": True, "cpus": 0.0}, {"node_id": NODE, "is_head": False, "cpus": 8.0}]
    runner = FakeRunner()
    runner.answers = [helper_out(nodes, {"node_id": NODE, "cpus": 6.0}), ok()]
    clock = SimpleNamespace(now=100.0)
    sync = bt.RaySync(cfg, runner, clock=lambda: clock.now)
    sync.request(2, "input 1 s ago")
    text = sync.attempt()
    assert (
        text == f"ray: node {NODE[:12]} has 6 CPUs; drain requested (deadline 900 s), it restarts with 2; retry in 15 s"
    )
    assert runner.calls[1][0] == [
        "/home/bittrader/.bittrader_worker/venv/bin/ray",
        "drain-node",
        "--address",
        "100.64.0.1:6379",
        "--node-id",
        NODE,
        "--reason",
        "DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message",
        "bittrader throttle: input 1 s ago",
        "--deadline-remaining-seconds",
        "900",
    ]
    assert sync.pending and sync.drained_node == NODE and not sync.due(110.0) and sync.due(115.0)


def test_drained_node_leaves_then_supervisor_restarts(tmp_path):
    ended = []
    runner = FakeRunner()
    nodes = [{"node_id": NODE, "is_head": False, "cpus": 8.0}]
    runner.answers = [
        helper_out(nodes, {"node_id": NODE, "cpus": 8.0}),  # busy: resize refused
        ok(),  # drain accepted
        helper_out(nodes),  # still draining
        helper_out([]),  # raylet gone
        helper_out([{"node_id": "ab" * 28, "is_head": False, "cpus": 2.0}], {"node_id": "ab" * 28, "cpus": 2.0}),
    ]
    clock = SimpleNamespace(now=0.0)
    sync = bt.RaySync(config(tmp_path), runner, clock=lambda: clock.now)
    sync.terminate_ray_start = lambda: ended.append(1) or [4242]
    sync.request(2, "owner back")
    assert "drain requested" in sync.attempt()
    assert "still draining" in sync.attempt()
    assert "resize" not in json.loads(runner.calls[2][0][3])  # no resize while waiting for the exit
    left = sync.attempt()
    assert left == (
        f"ray: drained node {NODE[:12]} has left; ended `ray start --block` (pid 4242) so its supervisor "
        "restarts Ray; retry in 15 s"
    )
    assert ended == [1]
    assert sync.attempt() == "ray: node abababababab has 2 CPUs (live resize)"
    assert not sync.pending


def test_drain_off_keeps_trying_resize(tmp_path):
    runner = FakeRunner(helper_out([{"node_id": NODE, "is_head": False, "cpus": 8.0}], {"node_id": NODE, "cpus": 5.0}))
    sync = bt.RaySync(config(tmp_path, drain=False), runner, clock=lambda: 0.0)
    sync.request(2, "x")
    assert sync.attempt() == f"ray: node {NODE[:12]} busy at 5 CPUs, wants 2; retry in 15 s"
    sync.next_try = 0.0
    assert sync.attempt().endswith("retry in 30 s")  # back-off
    assert all(call[0][1] == "-c" for call in runner.calls)  # never drained


def test_unreachable_gcs_and_no_node(tmp_path):
    sync = bt.RaySync(config(tmp_path), FakeRunner(helper_out([], error="RpcError: Timed out")), clock=lambda: 0.0)
    sync.request(8, "idle")
    assert sync.attempt() == "ray: cannot reach the GCS (RpcError: Timed out); retry in 15 s"
    sync = bt.RaySync(config(tmp_path), FakeRunner(bt.CommandResult(127, "", "python: not found")), clock=lambda: 0.0)
    sync.request(8, "idle")
    assert sync.attempt() == "ray: cannot reach the GCS (exit 127: python: not found); retry in 15 s"
    sync = bt.RaySync(config(tmp_path), FakeRunner(helper_out([{"node_id": HEAD, "is_head": True, "cpus": 0.0}])))
    sync.request(8, "idle")
    assert sync.attempt().startswith("ray: no worker node at 100.64.0.2 yet (its next start uses 8 CPUs)")


def test_without_resize_or_drain_only_the_file(tmp_path):
    runner = FakeRunner()
    sync = bt.RaySync(config(tmp_path, drain=False, live_resize=False), runner)
    assert sync.request(3, "x") == "num_cpus_file=3"
    assert not sync.pending and sync.attempt() == "" and runner.calls == []


def test_newer_request_during_an_attempt_is_not_lost(tmp_path):
    holder = {}

    def answer(argv):
        holder["sync"].request(8, "idle again")  # arrives while the GCS call runs
        return helper_out([{"node_id": NODE, "is_head": False, "cpus": 2.0}], {"node_id": NODE, "cpus": 2.0})

    sync = bt.RaySync(config(tmp_path), FakeRunner(answer), clock=lambda: 50.0)
    holder["sync"] = sync
    sync.request(2, "owner")
    sync.attempt()
    assert sync.pending and sync.desired == 8 and sync.due(50.0)


def test_token_is_passed_by_path_only(tmp_path):
    runner = FakeRunner()
    runner.answers = [
        helper_out([{"node_id": NODE, "is_head": False, "cpus": 8.0}], {"node_id": NODE, "cpus": 8.0}),
        ok(),
    ]
    sync = bt.RaySync(config(tmp_path), runner, clock=lambda: 0.0)
    sync.request(2, "owner")
    sync.attempt()
    assert len(runner.calls) == 2
    for argv, env in runner.calls:
        assert not any(TOKEN in a for a in argv)
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "auth_token")
        assert TOKEN not in "".join(env.values())


# -- the daemon loop with fakes ---------------------------------------------------------------------


class CountingSource:
    name = "fake"

    def __init__(self, value):
        self.value = value
        self.calls = 0

    def idle_seconds(self):
        self.calls += 1
        return self.value


class RecordingMechanism:
    name = "recording"

    def __init__(self):
        self.applied = []

    def apply(self, cpus):
        self.applied.append(cpus)
        return f"limit {cpus}"

    def release(self):
        self.applied.append("released")
        return "released"

    def refresh(self):
        return None


def make_daemon(tmp_path, source, **policy):
    cfg = config(tmp_path, **policy)
    clock = SimpleNamespace(now=1000.0)
    runner = FakeRunner(helper_out([{"node_id": NODE, "is_head": False, "cpus": 8.0}], {"node_id": NODE, "cpus": 2.0}))
    mech = RecordingMechanism()
    daemon = bt.Daemon(
        cfg,
        activity=source,
        mechanism=mech,
        ray_sync=bt.RaySync(cfg, runner, clock=lambda: clock.now),
        logger=bt.make_logger(cfg.paths, name=f"test.{tmp_path.name}"),
        clock=lambda: clock.now,
    )
    return daemon, clock, mech, runner


def test_daemon_applies_logs_and_writes_status(tmp_path):
    source = CountingSource(1.0)
    daemon, _clock, mech, runner = make_daemon(tmp_path, source)
    decision = daemon.step()
    assert decision.changed and mech.applied == [2]
    assert (tmp_path / "run" / "num_cpus").read_text() == "2\n"
    status = json.loads((tmp_path / "run" / "throttle_status.json").read_text())
    assert {k: status[k] for k in ("state", "cpus", "reason", "pid", "os")} == {
        "state": "active",
        "cpus": 2,
        "reason": "input 1 s ago",
        "pid": os.getpid(),
        "os": "limit 2",
    }
    assert status["since"].endswith("Z") and status["updated"].endswith("Z")
    daemon.ray_step()
    assert "has 2 CPUs (live resize)" in json.loads((tmp_path / "run" / "throttle_status.json").read_text())["ray"]
    daemon.shutdown("test")
    assert mech.applied == [2, "released"]
    assert json.loads((tmp_path / "run" / "throttle_status.json").read_text())["state"] == "stopped"
    log = (tmp_path / "logs" / "throttle.log").read_text()
    assert "state=active cpus 8->2 reason=input 1 s ago | os: limit 2 | ray: num_cpus_file=2; Ray update queued" in log
    assert "stopped (test) | os: released" in log
    assert TOKEN not in log
    assert TOKEN not in (tmp_path / "run" / "throttle_status.json").read_text()
    assert all(TOKEN not in " ".join(argv) for argv, _ in runner.calls)


def test_daemon_asks_the_source_only_when_it_matters(tmp_path):
    source = CountingSource(10.0)  # in use: presence cannot end for 290 s
    daemon, clock, _, _ = make_daemon(tmp_path, source, idle_threshold_s=300)
    daemon.step()
    for _ in range(100):
        clock.now += 2
        daemon.step()
    assert source.calls == 1
    source.value = math.inf  # the owner left meanwhile
    clock.now += 100
    daemon.step()
    assert source.calls == 2  # 10 + 302 s > 300: asked again
    assert daemon.state.mode == bt.Mode.IDLE
    source.value = 0.5
    clock.now += 2
    daemon.step()
    assert source.calls == 3  # absent: asked at every poll, so the return is seen within poll_interval_s
    assert daemon.state.mode == bt.Mode.ACTIVE


def test_daemon_starts_from_num_cpus_file(tmp_path):
    (tmp_path / "run").mkdir(parents=True)
    (tmp_path / "run" / "num_cpus").write_text("2\n")
    daemon, _, _, _ = make_daemon(tmp_path, CountingSource(math.inf))
    decision = daemon.step()
    assert (decision.cpus_before, decision.cpus_after) == (2, 8)


# -- the real daemon process, measured --------------------------------------------------------------


def wait_for_status(path: Path, predicate, timeout: float) -> tuple[dict | None, float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            status = json.loads(path.read_text())
            if predicate(status):
                return status, time.monotonic() - start
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return None, time.monotonic() - start


def test_daemon_process_rss_reaction_and_clean_exit(tmp_path):
    activity = tmp_path / "activity"
    activity.write_text("idle")
    raw = {
        "version": 1,
        "platform": bt.current_platform(),
        "policy": {
            "cpus_active": 1,
            "cpus_idle": 2,
            "poll_interval_s": 2,
            "activity_source": "file",
            "activity_file": str(activity),
            "live_resize": False,
            "drain": False,
        },
        "mechanism": {"kind": "none"},
        "paths": {
            "log_file": str(tmp_path / "logs" / "throttle.log"),
            "status_file": str(tmp_path / "run" / "status.json"),
            "num_cpus_file": str(tmp_path / "run" / "num_cpus"),
        },
        "ray": {},
    }
    cfg_path = tmp_path / "throttle.json"
    cfg_path.write_text(bt.render_config(raw))
    script = console_script(tmp_path / "bittrader-throttle", "bittrader_node_agent.throttle.cli:main")
    status_path = tmp_path / "run" / "status.json"
    proc = subprocess.Popen([sys.executable, str(script), "--config", str(cfg_path)])
    try:
        status, _ = wait_for_status(status_path, lambda s: s["state"] == "idle", 15.0)
        assert status is not None and status["cpus"] == 2
        watched = psutil.Process(proc.pid)
        cpu0, t0 = watched.cpu_times(), time.monotonic()
        time.sleep(3.0)
        cpu1, t1 = watched.cpu_times(), time.monotonic()
        rss_mb = watched.memory_info().rss / 2**20
        cpu_pct = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0) * 100
        activity.write_text("active")
        status, reaction = wait_for_status(status_path, lambda s: s["state"] == "active", 10.0)
        assert status is not None and status["cpus"] == 1
        print(
            f"\nthrottle daemon: RSS {rss_mb:.1f} MB, CPU {cpu_pct:.2f}% of a core while watching, "
            f"reacted to activity in {reaction:.2f} s (poll 2 s)"
        )
        assert rss_mb < 40
        assert reaction < 5
        assert cpu_pct < 1
        assert (tmp_path / "run" / "num_cpus").read_text() == "1\n"
        once = subprocess.run(
            [sys.executable, str(script), "--config", str(cfg_path), "--once"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert once.returncode == 0 and json.loads(once.stdout)["state"] == "active"
        shown = subprocess.run(
            [sys.executable, str(script), "--config", str(cfg_path), "--status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert json.loads(shown.stdout)["state"] == "active"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0
    assert json.loads(status_path.read_text())["state"] == "stopped"
    log = (tmp_path / "logs" / "throttle.log").read_text()
    assert "state=active cpus 2->1" in log and "stopped (signal)" in log


def test_bad_config_exits_78(tmp_path):
    cfg_path = tmp_path / "throttle.json"
    cfg_path.write_text(json.dumps({"version": 1, "platform": "linux", "policy": {"cpus_active": "two"}}))
    assert bt.main(["--config", str(cfg_path), "--check-config"]) == bt.EX_CONFIG


class FlakyMechanism(RecordingMechanism):
    def apply(self, cpus):
        self.applied.append(cpus)
        if len(self.applied) == 1:
            return "CPUQuota=200% on u.service: failed (exit 1: sudo: a password is required)"
        return f"limit {cpus}"


def test_failed_os_limit_is_retried(tmp_path):
    daemon, clock, _, _ = make_daemon(tmp_path, CountingSource(1.0))
    daemon.mechanism = mech = FlakyMechanism()
    daemon.step()
    assert "failed" in daemon.mechanism_result
    clock.now += 10
    daemon.step()
    assert mech.applied == [2]  # not before OS_RETRY_S
    clock.now += bt.OS_RETRY_S
    daemon.step()
    assert mech.applied == [2, 2] and daemon.mechanism_result == "limit 2"
    clock.now += bt.OS_RETRY_S
    daemon.step()
    assert mech.applied == [2, 2]  # worked: no more retries
    assert "os: retry: limit 2" in (tmp_path / "logs" / "throttle.log").read_text()


# -- CPU load of everything but Ray ------------------------------------------------------------------
