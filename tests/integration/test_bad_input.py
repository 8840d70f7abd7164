"""Issue #6: bad input is rejected before any host changes.

Each case runs the real entry point, `ansible-playbook site.yml` (with --limit where the case needs it),
against three fresh containers (conftest.py) with a broken inventory or variables, and checks that
  - the run fails (non-zero exit);
  - it fails in the validation/preflight play: no task of any other role ran, no other play started,
    the recap reports changed=0 and the failing task is one of roles/cluster_facts's checks;
  - every host the case breaks fails with a message that names the host (argument-spec messages are
    Ansible's own and name it in `fatal: [host]` only) and the fix (the case's fragments);
  - no host changed: each host's fingerprint (accounts, /etc, /home, /root, /opt, /usr/local, /var/lib,
    packages, unit files, running services, listening sockets) equals the one taken before.
Cases that break different hosts in different ways share one run where they fail in the same task.

    python -m pytest -p no:cacheprovider -v tests/integration/test_bad_input.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from conftest import (
    CONNECTION_PLAY,
    FOREIGN_PORT,
    HEAD,
    IPS,
    PREFLIGHT_PLAY,
    RECORDS,
    REPO,
    SHM_BYTES,
    SUDO_GROUP_USER,
    WINDOWS_HOST,
    WINDOWS_SSH,
    WORKER1,
    WORKER2,
    Hosts,
    Record,
    failures,
    normalized,
    origins,
    plays,
    recap_changed,
    role_tasks,
    shell_join,
)

# Ray's pinned ports as the roles default them (one place: roles/cluster_facts/defaults/main.yml).
DEFAULTS = yaml.safe_load((REPO / "roles/cluster_facts/defaults/main.yml").read_text())
DEFAULT_PORTS: dict[str, int] = DEFAULTS["bittrader_ports"]
# The containers see the machine's CPUs and memory.
HOST_CPUS = os.cpu_count() or 2
HOST_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
# The task files whose checks may reject bad input ("<unknown>": the role's argument spec).
CHECKS = ("roles/cluster_facts/tasks/validate.yml", "roles/cluster_facts/tasks/node_ip.yml",
          "roles/cluster_facts/tasks/preflight.yml", "playbooks/preflight.yml", "<unknown>")
# Groups with the stand-in Windows worker (not a container) next to the two Linux workers.
WITH_WINDOWS = {"ray_head": (HEAD,), "workers_linux": (WORKER1, WORKER2), "workers_macos": (),
                "workers_windows": (WINDOWS_HOST,)}


PYTHON_MISMATCH = "/usr/bin/python3 is Python 3.11.2, not the pinned 3.11.9"


def ports(**change: int) -> dict[str, int]:
    return {**DEFAULT_PORTS, **change}


@dataclass(frozen=True)
class Case:
    """A broken inventory or variable set, and the message fragments each broken host must fail with."""

    id: str
    expect: Mapping[str, Sequence[str]]
    extra_vars: Mapping[str, Any] = field(default_factory=dict)  # written to a file, passed as -e @FILE
    host_vars: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    groups: Mapping[str, Sequence[str]] | None = None  # None: head + two Linux workers
    args: Sequence[str] = ()
    # Where it is rejected: connection (playbooks/preflight.yml's first play, on the admin machine before any
    # fact gathering), validate (no host contacted but to gather facts) or preflight (after read-only reads).
    stage: str = "validate"
    names_host: bool = True
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # cached facts that differ (stand-ins)


CASES = [
    # --- the inventory's structure ---
    Case(
        "no-head",
        {WORKER1: ["exactly one host in the group", "it has 0", "Move the machine that coordinates",
                   WORKER2, "hosts.yml"]},
        groups={"ray_head": (), "workers_linux": (WORKER1, WORKER2), "workers_macos": (), "workers_windows": ()},
    ),
    Case(
        "two-heads",
        {HEAD: ["exactly one host in the group", f"it has 2 ({HEAD}, {WORKER1})", "Keep one of them there"]},
        groups={"ray_head": (HEAD, WORKER1), "workers_linux": (WORKER2,), "workers_macos": (), "workers_windows": ()},
    ),
    Case(
        "two-os-groups+wrong-os-group",
        {
            WORKER1: [f"{WORKER1} is in workers_linux and workers_macos", "exactly one of"],
            WORKER2: [f"{WORKER2} is in workers_macos but runs Linux", "move it to workers_linux"],
        },
        groups={"ray_head": (HEAD,), "workers_linux": (WORKER1,), "workers_macos": (WORKER1, WORKER2),
                "workers_windows": ()},
    ),
    Case(
        "no-os-group+bad-user-name",
        {
            WORKER2: [f"{WORKER2} is in none of the groups", "put it in the group of its operating system"],
            WORKER1: ["bittrader_user bit trader is not a valid Linux user name", "keep the default bittrader"],
        },
        groups={"ray_head": (HEAD,), "workers_linux": (WORKER1,), "workers_macos": (), "workers_windows": ()},
        host_vars={WORKER1: {"bittrader_user": "bit trader"}, WORKER2: {}},
    ),
    # --- the network and the addresses ---
    Case(
        "unknown-network-mode",
        {HEAD: ["bittrader_network_mode must be one of: tailscale, lan, got: mesh"]},
        extra_vars={"bittrader_network_mode": "mesh"},
        names_host=False,
    ),
    Case(
        "lan-without-cidr+malformed-cidr+public-cidr",
        {
            HEAD: ["bittrader_network_mode is lan but bittrader_cluster_cidr is empty", "192.168.1.0/24"],
            WORKER1: ["bittrader_cluster_cidr 10.89.88.0/33 is not an address range", "write NETWORK/PREFIX"],
            WORKER2: ["bittrader_cluster_cidr 0.0.0.0/0 includes public internet addresses", "private range"],
        },
        host_vars={
            HEAD: {"bittrader_cluster_cidr": ""},
            WORKER1: {"bittrader_cluster_cidr": "10.89.88.0/33"},
            WORKER2: {"bittrader_cluster_cidr": "0.0.0.0/0"},
        },
    ),
    Case(
        "node-ip-outside-cidr",
        {WORKER1: ["would advertise 10.89.99.11, which is not an address in 10.89.88.0/24", "set bittrader_node_ip"]},
        host_vars={WORKER1: {"bittrader_node_ip": "10.89.99.11"}},
    ),
    Case(
        "loopback-node-ip+node-ip-not-an-ip+object-store-above-memory",
        {
            HEAD: ["bittrader_node_ip 127.0.0.1 is a loopback address", "set this host's LAN IP"],
            WORKER1: ["bittrader_node_ip bi-worker1.lan is not an IP address", "set this host's LAN IP"],
            WORKER2: ["bittrader_object_store_memory is", "of memory", "Ray's default is 30%"],
        },
        host_vars={
            HEAD: {"bittrader_node_ip": "127.0.0.1"},
            WORKER1: {"bittrader_node_ip": "bi-worker1.lan"},
            WORKER2: {"bittrader_object_store_memory": HOST_MEMORY * 2},
        },
    ),
    Case(
        # Adding a worker (--limit) whose address is already a worker's that is not in this run.
        "duplicate-node-ips-limit-new-worker",
        {WORKER2: [f"{WORKER2} advertises {IPS[WORKER1]}, the address of {WORKER1} too",
                   "fix ansible_host or bittrader_node_ip of one of them"]},
        host_vars={WORKER2: {"bittrader_node_ip": IPS[WORKER1]}},
        args=("--limit", WORKER2),
        stage="preflight",
    ),
    Case(
        "tailscale-mode-without-tailscale",
        {HEAD: [f"would advertise {IPS[HEAD]}, which is not an address in 100.64.0.0/10 (tailscale mode)",
                "Tailscale IP (tailscale ip -4)"]},
        extra_vars={"bittrader_network_mode": "tailscale", "bittrader_cluster_cidr": "", "bittrader_node_ip": ""},
        stage="preflight",  # node_ip.yml asks each host for its Tailscale address (read-only)
    ),
    # --- the resources asked of each host ---
    Case(
        "num-cpus-negative+non-integer+object-store-not-bytes",
        {
            WORKER1: ["bittrader_num_cpus must be empty (all CPUs) or a whole number", "-1"],
            WORKER2: ["bittrader_num_cpus must be empty (all CPUs) or a whole number", "1.5"],
            HEAD: ["bittrader_object_store_memory must be empty", "1GB", "268435456"],
        },
        host_vars={
            WORKER1: {"bittrader_num_cpus": -1},
            WORKER2: {"bittrader_num_cpus": "1.5"},
            HEAD: {"bittrader_object_store_memory": "1GB"},
        },
    ),
    Case(
        "num-cpus-zero-on-worker+more-than-the-host+object-store-below-minimum",
        {
            WORKER1: ["bittrader_num_cpus is 0 on a worker", "0 is for the head only"],
            WORKER2: [f"bittrader_num_cpus is {HOST_CPUS + 1} but this host has {HOST_CPUS} logical CPUs",
                      f"set at most {HOST_CPUS}"],
            HEAD: ["bittrader_object_store_memory is 1048576 bytes, below Ray's minimum", "75 MiB"],
        },
        host_vars={
            WORKER1: {"bittrader_num_cpus": 0},
            WORKER2: {"bittrader_num_cpus": HOST_CPUS + 1},
            HEAD: {"bittrader_object_store_memory": 2**20},
        },
    ),
    # --- the ports ---
    Case(
        "duplicate-ports+port-out-of-range+port-inside-worker-range",
        {
            HEAD: ["bittrader_ports.dashboard and bittrader_ports.gcs are both 6379", "give each its own port"],
            WORKER1: ["bittrader_ports.gcs=70000 is outside 1024-65535", "bittrader_ports differ from the head"],
            WORKER2: ["bittrader_ports.dashboard=10100 lies inside the worker port range 10002-10299",
                      "move it out of the range"],
        },
        host_vars={
            HEAD: {"bittrader_ports": ports(dashboard=6379)},
            WORKER1: {"bittrader_ports": ports(gcs=70000)},
            WORKER2: {"bittrader_ports": ports(dashboard=10100)},
        },
    ),
    Case(
        "worker-range-too-small+ray-pin-differs-from-head",
        {
            WORKER2: ["the worker port range 10002-10010 is too small", "raise bittrader_ports.max_worker to 10017"],
            WORKER1: ["bittrader_ray_version is 2.59.0 here but 2.60.0 on the head bi-head",
                      "set it once for the whole cluster"],
        },
        host_vars={
            WORKER1: {"bittrader_ray_version": "2.59.0"},
            WORKER2: {"bittrader_ports": ports(max_worker=10010)},
        },
    ),
    # --- the version pins against what each host can run ---
    Case(
        "ray-version-that-does-not-exist+without-token-auth+python-without-wheel",
        {
            HEAD: ["bittrader_ray_version 2.99.0 is not a Ray release these roles know", "pin a published release"],
            WORKER1: ["bittrader_ray_version 2.51.2 has no token authentication", "pin Ray 2.52.0 or newer"],
            WORKER2: ["Ray 2.60.0 has no wheel for Python 3.15.0", "pin a pair with a wheel for every node"],
        },
        host_vars={
            HEAD: {"bittrader_ray_version": "2.99.0"},
            WORKER1: {"bittrader_ray_version": "2.51.2"},
            WORKER2: {"bittrader_python_version": "3.15.0", "bittrader_python_source": "uv"},
        },
    ),
    # --- accounts, packages, the throttle ---
    Case(
        "user-root+unpinned-and-conflicting-pip-packages",
        {
            HEAD: ["bittrader_user must be an ordinary account, never root",
                   "bittrader_extra_pip_packages entry pandas is not pinned",
                   "numpy==2.3.4 contradicts bittrader_numpy_version"],
        },
        extra_vars={"bittrader_user": "root", "bittrader_extra_pip_packages": ["pandas", "numpy==2.3.4"]},
    ),
    Case(
        "bad-throttle-policy",
        {
            WORKER1: ["bittrader_throttle_battery_policy must be", "sometimes", "bittrader_throttle_enabled: false"],
            WORKER2: ["bittrader_throttle_cpus_active (2) must not exceed bittrader_num_cpus (1)"],
        },
        host_vars={
            WORKER1: {"bittrader_throttle_enabled": True, "bittrader_throttle_battery_policy": "sometimes"},
            WORKER2: {"bittrader_throttle_enabled": True, "bittrader_throttle_cpus_active": 2},
        },
    ),
    # --- what only the hosts can tell (read-only preflight) ---
    Case(
        # All four are found by the one read of each host; every host reports all of its problems.
        "system-python-differs-from-pin+port-held-by-another-program+system-account+object-store-above-shm",
        {
            HEAD: [PYTHON_MISMATCH, "bittrader_python_source: uv",
                   f"port {FOREIGN_PORT} (bittrader_ports.gcs) is already in use by another program (user root)",
                   "set bittrader_ports.gcs to a free port"],
            WORKER1: [PYTHON_MISMATCH, "bittrader_user daemon is a system account here (uid 1)", "choose a new name"],
            WORKER2: [PYTHON_MISMATCH, f"/dev/shm here holds only {SHM_BYTES} bytes", f"set it to at most {SHM_BYTES}"],
        },
        extra_vars={"bittrader_python_version": "3.11.9", "bittrader_ports": ports(gcs=FOREIGN_PORT)},
        host_vars={WORKER1: {"bittrader_user": "daemon"}, WORKER2: {"bittrader_object_store_memory": 2 * SHM_BYTES}},
        stage="preflight",
    ),
    # --- issue 18, class 1: path-like settings (checked before fact gathering, and again in validate) ---
    Case(
        "dir-name-climbs-out-with-a-space+code-folder-runs-a-command+head-dir-is-dot-dot",
        {
            WORKER1: ["bittrader_worker_dir_name ../../opt/bt x must be one folder name", "keep the default"],
            WORKER2: ["bittrader_code_folder ~/code/$(touch /tmp/pwned) holds", "$", "cannot take safely"],
            HEAD: ["bittrader_head_dir_name .. must be one folder name"],
        },
        host_vars={
            WORKER1: {"bittrader_worker_dir_name": "../../opt/bt x"},
            WORKER2: {"bittrader_code_mode": "folder", "bittrader_code_folder": "~/code/$(touch /tmp/pwned)"},
            HEAD: {"bittrader_head_dir_name": ".."},
        },
        stage="connection",
    ),
    Case(
        "code-subdir-escapes+python-not-absolute+unit-file-line-injection",
        {
            WORKER1: ["bittrader_code_subdir ../../etc climbs out of its folder with .."],
            WORKER2: ["bittrader_system_python python3 must be an absolute path"],
            HEAD: ["bittrader_throttle_activity_file", "holds a control character", "write the path on one line"],
        },
        host_vars={
            WORKER1: {"bittrader_code_mode": "folder", "bittrader_code_folder": "/srv/code",
                      "bittrader_code_subdir": "../../etc"},
            WORKER2: {"bittrader_system_python": "python3"},
            HEAD: {"bittrader_throttle_activity_file": "/tmp/a\nExecStartPre=/bin/sh -c id"},
        },
        stage="connection",
    ),
    Case(
        "windows-code-folder-with-a-space+task-folder-not-a-folder",
        {WINDOWS_HOST: ["bittrader_code_folder C:\\Users\\John Smith\\code has a space",
                        "Ray cannot take on Windows",
                        "worker_windows_task_path Bittrader must be a Task Scheduler folder"]},
        groups=WITH_WINDOWS,
        host_vars={WINDOWS_HOST: {**WINDOWS_SSH, "bittrader_code_mode": "folder",
                                  "bittrader_code_folder": "C:\\Users\\John Smith\\code",
                                  "worker_windows_task_path": "Bittrader"}},
        stage="connection",
    ),
    # --- class 2: a string where a list is expected, lists and dicts with wrong elements ---
    Case(
        "admin-sources-one-string+pip-packages-one-string+worker-groups-one-string",
        {
            HEAD: ["bittrader_firewall_admin_sources must be a list, got str 10.89.88.1", "[10.89.88.1]"],
            WORKER1: ["bittrader_extra_pip_packages must be a list, got str pandas==2.3.3"],
            WORKER2: ["bittrader_worker_groups must be a list, got str workers_linux"],
        },
        host_vars={
            HEAD: {"bittrader_firewall_admin_sources": "10.89.88.1"},
            WORKER1: {"bittrader_extra_pip_packages": "pandas==2.3.3"},
            WORKER2: {"bittrader_worker_groups": "workers_linux"},
        },
        stage="connection",
    ),
    Case(
        "firewall-off-as-a-word+port-as-a-list+admin-source-that-is-a-rule",
        {
            WORKER1: ["bittrader_firewall_enabled must be true or false, got str disabled"],
            WORKER2: ["bittrader_ports.gcs must be a port number, got list [6379]"],
            HEAD: ["bittrader_firewall_admin_sources holds 0.0.0.0/0 } accept; #",
                   "which is not an IP address or range"],
        },
        host_vars={
            WORKER1: {"bittrader_firewall_enabled": "disabled"},
            WORKER2: {"bittrader_ports": {**DEFAULT_PORTS, "gcs": [6379]}},
            HEAD: {"bittrader_firewall_admin_sources": ["0.0.0.0/0 } accept; #"]},
        },
        stage="connection",
    ),
    # --- class 3: the Ray account has passwordless sudo (read on each host, as root) ---
    Case(
        # One preflight run (the slow kind) for both sudo rules and class 6's free disk space.
        "ray-account-is-the-passwordless-sudo-login+group-nopasswd-rule+too-little-free-disk",
        {
            HEAD: ["bittrader_user admin has passwordless sudo here", "NOPASSWD: ALL", "each job could become root",
                   "separate admin login"],
            WORKER2: [f"bittrader_user {SUDO_GROUP_USER} has passwordless sudo here",
                      "NOPASSWD: /usr/bin/systemctl"],
            WORKER1: ["MiB free, less than bittrader_min_free_disk_mb (1000000000 MiB)", "free some space"],
        },
        host_vars={HEAD: {"bittrader_user": "admin", "bittrader_create_user": False},
                   WORKER2: {"bittrader_user": SUDO_GROUP_USER, "bittrader_create_user": False},
                   WORKER1: {"bittrader_min_free_disk_mb": 10**9}},
        stage="preflight",
    ),
    Case(
        "ray-account-admin-on-every-host-limit-one-worker",
        {WORKER1: ["bittrader_user admin has passwordless sudo here", "--ask-become-pass"]},
        extra_vars={"bittrader_user": "admin"},
        args=("--limit", WORKER1),
        stage="preflight",
    ),
    # --- class 4: Windows connection settings, checked before anything reaches the host ---
    Case(
        "windows-over-ssh-without-powershell+linux-host-with-powershell-shell",
        {
            WINDOWS_HOST: ["ansible_shell_type is not set for a Windows worker reached over SSH",
                           "set ansible_shell_type: powershell"],
            WORKER1: ["ansible_shell_type is powershell for a Linux or macOS host"],
        },
        groups=WITH_WINDOWS,
        host_vars={WINDOWS_HOST: {**WINDOWS_SSH, "ansible_shell_type": None},
                   WORKER1: {"ansible_shell_type": "powershell"}},
        stage="connection",
    ),
    Case(
        "windows-local-connection+windows-become-sudo+linux-over-winrm",
        {
            WINDOWS_HOST: ["ansible_connection is local, which cannot reach a Windows worker",
                           "Windows knows only runas"],
            WORKER2: ["ansible_connection is winrm for a Linux or macOS host"],
        },
        groups=WITH_WINDOWS,
        host_vars={WINDOWS_HOST: {**WINDOWS_SSH, "ansible_connection": "local", "ansible_become_method": "sudo"},
                   WORKER2: {"ansible_connection": "winrm"}},
        stage="connection",
    ),
    # --- class 5: facts the roles compute, set from the inventory ---
    Case(
        # The case: a --limit worker run would write the head's forged token on the worker.
        "forged-head-token-limit-new-worker",
        {WORKER2: [f"{HEAD}s inventory: head_cluster_token is a fact that the roles compute",
                   "remove it from the inventory"]},
        host_vars={HEAD: {"head_cluster_token": "forged"}},
        args=("--limit", WORKER2),
        stage="connection",
    ),
    Case(
        "marker-that-skips-the-checks+private-variable+token-path",
        {
            WORKER1: ["bittrader_facts_resolved is a fact that the roles compute"],
            WORKER2: ["bittrader__problems is a fact that the roles compute"],
            HEAD: ["bittrader_token_file is a fact that the roles compute"],
        },
        host_vars={
            WORKER1: {"bittrader_facts_resolved": True},
            WORKER2: {"bittrader__problems": []},
            HEAD: {"bittrader_token_file": "/etc/shadow"},
        },
        stage="connection",
    ),
    # --- class 6: resources and OS releases ---
    Case(
        "too-little-memory+too-few-cpus+old-debian",
        {
            HEAD: [f"less than bittrader_min_memory_mb ({HOST_MEMORY // 2**20 * 2} MiB)", "leave it out"],
            WORKER1: [f"this host has {HOST_CPUS} logical CPU(s), fewer than bittrader_min_cpus ({HOST_CPUS + 1})"],
            WORKER2: ["Debian 10.13 is older than the supported Debian 11", "docs/platforms.md"],
        },
        host_vars={HEAD: {"bittrader_min_memory_mb": HOST_MEMORY // 2**20 * 2},
                   WORKER1: {"bittrader_min_cpus": HOST_CPUS + 1}},
        facts={WORKER2: {"distribution_version": "10.13", "distribution_major_version": "10"}},
    ),
    Case(
        "unknown-distribution+windows-server",
        {
            WORKER1: ["Slackware 15.0 is not a supported Linux distribution"],
            WINDOWS_HOST: ["Microsoft Windows Server 2019 Datacenter is not Windows 10, 11 or Server 2022"],
        },
        groups=WITH_WINDOWS,
        host_vars={WINDOWS_HOST: dict(WINDOWS_SSH)},
        facts={WORKER1: {"distribution": "Slackware", "distribution_version": "15.0"},
               WINDOWS_HOST: {"system": "Win32NT", "os_family": "Windows", "architecture": "64-bit",
                              "distribution": "Microsoft Windows Server 2019 Datacenter",
                              "distribution_version": "10.0.20348.0", "powershell_version": 5}},
    ),
    Case(
        "limit-new-worker-head-without-token",
        {WORKER2: ["the head bi-head has no auth token yet", "site.yml --limit bi-head",
                   "then run this --limit again"]},
        args=("--limit", WORKER2),
        stage="preflight",
    ),
]


def run_case(hosts: Hosts, case: Case) -> tuple[float, Any]:
    started = time.monotonic()
    inventory = hosts.base_inventory
    if case.groups is not None or case.host_vars:
        inventory = hosts.write_inventory(hosts.scratch(case.id + "-inv"), case.groups, case.host_vars)
    args = list(case.args)
    if case.extra_vars:
        vars_file = hosts.scratch(case.id + "-vars") / "bad.yml"
        vars_file.write_text("---\n" + yaml.safe_dump(dict(case.extra_vars)))
        args += ["-e", f"@{vars_file}"]
    facts = hosts.facts_with(hosts.scratch(case.id + "-facts"), case.facts) if case.facts else None
    run = hosts.playbook(inventory, "site.yml", *args, fact_cache=facts)
    after = hosts.snapshot()
    return time.monotonic() - started, (run, after)


def test_the_fingerprint_sees_what_a_role_would_change(bad_input_hosts: Hosts) -> None:
    """The comparison can fail: an account, a unit file and a folder in /opt, made by hand, are seen on
    the host where they were made (then removed, and the hosts' state taken as the new baseline)."""
    hosts = bad_input_hosts
    started = time.monotonic()
    hosts.exec(WORKER1, "useradd --no-create-home bi-probe")
    hosts.exec(WORKER2, "printf '[Unit]\\n' > /etc/systemd/system/bi-probe.service")
    hosts.exec(HEAD, "mkdir /opt/bi-probe")
    changed = hosts.changes(hosts.baseline, hosts.snapshot())
    hosts.exec(WORKER1, "userdel bi-probe")
    hosts.exec(WORKER2, "rm /etc/systemd/system/bi-probe.service")
    hosts.exec(HEAD, "rmdir /opt/bi-probe")
    hosts.baseline = hosts.snapshot()
    RECORDS.append(Record("self-test: the fingerprint sees changes", "-", time.monotonic() - started, 0.0))
    assert sorted(changed) == sorted(IPS), changed
    assert "bi-probe:x:" in changed[WORKER1]
    assert "/etc/systemd/system/bi-probe.service" in changed[WORKER2]
    assert "/opt/bi-probe" in changed[HEAD]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_rejected_before_any_host_changes(bad_input_hosts: Hosts, case: Case) -> None:
    hosts = bad_input_hosts
    seconds, (run, after) = run_case(hosts, case)
    found = failures(run.output)
    record = Record(case.id, case.stage, seconds, run.seconds)
    record.messages = [f"{f.host}: {f.message}" for f in found if f.host in case.expect] or [
        f"{f.host}: {f.message}" for f in found
    ][:1]
    RECORDS.append(record)
    context = f"{shell_join(run.argv)}\n--- output (end) ---\n{run.output[-5000:]}"

    changed = hosts.changes(hosts.baseline, after)
    if changed:
        hosts.baseline = after  # so that the next case is compared with what it found
    assert not changed, f"{case.id} changed {sorted(changed)}:\n" + "\n".join(changed.values())

    assert run.rc != 0, f"{case.id} was accepted:\n{context}"
    expected_plays = [CONNECTION_PLAY] if case.stage == "connection" else [CONNECTION_PLAY, PREFLIGHT_PLAY]
    assert plays(run.output) == expected_plays, f"a play after preflight started:\n{context}"
    assert role_tasks(run.output) in (["cluster_facts"], []), f"roles ran: {role_tasks(run.output)}\n{context}"
    assert set(recap_changed(run.output).values()) <= {0}, f"a task reported a change:\n{context}"
    assert found, f"no failed task in the output:\n{context}"
    for origin in origins(run.output):
        assert any(check in origin for check in CHECKS), (
            f"a task of {origin} failed, not a validation/preflight check:\n{context}"
        )
    by_host = {f.host: f.message for f in found}
    for host, fragments in case.expect.items():
        assert host in by_host, f"{host} did not fail; failures: {by_host}\n{context}"
        message = normalized(by_host[host])
        if case.names_host:
            assert host in message, f"the message does not name {host}: {message}"
        missing = [frag for frag in fragments if normalized(frag) not in message]
        assert not missing, f"{host}'s message lacks {missing}:\n{message}"
