"""Every role entry point that another role or playbook calls (include_role/import_role with
tasks_from) is declared in the target role's meta/argument_specs.yml, so that Ansible checks its
variables before the first task runs, and says at its top that it is an entry point. Files no one
else calls stay internal to their role."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
ROLE_MODULES = {"ansible.builtin.include_role", "include_role", "ansible.builtin.import_role", "import_role"}
CALLERS = [REPO / "site.yml", *sorted((REPO / "playbooks").rglob("*.yml")), *sorted(ROLES.rglob("tasks/*.yml")),
           *sorted((REPO / "tests").glob("fake_*/*.yml")), *sorted((REPO / "molecule").rglob("*.yml"))]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ROLE_MODULES and isinstance(value, dict):
                yield value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _role_names(name: str) -> list[str]:
    """A role name, or every quoted role name in a templated one ("{{ 'a' if x else 'b' }}")."""
    if "{{" not in name:
        return [name]
    names = [n for n in re.findall(r"'([a-z_]+)'", name) if (ROLES / n).is_dir()]
    assert names, f"cannot tell which roles {name!r} names"
    return names


def calls() -> list[tuple[str, str, str]]:
    """(caller, role, entry point) for every include_role/import_role with tasks_from."""
    found: list[tuple[str, str, str]] = []
    for path in CALLERS:
        for args in _walk(yaml.safe_load(path.read_text())):
            if "tasks_from" not in args:
                continue
            entry = re.sub(r"\.ya?ml$", "", str(args["tasks_from"]))
            for role in _role_names(str(args["name"])):
                found.append((str(path.relative_to(REPO)), role, entry))
    return found


def specs(role: str) -> dict[str, Any]:
    path = ROLES / role / "meta" / "argument_specs.yml"
    data: dict[str, Any] = yaml.safe_load(path.read_text())["argument_specs"]
    return data


def test_the_walk_finds_the_known_calls() -> None:
    found = {(role, entry) for _, role, entry in calls()}
    assert ("ray_node", "control") in found and ("worker_windows", "control") in found
    assert ("ray_node", "upgrade_switch") in found and ("cluster_facts", "preflight") in found
    assert len(calls()) >= 40


@pytest.mark.parametrize(("caller", "role", "entry"), sorted(set(calls())))
def test_every_called_entry_point_is_declared(caller: str, role: str, entry: str) -> None:
    declared = specs(role)
    assert entry in declared, f"{caller} calls {role} tasks_from={entry}: not in roles/{role}/meta/argument_specs.yml"
    assert (ROLES / role / "tasks" / f"{entry}.yml").is_file()


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if p.is_dir()))
def test_declared_entry_points_are_documented_and_marked(role: str) -> None:
    for entry, spec in specs(role).items():
        assert spec.get("short_description") and spec.get("description"), (role, entry)
        assert "options" in spec, (role, entry)
        tasks = ROLES / role / "tasks" / f"{entry}.yml"
        assert tasks.is_file(), tasks
        if entry != "main":
            head = tasks.read_text().split("\n- ", 1)[0]
            assert "Entry point" in head, f"{tasks}: say at the top that it is an entry point"


def test_every_declared_entry_point_is_used() -> None:
    """A declared entry point no one calls is an internal file with a needless spec (main excepted)."""
    used = {(role, entry) for _, role, entry in calls()}
    for role in sorted(p.name for p in ROLES.iterdir() if p.is_dir()):
        for entry in specs(role):
            assert entry == "main" or (role, entry) in used, (role, entry)
