"""The node supervisor (roles/ray_node/files/bittrader_node.py) with a stand-in `ray` command."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bittrader_node", REPO / "roles/ray_node/files/bittrader_node.py")
assert spec and spec.loader
node = importlib.util.module_from_spec(spec)
sys.modules["bittrader_node"] = node
spec.loader.exec_module(node)

FAKE_RAY = """#!/bin/sh
# Stand-in for the venv's ray: records its arguments, then behaves as FAKE_MODE says.
echo "$@" >> "$FAKE_CALLS"
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
        "restart_delay_s": 1,
        "restart_max_delay_s": 8,
    }
    config.update(extra)
    (tmp_path / "run").mkdir(exist_ok=True)
    return config


def test_start_command_takes_the_throttles_cpu_count(tmp_path: Path) -> None:
    config = make_config(tmp_path, "exit3")
    assert node.start_command(config)[-1] == "--num-cpus=4"
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
    assert calls[0] == "stop --force"
    assert calls[1] == "start --block --address=10.0.0.10:6379 --num-cpus=4"
    assert calls[2] == "stop --force"
    assert "Ray runtime started." in Path(config["log_file"]).read_text()
    assert "a warning" in Path(config["error_log_file"]).read_text()
    state = json.loads(Path(config["state_file"]).read_text())
    assert state["last_exit_code"] == 3 and state["quick_failures"] == 1
    out = capsys.readouterr()
    assert "Ray runtime started." in out.out and "a warning" in out.err
    assert "f" * 64 not in out.out + out.err + Path(config["log_file"]).read_text()


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
        [sys.executable, str(REPO / "roles/ray_node/files/bittrader_node.py"), "run", "--config", str(config_path)],
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
