"""Jinja filters of the Bittrader Ray cluster: address checks, Ray wheel availability, tables.

The logic is plain Python so that it is unit-tested without Ansible (tests/unit/test_filters.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Ray wheels published on PyPI, by platform: (first Ray release, last Ray release or None,
# supported CPython minors). Facts from PyPI's file lists (docs/platforms.md).
_MIN_RAY_FOR_PY313_WINDOWS = (2, 58, 0)
_LAST_RAY_INTEL_MAC = (2, 49, 2)
_LAST_RAY_PY39 = (2, 51, 2)
# macOS release the wheels are built for (PyPI file lists, `pip index versions ray --platform ...`,
# 2026-11): Apple silicon wheels need macOS 12 from Ray 2.48.0 (macOS 11 stops at 2.47.1); Intel wheels
# need macOS 12 from Ray 2.47.0 (macOS 10.15/11 stop at 2.46.0).
_MIN_MACOS = (12,)
_FIRST_RAY_MACOS12_ARM64 = (2, 48, 0)
_FIRST_RAY_MACOS12_INTEL = (2, 47, 0)
_INTEL_MAC_ARCHES = {"x86_64", "amd64", "i386"}
# The one rule for Intel Macs, in validation and in roles/worker_macos/README.md: no Ray release these
# roles can run has an Intel macOS wheel.
INTEL_MAC_RULE = (
    "Ray's last wheel for Intel Macs is 2.49.2, older than the token authentication (Ray 2.52.0) these roles "
    "require, so an Intel Mac cannot join the cluster with any Ray version; leave this Mac out of the cluster"
)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def is_ip(value: object) -> bool:
    """True when value is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def in_cidr(value: object, cidr: str) -> bool:
    """True when the address value lies in the network cidr."""
    try:
        return ipaddress.ip_address(str(value)) in ipaddress.ip_network(str(cidr), strict=False)
    except ValueError:
        return False


def is_loopback(value: object) -> bool:
    try:
        return ipaddress.ip_address(str(value)).is_loopback
    except ValueError:
        return False


def ray_wheel_problem(
    ray_version: str, python_version: str, system: str, machine: str, os_version: str = ""
) -> str:
    """Why PyPI has no Ray wheel for this platform, or "" when it has one.

    system is Ansible's ansible_system (Linux, Darwin, Win32NT); machine its ansible_architecture;
    os_version, when given, the OS release (ansible_distribution_version: on macOS "15.2.1"), which
    decides whether a Mac is new enough for the pinned Ray's wheels.
    """
    ray = _version_tuple(ray_version)
    py = _version_tuple(python_version)[:2]
    sysname = str(system).lower()
    arch = str(machine).lower()
    if len(ray) < 2 or len(py) < 2:
        return f"cannot read the versions ray={ray_version!r} python={python_version!r}"
    if py < (3, 10) and ray > _LAST_RAY_PY39:
        return f"Ray {ray_version} has no wheel for Python {python_version}: the last with Python 3.9 is 2.51.2"
    if py > (3, 14) or (py >= (3, 14) and ray < (2, 52)):
        return f"Ray {ray_version} has no wheel for Python {python_version}"
    if sysname == "darwin":
        if arch in _INTEL_MAC_ARCHES and ray > _LAST_RAY_INTEL_MAC:
            return f"Ray {ray_version} has no wheel for Intel Macs (x86_64): {INTEL_MAC_RULE}"
        if arch not in {"arm64", "aarch64"} | _INTEL_MAC_ARCHES:
            return f"no Ray wheel for macOS on {machine}"
        macos = _version_tuple(os_version)
        first_needing_12 = _FIRST_RAY_MACOS12_INTEL if arch in _INTEL_MAC_ARCHES else _FIRST_RAY_MACOS12_ARM64
        if macos and macos < _MIN_MACOS and ray >= first_needing_12:
            return (
                f"Ray {ray_version} has no wheel for macOS {os_version}: its macOS wheels need "
                "macOS 12 (Monterey) or newer; update this Mac, or leave it out"
            )
    elif sysname.startswith("win"):
        if arch not in {"64-bit", "x86_64", "amd64"}:
            return f"Ray has Windows wheels for 64-bit x86 only, not {machine}"
        if py >= (3, 13) and ray < _MIN_RAY_FOR_PY313_WINDOWS:
            return f"Ray {ray_version} has no Windows wheel for Python {python_version}: Windows has 3.13+ from 2.58"
    elif sysname == "linux":
        if arch not in {"x86_64", "amd64", "aarch64", "arm64"}:
            return f"Ray has Linux wheels for x86_64 and aarch64 only, not {machine}"
    else:
        return f"Ray has no wheel for {system}"
    return ""


def text_table(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> str:
    """Render rows (mappings) as an aligned plain-text table with the given columns."""
    data = [["" if row.get(col) is None else str(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in data]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(widths[i]) for i, col in enumerate(columns))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(r[i].ljust(widths[i]) for i in range(len(columns))) for r in data]
    return "\n".join(line.rstrip() for line in lines)


# bittrader_ports keys that only the head listens on, and those an administrator reaches too (the
# dashboard and job API, Ray Client, and the head's two Prometheus metrics endpoints).
HEAD_ONLY_PORTS = frozenset({"gcs", "client_server", "dashboard", "autoscaler_metrics", "dashboard_metrics"})
ADMIN_PORTS = frozenset({"dashboard", "client_server", "autoscaler_metrics", "dashboard_metrics"})


def port_list(ports: Mapping[str, int], role: str = "worker") -> list[int]:
    """Every single TCP port a node of the role listens on (the worker range excluded)."""
    skip = {"min_worker", "max_worker"}
    return sorted(
        int(v) for k, v in ports.items() if k not in skip and (role == "head" or k not in HEAD_ONLY_PORTS)
    )


def firewall_ports(ports: Mapping[str, Any], role: str = "worker") -> dict[str, list[str]]:
    """Ray's TCP ports on a node of the role, split by who may reach them, as nftables/ufw port specs.

    "cluster": the ports only the cluster's nodes reach (GCS, raylet, object manager, agents, metrics and
    the worker processes' range); "admin": the ports an administrator reaches too (the head's dashboard and
    job API, the Ray Client server and the head's Prometheus metrics).
    """
    singles = port_list(ports, role)
    admin = sorted(int(ports[name]) for name in ADMIN_PORTS if role == "head" and name in ports)
    cluster = [str(p) for p in singles if p not in admin]
    cluster.append(f"{int(ports['min_worker'])}-{int(ports['max_worker'])}")
    return {"cluster": cluster, "admin": [str(p) for p in admin]}


def node_addresses(hostvars: Mapping[str, Any], hosts: Iterable[str]) -> dict[str, str]:
    """Each host's cluster address: the address it advertises (resolved this run), else bittrader_node_ip,
    else ansible_host when that is an IP address; "" when none is known (for example a host named by DNS
    that is not part of this run)."""
    result: dict[str, str] = {}
    for host in hosts:
        hv = hostvars[host] if host in hostvars else {}
        address = ""
        for key in ("bittrader_advertise_ip", "bittrader_node_ip", "ansible_host"):
            value = hv.get(key) if hasattr(hv, "get") else None
            if value and is_ip(value):
                address = str(value)
                break
        result[host] = address
    return result


def ufw_rules(ports: Mapping[str, list[str]], cluster: list[str], admin: list[str]) -> list[dict[str, str]]:
    """The ufw rules of a node, in order: allows per source and port, then a deny per port."""
    rules = [{"rule": "allow", "from_ip": src, "port": port} for src in cluster for port in ports["cluster"]]
    rules += [{"rule": "allow", "from_ip": src, "port": port} for src in admin for port in ports["admin"]]
    rules += [{"rule": "deny", "from_ip": "any", "port": port} for port in ports["cluster"] + ports["admin"]]
    return rules


_UFW_ADDED = re.compile(
    r"^ufw (?P<rule>allow|deny|reject)(?: from (?P<src>\S+))? to any port (?P<port>\S+) proto tcp"
    r" comment '(?P<c>[^']*)'$"
)


def ufw_stale(added: Iterable[str], wanted: Iterable[Mapping[str, str]], comment: str) -> list[dict[str, str]]:
    """Rules of `ufw show added` that carry our comment but are not wanted any more (to delete)."""
    want = {(r["rule"], r["from_ip"], r["port"].replace("-", ":")) for r in wanted}
    stale: list[dict[str, str]] = []
    for line in added:
        m = _UFW_ADDED.match(line.strip())
        if not m or m["c"] != comment:
            continue
        key = (m["rule"], m["src"] or "any", m["port"])
        if key not in want:
            stale.append({"rule": key[0], "from_ip": key[1], "port": key[2]})
    return stale


def port_problems(ports: Mapping[str, Any]) -> list[str]:
    """Out-of-range, duplicated or overlapping Ray ports, as messages that say what to change."""
    problems: list[str] = []
    values: dict[str, int] = {}
    for name, value in ports.items():
        try:
            port = int(value)
        except (TypeError, ValueError):
            problems.append(f"bittrader_ports.{name}={value!r} is not a number: give a TCP port in 1024-65535")
            continue
        if not 1024 <= port <= 65535:
            problems.append(
                f"bittrader_ports.{name}={port} is outside 1024-65535: choose a free unprivileged port in that range"
            )
        values[name] = port
    lo, hi = values.get("min_worker"), values.get("max_worker")
    if lo is not None and hi is not None:
        if hi < lo:
            problems.append(
                f"bittrader_ports.min_worker={lo} is above bittrader_ports.max_worker={hi}: swap them "
                "(the range is min_worker-max_worker)"
            )
        elif hi - lo < 15:
            problems.append(
                f"the worker port range {lo}-{hi} is too small (at least 16 ports, one per Ray worker process): "
                f"raise bittrader_ports.max_worker to {lo + 15} or more"
            )
    singles = {k: v for k, v in values.items() if k not in {"min_worker", "max_worker"}}
    seen: dict[int, str] = {}
    for name, port in singles.items():
        if port in seen:
            problems.append(
                f"bittrader_ports.{name} and bittrader_ports.{seen[port]} are both {port}: give each its own port"
            )
        seen[port] = name
        if lo is not None and hi is not None and lo <= port <= hi:
            problems.append(
                f"bittrader_ports.{name}={port} lies inside the worker port range {lo}-{hi}: move it out of the "
                "range, or move the range (min_worker/max_worker)"
            )
    return problems


# --- Checks of each host's variables against its facts, before any host changes (validate.yml) ---

# Ray releases these roles can run. Token authentication (RAY_AUTH_MODE=token, which every node, job and
# client here uses) exists from Ray 2.52.0 (docs.ray.io, "Ray token authentication"): an older Ray ignores
# it and would run the cluster without authentication. 2.60.0 is the newest release on PyPI when these
# roles were written and tested (2026-11-04); raise it after checking a newer release with these roles.
_FIRST_RAY_WITH_TOKEN_AUTH = (2, 52, 0)
_NEWEST_KNOWN_RAY = (2, 60, 0)
# The OS each inventory group's role is for (ansible_facts.system), as site.yml applies them.
_GROUP_SYSTEMS = {"workers_linux": ("Linux",), "workers_macos": ("Darwin",), "workers_windows": ("Win32NT",)}
_HEAD_SYSTEMS = ("Linux", "Darwin")
_SYSTEM_NAMES = {"Linux": "Linux", "Darwin": "macOS", "Win32NT": "Windows"}
_PRIVILEGED_USERS = {"root", "administrator", "system"}
_MIN_OBJECT_STORE = 78643200  # 75 MiB, Ray's minimum
_PIP_NAME = r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[A-Za-z0-9,._ -]*\])?\s*"
_PIP_PIN = re.compile(_PIP_NAME + r"==\s*(?P<version>[^=<>~!;\s]+)$")
_PIP_URL = re.compile(_PIP_NAME + r"@\s*\S+$")
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


def _blank(value: object) -> bool:
    return value is None or str(value).strip() == ""


def _whole(value: object) -> int | None:
    """value as a whole number >= 0 (int or digit string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def expected_cpus(num_cpus: object, throttled: bool, vcpus: object = None) -> int | None:
    """The CPUs a node's health is checked against (verify, the health check): none while the throttle
    moves them; the inventory's bittrader_num_cpus when it is set; else the host's logical CPUs (vcpus),
    none when they are not known (a host this run did not read)."""
    if throttled:
        return None
    return _whole(vcpus) if _blank(num_cpus) else _whole(num_cpus)


def expected_gpus(num_gpus: object, system: object = None) -> int | None:
    """The GPUs a node gives Ray, which its `ray start` gets as --num-gpus and verify checks: the
    inventory's bittrader_num_gpus when it is set; 0 on a Mac when it is empty (Ray 2.60 counts an Apple
    silicon Mac's Metal GPU as one "GPU", and a job asking for a CUDA GPU would land there); else none:
    Ray counts the host's NVIDIA GPUs itself, and verify compares that with what a task on the node sees."""
    if not _blank(num_gpus):
        return _whole(num_gpus)
    return 0 if str(system) == "Darwin" else None


def admin_source_problems(sources: object, variable: str = "bittrader_firewall_admin_sources") -> list[str]:
    """Why the extra sources allowed to the head's dashboard / job API and Ray Client ports cannot be used.

    Each must be an IPv4 address or range (the firewall's sets are IPv4). A private or Tailscale range
    may be of any size; a public one must be a single address (an office's fixed IP), never a range of
    the internet: whoever reaches those ports with the token runs code on every node.
    """
    if sources in (None, ""):
        return []
    if isinstance(sources, (str, bytes, Mapping)) or not isinstance(sources, Iterable):
        return [f"{variable} must be a list of IPv4 addresses or ranges, for example ['100.101.102.103'], got "
                f"{sources!r}"]
    problems: list[str] = []
    for item in sources:
        text = str(item).strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(
                f"{variable}: '{text}' is not an IPv4 address or range: write your admin machine's address, "
                "for example 100.101.102.103 (its `tailscale ip -4`) or 192.168.1.20"
            )
            continue
        if net.version != 4:
            problems.append(f"{variable}: {text} is IPv6; the firewall's admin sources are IPv4 addresses or ranges")
        elif net.prefixlen == 0 or (net.is_global and net.num_addresses > 1):
            problems.append(
                f"{variable}: {text} is a range of public internet addresses, to which the dashboard, job API and "
                "Ray Client would be opened: give your admin machine's own address (a single public IP is "
                "accepted), or use an SSH tunnel through the head (docs/clients.md)"
            )
    return problems


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def ray_version_problem(version: object) -> str:
    """Why bittrader_ray_version cannot be installed by these roles, or ""."""
    text = str(version).strip()
    if not re.fullmatch(r"\d+\.\d+\.\d+", text):
        return (
            f"bittrader_ray_version '{text}' is not an exact release such as 2.60.0: every node must run the "
            "same Ray release"
        )
    ray = _version_tuple(text)
    first = ".".join(map(str, _FIRST_RAY_WITH_TOKEN_AUTH))
    newest = ".".join(map(str, _NEWEST_KNOWN_RAY))
    if ray < _FIRST_RAY_WITH_TOKEN_AUTH:
        return (
            f"bittrader_ray_version {text} has no token authentication (Ray {first} and newer have it), so the "
            f"cluster would accept anyone's jobs: pin Ray {first} or newer ({newest} is tested)"
        )
    if ray > _NEWEST_KNOWN_RAY:
        return (
            f"bittrader_ray_version {text} is not a Ray release these roles know (the newest is {newest}): pin a "
            f"published release (`pip index versions ray` lists them); for a newer Ray, check it with these roles, "
            "then raise _NEWEST_KNOWN_RAY in filter_plugins/bittrader.py"
        )
    return ""


# Ray's optional extras (pip's ray[EXTRA]) these roles may install on every node. "default" (the dashboard
# and the job API every playbook submits to) is required; "tune" brings Ray Tune's own dependencies
# (fsspec, pandas, pyarrow, tensorboardX), without which a Tune run fails on the workers.
RAY_EXTRAS = ("default", "tune", "data", "train", "serve", "client")
_REQUIRED_RAY_EXTRAS = ("default",)


def ray_extras_problem(extras: object) -> str:
    """Why bittrader_ray_extras cannot be the extras of every node's Ray, or ""."""
    if not isinstance(extras, list | tuple) or not all(isinstance(e, str) for e in extras):
        return (
            f"bittrader_ray_extras must be a list of Ray's extras such as [default, tune], got {extras!r}"
        )
    names = [e.strip().lower() for e in extras]
    unknown = sorted({n for n in names if n not in RAY_EXTRAS})
    if unknown:
        return (
            f"bittrader_ray_extras has {', '.join(repr(n) for n in unknown)}, which these roles do not install: "
            f"choose from {', '.join(RAY_EXTRAS)}"
        )
    missing = [n for n in _REQUIRED_RAY_EXTRAS if n not in names]
    if missing:
        return (
            f"bittrader_ray_extras lacks {', '.join(missing)}: the head's dashboard and job API (every playbook's "
            "jobs) need ray[default]; keep default in the list"
        )
    if len(set(names)) != len(names):
        return f"bittrader_ray_extras lists an extra twice ({', '.join(names)}): name each once"
    return ""


def ray_requirement(version: object, extras: object = ("default",)) -> str:
    """The pip requirement of every node's Ray: ray[EXTRA,...]==VERSION, the extras sorted (one spelling, so
    the wheelhouse's key and the installed-state check see the same string on every node)."""
    names = sorted({str(e).strip().lower() for e in extras or ()}) if isinstance(extras, list | tuple) else []
    return f"ray[{','.join(names)}]=={str(version).strip()}" if names else f"ray=={str(version).strip()}"


def optuna_version_problem(version: object) -> str:
    """Why bittrader_optuna_version cannot be installed on every node, or "" (empty: Optuna not installed)."""
    text = "" if version is None else str(version).strip()
    if text and not re.fullmatch(r"\d+\.\d+\.\d+", text):
        return (
            f"bittrader_optuna_version '{text}' is not an exact release such as 5.0.0 (or empty for none): every "
            "node installs the same Optuna"
        )
    return ""


def cidr_problem(cidr: object, variable: str = "bittrader_cluster_cidr") -> str:
    """Why cidr cannot be the range allowed to reach Ray's ports, or ""."""
    text = str(cidr).strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return (
            f"{variable} '{text}' is not an address range: write NETWORK/PREFIX, for example 192.168.1.0/24 "
            "(your LAN) or 100.64.0.0/10 (Tailscale)"
        )
    if "/" not in text:
        return f"{variable} '{text}' has no prefix length: write NETWORK/PREFIX, for example {net.network_address}/24"
    too_wide = net.prefixlen == 0 or (net.is_global if net.version == 4 else net.is_global and net.prefixlen < 48)
    if too_wide:
        return (
            f"{variable} {text} includes public internet addresses, and every Ray port would be opened to them "
            "(Ray runs any job it receives): use your LAN's private range (for example 192.168.1.0/24) or "
            "Tailscale's 100.64.0.0/10"
        )
    return ""


def duplicate_addresses(addresses: Mapping[str, object], host: str | None = None) -> list[str]:
    """Messages naming hosts that advertise the same address (host -> address; "" is ignored); with
    host, only the clash that host is part of, told from its side."""
    by_ip: dict[str, list[str]] = {}
    for name, ip in addresses.items():
        if ip:
            by_ip.setdefault(str(ip), []).append(str(name))
    problems: list[str] = []
    for ip, names in by_ip.items():
        if len(names) < 2:
            continue
        if host is None:
            problems.append(
                f"{' and '.join(names)} advertise the same address {ip}: every node needs its own; fix "
                f"ansible_host or bittrader_node_ip of {', '.join(names[1:])}"
            )
        elif host in names:
            others = [n for n in names if n != host]
            problems.append(
                f"{host} advertises {ip}, the address of {' and '.join(others)} too: every node needs its own; "
                f"fix ansible_host or bittrader_node_ip of one of them"
            )
    return problems


def pip_problems(packages: object, pins: Mapping[str, object]) -> list[str]:
    """Unpinned extra pip packages, and ones that contradict the cluster's own pins (name -> version)."""
    if not isinstance(packages, list | tuple):
        return [f"bittrader_extra_pip_packages must be a list of pinned requirements, got {packages!r}"]

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    problems: list[str] = []
    seen: dict[str, str] = {norm(k): str(v) for k, v in pins.items()}
    owner = {norm(k): f"bittrader_{norm(k)}_version" for k in pins}
    for item in packages:
        text = str(item).strip()
        pin, url = _PIP_PIN.match(text), _PIP_URL.match(text)
        match = pin or url
        if match is None:
            problems.append(
                f"bittrader_extra_pip_packages entry '{text}' is not pinned: write NAME==VERSION (for example "
                "pandas==2.3.3) so that every node installs the same release"
            )
            continue
        name = norm(match["name"])
        version = pin["version"] if pin else text
        if name in seen and seen[name] != version:
            where = owner.get(name, "its other entry in bittrader_extra_pip_packages")
            problems.append(
                f"bittrader_extra_pip_packages entry '{text}' contradicts {where} ({seen[name]}): pip cannot "
                f"install both; keep one version"
            )
        seen.setdefault(name, version)
        owner.setdefault(name, f"the entry '{text}'")
    return problems


def _throttle_value(key: str, value: object) -> object:
    """A throttle variable as the ray_throttle_daemon module's argument spec would convert it."""
    if isinstance(value, str) and key in _THROTTLE_INTS | _THROTTLE_FLOATS:
        try:
            number = float(value.strip())
        except ValueError:
            return value
        return int(number) if key in _THROTTLE_INTS and number.is_integer() else number
    return value


def throttle_problems(policy: Mapping[str, Any], system: object) -> list[str]:
    """The throttle daemon's own policy checks (node_agent/src/bittrader_node_agent/throttle/config.py,
    the ray_throttle_daemon module's module_utils), in variable names."""
    import importlib
    from pathlib import Path

    import ansible.module_utils

    extra = str(Path(__file__).resolve().parent.parent / "node_agent" / "src")
    if extra not in list(ansible.module_utils.__path__):
        ansible.module_utils.__path__.append(extra)
    throttle = importlib.import_module("ansible.module_utils.bittrader_node_agent.throttle.config")
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


def busy_ports(listening: Iterable[Any], ports: Mapping[str, Any], role: str, user: str) -> list[str]:
    """Ray ports of a node of the role that another program listens on (listening: [port, user] pairs from
    roles/cluster_facts/files/node_probe.py; Ray's own processes run as user and are not counted)."""
    names: dict[int, str] = {}
    for name, value in ports.items():
        if name in {"min_worker", "max_worker"} or (role != "head" and name in HEAD_ONLY_PORTS):
            continue
        try:
            names[int(value)] = f"bittrader_ports.{name}"
        except (TypeError, ValueError):
            continue
    try:
        lo, hi = int(ports["min_worker"]), int(ports["max_worker"])
    except (KeyError, TypeError, ValueError):
        lo, hi = 1, 0
    taken: dict[int, str] = {}
    for entry in listening or []:
        try:
            port, owner = int(entry[0]), str(entry[1])
        except (TypeError, ValueError, IndexError):
            continue
        if owner != str(user):
            taken.setdefault(port, owner)
    problems = [
        f"port {port} ({names[port]}) is already in use by another program (user {taken[port]}): stop that "
        f"program, or set {names[port]} to a free port"
        for port in sorted(taken)
        if port in names
    ]
    in_range = sorted(p for p in taken if lo <= p <= hi)
    if in_range:
        problems.append(
            f"{len(in_range)} port(s) of the worker port range {lo}-{hi} are in use by other programs "
            f"({', '.join(map(str, in_range[:5]))}): move bittrader_ports.min_worker/max_worker to a free range"
        )
    return problems


def preflight_problems(found: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
    """What the read of a host (roles/cluster_facts/files/node_probe.py's JSON, found) says it cannot run.

    s: python_source, python_version, system_python, system (ansible_facts.system), user, account (the
    user's passwd entry [password, uid, gid, gecos, home, shell], or None), object_store_memory, ports,
    role (head or worker), head_host, head_token_missing (a --limit run found no token on the head),
    head_token_file; and probe_problems' min_free_disk_mb and memtotal_mb.
    """
    problems: list[str] = []
    python = str(found.get("python") or "")
    if s.get("python_source") == "system" and not python:
        problems.append(
            f"{s.get('system_python')} did not run here: install Python {s.get('python_version')} there and point "
            "bittrader_system_python at it, or set bittrader_python_source: uv"
        )
    elif s.get("python_source") == "system" and python != str(s.get("python_version")):
        problems.append(
            f"{s.get('system_python')} is Python {python}, not the pinned {s.get('python_version')}: pin "
            "bittrader_python_version to the release every node has, or set bittrader_python_source: uv (the same "
            "build everywhere)"
        )
    account = s.get("account")
    uid = _whole(account[1]) if isinstance(account, list | tuple) and len(account) > 1 else None
    user = s.get("user")
    if uid == 0:
        problems.append(
            f"bittrader_user {user} has uid 0 (root) here: Ray must run as an ordinary account; choose another user "
            "(the default is bittrader)"
        )
    elif uid is not None and uid < 1000 and s.get("system") == "Linux":
        problems.append(
            f"bittrader_user {user} is a system account here (uid {uid}): the role would take it over (its shell, "
            "its home); choose a new name such as bittrader"
        )
    store, shm = _whole(s.get("object_store_memory")), _whole(found.get("shm_bytes"))
    if store is not None and shm is not None and store > shm:
        problems.append(
            f"bittrader_object_store_memory is {store} bytes but /dev/shm here holds only {shm} bytes, and Ray "
            f"refuses to start: set it to at most {shm}, or give the host a bigger /dev/shm"
        )
    problems += busy_ports(found.get("listening") or [], s.get("ports") or {}, str(s.get("role")), str(user))
    if s.get("role") == "worker" and s.get("head_token_missing"):
        head = s.get("head_host")
        problems.append(
            f"the head {head} has no auth token yet ({s.get('head_token_file')}), so this worker could not join: "
            f"provision the head first (ansible-playbook site.yml --limit {head}), then run this --limit again"
        )
    problems += probe_problems(found, s)
    return problems


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
        "head_cluster_token",
        "ray_firewall_admin_sources", "ray_firewall_backend_used", "ray_firewall_cluster_sources",
        "ray_firewall_mode", "ray_firewall_ports",
        "ray_node_base_python", "ray_node_launchd_domain", "ray_node_launchd_label", "ray_node_launchd_plist",
        "ray_node_launchd_started", "ray_node_service_started", "ray_node_throttle_started", "ray_node_upgrade",
        "ray_node_user_account", "ray_node_user_uid",
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
    string's characters where a list was meant, and a string "false" is true in a condition."""
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
    return problems


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


# The one passwordless rule the roles install themselves (ray_node's throttle-Linux.yml, from
# the node agent's throttle/config.py sudoers_rule): setting the CPU quota of Ray's own unit, which gives
# no root. A rule of `sudo -l`'s listing is refused unless every command in it is one of these.
_THROTTLE_COMMAND = re.compile(
    r"/\S*/systemctl set-property --runtime [A-Za-z0-9_.@-]+\.service CPUQuota\\=(?:\d+%)?"
)


def _throttle_rule(rule: str) -> bool:
    """Whether a NOPASSWD rule of `sudo -l` lists only the throttle's CPU-quota commands."""
    text = re.sub(r"^\([^)]*\)\s*", "", rule.strip())
    text = re.sub(r"^(?:[A-Z_]+:\s*)+", "", text)
    commands = [c.strip() for c in re.split(r"(?<!\\),", text)]
    return bool(commands) and all(_THROTTLE_COMMAND.fullmatch(c) for c in commands)


def probe_problems(found: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
    """What node_probe.py read about sudo rights and free disk space. s: user, min_free_disk_mb,
    object_store_memory, memtotal_mb, base_dir."""
    problems: list[str] = []
    rules = found.get("sudo_nopasswd", [])
    if rules:
        rules = [rule for rule in rules if not _throttle_rule(str(rule))]
    if rules is None and "sudo_nopasswd" in found:
        problems.append(
            f"could not read the sudo rights of bittrader_user {s.get('user')} (sudo -n -l -U failed): preflight "
            "refuses a Ray account with passwordless sudo and must be able to check; run it with a login that "
            "has sudo (become)"
        )
    elif rules:
        problems.append(
            f"bittrader_user {s.get('user')} has passwordless sudo here ({'; '.join(map(str, rules))[:200]}): "
            "Ray runs every job it receives as this account, so each job could become root; remove the NOPASSWD "
            "rule (and the sudo/wheel/admin group) from this account, and give Ansible a separate admin login "
            "(or --ask-become-pass)"
        )
    disk = found.get("disk") or {}
    base, spill = disk.get("base") or ["", None], disk.get("spill") or ["", None]
    want, base_free, spill_free = _whole(s.get("min_free_disk_mb")), _whole(base[-1]), _whole(spill[-1])
    if want is not None and base_free is not None and base_free < want * 2**20:
        problems.append(
            f"{base[0]} has {base_free // 2**20} MiB free, less than bittrader_min_free_disk_mb ({want} MiB) "
            "for the node's Python, virtual environment and logs: free some space"
        )
    store, mem = _whole(s.get("object_store_memory")), _whole(s.get("memtotal_mb"))
    if store is None and mem:
        store = mem * 2**20 * 3 // 10
    if store is not None and spill_free is not None and spill_free < store:
        problems.append(
            f"{spill[0]} has {spill_free // 2**20} MiB free, less than the object store ({store // 2**20} MiB) "
            "that Ray spills there when it is full: free some space, or lower bittrader_object_store_memory"
        )
    return problems


def node_check_lines(reports: Mapping[str, Any]) -> list[str]:
    """One line per node whose on-node check (the node agent's bittrader-verify --json; reports:
    host -> its output) found problems, for verify's failure message; a refused token comes first."""
    import json

    lines: list[str] = []
    for host, text in sorted(reports.items()):
        try:
            found = json.loads(str(text or ""))
        except ValueError:
            continue
        if not isinstance(found, dict) or found.get("healthy", True):
            continue
        problems = [str(p) for p in found.get("problems") or []]
        problems.sort(key=lambda p: "refused" not in p)
        lines.append(f"{host} (on the node): {'; '.join(problems)}")
    return lines


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_is_ip": is_ip,
            "bittrader_in_cidr": in_cidr,
            "bittrader_is_loopback": is_loopback,
            "bittrader_ray_wheel_problem": ray_wheel_problem,
            "bittrader_text_table": text_table,
            "bittrader_port_list": port_list,
            "bittrader_port_problems": port_problems,
            "bittrader_host_problems": host_problems,
            "bittrader_ray_version_problem": ray_version_problem,
            "bittrader_ray_requirement": ray_requirement,
            "bittrader_ray_extras_problem": ray_extras_problem,
            "bittrader_cidr_problem": cidr_problem,
            "bittrader_duplicate_addresses": duplicate_addresses,
            "bittrader_busy_ports": busy_ports,
            "bittrader_preflight_problems": preflight_problems,
            "bittrader_firewall_ports": firewall_ports,
            "bittrader_node_addresses": node_addresses,
            "bittrader_ufw_rules": ufw_rules,
            "bittrader_ufw_stale": ufw_stale,
            "bittrader_expected_cpus": expected_cpus,
            "bittrader_inventory_problems": inventory_problems,
            "bittrader_reserved_problems": reserved_problems,
            "bittrader_platform_problems": platform_problems,
            "bittrader_path_problems": path_problems,
            "bittrader_type_problems": type_problems,
            "bittrader_probe_problems": probe_problems,
            "bittrader_node_check_lines": node_check_lines,
            "bittrader_expected_gpus": expected_gpus,
            "bittrader_admin_source_problems": admin_source_problems,
        }
