"""Jinja filters for the pinned versions: which Ray and Python releases have wheels for a platform
(PyPI's file lists, docs/platforms.md), the Ray release and extras the roles accept, the pip requirement
they install, and extra pip packages against the pins. Unit-tested in tests/unit/test_filters_macos.py
and test_validation.py."""

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

from bittrader_basics import _version_tuple  # noqa: E402

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
# The one rule for Intel Macs, in validation and in docs/platforms-macos.md: no Ray release these
# roles can run has an Intel macOS wheel.
INTEL_MAC_RULE = (
    "Ray's last wheel for Intel Macs is 2.49.2, older than the token authentication (Ray 2.52.0) these roles "
    "require, so an Intel Mac cannot join the cluster with any Ray version; leave this Mac out of the cluster"
)


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


# Ray releases these roles can run. Token authentication (RAY_AUTH_MODE=token, which every node, job and
# client here uses) exists from Ray 2.52.0 (docs.ray.io, "Ray token authentication"): an older Ray ignores
# it and would run the cluster without authentication. 2.60.0 is the newest release on PyPI when these
# roles were written and tested (2026-11-04); raise it after checking a newer release with these roles.
_FIRST_RAY_WITH_TOKEN_AUTH = (2, 52, 0)
_NEWEST_KNOWN_RAY = (2, 60, 0)
_PIP_NAME = r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[A-Za-z0-9,._ -]*\])?\s*"
_PIP_PIN = re.compile(_PIP_NAME + r"==\s*(?P<version>[^=<>~!;\s]+)$")
_PIP_URL = re.compile(_PIP_NAME + r"@\s*\S+$")


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
            "then raise _NEWEST_KNOWN_RAY in filter_plugins/bittrader_versions.py"
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


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_ray_wheel_problem": ray_wheel_problem,
            "bittrader_ray_version_problem": ray_version_problem,
            "bittrader_ray_requirement": ray_requirement,
            "bittrader_ray_extras_problem": ray_extras_problem,
        }
