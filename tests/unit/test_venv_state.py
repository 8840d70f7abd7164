"""roles/ray_node/files/venv_state.py: what venv.yml reads to decide whether pip must run. A requirement
with extras (ray[default,tune]) counts as installed only when every package its extras bring is there:
before, a node with ray[default] at the pin counted as up to date after tune was added to
bittrader_ray_extras, and pip never installed Tune's dependencies."""

from __future__ import annotations

import importlib.metadata as m
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "roles/ray_node/files/venv_state.py"
_spec = importlib.util.spec_from_file_location("venv_state", SCRIPT)
assert _spec and _spec.loader
vs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs)

RAY_REQUIRES = [
    "click>=7.0",
    'aiohttp>=3.7; extra == "default"',
    'pandas; extra == "tune"',
    'pyarrow>=17.0.0; extra == "tune"',
    'pydantic<3,>=2.5.0; python_version < "3.99" and extra == "tune"',
    'ray[default]; extra == "all"',
    'gymnasium==1.1.1; extra == "rllib"',
]


def fake(installed: dict[str, str]) -> tuple[object, object]:
    def version(name: str) -> str:
        key = name.lower()
        if key not in installed:
            raise m.PackageNotFoundError(name)
        return installed[key]

    def requires(name: str) -> list[str] | None:
        return RAY_REQUIRES if name.lower() == "ray" else []

    return version, requires


def test_a_pinned_ray_with_its_extras_dependencies_is_up_to_date() -> None:
    version, requires = fake({"ray": "2.60.0", "aiohttp": "3.9.0", "pandas": "3.1.1", "pyarrow": "26.0.1",
                              "pydantic": "2.12.0"})
    found = vs.state(["ray[default,tune]==2.60.0"], version, requires)
    assert found["pinned"] is True
    assert found["packages"] == {"ray[default,tune]==2.60.0": "2.60.0"}
    assert found["extras_missing"] == {}


def test_ray_at_the_pin_without_the_tune_extras_packages_is_not() -> None:
    version, requires = fake({"ray": "2.60.0", "aiohttp": "3.9.0"})
    found = vs.state(["ray[default,tune]==2.60.0", "numpy==2.4.6"], version, requires)
    assert found["pinned"] is False
    assert found["extras_missing"] == {"ray[default,tune]==2.60.0": [
        'pandas; extra == "tune"', 'pyarrow>=17.0.0; extra == "tune"',
        'pydantic<3,>=2.5.0; python_version < "3.99" and extra == "tune"']}
    # The same venv is up to date for a cluster that asks for ray[default] only (and has numpy).
    version, requires = fake({"ray": "2.60.0", "aiohttp": "3.9.0", "numpy": "2.4.6"})
    assert vs.state(["ray[default]==2.60.0", "numpy==2.4.6"], version, requires)["pinned"] is True


def test_an_extras_package_below_its_required_version_is_not_up_to_date() -> None:
    version, requires = fake({"ray": "2.60.0", "aiohttp": "3.9.0", "pandas": "3.1.1", "pyarrow": "16.0.0",
                              "pydantic": "2.12.0"})
    found = vs.state(["ray[default,tune]==2.60.0"], version, requires)
    assert found["pinned"] is False
    assert found["extras_missing"] == {"ray[default,tune]==2.60.0": ['pyarrow>=17.0.0; extra == "tune"']}


def test_other_pins_are_checked_as_before() -> None:
    version, requires = fake({"ray": "2.59.0", "psutil": "7.2.2"})
    found = vs.state(["ray==2.60.0", "psutil==7.2.2", "optuna==5.0.0"], version, requires)
    assert found["pinned"] is False
    assert found["packages"] == {"ray==2.60.0": "2.59.0", "psutil==7.2.2": "7.2.2", "optuna==5.0.0": None}


def test_the_script_runs_as_venv_yml_runs_it() -> None:
    """venv.yml passes the file's text to python -c with the requirements as JSON."""
    done = subprocess.run([sys.executable, "-c", SCRIPT.read_text(encoding="utf-8"), json.dumps(["pytest==0.0.1"])],
                          capture_output=True, text=True, check=True)
    found = json.loads(done.stdout)
    assert found["pinned"] is False and found["packages"]["pytest==0.0.1"] == m.version("pytest")
    assert set(found) == {"python", "pinned", "packages", "extras_missing"}
