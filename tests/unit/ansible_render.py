"""Render the roles' Jinja templates with Ansible's own templating engine (filters included), so
templates for hosts that do not run here (macOS plists, Windows scripts) are checked as Ansible would
render them. Used by the template tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar

REPO = Path(__file__).resolve().parents[2]
_initialised = False


def _trusted(value: Any) -> Any:
    """Mark strings as templates, as Ansible does for role files (values may refer to variables)."""
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    return value


def role_defaults(*roles: str) -> dict[str, Any]:
    """The merged defaults/main.yml (and vars/main.yml) of the named roles, in order."""
    merged: dict[str, Any] = {}
    for role in roles:
        for part in ("defaults/main.yml", "vars/main.yml"):
            path = REPO / "roles" / role / part
            if path.exists():
                merged.update(_trusted(yaml.safe_load(path.read_text()) or {}))
    return merged


def render(template: str | Path, variables: dict[str, Any]) -> str:
    """Render a template file (path relative to the repo, or absolute) with variables."""
    global _initialised
    if not _initialised:
        init_plugin_loader([str(REPO / "filter_plugins")])
        from ansible.plugins.loader import filter_loader

        filter_loader.add_directory(str(REPO / "filter_plugins"))
        _initialised = True
    path = Path(template)
    if not path.is_absolute():
        path = REPO / path
    loader = DataLoader()
    loader.set_basedir(str(path.parent))
    templar = Templar(loader=loader, variables={"ansible_managed": "Ansible managed", **variables})
    from ansible.template import trust_as_template

    return str(templar.template(trust_as_template(path.read_text())))


def render_value(value: Any, variables: dict[str, Any]) -> Any:
    """Template one variable's value (a role default that may refer to other variables)."""
    render("roles/cluster_facts/vars/main.yml", {})  # initialises the plugin loader once
    loader = DataLoader()
    return Templar(loader=loader, variables=variables).template(_trusted(value))


def node_config(system: str, role: str = "worker", **variables: Any) -> dict[str, Any]:
    """A node's node.json (roles/ray_node/templates/node.json.j2, which worker_windows renders too) for a host
    of the system (ansible_facts.system) and role, from cluster_facts' defaults and the given variables."""
    import json

    base = "C:\\ProgramData\\Bittrader" if system == "Win32NT" else "/home/bittrader/.bittrader_worker"
    values = {
        **role_defaults("cluster_facts"),
        "inventory_hostname": "n1", "bittrader_node_role": role, "bittrader_advertise_ip": "10.0.0.11",
        "bittrader_head_address": "10.0.0.10:6379", "bittrader_token_file": base + "/auth_token",
        "bittrader_ray_bin": base + "/venv/bin/ray", "bittrader_run_dir": base + "/run",
        "bittrader_log_dir": base + "/logs", "bittrader_ray_temp_path": base + "/ray",
        "worker_windows_paths": {"tmp_dir": base + "\\tmp"}, "ansible_facts": {"system": system},
        **variables,
    }
    data: dict[str, Any] = json.loads(render("roles/ray_node/templates/node.json.j2", values))
    return data
