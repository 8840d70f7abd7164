"""Jinja filter bittrader_ray_env: the environment that trims Ray's background work on every node (its
metrics, task events, node statistics, log scanning and memory monitor: docs/performance.md, "Lean
nodes"), from the cluster_facts role's bittrader_ray_* variables; roles/ray_node/templates/node.json.j2
puts it in `ray start`'s environment on every kind of node. ray_env_problems refuses bad values before
any host changes (bittrader_inputs.type_problems). Unit-tested in tests/unit/test_ray_env.py."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Ansible loads each filter file on its own: the shared rules are imported from this folder.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from bittrader_basics import is_on  # noqa: E402

# Each setting: (variable, the environment variable(s) it sets, as read by Ray 2.60).
#   metrics_enabled      RAY_enable_metrics_collection (ray_config_def.h): off, no process records or exports
#                        Prometheus metrics (the raylet starts the dashboard agent with --disable-metrics-collection)
#   task_events_enabled  RAY_task_events_report_interval_ms (ray_config_def.h): 0, no worker or driver
#                        buffers task state events and sends them to the GCS every second
#   node_stats_interval_s  REPORTER_UPDATE_INTERVAL_MS (ray/dashboard/modules/reporter/reporter_consts.py,
#                        5000): how often each node's agent reads every process's CPU and memory
#   log_scan_interval_s  LOG_NAME_UPDATE_INTERVAL_S (ray/_private/log_monitor.py, 0.5 s) with
#                        RAY_LOG_MONITOR_MANY_FILES_THRESHOLD=0: the log monitor looks for new log files
#                        (globs the logs folder) this often instead of every 0.1 s; 0, Ray's own scanning
#   memory_monitor_interval_ms  RAY_memory_monitor_refresh_ms (ray_config_def.h, 250): how often the
#                        raylet reads the node's memory use to kill a task before the machine runs out
VARIABLES = {
    "metrics_enabled": "bittrader_ray_metrics_enabled",
    "task_events_enabled": "bittrader_ray_task_events_enabled",
    "node_stats_interval_s": "bittrader_ray_node_stats_interval_s",
    "log_scan_interval_s": "bittrader_ray_log_scan_interval_s",
    "memory_monitor_interval_ms": "bittrader_ray_memory_monitor_interval_ms",
}
EXTRA_VARIABLE = "bittrader_ray_env_extra"
# The environment names each setting owns: bittrader_ray_env_extra may not set them (one place each).
OWNED = {
    "bittrader_ray_metrics_enabled": ("RAY_enable_metrics_collection",),
    "bittrader_ray_task_events_enabled": ("RAY_task_events_report_interval_ms",),
    "bittrader_ray_node_stats_interval_s": ("REPORTER_UPDATE_INTERVAL_MS",),
    "bittrader_ray_log_scan_interval_s": ("LOG_NAME_UPDATE_INTERVAL_S", "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"),
    "bittrader_ray_memory_monitor_interval_ms": ("RAY_memory_monitor_refresh_ms",),
}
# What node.json.j2 and the node supervisor set from other variables (the token, the ports, the node's
# folders): bittrader_ray_env_extra may not change them. tests/unit/test_ray_env.py checks that every
# name node.json.j2 renders is here or in OWNED.
MANAGED = {
    "RAY_AUTH_MODE": "the cluster's token authentication",
    "RAY_AUTH_TOKEN_PATH": "the token file (bittrader_token_file)",
    "RAY_AUTH_TOKEN": "the token file (bittrader_token_file)",
    "RAY_USAGE_STATS_ENABLED": "bittrader_usage_stats_enabled",
    "RAY_gcs_rpc_server_reconnect_timeout_s": "bittrader_gcs_reconnect_timeout_s",
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "bittrader_ray_start_timeout_s",
    "RAY_agent_register_timeout_ms": "bittrader_ray_start_timeout_s",
    "AUTOSCALER_METRIC_PORT": "bittrader_ports.autoscaler_metrics",
    "DASHBOARD_METRIC_PORT": "bittrader_ports.dashboard_metrics",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "the roles (macOS and Windows nodes)",
    "PYTHONUNBUFFERED": "the node supervisor's log copy",
    "TEMP": "the roles (the Windows node's own temp folder)",
    "TMP": "the roles (the Windows node's own temp folder)",
    "PATH": "the node supervisor (the venv's bin folder first)",
    "BITTRADER_RAY_NODE": "the node supervisor (the marker of the node's processes)",
    "RAY_ADDRESS": "the roles (a node joins its head with --address)",
}
# Ranges of the numeric settings: (least, most).
RANGES = {
    "bittrader_ray_node_stats_interval_s": (1, 3600),
    "bittrader_ray_log_scan_interval_s": (0, 60),
    "bittrader_ray_memory_monitor_interval_ms": (0, 60000),
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
def _env_value(value: object) -> str:
    """An environment value as Ray parses it: booleans as 1 and 0 (Ray's C++ settings read "1"/"true")."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def ray_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """`ray start`'s environment for the settings (keys of VARIABLES, plus env_extra): each setting's
    variables, then bittrader_ray_env_extra's names."""
    env: dict[str, str] = {}
    if not is_on(settings.get("metrics_enabled")):
        env["RAY_enable_metrics_collection"] = "0"
    if not is_on(settings.get("task_events_enabled")):
        env["RAY_task_events_report_interval_ms"] = "0"
    env["REPORTER_UPDATE_INTERVAL_MS"] = str(int(settings["node_stats_interval_s"]) * 1000)
    if int(settings["log_scan_interval_s"]) > 0:
        env["LOG_NAME_UPDATE_INTERVAL_S"] = str(int(settings["log_scan_interval_s"]))
        env["RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"] = "0"
    env["RAY_memory_monitor_refresh_ms"] = str(int(settings["memory_monitor_interval_ms"]))
    for name, value in (settings.get("env_extra") or {}).items():
        env[str(name)] = _env_value(value)
    return env


def _whole_in(value: object, low: int, high: int) -> bool:
    if isinstance(value, bool):
        return False
    try:
        number = int(str(value).strip())
    except ValueError:
        return False
    return low <= number <= high


def ray_env_problems(hostvars: Mapping[str, Any]) -> list[str]:
    """The numeric settings out of range and bittrader_ray_env_extra's bad names and values (the boolean
    settings are bittrader_inputs' _BOOL_SETTINGS). Only what the host's variables set: the defaults are valid."""
    problems: list[str] = []
    for name, (low, high) in RANGES.items():
        if name in hostvars and hostvars.get(name) is not None and not _whole_in(hostvars.get(name), low, high):
            problems.append(f"{name} must be a whole number from {low} to {high}, got {hostvars.get(name)!r}")
    if EXTRA_VARIABLE not in hostvars or hostvars.get(EXTRA_VARIABLE) is None:
        return problems
    extra = hostvars.get(EXTRA_VARIABLE)
    if not isinstance(extra, Mapping):
        return [*problems, f"{EXTRA_VARIABLE} must be a mapping of environment names to values, got {extra!r}"]
    owners = {env: variable for variable, names in OWNED.items() for env in names}
    managed = {name.upper(): why for name, why in MANAGED.items()}
    for key, value in extra.items():
        name = str(key)
        if not _ENV_NAME.fullmatch(name):
            problems.append(f"{EXTRA_VARIABLE} holds '{name}', which is not an environment variable name")
        elif name in owners:
            problems.append(f"{EXTRA_VARIABLE} sets {name}: set {owners[name]} instead")
        elif name.upper() in managed:  # Windows' environment names ignore case
            problems.append(f"{EXTRA_VARIABLE} sets {name}, which the roles set from {managed[name.upper()]}")
        elif value is None or isinstance(value, Mapping | list | tuple):
            problems.append(f"{EXTRA_VARIABLE}.{name} must be a string, a number or true/false, got {value!r}")
    return problems


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_ray_env": ray_env,
        }
