"""Clients of the Molecule cluster, as docs/clients.md tells a user to make them.

On the head: one `. ~/.bittrader_head/client.env` and a driver (ray.init()), `ray job submit` and Ray
Client work, by the head's address (not /tmp/ray discovery); the file is the service user's, 0600, and
holds no token.

From an admin machine: a container on the cluster's network that is not in the inventory (the
"laptop"), with the same Python and Ray, gets the files playbooks/client.yml writes on the admin
machine. Through the SSH tunnel to the head (the default) `ray job submit`, Ray Client and the client
helper work with the token; without the tunnel Ray's ports stay dropped; without the token the helper
says so at once. With the laptop's address in bittrader_firewall_admin_sources (direct access) the
job API and Ray Client answer it directly, and only them; removed again, they are dropped again.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    GCS_ADDRESS,
    HEAD,
    HEAD_BASE,
    IPS,
    NET,
    PORTS,
    PREFIX,
    RAY_VERSION,
    REPO,
    USER,
    WORKERS,
    recap,
    run_playbook,
)

testinfra_hosts = [f"podman://{HEAD}"]

IMAGE = "localhost/bittrader-systemd:bookworm"
LAPTOP = f"{PREFIX}-laptop"
LAPTOP_IP = f"{NET}.98"
HEAD_IP = IPS[HEAD]
VENV = "/opt/bittrader-client"
RAY_PIN = f"ray[default]=={RAY_VERSION}"

# Every target at once (one 4 s timeout for all, not one per dropped port).
PORT_PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    ip, port = target
    s = socket.socket(); s.settimeout(4)
    try:
        s.connect((ip, port)); return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "timeout" if "timed out" in str(e) else type(e).__name__
    finally:
        s.close()
targets = [tuple(t) for t in json.loads(sys.argv[1])]
with ThreadPoolExecutor(len(targets)) as ex:
    print(json.dumps({f"{ip}:{port}": r for (ip, port), r in zip(targets, ex.map(probe, targets))}))
"""
# Every port of the head an admin might try, and a worker's raylet.
RAY_PORTS = [*[(HEAD_IP, PORTS[k]) for k in ("gcs", "dashboard", "client_server", "node_manager")],
             (IPS[WORKERS[0]], PORTS["node_manager"])]


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def on_laptop(script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a bash script on the laptop with its Ray environment on PATH (what a user's venv gives)."""
    return podman("exec", LAPTOP, "bash", "-c", f"export PATH={VENV}/bin:$PATH; {script}", check=False,
                  timeout=timeout)


def probe(targets: list[tuple[str, int]]) -> dict[str, str]:
    res = on_laptop(f"python3 -c {shlex.quote(PORT_PROBE)} {shlex.quote(json.dumps(targets))}")
    assert res.returncode == 0, res.stderr
    result: dict[str, str] = json.loads(res.stdout)
    return result


def wheelhouse() -> str | None:
    """The controller's wheel folder for these nodes (wheelhouse mode), which holds Ray and its deps."""
    root = os.environ.get("BITTRADER_WHEELHOUSE", "")
    for folder in sorted(glob.glob(os.path.join(root, "linux-x86_64-cp311-*"))) if root else []:
        if glob.glob(os.path.join(folder, f"ray-{RAY_VERSION}-*.whl")):
            return folder
    return None


@pytest.fixture(scope="module")
def laptop() -> Iterator[str]:
    """The admin's laptop: not in the inventory, on the cluster's network, with the controller's SSH key
    (the login Ansible uses) and a venv with the cluster's Python and Ray."""
    net = podman("inspect", HEAD, "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}")
    network = net.stdout.split()[0]
    key = os.path.expanduser(os.environ.get("BITTRADER_LAB_SSH_KEY", "~/.cache/bittrader-lab/ssh/id_ed25519"))
    wheels = wheelhouse()
    podman("rm", "-f", "-t", "0", LAPTOP, check=False)
    run = ["run", "-d", "--name", LAPTOP, "--network", network, "--ip", LAPTOP_IP, "-v", f"{key}:{key}:ro"]
    if wheels:
        run += ["-v", f"{wheels}:/wheels:ro"]
    podman(*run, "--entrypoint", "sleep", IMAGE, "infinity")
    try:
        source = "--no-index --find-links /wheels" if wheels else ""
        started = time.monotonic()
        # --no-compile, as the nodes install (bittrader_pip_compile): the laptop compiles what it imports.
        res = on_laptop(f"python3 -m venv {VENV} && {VENV}/bin/pip install -q --no-compile {source} '{RAY_PIN}'",
                        timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        print(f"\nlaptop venv with {RAY_PIN} ({'wheelhouse' if wheels else 'package index'}): "
              f"{time.monotonic() - started:.1f} s")
        podman("cp", str(REPO / "workload"), f"{LAPTOP}:/opt/workload")
        yield LAPTOP
    finally:
        podman("rm", "-f", "-t", "0", LAPTOP, check=False)


@pytest.fixture(scope="module")
def client_files(laptop: str) -> Iterator[dict[str, Any]]:
    """playbooks/client.yml run on the admin machine (tunnel access), its folder copied to the laptop."""
    folder = Path(tempfile.mkdtemp(prefix="bittrader-client-"))
    client_dir = folder / "cluster"
    try:
        res, took = run_playbook("-v", "playbooks/client.yml", "-e", f"client_dir={client_dir}")
        assert res.returncode == 0, res.stdout[-4000:]
        podman("exec", laptop, "mkdir", "-p", str(folder))
        podman("cp", str(client_dir), f"{laptop}:{folder}")
        yield {"dir": str(client_dir), "env": f"{client_dir}/client.env", "output": res.stdout + res.stderr,
               "took": took}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cpus_printed(stdout: str, mark: str) -> float:
    """The CPU count a client printed after mark (the cluster's CPUs move with the throttle)."""
    for line in stdout.splitlines():
        if line.startswith(mark + " "):
            return float(line.split()[1])
    return 0.0


def head_token() -> str:
    return podman("exec", HEAD, "cat", f"{HEAD_BASE}/auth_token").stdout.strip()


# --- on the head --------------------------------------------------------------------------------------


def test_the_head_env_file_is_the_service_users_and_holds_no_token() -> None:
    stat = podman("exec", HEAD, "stat", "-c", "%U %a", f"{HEAD_BASE}/client.env").stdout.split()
    assert stat == [USER, "600"]
    text = podman("exec", HEAD, "cat", f"{HEAD_BASE}/client.env").stdout
    assert head_token() not in text
    assert f"export RAY_ADDRESS={GCS_ADDRESS}" in text
    assert f"export RAY_AUTH_TOKEN_PATH={HEAD_BASE}/auth_token" in text


def head_as_user(script: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """A login shell of the service user on the head that sources the env file first, and nothing else."""
    full = f". {HEAD_BASE}/client.env && {script}"
    return podman("exec", HEAD, "runuser", "-l", USER, "-c", full, check=False, timeout=timeout)


def test_a_driver_job_and_ray_client_on_the_head_after_one_source() -> None:
    started = time.monotonic()
    job = head_as_user("ray job submit -- python -c \"print('HEAD-JOB-' + 'RAN')\"")
    job_s = time.monotonic() - started
    assert job.returncode == 0 and "HEAD-JOB-RAN" in job.stdout, job.stdout[-2000:] + job.stderr[-2000:]
    driver = head_as_user("python -c \"import ray; ray.init(logging_level='ERROR'); "
                          "print('DRIVER', len([n for n in ray.nodes() if n['Alive']]))\"")
    assert "DRIVER 3" in driver.stdout, driver.stdout[-2000:] + driver.stderr[-2000:]
    started = time.monotonic()
    client = head_as_user("python -c \"import os, ray; ray.init(os.environ['BITTRADER_RAY_CLIENT_ADDRESS'], "
                          "logging_level='ERROR'); print('CLIENT', ray.cluster_resources().get('CPU'))\"")
    client_s = time.monotonic() - started
    assert cpus_printed(client.stdout, "CLIENT") > 0, client.stdout[-2000:] + client.stderr[-2000:]
    print(f"\non the head after one source: job {job_s:.1f} s, Ray Client {client_s:.1f} s")


# --- from the admin's laptop --------------------------------------------------------------------------


def test_client_yml_keeps_the_token_in_an_owner_only_file(client_files: dict[str, Any]) -> None:
    token = head_token()
    assert token not in client_files["output"], "the token is in client.yml's -v output"
    folder = client_files["dir"]
    assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
    assert oct(os.stat(f"{folder}/auth_token").st_mode & 0o777) == "0o600"
    assert oct(os.stat(client_files["env"]).st_mode & 0o777) == "0o600"
    assert Path(f"{folder}/auth_token").read_text().strip() == token
    assert token not in Path(client_files["env"]).read_text()
    counts = recap(client_files["output"])
    assert counts["localhost"]["failed"] == 0 and counts[HEAD]["changed"] == 0, counts
    print(f"\nclient.yml: {client_files['took']:.1f} s")


def test_without_the_tunnel_rays_ports_stay_dropped(client_files: dict[str, Any]) -> None:
    got = probe(RAY_PORTS)
    print("\nfrom the laptop, no tunnel:", got)
    assert all(r == "timeout" for r in got.values()), got
    res = on_laptop(f". {client_files['env']} && cd /opt/workload && python -m bittrader_workload.client --no-connect")
    assert res.returncode == 4, res.stdout + res.stderr
    assert "bittrader_tunnel" in res.stderr


def test_through_the_tunnel_jobs_and_ray_client_work(client_files: dict[str, Any]) -> None:
    env = client_files["env"]
    ssh_opts = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    start = on_laptop(f". {env} && bittrader_tunnel {ssh_opts}", timeout=60)
    assert start.returncode == 0, start.stderr
    try:
        started = time.monotonic()
        job = on_laptop(f". {env} && timeout 180 ray job submit -- python -c "
                        "\"import ray, socket; ray.init(); print('ADMIN-JOB-ON', socket.gethostname(), "
                        "len([n for n in ray.nodes() if n['Alive']]))\"")
        job_s = time.monotonic() - started
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert f"ADMIN-JOB-ON {HEAD} 3" in job.stdout, job.stdout[-3000:]
        started = time.monotonic()
        client = on_laptop(f". {env} && timeout 120 python -c \"import ray; ray.init(logging_level='ERROR'); "
                           "print('LAPTOP-CLIENT', ray.cluster_resources().get('CPU'))\"")
        client_s = time.monotonic() - started
        assert cpus_printed(client.stdout, "LAPTOP-CLIENT") > 0, client.stdout[-3000:] + client.stderr[-3000:]
        helper = on_laptop(f". {env} && cd /opt/workload && timeout 120 python -m bittrader_workload.client")
        assert helper.returncode == 0 and "connected: 3 alive nodes" in helper.stdout, (
            helper.stdout[-2000:] + helper.stderr[-2000:])
        started = time.monotonic()
        no_token = on_laptop(f". {env} && unset RAY_AUTH_TOKEN_PATH && cd /opt/workload && HOME=/nonexistent "
                             "timeout 120 python -m bittrader_workload.client")
        no_token_s = time.monotonic() - started
        assert no_token.returncode == 3 and "requires its auth token" in no_token.stderr, no_token.stderr
        print(f"\nthrough the tunnel: job {job_s:.1f} s, Ray Client {client_s:.1f} s; without the token the helper "
              f"says so in {no_token_s:.1f} s")
    finally:
        stop = on_laptop(f". {env} && bittrader_tunnel_stop", timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert on_laptop(f". {env} && timeout 30 ray job list").returncode != 0  # the tunnel is gone
    got = probe(RAY_PORTS)
    assert all(r == "timeout" for r in got.values()), got


def test_direct_access_for_an_allowed_admin_address(client_files: dict[str, Any], laptop: str) -> None:
    """The laptop's address in bittrader_firewall_admin_sources: the job API and Ray Client answer it
    (nothing else does); the variable emptied again, they are dropped again."""
    allow = json.dumps({"bittrader_firewall_admin_sources": [LAPTOP_IP]})
    folder = Path(tempfile.mkdtemp(prefix="bittrader-client-direct-"))
    try:
        res, took = run_playbook("playbooks/firewall.yml", "-e", allow)
        assert res.returncode == 0, res.stdout[-3000:]
        got = probe(RAY_PORTS)
        print(f"\nlaptop in bittrader_firewall_admin_sources (firewall.yml {took:.1f} s):", got)
        assert got[f"{HEAD_IP}:{PORTS['dashboard']}"] == "open", got
        assert got[f"{HEAD_IP}:{PORTS['client_server']}"] == "open", got
        assert got[GCS_ADDRESS] == "timeout" and got[f"{HEAD_IP}:{PORTS['node_manager']}"] == "timeout", got
        assert got[f"{IPS[WORKERS[0]]}:{PORTS['node_manager']}"] == "timeout", got
        direct = folder / "cluster"
        res, _ = run_playbook("playbooks/client.yml", "-e", "client_access=direct", "-e", f"client_dir={direct}")
        assert res.returncode == 0, res.stdout[-3000:]
        podman("exec", laptop, "mkdir", "-p", str(folder))
        podman("cp", str(direct), f"{laptop}:{folder}")
        job = on_laptop(f". {direct}/client.env && timeout 180 ray job submit -- echo DIRECT-JOB-RAN")
        assert job.returncode == 0 and "DIRECT-JOB-RAN" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        client = on_laptop(f". {direct}/client.env && timeout 120 python -c \"import ray; ray.init(logging_level="
                           "'ERROR'); print('DIRECT-CLIENT', ray.cluster_resources().get('CPU'))\"")
        assert cpus_printed(client.stdout, "DIRECT-CLIENT") > 0, client.stdout[-3000:] + client.stderr[-3000:]
    finally:
        res, _ = run_playbook("playbooks/firewall.yml")
        shutil.rmtree(folder, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-3000:]
    got = probe(RAY_PORTS)
    assert all(r == "timeout" for r in got.values()), got
