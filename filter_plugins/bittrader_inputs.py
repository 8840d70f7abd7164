"""Jinja filters that check the inventory itself before anything runs on a host: names the roles reserve,
connection settings, path-like and typed variables (bittrader_inventory_problems), and the host's
operating system and resources against what the roles support (bittrader_platform_problems, docs/platforms.md).
Unit-tested in tests/unit/test_inputs.py."""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# Ansible loads each filter file on its own: the shared rules are imported from this folder.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from bittrader_basics import _version_tuple, _whole  # noqa: E402
from bittrader_ray_env import ray_env_problems  # noqa: E402

# --- Inputs a careless or hostile inventory can get wrong (issue 18): paths, types, internal facts,
# connections, supported OS releases, resources, sudo rights. Each returns messages that name the variable
# and the fix; validate.yml, preflight.yml and playbooks/preflight.yml's first play call them.

# Facts the roles compute (set_fact) and read later, some through another host's hostvars (the head's token,
# its paths, the marker that skips resolve.yml). A value from the inventory would be taken for the computed
# one (a --limit run does not set the head's facts), so none of these names may come from the inventory.
# tests/unit/test_validation.py checks that this list holds every set_fact name of roles/ and playbooks/.
RESERVED_FACTS = frozenset(
    {
        "bittrader_advertise_ip", "bittrader_advertise_pending", "bittrader_base_dir", "bittrader_cidr",
        "bittrader_code_dir", "bittrader_code_path", "bittrader_code_pth", "bittrader_expected_cpus",
        "bittrader_expected_gpus", "bittrader_ray_temp_path",
        "bittrader_facts_resolved", "bittrader_head_address", "bittrader_head_host", "bittrader_head_ip",
        "bittrader_home", "bittrader_log_dir", "bittrader_node_config", "bittrader_node_role",
        "bittrader_preflight", "bittrader_ray_bin", "bittrader_run_dir", "bittrader_service_name",
        "bittrader_token_file", "bittrader_venv_dir", "bittrader_venv_python", "bittrader_cluster",
        "head_cluster_token", "head_token_sha1",
        "ray_firewall_admin_sources", "ray_firewall_backend_used", "ray_firewall_cluster_sources",
        "ray_firewall_mode", "ray_firewall_ports", "ray_firewall_state",
        "ray_node_base_python", "ray_node_launchd_domain", "ray_node_launchd_label", "ray_node_launchd_plist",
        "ray_node_launchd_started", "ray_node_service_started", "ray_node_throttle_started", "ray_node_upgrade",
        "ray_node_user_account", "ray_node_user_uid",
        # The node's record (ray_node's state.yml): its decision and the module's results.
        "ray_node_current", "ray_node_refresh", "ray_node_state", "ray_node_state_recorded",
        "tailscale_ip",
        "worker_windows_account_sid", "worker_windows_base_python", "worker_windows_paths",
        "workload_summary",
    }
)
# ROLE__name: a role's or playbook's private variable (registered results, task vars, private facts).
_PRIVATE_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*__\w+$")


def reserved_problems(names: Iterable[str]) -> list[str]:
    """Inventory (or extra) variables that would stand in for a fact the roles compute."""
    found = sorted({str(n) for n in names if str(n) in RESERVED_FACTS or _PRIVATE_NAME.match(str(n))})
    if not found:
        return []
    return [
        f"{', '.join(found)} {'is a fact' if len(found) == 1 else 'are facts'} that the roles compute (a private "
        "or cross-host value, such as the head's auth token or its paths): remove "
        f"{'it' if len(found) == 1 else 'them'} from the inventory and extra vars (-e); the roles would take the "
        "inventory's value for the computed one"
    ]


_WINDOWS_CONNECTIONS = ("ssh", "winrm", "psrp")


def connection_problems(hostvars: Mapping[str, Any], windows: bool) -> list[str]:
    """How the admin machine reaches a host, checked before anything connects to it (fact gathering
    included). windows: the host is in the Windows workers' group."""
    connection = str(hostvars.get("ansible_connection") or "ssh").strip()
    plugin = connection.rsplit(".", 1)[-1]
    shell = str(hostvars.get("ansible_shell_type") or "").strip()
    become = str(hostvars.get("ansible_become_method") or "").strip().rsplit(".", 1)[-1]
    problems: list[str] = []
    if windows:
        if plugin not in _WINDOWS_CONNECTIONS:
            problems.append(
                f"ansible_connection is {connection}, which cannot reach a Windows worker: use OpenSSH "
                "(ansible_connection: ssh with ansible_shell_type: powershell) or WinRM (winrm or psrp, with "
                "pywinrm or pypsrp on the admin machine)"
            )
        elif plugin == "ssh" and shell != "powershell":
            problems.append(
                f"ansible_shell_type is {shell or 'not set'} for a Windows worker reached over SSH, so fact "
                "gathering would fail as unreachable: set ansible_shell_type: powershell for the workers_windows "
                "group (OpenSSH's default shell on Windows is cmd)"
            )
        elif plugin != "ssh" and shell and shell != "powershell":
            problems.append(
                f"ansible_shell_type is {shell} for a Windows worker reached over {plugin}: remove it, or set "
                "powershell"
            )
        if become and become != "runas":
            problems.append(
                f"ansible_become_method is {become} for a Windows worker: Windows knows only runas; remove it "
                "or set runas"
            )
    else:
        if plugin in ("winrm", "psrp"):
            problems.append(
                f"ansible_connection is {connection} for a Linux or macOS host, which has no WinRM: use ssh "
                "(or move the host to workers_windows if it runs Windows)"
            )
        if shell in ("powershell", "cmd", "pwsh"):
            problems.append(
                f"ansible_shell_type is {shell} for a Linux or macOS host: remove it (a POSIX shell is used), or "
                "move the host to workers_windows if it runs Windows"
            )
    return problems


# Path-like settings: (variable, kind). Kinds: name (one folder name), home (absolute, or ~/ for the Ray
# account's home), relative (inside another folder), absolute (a POSIX path on the node), folder (relative
# to the node's folder, or absolute; no spaces: Ray's own paths), winpath (a Windows path on the node, not
# used by Ray: spaces allowed), winray (a Windows path Ray runs in: ASCII, no spaces), winfolder (a Task
# Scheduler folder, \Name\), command (a program name or absolute path).
PATH_SETTINGS: dict[str, str] = {
    "bittrader_head_dir_name": "name",
    "bittrader_worker_dir_name": "name",
    "bittrader_code_folder": "home",
    "bittrader_code_subdir": "relative",
    "bittrader_ray_temp_dir": "folder",
    "bittrader_system_python": "absolute",
    "bittrader_throttle_activity_file": "absolute",
    "ray_node_user_shell": "absolute",
    "ray_node_wheelhouse": "absolute",
    "ray_firewall_nft_file": "absolute",
    "tailscale_cli": "command",
    "worker_windows_wheelhouse": "winpath",
    "worker_windows_base_dir": "winray",
    "worker_windows_tailscale_exe": "winpath",
    "worker_windows_task_path": "winfolder",
}
# Characters a path here may hold (shell, systemd unit, plist, .pth and PowerShell safe). Letters of any
# script on Linux and macOS; ASCII only on Windows (Ray's workers fail on non-ASCII paths there).
_POSIX_PATH_CHARS = re.compile(r"[\w./@+,=~ -]*")
_WINDOWS_PATH_CHARS = re.compile(r"[A-Za-z0-9_./\\@+,=~ -]*")
_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,63}")


def _path_problem(name: str, kind: str, value: object, windows: bool) -> str:
    if not isinstance(value, str):
        return f"{name} must be a string (a path), got {_type_name(value)} {value!r}"
    text = value
    if kind in ("home", "relative", "absolute", "winpath", "winray") and text == "":
        return ""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return f"{name} {text!r} holds a control character (a line break, a tab): write the path on one line"
    if kind == "name":
        if not _NAME.fullmatch(text) or text in (".", ".."):
            return (
                f"{name} '{text}' must be one folder name (letters, digits, . _ -, no spaces, no / or \\, not ..): "
                f"it is made inside the Ray account's home; keep the default"
            )
        return ""
    if kind == "winfolder":
        if not re.fullmatch(r"\\(?:[A-Za-z0-9][A-Za-z0-9 ._-]*\\)*", text) or "\\..\\" in text:
            return f"{name} '{text}' must be a Task Scheduler folder such as \\Bittrader\\ (letters, digits, . _ -)"
        return ""
    if kind == "command" and "/" not in text:
        return "" if _NAME.fullmatch(text) else f"{name} '{text}' must be a program name or an absolute path"
    winkind = kind in ("winpath", "winray")
    posix = text.replace("\\", "/") if winkind or windows else text
    if ".." in posix.split("/"):
        return f"{name} '{text}' climbs out of its folder with '..': write the path without '..'"
    chars = _WINDOWS_PATH_CHARS if windows or winkind else _POSIX_PATH_CHARS
    body = text[2:] if re.match(r"^[A-Za-z]:", text) else text
    if not chars.fullmatch(body):
        bad = sorted({ch for ch in body if not chars.fullmatch(ch)})
        return (
            f"{name} '{text}' holds {' '.join(repr(ch) for ch in bad)}, which a shell, a service file or "
            f"{'Windows or Ray on Windows' if windows or winkind else 'Ray'} cannot take safely: "
            "use letters, digits, spaces and . _ - / only"
        )
    if ((windows and kind != "winpath") or kind == "winray") and " " in text:
        return f"{name} '{text}' has a space, which Ray cannot take on Windows: choose a path without spaces"
    if kind == "folder" and " " in text:
        return f"{name} '{text}' has a space, which Ray's own paths cannot take: choose a path without spaces"
    if kind == "folder" and (text == "" or "~" in posix):
        return f"{name} '{text}' must be a folder name inside the node's folder, or an absolute path (no ~)"
    if kind == "relative":
        if posix.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text):
            return f"{name} '{text}' must be a relative path inside its folder, not an absolute one"
    elif kind == "home":
        if not (posix.startswith(("/", "~/")) or re.match(r"^[A-Za-z]:/", posix)):
            return f"{name} '{text}' must be an absolute path or start with ~/ (the Ray account's home)"
        if "~" in posix[1:]:
            return f"{name} '{text}' may have ~ only at its start (~/ is the Ray account's home)"
    elif kind == "absolute":
        if not posix.startswith("/") or "~" in posix:
            return f"{name} '{text}' must be an absolute path (starting with /)"
    elif winkind:
        if not re.match(r"^[A-Za-z]:/", posix):
            return f"{name} '{text}' must be an absolute Windows path such as C:\\wheels"
    return ""


def path_problems(hostvars: Mapping[str, Any], system: object = "") -> list[str]:
    """Every path-like setting of PATH_SETTINGS that the host's variables set (role defaults are valid):
    no '..', no absolute path where a name is expected, no characters the OS or Ray cannot take."""
    windows = str(system) == "Win32NT"
    problems: list[str] = []
    for name, kind in PATH_SETTINGS.items():
        if name in hostvars and hostvars.get(name) is not None:
            problem = _path_problem(name, kind, hostvars.get(name), windows)
            if problem:
                problems.append(problem)
    return problems


# List and dict settings: (variable, type, element check). An element check names what each element is.
_LIST_SETTINGS: dict[str, str] = {
    "bittrader_worker_groups": "group",
    "bittrader_extra_pip_packages": "str",
    "bittrader_firewall_admin_sources": "address",
    "tailscale_up_args": "str",
    "worker_macos_notify_events": "str",
}
_DICT_SETTINGS: dict[str, str] = {"bittrader_ports": "port", "ray_node_wheel_platforms": "tags"}
_BOOL_SETTINGS = (
    "bittrader_throttle_enabled", "bittrader_firewall_enabled", "bittrader_create_user",
    "bittrader_usage_stats_enabled", "bittrader_workload_ship_code", "worker_windows_firewall_enabled",
    "worker_windows_check_tailscale", "ray_node_macos_firewall_allow", "tailscale_install", "tailscale_join",
    "bittrader_ray_metrics_enabled", "bittrader_ray_task_events_enabled", "bittrader_pip_compile",
)
_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", "y", "n"}


def _address_problem(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return True
    return False


def _type_name(value: object) -> str:
    """The YAML-ish type of value (Ansible hands tagged subclasses of str, list and dict to filters)."""
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list"),
                       (tuple, "list"), (Mapping, "dict")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def type_problems(hostvars: Mapping[str, Any]) -> list[str]:
    """List, dict and boolean settings of the wrong type or with elements of the wrong kind: Jinja iterates a
    string's characters where a list was meant, and a string "false" is true in a condition; and the ranges
    and names of the settings of Ray's background work (bittrader_ray_env.ray_env_problems)."""
    problems: list[str] = []
    for name, element in _LIST_SETTINGS.items():
        if name not in hostvars or hostvars.get(name) is None:
            continue
        value = hostvars.get(name)
        if not isinstance(value, list | tuple):
            problems.append(
                f"{name} must be a list, got {_type_name(value)} {value!r}: write it as a YAML list, "
                f"for example [{value!r}]" if isinstance(value, str) else
                f"{name} must be a list, got {_type_name(value)} {value!r}"
            )
            continue
        for item in value:
            if not isinstance(item, str) or not item.strip():
                problems.append(
                    f"{name} holds {item!r} ({_type_name(item)}): each element must be a non-empty string"
                )
            elif element == "address" and _address_problem(item.strip()):
                problems.append(
                    f"{name} holds '{item}', which is not an IP address or range (for example 100.101.1.7 or "
                    "192.168.1.0/24)"
                )
            elif element == "group" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item):
                problems.append(f"{name} holds '{item}', which is not an inventory group name")
    for name, element in _DICT_SETTINGS.items():
        if name not in hostvars or hostvars.get(name) is None:
            continue
        value = hostvars.get(name)
        if not isinstance(value, Mapping):
            problems.append(f"{name} must be a mapping (key: value), got {_type_name(value)} {value!r}")
            continue
        for key, item in value.items():
            if element == "port" and (isinstance(item, bool) or not isinstance(item, int | str)):
                problems.append(f"{name}.{key} must be a port number, got {_type_name(item)} {item!r}")
            elif element == "tags" and (
                not isinstance(item, list | tuple) or not all(isinstance(t, str) and t for t in item)
            ):
                problems.append(f"{name}.{key} must be a list of platform tags, got {item!r}")
    for name in _BOOL_SETTINGS:
        if name not in hostvars or hostvars.get(name) is None:
            continue
        value = hostvars.get(name)
        if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in _BOOL_WORDS):
            continue
        problems.append(f"{name} must be true or false, got {_type_name(value)} {value!r}")
    return problems + ray_env_problems(hostvars)


def inventory_problems(
    hostvars: Mapping[str, Any], windows: bool, others: Mapping[str, Iterable[str]] | None = None
) -> list[str]:
    """What playbooks/preflight.yml's first play checks on the admin machine, before anything reaches the
    host: internal facts set from the inventory, the connection settings, and the path, list, dict and
    boolean settings (the OS from the host's group: Windows paths for the Windows workers).
    others: variable names of the cluster's hosts that are not in this run (a --limit run), whose computed
    facts (the head's token) this run would read through hostvars."""
    problems = reserved_problems(list(hostvars.keys()))
    for host, names in sorted((others or {}).items()):
        problems += [f"{host}'s inventory: {p}" for p in reserved_problems(names)]
    return (
        problems
        + connection_problems(hostvars, windows)
        + path_problems(hostvars, "Win32NT" if windows else "")
        + type_problems(hostvars)
    )


# Operating systems the roles are tested with or written for (docs/platforms.md). Linux: distribution ->
# first supported major release. macOS: Ray's wheels decide (ray_wheel_problem: 12 or newer).
SUPPORTED_LINUX: dict[str, tuple[int, ...]] = {
    "Debian": (11,),
    "Ubuntu": (22, 4),
    "Fedora": (40,),
    "RedHat": (8,),
    "Rocky": (8,),
    "AlmaLinux": (8,),
    "CentOS": (9,),
}
_MIN_POWERSHELL = (5, 1)


def os_problems(facts: Mapping[str, Any]) -> list[str]:
    """The host's OS release against the supported ones (empty facts: nothing to say)."""
    system = str(facts.get("system") or "")
    distribution = str(facts.get("distribution") or "")
    version = str(facts.get("distribution_version") or "")
    listed = ", ".join(f"{d} {'.'.join(map(str, v))}+" for d, v in SUPPORTED_LINUX.items())
    if system == "Linux":
        first = SUPPORTED_LINUX.get(distribution)
        if first is None:
            return [
                f"{distribution or 'this Linux distribution'} {version} is not a supported Linux distribution "
                f"({listed}; docs/platforms.md)"
            ]
        have = _version_tuple(version) or _version_tuple(str(facts.get("distribution_major_version") or ""))
        if have and have < first:
            return [
                f"{distribution} {version} is older than the supported {distribution} "
                f"{'.'.join(map(str, first))}: upgrade it, or leave this host out (docs/platforms.md)"
            ]
    elif system == "Win32NT":
        problems: list[str] = []
        # Windows 10 and 11, and Windows Server 2022 or newer (GitHub's hosted Windows runners, on which
        # .github/workflows/real-os.yml provisions a worker).
        server = re.search(r"\bWindows Server (\d{4})\b", distribution)
        if not (server and int(server.group(1)) >= 2022) and (
            not re.search(r"\bWindows (10|11)\b", distribution) or "Server" in distribution
        ):
            problems.append(
                f"{distribution or 'this Windows'} is not Windows 10, 11 or Server 2022 or newer, the Windows "
                "releases these roles support (docs/platforms.md)"
            )
        ps = facts.get("powershell_version")
        if ps is not None and _version_tuple(str(ps)) and _version_tuple(str(ps)) < _MIN_POWERSHELL[:1]:
            problems.append(f"Windows PowerShell {ps} is older than 5.1: install Windows Management Framework 5.1")
        return problems
    return []


def resource_problems(s: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    """Memory and CPUs of the host against bittrader_min_memory_mb and bittrader_min_cpus."""
    problems: list[str] = []
    mem, want_mem = _whole(facts.get("memtotal_mb")), _whole(s.get("min_memory_mb"))
    if mem is not None and want_mem is not None and mem < want_mem:
        problems.append(
            f"this host has {mem} MiB of memory, less than bittrader_min_memory_mb ({want_mem} MiB) that a Ray "
            "node needs (about 0.4 GiB idle for a worker, 1.8 GiB for a head, plus each task): leave it out, or "
            "add memory"
        )
    cpus, want_cpus = _whole(facts.get("processor_vcpus")), _whole(s.get("min_cpus"))
    if cpus is not None and want_cpus is not None and cpus < want_cpus:
        problems.append(
            f"this host has {cpus} logical CPU(s), fewer than bittrader_min_cpus ({want_cpus}): Ray's own "
            "processes would compete with every task; leave it out"
        )
    return problems


def platform_problems(
    hostvars: Mapping[str, Any], facts: Mapping[str, Any] | None = None, limits: Mapping[str, Any] | None = None
) -> list[str]:
    """validate.yml's checks beyond host_problems: the path, list, dict and boolean settings the host's
    variables set (hostvars: the inventory's and extra vars; role defaults are valid), the OS release, and
    memory and CPUs against limits (min_memory_mb, min_cpus)."""
    f = facts or {}
    return (
        path_problems(hostvars, f.get("system", ""))
        + type_problems(hostvars)
        + os_problems(f)
        + resource_problems(limits or {}, f)
    )


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_inventory_problems": inventory_problems,
            "bittrader_reserved_problems": reserved_problems,
            "bittrader_platform_problems": platform_problems,
            "bittrader_path_problems": path_problems,
            "bittrader_type_problems": type_problems,
        }
