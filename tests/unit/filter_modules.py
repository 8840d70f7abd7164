"""Every filter the project's filter plugin files register, by name, as Ansible would load them; and the
preflight's node probe (roles/cluster_facts/files/node_probe.py), whose reads the preflight filters judge."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILTER_DIR = Path(__file__).resolve().parents[2] / "filter_plugins"
NODE_PROBE = FILTER_DIR.parent / "roles" / "cluster_facts" / "files" / "node_probe.py"


def node_probe() -> Any:
    """node_probe.py loaded as a module (it is a script the preflight runs on each host)."""
    spec = importlib.util.spec_from_file_location("node_probe", NODE_PROBE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_filters() -> dict[str, Callable[..., Any]]:
    """Each filter_plugins/*.py file's FilterModule merged; a name registered twice is an error."""
    if str(FILTER_DIR) not in sys.path:
        sys.path.insert(0, str(FILTER_DIR))
    names: dict[str, Callable[..., Any]] = {}
    for path in sorted(FILTER_DIR.glob("*.py")):
        module = importlib.import_module(path.stem)
        for name, func in module.FilterModule().filters().items():
            assert name not in names, f"{name} is registered by two filter files"
            names[name] = func
    return names
