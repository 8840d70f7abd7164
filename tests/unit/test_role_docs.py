"""Each role variable is described once (meta/argument_specs.yml) and valued once (defaults/main.yml),
and docs/variables.md, generated from both by tools/role_docs.py, is up to date."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import role_docs  # noqa: E402

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file())


def _options(role: str) -> dict[str, dict[str, Any]]:
    """Every option of every entry point of the role, by name."""
    found: dict[str, dict[str, Any]] = {}
    for spec in role_docs.load_specs(role).values():
        found.update(spec.get("options") or {})
    return found


def test_docs_variables_md_is_up_to_date() -> None:
    assert (REPO / "docs" / "variables.md").read_text() == role_docs.render(), (
        "docs/variables.md is stale: run python tools/role_docs.py")


def test_the_check_mode_agrees() -> None:
    res = subprocess.run([sys.executable, str(REPO / "tools" / "role_docs.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_every_role_has_a_spec() -> None:
    assert sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir()) == ROLES


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_described_by_an_entry_point(role: str) -> None:
    """In main, or, for a variable only one entry point reads (cluster_facts' cluster_check), there."""
    missing = sorted(set(role_docs.load_defaults(role)) - set(_options(role)))
    assert not missing, f"roles/{role}/defaults/main.yml sets variables no entry point describes: {missing}"


@pytest.mark.parametrize("role", ROLES)
def test_every_optional_option_has_a_default(role: str) -> None:
    defaults = role_docs.load_defaults(role)
    lacking = sorted(name for name, spec in _options(role).items()
                     if not spec.get("required") and name not in defaults)
    assert not lacking, f"roles/{role}: optional options with no value in defaults/main.yml: {lacking}"


@pytest.mark.parametrize("role", ROLES)
def test_values_live_only_in_defaults_and_every_option_is_described(role: str) -> None:
    def walk(options: dict[str, Any], where: str) -> None:
        for name, spec in options.items():
            assert "default" not in spec, f"{where}.{name}: the value belongs in defaults/main.yml"
            assert spec.get("description"), f"{where}.{name} has no description"
            walk(spec.get("options") or {}, f"{where}.{name}")

    for entry, spec in role_docs.load_specs(role).items():
        walk(spec.get("options") or {}, f"{role}:{entry}")


@pytest.mark.parametrize("role", ROLES)
def test_defaults_carry_headings_not_descriptions(role: str) -> None:
    """Comments in defaults/main.yml are the header and section headings; the prose is in the spec."""
    path = REPO / "roles" / role / "defaults" / "main.yml"
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    body = lines[lines.index("") + 1:] if "" in lines else lines
    for line in body:
        assert not line.startswith("#") or line.startswith("# --- "), f"{path}: {line!r}"
    header = "\n".join(lines[: lines.index("")]) if "" in lines else ""
    assert "meta/argument_specs.yml" in header and "ansible-doc -t role -r roles" in header, path
    assert yaml.safe_load(path.read_text()) is not None


@pytest.mark.parametrize("role", ROLES)
def test_readmes_link_the_variables_instead_of_repeating_them(role: str) -> None:
    readme = (REPO / "roles" / role / "README.md").read_text()
    assert "docs/variables.md" in readme and "Entry point" in readme, role
    assert not re.search(r"^\|\s*`?variable`?\s*\|", readme, re.I | re.M), f"{role}/README.md repeats a variable table"
