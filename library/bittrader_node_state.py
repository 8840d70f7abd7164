#!/usr/bin/python
"""Ansible module: a node's provisioned state in one call - check it for drift, or record it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bittrader_node_state
short_description: Check a node's recorded provisioned state for drift in one call, or record it
description:
  - The node roles (head, worker_linux, worker_macos) provision a node in about a hundred tasks. When the
    node is already as the inventory wants it, a re-run needs none of them: this module reads the whole
    state in one call and says whether the provisioning tasks can be skipped.
  - I(state=checked) reads the record (a JSON local fact, C(/etc/ansible/facts.d/bittrader_node.fact)) and
    compares it with the node as it is now and with what this run wants. The node is C(current) only when
    the record's I(inputs) (digests of the run's inputs - variables, role files, node agent version, the
    cluster's addresses, the head's token checksum - computed on the admin machine) are the ones given, every
    recorded file and folder still has its checksum, owner and mode (or is still absent), every unit in
    I(services) is enabled and running, the account exists and is not root, and the virtual environment
    still has the pinned Python and packages (I(venv)). Anything else is listed in C(drift), and the roles
    then run every task as on a first run.
  - I(state=recorded) writes the record after the roles ran: the inputs' digests and each of I(files),
    I(folders), I(services) and I(probes) as they are now. It is changed only when the record's content changes.
version_added: "1.0.0"
author: Bittrader
options:
  state:
    description: C(checked) reads and compares; C(recorded) writes the record.
    type: str
    choices: [checked, recorded]
    default: checked
  path:
    description: The record's path, a local fact file that fact gathering returns as C(ansible_local).
    type: path
    default: /etc/ansible/facts.d/bittrader_node.fact
  inputs:
    description:
      - This run's inputs for the node, each as a digest (name to hex digest; the roles make them with the
        C(bittrader_input_digests) filter, so no value reaches the node). The node is not current when
        one was added, removed or has another digest; C(drift) names them.
    type: dict
    required: true
  files:
    description:
      - With C(recorded), the files the roles manage, each recorded with its SHA-1, owner, group and mode,
        or as absent. C(checked) reads the list from the record.
    type: list
    elements: path
    default: []
  folders:
    description: With C(recorded), the folders the roles manage (owner, group, mode, or absent).
    type: list
    elements: path
    default: []
  services:
    description:
      - With C(recorded), the units that must be enabled and running, asked with I(service_manager).
      - C(systemd) units by name (C(bittrader-ray.service)); C(launchd) jobs as C(DOMAIN/LABEL).
    type: list
    elements: str
    default: []
  probes:
    description:
      - With C(recorded), commands whose output is state that no file holds (a firewall's live rules):
        the SHA-256 of each one's output is recorded, and C(checked) runs them again and compares.
    type: list
    elements: list
    default: []
  from_record:
    description:
      - With C(recorded), take the lists of I(files), I(folders), I(services) and I(probes) from the record
        already there (read again as they are now), and record the new I(inputs) with them: for a refresh,
        which changes none of those lists. Without a record there, the lists given are used.
    type: bool
    default: false
  refreshable:
    description:
      - With C(checked), inputs whose change alone does not need the node provisioned again, only the part
        of it that they feed (the head's token on a worker: the token file and a restart of Ray). When
        they are all that changed, every other check is still made and C(refresh) names them; the units
        need then only be enabled, not running (the refresh restarts Ray, whose unit may be restarting
        meanwhile, as a worker's does once its head has a new token).
    type: list
    elements: str
    default: []
  service_manager:
    description: How I(services) are asked. C(none) checks no unit.
    type: str
    choices: [systemd, launchd, none]
    default: systemd
  service_command:
    description: The service manager's program (systemctl or launchctl); found on the PATH when not given.
    type: path
  user:
    description: The account Ray runs as; it must exist and must not be root (uid 0).
    type: str
  venv:
    description:
      - The virtual environment's Python, the pinned Python release and requirements, and the program that
        reads them (the role's C(venv_state.py), run with C(-B) so that nothing is written).
    type: dict
    suboptions:
      python:
        description: The venv's Python.
        type: path
        required: true
      python_version:
        description: The Python release the cluster pins.
        type: str
        required: true
      requirements:
        description: The pinned requirements (C(name[extras]==version)).
        type: list
        elements: str
        required: true
      script:
        description: The source of the program that prints the venv's state as JSON.
        type: str
        required: true
attributes:
  check_mode:
    support: full
    details: C(checked) reads only. C(recorded) says whether the record would change, and writes nothing.
  diff_mode:
    support: none
notes:
  - Run it as root (C(become)) so that it can read every managed file.
  - The record holds checksums, never a file's content, and digests, never an input's value.
"""

EXAMPLES = r"""
- name: Check the node against its record
  bittrader_node_state:
    inputs: "{{ {'ray': bittrader_ray_version, 'cpus': bittrader_num_cpus} | bittrader_input_digests }}"
    user: bittrader
  become: true
  register: node_state

- name: Provision the node only when it drifted
  ansible.builtin.include_tasks: provision.yml
  when: not node_state.current

- name: Record the node after provisioning it
  bittrader_node_state:
    state: recorded
    inputs: "{{ {'ray': bittrader_ray_version, 'cpus': bittrader_num_cpus} | bittrader_input_digests }}"
    files: [/home/bittrader/.bittrader_worker/node.json, /etc/systemd/system/bittrader-ray-worker.service]
    folders: [/home/bittrader/.bittrader_worker]
    services: [bittrader-ray-worker.service]
  become: true
"""

RETURN = r"""
current:
  description: Whether the node matches its record and this run's inputs (C(checked)); C(recorded) returns true.
  returned: always
  type: bool
drift:
  description: Why the node is not current, one line a reason (empty when it is).
  returned: always
  type: list
  elements: str
  sample: ["no record yet", "/etc/systemd/system/bittrader-ray.service: content changed", "bittrader-ray: not running"]
refresh:
  description:
    - The I(refreshable) inputs that changed, when nothing else did (the node matches its record otherwise);
      empty in every other case. C(current) is then false and C(drift) names them.
  returned: always
  type: list
  elements: str
  sample: ["(head token)"]
inputs:
  description: The inputs' digests given (C(state_record.yml) records them after a run that provisioned).
  returned: always
  type: dict
files:
  description: Each managed file as it is now - its SHA-1, owner uid and mode, or null when absent.
  returned: always
  type: dict
  sample: {/home/bittrader/.bittrader_worker/auth_token: {sha1: 3f2a..., uid: 1001, mode: "0600"}}
"""

import hashlib
import json
import os
import pwd
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

RECORD_SCHEMA = "bittrader-node-state/1"

FileState = dict[str, Any] | None


def path_state(path: str, with_checksum: bool, sha1: Any = None) -> FileState:
    """A path's owner, group and mode (and a file's SHA-1), or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    out: dict[str, Any] = {"uid": st.st_uid, "gid": st.st_gid, "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
    if with_checksum:
        out["sha1"] = sha1(path) if stat.S_ISREG(st.st_mode) else "not a file"
    return out


def compare(kind: str, recorded: dict[str, FileState], now: dict[str, FileState]) -> list[str]:
    """Lines that say how the managed paths differ from their record."""
    lines: list[str] = []
    for path in sorted(set(recorded) | set(now)):
        if path not in recorded:
            lines.append(f"{path}: not in the record")
            continue
        was, is_ = recorded[path], now.get(path)
        if was is None and is_ is None:
            continue
        if was is None:
            lines.append(f"{path}: {kind} appeared")
        elif is_ is None:
            lines.append(f"{path}: {kind} missing")
        else:
            for key, what in (("sha1", "content"), ("uid", "owner"), ("gid", "group"), ("mode", "mode")):
                if was.get(key) != is_.get(key):
                    lines.append(f"{path}: {what} changed")
    return lines


def changed_inputs(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The names of the inputs that were added, removed or have another digest, sorted."""
    return sorted(n for n in set(recorded) | set(now) if recorded.get(n) != now.get(n))


def input_changes(names: list[str], shown: int = 8) -> list[str]:
    """One line naming changed inputs (changed_inputs, or a part of them; at most shown names)."""
    if not names:
        return []
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return [f"inputs changed: {', '.join(names[:shown])}{more}"]


def service_problems(
    manager: str, command: str | None, services: list[str], run: Any, active: bool = True
) -> list[str]:
    """Units that are not enabled and running (systemd; only enabled when not active), or launchd jobs that
    are not loaded."""
    if manager == "none" or not services:
        return []
    lines: list[str] = []
    if manager == "systemd":
        for verb, want in (("is-enabled", "enabled"), ("is-active", "active"))[: 2 if active else 1]:
            rc, out, err = run([command, verb, *services])
            answers = out.split()
            for i, unit in enumerate(services):
                got = answers[i] if i < len(answers) else (err.strip() or f"rc {rc}")
                if got != want:
                    lines.append(f"{unit}: {got} (wants {want})")
        return lines
    for job in services:  # launchd: DOMAIN/LABEL is loaded, and running when it keeps a process
        rc, out, _err = run([command, "print", job])
        if rc != 0:
            lines.append(f"{job}: not loaded")
        elif "state = running" not in out:
            lines.append(f"{job}: loaded but not running")
    return lines


def account_problems(user: str | None) -> list[str]:
    if not user:
        return []
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return [f"account {user}: missing"]
    return [f"account {user}: uid 0"] if entry.pw_uid == 0 else []


def venv_problems(venv: dict[str, Any] | None, run: Any) -> list[str]:
    """The venv's Python release and pins, read by its own Python (-B: no bytecode written)."""
    if not venv:
        return []
    if not os.path.exists(venv["python"]):
        return [f"{venv['python']}: missing"]
    rc, out, err = run([venv["python"], "-B", "-c", venv["script"], json.dumps(venv["requirements"])])
    if rc != 0:
        return [f"{venv['python']}: cannot read the venv ({(err or out).strip()[-200:]})"]
    try:
        found = json.loads(out)
    except ValueError:
        return [f"{venv['python']}: unreadable venv state"]
    lines = []
    if found.get("python") != venv["python_version"]:
        lines.append(f"venv Python {found.get('python')} (the pin is {venv['python_version']})")
    if not found.get("pinned"):
        lines.append("venv packages differ from the pins")
    return lines


def probe_digest(argv: list[str], run: Any) -> str:
    """SHA-256 of a command's exit code and output (a command that cannot run gives its error instead)."""
    try:
        rc, out, err = run([str(a) for a in argv])
    except OSError as exc:  # pragma: no cover - run_command reports, it does not raise
        rc, out, err = -1, "", str(exc)
    return hashlib.sha256(f"{rc}\0{out}\0{err}".encode()).hexdigest()


def read_record(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == RECORD_SCHEMA else None


def write_record(path: str, text: str) -> None:
    """Atomically, readable by root only (checksums of the token file are in it)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bittrader_node.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["checked", "recorded"], "default": "checked"},
            "path": {"type": "path", "default": "/etc/ansible/facts.d/bittrader_node.fact"},
            "inputs": {"type": "dict", "required": True},
            "files": {"type": "list", "elements": "path", "default": []},
            "folders": {"type": "list", "elements": "path", "default": []},
            "services": {"type": "list", "elements": "str", "default": []},
            "probes": {"type": "list", "elements": "list", "default": []},
            "from_record": {"type": "bool", "default": False},
            "refreshable": {"type": "list", "elements": "str", "default": []},
            "service_manager": {"type": "str", "choices": ["systemd", "launchd", "none"], "default": "systemd"},
            "service_command": {"type": "path"},
            "user": {"type": "str"},
            "venv": {
                "type": "dict",
                "options": {
                    "python": {"type": "path", "required": True},
                    "python_version": {"type": "str", "required": True},
                    "requirements": {"type": "list", "elements": "str", "required": True},
                    "script": {"type": "str", "required": True},
                },
            },
        },
        supports_check_mode=True,
    )
    p = module.params

    def run(argv: list[str]) -> tuple[int, str, str]:
        rc, out, err = module.run_command(argv, environ_update={"PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C"})
        return rc, out, err

    if p["state"] == "recorded":
        lists = {k: p[k] for k in ("files", "folders", "services", "probes")}
        earlier = read_record(p["path"]) if p["from_record"] else None
        if earlier is not None:
            lists = {
                "files": list(earlier.get("files") or {}),
                "folders": list(earlier.get("folders") or {}),
                "services": [str(s) for s in earlier.get("services") or []],
                "probes": [probe.get("argv") or [] for probe in earlier.get("probes") or []],
            }
        files: dict[str, FileState] = {f: path_state(f, True, module.sha1) for f in lists["files"]}
        record: dict[str, Any] | None = {
            "schema": RECORD_SCHEMA,
            "inputs": p["inputs"],
            "files": files,
            "folders": {f: path_state(f, False) for f in lists["folders"]},
            "services": lists["services"],
            "probes": [{"argv": [str(a) for a in argv], "sha1": probe_digest(argv, run)} for argv in lists["probes"]],
        }
        text = json.dumps(record, indent=1, sort_keys=True) + "\n"
        try:
            with open(p["path"], encoding="utf-8") as fh:
                changed = fh.read() != text
        except OSError:
            changed = True
        if changed and not module.check_mode:
            write_record(p["path"], text)
        module.exit_json(changed=changed, current=True, drift=[], refresh=[], files=files, inputs=p["inputs"])

    drift: list[str] = []
    files = {}
    refreshed: list[str] = []
    record = read_record(p["path"])
    if record is None:
        drift.append("no record yet")
    else:
        files = {f: path_state(f, True, module.sha1) for f in record.get("files") or {}}
        folders = {f: path_state(f, False) for f in record.get("folders") or {}}
        names = changed_inputs(record.get("inputs") or {}, p["inputs"])
        refreshed = [n for n in names if n in p["refreshable"]]
        drift += input_changes([n for n in names if n not in p["refreshable"]])
        drift += compare("file", record.get("files") or {}, files)
        drift += compare("folder", record.get("folders") or {}, folders)
    if not drift:  # the slower reads only when the cheap ones found nothing
        assert record is not None
        services = [str(s) for s in record.get("services") or []]
        command = p["service_command"]
        if p["service_manager"] != "none" and services and not command:
            command = module.get_bin_path("systemctl" if p["service_manager"] == "systemd" else "launchctl", True)
        drift += account_problems(p["user"])
        # A refresh restarts Ray, whose unit may well be restarting meanwhile (a worker refused by a head
        # that has a new token): then the units need only be enabled.
        drift += service_problems(p["service_manager"], command, services, run, active=not refreshed)
        for probe in record.get("probes") or []:
            if probe_digest(probe.get("argv") or [], run) != probe.get("sha1"):
                drift.append(f"{' '.join(probe.get('argv') or [])}: output changed")
        drift += venv_problems(p["venv"], run)
    # The refreshable inputs are drift too, but only alone do they make a refresh instead of a provisioning.
    refresh = [] if drift else refreshed
    drift += input_changes(refreshed)
    module.exit_json(changed=False, current=not drift, drift=drift, refresh=refresh, files=files,
                     inputs=p["inputs"])


if __name__ == "__main__":
    main()
