"""Bittrader smart CPU throttle: gives Ray few CPUs while a worker's owner uses the machine, all of
them when the machine is idle, and pauses or reduces Ray on battery.

    bittrader-throttle --config CONFIG.json            watch and throttle (the service's command)
    bittrader-throttle --config CONFIG.json --once     evaluate once, print the decision (changes nothing)
    bittrader-throttle --config CONFIG.json --status   print the last status line
    bittrader-throttle --config CONFIG.json --check-config   validate the configuration
    bittrader-throttle --config CONFIG.json --reset    give Ray its CPUs back when no throttle runs

One self-contained file (standard library and psutil; never Ray, so the watcher stays small). The
Ansible module ray_throttle_daemon writes it into the node's virtual environment as
VENV/bin/bittrader-throttle and imports the same file (as ansible.module_utils.bittrader_throttle)
to validate the configuration it writes.

Decisions (decide()):
  * ACTIVE while someone uses the machine: the last input is younger than idle_threshold_s, the
    activity is unknown, or (load_guard) the CPU load of everything but Ray reached load_guard percent
    less than idle_threshold_s ago. Ray gets cpus_active.
  * IDLE otherwise (a headless machine is always idle). Ray gets cpus_idle.
  * BATTERY on battery power: battery_policy "pause" gives Ray 0 CPUs, an integer N gives it at most
    N, "ignore" changes nothing; below battery_min_percent (when set) Ray is paused whatever the
    policy.
  * Hysteresis: a change that gives Ray fewer CPUs (the owner came back, the laptop was unplugged) is
    applied at once; a change that gives Ray more CPUs waits until hysteresis_s have passed since the
    previous change. Going to ACTIVE is therefore always immediate.

Applying a change:
  1. At once, an operating-system limit on the Ray processes: Linux `sudo -n systemctl set-property
     --runtime UNIT CPUQuota=N*100%` (0 CPUs: pause_quota_percent, never 0, so nothing is killed);
     macOS `taskpolicy -b|-B -p PID` on the Ray processes (renice cannot be undone by a normal user);
     Windows priority class and CPU affinity of the Ray processes.
  2. Ray's scheduler is told, in the background: the CPU count is written to num_cpus_file (the node
     supervisor uses it at the next `ray start`); with live_resize the raylet's CPU total is changed in
     place through the GCS (what KubeRay's in-place resize uses in Ray 2.60; a busy node only shrinks
     down to the CPUs in use); when the node still has more CPUs than wanted and drain is on, the node
     is drained (`ray drain-node ... --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds
     S`): running tasks finish, nothing new is placed there, the raylet exits when idle. `ray start
     --block` does not exit when its raylet exits cleanly, so with restart_after_drain the throttle
     then ends that `ray start` process and the supervisor starts Ray again with the new count.

On SIGTERM/SIGINT the daemon lifts its operating-system limit (Ray is never left throttled by a
daemon that is not running), writes a final "stopped" status and exits 0. num_cpus_file is kept.
A daemon ended without a signal (Windows ends it at sign-out, and Task Scheduler when its task stops)
cannot do that: `--reset`, run by the system at boot, after a sign-out and periodically, does it when
no daemon runs for this configuration: normal priority and every CPU for Ray's processes, cpus_idle in
num_cpus_file and in Ray's scheduler (as when the machine goes idle), then a "reset" status.
The cluster's auth token is never read: Ray's subprocesses get RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "Config",
    "Decision",
    "Mode",
    "Observation",
    "Policy",
    "State",
    "build_config",
    "daemon_source",
    "decide",
    "load_config",
    "main",
    "render_config",
    "sudoers_rule",
    "validate",
]

CONFIG_VERSION = 1
EX_CONFIG = 78
PLATFORMS = ("linux", "darwin", "windows")
ACTIVITY_SOURCES = ("auto", "logind", "headless", "ioreg", "windows", "file")
MECHANISMS = ("auto", "systemd", "taskpolicy", "windows", "none")
GRAPHICAL_SESSION_TYPES = ("x11", "wayland", "mir")
DRAIN_REASON = "DRAIN_NODE_REASON_PREEMPTION"
HELPER_MARKER = "BITTRADER_THROTTLE_JSON:"
STATUS_HEARTBEAT_S = 30.0
PROCESS_REFRESH_S = 30.0
OS_RETRY_S = 30.0
SESSION_REFRESH_S = 30.0
RAY_RETRY_S = (15.0, 30.0, 60.0, 120.0, 300.0)

POLICY_DEFAULTS: dict[str, Any] = {
    "cpus_active": 2,
    "cpus_idle": None,  # None: every logical CPU of the machine
    "idle_threshold_s": 300,
    "battery_policy": "pause",
    "battery_min_percent": None,
    "hysteresis_s": 60,
    "load_guard": None,
    "poll_interval_s": 2,
    "activity_source": "auto",
    "activity_file": None,
    "live_resize": True,
    "drain": True,
    "drain_deadline_s": 600,
    "restart_after_drain": True,
}
MECHANISM_DEFAULTS: dict[str, Any] = {
    "kind": "auto",
    "pause_quota_percent": 5,
    "sudo": "/usr/bin/sudo",
    "systemctl": "/usr/bin/systemctl",
    "taskpolicy": "/usr/sbin/taskpolicy",
    "process_user": None,
}
PATHS_DEFAULTS: dict[str, Any] = {
    "log_file": None,
    "status_file": None,
    "num_cpus_file": None,
    "log_max_bytes": 1048576,
    "log_backups": 3,
}
RAY_DEFAULTS: dict[str, Any] = {
    "venv": None,
    "ray_bin": None,
    "python_bin": None,
    "head_address": None,
    "node_ip": None,
    "token_path": None,
    "unit": "bittrader-ray-worker.service",
    "env": {},
}
SECTIONS: dict[str, dict[str, Any]] = {
    "policy": POLICY_DEFAULTS,
    "mechanism": MECHANISM_DEFAULTS,
    "paths": PATHS_DEFAULTS,
    "ray": RAY_DEFAULTS,
}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """When Ray gets how many CPUs (the "policy" section of the configuration)."""

    cpus_active: int = 2
    cpus_idle: int = 1
    idle_threshold_s: float = 300.0
    battery_policy: str | int = "pause"
    battery_min_percent: float | None = None
    hysteresis_s: float = 60.0
    load_guard: float | None = None
    poll_interval_s: float = 2.0
    activity_source: str = "auto"
    activity_file: str | None = None
    live_resize: bool = True
    drain: bool = True
    drain_deadline_s: int = 600
    restart_after_drain: bool = True


@dataclass(frozen=True)
class MechanismSettings:
    """How the operating-system limit is applied (the "mechanism" section)."""

    kind: str = "auto"
    pause_quota_percent: int = 5
    sudo: str = "/usr/bin/sudo"
    systemctl: str = "/usr/bin/systemctl"
    taskpolicy: str = "/usr/sbin/taskpolicy"
    process_user: str | None = None


@dataclass(frozen=True)
class Paths:
    """Files the daemon writes (the "paths" section)."""

    log_file: str
    status_file: str
    num_cpus_file: str
    log_max_bytes: int = 1048576
    log_backups: int = 3


@dataclass(frozen=True)
class RaySettings:
    """How to reach Ray (the "ray" section). The token itself is never read."""

    venv: str | None = None
    ray_bin: str | None = None
    python_bin: str | None = None
    head_address: str | None = None
    node_ip: str | None = None
    token_path: str | None = None
    unit: str = "bittrader-ray-worker.service"
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    platform: str
    policy: Policy
    mechanism: MechanismSettings
    paths: Paths
    ray: RaySettings

    @property
    def activity_kind(self) -> str:
        """The activity source actually used ("auto" resolved for the platform)."""
        if self.policy.activity_source != "auto":
            return self.policy.activity_source
        return {"linux": "logind", "darwin": "ioreg", "windows": "windows"}[self.platform]

    @property
    def mechanism_kind(self) -> str:
        """The mechanism actually used ("auto" resolved for the platform)."""
        if self.mechanism.kind != "auto":
            return self.mechanism.kind
        return {"linux": "systemd", "darwin": "taskpolicy", "windows": "windows"}[self.platform]


def current_platform() -> str:
    """linux, darwin or windows: the platform this Python runs on."""
    if sys.platform.startswith("win"):
        return "windows"
    if sys.platform == "darwin":
        return "darwin"
    return "linux"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(float(value))


def _is_abs_path(value: object) -> bool:
    return isinstance(value, str) and (value.startswith("/") or bool(re.match(r"^[A-Za-z]:[\\/]", value)))


_ADDRESS_RE = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")
_IP_RE = re.compile(r"^[A-Za-z0-9.\-:]+$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\-]+\.service$")


def validate(raw: Mapping[str, Any]) -> list[str]:
    """Every problem of a configuration dict, as clear messages; an empty list when it is valid."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        return ["the configuration must be a JSON object"]
    for key in raw:
        if key not in ("version", "platform", *SECTIONS):
            errors.append(f"unknown key {key!r} (expected version, platform, {', '.join(SECTIONS)})")
    if raw.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        errors.append(f"version must be {CONFIG_VERSION} (got {raw.get('version')!r})")
    platform_name = raw.get("platform")
    if platform_name not in PLATFORMS:
        errors.append(f"platform must be one of {', '.join(PLATFORMS)} (got {platform_name!r})")
    sections: dict[str, dict[str, Any]] = {}
    for name, defaults in SECTIONS.items():
        section = raw.get(name, {})
        if not isinstance(section, dict):
            errors.append(f"{name} must be an object (got {section!r})")
            section = {}
        for key in section:
            if key not in defaults:
                errors.append(f"unknown key {name}.{key} (expected one of {', '.join(sorted(defaults))})")
        merged = dict(defaults)
        merged.update({k: v for k, v in section.items() if v is not None})
        sections[name] = merged
    errors.extend(_validate_policy(sections["policy"], platform_name))
    errors.extend(_validate_mechanism(sections["mechanism"], platform_name))
    errors.extend(_validate_paths(sections["paths"]))
    errors.extend(_validate_ray(sections["ray"], sections["policy"], sections["mechanism"], platform_name))
    return errors


def _validate_policy(p: dict[str, Any], platform_name: object) -> list[str]:
    errors: list[str] = []
    active, idle = p["cpus_active"], p["cpus_idle"]
    if not (_is_int(active) and active >= 0):
        errors.append(f"policy.cpus_active must be a whole number of CPUs >= 0 (got {active!r})")
    if idle is not None and not (_is_int(idle) and idle >= 1):
        errors.append(f"policy.cpus_idle must be a whole number of CPUs >= 1 (got {idle!r})")
    if _is_int(active) and _is_int(idle) and active > idle:
        errors.append(f"policy.cpus_active ({active}) must not exceed policy.cpus_idle ({idle})")
    threshold = p["idle_threshold_s"]
    if not (_is_number(threshold) and threshold > 0):
        errors.append(f"policy.idle_threshold_s must be a number of seconds > 0 (got {threshold!r})")
    battery = p["battery_policy"]
    if not (battery in ("pause", "ignore") or (_is_int(battery) and battery >= 0)):
        errors.append(
            f"policy.battery_policy must be 'pause', 'ignore' or a whole number of CPUs >= 0 (got {battery!r})"
        )
    minimum = p["battery_min_percent"]
    if minimum is not None and not (_is_number(minimum) and 0 < minimum <= 100):
        errors.append(f"policy.battery_min_percent must be empty or a percentage in 1..100 (got {minimum!r})")
    hysteresis = p["hysteresis_s"]
    if not (_is_number(hysteresis) and hysteresis >= 0):
        errors.append(f"policy.hysteresis_s must be a number of seconds >= 0 (got {hysteresis!r})")
    guard = p["load_guard"]
    if guard is not None and not (_is_number(guard) and 0 < guard <= 100):
        errors.append(f"policy.load_guard must be empty or a CPU load percentage in (0, 100] (got {guard!r})")
    poll = p["poll_interval_s"]
    if not (_is_number(poll) and 0.1 <= poll <= 5):
        errors.append(
            f"policy.poll_interval_s must be a number of seconds in 0.1..5 (the daemon must react within 5 s; "
            f"got {poll!r})"
        )
    source = p["activity_source"]
    if source not in ACTIVITY_SOURCES:
        errors.append(f"policy.activity_source must be one of {', '.join(ACTIVITY_SOURCES)} (got {source!r})")
    else:
        needs = {"logind": "linux", "ioreg": "darwin", "windows": "windows"}.get(str(source))
        if needs is not None and platform_name in PLATFORMS and platform_name != needs:
            errors.append(f"policy.activity_source {source!r} only works on {needs} (platform is {platform_name})")
    if source == "file" and not _is_abs_path(p["activity_file"]):
        errors.append(
            f"policy.activity_file must be an absolute path when activity_source is 'file' (got {p['activity_file']!r})"
        )
    if source != "file" and p["activity_file"] is not None:
        errors.append("policy.activity_file is only used with activity_source 'file'; remove it or set the source")
    for key in ("live_resize", "drain", "restart_after_drain"):
        if not isinstance(p[key], bool):
            errors.append(f"policy.{key} must be true or false (got {p[key]!r})")
    deadline = p["drain_deadline_s"]
    if not (_is_int(deadline) and deadline >= 0):
        errors.append(f"policy.drain_deadline_s must be a whole number of seconds >= 0 (got {deadline!r})")
    return errors


def _validate_mechanism(m: dict[str, Any], platform_name: object) -> list[str]:
    errors: list[str] = []
    kind = m["kind"]
    if kind not in MECHANISMS:
        errors.append(f"mechanism.kind must be one of {', '.join(MECHANISMS)} (got {kind!r})")
    else:
        needs = {"systemd": "linux", "taskpolicy": "darwin", "windows": "windows"}.get(str(kind))
        if needs is not None and platform_name in PLATFORMS and platform_name != needs:
            errors.append(f"mechanism.kind {kind!r} only works on {needs} (platform is {platform_name})")
    quota = m["pause_quota_percent"]
    if not (_is_int(quota) and 1 <= quota <= 100):
        errors.append(
            f"mechanism.pause_quota_percent must be a whole percentage in 1..100 (never 0: nothing is killed; "
            f"got {quota!r})"
        )
    for key in ("sudo", "systemctl", "taskpolicy"):
        if not _is_abs_path(m[key]):
            errors.append(f"mechanism.{key} must be an absolute path (got {m[key]!r})")
    if m["process_user"] is not None and not isinstance(m["process_user"], str):
        errors.append(f"mechanism.process_user must be a user name (got {m['process_user']!r})")
    return errors


def _validate_paths(p: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    for key in ("log_file", "status_file", "num_cpus_file"):
        if not _is_abs_path(p[key]):
            errors.append(f"paths.{key} must be an absolute path (got {p[key]!r})")
    if not (_is_int(p["log_max_bytes"]) and p["log_max_bytes"] >= 4096):
        errors.append(f"paths.log_max_bytes must be a whole number >= 4096 (got {p['log_max_bytes']!r})")
    if not (_is_int(p["log_backups"]) and p["log_backups"] >= 0):
        errors.append(f"paths.log_backups must be a whole number >= 0 (got {p['log_backups']!r})")
    return errors


def _validate_ray(r: dict[str, Any], policy: dict[str, Any], mech: dict[str, Any], platform_name: object) -> list[str]:
    errors: list[str] = []
    for key in ("venv", "ray_bin", "python_bin", "token_path"):
        if r[key] is not None and not _is_abs_path(r[key]):
            errors.append(f"ray.{key} must be an absolute path (got {r[key]!r})")
    talks_to_ray = policy.get("live_resize") is True or policy.get("drain") is True
    if talks_to_ray:
        if r["venv"] is None and (r["ray_bin"] is None or r["python_bin"] is None):
            errors.append("ray.venv (or ray.ray_bin and ray.python_bin) is required when live_resize or drain is on")
        if not (isinstance(r["head_address"], str) and _ADDRESS_RE.match(r["head_address"])):
            errors.append(
                f"ray.head_address must be the head's HOST:PORT when live_resize or drain is on "
                f"(got {r['head_address']!r})"
            )
        if not (isinstance(r["node_ip"], str) and _IP_RE.match(r["node_ip"])):
            errors.append(
                f"ray.node_ip must be the address this node advertises to Ray when live_resize or drain is on "
                f"(got {r['node_ip']!r})"
            )
    kind = mech.get("kind")
    uses_systemd = kind == "systemd" or (kind == "auto" and platform_name == "linux")
    if uses_systemd and not (isinstance(r["unit"], str) and _UNIT_RE.match(r["unit"])):
        errors.append(f"ray.unit must be the Ray systemd unit, like bittrader-ray-worker.service (got {r['unit']!r})")
    env = r["env"]
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        errors.append("ray.env must be an object of string values")
    elif any(k.upper() == "RAY_AUTH_TOKEN" for k in env):
        errors.append("ray.env must not carry RAY_AUTH_TOKEN: give ray.token_path (the token is never copied)")
    return errors


def config_from_dict(raw: Mapping[str, Any], cpu_count: int | None = None) -> Config:
    """A Config from a dict that validate() accepted (defaults filled in)."""
    errors = validate(raw)
    if errors:
        raise ValueError("; ".join(errors))
    merged: dict[str, dict[str, Any]] = {}
    for name, defaults in SECTIONS.items():
        section = dict(defaults)
        section.update({k: v for k, v in dict(raw.get(name, {})).items() if v is not None})
        merged[name] = section
    policy = dict(merged["policy"])
    if policy["cpus_idle"] is None:
        policy["cpus_idle"] = max(1, cpu_count or os.cpu_count() or 1)
    for key in ("idle_threshold_s", "hysteresis_s", "poll_interval_s"):
        policy[key] = float(policy[key])
    for key in ("battery_min_percent", "load_guard"):
        if policy[key] is not None:
            policy[key] = float(policy[key])
    ray_section = dict(merged["ray"])
    ray_section["env"] = dict(ray_section["env"])
    return Config(
        platform=str(raw["platform"]),
        policy=Policy(**policy),
        mechanism=MechanismSettings(**merged["mechanism"]),
        paths=Paths(**merged["paths"]),
        ray=RaySettings(**ray_section),
    )


def load_config(path: str) -> Config:
    """Read, validate and return the configuration file; ValueError names every problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return config_from_dict(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def build_config(
    platform: str,
    policy: Mapping[str, Any] | None = None,
    mechanism: Mapping[str, Any] | None = None,
    paths: Mapping[str, Any] | None = None,
    ray: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration dict the daemon reads, from its sections (keys whose value is None are left
    out, so the daemon's defaults apply). Used by the Ansible module; validate() the result."""
    config: dict[str, Any] = {"version": CONFIG_VERSION, "platform": platform}
    for name, section in (("policy", policy), ("mechanism", mechanism), ("paths", paths), ("ray", ray)):
        config[name] = {k: v for k, v in dict(section or {}).items() if v is not None}
    battery = config["policy"].get("battery_policy")
    if isinstance(battery, str) and battery.strip().isdigit():
        config["policy"]["battery_policy"] = int(battery.strip())
    return config


def render_config(config: Mapping[str, Any]) -> str:
    """The configuration file's text: stable key order, one trailing newline."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------------------------------
# Decisions (pure: injectable clock through `now`)
# --------------------------------------------------------------------------------------------------


class Mode(str, Enum):  # noqa: UP042 - StrEnum is 3.11+; the module side runs on the host's Python
    """What the throttle is doing."""

    ACTIVE = "active"
    IDLE = "idle"
    BATTERY = "battery"


@dataclass(frozen=True)
class Observation:
    """What the machine looks like now. idle_seconds None: unknown (treated as active); math.inf:
    nobody can use it (headless). on_battery None: no battery (a desktop). cpu_load: percent of the
    whole machine used by everything but Ray, None when not measured."""

    idle_seconds: float | None
    on_battery: bool | None = None
    battery_percent: float | None = None
    cpu_load: float | None = None


@dataclass(frozen=True)
class State:
    """The throttle's memory between decisions. mode None: nothing applied yet (start-up)."""

    mode: Mode | None
    cpus: int
    since: float = -math.inf
    load_high_at: float | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation. changed: the caller must apply cpus_after. held: a change was
    wanted but hysteresis postponed it."""

    state: Mode
    reason: str
    cpus_before: int
    cpus_after: int
    changed: bool
    held: bool
    next_state: State

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "cpus_before": self.cpus_before,
            "cpus_after": self.cpus_after,
            "changed": self.changed,
            "held": self.held,
        }


def _fmt_s(seconds: float) -> str:
    return "ever" if math.isinf(seconds) else f"{seconds:.0f} s"


def _presence(state: State, obs: Observation, policy: Policy, now: float) -> tuple[bool, str, float | None]:
    """(someone is using the machine, why, updated load_high_at)."""
    load_high_at = state.load_high_at
    load_now = policy.load_guard is not None and obs.cpu_load is not None and obs.cpu_load >= policy.load_guard
    if load_now:
        load_high_at = now
    if obs.idle_seconds is None:
        return True, "activity unknown (assumed active)", load_high_at
    if obs.idle_seconds < policy.idle_threshold_s:
        return True, f"input {_fmt_s(obs.idle_seconds)} ago", load_high_at
    if load_now:
        return True, f"non-Ray CPU load {obs.cpu_load:.0f}% >= load_guard {policy.load_guard:.0f}%", load_high_at
    if load_high_at is not None and now - load_high_at < policy.idle_threshold_s:
        return True, f"non-Ray CPU load above load_guard {_fmt_s(now - load_high_at)} ago", load_high_at
    if math.isinf(obs.idle_seconds):
        return False, "no user session (headless)", load_high_at
    return False, f"no input for {_fmt_s(obs.idle_seconds)}", load_high_at


def target(state: State, obs: Observation, policy: Policy, now: float) -> tuple[Mode, int, str, float | None]:
    """The mode and CPU count wanted now, ignoring hysteresis: (mode, cpus, reason, load_high_at)."""
    present, why, load_high_at = _presence(state, obs, policy, now)
    mode, cpus = (Mode.ACTIVE, policy.cpus_active) if present else (Mode.IDLE, policy.cpus_idle)
    if obs.on_battery:
        pct = obs.battery_percent
        pct_text = "" if pct is None else f" at {pct:.0f}%"
        if policy.battery_min_percent is not None and pct is not None and pct < policy.battery_min_percent:
            low = f"on battery{pct_text} < {policy.battery_min_percent:.0f}%: paused; {why}"
            return Mode.BATTERY, 0, low, load_high_at
        if policy.battery_policy == "pause":
            return Mode.BATTERY, 0, f"on battery{pct_text}: paused; {why}", load_high_at
        if isinstance(policy.battery_policy, int) and policy.battery_policy < cpus:
            limit = policy.battery_policy
            return Mode.BATTERY, limit, f"on battery{pct_text}: at most {limit} CPUs; {why}", load_high_at
    return mode, cpus, why, load_high_at


def decide(state: State, observation: Observation, config: Config, now: float) -> Decision:
    """One evaluation. Fewer CPUs for Ray (owner back, unplugged) apply at once; more CPUs only when
    hysteresis_s have passed since the last change; the first decision always applies."""
    policy = config.policy
    mode, cpus, reason, load_high_at = target(state, observation, policy, now)
    kept = replace(state, load_high_at=load_high_at)
    current = state.mode if state.mode is not None else mode
    if state.mode is not None and mode == state.mode and cpus == state.cpus:
        return Decision(current, reason, state.cpus, state.cpus, False, False, kept)
    waited = now - state.since
    if state.mode is not None and cpus > state.cpus and waited < policy.hysteresis_s:
        left = policy.hysteresis_s - waited
        held_reason = f"{reason}; wants {mode.value} ({cpus} CPUs) in {left:.0f} s (hysteresis)"
        return Decision(current, held_reason, state.cpus, state.cpus, False, True, kept)
    new_state = State(mode=mode, cpus=cpus, since=now, load_high_at=load_high_at)
    return Decision(mode, reason, state.cpus, cpus, True, False, new_state)


def possible_cpu_counts(policy: Policy) -> list[int]:
    """Every CPU count decide() can choose with this policy (for the sudoers rule)."""
    counts = {policy.cpus_active, policy.cpus_idle}
    if policy.battery_policy == "pause" or policy.battery_min_percent is not None:
        counts.add(0)
    if isinstance(policy.battery_policy, int):
        counts.update(min(policy.battery_policy, c) for c in (policy.cpus_active, policy.cpus_idle))
    return sorted(counts)


# --------------------------------------------------------------------------------------------------
# Commands (injectable runner)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def brief(self) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return f"exit {self.returncode}" + (f": {text[-1][:200]}" if text else "")


if TYPE_CHECKING:
    Runner = Callable[[Sequence[str], "Mapping[str, str] | None", float], CommandResult]


def run_command(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30.0) -> CommandResult:
    """Run a command without a shell; never raises (127: not found, 124: timed out)."""
    try:
        done = subprocess.run(
            list(argv),
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        return CommandResult(127, "", f"{argv[0]}: not found ({exc.strerror})")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{argv[0]}: timed out after {timeout:.0f} s")
    except OSError as exc:
        return CommandResult(126, "", f"{argv[0]}: {exc}")
    return CommandResult(done.returncode, done.stdout or "", done.stderr or "")


def _psutil() -> Any:
    import psutil  # lazily: the Ansible module imports this file where psutil is missing

    return psutil


# --------------------------------------------------------------------------------------------------
# Activity sources
# --------------------------------------------------------------------------------------------------


class ActivitySource(Protocol):
    """Seconds since the last user input: None when unknown, math.inf when nobody can use the machine."""

    name: str

    def idle_seconds(self) -> float | None: ...


_IOREG_IDLE_RE = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')


def parse_ioreg_idle(output: str) -> float | None:
    """Seconds since the last input from `ioreg -c IOHIDSystem` (HIDIdleTime is in nanoseconds)."""
    match = _IOREG_IDLE_RE.search(output)
    return None if match is None else int(match.group(1)) / 1e9


def parse_session_ids(output: str) -> list[str]:
    """Session ids from `loginctl list-sessions --no-legend` (the first column, any systemd version)."""
    ids: list[str] = []
    for line in output.splitlines():
        parts = line.split()
        if parts and re.match(r"^[A-Za-z0-9_-]+$", parts[0]) and parts[0].upper() != "SESSION":
            ids.append(parts[0])
    return ids


def parse_show_session(output: str) -> list[dict[str, str]]:
    """Property blocks of `loginctl show-session ID... -p ...` (one block per session, blank-line separated)."""
    sessions: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in output.splitlines():
        if not line.strip():
            if current:
                sessions.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            if key in current:  # no blank line between blocks: a new session begins
                sessions.append(current)
                current = {}
            current[key.strip()] = value.strip()
    if current:
        sessions.append(current)
    return sessions


def graphical_idle_seconds(sessions: Iterable[Mapping[str, str]], now: float) -> float:
    """Idle seconds from logind sessions: graphical user sessions count (any not idle: 0); none: headless."""
    graphical = [
        s
        for s in sessions
        if s.get("Type") in GRAPHICAL_SESSION_TYPES
        and s.get("Class", "user") == "user"
        and s.get("State", "active") != "closing"
    ]
    if not graphical:
        return math.inf
    if any(s.get("IdleHint", "no") != "yes" for s in graphical):
        return 0.0
    since_us = [int(s.get("IdleSinceHint", "0") or 0) for s in graphical]
    latest = max(since_us)
    if latest <= 0:
        return math.inf
    return max(0.0, now - latest / 1e6)


LOGIND_PROPERTIES = ("Id", "Type", "Class", "State", "Remote", "IdleHint", "IdleSinceHint")


class LogindSource:
    """Linux: logind's idle hint of graphical sessions (set by the desktop after its own idle delay)."""

    name = "logind"

    def __init__(
        self, runner: Runner = run_command, loginctl: str = "loginctl", clock: Callable[[], float] = time.time
    ) -> None:
        self._runner = runner
        self._loginctl = loginctl
        self._clock = clock
        self._ids: list[str] = []
        self._ids_at = -math.inf

    def _session_ids(self, refresh: bool = False) -> list[str] | None:
        now = self._clock()
        if refresh or now - self._ids_at >= SESSION_REFRESH_S:
            result = self._runner([self._loginctl, "list-sessions", "--no-legend"], None, 10.0)
            if not result.ok:
                return None
            self._ids = parse_session_ids(result.stdout)
            self._ids_at = now
        return self._ids

    def idle_seconds(self) -> float | None:
        for attempt in (0, 1):
            ids = self._session_ids(refresh=attempt == 1)
            if ids is None:
                return None
            if not ids:
                return math.inf
            argv = [self._loginctl, "show-session", *ids]
            for prop in LOGIND_PROPERTIES:
                argv += ["-p", prop]
            result = self._runner(argv, None, 10.0)
            if result.ok:
                return graphical_idle_seconds(parse_show_session(result.stdout), self._clock())
        return None  # a session vanished twice in a row: unknown this time


class IoregSource:
    """macOS: HIDIdleTime of IOHIDSystem (works from any user, with or without a GUI login)."""

    name = "ioreg"

    def __init__(self, runner: Runner = run_command, ioreg: str = "/usr/sbin/ioreg") -> None:
        self._runner = runner
        self._ioreg = ioreg

    def idle_seconds(self) -> float | None:
        result = self._runner([self._ioreg, "-c", "IOHIDSystem", "-r", "-d", "1"], None, 10.0)
        return parse_ioreg_idle(result.stdout) if result.ok else None


class WindowsSource:
    """Windows: GetLastInputInfo (input of the session the daemon runs in: run it in the owner's
    logon session, e.g. a scheduled task at logon, not as a session-0 service)."""

    name = "windows"

    def __init__(self, user32: Any = None, kernel32: Any = None) -> None:
        import ctypes  # only needed on Windows

        class LastInputInfo(ctypes.Structure):
            _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint)]

        self._ctypes = ctypes
        self._info_type = LastInputInfo
        windll = getattr(ctypes, "windll", None)
        self._user32 = user32 if user32 is not None else getattr(windll, "user32", None)
        self._kernel32 = kernel32 if kernel32 is not None else getattr(windll, "kernel32", None)

    def idle_seconds(self) -> float | None:
        if self._user32 is None or self._kernel32 is None:
            return None
        info = self._info_type()
        info.cbSize = self._ctypes.sizeof(info)
        if not self._user32.GetLastInputInfo(self._ctypes.byref(info)):
            return None
        ticks = int(self._kernel32.GetTickCount()) & 0xFFFFFFFF
        return ((ticks - int(info.dwTime)) & 0xFFFFFFFF) / 1000.0


class FileSource:
    """Test source: the file holds "active", "idle" or a number of idle seconds. Read only when the
    configuration names it; a missing or unreadable file means unknown (active)."""

    name = "file"

    def __init__(self, path: str) -> None:
        self._path = path

    def idle_seconds(self) -> float | None:
        try:
            with open(self._path, encoding="utf-8") as handle:
                text = handle.read(64).strip().lower()
        except OSError:
            return None
        if text == "active":
            return 0.0
        if text == "idle":
            return math.inf
        try:
            value = float(text)
        except ValueError:
            return None
        return value if value >= 0 else None


class HeadlessSource:
    """A machine nobody sits at: always idle."""

    name = "headless"

    def idle_seconds(self) -> float | None:
        return math.inf


def make_activity_source(config: Config, runner: Runner = run_command) -> ActivitySource:
    kind = config.activity_kind
    if kind == "file":
        return FileSource(str(config.policy.activity_file))
    if kind == "headless":
        return HeadlessSource()
    if kind == "ioreg":
        return IoregSource(runner)
    if kind == "windows":
        return WindowsSource()
    loginctl = shutil.which("loginctl")
    return LogindSource(runner, loginctl) if loginctl else HeadlessSource()


def read_battery(psutil_mod: Any) -> tuple[bool | None, float | None]:
    """(on battery, percent) from psutil.sensors_battery(); (None, None) without a battery."""
    sensors = getattr(psutil_mod, "sensors_battery", None)
    if sensors is None:
        return None, None
    try:
        battery = sensors()
    except Exception:  # noqa: BLE001 - a broken sensor must not stop the throttle
        return None, None
    if battery is None:
        return None, None
    plugged = getattr(battery, "power_plugged", None)
    percent = getattr(battery, "percent", None)
    on_battery = None if plugged is None else not plugged
    return on_battery, None if percent is None else float(percent)


# --------------------------------------------------------------------------------------------------
# Ray processes and CPU load
# --------------------------------------------------------------------------------------------------

RAY_PROCESS_NAMES = ("raylet", "gcs_server", "raylet.exe", "gcs_server.exe")
RAY_CMDLINE_MARKERS = (
    "default_worker.py",
    "ray/_private/",
    "ray\\_private\\",
    "ray/dashboard/",
    "ray\\dashboard\\",
    "ray/autoscaler/",
    "ray\\autoscaler\\",
    "ray/util/client/server",
    "ray\\util\\client\\server",
    "runtime_env/agent",
    "runtime_env\\agent",
)


def is_ray_process(name: str, cmdline: Sequence[str]) -> bool:
    """A process of a Ray node (raylet, GCS, workers, agents), from its name and command line."""
    if name.lower() in RAY_PROCESS_NAMES or name.startswith("ray::"):
        return True
    if cmdline and cmdline[0].startswith("ray::"):
        return True
    joined = " ".join(cmdline)
    if "bittrader-throttle" in joined:
        return False
    return any(marker in joined for marker in RAY_CMDLINE_MARKERS)


def is_ray_start_block(cmdline: Sequence[str], ray_bin: str | None = None, node_ip: str | None = None) -> bool:
    """The `ray start ... --block` process a supervisor runs; with ray_bin, only that venv's `ray`; with
    node_ip, not one started for another address (--node-ip-address)."""
    for index, arg in enumerate(cmdline):
        base = re.split(r"[\\/]", arg)[-1].lower()
        if base in ("ray", "ray.exe") and "start" in cmdline[index + 1 :]:
            if "--block" not in cmdline:
                return False
            if ray_bin is not None and os.path.normcase(arg) != os.path.normcase(ray_bin):
                return False
            return node_ip is None or _started_for(cmdline, node_ip)
    return False


def _started_for(cmdline: Sequence[str], node_ip: str) -> bool:
    for index, arg in enumerate(cmdline):
        if arg.startswith("--node-ip-address="):
            return arg.split("=", 1)[1] == node_ip
        if arg == "--node-ip-address" and index + 1 < len(cmdline):
            return cmdline[index + 1] == node_ip
    return True


def default_user() -> str | None:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name: match on processes only
        return None


def _same_user(process_user: str | None, wanted: str | None) -> bool:
    if process_user is None or wanted is None:
        return False
    return process_user.split("\\")[-1].lower() == wanted.split("\\")[-1].lower()


def owned(proc: Any, username: str | None, wanted: str | None) -> bool:
    """A process of the wanted account: the named user when given, else the daemon's own account (its
    uid on Linux and macOS). Never "anyone": an unknown owner does not match."""
    if wanted is not None:
        return _same_user(username, wanted)
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        try:
            return int(proc.uids().real) == getuid()
        except Exception:  # noqa: BLE001 - no uid: not ours
            return False
    return _same_user(username, default_user())


class RayProcesses:
    """The Ray processes of one user, refreshed at most every PROCESS_REFRESH_S seconds."""

    def __init__(self, psutil_mod: Any, user: str | None, clock: Callable[[], float] = time.time) -> None:
        self._psutil = psutil_mod
        self._user = user
        self._clock = clock
        self._procs: dict[int, Any] = {}
        self._at = -math.inf

    def get(self, refresh: bool = False) -> list[Any]:
        now = self._clock()
        if refresh or now - self._at >= PROCESS_REFRESH_S:
            found: dict[int, Any] = {}
            own = os.getpid()
            for proc in self._psutil.process_iter(["name", "username"]):
                try:
                    info = proc.info
                    if proc.pid == own or not owned(proc, info.get("username"), self._user):
                        continue
                    name = info.get("name") or ""
                    cmdline: list[str] = []
                    if name.lower() not in RAY_PROCESS_NAMES:
                        cmdline = proc.cmdline()
                    if is_ray_process(name, cmdline):
                        found[proc.pid] = self._procs.get(proc.pid, proc)
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                    continue
            self._procs = found
            self._at = now
        return list(self._procs.values())


def cgroup_cpu_file(unit: str) -> str | None:
    """The cgroup file counting the CPU time of a systemd system unit (v2 cpu.stat, v1 cpuacct.usage)."""
    candidates = (
        f"/sys/fs/cgroup/system.slice/{unit}/cpu.stat",
        f"/sys/fs/cgroup/cpuacct/system.slice/{unit}/cpuacct.usage",
    )
    for path in candidates:
        if os.path.exists(path):
            return path
    return None


def read_cgroup_cpu_seconds(path: str) -> float | None:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    if path.endswith("cpu.stat"):
        match = re.search(r"^usage_usec\s+(\d+)", text, re.MULTILINE)
        return None if match is None else int(match.group(1)) / 1e6
    try:
        return int(text.strip()) / 1e9
    except ValueError:
        return None


class CgroupCpuCounter:
    """Cumulative CPU seconds of Ray's systemd unit, from its cgroup (one small file read). None while
    the unit is not running (its cgroup exists only then)."""

    def __init__(self, unit: str) -> None:
        self.unit = unit

    def __call__(self) -> float | None:
        path = cgroup_cpu_file(self.unit)
        return None if path is None else read_cgroup_cpu_seconds(path)


class LoadMeter:
    """CPU load of everything but Ray, in percent of the machine, between two samples."""

    def __init__(self, psutil_mod: Any, ray_seconds: Callable[[], float | None], clock: Callable[[], float]) -> None:
        self._psutil = psutil_mod
        self._ray_seconds = ray_seconds
        self._clock = clock
        self._cpus = max(1, int(psutil_mod.cpu_count() or 1))
        self._last: tuple[float, float, float] | None = None

    def _busy_seconds(self) -> float:
        times = self._psutil.cpu_times()
        idle = float(getattr(times, "idle", 0.0)) + float(getattr(times, "iowait", 0.0))
        guests = float(getattr(times, "guest", 0.0)) + float(getattr(times, "guest_nice", 0.0))
        total = sum(float(v) for v in times) - guests
        return total - idle

    def sample(self) -> float | None:
        now = self._clock()
        busy = self._busy_seconds()
        ray = self._ray_seconds()
        last, self._last = self._last, (now, busy, ray if ray is not None else 0.0)
        if last is None or ray is None or now - last[0] <= 0:
            return None
        ray_used = ray - last[2]
        if ray_used < 0:  # Ray restarted: its counter began again
            return None
        other = (busy - last[1]) - ray_used
        return max(0.0, min(100.0, other / ((now - last[0]) * self._cpus) * 100.0))


class ProcessCpuCounter:
    """Cumulative CPU seconds of the Ray processes (deltas of processes seen in two samples)."""

    def __init__(self, processes: RayProcesses, psutil_mod: Any) -> None:
        self._processes = processes
        self._psutil = psutil_mod
        self._seen: dict[int, float] = {}
        self._total = 0.0

    def __call__(self) -> float:
        seen: dict[int, float] = {}
        for proc in self._processes.get():
            try:
                times = proc.cpu_times()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue
            used = float(times.user) + float(times.system)
            if proc.pid in self._seen:
                self._total += max(0.0, used - self._seen[proc.pid])
            seen[proc.pid] = used
        self._seen = seen
        return self._total


# --------------------------------------------------------------------------------------------------
# Operating-system mechanisms
# --------------------------------------------------------------------------------------------------


class Mechanism(Protocol):
    """Limits the Ray processes at once. apply/release/refresh return a one-line result."""

    name: str

    def apply(self, cpus: int) -> str: ...

    def release(self) -> str: ...

    def refresh(self) -> str | None: ...


def quota_percent(cpus: int, pause_percent: int) -> int:
    """CPUQuota for a CPU count: 100% per CPU; 0 CPUs (paused) gets pause_percent, never 0."""
    return pause_percent if cpus <= 0 else cpus * 100


class SystemdQuota:
    """Linux: CPUQuota on Ray's systemd unit, through sudo (runtime only: gone at reboot)."""

    name = "systemd"

    def __init__(
        self, settings: MechanismSettings, unit: str, runner: Runner = run_command, as_root: bool = False
    ) -> None:
        self._settings = settings
        self._unit = unit
        self._runner = runner
        self._prefix = [] if as_root else [settings.sudo, "-n"]

    def argv(self, value: str) -> list[str]:
        return [*self._prefix, self._settings.systemctl, "set-property", "--runtime", self._unit, f"CPUQuota={value}"]

    def _set(self, value: str, timeout: float = 30.0) -> str:
        result = self._runner(self.argv(value), None, timeout)
        shown = value or "(none)"
        return f"CPUQuota={shown} on {self._unit}: " + ("ok" if result.ok else f"failed ({result.brief()})")

    def apply(self, cpus: int) -> str:
        return self._set(f"{quota_percent(cpus, self._settings.pause_quota_percent)}%")

    def release(self) -> str:
        return self._set("", timeout=10.0)

    def refresh(self) -> str | None:
        return None


class _ProcessMechanism:
    """Shared part of the per-process mechanisms: remembers the level given to each Ray process and
    gives newly started Ray processes the current level at each refresh."""

    name = "process"

    def __init__(self, processes: RayProcesses, psutil_mod: Any, full_cpus: int) -> None:
        self._processes = processes
        self._psutil = psutil_mod
        self._full = full_cpus
        self._cpus: int | None = None
        self._applied: dict[int, int] = {}

    def _set(self, proc: Any, cpus: int) -> str | None:
        raise NotImplementedError

    def _label(self, cpus: int | None) -> str:
        raise NotImplementedError

    def _apply_all(self, cpus: int, refresh: bool, only_new: bool) -> str:
        procs = self._processes.get(refresh=refresh)
        done, failed = 0, []
        applied: dict[int, int] = {}
        for proc in procs:
            if only_new and self._applied.get(proc.pid) == cpus:
                applied[proc.pid] = cpus
                continue
            try:
                error = self._set(proc, cpus)
            except (self._psutil.NoSuchProcess, self._psutil.ZombieProcess):
                continue
            except Exception as exc:  # noqa: BLE001 - report and go on with the other processes
                error = str(exc)
            if error is None:
                done += 1
                applied[proc.pid] = cpus
            else:
                failed.append(f"{proc.pid}: {error}")
        self._applied = applied
        text = f"{self._label(cpus)} on {done} Ray processes"
        if failed:
            text += f", failed on {len(failed)} ({'; '.join(failed[:3])})"
        return text

    def apply(self, cpus: int) -> str:
        self._cpus = cpus
        return self._apply_all(cpus, refresh=True, only_new=False)

    def release(self) -> str:
        self._cpus = None
        return self._apply_all(self._full, refresh=True, only_new=False)

    def refresh(self) -> str | None:
        if self._cpus is None:
            return None
        before = set(self._applied)
        text = self._apply_all(self._cpus, refresh=False, only_new=True)
        return None if set(self._applied) == before else text


class TaskpolicyMechanism(_ProcessMechanism):
    """macOS: `taskpolicy -b -p PID` (darwin background: lowest CPU priority, throttled I/O, efficiency
    cores on Apple silicon) while Ray has fewer than all its CPUs; `taskpolicy -B -p PID` otherwise.
    No renice: a normal user cannot lower a nice value again."""

    name = "taskpolicy"

    def __init__(
        self, processes: RayProcesses, psutil_mod: Any, full_cpus: int, taskpolicy: str, runner: Runner = run_command
    ) -> None:
        super().__init__(processes, psutil_mod, full_cpus)
        self._taskpolicy = taskpolicy
        self._runner = runner

    def argv(self, pid: int, cpus: int) -> list[str]:
        return [self._taskpolicy, "-b" if cpus < self._full else "-B", "-p", str(pid)]

    def _set(self, proc: Any, cpus: int) -> str | None:
        result = self._runner(self.argv(proc.pid, cpus), None, 10.0)
        return None if result.ok else result.brief()

    def _label(self, cpus: int | None) -> str:
        return "background (taskpolicy -b)" if cpus is not None and cpus < self._full else "normal (taskpolicy -B)"


WINDOWS_PRIORITY = {"NORMAL_PRIORITY_CLASS": 0x20, "BELOW_NORMAL_PRIORITY_CLASS": 0x4000, "IDLE_PRIORITY_CLASS": 0x40}


class WindowsMechanism(_ProcessMechanism):
    """Windows: priority class (below normal while throttled, idle while paused) and CPU affinity
    (the first N logical CPUs, at least 1) of the Ray processes; both are inherited by new workers."""

    name = "windows"

    def __init__(self, processes: RayProcesses, psutil_mod: Any, full_cpus: int, logical_cpus: int) -> None:
        super().__init__(processes, psutil_mod, full_cpus)
        self._logical = max(1, logical_cpus)

    def priority(self, cpus: int) -> int:
        if cpus <= 0:
            key = "IDLE_PRIORITY_CLASS"
        elif cpus < self._full:
            key = "BELOW_NORMAL_PRIORITY_CLASS"
        else:
            key = "NORMAL_PRIORITY_CLASS"
        return int(getattr(self._psutil, key, WINDOWS_PRIORITY[key]))

    def affinity(self, cpus: int) -> list[int]:
        count = self._logical if cpus >= self._full else min(self._logical, max(1, cpus))
        return list(range(count))

    def _set(self, proc: Any, cpus: int) -> str | None:
        proc.nice(self.priority(cpus))
        proc.cpu_affinity(self.affinity(cpus))
        return None

    def _label(self, cpus: int | None) -> str:
        level = self._full if cpus is None else cpus
        return f"priority {self.priority(level):#x}, {len(self.affinity(level))} CPUs affinity"


class NoMechanism:
    """No operating-system limit (tests, or Ray's scheduler alone)."""

    name = "none"

    def apply(self, cpus: int) -> str:
        return "no OS limit (mechanism none)"

    def release(self) -> str:
        return "no OS limit (mechanism none)"

    def refresh(self) -> str | None:
        return None


def make_mechanism(
    config: Config, runner: Runner = run_command, psutil_mod: Any = None, processes: RayProcesses | None = None
) -> Mechanism:
    kind = config.mechanism_kind
    if kind == "none":
        return NoMechanism()
    if kind == "systemd":
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        return SystemdQuota(config.mechanism, config.ray.unit, runner, as_root=as_root)
    psutil_mod = psutil_mod if psutil_mod is not None else _psutil()
    if processes is None:
        processes = RayProcesses(psutil_mod, config.mechanism.process_user)
    if kind == "taskpolicy":
        return TaskpolicyMechanism(processes, psutil_mod, config.policy.cpus_idle, config.mechanism.taskpolicy, runner)
    return WindowsMechanism(processes, psutil_mod, config.policy.cpus_idle, int(psutil_mod.cpu_count() or 1))


# --------------------------------------------------------------------------------------------------
# Ray's scheduler: num_cpus_file, live resize, drain
# --------------------------------------------------------------------------------------------------

# Run by the venv's Python (`python -c RAY_HELPER ARGS_JSON`), never imported here: it reads the alive
# nodes at node_ip from the GCS and, with "resize", changes the worker raylet's CPU total in place.
RAY_HELPER = r"""
import json, sys
args = json.loads(sys.argv[1])
out = {"nodes": [], "resized": None, "error": None}
try:
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest
    client = GcsClient(address=args["address"])
    selector = GetAllNodeInfoRequest.NodeSelector(node_ip_address=args["node_ip"])
    infos = client.get_all_node_info(
        timeout=args["timeout"], node_selectors=[selector], state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
    for info in infos.values():
        out["nodes"].append({"node_id": info.node_id.hex(), "is_head": bool(info.is_head_node),
                             "cpus": float(info.resources_total.get("CPU", 0.0))})
    workers = [n for n in out["nodes"] if not n["is_head"]]
    if args.get("resize") is not None and len(workers) == 1:
        total = client.resize_raylet_resource_instances(
            workers[0]["node_id"], {"CPU": float(args["resize"])}, timeout_s=args["timeout"])
        out["resized"] = {"node_id": workers[0]["node_id"], "cpus": float(total.get("CPU", 0.0))}
except Exception as exc:
    out["error"] = (type(exc).__name__ + ": " + str(exc))[:300]
print("BITTRADER_THROTTLE_JSON:" + json.dumps(out))
"""


def parse_helper_output(output: str) -> dict[str, Any] | None:
    for line in output.splitlines():
        if line.startswith(HELPER_MARKER):
            try:
                data = json.loads(line[len(HELPER_MARKER) :])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def write_atomic(path: str, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a part."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_num_cpus_file(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(32).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class RaySync:
    """Brings Ray's scheduler to the wanted CPU count. attempt() is one synchronous try (tested with a
    fake runner); the daemon calls it from a background thread, so a slow GCS never delays the OS limit."""

    def __init__(
        self,
        config: Config,
        runner: Runner = run_command,
        clock: Callable[[], float] = time.time,
        terminate_ray_start: Callable[[], list[int]] | None = None,
    ) -> None:
        self._config = config
        self._runner = runner
        self._clock = clock
        self.terminate_ray_start = terminate_ray_start
        self._lock = threading.Lock()
        self.desired: int | None = None
        self.reason = ""
        self.pending = False
        self.next_try = math.inf
        self.retries = 0
        self.drained_node: str | None = None
        self.last_result = ""
        self._generation = 0
        ray = config.ray
        scripts = "Scripts" if config.platform == "windows" else "bin"
        exe = ".exe" if config.platform == "windows" else ""
        venv = ray.venv or ""
        self.ray_bin = ray.ray_bin or os.path.join(venv, scripts, "ray" + exe)
        self.python_bin = ray.python_bin or os.path.join(venv, scripts, "python" + exe)

    @property
    def enabled(self) -> bool:
        return self._config.policy.live_resize or self._config.policy.drain

    def env(self) -> dict[str, str]:
        """Environment of the Ray subprocesses: the token by path only, never by value."""
        env = dict(os.environ)
        env.update(self._config.ray.env)
        if self._config.ray.token_path:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = self._config.ray.token_path
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        return env

    def request(self, cpus: int, reason: str) -> str:
        """Record the wanted count: num_cpus_file at once, the GCS at the next attempt()."""
        path = self._config.paths.num_cpus_file
        try:
            write_atomic(path, f"{cpus}\n")
            text = f"num_cpus_file={cpus}"
        except OSError as exc:
            text = f"cannot write {path}: {exc.strerror or exc}"
        with self._lock:
            self.desired = cpus
            self.reason = reason
            self._generation += 1
            if self.enabled:
                self.pending = True
                self.retries = 0
                self.next_try = self._clock()
        return text + ("; Ray update queued" if self.enabled else "")

    def due(self, now: float) -> bool:
        with self._lock:
            return self.pending and now >= self.next_try

    def helper_argv(self, resize: int | None) -> list[str]:
        args = {"address": self._config.ray.head_address, "node_ip": self._config.ray.node_ip, "timeout": 20}
        if resize is not None:
            args["resize"] = resize
        return [self.python_bin, "-c", RAY_HELPER, json.dumps(args, sort_keys=True)]

    def drain_argv(self, node_id: str, reason: str) -> list[str]:
        return [
            self.ray_bin,
            "drain-node",
            "--address",
            str(self._config.ray.head_address),
            "--node-id",
            node_id,
            "--reason",
            DRAIN_REASON,
            "--reason-message",
            f"bittrader throttle: {reason}"[:500],
            "--deadline-remaining-seconds",
            str(self._config.policy.drain_deadline_s),
        ]

    def attempt(self) -> str:
        """One try to make Ray agree with `desired`; returns a one-line result ("" when nothing is due)."""
        now = self._clock()
        with self._lock:
            if self.desired is None or not self.pending:
                return ""
            desired, reason, generation = self.desired, self.reason, self._generation
        done, text, reset = self._try(desired, reason)
        with self._lock:
            if reset:
                self.retries = 0
            if generation != self._generation:
                self.next_try = now  # a newer request came meanwhile: go again at once
            elif done:
                self.pending = False
            else:
                delay = RAY_RETRY_S[min(self.retries, len(RAY_RETRY_S) - 1)]
                self.retries += 1
                self.next_try = now + delay
                text += f"; retry in {delay:.0f} s"
            self.last_result = text
        return text

    def _try(self, desired: int, reason: str) -> tuple[bool, str, bool]:
        """(converged, result, restart the back-off)."""
        policy = self._config.policy
        node_ip = self._config.ray.node_ip
        resize = desired if policy.live_resize and self.drained_node is None else None
        result = self._runner(self.helper_argv(resize), self.env(), 60.0)
        data = parse_helper_output(result.stdout)
        if data is None or data.get("error"):
            problem = data["error"] if data and data.get("error") else result.brief()
            return False, f"ray: cannot reach the GCS ({problem})", False
        workers = [n for n in data.get("nodes", []) if not n.get("is_head")]
        if self.drained_node is not None:
            if any(n.get("node_id") == self.drained_node for n in workers):
                return False, f"ray: node {self.drained_node[:12]} still draining", False
            gone, self.drained_node = self.drained_node, None
            restarted = ""
            if policy.restart_after_drain and self.terminate_ray_start is not None:
                pids = self.terminate_ray_start()
                if pids:
                    listed = ", ".join(str(pid) for pid in pids)
                    restarted = f"; ended `ray start --block` (pid {listed}) so its supervisor restarts Ray"
            return False, f"ray: drained node {gone[:12]} has left{restarted}", True
        if not workers:
            return False, f"ray: no worker node at {node_ip} yet (its next start uses {desired} CPUs)", False
        if len(workers) > 1:
            return False, f"ray: {len(workers)} worker nodes at {node_ip}; changing none", False
        node_id = str(workers[0]["node_id"])
        resized = data.get("resized")
        cpus = float(resized["cpus"]) if isinstance(resized, dict) else float(workers[0].get("cpus", 0.0))
        if round(cpus) == desired:
            how = "live resize" if isinstance(resized, dict) else "as started"
            return True, f"ray: node {node_id[:12]} has {desired} CPUs ({how})", False
        if not policy.drain:
            return False, f"ray: node {node_id[:12]} busy at {cpus:g} CPUs, wants {desired}", False
        drained = self._runner(self.drain_argv(node_id, reason), self.env(), 120.0)
        if not drained.ok:
            return False, f"ray: drain of node {node_id[:12]} failed ({drained.brief()})", False
        self.drained_node = node_id
        text = (
            f"ray: node {node_id[:12]} has {cpus:g} CPUs; drain requested (deadline {policy.drain_deadline_s} s), "
            f"it restarts with {desired}"
        )
        return False, text, True


def terminate_ray_start(psutil_mod: Any, ray_bin: str, node_ip: str | None, user: str | None = None) -> list[int]:
    """End the `ray start --block` process of this node (its raylet has exited after a drain): only this
    venv's `ray`, started for this node's address, by this account (containers on the same machine
    show their processes too)."""
    ended: list[int] = []
    for proc in psutil_mod.process_iter(["username"]):
        try:
            if proc.pid == os.getpid() or not owned(proc, proc.info.get("username"), user):
                continue
            if is_ray_start_block(proc.cmdline(), ray_bin, node_ip):
                proc.terminate()
                ended.append(proc.pid)
        except (psutil_mod.NoSuchProcess, psutil_mod.AccessDenied, psutil_mod.ZombieProcess):
            continue
    return ended


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
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    try:
        os.makedirs(os.path.dirname(paths.log_file) or ".", exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            paths.log_file, maxBytes=paths.log_max_bytes, backupCount=paths.log_backups, encoding="utf-8"
        )
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
    psutil_mod = _psutil()
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
    last = _read_status(config.paths.status_file)
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
    if not any("bittrader-throttle" in arg for arg in cmdline) or any(f in cmdline for f in NOT_DAEMON_FLAGS):
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
    last = _read_status(paths.status_file) or {}
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
    psutil_mod = _psutil()
    user = config.mechanism.process_user
    mechanism = make_mechanism(config, psutil_mod=psutil_mod, processes=RayProcesses(psutil_mod, user))
    ray_sync = RaySync(config)
    ray_sync.terminate_ray_start = lambda: terminate_ray_start(psutil_mod, ray_sync.ray_bin, config.ray.node_ip, user)
    text = reset(config, mechanism=mechanism, ray_sync=ray_sync,
                 running=lambda: throttle_daemon_pids(psutil_mod, config_path, user), logger=logger)
    print(f"bittrader-throttle: {text}")
    return 0


def _read_status(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.loads(handle.readline())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


# --------------------------------------------------------------------------------------------------
# For the Ansible module (and a Windows role): the script, the service command, the sudoers rule
# --------------------------------------------------------------------------------------------------


def daemon_source() -> bytes:
    """This file's own source, also inside an AnsiballZ zip (zipimport's get_source)."""
    name = __name__
    loader = globals().get("__loader__")
    source: str | bytes | None = None
    get_source = getattr(loader, "get_source", None)
    if get_source is not None:
        try:
            source = get_source(name)
        except (ImportError, OSError):
            source = None
    if source is None:
        import pkgutil

        package, _, module = name.rpartition(".")
        try:
            source = pkgutil.get_data(package, module + ".py") if package else None
        except (OSError, ValueError):
            source = None
    if source is None:
        with open(__file__, "rb") as handle:
            source = handle.read()
    data = source.encode("utf-8") if isinstance(source, str) else source
    if b"def daemon_source(" not in data:
        raise RuntimeError("could not read the throttle daemon's own source")
    return data


def script_bytes(python: str) -> bytes:
    """The installed script: a shebang for the venv's Python, then this file."""
    return f"#!{python}\n".encode() + daemon_source()


def service_command(venv: str, config_path: str, platform_name: str) -> list[str]:
    """argv of the service: VENV/bin/python VENV/bin/bittrader-throttle --config CONFIG."""
    if platform_name == "windows":
        return [venv + "\\Scripts\\python.exe", venv + "\\Scripts\\bittrader-throttle", "--config", config_path]
    return [f"{venv}/bin/python", f"{venv}/bin/bittrader-throttle", "--config", config_path]


def _sudoers_escape(arg: str) -> str:
    return re.sub(r"([\\,:=])", r"\\\1", arg)


def sudoers_rule(user: str, config: Config) -> str:
    """The sudoers file that lets `user` set exactly the CPU quotas this policy uses (and lift them) on
    Ray's unit: install it as /etc/sudoers.d/bittrader-throttle (validate with `visudo -cf %s`)."""
    quotas = [f"{quota_percent(c, config.mechanism.pause_quota_percent)}%" for c in possible_cpu_counts(config.policy)]
    values = [*sorted(set(quotas), key=lambda q: int(q.rstrip("%"))), ""]
    base = [config.mechanism.systemctl, "set-property", "--runtime", config.ray.unit]
    commands = [" ".join(_sudoers_escape(a) for a in [*base, f"CPUQuota={v}"]) for v in values]
    alias = "BITTRADER_THROTTLE_" + re.sub(r"[^A-Z0-9]", "_", user.upper())
    lines = [
        "# Managed by Ansible (ray_throttle_daemon): the throttle may set these CPU quotas on Ray's unit only.",
        f"Cmnd_Alias {alias} = " + ", \\\n    ".join(commands),
        f"Defaults!{alias} !requiretty",
        f"{user} ALL=(root) NOPASSWD: {alias}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
