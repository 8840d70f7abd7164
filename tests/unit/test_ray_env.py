"""The settings of Ray's background work on each node (docs/performance.md, "Lean nodes"): the environment
filter_plugins/bittrader_ray_env.py makes of them, node.json.j2 giving it to `ray start` on every kind of
node under the settings the roles own, and the checks that refuse bad values before any host changes."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import yaml
from ansible_render import REPO, node_config
from filter_modules import all_filters

sys.path.insert(0, str(REPO / "filter_plugins"))

import bittrader_inputs
import bittrader_ray_env as lean

DEFAULTS = yaml.safe_load((REPO / "roles" / "cluster_facts" / "defaults" / "main.yml").read_text())
SETTINGS = {key: DEFAULTS[variable] for key, variable in lean.VARIABLES.items()} | {
    "env_extra": DEFAULTS[lean.EXTRA_VARIABLE]
}
# Ray's own defaults, for the comparison: what a node does with every setting at Ray's value.
RAY_DEFAULTS = {"metrics_enabled": True, "task_events_enabled": True, "node_stats_interval_s": 5,
                "log_scan_interval_s": 0, "memory_monitor_interval_ms": 250, "env_extra": {}}
# Linux (systemd) and macOS (launchd) heads and workers, Windows (scheduled task) workers: each runs the
# node supervisor with node.json.
NODE_KINDS = [("Linux", "head"), ("Linux", "worker"), ("Darwin", "head"), ("Darwin", "worker"), ("Win32NT", "worker")]


def test_the_defaults_trim_ray_and_name_every_setting() -> None:
    assert lean.ray_env(SETTINGS) == {
        "RAY_enable_metrics_collection": "0",
        "RAY_task_events_report_interval_ms": "0",
        "REPORTER_UPDATE_INTERVAL_MS": "30000",
        "LOG_NAME_UPDATE_INTERVAL_S": "5",
        "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
        "RAY_memory_monitor_refresh_ms": "1000",
    }
    # Every setting is a variable of cluster_facts (so Windows workers, which do not run ray_node, have it)
    # and owns the names it sets.
    assert set(lean.VARIABLES.values()) | {lean.EXTRA_VARIABLE} <= set(DEFAULTS)
    assert set(lean.OWNED) == set(lean.VARIABLES.values())
    assert set(lean.ray_env(SETTINGS)) == {name for names in lean.OWNED.values() for name in names}
    assert "bittrader_ray_env" in all_filters()


def test_at_rays_own_values_nothing_is_trimmed() -> None:
    # Every setting at Ray's own value: Ray's defaults, written out (the log monitor's own scanning: unset).
    assert lean.ray_env(RAY_DEFAULTS) == {"REPORTER_UPDATE_INTERVAL_MS": "5000", "RAY_memory_monitor_refresh_ms": "250"}
    # Values as an inventory may write them: strings, yes/no.
    env = lean.ray_env({**RAY_DEFAULTS, "metrics_enabled": "yes", "task_events_enabled": "false",
                        "node_stats_interval_s": "10"})
    assert "RAY_enable_metrics_collection" not in env
    assert env["RAY_task_events_report_interval_ms"] == "0" and env["REPORTER_UPDATE_INTERVAL_MS"] == "10000"


def test_extra_names_are_given_as_ray_reads_them() -> None:
    env = lean.ray_env({**SETTINGS, "env_extra": {"RAY_event_stats": False, "RAY_x": 3, "RAY_y": "a b"}})
    assert env["RAY_event_stats"] == "0" and env["RAY_x"] == "3" and env["RAY_y"] == "a b"
    assert lean.ray_env({**SETTINGS, "env_extra": {"RAY_event_stats": True}})["RAY_event_stats"] == "1"


@pytest.mark.parametrize(("system", "role"), NODE_KINDS)
def test_every_kind_of_node_gets_the_settings_in_ray_starts_environment(system: str, role: str) -> None:
    env = node_config(system, role)["env"]
    assert {k: env[k] for k in lean.ray_env(SETTINGS)} == lean.ray_env(SETTINGS)
    assert env["RAY_AUTH_MODE"] == "token"
    # Every name the template sets is a setting's or one the roles own (so the extra dict cannot change it).
    assert set(env) <= set(lean.MANAGED) | {n for names in lean.OWNED.values() for n in names}, system
    # The settings at Ray's values, and an extra name, reach the same place.
    env = node_config(system, role, bittrader_ray_metrics_enabled=True, bittrader_ray_task_events_enabled=True,
                    bittrader_ray_node_stats_interval_s=5, bittrader_ray_env_extra={"RAY_event_stats": 0})["env"]
    assert "RAY_enable_metrics_collection" not in env and "RAY_task_events_report_interval_ms" not in env
    assert env["REPORTER_UPDATE_INTERVAL_MS"] == "5000" and env["RAY_event_stats"] == "0"


def test_the_roles_own_settings_win_over_the_extra_names() -> None:
    """Preflight refuses such an inventory; were it bypassed, node.json still keeps the roles' values."""
    env = node_config("Win32NT", bittrader_ray_env_extra={"RAY_AUTH_MODE": "disabled", "TEMP": "C:\\x",
                                                        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})["env"]
    assert env["RAY_AUTH_MODE"] == "token" and env["TEMP"].endswith("\\tmp")
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"


@pytest.mark.parametrize(
    ("hostvars", "fragment"),
    [
        ({"bittrader_ray_node_stats_interval_s": 0}, "_node_stats_interval_s must be a whole number from 1 to"),
        ({"bittrader_ray_node_stats_interval_s": "fast"}, "bittrader_ray_node_stats_interval_s must be"),
        ({"bittrader_ray_node_stats_interval_s": True}, "bittrader_ray_node_stats_interval_s must be"),
        ({"bittrader_ray_log_scan_interval_s": 61}, "_log_scan_interval_s must be a whole number from 0 to 60"),
        ({"bittrader_ray_log_scan_interval_s": 0.5}, "bittrader_ray_log_scan_interval_s must be"),
        ({"bittrader_ray_memory_monitor_interval_ms": -1}, "bittrader_ray_memory_monitor_interval_ms must be"),
        ({"bittrader_ray_env_extra": ["RAY_event_stats=0"]}, "bittrader_ray_env_extra must be a mapping"),
        ({"bittrader_ray_env_extra": {"RAY event": 1}}, "'RAY event', which is not an environment variable name"),
        ({"bittrader_ray_env_extra": {"RAY_enable_metrics_collection": 1}},
         "sets RAY_enable_metrics_collection: set bittrader_ray_metrics_enabled instead"),
        ({"bittrader_ray_env_extra": {"LOG_NAME_UPDATE_INTERVAL_S": 1}}, "set bittrader_ray_log_scan_interval_s"),
        ({"bittrader_ray_env_extra": {"RAY_AUTH_MODE": "disabled"}}, "sets RAY_AUTH_MODE, which the roles set"),
        ({"bittrader_ray_env_extra": {"Path": "C:\\x"}}, "sets Path, which the roles set from the node supervisor"),
        ({"bittrader_ray_env_extra": {"RAY_USAGE_STATS_ENABLED": 1}}, "bittrader_usage_stats_enabled"),
        ({"bittrader_ray_env_extra": {"RAY_x": None}}, "bittrader_ray_env_extra.RAY_x must be a string, a number"),
        ({"bittrader_ray_env_extra": {"RAY_x": [1]}}, "bittrader_ray_env_extra.RAY_x must be"),
        ({"bittrader_ray_metrics_enabled": "maybe"}, "bittrader_ray_metrics_enabled must be true or false"),
        ({"bittrader_ray_task_events_enabled": 2}, "bittrader_ray_task_events_enabled must be true or false"),
    ],
)
def test_bad_values_are_refused_before_any_host_changes(hostvars: dict[str, Any], fragment: str) -> None:
    found = bittrader_inputs.type_problems(hostvars)
    assert any(fragment in p for p in found), found
    # The same check runs in preflight's first play (before facts) and in cluster_facts' validation.
    assert any(fragment in p for p in bittrader_inputs.inventory_problems(hostvars, False))
    assert any(fragment in p for p in bittrader_inputs.platform_problems(hostvars, {}))


def test_good_values_and_the_defaults_pass() -> None:
    assert bittrader_inputs.type_problems({k: v for k, v in DEFAULTS.items() if k.startswith("bittrader_ray_")}) == []
    assert lean.ray_env_problems({
        "bittrader_ray_metrics_enabled": "yes", "bittrader_ray_node_stats_interval_s": "3600",
        "bittrader_ray_log_scan_interval_s": 0, "bittrader_ray_memory_monitor_interval_ms": 0,
        "bittrader_ray_env_extra": {"RAY_event_stats": False, "RAY_x": 1.5, "OTHER": "a"},
    }) == []
    assert lean.ray_env_problems({"bittrader_ray_env_extra": None, "bittrader_ray_node_stats_interval_s": None}) == []
