"""The node's recorded state: library/bittrader_node_state.py (run in-process, with a stand-in systemctl and
a stand-in venv Python that behave like the real ones), the digests filter and the run-inputs lookup."""

from __future__ import annotations

import getpass
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from module_harness import REPO, run_module

sys.path.insert(0, str(REPO / "filter_plugins"))
sys.path.insert(0, str(REPO / "lookup_plugins"))
import bittrader_run_inputs as run_inputs
import bittrader_state

# An ordinary account (the tests may run as root, which the module refuses as the Ray account).
USER = getpass.getuser() if os.geteuid() != 0 else "nobody"
VENV_STATE = (REPO / "roles" / "ray_node" / "files" / "venv_state.py").read_text()


def executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Any]:
    """A node's files, a systemctl that answers from units.json (like the real one: one line per unit, rc 0
    only when every unit is enabled/active) and the venv's Python (the controller's, which has pytest)."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "node.json").write_text('{"num_cpus": 1}\n')
    (tmp_path / "base" / "auth_token").write_text("s3cret")
    (tmp_path / "base" / "auth_token").chmod(0o600)
    units = tmp_path / "units.json"
    units.write_text(json.dumps({"bittrader-ray-worker.service": ["enabled", "active"]}))
    systemctl = executable(
        tmp_path / "systemctl",
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"units = json.load(open({str(units)!r}))\n"
        "verb, names = sys.argv[1], sys.argv[2:]\n"
        "col = {'is-enabled': 0, 'is-active': 1}[verb]\n"
        "answers = [units.get(n, ['not-found', 'inactive'])[col] for n in names]\n"
        "print('\\n'.join(answers))\n"
        "sys.exit(0 if all(a in ('enabled', 'active') for a in answers) else 3)\n",
    )
    return {
        "tmp": tmp_path,
        "record": str(tmp_path / "facts.d" / "bittrader_node.fact"),
        "units": units,
        "systemctl": systemctl,
        "files": [str(tmp_path / "base" / "node.json"), str(tmp_path / "base" / "auth_token"),
                  str(tmp_path / "base" / "throttle.json")],
        "folders": [str(tmp_path / "base")],
    }


def venv(requirements: list[str] | None = None, python_version: str | None = None) -> dict[str, Any]:
    import platform

    return {
        "python": sys.executable,
        "python_version": python_version or platform.python_version(),
        "requirements": requirements if requirements is not None else [f"pytest=={pytest.__version__}"],
        "script": VENV_STATE,
    }


INPUTS = {"bittrader_ray_version": "aaaa", "bittrader_num_cpus": "bbbb", "(code)": "cccc"}


def record(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch, **extra: Any) -> dict[str, Any]:
    args = {
        "state": "recorded",
        "path": node["record"],
        "inputs": INPUTS,
        "files": node["files"],
        "folders": node["folders"],
        "services": ["bittrader-ray-worker.service"],
        **extra,
    }
    code, out = run_module("bittrader_node_state", args, monkeypatch)
    assert code == 0, out
    return out


def check(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch, **extra: Any) -> dict[str, Any]:
    args = {
        "path": node["record"],
        "inputs": INPUTS,
        "user": USER,
        "service_command": node["systemctl"],
        "venv": venv(),
        **extra,
    }
    code, out = run_module("bittrader_node_state", args, monkeypatch)
    assert code == 0, out
    return out


def test_no_record_is_not_current(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    out = check(node, monkeypatch)
    assert out["current"] is False and out["drift"] == ["no record yet"] and out["changed"] is False


def test_a_recorded_node_is_current_and_the_record_keeps_no_secret(
    node: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = record(node, monkeypatch)
    assert first["changed"] is True
    text = Path(node["record"]).read_text()
    assert "s3cret" not in text  # checksums only
    assert stat.S_IMODE(os.stat(node["record"]).st_mode) == 0o600
    saved = json.loads(text)
    assert saved["files"][node["files"][2]] is None  # absent, and must stay absent
    assert saved["files"][node["files"][1]]["mode"] == "0600"
    assert record(node, monkeypatch)["changed"] is False  # same content: no change
    out = check(node, monkeypatch)
    assert out["current"] is True and out["drift"] == []
    assert out["files"][node["files"][1]]["sha1"] == first["files"][node["files"][1]]["sha1"]


def test_record_in_check_mode_writes_nothing(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    out = record(node, monkeypatch, _ansible_check_mode=True)
    assert out["changed"] is True and not Path(node["record"]).exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda n: Path(n["files"][0]).write_text('{"num_cpus": 2}\n'), "node.json: content changed"),
        (lambda n: Path(n["files"][1]).chmod(0o644), "auth_token: mode changed"),
        (lambda n: Path(n["files"][0]).unlink(), "node.json: file missing"),
        (lambda n: Path(n["files"][2]).write_text("{}"), "throttle.json: file appeared"),
        (lambda n: Path(n["folders"][0]).chmod(0o777), "base: mode changed"),
    ],
)
def test_drift_of_a_managed_path_is_named(
    node: dict[str, Any], monkeypatch: pytest.MonkeyPatch, change: Any, expected: str
) -> None:
    record(node, monkeypatch)
    change(node)
    out = check(node, monkeypatch)
    assert out["current"] is False
    assert any(line.endswith(expected) for line in out["drift"]), out["drift"]


def test_changed_inputs_are_named(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    record(node, monkeypatch)
    out = check(node, monkeypatch, inputs={**INPUTS, "bittrader_num_cpus": "dddd", "bittrader_new": "eeee"})
    assert out["current"] is False
    assert out["drift"] == ["inputs changed: bittrader_new, bittrader_num_cpus"]
    many = {f"v{i:02d}": "x" for i in range(12)}
    out = check(node, monkeypatch, inputs=many)
    assert out["drift"][0].endswith("and 7 more")  # 15 names differ, 8 shown


def test_a_refreshable_input_alone_asks_for_a_refresh(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The head's token changed and nothing else: the slower reads are still made, and refresh names it."""
    record(node, monkeypatch, inputs={**INPUTS, "(head token)": "1111"})
    rotated = {**INPUTS, "(head token)": "2222"}
    out = check(node, monkeypatch, inputs=rotated, refreshable=["(head token)"])
    assert out["current"] is False and out["refresh"] == ["(head token)"]
    assert out["drift"] == ["inputs changed: (head token)"]
    # Without refreshable, the same change is an ordinary drift.
    assert check(node, monkeypatch, inputs=rotated)["refresh"] == []
    # A unit restarting meanwhile (the worker's Ray, refused by the head's new token) is no reason to
    # provision; a disabled one (which only the slower reads see) makes it a drift.
    node["units"].write_text(json.dumps({"bittrader-ray-worker.service": ["enabled", "activating"]}))
    assert check(node, monkeypatch, inputs=rotated, refreshable=["(head token)"])["refresh"] == ["(head token)"]
    node["units"].write_text(json.dumps({"bittrader-ray-worker.service": ["disabled", "failed"]}))
    out = check(node, monkeypatch, inputs=rotated, refreshable=["(head token)"])
    assert out["refresh"] == []
    assert out["drift"] == ["bittrader-ray-worker.service: disabled (wants enabled)", "inputs changed: (head token)"]
    node["units"].write_text(json.dumps({"bittrader-ray-worker.service": ["enabled", "active"]}))
    out = check(node, monkeypatch, inputs={**rotated, "bittrader_num_cpus": "dddd"}, refreshable=["(head token)"])
    assert out["refresh"] == []
    assert out["drift"] == ["inputs changed: bittrader_num_cpus", "inputs changed: (head token)"]
    # The refresh's record keeps the record's lists (the firewall and units it did not touch), read again.
    rules = node["tmp"] / "rules.txt"
    rules.write_text("table inet bittrader { ... }\n")
    record(node, monkeypatch, inputs={**INPUTS, "(head token)": "1111"}, probes=[["cat", str(rules)]])
    Path(node["files"][1]).write_text("n3w")
    refreshed = record(node, monkeypatch, inputs=rotated, files=[], folders=[], services=[], from_record=True)
    assert refreshed["changed"] is True and set(refreshed["files"]) == set(node["files"])
    saved = json.loads(Path(node["record"]).read_text())
    assert saved["services"] == ["bittrader-ray-worker.service"] and saved["probes"][0]["argv"] == ["cat", str(rules)]
    assert saved["folders"] and saved["inputs"] == rotated
    assert check(node, monkeypatch, inputs=rotated, refreshable=["(head token)"])["current"] is True
    # Unchanged, it is no drift at all.
    assert check(node, monkeypatch, inputs=rotated, refreshable=["(head token)"])["drift"] == []


def test_a_stopped_or_disabled_unit_is_drift(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    record(node, monkeypatch)
    node["units"].write_text(json.dumps({"bittrader-ray-worker.service": ["disabled", "failed"]}))
    out = check(node, monkeypatch)
    assert out["current"] is False
    assert out["drift"] == [
        "bittrader-ray-worker.service: disabled (wants enabled)",
        "bittrader-ray-worker.service: failed (wants active)",
    ]


def test_a_venv_off_its_pins_is_drift(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    record(node, monkeypatch)
    out = check(node, monkeypatch, venv=venv(requirements=["pytest==0.0.1"]))
    assert out["drift"] == ["venv packages differ from the pins"]
    out = check(node, monkeypatch, venv=venv(python_version="3.9.6"))
    assert out["drift"][0].startswith("venv Python ") and "(the pin is 3.9.6)" in out["drift"][0]
    out = check(node, monkeypatch, venv={**venv(), "python": str(node["tmp"] / "missing" / "python")})
    assert out["drift"] == [f"{node['tmp'] / 'missing' / 'python'}: missing"]


def test_a_missing_or_root_account_is_drift(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    record(node, monkeypatch)
    assert check(node, monkeypatch, user="no-such-user-bt")["drift"] == ["account no-such-user-bt: missing"]
    assert check(node, monkeypatch, user="root")["drift"] == ["account root: uid 0"]


def test_probes_compare_a_commands_output(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    rules = node["tmp"] / "rules.txt"
    rules.write_text("table inet bittrader { ... }\n")
    record(node, monkeypatch, probes=[["cat", str(rules)]])
    assert check(node, monkeypatch)["current"] is True
    rules.write_text("")  # the rules were flushed
    assert check(node, monkeypatch)["drift"] == [f"cat {rules}: output changed"]


def test_a_record_of_another_schema_is_no_record(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    Path(node["record"]).parent.mkdir(parents=True)
    Path(node["record"]).write_text(json.dumps({"schema": "old", "fingerprint": "x"}))
    assert check(node, monkeypatch)["drift"] == ["no record yet"]


def test_input_digests_are_short_stable_and_keep_no_value() -> None:
    digests = bittrader_state.input_digests({"b": {"y": 1, "x": [2]}, "a": "vault-secret"})
    assert digests == bittrader_state.input_digests({"a": "vault-secret", "b": {"x": [2], "y": 1}})
    assert all(len(v) == bittrader_state.DIGEST_CHARS for v in digests.values())
    assert "vault-secret" not in json.dumps(digests)
    assert digests["a"] != bittrader_state.input_digests({"a": "vault-secreT"})["a"]


def test_run_inputs_name_every_declared_variable_and_hash_the_code(tmp_path: Path) -> None:
    names = run_inputs.spec_variables(
        {"argument_specs": {"main": {"options": {"b": {}, "a": {}}}, "other": {"options": {"c": {}}}, "x": None}}
    )
    assert names == ["a", "b", "c"]
    tree = tmp_path / "tree"
    (tree / "sub" / "__pycache__").mkdir(parents=True)
    (tree / "sub" / "f.yml").write_text("one")
    (tree / "sub" / "__pycache__" / "f.cpython-311.pyc").write_bytes(b"\0")
    first = run_inputs.tree_digest([tree])
    (tree / "sub" / "__pycache__" / "g.pyc").write_bytes(b"\1")  # caches do not count
    assert run_inputs.tree_digest([tree]) == first
    (tree / "sub" / "f.yml").write_text("two")
    assert run_inputs.tree_digest([tree]) != first
    # the real roles, through Ansible's plugin loader: every variable of ray_node's specs is an input
    from ansible.plugins.loader import lookup_loader

    lookup_loader.add_directory(str(REPO / "lookup_plugins"))
    lookup = lookup_loader.get("bittrader_run_inputs")
    assert lookup is not None
    [result] = lookup.run(["library"], {}, roles=["ray_node"])
    assert "ray_node_skip_unchanged" in result["names"] and "ray_node_state_file" in result["names"]
    assert result["digest"] == run_inputs.tree_digest([REPO / "library"])


def test_registered_results_are_not_inputs() -> None:
    """A registered result (stdout, ssh noise) differs from run to run: as an input it would make every
    re-run provision again. Every bittrader_* name a task registers is in ray_node's ignored list."""
    import re

    import yaml

    ignored = set(yaml.safe_load((REPO / "roles/ray_node/vars/main.yml").read_text())["ray_node__state_ignored"])
    registered = set()
    for path in [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("playbooks/*.yml"), *REPO.glob("playbooks/tasks/*.yml")]:
        registered |= set(re.findall(r"^\s*register:\s*(bittrader_[a-z]\w*)\s*$", path.read_text(), re.M))
    assert registered, "no registered bittrader_* name found: the pattern is stale"
    assert registered <= ignored, sorted(registered - ignored)
