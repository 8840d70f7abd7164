"""Jinja filter bittrader_host_problems: each host's variables checked against its facts before any
host changes (roles/cluster_facts/tasks/validate.yml): its group against its system, CPUs, GPUs and
memory, the network settings, the version pins (and that they match the head's), the user, and the
throttle's policy. Unit-tested in tests/unit/test_validation.py."""

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

from bittrader_basics import _blank, _gib, _whole, is_ip, is_loopback  # noqa: E402
from bittrader_network import admin_source_problems, cidr_problem, port_problems  # noqa: E402
from bittrader_versions import (  # noqa: E402
    _INTEL_MAC_ARCHES,
    INTEL_MAC_RULE,
    optuna_version_problem,
    pip_problems,
    ray_extras_problem,
    ray_requirement,
    ray_version_problem,
    ray_wheel_problem,
)

# The OS each inventory group's role is for (ansible_facts.system), as site.yml applies them.
_GROUP_SYSTEMS = {"workers_linux": ("Linux",), "workers_macos": ("Darwin",), "workers_windows": ("Win32NT",)}
_HEAD_SYSTEMS = ("Linux", "Darwin")
_SYSTEM_NAMES = {"Linux": "Linux", "Darwin": "macOS", "Win32NT": "Windows"}
_PRIVILEGED_USERS = {"root", "administrator", "system"}
_MIN_OBJECT_STORE = 78643200  # 75 MiB, Ray's minimum
# The throttle daemon's policy keys and the variables they come from (roles/ray_node/tasks/throttle.yml).
_THROTTLE_VARIABLES = {
    "cpus_active": "bittrader_throttle_cpus_active",
    "cpus_idle": "bittrader_num_cpus",
    "idle_threshold_s": "bittrader_throttle_idle_threshold_s",
    "battery_policy": "bittrader_throttle_battery_policy",
    "hysteresis_s": "bittrader_throttle_hysteresis_s",
    "load_guard": "bittrader_throttle_load_guard",
    "activity_source": "bittrader_throttle_activity_source",
    "activity_file": "bittrader_throttle_activity_file",
}
_THROTTLE_INTS = {"cpus_active", "cpus_idle"}
_THROTTLE_FLOATS = {"idle_threshold_s", "hysteresis_s", "load_guard"}


def _throttle_value(key: str, value: object) -> object:
    """A throttle variable as the ray_throttle_daemon module's argument spec would convert it."""
    if isinstance(value, str) and key in _THROTTLE_INTS | _THROTTLE_FLOATS:
        try:
            number = float(value.strip())
        except ValueError:
            return value
        return int(number) if key in _THROTTLE_INTS and number.is_integer() else number
    return value


def _throttle_policy_module() -> Any:
    """The module that holds the throttle's build_config and validate (the one place that names it)."""
    import importlib

    import ansible.module_utils

    extra = str(Path(__file__).resolve().parent.parent / "node_agent" / "src")
    if extra not in list(ansible.module_utils.__path__):
        ansible.module_utils.__path__.append(extra)
    return importlib.import_module("ansible.module_utils.bittrader_node_agent.throttle.config")


def throttle_problems(policy: Mapping[str, Any], system: object) -> list[str]:
    """The throttle daemon's own policy checks (node_agent/src/bittrader_node_agent/throttle/config.py,
    the ray_throttle_daemon module's module_utils), in variable names."""
    throttle = _throttle_policy_module()
    platform_name = {"darwin": "darwin", "linux": "linux"}.get(str(system).lower(), "windows")
    clean = {k: _throttle_value(k, v) for k, v in policy.items() if k in _THROTTLE_VARIABLES and not _blank(v)}
    base = "/srv/bittrader"
    config = throttle.build_config(
        platform_name,
        policy=clean,
        paths={"log_file": f"{base}/throttle.log", "status_file": f"{base}/s.json", "num_cpus_file": f"{base}/n"},
        ray={
            "venv": f"{base}/venv",
            "head_address": "127.0.0.1:6379",
            "node_ip": "127.0.0.1",
            "unit": "bittrader-ray-worker.service",
        },
    )
    problems: list[str] = []
    for error in throttle.validate(config):
        if not error.startswith("policy."):
            continue
        text = re.sub(r"policy\.(\w+)", lambda m: _THROTTLE_VARIABLES.get(m[1], m[0]), error)
        problems.append(f"{text}: fix it for this host or set bittrader_throttle_enabled: false")
    return problems


def _group_problems(s: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    head_group = str(s.get("head_group", "ray_head"))
    node_groups = [head_group, *[str(g) for g in s.get("worker_groups", [])]]
    mine = [g for g in node_groups if g in (s.get("groups") or [])]
    host = s.get("host", "this host")
    if not mine:
        return [
            f"{host} is in none of the groups {', '.join(node_groups)}: put it in the group of its operating "
            "system (or remove it from ray_cluster)"
        ]
    if len(mine) > 1:
        return [
            f"{host} is in {' and '.join(mine)}: a host runs one Ray node, so it belongs to exactly one of "
            f"{', '.join(node_groups)}"
        ]
    system = facts.get("system")
    if not system:
        return []
    wanted = _HEAD_SYSTEMS if mine[0] == head_group else _GROUP_SYSTEMS.get(mine[0])
    if wanted is None or system in wanted:
        return []
    release = f"{facts.get('distribution', '')} {facts.get('distribution_version', '')}".strip()
    runs = f"{_SYSTEM_NAMES.get(str(system), system)}" + (f" ({release})" if release else "")
    if mine[0] == head_group:
        return [f"{host} is the head but runs {runs}: the head runs on Linux or macOS; choose another head"]
    right = [g for g, systems in _GROUP_SYSTEMS.items() if system in systems]
    return [
        f"{host} is in {mine[0]} but runs {runs}: move it to {right[0] if right else 'the group of its OS'}"
    ]


def _resource_problems(s: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    is_head = s.get("head_group") in (s.get("groups") or [])
    cpus = s.get("num_cpus")
    vcpus = _whole(facts.get("processor_vcpus"))
    if not _blank(cpus):
        n = _whole(cpus)
        if n is None:
            problems.append(
                f"bittrader_num_cpus must be empty (all CPUs) or a whole number of CPUs, got {cpus!r}: "
                f"set it to 1..{vcpus or 'its CPU count'} or leave it empty"
            )
        elif n == 0 and not is_head:
            problems.append(
                "bittrader_num_cpus is 0 on a worker, which would give Ray no CPU to run tasks on (0 is for the "
                f"head only): set 1..{vcpus or 'its CPU count'} or leave it empty for all CPUs"
            )
        elif vcpus and n > vcpus:
            problems.append(
                f"bittrader_num_cpus is {n} but this host has {vcpus} logical CPUs: set at most {vcpus}, or leave "
                "it empty for all of them"
            )
    gpus = s.get("num_gpus")
    if not _blank(gpus):
        n = _whole(gpus)
        system = facts.get("system")
        arch = str(facts.get("architecture") or facts.get("machine") or "")
        if n is None:
            problems.append(
                f"bittrader_num_gpus must be empty (Ray counts the NVIDIA GPUs) or a whole number of GPUs, got "
                f"{gpus!r}: set it to the GPUs Ray may use on this host, 0 for none, or leave it empty"
            )
        elif system == "Darwin" and n > 0 and arch in _INTEL_MAC_ARCHES:
            problems.append(
                f"bittrader_num_gpus is {n} on an Intel Mac, whose GPU Ray cannot use (no CUDA, no Apple silicon "
                "Metal device): set 0 or leave it empty"
            )
        elif system == "Darwin" and n > 1:
            problems.append(
                f"bittrader_num_gpus is {n} on a Mac, which has one Apple silicon GPU and no NVIDIA GPU: leave it "
                "empty (the default: the Mac gives Ray no GPU, so CUDA jobs never land on it) or set 1 to let "
                "jobs that use Metal (PyTorch's mps device, MLX) ask for it"
            )
    store = s.get("object_store_memory")
    if not _blank(store):
        n = _whole(store)
        mem_mb = _whole(facts.get("memtotal_mb"))
        if n is None:
            problems.append(
                f"bittrader_object_store_memory must be empty (Ray's default) or a number of bytes, got {store!r}: "
                "for example 268435456 (256 MiB)"
            )
        elif n < _MIN_OBJECT_STORE:
            problems.append(
                f"bittrader_object_store_memory is {n} bytes, below Ray's minimum of {_MIN_OBJECT_STORE} (75 MiB): "
                "raise it or leave it empty"
            )
        elif mem_mb and n >= mem_mb * 2**20:
            problems.append(
                f"bittrader_object_store_memory is {_gib(n)} but this host has {_gib(mem_mb * 2**20)} of memory: "
                "set a fraction of it (Ray's default is 30%) or leave it empty"
            )
    return problems


def _network_problems(s: Mapping[str, Any]) -> list[str]:
    mode = s.get("network_mode")
    cidr = str(s.get("cluster_cidr") or "").strip()
    problems: list[str] = []
    if mode == "lan" and not cidr:
        problems.append(
            "bittrader_network_mode is lan but bittrader_cluster_cidr is empty: set it to your LAN's range, for "
            "example 192.168.1.0/24 (it decides who may reach Ray's ports)"
        )
    elif cidr:
        problem = cidr_problem(cidr)
        if problem:
            problems.append(problem)
    node_ip = str(s.get("node_ip") or "").strip()
    if node_ip and not is_ip(node_ip):
        problems.append(
            f"bittrader_node_ip '{node_ip}' is not an IP address: set this host's "
            f"{'Tailscale IP (tailscale ip -4)' if mode == 'tailscale' else 'LAN IP'}, or leave it empty"
        )
    elif node_ip and is_loopback(node_ip):
        problems.append(
            f"bittrader_node_ip {node_ip} is a loopback address, which no other node can reach (and Ray replaces "
            f"it): set this host's {'Tailscale' if mode == 'tailscale' else 'LAN'} IP, or leave it empty"
        )
    return problems


def _pin_problems(s: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    ray, python = str(s.get("ray_version", "")).strip(), str(s.get("python_version", "")).strip()
    ray_problem = ray_version_problem(ray)
    intel_mac = (str(facts.get("system")) == "Darwin"
                 and str(facts.get("architecture2") or facts.get("architecture") or "").lower() in _INTEL_MAC_ARCHES)
    if intel_mac:  # whatever the pin: an older Ray for this Mac is refused for want of token auth
        problems.append(
            f"this Mac reports an Intel processor (x86_64): {INTEL_MAC_RULE} (an Apple silicon Mac reports x86_64 "
            "only when Ansible runs an Intel Python under Rosetta: set ansible_python_interpreter: /usr/bin/python3)"
        )
        ray_problem = ray_problem or "intel"
    elif ray_problem:
        problems.append(ray_problem)
    if not re.fullmatch(r"3\.\d+\.\d+", python):
        problems.append(
            f"bittrader_python_version '{python}' is not an exact Python 3 release such as 3.12.12: Ray refuses "
            "nodes whose Python patch release differs"
        )
    elif not ray_problem and facts.get("system"):
        wheel = ray_wheel_problem(
            ray,
            python,
            str(facts.get("system")),
            str(facts.get("architecture2") or facts.get("architecture") or ""),
            str(facts.get("distribution_version") or ""),
        )
        if wheel:
            problems.append(
                f"{wheel} (bittrader_ray_version {ray}, bittrader_python_version {python}): pin a pair with a wheel "
                "for every node"
            )
    # Ray's extras and Optuna: checked only when given (callers that predate them pass neither).
    if "ray_extras" in s:
        extras_problem = ray_extras_problem(s.get("ray_extras"))
        if extras_problem:
            problems.append(extras_problem)
    if "optuna_version" in s:
        optuna_problem = optuna_version_problem(s.get("optuna_version"))
        if optuna_problem:
            problems.append(optuna_problem)
    head: Mapping[str, Any] = s.get("head") or {}
    if head and head.get("host") != s.get("host"):
        for key, what in (("ray_version", "Ray"), ("python_version", "Python")):
            mine, theirs = str(s.get(key, "")).strip(), str(head.get(key, "")).strip()
            if theirs and mine != theirs:
                problems.append(
                    f"bittrader_{key} is {mine} here but {theirs} on the head {head.get('host')}: Ray refuses a "
                    f"node whose {what} release differs; set it once for the whole cluster "
                    "(group_vars/ray_cluster.yml), not per host"
                )
        # A Tune run's trials import Tune's dependencies and Optuna wherever they land: every node needs
        # the head's extras and Optuna release, as it needs the head's Ray.
        if "ray_extras" in s and "ray_extras" in head:
            mine_req = ray_requirement("", s.get("ray_extras"))
            theirs_req = ray_requirement("", head.get("ray_extras"))
            if mine_req != theirs_req:
                problems.append(
                    f"bittrader_ray_extras is {mine_req.removesuffix('==')} here but {theirs_req.removesuffix('==')} "
                    f"on the head {head.get('host')}: a job's tasks and trials run on any node, so every node needs "
                    "the same extras; set bittrader_ray_extras once for the whole cluster (group_vars/ray_cluster.yml)"
                )
        if "optuna_version" in s and "optuna_version" in head:
            mine, theirs = str(s.get("optuna_version") or "").strip(), str(head.get("optuna_version") or "").strip()
            if mine != theirs:
                problems.append(
                    f"bittrader_optuna_version is {mine or 'empty (none)'} here but {theirs or 'empty (none)'} on "
                    f"the head {head.get('host')}: a search's trials run on any node; set it once for the whole "
                    "cluster (group_vars/ray_cluster.yml), not per host"
                )
        ports, head_ports = s.get("ports") or {}, head.get("ports") or {}
        differ = sorted(k for k in set(ports) | set(head_ports) if str(ports.get(k)) != str(head_ports.get(k)))
        if head_ports and differ:
            detail = ", ".join(f"{k} {ports.get(k)} here, {head_ports.get(k)} on the head" for k in differ)
            problems.append(
                f"bittrader_ports differ from the head {head.get('host')}'s ({detail}): every node uses the same "
                "ports; set bittrader_ports once for the whole cluster"
            )
    return problems


def host_problems(settings: Mapping[str, Any], facts: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem of one host's cluster variables, checked against its facts and the head's pins.

    settings: host, groups (group_names), head_group, worker_groups, ray_version, python_version,
    ray_extras and optuna_version (optional), network_mode, cluster_cidr, node_ip, num_cpus, num_gpus,
    object_store_memory, ports, user, firewall_admin_sources, extra_pip_packages, psutil_version,
    numpy_version, throttle_enabled, throttle (policy: cpus_active, idle_threshold_s, battery_policy,
    hysteresis_s, load_guard, activity_source, activity_file), head (host, ray_version, python_version,
    ports, and optionally ray_extras, optuna_version: the head's values). facts: the host's ansible_facts
    (may be empty).
    Each message names the variable and what to set instead.
    """
    s, f = settings, facts or {}
    problems = _group_problems(s, f) + _pin_problems(s, f)
    problems += port_problems(s.get("ports") or {})
    problems += _network_problems(s) + _resource_problems(s, f)
    user = str(s.get("user") or "").strip()
    if not user or user.lower() in _PRIVILEGED_USERS:
        problems.append(
            f"bittrader_user must be an ordinary account, never '{user}': Ray runs any job it receives, so it "
            "must not run as an administrator; keep the default bittrader (or the Mac owner's account)"
        )
    elif f.get("system") == "Linux" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", user):
        problems.append(
            f"bittrader_user '{user}' is not a valid Linux user name (letters, digits, _ . -, at most 32, not "
            "starting with a digit or -): keep the default bittrader"
        )
    problems += admin_source_problems(s.get("firewall_admin_sources"))
    pins = {"ray": s.get("ray_version"), "psutil": s.get("psutil_version"), "numpy": s.get("numpy_version"),
            "optuna": s.get("optuna_version")}
    problems += pip_problems(s.get("extra_pip_packages", []), {k: v for k, v in pins.items() if not _blank(v)})
    if s.get("throttle_enabled") in (True, "true", "True", "yes", 1):
        policy = dict(s.get("throttle") or {})
        vcpus = _whole(f.get("processor_vcpus"))
        policy["cpus_idle"] = s.get("num_cpus") if not _blank(s.get("num_cpus")) else vcpus
        problems += throttle_problems(policy, f.get("system", "Linux"))
    return problems


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_host_problems": host_problems,
        }
