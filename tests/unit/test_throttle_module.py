"""The ray_throttle_daemon Ansible module: run in-process the way ansible-core tests its modules
(patched module args, SystemExit from exit_json/fail_json), and once for real through AnsiballZ. It
writes the configuration of the node agent's bittrader-throttle (installed with the agent's wheel,
here a launcher of node_agent/src) and imports the schema from node_agent/src as module_utils."""

from __future__ import annotations

import getpass
import importlib
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import ansible.module_utils
import pytest
from agent_throttle import console_script
from ansible.module_utils.testing import patch_module_args

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "node_agent" / "src") not in list(ansible.module_utils.__path__):
    ansible.module_utils.__path__.append(str(REPO / "node_agent" / "src"))
bt = importlib.import_module("ansible.module_utils.bittrader_node_agent.throttle.config")

_spec = importlib.util.spec_from_file_location("ray_throttle_daemon", REPO / "library" / "ray_throttle_daemon.py")
assert _spec is not None and _spec.loader is not None
mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mod)
ENTRY = "bittrader_node_agent.throttle.cli:main"


def run_module(capsys, args: dict, check_mode: bool = False, diff: bool = False) -> dict:
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    with patch_module_args(args), pytest.raises(SystemExit) as raised:
        mod.main()
    out = capsys.readouterr().out
    result = json.loads(out)
    result["_rc"] = raised.value.code
    return result


@pytest.fixture
def node(tmp_path):
    venv = tmp_path / "node" / "venv"
    (venv / "bin").mkdir(parents=True)
    console_script(venv / "bin" / "bittrader-throttle", ENTRY)  # the node agent, installed before
    return tmp_path / "node"


def args_for(node: Path, **extra) -> dict:
    args = {
        "venv": str(node / "venv"),
        "user": getpass.getuser(),
        "platform": "linux",
        "policy": {"cpus_active": 2, "cpus_idle": 8, "battery_policy": "pause", "load_guard": 60},
        "ray": {
            "head_address": "100.64.0.1:6379",
            "node_ip": "100.64.0.2",
            "token_path": str(node / "auth_token"),
            "unit": "bittrader-ray-worker.service",
        },
    }
    args.update(extra)
    return args


def test_first_install_then_unchanged(capsys, node):
    first = run_module(capsys, args_for(node), diff=True)
    assert first["_rc"] == 0 and first["changed"] is True
    script = node / "venv" / "bin" / "bittrader-throttle"
    config = node / "throttle.json"
    assert first["script_path"] == str(script) and first["config_path"] == str(config)
    assert "bittrader_node_agent.throttle.cli" in script.read_text()  # the agent's, left as it is
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    written = json.loads(config.read_text())
    assert written["policy"] == {
        "battery_policy": "pause",
        "cpus_active": 2,
        "cpus_idle": 8,
        "load_guard": 60.0,
    }
    assert written["paths"] == {
        "log_file": str(node / "logs" / "throttle.log"),
        "num_cpus_file": str(node / "run" / "num_cpus"),
        "status_file": str(node / "run" / "throttle_status.json"),
    }
    assert config.read_text() == bt.render_config(written)
    assert bt.load_config(str(config)).ray.venv == str(node / "venv")
    assert first["command"] == [
        str(node / "venv" / "bin" / "python"),
        str(script),
        "--config",
        str(config),
    ]
    assert "NOPASSWD: BITTRADER_THROTTLE_" in first["sudoers"]
    config_diff = first["diff"][0]
    assert config_diff["before"] == "" and config_diff["after"] == config.read_text()
    assert str(script) not in json.dumps(first["diff"])  # the configuration only: the script is the agent's

    second = run_module(capsys, args_for(node), diff=True)
    assert second["changed"] is False
    assert second["diff"] == []


def test_mode_change_alone_is_a_change(capsys, node):
    run_module(capsys, args_for(node))
    config = node / "throttle.json"
    config.chmod(0o644)
    again = run_module(capsys, args_for(node))
    assert again["changed"] is True
    assert stat.S_IMODE(config.stat().st_mode) == 0o640


def test_missing_agent_fails_and_writes_nothing(capsys, node):
    (node / "venv" / "bin" / "bittrader-throttle").unlink()
    result = run_module(capsys, args_for(node))
    assert result["_rc"] == 1 and result["failed"] is True
    assert "install the node agent" in result["msg"]
    assert not (node / "throttle.json").exists()
    # Check mode on a node without the agent yet (a first run in check mode) says what it would write.
    checked = run_module(capsys, args_for(node), check_mode=True)
    assert checked["changed"] is True and not (node / "throttle.json").exists()


def test_policy_change_shows_a_diff(capsys, node):
    run_module(capsys, args_for(node))
    args = args_for(node)
    args["policy"] = {**args["policy"], "cpus_active": 1}
    result = run_module(capsys, args, diff=True)
    assert result["changed"] is True
    assert len(result["diff"]) == 1
    assert '"cpus_active": 2' in result["diff"][0]["before"] and '"cpus_active": 1' in result["diff"][0]["after"]


def test_check_mode_changes_nothing(capsys, node):
    script = (node / "venv" / "bin" / "bittrader-throttle").read_bytes()
    result = run_module(capsys, args_for(node), check_mode=True, diff=True)
    assert result["changed"] is True
    assert (node / "venv" / "bin" / "bittrader-throttle").read_bytes() == script
    assert not (node / "throttle.json").exists()
    assert result["diff"][0]["after"]  # the configuration it would write
    run_module(capsys, args_for(node))
    args = args_for(node)
    args["policy"] = {**args["policy"], "cpus_idle": 4}
    before = (node / "throttle.json").read_text()
    result = run_module(capsys, args, check_mode=True)
    assert result["changed"] is True and (node / "throttle.json").read_text() == before


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"cpus_active": 9, "cpus_idle": 4}, "policy.cpus_active (9) must not exceed policy.cpus_idle (4)"),
        ({"battery_policy": "sometimes"}, "policy.battery_policy must be 'pause', 'ignore' or a whole number"),
        ({"poll_interval_s": 30}, "policy.poll_interval_s must be a number of seconds in 0.1..5"),
        ({"activity_source": "file"}, "policy.activity_file must be an absolute path"),
    ],
)
def test_bad_policy_fails_before_writing(capsys, node, policy, message):
    result = run_module(capsys, args_for(node, policy=policy))
    assert result["_rc"] == 1 and result["failed"] is True
    assert result["msg"].startswith("invalid throttle configuration: ")
    assert message in result["msg"]
    assert any(message in e for e in result["errors"])
    assert not (node / "throttle.json").exists()


def test_bad_type_is_refused_by_the_argument_spec(capsys, node):
    result = run_module(capsys, args_for(node, policy={"cpus_active": "two"}))
    assert result["failed"] is True and "cpus_active" in result["msg"]
    assert not (node / "throttle.json").exists()


def test_missing_ray_address_fails(capsys, node):
    result = run_module(capsys, args_for(node, ray={"node_ip": "100.64.0.2"}))
    assert "ray.head_address must be the head's HOST:PORT" in result["msg"]


def test_battery_count_as_text_becomes_a_number(capsys, node):
    run_module(capsys, args_for(node, policy={"battery_policy": "3", "cpus_idle": 8}))
    assert json.loads((node / "throttle.json").read_text())["policy"]["battery_policy"] == 3


def test_absent_removes_the_configuration(capsys, node):
    run_module(capsys, args_for(node))
    check = run_module(capsys, {**args_for(node), "state": "absent"}, check_mode=True)
    assert check["changed"] is True and (node / "throttle.json").exists()
    gone = run_module(capsys, {**args_for(node), "state": "absent"}, diff=True)
    assert gone["changed"] is True
    assert (node / "venv" / "bin" / "bittrader-throttle").exists()  # the agent's, removed with its venv
    assert not (node / "throttle.json").exists()
    assert gone["diff"][0]["after"] == ""
    again = run_module(capsys, {**args_for(node), "state": "absent"})
    assert again["changed"] is False


def test_the_module_and_the_daemon_share_one_schema():
    """The module imports the agent's throttle/config.py (as module_utils), nothing else of the agent."""
    assert mod.build_config.__module__ == "ansible.module_utils.bittrader_node_agent.throttle.config"
    source = (REPO / "library" / "ray_throttle_daemon.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert [line for line in imports if "bittrader" in line] == [
        "from ansible.module_utils.bittrader_node_agent.throttle.config import ("
    ]
    config_source = (REPO / "node_agent/src/bittrader_node_agent/throttle/config.py").read_text()
    assert "from ." not in config_source and "import bittrader" not in config_source
    for package in ("__init__.py", "throttle/__init__.py"):
        text = (REPO / "node_agent/src/bittrader_node_agent" / package).read_text()
        assert not [line for line in text.splitlines() if line.startswith(("import ", "from "))], package


def test_installed_script_runs(capsys, node):
    args = args_for(node, policy={"cpus_active": 1, "cpus_idle": 2, "activity_source": "headless"})
    run_module(capsys, args)
    script = node / "venv" / "bin" / "bittrader-throttle"
    done = subprocess.run(
        [sys.executable, str(script), "--config", str(node / "throttle.json"), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stdout


def test_through_ansiballz(tmp_path):
    """The real path: ansible builds the AnsiballZ payload (module + the agent's throttle/config.py as
    module_utils) and runs it; the configuration it writes is the one the daemon reads."""
    venv = tmp_path / "node" / "venv"
    (venv / "bin").mkdir(parents=True)
    console_script(venv / "bin" / "bittrader-throttle", ENTRY)
    args = json.dumps(
        {
            "venv": str(venv),
            "policy": {"cpus_active": 1, "cpus_idle": 2},
            "ray": {"head_address": "100.64.0.1:6379", "node_ip": "100.64.0.2"},
        }
    )
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
    )
    ansible = Path(sys.executable).parent / "ansible"
    done = subprocess.run(
        [
            str(ansible),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            "ray_throttle_daemon",
            "-a",
            args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(REPO),
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = tmp_path / "node" / "throttle.json"
    assert config.read_text() == bt.render_config(json.loads(config.read_text()))
    assert bt.load_config(str(config)).policy.cpus_idle == 2
