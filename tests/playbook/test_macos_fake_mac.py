"""worker_macos and ray_node's macOS tasks run for real against a pretend Mac: this machine, with the
macOS tools replaced by the stateful stubs in tests/fake_mac/bin (launchctl, socketfilterfw, plutil,
pmset, dscacheutil, xcode-select, sysctl). It checks the task logic no template test can: the launchctl
sequence (enable, bootout, bootstrap, kickstart), idempotence, the switches (throttle, keep-awake,
notifications, daemon/agent) and the uninstall. What real launchd, the firewall or osascript then do
is not tested: that needs a Mac.

The roles are copied with their dependencies cut and ray_node installing no Python or Ray; tasks run
as the current user (become is off), so it needs root (files are chowned to `nobody`). About 45 s per
playbook run on 2 cores: opt in with BITTRADER_FAKE_MAC=1.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "fake_mac"
USER = "nobody"

pytestmark = pytest.mark.skipif(
    os.environ.get("BITTRADER_FAKE_MAC") != "1" or os.geteuid() != 0,
    reason="runs ansible-playbook several times (minutes): set BITTRADER_FAKE_MAC=1, as root",
)

STRIPPED_MAIN_TASKS = {
    "Re-read the node's paths now that the user exists",
    "Install the pinned Python",
    "Install Ray into the virtual environment",
}


@pytest.fixture(scope="module")
def mac(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fake_mac")
    repo = root / "repo"
    for part in ("roles", "filter_plugins", "lookup_plugins", "test_plugins", "library", "module_utils", "node_agent"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    meta = repo / "roles" / "ray_node" / "meta" / "main.yml"  # no bittrader role: facts.yml sets its facts
    data = yaml.safe_load(meta.read_text())
    data["dependencies"] = []
    meta.write_text(yaml.safe_dump(data))
    node = repo / "roles" / "ray_node" / "tasks" / "node.yml"  # the provisioning that main.yml includes
    tasks = [t for t in yaml.safe_load(node.read_text()) if t.get("name") not in STRIPPED_MAIN_TASKS]
    assert len(tasks) == len(yaml.safe_load(node.read_text())) - len(STRIPPED_MAIN_TASKS)
    node.write_text(yaml.safe_dump(tasks, sort_keys=False))
    for name in ("converge.yml", "uninstall.yml", "facts.yml"):
        shutil.copy(FAKE / name, root / name)
    group_vars = root / "group_vars" / "all"
    group_vars.mkdir(parents=True)
    shutil.copy(REPO / "roles" / "cluster_facts" / "defaults" / "main.yml", group_vars / "bittrader_defaults.yml")
    shutil.copy(REPO / "roles" / "cluster_facts" / "vars" / "main.yml", group_vars / "bittrader_vars.yml")
    home = root / "home" / USER
    (home / "Library").mkdir(parents=True)
    uid = pwd.getpwnam(USER).pw_uid
    os.chown(home, uid, -1)
    os.chown(home / "Library", uid, -1)
    (root / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "ray_cluster": {
                    "children": {
                        "ray_head": {"hosts": {"fakehead": {"ansible_connection": "local",
                                                            "head_cluster_token": "0" * 64}}},
                        "workers_macos": {"hosts": {"fakemac": {"ansible_connection": "local",
                                                                "ansible_host": "100.77.179.15",
                                                                "bittrader_user": USER,
                                                                "bittrader_create_user": False}}},
                    }
                }
            }
        )
    )
    (root / "ansible.cfg").write_text(
        "[defaults]\n"
        f"roles_path = {repo / 'roles'}\nlibrary = {repo / 'library'}\n"
        f"module_utils = {repo / 'module_utils'}:{repo / 'node_agent' / 'src'}\n"
        f"filter_plugins = {repo / 'filter_plugins'}\nlookup_plugins = {repo / 'lookup_plugins'}\n"
        f"test_plugins = {repo / 'test_plugins'}\ninterpreter_python = {sys.executable}\n"
        "host_key_checking = False\nretry_files_enabled = False\nstdout_callback = default\n"
    )
    bin_dir = FAKE / "bin"
    (root / "fake.yml").write_text(
        yaml.safe_dump(
            {
                "ansible_become": False,
                "fake_mac_home": str(home),
                "ray_node_launchctl": str(bin_dir / "launchctl"),
                "ray_node_plutil": str(bin_dir / "plutil"),
                "ray_node_socketfilterfw": str(bin_dir / "socketfilterfw"),
                "ray_node_dscacheutil": str(bin_dir / "dscacheutil"),
                "ray_node_xcode_select": str(bin_dir / "xcode-select"),
                "ray_node_sysctl": str(bin_dir / "sysctl"),
                "ray_node_pmset": str(bin_dir / "pmset"),
                "ray_node_sfltool": str(bin_dir / "sfltool"),
                "ray_node_fdesetup": str(bin_dir / "fdesetup"),
                "ray_node_launch_daemons_dir": str(root / "LaunchDaemons"),
                "ray_node_root_group": "root",
                "bittrader_system_python": "/usr/bin/python3",
            }
        )
    )
    return {"root": root, "home": home, "base": home / ".bittrader_worker", "daemons": root / "LaunchDaemons"}


def run_play(mac: dict[str, Any], playbook: str, env: dict[str, str] | None = None,
             **extra: Any) -> subprocess.CompletedProcess[str]:
    root = mac["root"]
    environ = dict(os.environ, ANSIBLE_CONFIG=str(root / "ansible.cfg"), FAKEMAC=str(root), FAKEMAC_USER=USER,
                   **(env or {}))
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(root / "hosts.yml"),
            str(root / playbook), "-e", f"@{root / 'fake.yml'}", "-e", json.dumps(extra)]
    return subprocess.run(argv, cwd=root, env=environ, capture_output=True, text=True, timeout=900, check=False)


def play(mac: dict[str, Any], playbook: str, env: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    done = run_play(mac, playbook, env, **extra)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    recap = re.search(r"fakemac\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", done.stdout)
    assert recap, done.stdout[-3000:]
    return {"ok": int(recap.group(1)), "changed": int(recap.group(2)), "failed": int(recap.group(4)),
            "stdout": done.stdout}


def set_state(mac: dict[str, Any], name: str, **values: Any) -> None:
    path = mac["root"] / "state" / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    path.write_text(json.dumps(data))


def state(mac: dict[str, Any], name: str) -> dict[str, Any]:
    path = mac["root"] / "state" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_install_is_idempotent_and_runs_as_the_owner(mac: dict[str, Any]) -> None:
    features = {"bittrader_throttle_enabled": True, "worker_macos_keep_awake": "pmset",
                "worker_macos_notifications": True}
    first = play(mac, "converge.yml", **features)
    assert first["changed"] > 0
    # FileVault is on (the fdesetup stand-in's default): Ray would not start after a power cut until a login.
    assert "FileVault is on" in first["stdout"] and "fdesetup authrestart" in first["stdout"]
    launchd = state(mac, "launchd")
    assert set(launchd["loaded"]) == {"system/com.bittrader.ray-worker", "system/com.bittrader.ray-throttle"}
    worker = launchd["loaded"]["system/com.bittrader.ray-worker"]
    assert worker["user"] == USER
    base = mac["base"]
    assert worker["args"][1:] == [f"{base}/venv/bin/bittrader-node", "run", "--config", f"{base}/node.json"]
    assert launchd["kicks"] == {}  # just loaded: the restart handler has nothing to do
    assert (mac["home"] / "Library" / "LaunchAgents" / "com.bittrader.ray-notifier.plist").exists()
    assert state(mac, "pmset")["ac"] == 0
    assert (mac["base"] / "pmset_ac_sleep.orig").read_text().strip() == "1"
    apps = state(mac, "alf")["apps"]
    assert os.path.realpath(sys.executable) in apps
    assert all(verdict == "allow" for verdict in apps.values())

    second = play(mac, "converge.yml", **features)
    assert second["changed"] == 0


INSTALL_FEATURES = {"bittrader_throttle_enabled": True, "worker_macos_keep_awake": "pmset",
                    "worker_macos_notifications": True}


def test_a_reload_waits_until_the_old_job_has_exited(mac: dict[str, Any]) -> None:
    """A changed plist is booted out and bootstrapped again. The stand-in keeps the booted-out job for 30 s
    (a Ray node stopping within its 60 s ExitTimeOut): bootstrap meanwhile fails with launchd's
    "5: Input/output error" all through the old 5 retries 2 s apart (10 s of delays plus their own run time)."""
    calls_before = len(state(mac, "launchd")["calls"])
    result = play(mac, "converge.yml", env={"FAKEMAC_BOOTOUT_DELAY": "30"},
                  ray_node_launchd_process_type="Background", **INSTALL_FEATURES)
    assert result["changed"] > 0
    launchd = state(mac, "launchd")
    assert "system/com.bittrader.ray-worker" in launchd["loaded"]
    calls = launchd["calls"][calls_before:]
    target = "system/com.bittrader.ray-worker"
    bootout = calls.index(["bootout", target])
    bootstraps = [i for i, c in enumerate(calls) if c[0] == "bootstrap" and c[-1].endswith("ray-worker.plist")]
    assert len(bootstraps) == 1  # one bootstrap, after launchd let go of the old job
    waits = [c for c in calls[bootout + 1:bootstraps[0]] if c == ["print", target]]
    assert len(waits) >= 5  # polled about once a second for 30 s


def test_a_background_item_switched_off_says_what_to_switch_on(mac: dict[str, Any]) -> None:
    set_state(mac, "launchd", btm_disabled=["com.bittrader.caffeinate"])
    try:
        done = run_play(mac, "converge.yml", **dict(INSTALL_FEATURES, worker_macos_keep_awake="caffeinate",
                                                    ray_node_launchd_process_type="Background"))
    finally:
        set_state(mac, "launchd", btm_disabled=[])
    assert done.returncode != 0
    out = " ".join(done.stdout.split())
    assert "launchd refused to load com.bittrader.caffeinate" in out
    assert "5: Input/output error" in out
    assert "switched off as a background item" in out
    assert "Login Items & Extensions" in out and "Allow in the Background" in out


def test_switches_and_restart(mac: dict[str, Any]) -> None:
    # ray_node_launchd_process_type as the reload test left it: only node.json changes for the Ray job.
    result = play(mac, "converge.yml", bittrader_throttle_enabled=False, worker_macos_keep_awake="caffeinate",
                  worker_macos_notifications=False, bittrader_num_cpus=3, ray_node_launchd_process_type="Background")
    assert result["changed"] > 0
    launchd = state(mac, "launchd")
    assert set(launchd["loaded"]) == {"system/com.bittrader.ray-worker", "system/com.bittrader.caffeinate"}
    assert launchd["kicks"] == {"system/com.bittrader.ray-worker": 1}  # node.json changed
    assert state(mac, "pmset")["ac"] == 1  # restored
    assert not (mac["daemons"] / "com.bittrader.ray-throttle.plist").exists()
    assert not (mac["home"] / "Library" / "LaunchAgents" / "com.bittrader.ray-notifier.plist").exists()
    # The program is the node agent's (it stays with the venv); its configuration goes.
    assert not (mac["base"] / "notifier.json").exists()

    agent = play(mac, "converge.yml", ray_node_launchd_kind="agent", worker_macos_keep_awake="caffeinate",
                 worker_macos_notifications=False, bittrader_num_cpus=3)
    assert agent["changed"] > 0
    assert "system/com.bittrader.ray-worker" not in state(mac, "launchd")["loaded"]
    assert not (mac["daemons"] / "com.bittrader.ray-worker.plist").exists()
    assert (mac["home"] / "Library" / "LaunchAgents" / "com.bittrader.ray-worker.plist").exists()
    assert not any(c[:2] == ["bootstrap", "gui/501"] for c in state(mac, "launchd")["calls"])


AGENT_SETTINGS = {"ray_node_launchd_kind": "agent", "worker_macos_keep_awake": "caffeinate",
                  "worker_macos_notifications": False, "bittrader_num_cpus": 3}


def test_a_synced_folder_is_read_as_the_service_account(mac: dict[str, Any]) -> None:
    """Folder mode with a Dropbox folder under ~/Library/CloudStorage: the play warns that a LaunchDaemon
    cannot read it, then reads every .py file with the venv's Python as the service account and fails,
    naming the host and the folder, on a file it cannot open."""
    folder = mac["home"] / "Library" / "CloudStorage" / "Dropbox" / "strategy"
    (folder / "mystrategy").mkdir(parents=True)
    (folder / "mystrategy" / "__init__.py").write_text("MARKER = 1\n")
    defaults = yaml.safe_load((REPO / "roles" / "cluster_facts" / "defaults" / "main.yml").read_text())
    minor = ".".join(str(defaults["bittrader_python_version"]).split(".")[:2])
    (mac["base"] / "venv" / "lib" / f"python{minor}" / "site-packages").mkdir(parents=True, exist_ok=True)
    code = {"bittrader_code_mode": "folder", "bittrader_code_folder": "~/Library/CloudStorage/Dropbox/strategy"}

    ok = play(mac, "converge.yml", **AGENT_SETTINGS, **code)
    out = " ".join(ok["stdout"].split())
    assert f"bittrader_code_folder {folder} is in a cloud folder" in out
    assert "Always keep on this device" in out

    (folder / "mystrategy" / "signals.py").symlink_to(folder / "online-only-placeholder")
    done = run_play(mac, "converge.yml", **AGENT_SETTINGS, **code)
    assert done.returncode != 0
    out = " ".join(done.stdout.split())
    assert f"fakemac: {USER} (the account Ray runs as) cannot read the strategy code in {folder}" in out
    assert "signals.py" in out
    (folder / "mystrategy" / "signals.py").unlink()
    play(mac, "converge.yml", **AGENT_SETTINGS, bittrader_code_mode="working_dir")


def test_uninstall_removes_everything(mac: dict[str, Any]) -> None:
    """As playbooks/uninstall.yml calls it: include_role worker_macos tasks_from=uninstall.yml must not
    install anything first. It also removes the python3.X link an older `uv python install` (without
    --no-bin) put in the owner's ~/.local/bin, and leaves the owner's own links there."""
    local_bin = mac["home"] / ".local" / "bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    (local_bin / "python3.12").symlink_to(mac["base"] / "python" / "cpython-3.12.12-macos-aarch64-none" / "bin"
                                          / "python3.12")
    (local_bin / "python3.11").symlink_to("/usr/bin/python3")
    ray_temp = mac["home"] / ".bt-worker"  # the node's own Ray folder outside its base folder
    (ray_temp / "session_2026-12-07_10-00-00_000000_1").mkdir(parents=True, exist_ok=True)
    calls_before = len(state(mac, "launchd")["calls"])
    play(mac, "uninstall.yml")
    assert not ray_temp.exists()
    assert not (local_bin / "python3.12").is_symlink()
    assert (local_bin / "python3.11").is_symlink()
    assert not any(c[0] in ("bootstrap", "enable") for c in state(mac, "launchd")["calls"][calls_before:])
    assert state(mac, "launchd")["loaded"] == {}
    assert list(mac["daemons"].glob("com.bittrader.*")) == []
    assert list((mac["home"] / "Library" / "LaunchAgents").glob("com.bittrader.*")) == []
    assert state(mac, "alf")["apps"] == {"/Applications/Tailscale.app": "allow"}
    assert state(mac, "pmset")["ac"] == 1
    assert not mac["base"].exists()
