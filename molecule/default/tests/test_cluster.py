"""Cluster checks, run from the head: membership, CPUs, a task on every node, auth, and recovery."""

from __future__ import annotations

import time

from conftest import (
    CPUS,
    GCS_ADDRESS,
    HEAD,
    IPS,
    JOB_API,
    RAY_VERSION,
    alive_ips,
    as_user,
    base_dir,
    probe_cluster,
    wait_for_all_alive,
)

testinfra_hosts = [f"podman://{HEAD}"]


def test_three_alive_nodes_with_their_cpus(host) -> None:  # type: ignore[no-untyped-def]
    alive = alive_ips(probe_cluster(host, tasks=False))
    assert alive == {IPS[name]: float(CPUS[name]) for name in IPS}


def test_a_task_lands_on_every_node(host) -> None:  # type: ignore[no-untyped-def]
    data = probe_cluster(host, tasks=True)
    ran = {n["ip"]: n["task"] for n in data["nodes"] if n["alive"]}
    assert set(ran) == set(IPS.values())
    for ip, task in ran.items():
        assert task and "error" not in task, (ip, task)
        assert task["ray"] == RAY_VERSION
        assert task["uid"] != 0
        assert task["python"] == data["driver_python"]


def test_a_client_without_the_token_is_refused(host) -> None:  # type: ignore[no-untyped-def]
    py = f"{base_dir(HEAD)}/venv/bin/python"
    code = f"import ray; ray.init(address='{GCS_ADDRESS}'); print('CONNECTED')"
    res = host.run(as_user(["timeout", "60", py, "-c", code], {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}))
    assert "CONNECTED" not in res.stdout
    assert res.rc != 0


def test_job_api_refuses_a_request_without_token(host) -> None:  # type: ignore[no-untyped-def]
    res = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' {JOB_API}/api/jobs/")
    assert res.stdout.strip() in {"401", "403"}, res.stdout


def test_all_nodes_rejoin_after_the_head_restarts(host) -> None:  # type: ignore[no-untyped-def]
    restarted = time.monotonic()
    assert host.run("systemctl restart bittrader-ray-head").rc == 0
    took = wait_for_all_alive(host, timeout=90)
    print(
        f"all nodes alive {took:.1f} s after the head's restart "
        f"({time.monotonic() - restarted:.1f} s including the restart)"
    )
