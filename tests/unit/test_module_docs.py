"""Each module's documentation, as ansible-doc renders it (shared fragments merged), matches the
options its AnsibleModule accepts: names, types, required and defaults, as ansible-core's sanity test
checks for its own modules."""

from __future__ import annotations

import importlib
import json
import subprocess
from typing import Any

import pytest
from module_harness import REPO  # puts library/ and module_utils/ where the modules import from

MODULES = ["ray_cluster_info", "ray_cluster_check"]


def _rendered(module: str) -> dict[str, Any]:
    res = subprocess.run(["ansible-doc", "--json", "-M", str(REPO / "library"), module], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)[module]["doc"]
    return doc


def _argument_spec(module: str) -> dict[str, Any]:
    arguments: dict[str, Any] = importlib.import_module(module).ARGUMENT_SPEC
    return arguments


@pytest.mark.parametrize("module", MODULES)
def test_the_documentation_matches_the_argument_spec(module: str) -> None:
    doc, spec = _rendered(module), _argument_spec(module)
    assert sorted(doc["options"]) == sorted(spec), module
    for name, arg in spec.items():
        documented = doc["options"][name]
        assert documented.get("type", "str") == arg.get("type", "str"), (module, name)
        assert bool(documented.get("required")) == bool(arg.get("required")), (module, name)
        assert documented.get("default") == arg.get("default"), (module, name)


@pytest.mark.parametrize("module", MODULES)
def test_the_shared_fragment_gives_attributes_and_requirements(module: str) -> None:
    doc = _rendered(module)
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["check_mode"]["details"]  # each module says what check mode does for it
    assert doc["attributes"]["diff_mode"]["support"] == "none"
    assert any("bittrader_node_agent" in r for r in doc["requirements"])
