"""Jinja filters of the Bittrader Ray cluster that the other filter files build on: address checks
(also Jinja tests, test_plugins/bittrader_tests.py), the CPUs and GPUs the inventory expects of a node,
and the plain-text tables the playbooks print. Plain Python, unit-tested without Ansible
(tests/unit/test_filters.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any


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


def text_table(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> str:
    """Render rows (mappings) as an aligned plain-text table with the given columns."""
    data = [["" if row.get(col) is None else str(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in data]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(widths[i]) for i, col in enumerate(columns))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(r[i].ljust(widths[i]) for i in range(len(columns))) for r in data]
    return "\n".join(line.rstrip() for line in lines)


def is_on(value: object) -> bool:
    """A boolean variable as Ansible reads it: true, 1, or a string such as "yes" or "on"."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "on", "1", "y"}
    return value is True or (not isinstance(value, bool) and value == 1)


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


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_is_ip": is_ip,
            "bittrader_in_cidr": in_cidr,
            "bittrader_is_loopback": is_loopback,
            "bittrader_text_table": text_table,
            "bittrader_expected_cpus": expected_cpus,
            "bittrader_expected_gpus": expected_gpus,
        }
