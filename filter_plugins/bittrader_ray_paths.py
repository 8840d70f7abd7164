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
# up to 7 digits (pid_max 4194304), a macOS one 5.
SESSION_NAME_MAX = len("session_2026-12-07_08-52-47_123456_") + 7
# Ray's longest socket name in the session's sockets folder (plasma_store, raylet; the supervisor removes
# stale sockets, so Ray never needs plasma_store.1).
SOCKET_SUFFIX = "/sockets/plasma_store"


def ray_temp_path(temp_dir: str, base_dir: str, system: str = "Linux") -> str:
    """The node's Ray temp folder: temp_dir as is when absolute, else inside base_dir."""
    module = ntpath if system == "Win32NT" else posixpath
    if module.isabs(temp_dir):
        return module.normpath(temp_dir)
    return module.normpath(module.join(base_dir, temp_dir))


def ray_socket_path_max(temp_path: str) -> int:
    """Bytes of the longest socket path Ray can create below temp_path."""
    return len(temp_path.rstrip("/").encode("utf-8")) + 1 + SESSION_NAME_MAX + len(SOCKET_SUFFIX)


def ray_socket_problem(temp_path: str, system: str, host: str = "this host") -> str:
    """Why Ray's sockets below temp_path would not fit the AF_UNIX limit on system ('' when they fit;
    Windows uses TCP instead)."""
    limit = SOCKET_PATH_MAX.get(system)
    if limit is None:
        return ""
    longest = ray_socket_path_max(temp_path)
    if longest <= limit:
        return ""
    room = limit - (longest - len(temp_path.rstrip("/").encode("utf-8")))
    return (
        f"{host}: Ray's temp folder {temp_path} is too long for its sockets: their paths would reach "
        f"{longest} bytes, {system} allows {limit}. Set bittrader_ray_temp_dir for this host to a shorter "
        f"absolute path (at most {room} bytes), for example /var/tmp/bt-ray"
    )


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_ray_temp_path": ray_temp_path,
            "bittrader_ray_socket_path_max": ray_socket_path_max,
            "bittrader_ray_socket_problem": ray_socket_problem,
        }
