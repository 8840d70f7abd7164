"""Jinja filters for preflight (roles/cluster_facts/tasks/preflight.yml): what the read-only probe of
each host found (ports in use, the Ray account, shared memory, disk, sudo rules) turned into problems,
and the on-node checks of verify_worker.sh turned into lines of verify's message. Unit-tested in
tests/unit/test_inputs.py, test_validation.py and test_verify_worker.py."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# Ansible loads each filter file on its own: the shared rules are imported from this folder.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from bittrader_basics import _whole  # noqa: E402
from bittrader_network import HEAD_ONLY_PORTS  # noqa: E402


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
            "bittrader_busy_ports": busy_ports,
            "bittrader_preflight_problems": preflight_problems,
            "bittrader_probe_problems": probe_problems,
            "bittrader_node_check_lines": node_check_lines,
        }
