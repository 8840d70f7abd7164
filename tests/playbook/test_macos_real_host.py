"""What a real Mac does that the first stand-ins did not (issue 14, macOS items): launchd's exit timeout
and Background Task Management as the roles read them, the folders macOS keeps from daemons, the read of
the strategy code as Ray's own account, the Command Line Tools check before fact gathering, uv's Python
kept out of the owner's ~/.local/bin, and the one rule for Intel Macs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "filter_plugins"))
sys.path.insert(0, str(REPO / "module_utils"))
sys.path.insert(0, str(REPO / "roles" / "ray_node" / "files"))
sys.path.insert(0, str(REPO / "node_agent" / "src"))

import bittrader_macos as mac  # noqa: E402
import bittrader_validation  # noqa: E402
import bittrader_versions  # noqa: E402
import code_read_check  # noqa: E402
from bittrader_cluster import code_problems  # noqa: E402
from bittrader_node_agent.cluster_probe import code_info  # noqa: E402

# --- launchd ----------------------------------------------------------------------------------------

PRINT = """system/com.bittrader.ray-worker = {
\tactive count = 1
\tpath = /Library/LaunchDaemons/com.bittrader.ray-worker.plist
\ttype = LaunchDaemon
\tstate = running

\tprogram = /Users/trader/.bittrader_worker/venv/bin/python
\tdomain = system
\tusername = trader
\tminimum runtime = 10
\texit timeout = 60
\truns = 1
\tpid = 812
}"""


def test_exit_timeout_is_read_from_launchctl_print() -> None:
    assert mac.launchd_exit_timeout(PRINT) == 60
    assert mac.launchd_exit_timeout(PRINT.replace("exit timeout = 60", "exit timeout = 30"), 60) == 30
    assert mac.launchd_exit_timeout("", 45) == 45
    assert mac.launchd_exit_timeout('Could not find service "x" in domain for port', 20) == 20


DUMPBTM = """========================
 Records for UID -2 : FFFFEEEE-DDDD-CCCC-BBBB-AAAAFFFFFFFE
========================

 Items:

 #1:
                 UUID: 3B1E2C1A-0000-0000-0000-000000000001
                 Name: caffeinate
       Developer Name: (null)
                 Type: legacy daemon (0x10010)
                Flags: [ legacy ] (0x1)
          Disposition: [disabled, allowed, visible, notified] (0xa)
           Identifier: 16.com.bittrader.caffeinate
                  URL: file:///Library/LaunchDaemons/com.bittrader.caffeinate.plist
      Executable Path: /usr/bin/caffeinate

 #2:
                 UUID: 3B1E2C1A-0000-0000-0000-000000000002
                 Name: python3.12
          Disposition: [enabled, allowed, visible, notified] (0xb)
           Identifier: 16.com.bittrader.ray-worker
                  URL: file:///Library/LaunchDaemons/com.bittrader.ray-worker.plist
"""


def test_background_items_switched_off_are_found_by_label() -> None:
    assert mac.btm_disabled(DUMPBTM, "com.bittrader.caffeinate")
    assert not mac.btm_disabled(DUMPBTM, "com.bittrader.ray-worker")
    assert not mac.btm_disabled(DUMPBTM, "com.bittrader.ray-throttle")
    assert not mac.btm_disabled(DUMPBTM, "bittrader.caffeinate")  # a label's tail is not the label
    assert not mac.btm_disabled("", "com.bittrader.caffeinate")


def test_the_fake_sfltool_prints_what_the_filter_reads(tmp_path: Path) -> None:
    """tests/fake_mac/bin/sfltool (the Background Items stand-in) in the layout the filter parses."""
    import plistlib

    (tmp_path / "LaunchDaemons").mkdir()
    jobs = (("com.bittrader.caffeinate", "/usr/bin/caffeinate"), ("com.bittrader.ray-worker", "/x/python"))
    for label, program in jobs:
        with open(tmp_path / "LaunchDaemons" / f"{label}.plist", "wb") as handle:
            plistlib.dump({"Label": label, "ProgramArguments": [program]}, handle)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "launchd.json").write_text(json.dumps({"btm_disabled": ["com.bittrader.caffeinate"]}))
    out = subprocess.run([str(REPO / "tests" / "fake_mac" / "bin" / "sfltool"), "dumpbtm"], capture_output=True,
                         text=True, check=True, env=dict(os.environ, FAKEMAC=str(tmp_path))).stdout
    assert mac.btm_disabled(out, "com.bittrader.caffeinate")
    assert not mac.btm_disabled(out, "com.bittrader.ray-worker")


def test_the_fake_launchctl_keeps_a_booted_out_job_and_refuses_a_second_bootstrap(tmp_path: Path) -> None:
    import plistlib
    import time

    plist = tmp_path / "com.bittrader.x.plist"
    with open(plist, "wb") as handle:
        plistlib.dump({"Label": "com.bittrader.x", "ProgramArguments": ["/bin/true"], "ExitTimeOut": 30}, handle)
    os.chmod(plist, 0o644)
    env = dict(os.environ, FAKEMAC=str(tmp_path), FAKEMAC_BOOTOUT_DELAY="5")  # long enough for a loaded machine

    def launchctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "tests" / "fake_mac" / "bin" / "launchctl"), *args], capture_output=True,
                              text=True, env=env, check=False)

    assert launchctl("bootstrap", "system", str(plist)).returncode == 0
    assert "exit timeout = 30" in launchctl("print", "system/com.bittrader.x").stdout
    assert launchctl("bootout", "system/com.bittrader.x").returncode == 0
    assert launchctl("print", "system/com.bittrader.x").returncode == 0  # still exiting
    refused = launchctl("bootstrap", "system", str(plist))
    assert refused.returncode == 5 and "Bootstrap failed: 5: Input/output error" in refused.stderr
    time.sleep(5.2)
    assert launchctl("print", "system/com.bittrader.x").returncode == 113
    assert launchctl("bootstrap", "system", str(plist)).returncode == 0


def _tasks(path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())


def test_a_reload_waits_for_the_old_job_between_bootout_and_bootstrap() -> None:
    tasks = _tasks(REPO / "roles" / "ray_node" / "tasks" / "launchd_load.yml")
    names = [t["name"] for t in tasks]
    bootout = names.index("Unload the job's old definition")
    bootstrap = names.index("Load and start the job")
    wait = names.index("Wait until the old definition's job has exited")
    assert bootout < wait < bootstrap
    assert tasks[wait]["ansible.builtin.include_tasks"] == "launchd-wait.yml"
    (poll, _) = _tasks(REPO / "roles" / "ray_node" / "tasks" / "launchd-wait.yml")
    assert poll["ansible.builtin.command"]["argv"][1] == "print"
    assert poll["until"] == "ray_node__gone_print.rc != 0"
    assert "ray_node_launchd_exit_timeout" in poll["retries"] and "ray_node_launchd_unload_margin_s" in poll["retries"]


# --- Synced folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "what"), [
    ("/Users/trader/Library/CloudStorage/Dropbox/strategy", "cloud folder"),
    ("/Users/trader/Library/CloudStorage/GoogleDrive-trader@example.com/My Drive/s", "cloud folder"),
    ("/Users/trader/Library/CloudStorage/OneDrive-Personal", "cloud folder"),
    ("/Users/trader/Library/Mobile Documents/com~apple~CloudDocs/s", "iCloud Drive"),
    ("/Users/trader/Documents/strategy", "Documents"),
    ("/Users/trader/Desktop", "Desktop"),
    ("/Users/trader/Downloads/s/", "Downloads"),
])
def test_protected_folders_are_named(path: str, what: str) -> None:
    assert what in mac.macos_protected_folder(path, "/Users/trader")


@pytest.mark.parametrize("path", ["/Users/trader/bittrader-strategy", "/Users/trader/Dropbox/strategy",
                                  "/Users/trader/DocumentsOld/s", "/Users/other/Documents/s", "/opt/strategy", ""])
def test_plain_folders_are_not_protected(path: str) -> None:
    assert mac.macos_protected_folder(path, "/Users/trader") == ""


def _refuse_listing(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """What macOS's privacy protection does to a daemon's Python in ~/Library/CloudStorage: the folder
    exists (stat works) but listing it is refused with EPERM. (Tests run as root, which file modes do
    not stop.)"""
    real_scandir, real_listdir = os.scandir, os.listdir

    def refuse(target: Any = ".") -> Any:
        if os.fspath(target).startswith(str(folder)):
            raise PermissionError(1, "Operation not permitted", os.fspath(target))
        return real_scandir(target)

    def refuse_list(target: Any = ".") -> Any:
        if os.fspath(target).startswith(str(folder)):
            raise PermissionError(1, "Operation not permitted", os.fspath(target))
        return real_listdir(target)

    monkeypatch.setattr(os, "scandir", refuse)
    monkeypatch.setattr(os, "listdir", refuse_list)


def test_verify_reports_a_folder_ray_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in Ray's own processes on the node: a refused folder was an empty folder (0 files, no problem)."""
    folder = tmp_path / "Library" / "CloudStorage" / "Dropbox" / "strategy"
    (folder / "mystrategy").mkdir(parents=True)
    (folder / "mystrategy" / "__init__.py").write_text("X = 1\n")
    site = tmp_path / "site"
    site.mkdir()
    head = {"mode": "folder", "root": str(folder), "path": str(folder), "repo": "", "version": ""}
    (site / "bittrader_code.pth").write_text(f"# bittrader-code {json.dumps(head)}\n{folder}\n")
    _refuse_listing(monkeypatch, folder)
    info = code_info(site_dir=str(site), sys_path=[str(folder)])
    assert info["exists"] and info["files"] == 0
    problems = code_problems(info, {"mode": "folder"})
    assert len(problems) == 1
    assert f"cannot read 1 entries of {folder}" in problems[0]
    assert "Operation not permitted" in problems[0] and "~/Library/CloudStorage" in problems[0]


def test_the_deploy_check_reads_every_py_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "strategy"
    (folder / "pkg" / "__pycache__").mkdir(parents=True)
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "signals.py").write_text("X = 1\n")
    (folder / "candles.csv").write_text("a,b\n")
    assert code_read_check.check(str(folder)) == {"files": 2, "entries": 3, "error": "", "refused": 0}
    (folder / "pkg" / "online.py").symlink_to(folder / "missing")  # a file that cannot be opened
    result = code_read_check.check(str(folder))
    assert result["files"] == 2 and result["refused"] == 1 and "online.py" in str(result["error"])
    _refuse_listing(monkeypatch, folder)
    refused = code_read_check.check(str(folder))
    assert refused["files"] == 0 and "Operation not permitted" in str(refused["error"])


def test_code_yml_reads_the_folder_with_the_venv_python_as_the_service_user() -> None:
    tasks = {t["name"]: t for t in _tasks(REPO / "roles" / "ray_node" / "tasks" / "code.yml")}
    read = tasks["Read the synced folder as the account Ray runs as (folder mode)"]
    assert read["ansible.builtin.command"]["argv"][0] == "{{ bittrader_venv_python }}"
    assert read["become_user"] == "{{ bittrader_user }}"
    assert "code_read_check.py" in read["ansible.builtin.command"]["argv"][3]


# --- Command Line Tools before facts ----------------------------------------------------------------


def _clt_play(tmp_path: Path, uname: str, clt_installed: bool) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uname").write_text(f"#!/bin/sh\necho {uname}\n")
    (fake / "xcode-select").write_text(
        "#!/bin/sh\n" + ("echo /Library/Developer/CommandLineTools\n" if clt_installed
                         else "echo 'xcode-select: error: unable to get active developer directory' >&2\nexit 2\n"))
    for tool in fake.iterdir():
        tool.chmod(0o755)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"ray_cluster": {"hosts": {"amac": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    (tmp_path / "play.yml").write_text(yaml.safe_dump([{
        "name": "The first play of playbooks/preflight.yml", "hosts": "ray_cluster", "gather_facts": False,
        "tasks": [{"name": "Check", "ansible.builtin.include_role": {"name": "cluster_facts",
                                                                    "tasks_from": "command_line_tools.yml"}},
                  {"name": "Reached", "ansible.builtin.debug": {"msg": "REACHED"}}]}]))
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", ANSIBLE_ROLES_PATH=str(REPO / "roles"),
               ANSIBLE_FILTER_PLUGINS=str(REPO / "filter_plugins"), ANSIBLE_HOST_KEY_CHECKING="False")
    # A Mac's /usr/bin/python3 without the tools is a stub: the check must not need Python.
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                           str(tmp_path / "play.yml"), "-e", "ansible_python_interpreter=/usr/bin/python3"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def test_a_mac_without_command_line_tools_fails_before_facts_with_the_fix(tmp_path: Path) -> None:
    done = _clt_play(tmp_path, "Darwin", clt_installed=False)
    assert done.returncode != 0
    out = " ".join(done.stdout.split())
    assert "amac is a Mac without Apple's Command Line Tools" in out and "xcode-select --install" in out
    assert "REACHED" not in out


@pytest.mark.parametrize(("uname", "installed"), [("Darwin", True), ("Linux", False)])
def test_the_command_line_tools_check_passes_elsewhere(tmp_path: Path, uname: str, installed: bool) -> None:
    done = _clt_play(tmp_path, uname, clt_installed=installed)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "REACHED" in done.stdout


def test_preflight_checks_the_command_line_tools_before_gathering_facts() -> None:
    plays = _tasks(REPO / "playbooks" / "preflight.yml")
    assert plays[0]["gather_facts"] is False
    includes = [task.get("ansible.builtin.include_role", {}).get("tasks_from") for task in plays[0]["tasks"]]
    assert "command_line_tools.yml" in includes
    assert all(play.get("gather_facts") for play in plays[1:])


# --- uv's Python ------------------------------------------------------------------------------------


def test_uv_installs_python_without_bin_links_and_keeps_its_cache_in_the_base_folder() -> None:
    tasks = {t["name"]: t for t in _tasks(REPO / "roles" / "ray_node" / "tasks" / "python-uv.yml")}
    env = tasks["Keep uv's Python and cache in the node's base folder"]["ansible.builtin.set_fact"]["ray_node__uv_env"]
    assert env["UV_CACHE_DIR"].startswith("{{ bittrader_base_dir }}/")
    assert env["UV_PYTHON_INSTALL_DIR"].startswith("{{ bittrader_base_dir }}/")
    install = tasks["Install the pinned Python with uv"]
    assert "--no-bin" in install["ansible.builtin.command"]["argv"]
    for name, task in tasks.items():
        argv = task.get("ansible.builtin.command", {}).get("argv", [])
        if argv and str(argv[0]).endswith("/uv/bin/uv"):
            assert "ray_node__uv_env" in task["environment"], name


# --- Intel Macs: one rule, one message --------------------------------------------------------------

INTEL = {"system": "Darwin", "architecture": "x86_64", "distribution": "MacOSX", "distribution_version": "14.6"}


@pytest.mark.parametrize("ray", ["2.49.2", "2.52.0", "2.60.0"])
def test_an_intel_mac_gets_the_same_message_whatever_the_pin(ray: str) -> None:
    settings = {"host": "oldmac", "ray_version": ray, "python_version": "3.12.12"}
    problems = bittrader_validation._pin_problems(settings, INTEL)
    assert problems == [problems[0]] and bittrader_versions.INTEL_MAC_RULE in problems[0]


def test_the_macos_readme_states_the_validation_rule() -> None:
    readme = " ".join((REPO / "roles" / "worker_macos" / "README.md").read_text().split())
    assert "pin `bittrader_ray_version: \"2.49.2\"`" not in readme
    assert " ".join(bittrader_versions.INTEL_MAC_RULE.split()) in readme
    # README tables name only what the roles have: no Intel Mac instructions beyond the rule.
    assert not re.search(r"Intel Mac[^.]*must pin", readme)
