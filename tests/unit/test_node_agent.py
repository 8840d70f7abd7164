"""The node agent's wheel (node_agent/build_wheel.py): every module and console script is in it, its
version follows the source, pip installs it offline into a venv where every program runs; and the
roles' install tasks (roles/ray_node/tasks/agent.yml) change a node once, then nothing."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "node_agent"
PACKAGE = AGENT / "src" / "bittrader_node_agent"
SCRIPTS = {
    "bittrader-node": "bittrader_node_agent.supervisor:main",
    "bittrader-throttle": "bittrader_node_agent.throttle.cli:main",
    "bittrader-health": "bittrader_node_agent.health:main",
    "bittrader-notify": "bittrader_node_agent.notify:main",
    "bittrader-verify": "bittrader_node_agent.verify:main",
}

_spec = importlib.util.spec_from_file_location("build_wheel", AGENT / "build_wheel.py")
assert _spec is not None and _spec.loader is not None
build_wheel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_wheel)


def build(out: Path, root: Path = AGENT) -> dict:
    done = subprocess.run([sys.executable, str(root / "build_wheel.py"), "--out", str(out)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def copy_agent(tmp_path: Path) -> Path:
    root = tmp_path / "node_agent"
    shutil.copytree(AGENT, root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    return root


def test_the_wheel_has_every_module_and_console_script(tmp_path: Path) -> None:
    result = build(tmp_path / "wheels")
    wheel = Path(result["wheel"])
    assert result["built"] is True and wheel.name == f"bittrader_node_agent-{result['version']}-py3-none-any.whl"
    assert result["version"].startswith("1.0.0+src.")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"bittrader_node_agent-{result['version']}.dist-info"
        modules = {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py")}
        assert modules <= names
        for expected in ("bittrader_node_agent/common.py", "bittrader_node_agent/throttle/policy.py",
                         "bittrader_node_agent/throttle/__main__.py"):
            assert expected in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        for script, target in SCRIPTS.items():
            assert f"{script} = {target}" in entry_points
        metadata = archive.read(f"{info}/METADATA").decode()
        assert "Name: bittrader-node-agent" in metadata and "Requires-Python: >=3.10" in metadata
        assert "Requires-Dist: psutil" in metadata
        assert "Root-Is-Purelib: true" in archive.read(f"{info}/WHEEL").decode()
        for line in archive.read(f"{info}/RECORD").decode().splitlines():
            name, digest, size = line.split(",")
            if name.endswith("RECORD"):
                continue
            content = archive.read(name)
            assert int(size) == len(content)
            expected = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
            assert digest == "sha256=" + expected
    # pyproject.toml (what setuptools builds) names the same console scripts.
    project = tomllib.loads((AGENT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == SCRIPTS


def test_the_version_follows_the_source_and_an_unchanged_source_is_not_rebuilt(tmp_path: Path) -> None:
    root = copy_agent(tmp_path)
    first = build(tmp_path / "wheels", root)
    data = Path(first["wheel"]).read_bytes()
    again = build(tmp_path / "wheels", root)
    assert again == {**first, "built": False}
    assert Path(first["wheel"]).read_bytes() == data
    # Reproducible: the same source gives the same bytes elsewhere.
    assert Path(build(tmp_path / "elsewhere", root)["wheel"]).read_bytes() == data
    # A new module (the cluster probe H3 adds, say) is packed without touching the build.
    (root / "src/bittrader_node_agent/cluster_probe.py").write_text('"""A new module."""\n')
    changed = build(tmp_path / "wheels", root)
    assert changed["built"] is True and changed["version"] != first["version"]
    with zipfile.ZipFile(changed["wheel"]) as archive:
        assert "bittrader_node_agent/cluster_probe.py" in archive.namelist()
    assert not Path(first["wheel"]).exists()  # the older wheel is gone from the cache
    assert build_wheel.version(root) == changed["version"]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv (with the test's psutil) where pip installed the agent offline, as on a node."""
    path = tmp_path_factory.mktemp("agent") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True, timeout=120)
    wheel = build(path.parent / "wheels")["wheel"]
    subprocess.run([str(path / "bin/python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel],
                   check=True, timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return path


def test_pip_installs_every_program_into_the_venv(venv: Path) -> None:
    # Out of the repository (cwd /): the programs come from the venv, not from node_agent/src.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for script in SCRIPTS:
        done = subprocess.run([str(venv / "bin" / script), "--help"], capture_output=True, text=True, cwd="/",
                              env=env, timeout=60, check=False)
        assert done.returncode == 0 and "usage:" in done.stdout, (script, done.stderr)
        # The services run VENV/bin/python VENV/bin/SCRIPT: the console script is a Python file.
        done = subprocess.run([str(venv / "bin/python"), str(venv / "bin" / script), "--help"],
                              capture_output=True, text=True, cwd="/", env=env, timeout=60, check=False)
        assert done.returncode == 0, (script, done.stderr)
    for module in ("supervisor", "throttle", "health", "notify", "verify"):
        done = subprocess.run([str(venv / "bin/python"), "-m", f"bittrader_node_agent.{module}", "--help"],
                              capture_output=True, text=True, cwd="/", env=env, timeout=60, check=False)
        assert done.returncode == 0 and "usage:" in done.stdout, (module, done.stderr)
    where = subprocess.run([str(venv / "bin/python"), "-c", "import bittrader_node_agent as a; print(a.__file__)"],
                           capture_output=True, text=True, cwd="/", env=env, timeout=60, check=True)
    assert where.stdout.startswith(str(venv))


def test_the_install_tasks_run_only_when_the_version_differs() -> None:
    tasks = yaml.safe_load((REPO / "roles/ray_node/tasks/agent.yml").read_text())
    read = next(t for t in tasks if t["name"] == "Read the node agent's installed version")
    assert read["changed_when"] is False and read["check_mode"] is False
    block = next(t for t in tasks if "block" in t)
    assert block["when"] == "ray_node__agent_installed.stdout | default('') | trim != ray_node__agent.version"
    installs = [t for t in block["block"] if "ansible.builtin.command" in t]
    for task in installs:
        argv = task["ansible.builtin.command"]["argv"]
        assert {"--no-deps", "--no-index"} <= set(argv)
    build_task = yaml.safe_load((REPO / "roles/ray_node/tasks/agent-build.yml").read_text())[0]
    assert build_task["run_once"] is True and build_task["delegate_to"] == "localhost"
    assert build_task["changed_when"] == "(ray_node__agent_build.stdout | from_json).built"
    # The staged environment of an upgrade gets the agent too.
    stage = yaml.safe_load((REPO / "roles/ray_node/tasks/upgrade_stage.yml").read_text())
    staged = [t for t in stage if t.get("ansible.builtin.include_tasks") == "agent.yml"]
    assert staged and staged[0]["vars"]["ray_node_agent_venv"] == "{{ ray_node_upgrade.new_path }}"
