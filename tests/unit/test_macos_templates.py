"""Render every macOS launchd template of the roles with Ansible's own templating (tests/unit/
ansible_render.py) and several variable sets, then parse each result as launchd would read it
(plistlib): labels, commands, the user (never root), restart settings, environment and log paths.
No Mac is needed; what launchd then does with the files is not tested here."""

from __future__ import annotations

import json
import plistlib
from typing import Any

import pytest
from ansible_render import render, role_defaults

NODE = "roles/ray_node/templates/launchd-node.plist.j2"
THROTTLE = "roles/ray_node/templates/launchd-throttle.plist.j2"
CAFFEINATE = "roles/worker_macos/templates/launchd-caffeinate.plist.j2"
NOTIFIER = "roles/worker_macos/templates/launchd-notifier.plist.j2"
NOTIFIER_CONFIG = "roles/worker_macos/templates/notifier.json.j2"
ALL_PLISTS = [NODE, THROTTLE, CAFFEINATE, NOTIFIER]


def host_vars(role: str = "worker", user: str = "trader", home: str | None = None, **extra: Any) -> dict[str, Any]:
    """Role defaults plus the facts the bittrader role sets on a Mac (paths.yml, main.yml)."""
    variables = role_defaults("cluster_facts", "ray_node", "worker_macos")
    home = home or f"/Users/{user}"
    base = f"{home}/{variables['bittrader_head_dir_name' if role == 'head' else 'bittrader_worker_dir_name']}"
    variables.update(
        inventory_hostname="macbook-pro" if role == "head" else "macbook-air",
        ansible_facts={"system": "Darwin", "os_family": "Darwin", "processor_vcpus": 10},
        bittrader_node_role=role,
        bittrader_user=user,
        bittrader_home=home,
        bittrader_base_dir=base,
        bittrader_venv_dir=f"{base}/venv",
        bittrader_venv_python=f"{base}/venv/bin/python",
        bittrader_ray_bin=f"{base}/venv/bin/ray",
        bittrader_log_dir=f"{base}/logs",
        bittrader_run_dir=f"{base}/run",
        bittrader_token_file=f"{base}/auth_token",
        bittrader_node_config=f"{base}/node.json",
        bittrader_ray_temp_path=f"{base}/ray",
        bittrader_head_address="100.77.179.14:6379",
        bittrader_advertise_ip="100.77.179.15",
    )
    variables.update(extra)
    return variables


def load(template: str, variables: dict[str, Any]) -> dict[str, Any]:
    text = render(template, variables)
    assert text.startswith("<?xml"), "a plist must start with its XML declaration (no blank line before it)"
    data = plistlib.loads(text.encode("utf-8"))
    assert isinstance(data, dict)
    return data


VARIANTS = {
    "worker": host_vars(),
    "head": host_vars(role="head", bittrader_restart_delay_s=7),
    "spaces": host_vars(home="/Users/Shared Homes/Trader & Co <x>"),
    "agent": host_vars(ray_node_launchd_kind="agent"),
    "nofile": host_vars(ray_node_limit_nofile=4096, ray_node_launchd_process_type="Interactive"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("template", ALL_PLISTS)
def test_every_plist_parses(template: str, name: str) -> None:
    data = load(template, VARIANTS[name])
    assert data["Label"].startswith("com.bittrader.")
    assert data["ProgramArguments"]
    assert all(isinstance(arg, str) and arg for arg in data["ProgramArguments"])
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] is True
    assert isinstance(data["ThrottleInterval"], int)
    assert data.get("UserName") != "root"


@pytest.mark.parametrize("name", ["worker", "head", "spaces"])
def test_node_daemon(name: str) -> None:
    v = VARIANTS[name]
    data = load(NODE, v)
    role = v["bittrader_node_role"]
    base = v["bittrader_base_dir"]
    assert data["Label"] == f"com.bittrader.ray-{role}"
    assert data["UserName"] == v["bittrader_user"] == "trader"
    assert data["ProgramArguments"] == [
        f"{base}/venv/bin/python",
        f"{base}/venv/bin/bittrader-node",
        "run",
        "--config",
        f"{base}/node.json",
    ]
    assert data["KeepAlive"] is True
    assert data["RunAtLoad"] is True
    assert data["ThrottleInterval"] == v["bittrader_restart_delay_s"]
    assert data["ExitTimeOut"] == v["ray_node_stop_timeout_s"]
    assert data["WorkingDirectory"] == base
    env = data["EnvironmentVariables"]
    assert env["PATH"].split(":")[0] == f"{base}/venv/bin"
    assert "/usr/bin" in env["PATH"].split(":")
    assert env["HOME"] == v["bittrader_home"]
    assert env["USER"] == env["LOGNAME"] == "trader"
    folder = ".bittrader_head" if role == "head" else ".bittrader_worker"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert data[key].startswith(f"{v['bittrader_home']}/{folder}/logs/")
    assert data["StandardOutPath"].endswith("/launchd_stdout.log")
    assert data["StandardErrorPath"].endswith("/launchd_stderr.log")
    assert data["SoftResourceLimits"] == {"NumberOfFiles": 10240}
    assert data["ProcessType"] == "Standard"


def test_node_head_and_worker_labels_differ() -> None:
    assert load(NODE, VARIANTS["head"])["Label"] == "com.bittrader.ray-head"
    assert load(NODE, VARIANTS["worker"])["Label"] == "com.bittrader.ray-worker"
    assert load(NODE, VARIANTS["head"])["StandardOutPath"] == "/Users/trader/.bittrader_head/logs/launchd_stdout.log"


def test_paths_with_spaces_and_xml_characters_survive() -> None:
    data = load(NODE, VARIANTS["spaces"])
    assert data["ProgramArguments"][0] == "/Users/Shared Homes/Trader & Co <x>/.bittrader_worker/venv/bin/python"
    assert data["WorkingDirectory"] == "/Users/Shared Homes/Trader & Co <x>/.bittrader_worker"
    assert data["EnvironmentVariables"]["HOME"] == "/Users/Shared Homes/Trader & Co <x>"
    assert data["StandardErrorPath"] == "/Users/Shared Homes/Trader & Co <x>/.bittrader_worker/logs/launchd_stderr.log"


def test_node_launch_agent_has_no_user_name() -> None:
    data = load(NODE, VARIANTS["agent"])
    assert "UserName" not in data  # an agent runs as the owner of ~/Library/LaunchAgents
    assert data["Label"] == "com.bittrader.ray-worker"
    assert data["ProgramArguments"][2:4] == ["run", "--config"]
    assert data["KeepAlive"] is True


def test_node_options() -> None:
    data = load(NODE, VARIANTS["nofile"])
    assert data["SoftResourceLimits"] == {"NumberOfFiles": 4096}
    assert data["ProcessType"] == "Interactive"
    prefixed = load(NODE, host_vars(ray_node_launchd_label_prefix="org.example"))
    assert prefixed["Label"] == "org.example.ray-worker"


@pytest.mark.parametrize("template", [NODE, THROTTLE, CAFFEINATE])
def test_a_daemon_for_root_is_refused(template: str) -> None:
    """Root is refused before (bittrader validate.yml, setup-Darwin.yml) and again by the plist writer."""
    with pytest.raises(Exception, match="root"):
        render(template, host_vars(user="root", home="/var/root"))


def test_throttle_daemon_uses_the_modules_command() -> None:
    command = ["/x/venv/bin/python", "/x/venv/bin/bittrader-throttle", "--config", "/x/throttle.json"]
    data = load(THROTTLE, host_vars(ray_node__throttle={"changed": False, "command": command}))
    assert data["ProgramArguments"] == command
    assert data["Label"] == "com.bittrader.ray-throttle"
    assert data["UserName"] == "trader"
    assert data["StandardOutPath"] == "/Users/trader/.bittrader_worker/logs/throttle_launchd.log"


def test_throttle_daemon_default_command_when_the_module_did_not_run() -> None:
    data = load(THROTTLE, host_vars(ray_node__throttle={"skipped": True}))
    base = "/Users/trader/.bittrader_worker"
    assert data["ProgramArguments"] == [f"{base}/venv/bin/python", f"{base}/venv/bin/bittrader-throttle",
                                        "--config", f"{base}/throttle.json"]
    assert data["EnvironmentVariables"]["PATH"].startswith(f"{base}/venv/bin:")


def test_caffeinate_job() -> None:
    data = load(CAFFEINATE, VARIANTS["worker"])
    assert data["Label"] == "com.bittrader.caffeinate"
    assert data["ProgramArguments"] == ["/usr/bin/caffeinate", "-s"]
    assert data["UserName"] == "trader"


def test_notifier_is_a_gui_agent() -> None:
    data = load(NOTIFIER, VARIANTS["worker"])
    base = "/Users/trader/.bittrader_worker"
    assert data["Label"] == "com.bittrader.ray-notifier"
    assert "UserName" not in data
    assert data["LimitLoadToSessionType"] == "Aqua"
    assert data["ProgramArguments"] == [f"{base}/venv/bin/python", f"{base}/venv/bin/bittrader-notify",
                                        "--config", f"{base}/notifier.json"]
    assert data["StandardOutPath"] == f"{base}/logs/notifier.log"


def test_notifier_config() -> None:
    config = json.loads(render(NOTIFIER_CONFIG, host_vars(bittrader_throttle_enabled=True)))
    assert config["log_file"] == "/Users/trader/.bittrader_worker/logs/worker.log"
    assert config["error_log_file"] == "/Users/trader/.bittrader_worker/logs/worker_error.log"
    assert config["status_file"] == "/Users/trader/.bittrader_worker/run/throttle_status.json"
    assert config["events"] == ["joined", "lost_head", "throttle"]
    assert config["head"] == "100.77.179.14:6379"
    assert config["poll_interval_s"] == 5
    off = json.loads(render(NOTIFIER_CONFIG, host_vars()))
    assert off["status_file"] is None


def test_node_json_enables_multi_node_ray_on_macos() -> None:
    """The supervisor's configuration (Linux's template) adds the macOS switch Ray needs."""
    node = json.loads(render("roles/ray_node/templates/node.json.j2", host_vars()))
    assert node["env"]["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"
    assert node["log_file"] == "/Users/trader/.bittrader_worker/logs/worker.log"
    # The node's own temp folder: a plain ray.init() of the owner (same account) looks in /tmp/ray.
    assert node["temp_dir"] == "/Users/trader/.bittrader_worker/ray"
