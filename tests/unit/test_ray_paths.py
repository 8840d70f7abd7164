"""The node's own Ray temp folder (filter_plugins/bittrader_ray_paths.py) and its socket-length check."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "filter_plugins"))

import bittrader_ray_paths as rp


def test_a_relative_temp_dir_lies_in_the_nodes_folder() -> None:
    assert rp.ray_temp_path("ray", "/Users/trader/.bittrader_head", "Darwin") == "/Users/trader/.bittrader_head/ray"
    assert rp.ray_temp_path("/var/tmp/bt-ray", "/home/bittrader/.bittrader_worker") == "/var/tmp/bt-ray"
    assert rp.ray_temp_path("ray", "C:\\Users\\trader\\.bittrader_worker", "Win32NT") == (
        "C:\\Users\\trader\\.bittrader_worker\\ray"
    )
    assert rp.ray_temp_path("D:\\bt", "C:\\Users\\trader\\.bittrader_worker", "Win32NT") == "D:\\bt"


@pytest.mark.parametrize(
    ("base", "system", "role", "expected"),
    [
        # A Mac head whose owner's account name is longer than 7 characters: the default would not fit.
        ("/Users/johnsmith/.bittrader_head", "Darwin", "head", "/Users/johnsmith/.bt-head"),
        ("/Users/a-longer-name12/.bittrader_worker", "Darwin", "worker", "/Users/a-longer-name12/.bt-worker"),
        # Where the default fits, it stays in the node's folder.
        ("/Users/trader/.bittrader_head", "Darwin", "head", "/Users/trader/.bittrader_head/ray"),
        ("/home/bittrader/.bittrader_head", "Linux", "head", "/home/bittrader/.bittrader_head/ray"),
        ("C:\\ProgramData\\Bittrader", "Win32NT", "worker", "C:\\ProgramData\\Bittrader\\ray"),
    ],
)
def test_a_default_too_deep_for_rays_sockets_moves_to_a_short_folder_of_the_home(
    base: str, system: str, role: str, expected: str
) -> None:
    path = rp.ray_temp_path("ray", base, system, role)
    assert path == expected
    assert rp.ray_socket_problem(path, system, "mac1", role) == ""


def test_an_absolute_temp_folder_is_the_users_choice_even_when_too_long() -> None:
    long = "/Users/johnsmith/Library/Application Support/bittrader/ray"
    assert rp.ray_temp_path(long, "/Users/johnsmith/.bittrader_head", "Darwin", "head") == long
    assert rp.ray_socket_problem(long, "Darwin", "mac1", "head") != ""


def test_the_longest_socket_path_is_measured_from_rays_own_names() -> None:
    """Seen on the lab (Ray 2.60): a worker's sockets are <temp>/session_<date>_<time>_<usec>_<pid>/
    sockets/plasma_store and raylet; the head's also dash_<module> per dashboard module, the longest
    measured .../sockets/dash_MetricsHead at 100 bytes with a 4-digit pid; Ray 2.60 also has a
    TaskEventsHead module. The budget assumes a 7-digit pid of the head's `ray start` (5 on macOS)."""
    measured = "/home/bittrader/.bittrader_head/ray/session_2026-12-07_09-35-01_846468_1735/sockets/dash_MetricsHead"
    assert len(measured) == 100
    temp = "/home/bittrader/.bittrader_head/ray"
    assert rp.ray_socket_path_max(temp, "head", "Linux") == 100 + len("TaskEvents") - len("Metrics") + 3
    worker = "/Users/trader/.bittrader_worker/ray"
    session = "session_2026-12-07_08-52-47_123456_4194304"
    assert rp.ray_socket_path_max(worker) == len(f"{worker}/{session}/sockets/plasma_store")
    assert rp.ray_socket_path_max("/Users/trader/.bittrader_head/ray", "head", "Darwin") == len(
        "/Users/trader/.bittrader_head/ray/session_2026-12-07_08-52-47_123456_99999/sockets/dash_TaskEventsHead")


@pytest.mark.parametrize(
    ("temp", "system", "role", "fits"),
    [
        ("/Users/trader/.bittrader_worker/ray", "Darwin", "worker", True),
        ("/Users/bittrader/.bittrader_worker/ray", "Darwin", "worker", True),  # 102 bytes
        ("/Users/johnsmith12/.bittrader_worker/ray", "Darwin", "worker", False),  # 104 > 103
        ("/Users/trader/.bittrader_head/ray", "Darwin", "head", True),  # the example inventory: 102
        ("/Users/bittrader/.bittrader_head/ray", "Darwin", "head", False),  # the head's dashboard sockets: 105
        ("/var/tmp/bt-head", "Darwin", "head", True),
        ("/home/bittrader/.bittrader_head/ray", "Linux", "head", True),  # the lab's head: 106 <= 107
        ("/home/johnsmith12/.bittrader_worker/ray", "Linux", "worker", True),  # Linux allows 107
        ("/home/a-rather-long-name/.bittrader_worker/ray", "Linux", "worker", False),
        ("C:\\Users\\a-very-long-name-indeed-for-an-account\\.bittrader_worker\\ray", "Win32NT", "worker", True),
    ],
)
def test_a_temp_folder_too_long_for_rays_sockets_is_refused_with_the_fix(
    temp: str, system: str, role: str, fits: bool
) -> None:
    problem = rp.ray_socket_problem(temp, system, "mac1", role)
    assert (problem == "") is fits, problem
    if not fits:
        assert problem.startswith("mac1: ") and "bittrader_ray_temp_dir" in problem


def test_the_limit_is_the_kernels() -> None:
    """On this Linux machine a socket path of 107 bytes binds and one of 108 does not: the budget is
    the kernel's, not a guess."""
    base = Path(tempfile.mkdtemp(prefix="bt", dir="/tmp"))
    try:
        for length, ok in ((rp.SOCKET_PATH_MAX["Linux"], True), (rp.SOCKET_PATH_MAX["Linux"] + 1, False)):
            name = str(base) + "/" + "s" * (length - len(str(base)) - 1)
            assert len(name) == length
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.bind(name)
                assert ok, f"{length} bytes bound"
            except OSError:
                assert not ok, f"{length} bytes did not bind"
            finally:
                sock.close()
    finally:
        for child in base.iterdir():
            child.unlink()
        base.rmdir()
