"""The throttle's modules (node_agent/src/bittrader_node_agent/throttle/) as one namespace, `bt`, so
the throttle's tests read every name as before the split; tests/conftest.py puts the source on sys.path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from bittrader_node_agent import common
from bittrader_node_agent.throttle import cli, config, limiters, loop, policy, raysync, sources

MODULES = (common, config, policy, sources, limiters, raysync, loop, cli)


def _merged() -> SimpleNamespace:
    names: dict[str, object] = {}
    for module in MODULES:
        names.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    return SimpleNamespace(**names)


bt = _merged()


def console_script(path: Path, entry: str) -> Path:
    """A launcher like the one pip writes for a console script of the wheel ("module:function"), which
    finds the package in node_agent/src."""
    module, function = entry.split(":")
    src = str(Path(__file__).resolve().parents[2] / "node_agent" / "src")
    path.write_text(
        f"import sys\nsys.path.insert(0, {src!r})\nfrom {module} import {function}\nsys.exit({function}())\n"
    )
    path.chmod(0o755)
    return path
