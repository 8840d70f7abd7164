"""The on-node check of Linux and macOS nodes (node_agent/src/bittrader_node_agent/verify.py and its wrapper
templates/verify_worker.sh.j2), run here against stand-ins: a fake systemctl and launchctl, a TCP
listener for the head's GCS port, a fake Ray distribution, and the node's files in a temporary folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from agent_throttle import console_script
from ansible_render import render, role_defaults

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "filter_plugins"))
import bittrader_preflight

REPO = Path(__file__).resolve().parents[2]
SRC = str(REPO / "node_agent/src")
ENTRY = "bittrader_node_agent.verify:main"


@pytest.fixture
def head() -> Iterator[int]:
    """A listener standing in for the head's GCS port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def node(tmp_path: Path, port: int, role: str = "worker", log: str = "") -> Path:
    """A node's folder: node.json as node.json.j2 writes it, the token, the supervisor state, the logs."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "auth_token").write_text("t" * 64)
    (tmp_path / "run/supervisor.json").write_text(json.dumps({"last_exit": 0, "quick_failures": 0}))
    (tmp_path / "logs/worker_error.log").write_text(log)
    args = ["start", "--block", "--node-ip-address=127.0.0.1"]
    args += [f"--address=127.0.0.1:{port}"] if role == "worker" else ["--head", f"--port={port}"]
    config = {"role": role, "node": "w1", "ray": str(tmp_path / "venv/bin/ray"), "start_args": args,
              "env": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")},
              "log_file": str(tmp_path / "logs/worker.log"), "error_log_file": str(tmp_path / "logs/worker_error.log"),
              "state_file": str(tmp_path / "run/supervisor.json")}
    path = tmp_path / "node.json"
    path.write_text(json.dumps(config))
    return path


def fakes(tmp_path: Path, systemctl: str = "active", launchctl_state: str = "running") -> dict[str, str]:
    """PATH with a fake systemctl and launchctl, and PYTHONPATH with a fake Ray 2.60.0 distribution."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho {systemctl}\n[ {systemctl} = active ]\n")
    (bin_dir / "launchctl").write_text(
        "#!/bin/sh\n[ \"$1\" = print ] || exit 64\n"
        f"printf '%s = {{\\n\\tstate = {launchctl_state}\\n\\tpid = 42\\n}}\\n' \"$2\"\n"
    )
    for tool in ("systemctl", "launchctl"):
        (bin_dir / tool).chmod(0o755)
    site = tmp_path / "site"
    dist = site / "ray-2.60.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ray\nVersion: 2.60.0\n")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(site)}


def run(argv: list[str], env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    return res.returncode, json.loads(res.stdout)


def verify(
    config: Path, env: dict[str, str], manager: str = "systemd", service: str = "bittrader-ray-worker.service"
) -> tuple[int, dict[str, Any]]:
    return run([sys.executable, "-B", "-m", "bittrader_node_agent.verify", "--config", str(config), "--manager",
                manager, "--service", service, "--json"], {**env, "PYTHONPATH": SRC})


def test_a_healthy_worker(tmp_path: Path, head: int) -> None:
    rc, found = verify(node(tmp_path, head), fakes(tmp_path))
    assert rc == 0, found
    assert found["healthy"] and found["problems"] == []
    assert found["service_state"] == "running" and found["head"] == f"127.0.0.1:{head}" and found["head_reachable"]
    assert found["ray"] == "2.60.0" and found["python"] == ".".join(map(str, sys.version_info[:3]))
    assert found["supervisor"] == {"last_exit": 0, "quick_failures": 0}


def test_a_head_checks_its_own_gcs_port_and_a_mac_asks_launchd(tmp_path: Path, head: int) -> None:
    rc, found = verify(node(tmp_path, head, role="head"), fakes(tmp_path), "launchd", "system/com.bittrader.ray-head")
    assert rc == 0, found
    assert found["service_state"] == "running" and found["head_reachable"]


def test_a_stopped_service_an_unreachable_head_and_a_refused_token_are_named(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = "[2026-12-07] GCS returned an authentication error: InvalidAuthToken\n"
    config = node(tmp_path, port, log=log)
    (tmp_path / "auth_token").unlink()
    rc, found = verify(config, fakes(tmp_path, systemctl="inactive"))
    assert rc == 1
    problems = " | ".join(found["problems"])
    assert "the service bittrader-ray-worker.service is inactive, not running" in problems
    assert f"the head's GCS port 127.0.0.1:{port} does not answer from here" in problems
    assert "auth_token is missing" in problems
    assert "the head refused this node's auth token" in problems and "InvalidAuthToken" in problems


def test_a_refusal_from_before_the_current_start_is_history(tmp_path: Path, head: int) -> None:
    """Seen on the Molecule cluster: a head restart makes each worker log "GCS returned an authentication
    error" once; its supervisor then starts Ray again and the node is healthy. Only refusals logged since
    the supervisor's last start count."""
    old = "2026-12-07 11:07:17,955 [C 2887] (raylet) node_manager.cc:524: GCS returned an authentication error.\n"
    config = node(tmp_path, head, log=old)
    started = datetime(2026, 12, 7, 11, 14, 49).timestamp()
    (tmp_path / "run/supervisor.json").write_text(json.dumps({"last_started": started, "quick_failures": 0}))
    env = fakes(tmp_path)
    rc, found = verify(config, env)
    assert rc == 0 and found["auth_refused"] == [], found
    new = "2026-12-07 11:15:02,001 [C 2990] (raylet) GCS returned an authentication error: InvalidAuthToken\n"
    (tmp_path / "logs/worker_error.log").write_text(old + new)
    rc, found = verify(config, env)
    assert rc == 1 and found["auth_refused"] == [new.strip()], found


def test_a_mac_job_that_is_not_running(tmp_path: Path, head: int) -> None:
    rc, found = verify(node(tmp_path, head), fakes(tmp_path, launchctl_state="waiting"), "launchd", "system/x")
    assert rc == 1 and found["problems"] == ["the service system/x is waiting, not running"]


def test_the_wrapper_runs_the_check_with_the_nodes_python(tmp_path: Path, head: int) -> None:
    """verify_worker.sh.j2 rendered for a Linux worker whose folder has a space and a quote (the paths
    are quoted), with the test's Python as the node's venv Python."""
    base = tmp_path / "home/o'neil/.bittrader_worker"
    (base / "venv/bin").mkdir(parents=True)
    config = node(base, head)
    console_script(base / "venv/bin/bittrader-verify", ENTRY)  # as pip installs the agent's wheel
    variables = {**role_defaults("cluster_facts", "ray_node"), "ansible_managed": "managed",
                 "ansible_facts": {"system": "Linux"}, "bittrader_base_dir": str(base),
                 "bittrader_venv_python": sys.executable, "bittrader_venv_dir": str(base / "venv"),
                 "bittrader_node_config": str(config), "bittrader_service_name": "bittrader-ray-worker"}
    wrapper = base / "verify_worker.sh"
    wrapper.write_text(render("roles/ray_node/templates/verify_worker.sh.j2", variables))
    wrapper.chmod(0o755)
    rc, found = run([str(wrapper), "--json"], fakes(tmp_path))
    assert rc == 0, found
    assert found["service"] == "bittrader-ray-worker.service" and found["ray"] == "2.60.0"


def test_verify_names_a_refused_token_first(tmp_path: Path) -> None:
    """playbooks/verify.yml's failure message: each unhealthy node's own problems, the refused token first."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = node(tmp_path, port, log="GCS returned an authentication error\n")
    _, found = verify(config, fakes(tmp_path))
    reports = {"w1": json.dumps(found), "w2": "", "head": json.dumps({"healthy": True})}
    lines = bittrader_preflight.node_check_lines(reports)
    assert len(lines) == 1
    assert lines[0].startswith("w1 (on the node): the head refused this node's auth token"), lines
    assert "does not answer from here" in lines[0]
