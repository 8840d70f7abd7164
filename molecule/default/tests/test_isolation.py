"""The node's Ray is isolated from any other Ray of its account (issue 14, item 5).

On a Mac or a PC Ray runs as the owner's account, whose own notebook may run Ray too. Linux keeps a
dedicated service account, which makes the same situation testable here with real Ray: a second Ray
started by another process of the service account must survive the node's supervisor restart (the
supervisor used to run `ray stop --force`, which ends every Ray of the account), and a plain
`ray.init()` of the account must start its own local Ray instead of attaching to the node (Ray looks
for a running cluster in its default temp folder, /tmp/ray, which the node no longer uses).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    GCS_ADDRESS,
    HEAD,
    HOME,
    USER,
    WORKERS,
    as_user,
    base_dir,
    ray_temp_dir,
    wait_for_all_alive,
)

WORKER = WORKERS[0]
UNIT = "bittrader-ray-worker"
VENV = f"{base_dir(WORKER)}/venv/bin"
OTHER_TMP = "/tmp/bt-other-ray"  # the second Ray's own temp folder
RECOVERY_TIMEOUT_S = 180

testinfra_hosts = [f"podman://{WORKER}"]

FREE_PORTS = """
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
"""

# A plain ray.init() of the account, as in an owner's notebook (only sized for a small container): no
# address, no RAY_ADDRESS. Prints where it connected.
PLAIN_INIT = """
import json, ray
ctx = ray.init(num_cpus=1, object_store_memory=80 * 1024 * 1024, include_dashboard=False,
               logging_level="ERROR")
print("RESULT " + json.dumps({"gcs": ctx.address_info["gcs_address"], "session": ctx.address_info["session_dir"],
                              "nodes": len(ray.nodes())}))
ray.shutdown()
"""


def pids_of(host: Any, pattern: str) -> set[int]:
    """The service account's processes whose command line matches pattern (pgrep -f)."""
    out = host.run(f"pgrep -u {USER} -f {shlex.quote(pattern)} || true").stdout.split()
    return {int(pid) for pid in out}


def raylets_in(host: Any, folder: str) -> set[int]:
    """The service account's raylet processes whose command line names folder (their sockets)."""
    script = (f"for p in $(pgrep -u {USER} -x raylet); do "
              f"tr '\\0' ' ' < /proc/$p/cmdline | grep -qF {shlex.quote(folder + '/session_')} && echo $p; done; true")
    return {int(pid) for pid in host.run(script).stdout.split()}


@pytest.fixture(scope="module")
def second_ray(host: Any) -> Iterator[dict[str, Any]]:
    """A second Ray head of the service account on the worker, started outside the node's service (as
    the owner would from a terminal), with its own temp folder and free ports; stopped afterwards."""
    gcs, client, agent, metrics = (int(p) for p in host.check_output(f"python3 -c {shlex.quote(FREE_PORTS)}").split())
    start = [f"{VENV}/ray", "start", "--head", f"--temp-dir={OTHER_TMP}", f"--port={gcs}",
             "--node-ip-address=127.0.0.1", f"--ray-client-server-port={client}",
             f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
             "--include-dashboard=false", "--num-cpus=1", f"--object-store-memory={80 * 1024 * 1024}",
             "--disable-usage-stats"]
    res = host.run(as_user(start, {"PATH": f"{VENV}:/usr/bin:/bin", "HOME": HOME}))
    assert res.rc == 0, (res.stdout + res.stderr)[-3000:]
    pids = pids_of(host, OTHER_TMP)
    assert pids, "the second Ray started no process naming its temp folder"
    yield {"gcs": gcs, "pids": pids}
    for pid in pids_of(host, OTHER_TMP):
        host.run(f"kill -KILL {pid} 2>/dev/null || true")
    # And whatever else of the account runs outside the node's own services (some of the second Ray's
    # processes name no temp folder, and they listened on five ports the next scenario's firewall test
    # found unfirewalled): the scenarios after this one share the cluster and find only the node's Ray.
    host.run(f"for p in $(pgrep -u {USER}); do grep -q bittrader- /proc/$p/cgroup 2>/dev/null || kill -KILL $p; done")
    host.run(f"rm -rf {OTHER_TMP}")


def test_the_node_uses_its_own_temp_folder(host: Any) -> None:
    temp = ray_temp_dir(WORKER)
    assert host.file(f"{temp}/session_latest/sockets").is_directory
    assert raylets_in(host, temp), "no raylet of the service account has its sockets in the node's temp folder"
    assert not host.file("/tmp/ray/ray_current_cluster").exists, "a plain ray.init() here would find the cluster"
    longest = host.run(f"find \"$(readlink -f {temp}/session_latest)/sockets\" -type s | awk '{{ print length }}' "
                       "| sort -n | tail -1")
    print(f"\nlongest socket path of the node: {longest.stdout.strip()} bytes")


def test_a_second_ray_of_the_account_survives_the_supervisors_restart(host: Any, second_ray: dict[str, Any]) -> None:
    head = host.get_host(f"podman://{HEAD}")
    before = second_ray["pids"]
    # The node's raylet: the account's raylet that is not the second Ray's (found without relying on
    # the node's temp folder, so the test also tells what an old supervisor did to the second Ray).
    node_raylets = raylets_in(host, "") - raylets_in(host, OTHER_TMP)
    assert node_raylets, "the node's raylet is not running"
    started = time.monotonic()
    assert host.run(f"systemctl restart {UNIT}").rc == 0
    # Until the node's new raylet is up, the supervisor has run its clean-up of stale processes.
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        now = raylets_in(host, "") - raylets_in(host, OTHER_TMP)
        if now and not now & node_raylets:
            break
        time.sleep(1)
    else:
        pytest.fail("the node's raylet did not come back after the restart")
    recovery = wait_for_all_alive(head, timeout=RECOVERY_TIMEOUT_S)
    print(f"\nnode restarted; cluster complete again after {time.monotonic() - started:.1f} s "
          f"(the probe's own wait {recovery:.1f} s)")
    alive = pids_of(host, OTHER_TMP)
    assert before <= alive, f"the supervisor ended processes of the other Ray: {sorted(before - alive)}"
    listening = host.run("ss -Hltn").stdout
    assert f":{second_ray['gcs']} " in listening, f"the other Ray's GCS port {second_ray['gcs']} no longer listens"


def test_a_plain_ray_init_of_the_account_does_not_attach_to_the_node(host: Any, second_ray: dict[str, Any]) -> None:
    """With the node and a second Ray running, a bare ray.init() as the service account starts its own
    local Ray: it connects neither to the cluster's GCS nor to the second Ray's."""
    env = {"PATH": f"{VENV}:/usr/bin:/bin", "HOME": HOME}
    res = host.run("cd /tmp && " + as_user([f"{VENV}/python", "-c", PLAIN_INIT], env))
    assert res.rc == 0, (res.stdout + res.stderr)[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    got = json.loads(line.removeprefix("RESULT "))
    print(f"\nplain ray.init(): {got}")
    assert got["gcs"] not in {f"{GCS_ADDRESS}", f"127.0.0.1:{second_ray['gcs']}"}, got
    assert got["nodes"] == 1, got
    assert not got["session"].startswith(ray_temp_dir(WORKER)), got
    assert not got["session"].startswith(OTHER_TMP), got
