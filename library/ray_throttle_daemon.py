#!/usr/bin/python
"""Ansible module: install (or remove) the Bittrader CPU throttling daemon and its configuration."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ray_throttle_daemon
short_description: Configure the Bittrader smart CPU throttling daemon of a Ray worker
description:
  - Writes the JSON configuration of the throttling daemon to I(config_path), owned by I(user). The
    daemon itself is the C(bittrader-throttle) console script of the node agent (the
    C(bittrader_node_agent) wheel the ray_node role installs into I(venv)); with I(state=present) the
    module fails when that script is missing (outside check mode).
  - The service that runs it is not managed here; its command is returned in C(command) and, on
    Linux, the sudoers rule the daemon needs in C(sudoers).
  - The policy is validated with the daemon's own rules first (the agent's
    C(bittrader_node_agent.throttle.config), also a module_utils file); an invalid policy fails with
    every problem named and nothing on the host is changed.
  - Reports C(changed) only when the configuration's content, mode or owner changes.
  - Windows hosts template the same configuration (roles/worker_windows); this module runs on Linux
    and macOS.
version_added: "1.0.0"
author: Bittrader
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Nothing is written; C(changed) and the diff say what would change.
  diff_mode:
    support: full
    details: The configuration's text before and after, and its mode and owner.
  platform:
    support: full
    platforms: posix
options:
  state:
    description: >-
      C(present) writes the configuration; C(absent) removes it (the console script belongs to the
      node agent's wheel and stays).
    type: str
    choices: [present, absent]
    default: present
  venv:
    description: The node's Ray virtual environment, with the node agent's C(VENV/bin/bittrader-throttle).
    type: path
    required: true
  user:
    description: Owner of the written files, and the account named in the returned sudoers rule.
    type: str
  group:
    description: Group of the written files.
    type: str
  config_path:
    description: The daemon's JSON configuration. Default C(DIR/throttle.json), DIR being the folder of I(venv).
    type: path
  log_file:
    description: The daemon's log (size-rotated). Default C(DIR/logs/throttle.log).
    type: path
  status_file:
    description: One-line JSON status, rewritten atomically. Default C(DIR/run/throttle_status.json).
    type: path
  num_cpus_file:
    description: The CPU count the node supervisor gives C(ray start --num-cpus). Default C(DIR/run/num_cpus).
    type: path
  platform:
    description: The host's platform. Default the platform the module runs on.
    type: str
    choices: [linux, darwin, windows]
  policy:
    description: When Ray gets how many CPUs. Unset keys take the daemon's defaults.
    type: dict
    default: {}
    suboptions:
      cpus_active:
        description: CPUs Ray keeps while the machine is used (default 2).
        type: int
      cpus_idle:
        description: CPUs Ray gets when the machine is idle. Default every logical CPU of the host.
        type: int
      idle_threshold_s:
        description: Seconds without input after which the machine is idle (default 300).
        type: float
      battery_policy:
        description: On battery, C(pause) (0 CPUs, default), C(ignore), or a CPU count Ray may use at most.
        type: raw
      battery_min_percent:
        description: Below this battery percentage Ray is paused whatever I(battery_policy) says.
        type: float
      hysteresis_s:
        description: >-
          Seconds that must pass since the last change before Ray gets more CPUs (default 60).
          Fewer CPUs (the owner is back, the laptop was unplugged) are applied at once.
        type: float
      load_guard:
        description: Percent CPU load of everything but Ray at which the machine counts as used.
        type: float
      poll_interval_s:
        description: Seconds between evaluations, at most 5 (default 2).
        type: float
      activity_source:
        description: How input is detected. C(file) is for tests (reads I(activity_file)).
        type: str
        choices: [auto, logind, headless, ioreg, windows, file]
      activity_file:
        description: The file read by the C(file) activity source (C(active), C(idle) or idle seconds).
        type: path
      live_resize:
        description: Change the raylet's CPU total in place through the GCS (default true).
        type: bool
      drain:
        description: Drain the node when it still has more CPUs than wanted (default true).
        type: bool
      drain_deadline_s:
        description: Deadline given to C(ray drain-node) (default 600).
        type: int
      restart_after_drain:
        description: >-
          End C(ray start --block) once the drained raylet has left, so the supervisor restarts it
          with the new count (default true).
        type: bool
  mechanism:
    description: How the operating-system limit is applied. Unset keys take the daemon's defaults.
    type: dict
    default: {}
    suboptions:
      kind:
        description: C(auto) picks C(systemd) on Linux, C(taskpolicy) on macOS, C(windows) on Windows.
        type: str
        choices: [auto, systemd, taskpolicy, windows, none]
      pause_quota_percent:
        description: CPUQuota while paused (never 0, so nothing is killed; default 5).
        type: int
      sudo:
        description: Path of sudo (default /usr/bin/sudo).
        type: path
      systemctl:
        description: Path of systemctl, exactly as in the sudoers rule (default /usr/bin/systemctl).
        type: path
      taskpolicy:
        description: Path of taskpolicy on macOS (default /usr/sbin/taskpolicy).
        type: path
      process_user:
        description: Whose Ray processes are limited on macOS and Windows. Default the daemon's user.
        type: str
  ray:
    description: How the daemon reaches Ray.
    type: dict
    default: {}
    suboptions:
      head_address:
        description: The head's GCS address, C(HOST:PORT). Required with live_resize or drain.
        type: str
      node_ip:
        description: The address this node advertises to Ray. Required with live_resize or drain.
        type: str
      token_path:
        description: The cluster's auth token file, given to Ray as C(RAY_AUTH_TOKEN_PATH); never read.
        type: path
      unit:
        description: Ray's systemd unit on Linux (default bittrader-ray-worker.service).
        type: str
      ray_bin:
        description: The C(ray) CLI. Default C(VENV/bin/ray).
        type: path
      python_bin:
        description: The venv's Python for Ray calls. Default C(VENV/bin/python).
        type: path
      env:
        description: Extra environment of the Ray calls (no secrets; never C(RAY_AUTH_TOKEN)).
        type: dict
requirements:
  - The node agent's source as a module_utils folder (C(module_utils = module_utils:node_agent/src) in ansible.cfg).
  - The node agent installed in I(venv) (psutil with it) for the daemon itself (not for this module).
"""

EXAMPLES = r"""
- name: Install the throttle of a laptop worker
  ray_throttle_daemon:
    venv: "{{ bittrader_venv_dir }}"
    user: "{{ bittrader_user }}"
    config_path: "{{ bittrader_base_dir }}/throttle.json"
    log_file: "{{ bittrader_log_dir }}/throttle.log"
    status_file: "{{ bittrader_run_dir }}/throttle_status.json"
    num_cpus_file: "{{ bittrader_run_dir }}/num_cpus"
    policy:
      cpus_active: 2
      cpus_idle: "{{ bittrader_num_cpus | default(ansible_facts.processor_vcpus, true) }}"
      battery_policy: pause
      load_guard: 60
    ray:
      head_address: "{{ bittrader_head_address }}"
      node_ip: "{{ bittrader_advertise_ip }}"
      token_path: "{{ bittrader_token_file }}"
      unit: bittrader-ray-worker.service
  become: true
  register: throttle

- name: Let the throttle set the Ray unit's CPU quota (Linux)
  ansible.builtin.copy:
    content: "{{ throttle.sudoers }}"
    dest: /etc/sudoers.d/bittrader-throttle
    mode: "0440"
    validate: visudo -cf %s
  become: true
  when: throttle.sudoers | length > 0

- name: Remove the throttle
  ray_throttle_daemon:
    venv: "{{ bittrader_venv_dir }}"
    config_path: "{{ bittrader_base_dir }}/throttle.json"
    state: absent
  become: true
"""

RETURN = r"""
script_path:
  description: The daemon's console script (installed with the node agent).
  returned: always
  type: str
  sample: /home/bittrader/.bittrader_worker/venv/bin/bittrader-throttle
config_path:
  description: Where the configuration was written.
  returned: always
  type: str
config:
  description: The configuration written (defaults of unset keys are applied by the daemon).
  returned: when state is present
  type: dict
command:
  description: The service's command (argv).
  returned: when state is present
  type: list
  elements: str
  sample:
    - /home/bittrader/.bittrader_worker/venv/bin/python
    - /home/bittrader/.bittrader_worker/venv/bin/bittrader-throttle
    - --config
    - /home/bittrader/.bittrader_worker/throttle.json
sudoers:
  description: >-
    On Linux with the systemd mechanism, the sudoers file letting I(user) set exactly the CPU quotas
    this policy uses on Ray's unit; empty otherwise.
  returned: when state is present
  type: str
status_file:
  description: The daemon's status file.
  returned: when state is present
  type: str
"""

# Imports follow the documentation blocks, as in ansible-core's own modules.
import os
import platform as _platform
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.bittrader_node_agent.throttle.config import (
    DAEMON_SCRIPT,
    build_config,
    config_from_dict,
    render_config,
    service_command,
    sudoers_rule,
    validate,
)

CONFIG_MODE = "0640"


def host_platform() -> str:
    system = _platform.system().lower()
    if system.startswith("win"):
        return "windows"
    return "darwin" if system == "darwin" else "linux"


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def file_args(path: str, mode: str, owner: str | None, group: str | None) -> dict[str, Any]:
    """The file arguments set_fs_attributes_if_different expects (no SELinux context or attributes)."""
    return {"path": path, "mode": mode, "owner": owner, "group": group, "secontext": None, "attributes": None}


def ensure_dir(module: AnsibleModule, path: str, owner: str | None, group: str | None) -> None:
    """Create a missing parent folder (mode 0750, owned like the files)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        ensure_dir(module, parent, owner, group)
    os.mkdir(path, 0o750)
    module.set_fs_attributes_if_different(file_args(path, "0750", owner, group), False)


def write_file(
    module: AnsibleModule, path: str, content: bytes, mode: str, owner: str | None, group: str | None
) -> tuple[bool, dict[str, Any]]:
    """Write content when it differs and set mode/owner; (changed, attribute diff)."""
    before = read_bytes(path)
    changed = before != content
    if changed and not module.check_mode:
        directory = os.path.dirname(path)
        ensure_dir(module, directory, owner, group)
        fd, tmp = tempfile.mkstemp(prefix=".ansible_tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            module.atomic_move(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    attr_diff: dict[str, Any] = {"before": {}, "after": {}}
    if os.path.exists(path):
        args = file_args(path, mode, owner, group)
        changed = module.set_fs_attributes_if_different(args, changed, diff=attr_diff) or changed
    return changed, attr_diff


def remove_file(module: AnsibleModule, path: str) -> bool:
    if not os.path.lexists(path):
        return False
    if not module.check_mode:
        try:
            os.unlink(path)
        except OSError as exc:
            module.fail_json(msg=f"cannot remove {path}: {exc.strerror or exc}")
    return True


def default_paths(venv: str) -> dict[str, str]:
    base = os.path.dirname(venv.rstrip("/")) or "/"
    return {
        "config_path": os.path.join(base, "throttle.json"),
        "log_file": os.path.join(base, "logs", "throttle.log"),
        "status_file": os.path.join(base, "run", "throttle_status.json"),
        "num_cpus_file": os.path.join(base, "run", "num_cpus"),
    }


def main() -> None:
    policy_spec = dict(
        cpus_active=dict(type="int"),
        cpus_idle=dict(type="int"),
        idle_threshold_s=dict(type="float"),
        battery_policy=dict(type="raw"),
        battery_min_percent=dict(type="float"),
        hysteresis_s=dict(type="float"),
        load_guard=dict(type="float"),
        poll_interval_s=dict(type="float"),
        activity_source=dict(type="str", choices=["auto", "logind", "headless", "ioreg", "windows", "file"]),
        activity_file=dict(type="path"),
        live_resize=dict(type="bool"),
        drain=dict(type="bool"),
        drain_deadline_s=dict(type="int"),
        restart_after_drain=dict(type="bool"),
    )
    mechanism_spec = dict(
        kind=dict(type="str", choices=["auto", "systemd", "taskpolicy", "windows", "none"]),
        pause_quota_percent=dict(type="int"),
        sudo=dict(type="path"),
        systemctl=dict(type="path"),
        taskpolicy=dict(type="path"),
        process_user=dict(type="str"),
    )
    ray_spec = dict(
        head_address=dict(type="str"),
        node_ip=dict(type="str"),
        token_path=dict(type="path", no_log=False),
        unit=dict(type="str"),
        ray_bin=dict(type="path"),
        python_bin=dict(type="path"),
        env=dict(type="dict"),
    )
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            venv=dict(type="path", required=True),
            user=dict(type="str"),
            group=dict(type="str"),
            config_path=dict(type="path"),
            log_file=dict(type="path"),
            status_file=dict(type="path"),
            num_cpus_file=dict(type="path"),
            platform=dict(type="str", choices=["linux", "darwin", "windows"]),
            policy=dict(type="dict", default={}, options=policy_spec),
            mechanism=dict(type="dict", default={}, options=mechanism_spec),
            ray=dict(type="dict", default={}, options=ray_spec),
        ),
        supports_check_mode=True,
    )
    p = module.params
    venv = p["venv"].rstrip("/")
    paths = default_paths(venv)
    for key in paths:
        if p[key]:
            paths[key] = p[key]
    platform_name = p["platform"] or host_platform()
    bin_dir = "Scripts" if platform_name == "windows" else "bin"
    script_path = os.path.join(venv, bin_dir, DAEMON_SCRIPT)
    config_path = paths["config_path"]
    result: dict[str, Any] = {"changed": False, "script_path": script_path, "config_path": config_path}

    if p["state"] == "absent":
        before_config = read_bytes(config_path)
        changed = remove_file(module, config_path)
        result["changed"] = changed
        if module._diff and changed:
            result["diff"] = [
                {
                    "before_header": config_path,
                    "after_header": config_path,
                    "before": (before_config or b"").decode("utf-8", "replace"),
                    "after": "",
                },
            ]
        module.exit_json(**result)

    policy = dict(p["policy"] or {})
    if policy.get("cpus_idle") is None:
        policy["cpus_idle"] = os.cpu_count() or 1
    ray = dict(p["ray"] or {})
    ray["venv"] = venv
    config = build_config(
        platform_name,
        policy=policy,
        mechanism=p["mechanism"],
        paths={k: paths[k] for k in ("log_file", "status_file", "num_cpus_file")},
        ray=ray,
    )
    errors = validate(config)
    if errors:
        module.fail_json(msg="invalid throttle configuration: " + "; ".join(errors), errors=errors, **result)
    parsed = config_from_dict(config)

    if not module.check_mode and not os.path.exists(script_path):
        module.fail_json(
            msg=f"{script_path} is missing: install the node agent (the bittrader_node_agent wheel) into {venv} first",
            **result,
        )
    config_text = render_config(config)

    before_config = read_bytes(config_path)
    config_changed, config_attrs = write_file(
        module, config_path, config_text.encode("utf-8"), CONFIG_MODE, p["user"], p["group"]
    )

    sudoers = ""
    if platform_name == "linux" and parsed.mechanism_kind == "systemd" and p["user"]:
        sudoers = sudoers_rule(p["user"], parsed)
    result.update(
        changed=config_changed,
        config=config,
        command=service_command(venv, config_path, platform_name),
        sudoers=sudoers,
        status_file=paths["status_file"],
        log_file=paths["log_file"],
        num_cpus_file=paths["num_cpus_file"],
    )
    if module._diff:
        diffs: list[dict[str, Any]] = []
        if before_config != config_text.encode("utf-8"):
            diffs.append(
                {
                    "before_header": config_path,
                    "after_header": config_path,
                    "before": (before_config or b"").decode("utf-8", "replace"),
                    "after": config_text,
                }
            )
        if config_attrs["before"] or config_attrs["after"]:
            diffs.append(config_attrs)
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
