"""Security of the Molecule cluster: the firewall lets only the cluster's nodes reach Ray's ports (an
extra container on the same network, not in the inventory, is dropped), its rules cover exactly what
Ray listens on, tokens are required by every entry point (job API, Ray Client, a driver, a joining
node), the token is in no world-readable file, the Ray service cannot write outside its home, and
playbooks/rotate_token.yml replaces the token and brings every node back without printing it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any

import pytest
from conftest import (
    CPUS,
    GCS_ADDRESS,
    HEAD,
    IPS,
    JOB_API,
    NET,
    PORTS,
    PREFIX,
    USER,
    WORKER_PORTS,
    WORKERS,
    alive_ips,
    as_user,
    base_dir,
    probe_cluster,
    recap,
    run_playbook,
)

testinfra_hosts = [f"podman://{HEAD}"]

IMAGE = "localhost/bittrader-systemd:bookworm"
INTRUDER = f"{PREFIX}-intruder"
INTRUDER_IP = f"{NET}.99"
HEAD_IP = IPS[HEAD]
WORKER = WORKERS[0]
WORKER_IP = IPS[WORKER]

PORT_PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(t):
    ip, port = t
    s = socket.socket(); s.settimeout(4)
    try:
        s.connect((ip, port)); return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "timeout" if isinstance(e, TimeoutError) or "timed out" in str(e) else type(e).__name__
    finally:
        s.close()
targets = [tuple(t) for t in json.loads(sys.argv[1])]
with ThreadPoolExecutor(len(targets)) as ex:
    print(json.dumps([[ip, port, r] for (ip, port), r in zip(targets, ex.map(probe, targets))]))
"""


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


def probe_from(container: str, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    res = podman("exec", container, "python3", "-c", PORT_PROBE, json.dumps(targets))
    return {(ip, port): r for ip, port, r in json.loads(res.stdout)}


def listening(container: str, uid: int | None = None) -> set[int]:
    """TCP ports listening on a non-loopback address (by the given uid when set)."""
    out = podman("exec", container, "ss", "-Hltne").stdout
    ports = set()
    for line in out.splitlines():
        cols = line.split()
        local = cols[3]
        addr, _, port = local.rpartition(":")
        if addr.startswith("127.") or addr in {"[::1]"}:
            continue
        m = re.search(r"uid:(\d+)", line)
        if uid is not None and (not m or int(m.group(1)) != uid):
            continue
        ports.add(int(port))
    return ports


def service_uid(container: str) -> int:
    return int(podman("exec", container, "id", "-u", USER).stdout)


# A driver on the head whose task sleeps on worker1 without a CPU: Ray's worker processes belong to a
# job and exit with its driver, so only a running job keeps a port of the worker range open.
HOLD = r"""
import sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], logging_level="ERROR")
node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == sys.argv[2])
@ray.remote(num_cpus=0)
def hold(ports_file):
    # The ports this worker process listens on, from itself: root in the container, without
    # CAP_SYS_PTRACE, cannot map another user's sockets to their process (ss -p).
    import psutil
    listen = [c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.status == "LISTEN"]
    with open(ports_file, "w") as fh:
        fh.write(" ".join(map(str, sorted(listen))))
    time.sleep(600)
ray.get(hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(sys.argv[4]))
"""
HOLD_MARK = "bittrader-security-hold"


def worker_ports(container: str) -> list[int]:
    return sorted(p for p in listening(container, service_uid(container)) if p in WORKER_PORTS)


@pytest.fixture
def worker_port() -> Any:
    """The port of Ray's worker-process range that the Ray worker running the held task listens on, on
    worker1, while the test runs. (Ray also starts and ends idle worker processes: any new port in the
    range may close before the probe; this one stays open until the driver ends.)"""
    base = base_dir(HEAD)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{base}/auth_token"}
    ports_file = f"{base_dir(WORKER)}/run/{HOLD_MARK}.ports"
    cmd = as_user([f"{base}/venv/bin/python", "-c", HOLD, f"{GCS_ADDRESS}", WORKER_IP, HOLD_MARK, ports_file], env)
    podman("exec", "-d", HEAD, "sh", "-c", cmd)
    try:
        deadline = time.monotonic() + 90
        ports: list[int] = []
        while time.monotonic() < deadline and not ports:
            time.sleep(1)
            listed = podman("exec", WORKER, "cat", ports_file, check=False).stdout.split()
            ports = [int(p) for p in listed if p.isdigit() and int(p) in WORKER_PORTS]
        assert ports, (f"the held task's Ray worker on {WORKER} listens on no port in "
                       f"{PORTS['min_worker']}-{PORTS['max_worker']}")
        assert ports[0] in worker_ports(WORKER)  # ss sees it too, as the service user's
        yield ports[0]
    finally:
        podman("exec", HEAD, "pkill", "-f", HOLD_MARK, check=False)
        podman("exec", WORKER, "rm", "-f", ports_file, check=False)


@pytest.fixture(scope="module")
def intruder() -> Any:
    """A container on the cluster's network, not in the inventory."""
    net = podman("inspect", HEAD, "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}")
    network = net.stdout.split()[0]
    podman("rm", "-f", "-t", "0", INTRUDER, check=False)
    podman("run", "-d", "--name", INTRUDER, "--network", network, "--ip", INTRUDER_IP,
           "--entrypoint", "sleep", IMAGE, "infinity")
    yield INTRUDER
    podman("rm", "-f", "-t", "0", INTRUDER, check=False)


def targets(worker_port: int) -> list[tuple[str, int]]:
    return [
        *[(HEAD_IP, PORTS[k]) for k in ("gcs", "dashboard", "client_server", "node_manager", "dashboard_metrics")],
        *[(WORKER_IP, PORTS[k]) for k in ("node_manager", "object_manager", "dashboard_agent_listen")],
        (WORKER_IP, worker_port),
    ]


def test_a_host_outside_the_inventory_is_dropped(intruder: str, worker_port: int) -> None:
    want = targets(worker_port)
    got = probe_from(intruder, want)
    print("\nfrom the intruder", INTRUDER_IP, {f"{ip}:{p}": r for (ip, p), r in got.items()})
    assert all(r == "timeout" for r in got.values()), {k: v for k, v in got.items() if v != "timeout"}


def test_a_cluster_node_reaches_the_same_ports(worker_port: int) -> None:
    got = probe_from(WORKERS[1], targets(worker_port))
    assert all(r == "open" for r in got.values()), {k: v for k, v in got.items() if v != "open"}


def test_other_ports_are_left_as_they_were(intruder: str) -> None:
    podman("exec", "-d", HEAD, "timeout", "60", "python3", "-m", "http.server", "9999")
    try:
        deadline = time.monotonic() + 15
        result = ""
        while time.monotonic() < deadline:
            result = probe_from(intruder, [(HEAD_IP, 9999)])[(HEAD_IP, 9999)]
            if result == "open":
                break
            time.sleep(0.5)
        assert result == "open"
    finally:
        podman("exec", HEAD, "pkill", "-f", "http.server 9999", check=False)


def nft_sets(container: str) -> dict[str, set[int]]:
    """The ports of the bittrader table's port sets, ranges expanded."""
    data = json.loads(podman("exec", container, "nft", "-j", "list", "table", "inet", "bittrader").stdout)
    sets: dict[str, set[int]] = {}
    for item in data["nftables"]:
        s = item.get("set")
        if not s or s["type"] != "inet_service":
            continue
        ports: set[int] = set()
        for el in s.get("elem", []):
            if isinstance(el, dict) and "range" in el:
                lo, hi = el["range"]
                ports.update(range(lo, hi + 1))
            else:
                ports.add(int(el))
        sets[s["name"]] = ports
    return sets


@pytest.mark.parametrize("node", list(IPS))
def test_rules_cover_exactly_what_ray_listens_on(node: str) -> None:
    sets = nft_sets(node)
    covered = sets["cluster_ports"] | sets.get("admin_ports", set())
    ray_ports = listening(node, service_uid(node))
    print(f"\n{node}: Ray listens on {sorted(p for p in ray_ports if p not in WORKER_PORTS)} "
          f"+ {len([p for p in ray_ports if p in WORKER_PORTS])} worker ports; rules cover {len(covered)} ports")
    assert ray_ports, "Ray listens on nothing"
    assert ray_ports <= covered, f"not firewalled: {sorted(ray_ports - covered)}"
    pinned = covered - set(WORKER_PORTS)
    assert pinned <= ray_ports, f"rules for ports Ray does not listen on: {sorted(pinned - ray_ports)}"
    assert podman("exec", node, "systemctl", "is-enabled", "bittrader-firewall").stdout.strip() == "enabled"


def test_the_firewall_role_is_idempotent() -> None:
    res, took = run_playbook("playbooks/firewall.yml")
    assert res.returncode == 0, res.stdout[-3000:]
    counts = recap(res.stdout)
    assert set(counts) == set(IPS), res.stdout[-2000:]
    assert all(c["changed"] == 0 for c in counts.values()), counts
    print(f"\nfirewall.yml again: changed=0 on every node, {took:.1f} s")


def ray_env(token: str | None) -> dict[str, str]:
    env = {"RAY_AUTH_MODE": "token"}
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


@pytest.mark.parametrize("token", [None, "0" * 64], ids=["missing", "wrong"])
def test_job_submission_needs_the_token(host, token: str | None) -> None:  # type: ignore[no-untyped-def]
    ray = f"{base_dir(HEAD)}/venv/bin/ray"
    cmd = [ray, "job", "submit", f"--address={JOB_API}", "--", "echo", "SHOULD-NOT-RUN"]
    res = host.run(as_user(["timeout", "60", *cmd], ray_env(token) if token else {}))
    assert res.rc != 0
    assert "SHOULD-NOT-RUN" not in res.stdout


# The head's answer to a request without the cluster's token (Ray's gRPC server interceptor).
REFUSED = "Invalid or missing authentication token"
# Ray Client retries a refused connection three times, sleeping 5, 10 and 15 s by default: 1 s each is
# enough to see the head's answer, which its worker logs at debug level (shown by the handler below).
CLIENT_REFUSAL = (
    "import logging, ray\n"
    "log = logging.getLogger('ray.util.client.worker'); log.setLevel(logging.DEBUG)\n"
    "log.addHandler(logging.StreamHandler())\n"
    "ray.init('ray://{address}'); print('CONNECTED')\n"
)
FAST_CLIENT = {"RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1", "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1"}


@pytest.mark.parametrize("token", [None, "0" * 64], ids=["missing", "wrong"])
def test_ray_client_needs_the_token(host, token: str | None) -> None:  # type: ignore[no-untyped-def]
    """Refused by the head for its token (its own answer, not a timeout), without or with a wrong one."""
    py = f"{base_dir(HEAD)}/venv/bin/python"
    code = CLIENT_REFUSAL.format(address=f"{HEAD_IP}:{PORTS['client_server']}")
    env = {**(ray_env(token) if token else {}), **FAST_CLIENT}
    started = time.monotonic()
    res = host.run(as_user(["timeout", "90", py, "-c", code], env))
    print(f"\nRay Client refused in {time.monotonic() - started:.1f} s")
    assert res.rc != 0
    assert "CONNECTED" not in res.stdout
    assert REFUSED in res.stdout + res.stderr, (res.stdout + res.stderr)[-2000:]


def test_a_node_with_a_wrong_token_cannot_join(host) -> None:  # type: ignore[no-untyped-def]
    """A second raylet on worker 2, with a wrong token, must not register with the head."""
    node = WORKERS[1]
    before = len(alive_ips(probe_cluster(host, tasks=False)))
    ray = f"{base_dir(node)}/venv/bin/ray"
    tmp = "/tmp/ray-wrong-token"
    # The refused node gives up after RAY_NUM_REDIS_GET_RETRIES reads of the cluster's session (20 by
    # default, about 30 s); 3 are enough to see the head refuse the token.
    cmd = ["runuser", "-u", USER, "--", "env", "RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN={'0' * 64}",
           "RAY_NUM_REDIS_GET_RETRIES=3", "timeout", "90", ray, "start", f"--address={GCS_ADDRESS}", "--num-cpus=1",
           f"--temp-dir={tmp}",
           "--node-manager-port=18076", "--object-manager-port=18077", "--min-worker-port=18100",
           "--max-worker-port=18199", "--dashboard-agent-grpc-port=18078", "--dashboard-agent-listen-port=18079",
           "--runtime-env-agent-port=18080", "--metrics-export-port=18081"]
    try:
        res = podman("exec", node, *cmd, check=False)
        out = res.stdout + res.stderr
        print("\nwrong-token join:", res.returncode, out.strip().splitlines()[-1:] if out.strip() else "")
        time.sleep(5)
        after = alive_ips(probe_cluster(host, tasks=False))
        assert len(after) == before, after
        assert res.returncode != 0
        assert "InvalidAuthToken" in out, out[-2000:]
    finally:
        podman("exec", node, "pkill", "-9", "-f", tmp, check=False)


@pytest.mark.parametrize("node", list(IPS))
def test_the_token_is_in_no_world_readable_file(node: str) -> None:
    token = podman("exec", node, "cat", f"{base_dir(node)}/auth_token").stdout.strip()
    assert len(token) == 64
    find = ("find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f -perm -o=r "
            f"-size -20M -print0 2>/dev/null | xargs -0 grep -lF {token} 2>/dev/null || true")
    found = podman("exec", node, "sh", "-c", find).stdout.split()
    assert found == [], f"token in world-readable files: {found}"


def host_pid(container: str, pid: int) -> int:
    """The host's PID of a process that has `pid` inside the container (the tests run as root on the
    host: only there may a process enter the mount namespace of another user's service)."""
    init = int(podman("inspect", container, "--format", "{{.State.Pid}}").stdout)
    pid_ns = os.readlink(f"/proc/{init}/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != pid_ns:
                continue
            with open(f"/proc/{entry}/status") as status:
                nspid = next(line for line in status if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(nspid.split()[-1]) == pid:
            return int(entry)
    raise AssertionError(f"no host process for pid {pid} of {container}")


@pytest.mark.parametrize("node", list(IPS))
def test_the_ray_service_cannot_write_outside_its_home(node: str) -> None:
    """Writes from inside the Ray service's own mount namespace, as its user: only its home (and the
    shared temporary folders, by design) are writable."""
    unit = "bittrader-ray-head" if node == HEAD else "bittrader-ray-worker"
    pid = int(podman("exec", node, "systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip())
    target = host_pid(node, pid)
    uid = service_uid(node)
    home = podman("exec", node, "sh", "-c", f"getent passwd {USER} | cut -d: -f6").stdout.strip()
    # A world-writable folder outside the home: file permissions alone would let the user write there;
    # the unit's sandbox (ProtectSystem=strict) must not.
    open_dir = "/var/lib/bittrader-open-test"
    podman("exec", node, "sh", "-c", f"mkdir -p {open_dir} && chmod 1777 {open_dir}")
    plain = podman("exec", node, "runuser", "-u", USER, "--", "sh", "-c",
                   f"touch {open_dir}/x && rm -f {open_dir}/x", check=False)
    assert plain.returncode == 0, "control: the user itself may write in the open folder"
    outside = ["/etc", "/usr/local/bin", "/opt", "/var/lib", "/root", "/home", "/srv", open_dir]
    results = {}
    for folder in [*outside, home, "/tmp"]:
        path = f"{folder}/.bittrader-write-test"
        res = subprocess.run(
            ["nsenter", "-t", str(target), "-m", "-S", str(uid), "-G", str(uid), "--",
             "sh", "-c", f"touch {path} && rm -f {path}"], capture_output=True, text=True,
        )
        results[folder] = res.returncode == 0
    print(f"\n{node}: the Ray service (pid {pid}, uid {uid}) can write in {[f for f, ok in results.items() if ok]}")
    podman("exec", node, "rm", "-rf", open_dir)
    assert results[home] and results["/tmp"]
    assert not any(results[f] for f in outside), results


def test_rotating_the_token_restarts_every_node_with_the_new_one(host, tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = podman("exec", HEAD, "cat", f"{base_dir(HEAD)}/auth_token").stdout.strip()
    # The admin machine's copy that client.yml wrote (here a stand-in with the old token) is replaced.
    client_dir = tmp_path / "client"
    client_dir.mkdir(mode=0o700)
    (client_dir / "auth_token").write_text(old)
    res, took = run_playbook("-v", "playbooks/rotate_token.yml", "-e", f"client_dir={client_dir}")
    assert res.returncode == 0, res.stdout[-4000:]
    new = podman("exec", HEAD, "cat", f"{base_dir(HEAD)}/auth_token").stdout.strip()
    assert len(new) == 64 and new != old
    assert (client_dir / "auth_token").read_text() == new
    assert (client_dir / "auth_token").stat().st_mode & 0o777 == 0o600
    for node in WORKERS:
        assert podman("exec", node, "cat", f"{base_dir(node)}/auth_token").stdout.strip() == new
        # Only the token changed for the workers: each one only replaced it and restarted Ray (its record
        # checked the rest), instead of running its whole provisioning again.
        assert f"{node} is refreshed (its other state matches its record): inputs changed: (head token)" in " ".join(
            res.stdout.split()), res.stdout[-3000:]
    assert new not in res.stdout + res.stderr and old not in res.stdout + res.stderr
    alive = alive_ips(probe_cluster(host, tasks=False))
    assert alive == {IPS[n]: float(CPUS[n]) for n in IPS}
    ray = f"{base_dir(HEAD)}/venv/bin/ray"
    listing = [ray, "job", "list", f"--address={JOB_API}"]
    assert host.run(as_user(["timeout", "60", *listing], ray_env(old))).rc != 0
    assert host.run(as_user(["timeout", "60", *listing], ray_env(new))).rc == 0
    print(f"\ntoken rotated, every node back with the new token: {took:.1f} s (playbook incl. verify)")
