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


def test_the_longest_socket_path_is_measured_from_rays_own_names() -> None:
    """Seen on the lab (Ray 2.60): <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store and
    .../raylet; the budget assumes a 7-digit pid of the head's `ray start`."""
    temp = "/Users/trader/.bittrader_worker/ray"
    session = "session_2026-12-07_08-52-47_123456_4194304"
    assert rp.ray_socket_path_max(temp) == len(f"{temp}/{session}/sockets/plasma_store")


@pytest.mark.parametrize(
    ("temp", "system", "fits"),
    [
        ("/Users/trader/.bittrader_worker/ray", "Darwin", True),
        ("/Users/bittrader/.bittrader_worker/ray", "Darwin", True),  # the default account: 102 bytes
        ("/Users/johnsmith12/.bittrader_worker/ray", "Darwin", False),  # 104 > 103
        ("/home/johnsmith12/.bittrader_worker/ray", "Linux", True),  # Linux allows 107
        ("/home/a-rather-long-name/.bittrader_worker/ray", "Linux", False),
        ("C:\\Users\\a-very-long-name-indeed-for-an-account\\.bittrader_worker\\ray", "Win32NT", True),  # TCP
    ],
)
def test_a_temp_folder_too_long_for_rays_sockets_is_refused_with_the_fix(temp: str, system: str, fits: bool) -> None:
    problem = rp.ray_socket_problem(temp, system, "mac1")
    assert (problem == "") is fits
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
