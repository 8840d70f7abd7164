"""Bittrader node supervisor: runs one Ray node (head or worker) for a service manager.

    bittrader-node run --config node.json [--loop]
    bittrader-node status --config node.json

`run` ends the stale Ray processes of this node (never `ray stop`, which ends every Ray process of the
account, the owner's own notebook included where Ray runs as the owner), starts `ray start --block`
with the flags in node.json (its own --temp-dir, so a plain `ray.init()` on the machine does not find
the node), copies Ray's output to the node's log files (rotated) and to its own stdout/stderr
(journald under systemd), and exits when Ray exits. The service manager (systemd Restart=always,
launchd KeepAlive) starts it again; `--loop` restarts in-process for managers without that (Windows
scheduled tasks). Quick successive failures back off from restart_delay_s to restart_max_delay_s.

The CPU count given to Ray is read at each start from num_cpus_file when present (written by the
throttling daemon), else from node.json. The auth token is read by Ray from RAY_AUTH_TOKEN_PATH and
never passes through this program's arguments or logs. Standard library only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import logging.handlers
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from .common import (
    EX_CONFIG,
    config_error,
    fresh_logger,
    load_json_config,
    read_json_object,
    rotating_handler,
    write_json_atomic,
)

__all__ = ["EX_CONFIG", "main"]

QUICK_FAILURE_S = 60.0
WATCH_INTERVAL_S = 2.0
# Seconds `ray start` gets to exit after the watchdog's SIGTERM before it is killed.
KILL_AFTER_S = 20.0
# `ray start --block` exits only when a Ray subprocess dies with an unexpected code: a raylet that
# exits cleanly (after a drain, or when the GCS marked it dead) leaves it blocking for ever. The
# supervisor watches these processes itself and restarts Ray when one has gone.
CRITICAL = {"head": ("gcs_server", "raylet"), "worker": ("raylet",)}
# Set in the environment of `ray start` and so of every process of the node; its value is the node's
# Ray temp folder. The supervisor ends stale processes by it instead of `ray stop --force`.
NODE_ENV = "BITTRADER_RAY_NODE"
# Seconds a stale process of the node gets after SIGTERM before it is killed.
STOP_GRACE_S = 10.0


def hold_path(config: dict[str, Any]) -> Path:
    """RUN/hold (next to the state file): while it exists Ray is not started again. remove_worker.yml
    writes it before it drains the node, so the raylet that leaves after the drain does not rejoin
    before the service is stopped; it removes it once the service is stopped and disabled."""
    return Path(config["state_file"]).parent / "hold"


def wait_while_held(path: Path, poll_s: float = 2.0) -> bool:
    """Block while the hold file exists; True when it waited."""
    if not path.exists():
        return False
    print(f"bittrader-node: {path} exists (the node is being removed from the cluster): "
          "not starting Ray until it is gone", flush=True)
    while path.exists():
        time.sleep(poll_s)
    print(f"bittrader-node: {path} is gone; starting Ray", flush=True)
    return True


def load_config(path: Path) -> dict[str, Any]:
    return load_json_config(path, ("ray", "start_args", "env", "log_file", "error_log_file", "state_file", "temp_dir"))


def desired_num_cpus(config: dict[str, Any]) -> int | None:
    """The CPU count for this start: the throttle's file when valid, else node.json's value."""
    path = config.get("num_cpus_file")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
    value = config.get("num_cpus")
    return None if value is None else int(value)


def start_command(config: dict[str, Any]) -> list[str]:
    args = [str(config["ray"]), *[str(a) for a in config["start_args"]]]
    # The node's own temp/session folder: Ray's default (/tmp/ray) is where a plain `ray.init()` of the
    # same machine looks for a running cluster (its ray_current_cluster file).
    args.append(f"--temp-dir={config['temp_dir']}")
    cpus = desired_num_cpus(config)
    if cpus is not None:
        args.append(f"--num-cpus={cpus}")
    return args


def backoff_delay(state: dict[str, Any], base: float, cap: float) -> float:
    """Seconds to wait before this start, from the record of quick failures before it."""
    failures = int(state.get("quick_failures", 0))
    if failures <= 0:
        return 0.0
    return float(min(cap, base * (2 ** (failures - 1))))


def record_exit(state: dict[str, Any], started: float, ended: float, code: int) -> dict[str, Any]:
    quick = ended - started < QUICK_FAILURE_S and code != 0
    return {
        "quick_failures": int(state.get("quick_failures", 0)) + 1 if quick else 0,
        "last_exit_code": code,
        "last_started": started,
        "last_exited": ended,
        "starts": int(state.get("starts", 0)) + 1,
    }


read_state = read_json_object


def write_state(path: Path, state: dict[str, Any]) -> None:
    try:
        write_json_atomic(path, state)
    except OSError as exc:
        print(f"bittrader-node: cannot write {path}: {exc}", file=sys.stderr, flush=True)


class LogFile(logging.handlers.RotatingFileHandler):
    """A rotated log file that reports a write failure (full disk, lost permission) once, clearly,
    on stderr and goes on: Ray must not stop because its log cannot be written. After a failure the
    file is opened again at the next line, so logging resumes by itself (and says so on stderr) once
    the file can be written again."""

    reported = False
    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        self.failed = False
        super().emit(record)
        if self.reported and not self.failed:
            self.reported = False
            print(f"bittrader-node: the log file {self.baseFilename} is writable again", file=sys.stderr, flush=True)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True
        error = sys.exc_info()[1]
        stream, self.stream = self.stream, None  # type: ignore[assignment]
        if stream is not None:
            try:
                stream.close()
            except (OSError, ValueError):
                pass  # its buffered lines are lost with the failed write
        if not self.reported:
            self.reported = True
            print(f"bittrader-node: ERROR: cannot write the log file {self.baseFilename}: {error}. "
                  "Ray keeps running; its output goes to the service manager's log only until the file "
                  "can be written again.", file=sys.stderr, flush=True)


def file_logger(name: str, path: str, max_bytes: int, backups: int) -> logging.Logger | None:
    """A size-rotated file logger; when the file cannot be written, a clear message and a logger that
    tries the file again at each line."""
    logger = fresh_logger(name)
    handler: LogFile
    try:
        handler = rotating_handler(path, max_bytes, backups, handler_class=LogFile)  # type: ignore[assignment]
    except OSError as exc:
        print(
            f"bittrader-node: ERROR: cannot write the log file {path}: {exc}. "
            "Ray keeps running; its output goes to the service manager's log only until the file "
            "can be written again.",
            file=sys.stderr,
            flush=True,
        )
        handler = rotating_handler(path, max_bytes, backups, handler_class=LogFile, delay=True)  # type: ignore[assignment]
        handler.reported = True
    logger.addHandler(handler)
    return logger


def pump(stream: TextIO, echo: TextIO, logger: logging.Logger | None) -> None:
    """Copy a child's output line by line to our own stream and to the log file."""
    for line in stream:
        text = line.rstrip("\n")
        echo.write(text + "\n")
        echo.flush()
        if logger is not None:
            logger.info(text)


def critical_gone(pid: int, names: tuple[str, ...], seen: set[str]) -> str | None:
    """The name of a critical Ray process that was running under pid and is gone now, if any.

    seen collects the names observed so far, so a process that has not started yet is not "gone".
    Needs psutil (installed in every node's venv); without it nothing is watched.
    """
    try:
        import psutil
    except ImportError:
        return None
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return None
    running: set[str] = set()
    for child in children:  # Ray starts and ends processes all the time: one may end mid-scan
        try:
            running.add(child.name())
        except psutil.Error:
            continue
    present = {name for name in names if any(proc.startswith(name) for proc in running)}
    seen.update(present)
    gone = sorted(seen - present)
    return gone[0] if gone else None


def watch(child: subprocess.Popen[str], names: tuple[str, ...], stopping: threading.Event,
          fired: threading.Event, interval: float = WATCH_INTERVAL_S, kill_after: float | None = None) -> None:
    """Terminate `ray start` when a critical process it started is gone twice in a row (and kill it
    when it does not exit within kill_after seconds)."""
    seen: set[str] = set()
    strikes = 0
    while child.poll() is None and not stopping.is_set():
        gone = critical_gone(child.pid, names, seen)
        strikes = strikes + 1 if gone else 0
        if strikes >= 2:
            print(f"bittrader-node: {gone} has exited; restarting Ray", file=sys.stderr, flush=True)
            fired.set()
            child.terminate()
            # `ray start` that failed during startup ("timed out during startup") can hang in its
            # shutdown and ignore SIGTERM: then the service would stay down for ever.
            kill_after = KILL_AFTER_S if kill_after is None else kill_after
            deadline = time.monotonic() + kill_after
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if child.poll() is None:
                print(f"bittrader-node: ray start ignored SIGTERM for {kill_after:.0f} s; killing it",
                      file=sys.stderr, flush=True)
                child.kill()
            return
        time.sleep(interval)


def ray_env(config: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in config["env"].items()})
    env[NODE_ENV] = node_marker(config)  # inherited by every process of the node: see node_processes
    # Job entrypoints (`ray job submit -- python ...`) and Ray's workers find the venv's Python first.
    bin_dir = str(Path(str(config["ray"])).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", os.defpath)
    return env


def node_marker(config: dict[str, Any]) -> str:
    """The value of NODE_ENV in every process of this node: its Ray temp folder (one per node)."""
    return os.path.normcase(os.path.abspath(str(config["temp_dir"])))


def is_node_process(environ: dict[str, str] | None, cmdline: list[str], marker: str) -> bool:
    """A process of this node: it inherited NODE_ENV from the supervisor (Ray's workers rename their
    command line to `ray::...`, their environment stays), or its command line names the node's temp
    folder (--temp-dir, --session-dir, --log-dir) when the environment cannot be read."""
    if environ is not None and environ.get(NODE_ENV) is not None:
        return os.path.normcase(environ[NODE_ENV]) == marker
    for arg in map(os.path.normcase, cmdline):
        if arg == marker or arg.endswith("=" + marker) or marker + os.sep in arg:
            return True
    return False


def node_processes(config: dict[str, Any], psutil_mod: Any = None) -> list[Any]:
    """Every live process of this node (this account's, see is_node_process), except this supervisor."""
    if psutil_mod is None:
        psutil_mod = importlib.import_module("psutil")
    marker = node_marker(config)
    me = psutil_mod.Process(os.getpid()).username()
    found = []
    for proc in psutil_mod.process_iter(["username"]):
        try:
            if proc.pid == os.getpid() or proc.info.get("username") != me:
                continue
            try:
                environ = proc.environ()
            except psutil_mod.AccessDenied:
                environ = None
            if is_node_process(environ, proc.cmdline(), marker):
                found.append(proc)
        except (psutil_mod.NoSuchProcess, psutil_mod.ZombieProcess, psutil_mod.AccessDenied):
            continue
    return found


def remove_stale_sockets(config: dict[str, Any]) -> int:
    """Delete the socket files left in the node's session folders once none of its processes runs:
    Ray names a new socket plasma_store.1, .2, ... while an old one exists, and the longer name could
    pass the AF_UNIX path limit (104 bytes on macOS) that the preflight checks against."""
    removed = 0
    for sock in Path(str(config["temp_dir"])).glob("session_*/sockets/*"):
        try:
            if stat.S_ISSOCK(sock.lstat().st_mode):
                sock.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def default_ray_temp_dir(env: dict[str, str], platform: str = sys.platform) -> Path:
    """Ray's default temp folder (ray._common.utils.get_default_ray_temp_dir, Ray 2.60): where a plain
    `ray.init()` looks for the ray_current_cluster file of a running cluster."""
    if env.get("RAY_TMPDIR"):
        return Path(env["RAY_TMPDIR"]) / "ray"
    if platform.startswith("linux") and env.get("TMPDIR"):
        return Path(env["TMPDIR"]) / "ray"
    if platform.startswith(("darwin", "linux")):
        return Path("/tmp/ray")
    return Path(tempfile.gettempdir()) / "ray"


def cluster_addresses(config: dict[str, Any]) -> set[str]:
    """The GCS addresses a `ray start` of this node writes into ray_current_cluster: the head's
    --address on a worker, --node-ip-address:--port on the head."""
    flags = {}
    for arg in map(str, config["start_args"]):
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            flags[key] = value
    found = {flags["--address"]} if "--address" in flags else set()
    if "--head" in map(str, config["start_args"]) and "--node-ip-address" in flags:
        found.add(f"{flags['--node-ip-address']}:{flags.get('--port', '6379')}")
    return found


def forget_default_address(config: dict[str, Any], env: dict[str, str], platform: str = sys.platform) -> bool:
    """Remove a ray_current_cluster left in Ray's default temp folder by this node before it had its own
    (or by anyone pointing it at this cluster): it makes a plain `ray.init()` of the account attach to
    the cluster. Another address there (the owner's own `ray start`) is left alone. True when removed."""
    path = default_ray_temp_dir(env, platform) / "ray_current_cluster"
    try:
        if path.read_text(encoding="utf-8").strip() not in cluster_addresses(config):
            return False
        path.unlink()
    except OSError:
        return False
    print(f"bittrader-node: removed {path}: a plain ray.init() here must not attach to the cluster", flush=True)
    return True


def stop_stale(config: dict[str, Any], log: logging.Logger | None, psutil_mod: Any = None,
               grace_s: float = STOP_GRACE_S) -> None:
    """End what is left of this node (agents and monitors of a dead raylet may linger and hold the
    ports): SIGTERM, then SIGKILL after grace_s. Only the node's own processes: another Ray of the same
    account (the owner's notebook, a second `ray start`) is not touched."""
    try:
        if psutil_mod is None:
            psutil_mod = importlib.import_module("psutil")
        procs = node_processes(config, psutil_mod)
        for proc in procs:
            try:
                proc.terminate()
            except psutil_mod.Error:
                continue
        _, alive = psutil_mod.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil_mod.Error:
                continue
        psutil_mod.wait_procs(alive, timeout=grace_s)
        sockets = remove_stale_sockets(config) if not node_processes(config, psutil_mod) else 0
        message = (f"ended {len(procs)} stale process(es) of this node ({len(alive)} killed), "
                   f"removed {sockets} stale socket(s)")
    except ImportError:
        message = "cannot look for stale processes of this node: psutil is missing from its venv"
    print(f"bittrader-node: {message}", flush=True)
    if log is not None:
        log.info("bittrader-node: %s", message)


def run_once(config: dict[str, Any]) -> int:
    """One supervised life of Ray: returns Ray's exit code (0 after a requested stop)."""
    wait_while_held(hold_path(config))
    state_path = Path(config["state_file"])
    state = read_state(state_path)
    delay = backoff_delay(state, float(config.get("restart_delay_s", 5)), float(config.get("restart_max_delay_s", 60)))
    max_bytes = int(config.get("log_max_bytes", 10 * 1024 * 1024))
    backups = int(config.get("log_backups", 5))
    out_log = file_logger("bittrader.out", config["log_file"], max_bytes, backups)
    err_log = file_logger("bittrader.err", config["error_log_file"], max_bytes, backups)
    if delay:
        print(f"bittrader-node: {state.get('quick_failures')} quick failures; waiting {delay:.0f} s", flush=True)
        time.sleep(delay)
    env = ray_env(config)
    token_path = env.get("RAY_AUTH_TOKEN_PATH", "")
    if env.get("RAY_AUTH_MODE") == "token" and (not token_path or not os.access(token_path, os.R_OK)):
        message = f"bittrader-node: ERROR: the cluster's auth token {token_path!r} is missing or unreadable"
        print(message, file=sys.stderr, flush=True)
        if err_log is not None:
            err_log.info(message)
        write_state(state_path, record_exit(state, time.time(), time.time(), EX_CONFIG))
        return EX_CONFIG
    stop_stale(config, out_log)
    forget_default_address(config, env)
    command = start_command(config)
    print("bittrader-node: " + " ".join(command), flush=True)
    if out_log is not None:
        out_log.info("bittrader-node: %s", " ".join(command))
    started = time.time()
    child = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    stopping = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        child.send_signal(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, forward)
    assert child.stdout is not None and child.stderr is not None
    threads = [
        threading.Thread(target=pump, args=(child.stdout, sys.stdout, out_log), daemon=True),
        threading.Thread(target=pump, args=(child.stderr, sys.stderr, err_log), daemon=True),
    ]
    fired = threading.Event()
    names = CRITICAL.get(str(config.get("role")), CRITICAL["worker"])
    threads.append(threading.Thread(target=watch, args=(child, names, stopping, fired), daemon=True))
    for thread in threads:
        thread.start()
    code = child.wait()
    for thread in threads:
        thread.join(timeout=5)
    ended = time.time()
    if fired.is_set() and code == 0:
        code = 1
    message = f"bittrader-node: ray exited with code {code} after {ended - started:.0f} s"
    print(message, flush=True)
    if out_log is not None:
        out_log.info(message)
    stop_stale(config, out_log)
    if stopping.is_set():
        write_state(state_path, record_exit(state, started, ended, 0))
        return 0
    write_state(state_path, record_exit(state, started, ended, code))
    return code if code != 0 else 1  # Ray with --block never exits 0 by itself: restart it.


def status(config: dict[str, Any]) -> int:
    state = read_state(Path(config["state_file"]))
    print(json.dumps({"node": config.get("node"), "role": config.get("role"), "held": hold_path(config).exists(),
                      **state}, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bittrader-node", description=__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["run", "status", "stop"],
                        help="run the node; its status; stop: end only this node's processes (uninstall)")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--loop", action="store_true", help="restart Ray in-process after it exits")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (OSError, ValueError) as exc:
        return config_error("bittrader-node", exc)
    if args.verb == "status":
        return status(config)
    if args.verb == "stop":
        stop_stale(config, None)
        return 0
    while True:
        code = run_once(config)
        if not args.loop or code == 0:
            return code
        time.sleep(float(config.get("restart_delay_s", 5)))


if __name__ == "__main__":
    sys.exit(main())
