"""Throwaway hosts for the bad-input suite (issue #6): three systemd containers, no Ray on them.

bi-head, bi-worker1 and bi-worker2 run the lab's cached image (localhost/bittrader-systemd:bookworm,
`python tools/lab.py image`) on their own podman network, bittrader-badinput (10.89.88.0/24). They are
made once per session and removed at the end, also when a test fails. Each case runs site.yml against
an inventory written here, and the hosts are fingerprinted before and after (Hosts.snapshot).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import lab  # noqa: E402

HEAD, WORKER1, WORKER2 = "bi-head", "bi-worker1", "bi-worker2"
IPS = {HEAD: "10.89.88.10", WORKER1: "10.89.88.11", WORKER2: "10.89.88.12"}
NETWORK, SUBNET = "bittrader-badinput", "10.89.88.0/24"
SHM_BYTES = 256 * 2**20  # each container's /dev/shm (--shm-size)
FOREIGN_PORT = 16379  # a port another program (not Ray) listens on, on the head
CONNECTION_PLAY = "Check how Ansible reaches each host"  # playbooks/preflight.yml's first play (no facts)
PREFLIGHT_PLAY = "Preflight checks of the Bittrader Ray cluster"
# A Windows worker that is no container: cases that must fail before anything connects to it (its address
# answers nothing), or whose facts a case writes into the fact cache.
WINDOWS_HOST, WINDOWS_IP = "bi-win", "10.89.88.50"
WINDOWS_SSH = {"ansible_connection": "ansible.builtin.ssh", "ansible_shell_type": "powershell",
               "ansible_host": WINDOWS_IP, "ansible_user": "admin", "bittrader_node_ip": WINDOWS_IP}
# An account on bi-worker2 with a passwordless sudo rule through a group, for one command only.
SUDO_GROUP_USER = "bi-wheel"
PLAYBOOK_TIMEOUT = 600

# The base inventory: valid (the session's control run proves it), lab-shaped, no Ray needed.
BASE_GROUP_VARS: dict[str, Any] = {
    "bittrader_network_mode": "lan",
    "bittrader_cluster_cidr": SUBNET,
    "bittrader_python_source": "system",
    "bittrader_python_version": "3.11.2",  # Debian 12's python3 in the image
    "bittrader_object_store_memory": 128 * 2**20,
}
BASE_HOST_VARS: dict[str, dict[str, Any]] = {
    HEAD: {"bittrader_node_ip": IPS[HEAD], "bittrader_num_cpus": 0},
    WORKER1: {"bittrader_node_ip": IPS[WORKER1], "bittrader_num_cpus": 1},
    WORKER2: {"bittrader_node_ip": IPS[WORKER2], "bittrader_num_cpus": 1},
}
BASE_GROUPS: dict[str, tuple[str, ...]] = {
    "ray_head": (HEAD,),
    "workers_linux": (WORKER1, WORKER2),
    "workers_macos": (),
    "workers_windows": (),
}

# What a host is, for "did anything change": accounts, the folders a role writes to (unit files and
# their enablement are in /etc/systemd/system), packages, running services and listening sockets.
# Not: /tmp, /run, /var/log, the journal, Ansible's own ~/.ansible.
SNAPSHOT_SCRIPT = r"""
export LC_ALL=C
echo '## accounts'; cat /etc/passwd /etc/group /etc/shadow /etc/gshadow
echo '## files'
find /etc /home /root /opt /srv /usr/local /var/spool /var/lib /var/cache/bittrader /var/opt \
     \( -path /root/.ansible -o -path /var/lib/apt/lists -o -path /var/lib/apt/periodic \
        -o -path /var/lib/systemd/timers -o -path /var/lib/systemd/random-seed \
        -o -path /var/lib/systemd/catalog -o -path /var/lib/private/systemd \) -prune \
     -o -printf '%p %y %s %T@ %m %u:%g %l\n' 2>/dev/null | sort
echo '## packages'; dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\n'
echo '## running services'
systemctl list-units --type=service --state=running --no-legend --plain | awk '{print $1}' | sort
echo '## listening'; cat /proc/net/tcp /proc/net/tcp6 | awk '$4 == "0A" {print $2, $8}' | sort
echo '## crontabs'; ls -la /var/spool/cron/crontabs 2>/dev/null || true
"""


@dataclass
class Run:
    """One ansible-playbook run: its exit code, output and duration."""

    argv: list[str]
    rc: int
    output: str
    seconds: float


@dataclass
class Failure:
    """One `fatal: [host]` of a run: the host, the message, and the task file that raised it."""

    host: str
    message: str
    task: str


@dataclass
class Record:
    """What the summary prints for one case."""

    case: str
    stage: str
    seconds: float
    playbook_seconds: float
    messages: list[str] = field(default_factory=list)


RECORDS: list[Record] = []
SESSION: dict[str, float] = {}


class Hosts:
    """The three containers, an inventory writer and an ansible-playbook runner."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.lab = lab.Lab(
            network=NETWORK,
            subnet=SUBNET,
            hosts=tuple(lab.LabHost(name, ip) for name, ip in IPS.items()),
            shm_size=str(SHM_BYTES // 2**20) + "m",
        )
        self.fact_cache = workdir / "facts"
        self.base_inventory = workdir / "inventory-base"
        self.baseline: dict[str, str] = {}
        self._counter = 0

    # --- podman ---
    def exec(self, name: str, script: str, check: bool = True) -> str:
        res = subprocess.run(
            ["podman", "exec", name, "sh", "-c", script],
            capture_output=True,
            text=True,
            env=lab.lab_env(),
            timeout=120,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{name}: {script!r} failed ({res.returncode}): {res.stderr[-2000:]}")
        return res.stdout

    def snapshot(self) -> dict[str, str]:
        """Each host's fingerprint text (the three read in parallel)."""
        with ThreadPoolExecutor(max_workers=len(IPS)) as pool:
            texts = list(pool.map(lambda name: self.exec(name, SNAPSHOT_SCRIPT), IPS))
        return dict(zip(IPS, texts, strict=True))

    @staticmethod
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def changes(self, before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, str]:
        """host -> unified diff of the hosts whose fingerprint changed."""
        out: dict[str, str] = {}
        for host in IPS:
            if self.digest(before[host]) != self.digest(after[host]):
                diff = difflib.unified_diff(
                    before[host].splitlines(), after[host].splitlines(), "before", "after", lineterm="", n=0
                )
                out[host] = "\n".join(list(diff)[:60])
        return out

    # --- inventories ---
    def write_inventory(
        self,
        path: Path,
        groups: Mapping[str, Sequence[str]] | None = None,
        host_vars: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Path:
        """An inventory folder: every host under ray_cluster (with its variables), the groups as children,
        and the base group_vars/ray_cluster.yml."""
        layout = dict(BASE_GROUPS if groups is None else groups)
        hosts: dict[str, dict[str, Any]] = {name: dict(BASE_HOST_VARS[name]) for name in IPS}
        for name, extra in (host_vars or {}).items():
            hosts.setdefault(name, {}).update(extra)  # a host that is not a container (WINDOWS_HOST)
        used = {name for members in layout.values() for name in members} | set(host_vars or {})
        inventory = {
            "ray_cluster": {
                "vars": {
                    "ansible_connection": "containers.podman.podman",
                    "ansible_python_interpreter": "/usr/bin/python3",
                },
                "hosts": {name: hosts[name] for name in hosts if name in used},
                "children": {group: {"hosts": {name: None for name in members}} for group, members in layout.items()},
            }
        }
        (path / "group_vars").mkdir(parents=True, exist_ok=True)
        (path / "hosts.yml").write_text("---\n" + yaml.safe_dump(inventory, sort_keys=False))
        (path / "group_vars" / "ray_cluster.yml").write_text("---\n" + yaml.safe_dump(BASE_GROUP_VARS))
        return path

    def scratch(self, label: str) -> Path:
        self._counter += 1
        path = self.workdir / f"{self._counter:02d}-{label}"
        path.mkdir(parents=True)
        return path

    # --- ansible ---
    def env(self) -> dict[str, str]:
        env = lab.lab_env()
        env.update(
            {
                "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                # Facts are gathered once (the control run) and read from this cache afterwards.
                "ANSIBLE_CACHE_PLUGIN": "ansible.builtin.jsonfile",
                "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(self.fact_cache),
                "ANSIBLE_CACHE_PLUGIN_TIMEOUT": "86400",
                "ANSIBLE_GATHERING": "smart",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
                "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
                "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-local"),
            }
        )
        env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
        return env

    def facts_with(self, workdir: Path, changes: Mapping[str, Mapping[str, Any]]) -> Path:
        """A copy of the fact cache in which each host's facts carry changes (ansible_facts keys, without the
        ansible_ prefix); a host without cached facts gets a copy of bi-worker2's. For a release or a
        platform that the containers are not (an old Debian, Windows Server)."""
        cache = workdir / "facts"
        shutil.copytree(self.fact_cache, cache)
        # ansible-core 2.19's jsonfile cache: one file per host named PREFIX + host ("s1_bi-head"), holding
        # {"__payload__": the facts as a JSON string}.
        files = {p.name: p for p in cache.iterdir()}
        template = next(name for name in files if name.endswith(WORKER2))
        prefix = template[: -len(WORKER2)]
        for host, change in changes.items():
            source = files.get(prefix + host, files[template])
            stored = json.loads(source.read_text())
            facts = json.loads(stored["__payload__"]) if "__payload__" in stored else stored
            facts.update({f"ansible_{k}": v for k, v in change.items()})
            text = json.dumps({"__payload__": json.dumps(facts)} if "__payload__" in stored else facts)
            (cache / (prefix + host)).write_text(text)
        return cache

    def playbook(self, inventory: Path, playbook: str = "site.yml", *args: str, fact_cache: Path | None = None) -> Run:
        argv = ["ansible-playbook", "-i", str(inventory), str(REPO / playbook), *args]
        started = time.monotonic()
        env = self.env()
        if fact_cache is not None:
            env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = str(fact_cache)
        res = subprocess.run(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # errors (with each failing task's origin) in order with the rest
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            check=False,
        )
        return Run(argv, res.returncode, res.stdout, time.monotonic() - started)


# --- output parsing ---
_FATAL = re.compile(r"^fatal: \[(?P<host>[^\]\s]+)(?: -> [^\]]+)?\]: (?:FAILED|UNREACHABLE)! =>\s*(?P<rest>.*)$")
_ORIGIN = re.compile(r"^Origin: (?P<origin>\S+)")


def failures(output: str) -> list[Failure]:
    """Every `fatal: [host]` of the default callback's YAML output, with its message and task file."""
    found: list[Failure] = []
    lines = output.splitlines()
    origin = "<unknown>"
    i = 0
    while i < len(lines):
        line = lines[i]
        m_origin = _ORIGIN.match(line)
        if m_origin:
            origin = m_origin["origin"]
        m = _FATAL.match(line)
        if not m:
            i += 1
            continue
        block: list[str] = []
        i += 1
        while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
            block.append(lines[i])
            i += 1
        data: Any
        try:
            data = yaml.safe_load(textwrap.dedent("\n".join(block))) if block else yaml.safe_load(m["rest"])
        except yaml.YAMLError:
            data = {"msg": "\n".join(block) or m["rest"]}
        if not isinstance(data, dict):
            data = {"msg": str(data)}
        raw = data.get("msg", "")
        msg = " ".join(map(str, raw)) if isinstance(raw, list) else str(raw)
        text = " ".join([msg, *(str(e) for e in data.get("argument_errors") or [] if str(e) not in msg)])
        found.append(Failure(m["host"], " ".join(text.split()), origin))
        origin = "<unknown>"
    return found


def origins(output: str) -> list[str]:
    """The task file of every error of a run (`<unknown>` for the role's argument-spec check)."""
    return [m["origin"] for m in map(_ORIGIN.match, output.splitlines()) if m]


def normalized(text: str) -> str:
    """text without quotes and with single spaces: YAML output quotes and folds messages."""
    return " ".join(text.replace("'", "").replace('"', "").split())


def role_tasks(output: str) -> list[str]:
    """Roles whose tasks or handlers ran (`TASK [role : name]`)."""
    return sorted(set(re.findall(r"^(?:TASK|RUNNING HANDLER) \[([\w.]+) : ", output, re.M)))


def plays(output: str) -> list[str]:
    return re.findall(r"^PLAY \[(.+?)\] \*", output, re.M)


def recap_changed(output: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.M)}


def start_foreign_listener(hosts: Hosts) -> None:
    """A program that is not Ray (a root python3) listening on FOREIGN_PORT on the head."""
    code = (
        "import socket, time; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('0.0.0.0', {FOREIGN_PORT})); s.listen(); time.sleep(86400)"
    )
    subprocess.run(
        ["podman", "exec", "-d", HEAD, "python3", "-c", code], env=lab.lab_env(), check=True, timeout=60
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if f":{FOREIGN_PORT:04X} " in hosts.exec(HEAD, "cat /proc/net/tcp"):
            return
        time.sleep(0.5)
    raise AssertionError(f"the stand-in listener on {HEAD}:{FOREIGN_PORT} did not start")


def remove_containers() -> None:
    """Remove the three containers at once (no grace period: they are throwaway) and their network."""
    env = lab.lab_env()
    subprocess.run(["podman", "rm", "-f", "-t", "0", *IPS], env=env, capture_output=True, check=False, timeout=120)
    subprocess.run(["podman", "network", "rm", "-f", NETWORK], env=env, capture_output=True, check=False, timeout=60)


@pytest.fixture(scope="session")
def bad_input_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """The containers, a valid base inventory, facts cached by one control preflight run, and the
    hosts' baseline fingerprints. Removed at the end whatever happened."""
    started = time.monotonic()
    hosts = Hosts(tmp_path_factory.mktemp("bad-input"))
    if not lab.image_exists():
        pytest.skip(f"{lab.IMAGE} is missing: run `python tools/lab.py image` first")
    remove_containers()  # leftovers of an interrupted run
    try:
        lab.up_containers(hosts.lab)
        for name in IPS:  # Ansible's own working folder, made before the first fingerprint
            hosts.exec(name, "mkdir -p /root/.ansible/tmp && chmod 700 /root/.ansible /root/.ansible/tmp")
        start_foreign_listener(hosts)
        hosts.exec(WORKER2, f"useradd --create-home {SUDO_GROUP_USER} && groupadd -f bi-ops "
                            f"&& usermod -aG bi-ops {SUDO_GROUP_USER} "
                            "&& echo '%bi-ops ALL=(root) NOPASSWD: /usr/bin/systemctl' > /etc/sudoers.d/bi-ops "
                            "&& chmod 0440 /etc/sudoers.d/bi-ops")
        hosts.write_inventory(hosts.base_inventory)
        SESSION["setup"] = time.monotonic() - started
        before = hosts.snapshot()
        control = hosts.playbook(hosts.base_inventory, "playbooks/preflight.yml")
        after = hosts.snapshot()
        RECORDS.append(Record("control: preflight.yml, valid inventory", "preflight", control.seconds, control.seconds))
        assert control.rc == 0, f"the valid base inventory fails preflight:\n{control.output[-6000:]}"
        assert set(recap_changed(control.output).values()) == {0}, control.output[-3000:]
        assert not hosts.changes(before, after), hosts.changes(before, after)
        hosts.baseline = after
        yield hosts
    finally:
        down_started = time.monotonic()
        remove_containers()
        SESSION["teardown"] = time.monotonic() - down_started
        SESSION["total"] = time.monotonic() - started


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Per-case time and messages, and the total, also without -s."""
    if not RECORDS:
        return
    tr = terminalreporter
    tr.section("bad input: time per case and the messages")
    for rec in RECORDS:
        tr.write_line(f"{rec.seconds:6.1f} s  (playbook {rec.playbook_seconds:5.1f} s)  [{rec.stage}]  {rec.case}")
        for msg in rec.messages:
            tr.write_line(textwrap.fill(msg, 150, initial_indent="          ", subsequent_indent="            "))
    cases = sum(r.seconds for r in RECORDS)
    tr.write_line(
        f"setup {SESSION.get('setup', 0):.1f} s, cases {cases:.1f} s ({len(RECORDS)} runs), "
        f"teardown {SESSION.get('teardown', 0):.1f} s, total {SESSION.get('total', 0):.1f} s"
    )


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)

