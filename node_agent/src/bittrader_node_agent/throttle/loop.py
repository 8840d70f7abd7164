"""The throttle daemon: observe, decide, apply; its status file and log."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..common import fresh_logger, psutil_module, read_first_json_line, rotating_handler, write_atomic
from .config import Config, Paths
from .limiters import Mechanism, make_mechanism
from .policy import Decision, Mode, Observation, State, decide
from .raysync import RaySync, read_num_cpus_file, terminate_ray_start
from .sources import (
    ActivitySource,
    CgroupCpuCounter,
    LoadMeter,
    ProcessCpuCounter,
    RayProcesses,
    make_activity_source,
    read_battery,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

STATUS_HEARTBEAT_S = 30.0
OS_RETRY_S = 30.0

# --------------------------------------------------------------------------------------------------
# Status and log
# --------------------------------------------------------------------------------------------------


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def status_line(
    mode: str, cpus: int, since: float, reason: str, now: float, extra: Mapping[str, Any] | None = None
) -> str:
    data: dict[str, Any] = {
        "state": mode,
        "cpus": cpus,
        "since": iso(since) if math.isfinite(since) else None,
        "reason": reason,
        "updated": iso(now),
        "pid": os.getpid(),
    }
    data.update(extra or {})
    return json.dumps(data, sort_keys=True) + "\n"


def make_logger(paths: Paths, name: str = "bittrader.throttle") -> logging.Logger:
    logger = fresh_logger(name)
    handler: logging.Handler
    try:
        handler = rotating_handler(paths.log_file, paths.log_max_bytes, paths.log_backups)
    except OSError as exc:
        print(f"bittrader-throttle: cannot write {paths.log_file}: {exc}; logging to stderr", file=sys.stderr)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    return logger


# --------------------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------------------


class Daemon:
    """Watches, decides and applies. Every collaborator is injectable for tests."""

    def __init__(
        self,
        config: Config,
        *,
        activity: ActivitySource,
        mechanism: Mechanism,
        ray_sync: RaySync,
        logger: logging.Logger,
        battery: Callable[[], tuple[bool | None, float | None]] = lambda: (None, None),
        load: Callable[[], float | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.activity = activity
        self.mechanism = mechanism
        self.ray_sync = ray_sync
        self.log = logger
        self.battery = battery
        self.load = load
        self.clock = clock
        start_cpus = read_num_cpus_file(config.paths.num_cpus_file)
        self.state = State(mode=None, cpus=config.policy.cpus_idle if start_cpus is None else start_cpus)
        self.last_decision: Decision | None = None
        self.last_observation: Observation | None = None
        self.mechanism_result = ""
        self._idle_reading: tuple[float, float | None] | None = None  # (when read, idle seconds)
        self._status_at = -math.inf
        self._ray_result = ""
        self._status_lock = threading.Lock()
        self._os_retry_at: float | None = None  # set while the last OS limit failed

    def idle_seconds(self, now: float) -> float | None:
        """The activity source's reading, queried only when the answer can matter: while the last
        reading said "in use", presence cannot end before idle_threshold_s is reached, so the source
        is not asked again until then (saves a subprocess per poll on an owner's busy laptop)."""
        threshold = self.config.policy.idle_threshold_s
        if self._idle_reading is not None:
            read_at, idle = self._idle_reading
            if idle is not None and idle < threshold and now < read_at + (threshold - idle):
                return idle + (now - read_at)
        idle = self.activity.idle_seconds()
        self._idle_reading = (now, idle)
        return idle

    def observe(self, now: float) -> Observation:
        on_battery, percent = self.battery()
        load = self.load() if self.config.policy.load_guard is not None else None
        return Observation(self.idle_seconds(now), on_battery, percent, load)

    def step(self) -> Decision:
        now = self.clock()
        observation = self.observe(now)
        decision = decide(self.state, observation, self.config, now)
        self.last_observation = observation
        self.last_decision = decision
        self.state = decision.next_state
        if decision.changed:
            self.apply_os_limit(now)
            ray_text = self.ray_sync.request(decision.cpus_after, decision.reason)
            self.log.info(
                "state=%s cpus %d->%d reason=%s | os: %s | ray: %s",
                decision.state.value,
                decision.cpus_before,
                decision.cpus_after,
                decision.reason,
                self.mechanism_result,
                ray_text,
            )
            self.write_status(now, force=True)
        else:
            if self._os_retry_at is not None and now >= self._os_retry_at:
                self.apply_os_limit(now)
                self.log.info("os: retry: %s", self.mechanism_result)
                self.write_status(now, force=True)
            refreshed = self.mechanism.refresh()
            if refreshed:
                self.mechanism_result = refreshed
                self.log.info("os: %s", refreshed)
            self.write_status(now)
        return decision

    def apply_os_limit(self, now: float) -> None:
        """Apply the OS limit of the current count; a failure (sudo rule missing, unit not loaded) is
        retried every OS_RETRY_S seconds until it works or the count changes."""
        self.mechanism_result = self.mechanism.apply(self.state.cpus)
        self._os_retry_at = now + OS_RETRY_S if "failed" in self.mechanism_result else None

    def ray_step(self) -> None:
        """One Ray update when one is due (called by the background thread)."""
        if self.ray_sync.due(self.clock()):
            text = self.ray_sync.attempt()
            if text:
                self._ray_result = text
                self.log.info("%s", text)
                self.write_status(self.clock(), force=True)

    def write_status(self, now: float, force: bool = False, mode: str | None = None) -> None:
        with self._status_lock:
            self._write_status(now, force, mode)

    def _write_status(self, now: float, force: bool, mode: str | None) -> None:
        if not force and now - self._status_at < STATUS_HEARTBEAT_S:
            return
        decision = self.last_decision
        obs = self.last_observation
        extra: dict[str, Any] = {
            "os": self.mechanism_result,
            "ray": self._ray_result,
            "held": bool(decision and decision.held),
        }
        if obs is not None:
            idle = obs.idle_seconds
            extra.update(
                idle_s=None if idle is None or math.isinf(idle) else round(idle),
                on_battery=obs.on_battery,
                battery_percent=obs.battery_percent,
                cpu_load=None if obs.cpu_load is None else round(obs.cpu_load, 1),
            )
        state_mode = mode or (self.state.mode.value if self.state.mode is not None else "starting")
        reason = decision.reason if decision is not None else ""
        try:
            write_atomic(
                self.config.paths.status_file,
                status_line(state_mode, self.state.cpus, self.state.since, reason, now, extra),
            )
            self._status_at = now
        except OSError as exc:
            self.log.info("cannot write the status file %s: %s", self.config.paths.status_file, exc)

    def shutdown(self, why: str) -> None:
        self.mechanism_result = self.mechanism.release()
        self.log.info("stopped (%s) | os: %s", why, self.mechanism_result)
        self.write_status(self.clock(), force=True, mode="stopped")

    def run(self, stop: threading.Event) -> int:
        poll = self.config.policy.poll_interval_s
        self.log.info(
            "started pid=%d platform=%s source=%s mechanism=%s active=%d idle=%d",
            os.getpid(),
            self.config.platform,
            self.activity.name,
            self.mechanism.name,
            self.config.policy.cpus_active,
            self.config.policy.cpus_idle,
        )
        worker = threading.Thread(target=self._ray_loop, args=(stop,), name="ray-sync", daemon=True)
        worker.start()
        try:
            while not stop.is_set():
                started = self.clock()
                try:
                    self.step()
                except Exception as exc:  # noqa: BLE001 - a transient failure must not end the watch
                    self.log.info("error during evaluation: %s: %s", type(exc).__name__, exc)
                stop.wait(max(0.05, poll - (self.clock() - started)))
        finally:
            self.shutdown("signal")
        return 0

    def _ray_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.ray_step()
            except Exception as exc:  # noqa: BLE001 - keep the thread alive
                self.log.info("ray: error %s: %s", type(exc).__name__, exc)
            stop.wait(1.0)


def build_daemon(config: Config, logger: logging.Logger) -> Daemon:
    """The daemon with the real sources and mechanisms of the configured platform."""
    psutil_mod = psutil_module()
    activity = make_activity_source(config)
    user = config.mechanism.process_user  # None: the daemon's own account
    processes = RayProcesses(psutil_mod, user)
    mechanism = make_mechanism(config, psutil_mod=psutil_mod, processes=processes)
    ray_sync = RaySync(config)
    ray_sync.terminate_ray_start = lambda: terminate_ray_start(psutil_mod, ray_sync.ray_bin, config.ray.node_ip, user)

    ray_seconds: Callable[[], float | None]
    if config.mechanism_kind == "systemd":
        ray_seconds = CgroupCpuCounter(config.ray.unit)
    else:
        ray_seconds = ProcessCpuCounter(processes, psutil_mod)
    meter = LoadMeter(psutil_mod, ray_seconds, time.monotonic)
    return Daemon(
        config,
        activity=activity,
        mechanism=mechanism,
        ray_sync=ray_sync,
        logger=logger,
        battery=lambda: read_battery(psutil_mod),
        load=meter.sample,
    )


def _once(config: Config) -> int:
    """Evaluate once from the last status (or start-up) and print the decision; applies nothing."""
    logger = logging.getLogger("bittrader.throttle.once")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    daemon = build_daemon(config, logger)
    last = read_first_json_line(config.paths.status_file)
    if last and last.get("state") in {m.value for m in Mode} and isinstance(last.get("cpus"), int):
        daemon.state = State(Mode(last["state"]), int(last["cpus"]))
    if config.policy.load_guard is not None:
        daemon.load()
        time.sleep(1.0)
    now = time.time()
    observation = daemon.observe(now)
    decision = decide(daemon.state, observation, config, now)
    idle = observation.idle_seconds
    out = decision.as_dict()
    out["observation"] = {
        "idle_s": None if idle is None else ("inf" if math.isinf(idle) else round(idle, 1)),
        "on_battery": observation.on_battery,
        "battery_percent": observation.battery_percent,
        "cpu_load": observation.cpu_load,
        "source": daemon.activity.name,
    }
    print(json.dumps(out, sort_keys=True))
    return 0


