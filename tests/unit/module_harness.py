"""Run a module of library/ in-process, as Ansible would (its arguments in basic._ANSIBLE_ARGS), and a
stand-in for the Python of a node's Ray virtual environment that prints what the cluster probe would."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
import ansible.module_utils  # noqa: E402

if str(REPO / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(REPO / "module_utils"))
if str(REPO / "library") not in sys.path:
    sys.path.insert(0, str(REPO / "library"))

from ansible.module_utils.bittrader_cluster import MARKER, PROBE_MODULE  # noqa: E402


def run_module(name: str, args: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any]]:
    """Run library/NAME.py's main() with args; returns (exit code, the result it exited or failed with)."""
    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes

    module = importlib.import_module(name)
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args})))
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    captured: dict[str, Any] = {}

    def fake_exit(self: Any, **kw: Any) -> None:
        captured.update(kw)
        raise SystemExit(0)

    def fake_fail(self: Any, msg: str, **kw: Any) -> None:
        captured.update(kw, msg=msg, failed=True)
        raise SystemExit(1)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", fake_exit)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fake_fail)
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    return int(exit_info.value.code or 0), captured


def fake_python(tmp_path: Path, nodes: list[dict[str, Any]], rc: int = 0, stderr: str = "") -> str:
    """An executable that stands in for the venv's Python: refuses anything but `-m PROBE_MODULE ARGS` and a
    token file, records ARGS in calls.jsonl next to it, and prints what the probe would."""
    script = tmp_path / "python"
    payload = MARKER + json.dumps({"nodes": nodes, "driver_ray": "2.60.0", "driver_python": "3.11.2"})
    script.write_text(
        "#!/bin/sh\n"
        f'test "$1" = -m && test "$2" = {PROBE_MODULE} || exit 8\n'
        f"printf '%s\\n' \"$3\" >> {tmp_path / 'calls.jsonl'}\n"
        "echo 'noise from ray'\n"
        + (f"echo '{stderr}' >&2\n" if stderr else "")
        + f"echo '{payload}'\n"
        'test -n "$RAY_AUTH_TOKEN_PATH" || exit 9\n'
        f"exit {rc}\n"
    )
    script.chmod(0o755)
    return str(script)


def probe_calls(tmp_path: Path) -> list[dict[str, Any]]:
    """The JSON argument of each probe fake_python ran."""
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def node(ip: str, cpus: float, alive: bool = True, **task: Any) -> dict[str, Any]:
    """One node as the probe reports it (task: what its probe task saw)."""
    return {
        "node_id": ip.replace(".", ""),
        "alive": alive,
        "ip": ip,
        "hostname": f"h{ip[-1]}",
        "cpus": cpus,
        "memory": 8 * 2**30,
        "object_store_memory": 2**30,
        "is_head": ip.endswith(".10"),
        "death_reason": "" if alive else "heartbeat timeout",
        "task": task or None,
    }
