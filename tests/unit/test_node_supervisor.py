"""The node supervisor (node_agent/src/bittrader_node_agent/supervisor.py) with a stand-in `ray` command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ansible_render import node_config
from bittrader_node_agent import supervisor as node

REPO = Path(__file__).resolve().parents[2]
AGENT_ENV = {**os.environ, "PYTHONPATH": str(REPO / "node_agent" / "src")}

FAKE_RAY = """#!/bin/sh
# Stand-in for the venv's ray: records its arguments, then behaves as FAKE_MODE says.
echo "$@" >> "$FAKE_CALLS"
[ -n "$FAKE_ENV" ] && env > "$FAKE_ENV"
[ "$1" = stop ] && exit 0
echo "Ray runtime started."
echo "a warning" >&2
case "$FAKE_MODE" in
  exit3) exit 3 ;;
  raylet) ln -sf "$(command -v sleep)" "$FAKE_DIR/raylet"
          "$FAKE_DIR/raylet" 300 & echo $! > "$FAKE_DIR/raylet.pid"; wait ;;
  block) exec sleep 300 ;;
  hang) ln -sf "$(command -v sleep)" "$FAKE_DIR/raylet"
        "$FAKE_DIR/raylet" 300 & echo $! > "$FAKE_DIR/raylet.pid"
        trap '' TERM; while :; do sleep 1; done ;;
esac
"""


def make_config(tmp_path: Path, mode: str, **extra: Any) -> dict[str, Any]:
    ray = tmp_path / "venv" / "bin" / "ray"
    ray.parent.mkdir(parents=True)
    ray.write_text(FAKE_RAY)
    ray.chmod(0o755)
    token = tmp_path / "auth_token"
    token.write_text("f" * 64)
    token.chmod(0o600)
    config = {
        "role": "worker",
        "node": "w1",
        "ray": str(ray),
        "start_args": ["start", "--block", "--address=10.0.0.10:6379"],
        "num_cpus": 4,
        "num_cpus_file": str(tmp_path / "run" / "num_cpus"),
        "env": {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "FAKE_MODE": mode,
            "FAKE_CALLS": str(tmp_path / "calls"),
            "FAKE_DIR": str(tmp_path),
        },
        "log_file": str(tmp_path / "logs" / "worker.log"),
        "error_log_file": str(tmp_path / "logs" / "worker_error.log"),
        "state_file": str(tmp_path / "supervisor.json"),
        "temp_dir": str(tmp_path / "ray"),
        "restart_delay_s": 1,
        "restart_max_delay_s": 8,
    }
    config.update(extra)
    (tmp_path / "run").mkdir(exist_ok=True)
    return config


def test_start_command_takes_the_throttles_cpu_count(tmp_path: Path) -> None:
    config = make_config(tmp_path, "exit3")
    assert node.start_command(config)[-2:] == [f"--temp-dir={tmp_path / 'ray'}", "--num-cpus=4"]
    Path(config["num_cpus_file"]).write_text("2\n")
    assert node.start_command(config)[-1] == "--num-cpus=2"
    Path(config["num_cpus_file"]).write_text("garbage")
    assert node.start_command(config)[-1] == "--num-cpus=4"
    config["num_cpus"] = None
    Path(config["num_cpus_file"]).unlink()
    assert not any(a.startswith("--num-cpus") for a in node.start_command(config))


def test_backoff_grows_with_quick_failures_and_resets() -> None:
    assert node.backoff_delay({}, 5, 60) == 0
    state: dict[str, Any] = {}
    delays = []
    for _ in range(6):
        state = node.record_exit(state, 100.0, 101.0, 1)
        delays.append(node.backoff_delay(state, 5, 60))
    assert delays == [5, 10, 20, 40, 60, 60]
    state = node.record_exit(state, 100.0, 100.0 + node.QUICK_FAILURE_S + 1, 1)
    assert node.backoff_delay(state, 5, 60) == 0


def test_run_once_logs_both_streams_and_restarts_after_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(tmp_path, "exit3")
    assert node.run_once(config) == 3
    calls = (tmp_path / "calls").read_text().splitlines()
    # Never `ray stop`: it ends every Ray of the account (the owner's own, on a Mac or a PC).
    assert calls == [f"start --block --address=10.0.0.10:6379 --temp-dir={tmp_path / 'ray'} --num-cpus=4"]
    assert "Ray runtime started." in Path(config["log_file"]).read_text()
    assert "a warning" in Path(config["error_log_file"]).read_text()
    state = json.loads(Path(config["state_file"]).read_text())
    assert state["last_exit_code"] == 3 and state["quick_failures"] == 1
    out = capsys.readouterr()
    assert "Ray runtime started." in out.out and "a warning" in out.err
    assert "f" * 64 not in out.out + out.err + Path(config["log_file"]).read_text()


def test_ray_start_gets_node_jsons_environment(tmp_path: Path) -> None:
    """The settings of Ray's background work (tests/unit/test_ray_env.py renders them into node.json on every
    kind of node) reach `ray start`, and with it every process of the node."""
    config = make_config(tmp_path, "exit3")
    lean = {k: v for k, v in node_config("Linux")["env"].items() if k not in config["env"]}
    assert {"RAY_enable_metrics_collection", "REPORTER_UPDATE_INTERVAL_MS", "LOG_NAME_UPDATE_INTERVAL_S"} <= set(lean)
    config["env"].update(lean, FAKE_ENV=str(tmp_path / "env"))
    assert node.run_once(config) == 3
    seen = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    assert {k: seen.get(k) for k in lean} == lean
    assert seen[node.NODE_ENV] == node.node_marker(config)


def test_a_missing_token_is_a_clear_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path, "exit3")
    Path(config["env"]["RAY_AUTH_TOKEN_PATH"]).unlink()
    assert node.run_once(config) == node.EX_CONFIG
    assert "auth token" in capsys.readouterr().err
    assert not (tmp_path / "calls").exists()


def test_an_unwritable_log_folder_is_reported_and_ray_still_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        blocked = tmp_path / "not-a-dir"
        blocked.write_text("a file where the log folder should be")
        log_file = str(blocked / "worker.log")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        log_file = str(locked / "worker.log")
    config = make_config(tmp_path, "exit3", log_file=log_file)
    assert node.run_once(config) == 3
    err = capsys.readouterr().err
    assert "ERROR: cannot write the log file" in err and "Ray keeps running" in err
    assert "start --block" in (tmp_path / "calls").read_text()


def test_a_log_write_failure_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = node.file_logger("t.once", str(tmp_path / "x.log"), 1024, 1)
    handler = logger.handlers[0]
    handler.stream.close()
    handler.stream = open(os.devnull, "w")
    handler.stream.close()
    logger.info("one")
    logger.info("two")
    assert capsys.readouterr().err.count("cannot write the log file") == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_logging_resumes_by_itself_once_the_log_can_be_written_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk (/dev/full) or an unwritable file at start: reported once; when the file is writable
    again the next line lands in it, without a restart (the fault suite's log test checks it live)."""
    full = tmp_path / "full.log"
    full.symlink_to("/dev/full")
    logger = node.file_logger("t.full", str(full), 1024 * 1024, 1)
    assert logger is not None
    logger.info("lost one")
    logger.info("lost two")
    full.unlink()
    logger.info("back")
    assert full.read_text().splitlines()[-1].endswith(" back")
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1 and "No space left on device" in err
    assert "writable again" in err

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the log folder should be")
    path = blocked / "worker.log"
    logger = node.file_logger("t.blocked", str(path), 1024 * 1024, 1)
    assert logger is not None  # Ray starts and the file is tried again at each line
    logger.info("lost")
    blocked.unlink()
    blocked.mkdir()
    logger.info("back")
    assert path.read_text().splitlines() and path.read_text().splitlines()[-1].endswith(" back")
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1 and "writable again" in err


def test_watchdog_restarts_ray_when_the_raylet_exits_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    config = make_config(tmp_path, "raylet")
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.update(code=node.run_once(config)))
    started = time.monotonic()
    runner.start()
    pid_file = tmp_path / "raylet.pid"
    while not pid_file.exists() and time.monotonic() - started < 10:
        time.sleep(0.1)
    time.sleep(node.WATCH_INTERVAL_S + 0.5)  # the watchdog must have seen the raylet once
    os.kill(int(pid_file.read_text()), signal.SIGTERM)  # exits "cleanly": ray start --block would not notice
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert result["code"] == 1
    print(f"watchdog restart after {time.monotonic() - started:.1f} s")


def test_watchdog_kills_a_ray_start_that_ignores_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on a loaded machine: the raylet died during startup and `ray start` hung, ignoring SIGTERM."""
    pytest.importorskip("psutil")
    monkeypatch.setattr(node, "KILL_AFTER_S", 3.0)
    config = make_config(tmp_path, "hang")
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.update(code=node.run_once(config)), daemon=True)
    started = time.monotonic()
    runner.start()
    pid_file = tmp_path / "raylet.pid"
    try:
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() - started < 10:
            time.sleep(0.1)
        time.sleep(node.WATCH_INTERVAL_S + 0.5)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        runner.join(timeout=30)
        assert not runner.is_alive(), "the supervisor is stuck on a ray start that ignores SIGTERM"
    finally:  # whatever happened, nothing of the fake Ray outlives the test
        subprocess.run(["pkill", "-KILL", "-f", str(tmp_path)], check=False)
    assert result["code"] != 0
    print(f"hung ray start killed; supervisor returned after {time.monotonic() - started:.1f} s")


def test_loop_mode_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "node.json"
    config = make_config(tmp_path, "exit3")
    config_path.write_text(json.dumps(config))
    assert node.main(["status", "--config", str(config_path)]) == 0
    assert json.loads(capsys.readouterr().out)["node"] == "w1"
    assert node.main(["run", "--config", str(tmp_path / "missing.json")]) == node.EX_CONFIG


def test_sigterm_stops_ray_and_exits_zero(tmp_path: Path) -> None:
    config = make_config(tmp_path, "block")
    config_path = tmp_path / "node.json"
    config_path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bittrader_node_agent.supervisor", "run", "--config", str(config_path)],
        env=AGENT_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    calls = tmp_path / "calls"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (calls.exists() and "start" in calls.read_text()):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_a_process_that_ends_mid_scan_does_not_blind_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's short-lived processes end all the time; one that ends between the listing of the
    children and the reading of its name must not make the scan fail (a failed scan sees nothing,
    so a raylet that has just started would never count as seen, and a dead one never as gone)."""
    psutil = pytest.importorskip("psutil")

    class Child:
        def __init__(self, name: str | None) -> None:
            self._name = name

        def name(self) -> str:
            if self._name is None:
                raise psutil.NoSuchProcess(4242)
            return self._name

    tree: dict[str, list[Child]] = {"now": [Child("raylet"), Child(None), Child("gcs_server")]}

    class Proc:
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def children(self, recursive: bool = False) -> list[Child]:
            return tree["now"]

    monkeypatch.setattr(psutil, "Process", Proc)
    seen: set[str] = set()
    assert node.critical_gone(1, ("raylet",), seen) is None
    assert seen == {"raylet"}
    tree["now"] = [Child(None), Child("ray::IDLE")]
    assert node.critical_gone(1, ("raylet",), seen) == "raylet"


def _spawn(tmp_path: Path, tag: str, env: dict[str, str] | None = None, ignore_term: bool = False,
           args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """A long-running stand-in for a Ray process: a shell that sleeps, with the given environment and
    extra (inert) arguments on its command line."""
    script = ("trap '' TERM; " if ignore_term else "") + "while :; do sleep 0.2; done"
    full_env = {k: v for k, v in os.environ.items() if k != node.NODE_ENV}
    full_env.update(env or {})
    return subprocess.Popen(["/bin/sh", "-c", script, f"stand-in-{tag}", *args], env=full_env,
                            start_new_session=True)


def _wait_dead(proc: subprocess.Popen[bytes], timeout: float = 15) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_restart_ends_only_this_nodes_processes(tmp_path: Path) -> None:
    """Issue 14 item 5: the stale processes of the node (found by the marker every process of the node
    inherits, or by its temp folder on their command line) end; a Ray of the same account that is not
    the node's (the owner's notebook, a second `ray start` elsewhere, another node's) keeps running.
    The old supervisor ran `ray stop --force`, which ends all of them on a real host and, with the fake
    `ray`, none."""
    pytest.importorskip("psutil")
    config = make_config(tmp_path, "exit3")
    marker = node.node_marker(config)
    ours_env = _spawn(tmp_path, "agent", {node.NODE_ENV: marker})
    ours_args = _spawn(tmp_path, "log-monitor", args=(f"--logs-dir={tmp_path / 'ray'}/session_x/logs",))
    stubborn = _spawn(tmp_path, "stubborn", {node.NODE_ENV: marker}, ignore_term=True)
    owners = _spawn(tmp_path, "owner", args=("--temp-dir=/tmp/ray",))
    sibling = _spawn(tmp_path, "sibling-folder", args=(f"--temp-dir={tmp_path / 'ray-other'}",))
    other_node = _spawn(tmp_path, "other-node", {node.NODE_ENV: str(tmp_path / "other")},
                        args=(f"--temp-dir={tmp_path / 'ray'}",))  # its marker wins over its arguments
    spared = (owners, sibling, other_node)
    try:
        time.sleep(0.3)
        started = time.monotonic()
        node.stop_stale(config, None, grace_s=2.0)
        print(f"stop_stale took {time.monotonic() - started:.1f} s")
        for proc in (ours_env, ours_args, stubborn):
            assert _wait_dead(proc, 5), f"pid {proc.pid} of the node outlived the restart"
        for proc in spared:
            assert proc.poll() is None, f"pid {proc.pid} is not the node's and was ended"
    finally:
        for proc in (ours_env, ours_args, stubborn, *spared):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_run_once_ends_stale_node_processes_and_spares_the_owners_ray(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    config = make_config(tmp_path, "exit3")
    lingering = _spawn(tmp_path, "agent", {node.NODE_ENV: node.node_marker(config)})
    owners = _spawn(tmp_path, "owner", args=("--temp-dir=/tmp/ray",))
    try:
        assert node.run_once(config) == 3
        assert _wait_dead(lingering), "a lingering process of the node survived the supervisor's start"
        assert owners.poll() is None, "the supervisor ended a Ray that is not the node's"
        assert "stop" not in (tmp_path / "calls").read_text().split()
    finally:
        for proc in (lingering, owners):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_stop_verb_ends_only_this_nodes_processes(tmp_path: Path) -> None:
    """`bittrader-node stop` (the macOS uninstall's stop, which ran `ray stop --force` before) ends the
    node's leftovers and leaves the owner's own Ray running."""
    pytest.importorskip("psutil")
    config = make_config(tmp_path, "exit3")
    path = tmp_path / "node.json"
    path.write_text(json.dumps(config))
    lingering = _spawn(tmp_path, "agent", {node.NODE_ENV: node.node_marker(config)})
    owners = _spawn(tmp_path, "owner", args=("--temp-dir=/tmp/ray",))
    try:
        assert node.main(["stop", "--config", str(path)]) == 0
        assert _wait_dead(lingering), "the node's leftover survived bittrader-node stop"
        assert owners.poll() is None, "bittrader-node stop ended a Ray that is not the node's"
        assert not (tmp_path / "calls").exists() or "stop" not in (tmp_path / "calls").read_text().split()
    finally:
        for proc in (lingering, owners):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_every_process_of_the_node_inherits_the_marker(tmp_path: Path) -> None:
    config = make_config(tmp_path, "exit3")
    env = node.ray_env(config)
    assert env[node.NODE_ENV] == os.path.normcase(os.path.abspath(tmp_path / "ray"))
    out = subprocess.run([config["ray"], "x"], env={**env, "FAKE_MODE": "none"}, check=True)
    assert out.returncode == 0
    child = subprocess.run(["/bin/sh", "-c", f'printf %s "${node.NODE_ENV}"'], env=env, capture_output=True,
                           text=True, check=True)
    assert child.stdout == env[node.NODE_ENV]


@pytest.mark.parametrize(
    ("environ", "cmdline", "ours"),
    [
        ({node.NODE_ENV: "/n/ray"}, ["ray::IDLE"], True),  # a worker: renamed, its environment tells
        ({node.NODE_ENV: "/n/other"}, ["raylet", "--temp_dir=/n/ray"], False),
        ({}, ["raylet", "--temp_dir=/n/ray"], True),
        ({}, ["python", "agent.py", "--log-dir=/n/ray/session_1/logs"], True),
        (None, ["python", "--temp-dir", "/n/ray"], True),
        ({}, ["python", "--temp-dir=/n/ray-2"], False),
        ({}, ["python", "--temp-dir=/tmp/ray"], False),
        (None, ["ray::IDLE"], False),
    ],
)
def test_which_processes_are_the_nodes(environ: dict[str, str] | None, cmdline: list[str], ours: bool) -> None:
    assert node.is_node_process(environ, cmdline, "/n/ray") is ours


def test_stale_sockets_are_removed_once_the_node_is_down(tmp_path: Path) -> None:
    """A socket left by a killed raylet makes Ray name the next one plasma_store.1 (longer: the path
    limit the preflight checks assumes the plain name); other files stay."""
    import socket

    pytest.importorskip("psutil")
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="bt", dir="/tmp"))  # pytest's tmp_path passes the socket limit
    try:
        config = make_config(tmp_path, "exit3", temp_dir=str(short))
        sockets = short / "session_2026-12-07_08-52-47_123456_42" / "sockets"
        sockets.mkdir(parents=True)
        left = socket.socket(socket.AF_UNIX)
        left.bind(str(sockets / "plasma_store"))
        left.close()
        (sockets / "notes").write_text("not a socket")
        node.stop_stale(config, None)
        assert sorted(p.name for p in sockets.iterdir()) == ["notes"]
    finally:
        shutil.rmtree(short)


def test_a_default_ray_current_cluster_pointing_at_the_cluster_is_removed(tmp_path: Path) -> None:
    """Left by a node that still used /tmp/ray (before it had its own temp folder): a plain ray.init()
    of the account reads it and attaches to the cluster. The owner's own address there stays."""
    config = make_config(tmp_path, "exit3")
    env = {"RAY_TMPDIR": str(tmp_path / "tmp")}
    assert node.default_ray_temp_dir(env) == tmp_path / "tmp" / "ray"
    assert node.default_ray_temp_dir({"TMPDIR": "/x"}, "linux") == Path("/x/ray")
    assert node.default_ray_temp_dir({"TMPDIR": "/var/folders/x"}, "darwin") == Path("/tmp/ray")
    current = tmp_path / "tmp" / "ray" / "ray_current_cluster"
    current.parent.mkdir(parents=True)
    current.write_text("10.0.0.10:6379")
    assert node.forget_default_address(config, env) is True and not current.exists()
    current.write_text("127.0.0.1:6380")  # the owner's own `ray start`
    assert node.forget_default_address(config, env) is False and current.exists()
    head = make_config(tmp_path / "h", "exit3", role="head",
                       start_args=["start", "--block", "--node-ip-address=10.0.0.10", "--head", "--port=6379"])
    assert node.cluster_addresses(head) == {"10.0.0.10:6379"}
    assert node.cluster_addresses(config) == {"10.0.0.10:6379"}
