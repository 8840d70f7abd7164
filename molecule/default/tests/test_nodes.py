"""Per-node checks on every host of the Molecule cluster."""

from __future__ import annotations

import pytest
from conftest import ALL_HOSTS, DEFAULTS, HEAD, LAB_VARS, PORTS, PYTHON, RAY_VERSION, USER, base_dir, ray_temp_dir

testinfra_hosts = ALL_HOSTS

# Ray's Prometheus metrics (bittrader_ray_metrics_enabled, off by default: docs/performance.md, "Lean
# nodes"): with them off, no process records them and the export port stays closed.
METRICS = bool(LAB_VARS.get("bittrader_ray_metrics_enabled", DEFAULTS["bittrader_ray_metrics_enabled"]))
NODE_PORTS = [PORTS[k] for k in ("node_manager", "object_manager", "dashboard_agent_grpc", "dashboard_agent_listen",
                                 "runtime_env_agent")] + ([PORTS["metrics_export"]] if METRICS else [])
HEAD_PORTS = [PORTS[k] for k in ("gcs", "dashboard", "client_server")]


def name_of(host) -> str:  # type: ignore[no-untyped-def]
    return host.backend.hostname


def unit_of(host) -> str:  # type: ignore[no-untyped-def]
    return "bittrader-ray-head" if name_of(host) == HEAD else "bittrader-ray-worker"


def test_service_enabled_and_running(host) -> None:  # type: ignore[no-untyped-def]
    service = host.service(unit_of(host))
    assert service.is_enabled
    assert service.is_running
    unit = host.file(f"/etc/systemd/system/{unit_of(host)}.service").content_string
    assert "Restart=always" in unit
    assert "StartLimitIntervalSec=0" in unit
    assert f"User={USER}" in unit


def test_ray_runs_as_the_service_user_never_root(host) -> None:  # type: ignore[no-untyped-def]
    procs = host.run("ps -eo user:32,args --no-headers").stdout.splitlines()
    ray = [p for p in procs if "raylet" in p or "gcs_server" in p or "bittrader-node" in p]
    assert ray, "no Ray process"
    assert all(p.split()[0] == USER for p in ray), ray


def test_pinned_ports_listen(host) -> None:  # type: ignore[no-untyped-def]
    ports = NODE_PORTS + (HEAD_PORTS if name_of(host) == HEAD else [])
    listening = host.run("ss -Hltn").stdout
    for port in ports:
        assert f":{port} " in listening, f"port {port} not listening on {name_of(host)}"
    if not METRICS:
        assert f":{PORTS['metrics_export']} " not in listening, "metrics are off, yet their export port listens"


def test_token_is_private_and_never_logged(host) -> None:  # type: ignore[no-untyped-def]
    token_file = host.file(f"{base_dir(name_of(host))}/auth_token")
    assert token_file.exists
    assert token_file.user == USER
    assert token_file.mode == 0o600
    token = token_file.content_string.strip()
    assert len(token) == 64
    logs = host.run(f"grep -rlF {token} {base_dir(name_of(host))}/logs {ray_temp_dir(name_of(host))} /tmp/ray "
                    "2>/dev/null || true").stdout.strip()
    assert logs == "", f"token found in {logs}"
    journal = host.run(f"journalctl --no-pager -o cat | grep -cF {token} || true").stdout.strip()
    assert journal == "0"


def test_log_files_written(host) -> None:  # type: ignore[no-untyped-def]
    role = "head" if name_of(host) == HEAD else "worker"
    log = host.file(f"{base_dir(name_of(host))}/logs/{role}.log")
    assert log.exists and log.size > 0
    assert log.user == USER
    assert "ray start" in log.content_string or "bittrader-node" in log.content_string


@pytest.mark.parametrize("pkg", ["ray", "psutil", "numpy"])
def test_venv_has_pinned_packages(host, pkg: str) -> None:  # type: ignore[no-untyped-def]
    py = f"{base_dir(name_of(host))}/venv/bin/python"
    res = host.run(f"{py} -c 'import importlib.metadata as m; print(m.version(\"{pkg}\"))'")
    assert res.rc == 0
    if pkg == "ray":
        assert res.stdout.strip() == RAY_VERSION


def test_the_on_node_check_reports_a_healthy_node(host) -> None:  # type: ignore[no-untyped-def]
    """verify_worker.sh (issue 18), run on the node as the service user: service up, head reachable,
    the pinned Ray and the node's Python."""
    import json

    script = f"{base_dir(name_of(host))}/verify_worker.sh"
    res = host.run(f"runuser -u {USER} -- {script} --json")
    assert res.rc == 0, res.stdout + res.stderr
    found = json.loads(res.stdout)
    assert found["healthy"] and found["service_state"] == "running" and found["head_reachable"], found
    assert found["ray"] == RAY_VERSION and found["python"] == PYTHON
    assert found["service"] == f"{unit_of(host)}.service" and found["auth_refused"] == []
