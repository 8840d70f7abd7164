"""Jinja filters for where a node's Ray keeps its files: the node's own temp/session folder
(`ray start --temp-dir`) and the AF_UNIX path limit its sockets must fit in.

Plain Python, unit-tested in tests/unit/test_ray_paths.py.
"""

from __future__ import annotations

import ntpath
import posixpath
from collections.abc import Callable
from typing import Any

# Longest path Ray accepts for a Unix socket (ray._private.utils.validate_socket_filepath, Ray 2.60):
# sun_path is 104 bytes on macOS and 108 on Linux, one of them the terminating NUL.
SOCKET_PATH_MAX = {"Darwin": 103, "Linux": 107}
# Ray's session folder: session_<%Y-%m-%d_%H-%M-%S_%f>_<pid of the head's `ray start`>
# (ray._private.node.Node, Ray 2.60). Every node of the cluster uses the head's name. A Linux pid has
# up to 7 digits (pid_max 4194304), a macOS one 5; a worker's head may be either.
SESSION_PREFIX = "session_2026-12-07_08-52-47_123456_"
PID_DIGITS = {"Darwin": 5, "Linux": 7}
# The longest socket name in the session's sockets folder (measured on the lab, Ray 2.60): a worker has
# plasma_store and raylet (the supervisor removes stale sockets, so Ray never needs plasma_store.1); a
# head also has one socket per dashboard module, dash_<module>, the longest dash_TaskEventsHead
# (ray/dashboard/subprocesses/utils.py get_socket_path).
SOCKET_NAME = {"head": "dash_TaskEventsHead", "worker": "plasma_store"}


# Where a relative temp folder goes when the node's folder is too deep for Ray's sockets (a Mac head
# whose account name is longer than 7 characters): a short folder of the node's own in the same home.
SHORT_TEMP_NAME = {"head": ".bt-head", "worker": ".bt-worker"}


def ray_temp_path(temp_dir: str, base_dir: str, system: str = "Linux", role: str = "") -> str:
    """The node's Ray temp folder: temp_dir as is when absolute, else inside base_dir; given the node's
    role, a relative one whose sockets would not fit moves to the home's SHORT_TEMP_NAME (base_dir's
    parent), so the default works for long account names. An absolute one is the user's choice: the
    socket check then says when it is too long."""
    module = ntpath if system == "Win32NT" else posixpath
    if module.isabs(temp_dir):
        return module.normpath(temp_dir)
    path = module.normpath(module.join(base_dir, temp_dir))
    if role and ray_socket_problem(path, system, role=role):
        name = SHORT_TEMP_NAME["head" if role == "head" else "worker"]
        return module.normpath(module.join(module.dirname(module.normpath(base_dir)), name))
    return path


def ray_socket_path_max(temp_path: str, role: str = "worker", system: str = "Linux") -> int:
    """Bytes of the longest socket path Ray can create below temp_path on a node of role."""
    digits = PID_DIGITS.get(system, 7) if role == "head" else max(PID_DIGITS.values())
    name = SOCKET_NAME["head" if role == "head" else "worker"]
    session = len(SESSION_PREFIX) + digits
    return len(temp_path.rstrip("/").encode("utf-8")) + 1 + session + len("/sockets/") + len(name)


def ray_socket_problem(temp_path: str, system: str, host: str = "this host", role: str = "worker") -> str:
    """Why Ray's sockets below temp_path would not fit the AF_UNIX limit on system ('' when they fit;
    Windows uses TCP and named pipes instead)."""
    limit = SOCKET_PATH_MAX.get(system)
    if limit is None:
        return ""
    longest = ray_socket_path_max(temp_path, role, system)
    if longest <= limit:
        return ""
    room = limit - (longest - len(temp_path.rstrip("/").encode("utf-8")))
    return (
        f"{host}: Ray's temp folder {temp_path} is too long for its sockets: their paths would reach "
        f"{longest} bytes, {system} allows {limit}. Set bittrader_ray_temp_dir for this host to a shorter "
        f"absolute path (at most {room} bytes), for example /var/tmp/bt-{role}"
    )


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_ray_temp_path": ray_temp_path,
            "bittrader_ray_socket_path_max": ray_socket_path_max,
            "bittrader_ray_socket_problem": ray_socket_problem,
        }
