"""The throttle's configuration schema: defaults, validation, the parsed dataclasses, the rendered
JSON, and what a policy implies for the host (the CPU counts it can choose, their CPU quotas, the
sudoers rule and the service's command).

Standard library only and no import of the rest of the package: the Ansible module
ray_throttle_daemon and the controller's filters import this very file (as
ansible.module_utils.bittrader_node_agent.throttle.config, node_agent/src being one of the project's
module_utils folders), so the controller checks a policy with the daemon's own rules.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

CONFIG_VERSION = 1
# The daemon's console script, and its module for `python -m` (Windows' scheduled tasks run pythonw.exe).
DAEMON_SCRIPT = "bittrader-throttle"
DAEMON_MODULE = "bittrader_node_agent.throttle"
PLATFORMS = ("linux", "darwin", "windows")
ACTIVITY_SOURCES = ("auto", "logind", "headless", "ioreg", "windows", "file")
MECHANISMS = ("auto", "systemd", "taskpolicy", "windows", "none")

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
    errors += _choice_errors("policy.activity_source", source, ACTIVITY_SOURCES,
                             {"logind": "linux", "ioreg": "darwin", "windows": "windows"}, platform_name)
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


def _choice_errors(setting: str, value: object, choices: tuple[str, ...], platform_of: dict[str, str],
                   platform_name: object) -> list[str]:
    """A setting that must be one of choices, some of which work on one platform only (platform_of)."""
    if value not in choices:
        return [f"{setting} must be one of {', '.join(choices)} (got {value!r})"]
    needs = platform_of.get(str(value))
    if needs is not None and platform_name in PLATFORMS and platform_name != needs:
        return [f"{setting} {value!r} only works on {needs} (platform is {platform_name})"]
    return []


def _validate_mechanism(m: dict[str, Any], platform_name: object) -> list[str]:
    errors: list[str] = []
    kind = m["kind"]
    errors += _choice_errors("mechanism.kind", kind, MECHANISMS,
                             {"systemd": "linux", "taskpolicy": "darwin", "windows": "windows"}, platform_name)
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



def possible_cpu_counts(policy: Policy) -> list[int]:
    """Every CPU count decide() can choose with this policy (for the sudoers rule)."""
    counts = {policy.cpus_active, policy.cpus_idle}
    if policy.battery_policy == "pause" or policy.battery_min_percent is not None:
        counts.add(0)
    if isinstance(policy.battery_policy, int):
        counts.update(min(policy.battery_policy, c) for c in (policy.cpus_active, policy.cpus_idle))
    return sorted(counts)


def quota_percent(cpus: int, pause_percent: int) -> int:
    """CPUQuota for a CPU count: 100% per CPU; 0 CPUs (paused) gets pause_percent, never 0."""
    return pause_percent if cpus <= 0 else cpus * 100


def service_command(venv: str, config_path: str, platform_name: str) -> list[str]:
    """argv of the service: VENV/bin/python VENV/bin/bittrader-throttle --config CONFIG (the node agent's
    console script); on Windows the venv's Python runs the package (`-m`), as its scheduled tasks do."""
    if platform_name == "windows":
        return [venv + "\\Scripts\\python.exe", "-m", DAEMON_MODULE, "--config", config_path]
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

