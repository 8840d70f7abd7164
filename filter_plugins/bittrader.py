"""Jinja filters of the Bittrader Ray cluster: address checks, Ray wheel availability, tables.

The logic is plain Python so that it is unit-tested without Ansible (tests/unit/test_filters.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Ray wheels published on PyPI, by platform: (first Ray release, last Ray release or None,
# supported CPython minors). Facts from PyPI's file lists (see README, "Platforms").
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
            return (
                f"Ray {ray_version} has no wheel for Intel Macs (x86_64): the last is 2.49.2; "
                "pin bittrader_ray_version to 2.49.2 or older on every node, or leave this Mac out"
            )
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


def port_list(ports: Mapping[str, int], role: str = "worker") -> list[int]:
    """Every single TCP port a node of the role listens on (the worker range excluded)."""
    head_only = {"gcs", "client_server", "dashboard"}
    skip = {"min_worker", "max_worker"}
    return sorted(
        int(v) for k, v in ports.items() if k not in skip and (role == "head" or k not in head_only)
    )


def port_problems(ports: Mapping[str, Any]) -> list[str]:
    """Out-of-range, duplicated or overlapping Ray ports, as messages."""
    problems: list[str] = []
    values: dict[str, int] = {}
    for name, value in ports.items():
        try:
            port = int(value)
        except (TypeError, ValueError):
            problems.append(f"bittrader_ports.{name}={value!r} is not a number")
            continue
        if not 1024 <= port <= 65535:
            problems.append(f"bittrader_ports.{name}={port} is outside 1024-65535")
        values[name] = port
    lo, hi = values.get("min_worker"), values.get("max_worker")
    if lo is not None and hi is not None:
        if hi - lo < 15:
            problems.append(f"the worker port range {lo}-{hi} is too small (at least 16 ports)")
    singles = {k: v for k, v in values.items() if k not in {"min_worker", "max_worker"}}
    seen: dict[int, str] = {}
    for name, port in singles.items():
        if port in seen:
            problems.append(f"bittrader_ports.{name} and bittrader_ports.{seen[port]} are both {port}")
        seen[port] = name
        if lo is not None and hi is not None and lo <= port <= hi:
            problems.append(f"bittrader_ports.{name}={port} lies inside the worker port range {lo}-{hi}")
    return problems


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
        }
