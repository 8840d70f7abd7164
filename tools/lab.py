"""Local lab: a head and Linux workers as systemd containers, provisioned by site.yml.

The lab runs the same playbooks a user points at real machines, against real systemd hosts in
podman containers on a network of their own. Verbs:

    image      build (or load from cache) the systemd test image
    up         image + network + containers + site.yml + verify + smoke test
    converge   run site.yml against the running lab
    verify     print the cluster table
    smoke      run the first test optimization
    benchmark  run the reference benchmark
    down       remove the lab's containers and network

Called through ./lab (which prepares the controller's virtual environment first).
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    "iputils-ping,ca-certificates,acl,nftables,curl"
)
# Bump when PACKAGES or the image layer change, so cached tarballs are rebuilt.
IMAGE_REVISION = "1"


@dataclass(frozen=True)
class LabHost:
    """One lab container: its inventory name, its fixed address and its inventory groups."""

    name: str
    ip: str


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
    return env


def image_exists(name: str = IMAGE) -> bool:
    return run(["podman", "image", "exists", name], check=False).returncode == 0


def build_image(force: bool = False) -> None:
    """Build the systemd image: from the cached rootfs tarball when present, else debootstrap."""
    if image_exists() and not force:
        print(f"image {IMAGE} present")
        return
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
        (Path(ctx) / "Containerfile").write_text(
            f"FROM {base}\n"
            "COPY certs/ /usr/local/share/ca-certificates/\n"
            "RUN update-ca-certificates && rm -f /etc/machine-id && touch /etc/machine-id "
            "&& systemctl mask systemd-logind.service getty.target console-getty.service\n"
            'CMD ["/sbin/init"]\n'
        )
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
            "--network", lab.network, "--ip", host.ip, "--systemd=always",
            f"--shm-size={lab.shm_size}", "--label", "project=bittrader-lab",
            IMAGE, "/sbin/init",
        ])
    for host in lab.hosts:
        wait_for_systemd(host.name)


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


def down(lab: Lab) -> None:
    for host in lab.hosts:
        run(["podman", "rm", "-f", "-t", "5", host.name], check=False)
    run(["podman", "network", "rm", "-f", lab.network], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("verb", choices=["image", "up", "converge", "verify", "smoke", "benchmark", "down"])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the image even if cached")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="extra ansible-playbook arguments")
    args = parser.parse_args(argv)
    lab = Lab()
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
    elif args.verb == "down":
        down(lab)

    print(f"lab {args.verb}: {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
