"""The real-OS workflows (.github/workflows) pass the offline linters ./lab test runs, and those
linters do catch a broken workflow (so a green ./lab test means something)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (requirements.txt pins it)")
    return found


def lint(paths: list[Path]) -> list[subprocess.CompletedProcess[str]]:
    schema = [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, paths)]
    return [subprocess.run(cmd, capture_output=True, text=True, check=False)
            for cmd in (schema, [tool("actionlint"), *map(str, paths)])]


def test_there_are_workflows_for_macos_and_windows() -> None:
    runners = set()
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            runners.add(job["runs-on"])
    assert {"macos-14", "windows-latest"} <= runners


def test_the_workflows_pass_both_linters() -> None:
    for done in lint(WORKFLOWS):
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("breakage", "linter"),
    [
        (lambda w: w["jobs"]["macos"].pop("runs-on"), 0),  # the schema: a job without runs-on
        (lambda w: w["jobs"]["macos"]["steps"].insert(0, {"run": "echo ${{ secrets.X.y.z( }}"}), 1),
        (lambda w: w["jobs"]["windows-node"].update({"needs": "no-such-job"}), 1),
    ],
)
def test_the_linters_catch_a_broken_workflow(tmp_path: Path, breakage, linter: int) -> None:  # type: ignore[no-untyped-def]
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "real-os.yml").read_text())
    workflow = {("on" if key is True else key): value for key, value in workflow.items()}  # YAML 1.1 reads on: as True
    intact = tmp_path / "intact.yml"
    intact.write_text(yaml.safe_dump(workflow, sort_keys=False))
    assert lint([intact])[linter].returncode == 0  # the round trip alone breaks nothing
    breakage(workflow)
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(workflow, sort_keys=False))
    done = lint([broken])[linter]
    assert done.returncode != 0, done.stdout
