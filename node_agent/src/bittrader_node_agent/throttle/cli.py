"""The throttle's command line (bittrader-throttle) and its `--reset`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..common import EX_CONFIG, psutil_module, read_first_json_line, write_atomic
from .config import DAEMON_MODULE, DAEMON_SCRIPT, Config, load_config
from .limiters import Mechanism, make_mechanism
from .loop import _once, build_daemon, make_logger, status_line
from .raysync import RaySync, read_num_cpus_file, terminate_ray_start
from .sources import RayProcesses, owned

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

RESET_STATE = "reset"
# How long `--reset` keeps trying to bring Ray's scheduler to cpus_idle (the Windows reset task's own
# time limit is ten minutes).
RESET_WAIT_S = 540.0
NOT_DAEMON_FLAGS = ("--reset", "--once", "--status", "--check-config")


def _config_arg(cmdline: Sequence[str]) -> str | None:
    for index, arg in enumerate(cmdline):
        if arg == "--config" and index + 1 < len(cmdline):
            return cmdline[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _same_path(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def is_throttle_daemon(cmdline: Sequence[str], config_path: str) -> bool:
    """A running throttle daemon watching config_path (not a --reset, --once, --status or --check-config
    run of it)."""
    named = any(DAEMON_SCRIPT in arg for arg in cmdline) or DAEMON_MODULE in cmdline
    if not named or any(f in cmdline for f in NOT_DAEMON_FLAGS):
        return False
    found = _config_arg(cmdline)
    return found is not None and _same_path(found, config_path)


def throttle_daemon_pids(psutil_mod: Any, config_path: str, user: str | None = None) -> list[int]:
    """The pids of the throttle daemons of this configuration run by the wanted account."""
    found: list[int] = []
    for proc in psutil_mod.process_iter(["username"]):
        try:
            if proc.pid == os.getpid() or not owned(proc, proc.info.get("username"), user):
                continue
            if is_throttle_daemon(proc.cmdline(), config_path):
                found.append(proc.pid)
        except (psutil_mod.NoSuchProcess, psutil_mod.AccessDenied, psutil_mod.ZombieProcess):
            continue
    return found


def reset(
    config: Config,
    *,
    mechanism: Mechanism,
    ray_sync: RaySync,
    running: Callable[[], list[int]],
    logger: logging.Logger,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    wait_s: float = RESET_WAIT_S,
) -> str:
    """Undo what a daemon that was ended without a signal left behind; what it did, in one line.

    Nothing while a daemon of this configuration runs (it owns the limits), nor when the last status
    is already a completed reset and num_cpus_file holds cpus_idle (the periodic run stays silent).
    Otherwise: lift the OS limit of Ray's processes, write cpus_idle to num_cpus_file, and bring Ray's
    scheduler there (live resize, or drain and restart, as the daemon would) for up to wait_s seconds;
    a daemon that starts meanwhile takes over. The status file then says "reset"."""
    pids = running()
    if pids:
        return f"the throttle runs (pid {', '.join(str(p) for p in pids)}): nothing to reset"
    paths = config.paths
    full = config.policy.cpus_idle
    last = read_first_json_line(paths.status_file) or {}
    if last.get("state") == RESET_STATE and last.get("ray_done") and read_num_cpus_file(paths.num_cpus_file) == full:
        return "already reset"
    why = f"the throttle is not running (its last state: {last.get('state') or 'unknown'})"
    os_text = mechanism.release()
    ray_text = ray_sync.request(full, why)
    logger.info("reset: %s | os: %s | ray: %s", why, os_text, ray_text)
    deadline = clock() + wait_s
    while ray_sync.pending and clock() < deadline:
        if running():
            text = "the throttle started again: it takes over"
            logger.info("reset: %s", text)
            return text
        if ray_sync.due(clock()):
            attempt = ray_sync.attempt()
            if attempt:
                logger.info("reset: %s", attempt)
        sleep(1.0)
    done = not ray_sync.pending
    now = clock()
    extra = {"os": os_text, "ray": ray_sync.last_result or ray_text, "ray_done": done}
    try:
        write_atomic(paths.status_file, status_line(RESET_STATE, full, now, why, now, extra))
    except OSError as exc:
        logger.info("reset: cannot write the status file %s: %s", paths.status_file, exc)
    text = f"Ray has its {full} CPUs again" if done else f"Ray's scheduler not yet at {full} CPUs ({extra['ray']})"
    logger.info("reset: %s", text)
    return text


def _reset(config: Config, config_path: str) -> int:
    """--reset with the real processes, mechanism and Ray calls of the configured platform."""
    logger = make_logger(config.paths)
    psutil_mod = psutil_module()
    user = config.mechanism.process_user
    mechanism = make_mechanism(config, psutil_mod=psutil_mod, processes=RayProcesses(psutil_mod, user))
    ray_sync = RaySync(config)
    ray_sync.terminate_ray_start = lambda: terminate_ray_start(psutil_mod, ray_sync.ray_bin, config.ray.node_ip, user)
    text = reset(config, mechanism=mechanism, ray_sync=ray_sync,
                 running=lambda: throttle_daemon_pids(psutil_mod, config_path, user), logger=logger)
    print(f"bittrader-throttle: {text}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bittrader-throttle", description="Bittrader smart CPU throttle for Ray.")
    parser.add_argument("--config", required=True, help="the JSON configuration file")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--once", action="store_true", help="evaluate once and print the decision (changes nothing)")
    group.add_argument("--status", action="store_true", help="print the last status line")
    group.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    group.add_argument("--reset", action="store_true",
                       help="when no throttle runs for this configuration, give Ray all its CPUs back (after a "
                            "throttle was ended without a signal)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ValueError as exc:
        print(f"bittrader-throttle: invalid configuration: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        print(f"bittrader-throttle: {args.config} is valid")
        return 0
    if args.status:
        try:
            with open(config.paths.status_file, encoding="utf-8") as handle:
                line = handle.readline().strip()
        except OSError as exc:
            print(f"bittrader-throttle: no status yet ({exc.strerror or exc})", file=sys.stderr)
            return 1
        print(line)
        return 0
    if args.once:
        return _once(config)
    if args.reset:
        return _reset(config, args.config)
    logger = make_logger(config.paths)
    daemon = build_daemon(config, logger)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    for name in ("SIGTERM", "SIGINT", "SIGBREAK", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, on_signal)
    return daemon.run(stop)


