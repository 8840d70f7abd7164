"""The project's layout rules that no linter checks for us."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
FACTS_ROLE = REPO / "roles" / "cluster_facts"


def _names_defined(tasks: list[dict[str, Any]]) -> set[str]:
    """Variables a task list defines: set_fact keys and registered results, blocks included."""
    names: set[str] = set()
    for task in tasks or []:
        for key in ("block", "rescue", "always"):
            names |= _names_defined(task.get(key, []))
        if "register" in task:
            names.add(task["register"])
        for module in ("ansible.builtin.set_fact", "set_fact"):
            if isinstance(task.get(module), dict):
                names |= {k for k in task[module] if k != "cacheable"}
    return names


def test_the_facts_role_defines_only_the_projects_public_namespace() -> None:
    """cluster_facts owns bittrader_* (.ansible-lint-ignore waives the role-prefix rule for it alone):
    everything it defines, in defaults, vars or tasks, carries that prefix or the role's own."""
    names = set(yaml.safe_load((FACTS_ROLE / "defaults" / "main.yml").read_text()))
    names |= set(yaml.safe_load((FACTS_ROLE / "vars" / "main.yml").read_text()))
    for tasks in (FACTS_ROLE / "tasks").glob("*.yml"):
        names |= _names_defined(yaml.safe_load(tasks.read_text()))
    stray = sorted(n for n in names if not n.lstrip("_").startswith(("bittrader_", "cluster_facts_")))
    assert names and not stray, stray


def test_the_lint_waiver_names_only_files_of_the_facts_role() -> None:
    lines = [ln for ln in (REPO / ".ansible-lint-ignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    for line in lines:
        path, rule = line.split()
        assert path.startswith("roles/cluster_facts/") and rule == "var-naming[no-role-prefix]", line
        assert (REPO / path).is_file(), path


def test_the_tailscale_role_stands_alone() -> None:
    """roles/tailscale is usable in another project: no dependency on this project's roles, filters or
    bittrader_* variables; site.yml hands its tailscale_ip to cluster_facts from the outside."""
    role = REPO / "roles" / "tailscale"
    assert yaml.safe_load((role / "meta" / "main.yml").read_text())["dependencies"] == []
    for path in sorted([*role.glob("tasks/*.yml"), *role.glob("defaults/*.yml"), role / "meta" / "argument_specs.yml"]):
        text = path.read_text()
        assert "bittrader" not in text.lower(), path
        assert "cluster_facts" not in text, path
