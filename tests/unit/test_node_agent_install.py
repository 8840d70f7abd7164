"""roles/ray_node/tasks/agent.yml run for real by ansible-playbook on this machine (a playbook test: run
it under the heavy lock): the first run builds the wheel and installs the agent into a fresh venv and
notifies the services, the second changes nothing, and a changed source is installed again."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def play(tmp: Path, role: Path) -> tuple[dict[str, int], str]:
    playbook = [{
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {
            "ansible_become": False,
            "ansible_python_interpreter": sys.executable,
            "role_path": str(role),  # agent-build.yml finds node_agent/ from it, as inside the role
            "bittrader_user": getpass.getuser(),
            "bittrader_base_dir": str(tmp / "base"),
            "bittrader_venv_dir": str(tmp / "base/venv"),
            "bittrader_venv_python": str(tmp / "base/venv/bin/python"),
            "ray_node_wheelhouse_cache": str(tmp / "cache"),
        },
        "tasks": [{"name": "Install the agent", "ansible.builtin.include_tasks": str(role / "tasks/agent.yml")}],
        "handlers": [
            {"name": "Restart the Ray service", "ansible.builtin.debug": {"msg": "restart ray"}},
            {"name": "Restart the throttling daemon", "ansible.builtin.debug": {"msg": "restart throttle"}},
        ],
    }]
    path = tmp / "play.yml"
    path.write_text(yaml.safe_dump(playbook))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"), ANSIBLE_HOME=str(tmp / "ansible-home"))
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(path)], capture_output=True, text=True, timeout=600, env=env, cwd=str(REPO), check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)", done.stdout)
    assert recap, done.stdout[-2000:]
    return {"ok": int(recap[1]), "changed": int(recap[2])}, done.stdout


@pytest.fixture
def node(tmp_path: Path) -> Path:
    (tmp_path / "base").mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "base/venv")], check=True,
                   timeout=120)
    return tmp_path


def installed(node: Path) -> str:
    done = subprocess.run([str(node / "base/venv/bin/python"), "-c",
                           "import importlib.metadata as m; print(m.version('bittrader-node-agent'))"],
                          capture_output=True, text=True, timeout=60, cwd="/", check=True)
    return done.stdout.strip()


def test_install_is_idempotent_and_follows_the_source(node: Path) -> None:
    # A copy of the repository's roles and agent, so the source can change.
    repo = node / "repo"
    shutil.copytree(REPO / "roles/ray_node", repo / "roles/ray_node")
    shutil.copytree(REPO / "node_agent", repo / "node_agent", ignore=shutil.ignore_patterns("__pycache__"))
    role = repo / "roles/ray_node"

    first, out = play(node, role)
    assert first["changed"] >= 4, out  # built, copied, installed, the copy removed
    assert "restart ray" in out and "restart throttle" in out
    version = installed(node)
    assert version.startswith("1.0.0+src.")
    for script in ("bittrader-node", "bittrader-throttle", "bittrader-health", "bittrader-notify", "bittrader-verify"):
        assert (node / "base/venv/bin" / script).is_file()
    assert not list((node / "base").glob("*.whl"))  # the copied wheel is removed

    second, out = play(node, role)
    assert second["changed"] == 0, out
    assert "restart ray" not in out

    (repo / "node_agent/src/bittrader_node_agent/common.py").write_text(
        (repo / "node_agent/src/bittrader_node_agent/common.py").read_text() + "\n# changed\n")
    third, out = play(node, role)
    assert third["changed"] >= 4 and installed(node) != version, out
    built = json.loads(subprocess.run([sys.executable, str(repo / "node_agent/build_wheel.py"), "--out",
                                       str(node / "cache/node-agent")], capture_output=True, text=True,
                                      check=True).stdout)
    assert built["version"] == installed(node) and built["built"] is False
