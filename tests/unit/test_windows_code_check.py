"""Issue 14 item 8 (Windows): verify reads the strategy code folder as the service account, in a session
without a desktop (as Ray's workers run), and fails clearly on OneDrive's online-only files, which such a
session cannot fetch. roles/worker_windows/files/code_check.py on real folders (the online-only attribute
injected), the bittrader_windows_code_problem filter, and the verify task that runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from ansible_render import REPO

ROLE = REPO / "roles" / "worker_windows"


def load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


code_check = load("bittrader_code_check_test", ROLE / "files" / "code_check.py")
bw = load("bittrader_windows_filters_code_test", REPO / "filter_plugins" / "bittrader_windows.py")


def strategy(tmp_path: Path) -> Path:
    root = tmp_path / "OneDrive" / "strategies"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sma.py").write_text("X = 1\n")
    (root / "notes.txt").write_text("hello\n")
    return root


def with_attributes(online: set[str]):
    """os.lstat, with the Windows attributes of an online-only OneDrive placeholder on the named files."""

    class Stat:
        def __init__(self, real: os.stat_result, attributes: int) -> None:
            self.st_mode = real.st_mode
            self.st_file_attributes = attributes

    def lstat(path: str) -> Any:
        real = os.lstat(path)
        flags = 0x00400000 | 0x00000400 if os.path.basename(path) in online else 0x20  # RECALL_ON_DATA_ACCESS
        return Stat(real, flags)

    return lstat


def test_a_folder_kept_on_the_device_is_fine(tmp_path: Path) -> None:
    report = code_check.check(str(strategy(tmp_path)), with_attributes(set()))
    assert report["exists"] and report["readable"] and report["files"] == 3
    assert report["online_only"] == [] and report["unreadable"] == []
    result = {"rc": 0, "stdout": json.dumps(report)}
    assert bw.code_problem(result, "C:\\Users\\trader\\OneDrive\\strategies", "trader") == ""


def test_online_only_files_fail_with_the_fix(tmp_path: Path) -> None:
    root = strategy(tmp_path)
    report = code_check.check(str(root), with_attributes({"sma.py"}))
    assert report["online_only_count"] == 1 and report["online_only"] == [str(root / "pkg" / "sma.py")]
    problem = bw.code_problem({"rc": 0, "stdout": json.dumps(report)}, str(root), "trader")
    assert problem.startswith(f"1 file(s) of the strategy code folder {root} are online-only (OneDrive Files On-Demand")
    assert "Always keep on this device" in problem


def test_an_unreadable_or_missing_folder_fails_clearly(tmp_path: Path) -> None:
    missing = code_check.check(str(tmp_path / "nowhere"))
    assert not missing["exists"] and "FileNotFoundError" in missing["error"]
    problem = bw.code_problem({"rc": 0, "stdout": json.dumps(missing)}, "D:\\nowhere", "trader")
    assert problem.startswith("trader cannot read the strategy code folder D:\\nowhere (FileNotFoundError")
    assert "without a desktop" in problem
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads anything
        locked = strategy(tmp_path)
        (locked / "pkg" / "sma.py").chmod(0)
        report = code_check.check(str(locked))
        assert report["unreadable"] and "sma.py" in report["unreadable"][0]
    failed = bw.code_problem({"rc": 1, "stdout": "", "stderr": "Access is denied."}, "D:\\x", "trader")
    assert failed == "trader could not run the check of the strategy code folder D:\\x (Access is denied.)"
    assert bw.code_problem({"skipped": True}, "D:\\x", "trader") == ""


def test_the_script_runs_as_a_command(tmp_path: Path) -> None:
    root = strategy(tmp_path)
    source = (ROLE / "files" / "code_check.py").read_text(encoding="utf-8")
    # As verify.yml runs it: python -B -c SOURCE FOLDER.
    done = subprocess.run([sys.executable, "-B", "-c", source, str(root)], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["files"] == 3 and report["readable"]


def test_verify_reads_the_folder_as_the_service_account_without_a_desktop() -> None:
    tasks = yaml.safe_load((ROLE / "tasks" / "verify.yml").read_text(encoding="utf-8"))
    task = next(t for t in tasks if t["name"].startswith("Read the strategy code folder as the service account"))
    assert task["become"] is True
    assert task["become_method"] == "ansible.builtin.runas"
    assert task["become_user"] == "{{ bittrader_user }}"
    assert task["become_flags"] == "logon_type=batch"  # session 0, like the scheduled task
    argv = task["ansible.windows.win_command"]["argv"]
    assert argv[0] == "{{ bittrader_venv_python }}" and argv[-1] == "{{ bittrader_code_path }}"
    assert "code_check.py" in argv[3]
    assert task["when"] == "bittrader_code_mode == 'folder'"
    final = next(t for t in tasks if "ansible.builtin.assert" in t)
    assert "worker_windows__code_problem | length == 0" in final["ansible.builtin.assert"]["that"]
    assert "bittrader_windows_code_problem" in final["vars"]["worker_windows__code_problem"]


def test_verify_fails_on_online_only_code_and_passes_on_a_kept_folder(tmp_path: Path) -> None:
    from test_windows_role import assert_fails, host_vars, load_tasks, template_data

    root = strategy(tmp_path)
    variables = host_vars("Jos\u00e9", "C:\\Users\\Jos\u00e9", "lan", "192.168.1.0/24", "192.168.1.30",
                          bittrader_code_mode="folder", bittrader_code_path=str(root))
    variables["worker_windows_verify"] = {
        "result": {"task": {"name": "\\Bittrader\\Bittrader Ray Worker", "state": "Running"}, "raylet_running": True,
                   "ray_process_count": 4, "problems": [], "log_file": "x", "log_tail": []}
    }
    variables["worker_windows__gcs"] = {"changed": False}
    tasks = load_tasks("verify.yml")
    final = next(t for t in tasks if "ansible.builtin.assert" in t)
    show = next(t for t in tasks if "ansible.builtin.debug" in t)
    for online, fails in [(set(), False), ({"sma.py"}, True)]:
        report = code_check.check(str(root), with_attributes(online))
        scope = {**variables, "worker_windows__code_check": {"rc": 0, "stdout": json.dumps(report)}}
        assert assert_fails(final, scope) is fails
        lines = template_data(show["ansible.builtin.debug"]["msg"], {**scope, **show["vars"]})
        code_line = next(line for line in lines if isinstance(line, str) and line.startswith("code (folder): "))
        assert ("Always keep on this device" in code_line) is fails
        message = template_data(final["ansible.builtin.assert"]["fail_msg"], {**scope, **final["vars"]})
        assert ("online-only" in message) is fails
