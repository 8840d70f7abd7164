"""Local lab: a head and Linux workers as systemd containers, provisioned by site.yml.

The lab runs the same playbooks a user points at real machines, against real systemd hosts in
podman containers on a network of their own. Verbs:

    image      build (or load from cache) the systemd test image
    up         image + network + containers + site.yml + verify + smoke test
    converge   run site.yml against the running lab
    verify     print the cluster table
    smoke      run the first test optimization
    benchmark  run the reference benchmark
    optimize   the Ray Tune + Optuna search of the reference strategy (playbooks/optimize.yml);
               `./lab optimize -e optimize_candles=20000 -e optimize_trials=12` for a small one;
               writes results/optimize-TIMESTAMP/ (table, plot)
    timings    provisioning timings: cold converge (fresh containers), idempotent re-run, a worker
               removed, recreated and added with --limit, then a cold converge without the
               wheelhouse (the nodes install from the package index; `./lab timings -- --no-index`
               leaves it out); writes results/provisioning.json (tools/lab_timings.py: the targets
               are fractions of the cold converge)
    scale      cold converge, idempotent re-run and verify of labs of 1 head + N workers (default
               N = 2, 4, 8; `./lab scale -- 2 4`), each made, measured and removed in turn; writes
               results/scale.json and results/scale.png (tools/lab_scale.py; --network, --subnet
               and --prefix put the labs beside the lab)
    profile    CPU seconds of every process of the lab's nodes over a window (default 60 s), by
               node and process (Ray's background, the tasks, the supervisor): where the cores go;
               `./lab profile -- 120` for 120 s; writes results/cpu-profile.json
    ceiling    what two cores can give at all: the reference backtest's serial mode on one worker
               alone, then on both workers at once (Ray idle beside it), then on both with Ray
               stopped; per-evaluation times, the efficiency ceiling of this machine and Ray's idle
               cost; `./lab ceiling -- CANDLES PARAMS` (297000 24); writes results/ceiling.json
    down       remove the lab's containers and network
    hosts-up, hosts-down
               make (or remove) test hosts on a network of their own: the lab's by default; Molecule's
               create.yml and destroy.yml call them with --network, --subnet, --label and --host NAME=IP

Called through ./lab (which prepares the controller's virtual environment first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/bittrader-systemd:bookworm"
SUITE = "bookworm"
PACKAGES = (
    "systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,sudo,iproute2,procps,"
    "iputils-ping,ca-certificates,acl,nftables,curl,openssh-server"
)
# Bump when PACKAGES or the image layer change: the cached tarball and the image are rebuilt (the
# image carries its revision as a label).
IMAGE_REVISION = "2"
# The lab reaches its nodes as real machines are reached: SSH (with pipelining and a persistent
# control connection) to an ordinary login with passwordless sudo. The image has the account; the
# controller's key (made once per machine in the cache) is mounted as its authorized_keys.
SSH_USER = "admin"


@dataclass(frozen=True)
class LabHost:
    """One lab container: its inventory name, its fixed address and its inventory groups."""

    name: str
    ip: str

    @property
    def is_head(self) -> bool:
        """The lab's head is the host named *-head (inventory/lab/hosts.yml, group ray_head)."""
        return is_head_name(self.name)

    @property
    def mac(self) -> str:
        """A fixed MAC address made from the IP (the lab's and Molecule's hosts alike): a real NIC keeps
        its MAC, while podman would draw a new one at each start, which other nodes' ARP caches miss
        for seconds."""
        return mac_for(self.ip)


def mac_for(ip: str) -> str:
    """02:42 (locally administered) followed by the IPv4 address's four octets in hex."""
    return "02:42:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))


def is_head_name(name: str) -> bool:
    return name.endswith("-head")


@dataclass(frozen=True)
class Lab:
    """The lab's network and containers (inventory/lab/hosts.yml describes the same hosts)."""

    network: str = "bittrader-lab"
    subnet: str = "10.89.42.0/24"
    hosts: tuple[LabHost, ...] = field(
        default_factory=lambda: (
            LabHost("bt-head", "10.89.42.10"),
            LabHost("bt-worker1", "10.89.42.11"),
            LabHost("bt-worker2", "10.89.42.12"),
        )
    )
    shm_size: str = "1g"
    # Like a real host's systemd: NET_ADMIN for the nodes' firewall (nftables), SYS_ADMIN for the Ray
    # unit's sandboxing (ProtectSystem=strict needs mount namespaces).
    cap_add: tuple[str, ...] = ("NET_ADMIN", "SYS_ADMIN")
    label: str = "project=bittrader-lab"  # Molecule's hosts carry owner=molecule


def lab_from_args(network: str | None, subnet: str | None, hosts: list[str], label: str | None) -> Lab:
    """The lab's hosts, or other test hosts (Molecule's): each given part replaces the lab's."""
    lab, made = Lab(), tuple(LabHost(*spec.partition("=")[::2]) for spec in hosts)
    if any(not h.name or not h.ip for h in made):
        raise SystemExit(f"--host takes NAME=IP: {hosts}")
    return Lab(network or lab.network, subnet or lab.subnet, made or lab.hosts, label=label or lab.label)


def cache_dir() -> Path:
    """Where a reused machine keeps the image tarball and pip downloads."""
    base = os.environ.get("BITTRADER_CACHE") or os.environ.get("XDG_CACHE_HOME")
    path = Path(base) / "bittrader-lab" if base else Path.home() / ".cache" / "bittrader-lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(
    cmd: list[str], check: bool = True, capture: bool = False, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it, with the lab's podman settings in the environment."""
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check, text=True, capture_output=capture, env=lab_env(), cwd=cwd)


def containers_conf_text(nofile_hard: int) -> str:
    """containers.conf that works on this kind of machine (runc, cgroupfs, capped ulimits)."""
    nofile = min(nofile_hard, 65536)
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=16384:16384"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
    )


def containers_conf() -> Path:
    """Write the lab's containers.conf (once per machine) and return its path."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 65536
    path = cache_dir() / "containers.conf"
    text = containers_conf_text(int(hard))
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def lab_env() -> dict[str, str]:
    """The environment every podman, molecule and ansible call of the lab runs with."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(containers_conf()))
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    env.setdefault("BITTRADER_LAB_SSH_KEY", str(ssh_key()))
    return env


def ssh_key() -> Path:
    """The controller's private key for the lab's SSH login (made once per machine, in the cache).

    Every lab container mounts the public half as SSH_USER's authorized_keys; inventory/lab reads the
    path from BITTRADER_LAB_SSH_KEY.
    """
    import fcntl

    key = cache_dir() / "ssh" / "id_ed25519"
    key.parent.mkdir(mode=0o700, exist_ok=True)
    with (key.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two labs starting at once make one key, not a mismatched pair
        if not (key.exists() and key.with_suffix(".pub").exists()):
            for stale in (key, key.with_suffix(".pub")):
                stale.unlink(missing_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bittrader-lab", "-f", str(key)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
    return key


def ssh_mount() -> str:
    """podman --volume argument that makes the lab's public key SSH_USER's authorized_keys."""
    return f"{ssh_key().with_suffix('.pub')}:/home/{SSH_USER}/.ssh/authorized_keys:ro"


def image_exists(name: str = IMAGE) -> bool:
    return run(["podman", "image", "exists", name], check=False).returncode == 0


def image_revision(name: str = IMAGE) -> str:
    """The revision label of the built image ("" when absent or unlabelled)."""
    res = run(
        ["podman", "image", "inspect", "--format", '{{ index .Labels "bittrader.image-revision" }}', name],
        check=False,
        capture=True,
    )
    return res.stdout.strip() if res.returncode == 0 else ""


def containerfile(base: str) -> str:
    """The image's layer over the debootstrap rootfs: CA certificates, systemd for containers, sshd
    with host keys made by each container at its first boot, and the lab's SSH login with sudo."""
    return (
        f"FROM {base}\n"
        f"LABEL bittrader.image-revision={IMAGE_REVISION}\n"
        "COPY certs/ /usr/local/share/ca-certificates/\n"
        "RUN update-ca-certificates && rm -f /etc/machine-id && touch /etc/machine-id "
        "&& systemctl mask systemd-logind.service getty.target console-getty.service\n"
        "RUN rm -f /etc/ssh/ssh_host_* && mkdir -p /etc/systemd/system/ssh.service.d "
        "&& printf '[Service]\\nExecStartPre=\\nExecStartPre=/usr/bin/ssh-keygen -A\\n"
        "ExecStartPre=/usr/sbin/sshd -t\\n' > /etc/systemd/system/ssh.service.d/host-keys.conf "
        "&& printf 'PasswordAuthentication no\\nPermitRootLogin no\\nUseDNS no\\n' "
        "> /etc/ssh/sshd_config.d/lab.conf "
        f"&& useradd --create-home --shell /bin/bash {SSH_USER} "
        f"&& printf '{SSH_USER} ALL=(ALL:ALL) NOPASSWD: ALL\\n' > /etc/sudoers.d/{SSH_USER} "
        f"&& chmod 0440 /etc/sudoers.d/{SSH_USER} && install -d -m 0700 -o {SSH_USER} /home/{SSH_USER}/.ssh\n"
        'CMD ["/sbin/init"]\n'
    )


def build_image(force: bool = False) -> None:
    """Build the systemd image: from the cached rootfs tarball when present, else debootstrap."""
    if image_exists() and not force:
        if image_revision() == IMAGE_REVISION:
            print(f"image {IMAGE} present (revision {IMAGE_REVISION})")
            return
        print(f"image {IMAGE} is not revision {IMAGE_REVISION}: rebuilding it")
    tarball = cache_dir() / f"rootfs-{SUITE}-r{IMAGE_REVISION}.tar.zst"
    if not tarball.exists() or force:
        with tempfile.TemporaryDirectory(prefix="bt-rootfs-", dir="/var/tmp") as tmp:
            rootfs = Path(tmp) / "rootfs"
            started = time.monotonic()
            run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs)])
            print(f"debootstrap took {time.monotonic() - started:.0f} s")
            partial = tarball.with_suffix(".partial")
            with partial.open("wb") as out:
                tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
                subprocess.run(["zstd", "-q", "-T0", "-c"], stdin=tar.stdout, stdout=out, check=True)
                if tar.wait() != 0:
                    raise SystemExit("tar of the rootfs failed")
            partial.rename(tarball)
    base = f"{IMAGE}-base"
    with tarball.open("rb") as src:
        zstd = subprocess.Popen(["zstd", "-q", "-d", "-c"], stdin=src, stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "-", base], stdin=zstd.stdout, check=True, env=lab_env())
        if zstd.wait() != 0:
            raise SystemExit("zstd could not read the cached rootfs")
    with tempfile.TemporaryDirectory(prefix="bt-image-") as ctx:
        certs = Path(ctx) / "certs"
        certs.mkdir()
        for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy(crt, certs / crt.name)
        (Path(ctx) / "Containerfile").write_text(containerfile(base))
        run(["podman", "build", "-t", IMAGE, ctx])
    run(["podman", "rmi", base], check=False)


def ensure_network(name: str, subnet: str) -> None:
    """Create a podman network with a fixed subnet (so nodes get fixed addresses) unless it exists."""
    if run(["podman", "network", "exists", name], check=False).returncode != 0:
        run(["podman", "network", "create", "--subnet", subnet, name])


def up_containers(lab: Lab) -> None:
    ensure_network(lab.network, lab.subnet)
    for host in lab.hosts:
        if run(["podman", "container", "exists", host.name], check=False).returncode == 0:
            run(["podman", "start", host.name])
            continue
        run([
            "podman", "run", "-d", "--name", host.name, "--hostname", host.name,
            "--network", lab.network, "--ip", host.ip, "--mac-address", host.mac,
            "--systemd=always",
            f"--shm-size={lab.shm_size}", "--label", lab.label, "--volume", ssh_mount(),
            *[f"--cap-add={cap}" for cap in lab.cap_add],
            IMAGE, "/sbin/init",
        ])
    for host in lab.hosts:
        wait_for_systemd(host.name)
    for host in lab.hosts:
        wait_for_port(host.ip, 22)


def wait_for_port(address: str, port: int, timeout: float = 90.0) -> float:
    """Seconds until a TCP connection to address:port succeeds. A container made again at the same
    address can be unreachable for a while from the controller (its neighbour entry still names the
    old container), and Ansible would call the host unreachable."""
    started = time.monotonic()
    while True:
        try:
            with socket.create_connection((address, port), timeout=2):
                return time.monotonic() - started
        except OSError:
            if time.monotonic() - started > timeout:
                raise SystemExit(f"{address}:{port} not reachable after {timeout:.0f} s") from None
            time.sleep(1)


def wait_for_systemd(name: str, timeout: float = 60.0) -> None:
    """Wait until systemd inside the container has booted (running or degraded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = run(["podman", "exec", name, "systemctl", "is-system-running"], check=False, capture=True)
        if res.stdout.strip() in {"running", "degraded"}:
            return
        time.sleep(1)
    raise SystemExit(f"{name}: systemd did not finish booting in {timeout:.0f} s")


def playbook(path: str, *extra: str) -> None:
    started = time.monotonic()
    run(["ansible-playbook", "-i", str(REPO / "inventory" / "lab"), str(REPO / path), *extra], cwd=REPO)
    print(f"{path}: {time.monotonic() - started:.1f} s")


# Read inside a node: every process's CPU ticks (utime + stime), its command line and comm.
PROC_SAMPLE = r"""
import json, os
out = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        continue
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    out[pid] = [comm, argv[:6], int(fields[11]) + int(fields[12])]
print(json.dumps({"ticks_per_s": os.sysconf("SC_CLK_TCK"), "procs": out}))
"""


def process_label(comm: str, argv: list[str]) -> str:
    """A short name for a process: Ray's named workers and agents (ray::X), its binaries, the Python
    script or module a python process runs, else the command's name."""
    if argv and argv[0].startswith("ray::"):
        return argv[0].split()[0]
    if argv and argv[0].startswith("ray-dashboard-"):  # the dashboard's module processes: a set title
        return argv[0].split(" (")[0].split()[0]
    if not argv:
        return comm
    exe = Path(argv[0]).name
    if exe.startswith("python"):
        args = argv[1:]
        while args and args[0].startswith("-") and args[0] != "-m":
            args = args[1:]
        if len(args) >= 2 and args[0] == "-m":
            return f"python -m {args[1]}"
        if args:
            name = Path(args[0]).name
            if name == "ray" and len(args) > 1:  # the venv's `ray` script: ray start, ray stop, ...
                return f"ray {args[1]}"
            return name
        return exe
    return exe


def cpu_profile(before: dict[str, object], after: dict[str, object]) -> dict[str, float]:
    """CPU seconds per process label between two PROC_SAMPLE outputs of one node (processes that
    started in between count from zero; processes that ended are not seen)."""
    tick = float(after["ticks_per_s"])  # type: ignore[arg-type]
    old: dict[str, list[object]] = before["procs"]  # type: ignore[assignment]
    new: dict[str, list[object]] = after["procs"]  # type: ignore[assignment]
    totals: dict[str, float] = {}
    for pid, (comm, argv, ticks) in new.items():
        prev = old.get(pid)
        start = int(prev[2]) if prev is not None and prev[0] == comm else 0  # type: ignore[call-overload]
        used = (int(ticks) - start) / tick  # type: ignore[call-overload]
        if used > 0:
            label = process_label(str(comm), [str(a) for a in argv])  # type: ignore[attr-defined]
            totals[label] = round(totals.get(label, 0.0) + used, 2)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def profile_table(report: dict[str, object]) -> str:
    seconds = float(report["seconds"])  # type: ignore[arg-type]
    share = 100 / seconds if seconds > 0 else 0.0
    lines = [f"CPU over {seconds:.0f} s, by node and process (% of one core)"]
    nodes: dict[str, dict[str, float]] = report["nodes"]  # type: ignore[assignment]
    for node, procs in nodes.items():
        total = sum(procs.values())
        lines.append(f"{node:<14} {'total':<36} {total:>8.1f} s {share * total:>6.1f} %")
        for label, used in procs.items():
            if used >= 0.05:
                lines.append(f"{'':<14} {label[:36]:<36} {used:>8.1f} s {share * used:>6.1f} %")
    return "\n".join(lines)


def profile(lab: Lab, seconds: float, out: Path) -> dict[str, object]:
    """CPU seconds of every process on each lab node over `seconds` (while the lab idles, or while a
    benchmark runs from another terminal), printed and written to out."""

    def sample() -> dict[str, dict[str, object]]:
        got = {}
        for host in lab.hosts:
            res = run(["podman", "exec", host.name, "python3", "-c", PROC_SAMPLE], capture=True)
            got[host.name] = json.loads(res.stdout)
        return got

    first = sample()
    started = time.monotonic()
    time.sleep(seconds)
    second = sample()
    elapsed = time.monotonic() - started
    report: dict[str, object] = {
        "schema": "bittrader-cpu-profile/1",
        "seconds": round(elapsed, 1),
        "cores": os.cpu_count(),
        "nodes": {name: cpu_profile(first[name], second[name]) for name in first},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(profile_table(report))
    print(f"wrote {out}")
    return report


# The lab's service user and where each node keeps its venv (roles/cluster_facts defaults, lab inventory).
SERVICE_USER = "bittrader"
CEILING_DIR = "/tmp/bt-ceiling"  # on each worker, removed afterwards


def node_venv_python(name: str) -> str:
    base = ".bittrader_head" if is_head_name(name) else ".bittrader_worker"
    return f"/home/{SERVICE_USER}/{base}/venv/bin/python"


def serial_command(name: str, candles: int, params: int) -> list[str]:
    """podman exec argv: the reference job's serial mode on node `name`, as the service user, from
    the workload copied to CEILING_DIR; one JSON line per evaluation in CEILING_DIR/r.jsonl."""
    return [
        "podman", "exec", name, "runuser", "-u", SERVICE_USER, "--",
        "env", f"PYTHONPATH={CEILING_DIR}/workload", node_venv_python(name),
        "-m", "bittrader_workload.job", "--mode=serial", f"--candles={candles}", f"--params={params}",
        "--quiet", f"--results={CEILING_DIR}/r.jsonl",
    ]  # fmt: skip


def serial_durations(names: list[str], candles: int, params: int) -> dict[str, list[float]]:
    """Run the serial job on every node in `names` at once; each node's per-evaluation seconds."""
    for name in names:
        run(["podman", "exec", name, "rm", "-f", f"{CEILING_DIR}/r.jsonl"])
    procs = {name: subprocess.Popen(serial_command(name, candles, params), env=lab_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in names}
    out: dict[str, list[float]] = {}
    for name, proc in procs.items():
        log, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{name}: the serial job failed (rc {proc.returncode}):\n{log[-2000:]}")
        res = run(["podman", "exec", name, "cat", f"{CEILING_DIR}/r.jsonl"], capture=True)
        out[name] = [float(json.loads(line)["duration"]) for line in res.stdout.splitlines() if line.strip()]
    return out


def ceiling_report(alone: list[float], pair: list[list[float]], quiet: list[list[float]]) -> dict[str, object]:
    """Per-evaluation means of the three runs and what they imply.

    efficiency_ceiling: the parallel efficiency two processes at once can reach at best on this
    machine (one process's time alone over each one's time when both run, Ray idle beside them, as
    in the benchmark); ray_idle_cost: how much slower an evaluation is with Ray's background beside
    it than with Ray stopped.
    """

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    alone_s = mean(alone)
    pair_s = mean([d for run_ in pair for d in run_])
    quiet_s = mean([d for run_ in quiet for d in run_])
    return {
        "schema": "bittrader-ceiling/1",
        "alone_s": round(alone_s, 4),
        "both_workers_ray_idle_s": round(pair_s, 4),
        "both_workers_ray_stopped_s": round(quiet_s, 4),
        "efficiency_ceiling": round(alone_s / pair_s, 3) if pair_s else None,
        "efficiency_ceiling_without_ray": round(alone_s / quiet_s, 3) if quiet_s else None,
        "ray_idle_cost": round(pair_s / quiet_s - 1, 3) if quiet_s else None,
        "evaluations": {"alone": len(alone), "pair": sum(map(len, pair)), "quiet": sum(map(len, quiet))},
    }


def ceiling_table(report: dict[str, object]) -> str:
    return "\n".join([
        "per evaluation (mean)                       seconds",
        f"one worker alone (Ray idle)                 {report['alone_s']:>7.3f}",
        f"both workers at once (Ray idle)             {report['both_workers_ray_idle_s']:>7.3f}",
        f"both workers at once (Ray stopped)          {report['both_workers_ray_stopped_s']:>7.3f}",
        f"efficiency ceiling of 2 CPUs: {report['efficiency_ceiling']} "
        f"(without Ray's background: {report['efficiency_ceiling_without_ray']}); "
        f"Ray's idle cost per evaluation: {report['ray_idle_cost']}",
    ])  # fmt: skip


def ray_services(lab: Lab, action: str) -> None:
    for host in lab.hosts:
        unit = "bittrader-ray-head" if host.is_head else "bittrader-ray-worker"
        run(["podman", "exec", host.name, "systemctl", action, unit])


def ceiling(lab: Lab, candles: int, params: int, out: Path) -> dict[str, object]:
    """Measure the machine's own limit on parallel efficiency (see ceiling_report) on the lab's two
    workers; Ray is stopped for the last run and started again whatever happens."""
    workers = [h.name for h in lab.hosts if not h.is_head][:2]
    try:
        for name in workers:
            run(["podman", "exec", name, "install", "-d", "-o", SERVICE_USER, CEILING_DIR])
            run(["podman", "cp", str(REPO / "workload"), f"{name}:{CEILING_DIR}/workload"])
            run(["podman", "exec", name, "chown", "-R", SERVICE_USER, CEILING_DIR])
        alone = serial_durations(workers[:1], candles, params)
        pair = serial_durations(workers, candles, params)
        ray_services(lab, "stop")
        try:
            quiet = serial_durations(workers, candles, params)
        finally:
            ray_services(lab, "start")
    finally:
        for name in workers:
            run(["podman", "exec", name, "rm", "-rf", CEILING_DIR], check=False)
    report = {
        **ceiling_report(alone[workers[0]], list(pair.values()), list(quiet.values())),
        "candles": candles,
        "params": params,
        "workers": workers,
        "cores": os.cpu_count(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(ceiling_table(report))
    print(f"wrote {out}")
    return report


def down_containers(lab: Lab) -> None:
    for host in lab.hosts:
        run(["podman", "rm", "-f", "-t", "5", host.name], check=False)


def down(lab: Lab) -> None:
    """Remove the containers (in one podman call: their systemd stops in parallel) and the network."""
    run(["podman", "rm", "-f", "-t", "5", *(host.name for host in lab.hosts)], check=False)
    run(["podman", "network", "rm", "-f", lab.network], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "verb",
        choices=["image", "up", "converge", "verify", "smoke", "benchmark", "optimize", "timings", "scale", "profile",
                 "ceiling", "down", "hosts-up", "hosts-down"],
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the image even if cached")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="extra ansible-playbook arguments")
    args = parser.parse_args(argv)
    lab = Lab()
    if args.verb.startswith("hosts-"):  # other test hosts than the lab's (Molecule's)
        hosts = argparse.ArgumentParser(prog=f"lab.py {args.verb}")
        hosts.add_argument("--network", help="the podman network (default: the lab's)")
        hosts.add_argument("--subnet", help="the network's subnet (default: the lab's)")
        hosts.add_argument("--label", help="the containers' label KEY=VALUE (default: the lab's)")
        hosts.add_argument("--host", action="append", default=[], help="NAME=IP, repeated (default: the lab's)")
        opts = hosts.parse_args([a for a in args.extra if a != "--"])
        lab = lab_from_args(opts.network, opts.subnet, opts.host, opts.label)
    started = time.monotonic()
    if args.verb == "image":
        build_image(force=args.rebuild)
    elif args.verb == "up":
        build_image(force=args.rebuild)
        up_containers(lab)
        playbook("site.yml", *args.extra)
        playbook("playbooks/smoke_test.yml")
    elif args.verb == "converge":
        playbook("site.yml", *args.extra)
    elif args.verb == "verify":
        playbook("playbooks/verify.yml", *args.extra)
    elif args.verb == "smoke":
        playbook("playbooks/smoke_test.yml", *args.extra)
    elif args.verb == "benchmark":
        playbook("playbooks/benchmark.yml", *args.extra)
    elif args.verb == "optimize":
        playbook("playbooks/optimize.yml", *args.extra)
    elif args.verb == "timings":
        import lab_timings

        build_image(force=args.rebuild)
        # `./lab timings -- --no-index`: without the extra cold converge from the package index.
        lab_timings.timings(lab, REPO / "inventory" / "lab", REPO / "results" / "provisioning.json",
                            index="--no-index" not in args.extra)
    elif args.verb == "scale":
        import lab_scale

        build_image(force=args.rebuild)
        lab_scale.main([a for a in args.extra if a != "--"])
    elif args.verb == "profile":
        extra = [a for a in args.extra if a != "--"]
        profile(lab, float(extra[0]) if extra else 60.0, REPO / "results" / "cpu-profile.json")
    elif args.verb == "ceiling":
        extra = [a for a in args.extra if a != "--"]
        candles = int(extra[0]) if extra else 297000
        params = int(extra[1]) if len(extra) > 1 else 24
        ceiling(lab, candles, params, REPO / "results" / "ceiling.json")
    elif args.verb == "down" or args.verb == "hosts-down":
        down(lab)
    elif args.verb == "hosts-up":
        up_containers(lab)

    print(f"lab {args.verb}: {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
