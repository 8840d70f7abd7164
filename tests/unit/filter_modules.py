"""Every filter the project's filter plugin files register, by name, as Ansible would load them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILTER_DIR = Path(__file__).resolve().parents[2] / "filter_plugins"


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
