"""Lookup plugin: what a run of the node roles depends on, read once on the admin machine."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: bittrader_run_inputs
short_description: The node roles' variable names and a digest of the project's code
description:
  - Returns a dict with C(names), every variable the given roles declare in their
    C(meta/argument_specs.yml) (all entry points), and C(digest), a SHA-256 of every file below the given
    roles and code folders (paths and contents, in sorted order).
  - The node roles hash these, with the variables' values, into the fingerprint that
    M(bittrader_node_state) compares with a node's record; any change of the roles, the modules, the
    filters or the node agent's source makes every node run all its tasks once.
options:
  _terms:
    description: Folders, relative to the project root (the folder of ansible.cfg) or absolute.
    type: list
    elements: str
    required: true
  roles:
    description: Role names whose argument specs declare the variables.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Read the run's inputs once
  ansible.builtin.set_fact:
    inputs: "{{ lookup('bittrader_run_inputs', 'roles', 'library', roles=['ray_node', 'head']) }}"
  run_once: true
"""

RETURN = r"""
_raw:
  description: One dict, C({names, digest}).
  type: list
  elements: dict
"""

import hashlib  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def files_below(root: Path) -> list[Path]:
    """Every file below root (root itself when it is a file), caches left out, in sorted order."""
    if root.is_file():
        return [root]
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(set(dirs) - SKIP_DIRS)
        found += [Path(folder) / name for name in names if not name.endswith(".pyc")]
    return sorted(found)


def tree_digest(roots: list[Path]) -> str:
    """SHA-256 over each file's path (relative to the project) and content, in sorted order."""
    h = hashlib.sha256()
    for root in sorted(roots):
        if not root.exists():
            raise AnsibleLookupError(f"bittrader_run_inputs: {root} does not exist")
        for path in files_below(root):
            rel = path.relative_to(PROJECT) if path.is_relative_to(PROJECT) else path
            h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def spec_variables(specs: dict[str, Any]) -> list[str]:
    """Every option name of every entry point of one role's argument specs."""
    names: set[str] = set()
    for entry in (specs.get("argument_specs") or {}).values():
        names.update((entry or {}).get("options") or {})
    return sorted(names)


class LookupModule(LookupBase):
    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[Any]:
        self.set_options(var_options=variables, direct=kwargs)
        roots = [Path(t) if os.path.isabs(t) else PROJECT / t for t in terms]
        names: set[str] = set()
        for role in self.get_option("roles"):
            spec = PROJECT / "roles" / role / "meta" / "argument_specs.yml"
            try:
                names.update(spec_variables(yaml.safe_load(spec.read_text(encoding="utf-8")) or {}))
            except OSError as exc:
                raise AnsibleLookupError(f"bittrader_run_inputs: cannot read {spec}: {exc}") from exc
        return [{"names": sorted(names), "digest": tree_digest(roots)}]
