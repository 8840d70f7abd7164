"""The user's strategy code on the nodes (bittrader_code_mode): the paths the role derives for Linux,
macOS and Windows, the .pth file rendered with Ansible's templating and read by a real Python's site
module, what the verify probe reports about it (code_info, run on folders and real git checkouts made
here), how verify judges it, and the reference job's record of the code each task ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_render import REPO, render, render_value, role_defaults

sys.path.insert(0, str(REPO / "module_utils"))
sys.path.insert(0, str(REPO / "workload"))
sys.path.insert(0, str(REPO / "node_agent" / "src"))

from bittrader_cluster import code_label, code_problems, evaluate
from bittrader_node_agent import cluster_probe
from bittrader_node_agent.cluster_probe import code_info

# The probe the modules run on the head (python -m bittrader_node_agent.cluster_probe), as source text.
PROBE = Path(cluster_probe.__file__).read_text()

PTH_TEMPLATE = REPO / "roles" / "ray_node" / "templates" / "bittrader_code.pth.j2"
CODE_PATHS = REPO / "roles" / "cluster_facts" / "tasks" / "code_paths.yml"
SHA = "0123456789abcdef0123456789abcdef01234567"


# --------------------------------------------------------------------------------------------------
# The facts: where the code lives, per OS
# --------------------------------------------------------------------------------------------------


def code_facts(**overrides: Any) -> dict[str, Any]:
    """bittrader_code_dir/path/pth as roles/cluster_facts/tasks/code_paths.yml sets them."""
    variables = role_defaults("cluster_facts")
    variables.update(
        ansible_facts={"os_family": "Debian", "system": "Linux"},
        bittrader_home="/home/bittrader",
        bittrader_base_dir="/home/bittrader/.bittrader_worker",
        bittrader_venv_dir="/home/bittrader/.bittrader_worker/venv",
        bittrader_python_version="3.12.12",
    )
    variables.update(overrides)
    task = yaml.safe_load(CODE_PATHS.read_text())[0]
    scope = {**variables}
    for name, value in task["vars"].items():  # task vars refer to each other: resolve them in order
        scope[name] = render_value(value, scope)
    facts = {k: render_value(v, scope) for k, v in task["ansible.builtin.set_fact"].items()}
    return {**variables, **facts}


def test_working_dir_mode_puts_nothing_on_the_path() -> None:
    facts = code_facts()
    assert facts["bittrader_code_dir"] == "" and facts["bittrader_code_path"] == ""
    assert facts["bittrader_code_pth"] == (
        "/home/bittrader/.bittrader_worker/venv/lib/python3.12/site-packages/bittrader_code.pth"
    )


def test_git_mode_checks_out_into_the_nodes_folder_by_default() -> None:
    facts = code_facts(bittrader_code_mode="git", bittrader_code_subdir="src")
    assert facts["bittrader_code_dir"] == "/home/bittrader/.bittrader_worker/strategy"
    assert facts["bittrader_code_path"] == "/home/bittrader/.bittrader_worker/strategy/src"


def test_a_folder_in_the_home_follows_each_users_home() -> None:
    mac = code_facts(
        bittrader_code_mode="folder",
        bittrader_code_folder="~/Dropbox/strategies",
        ansible_facts={"os_family": "Darwin", "system": "Darwin"},
        bittrader_home="/Users/anna",
        bittrader_venv_dir="/Users/anna/.bittrader_worker/venv",
        bittrader_python_version="3.11.2",
    )
    assert mac["bittrader_code_path"] == "/Users/anna/Dropbox/strategies"
    assert (
        mac["bittrader_code_pth"]
        == "/Users/anna/.bittrader_worker/venv/lib/python3.11/site-packages/bittrader_code.pth"
    )
    absolute = code_facts(bittrader_code_mode="folder", bittrader_code_folder="/srv/Google Drive/strategies")
    assert absolute["bittrader_code_path"] == "/srv/Google Drive/strategies"


def test_windows_paths_use_backslashes_and_the_venvs_lib_folder() -> None:
    base = "C:\\Users\\Jos\u00e9 O\u2019Neil\\.bittrader_worker"
    facts = code_facts(
        ansible_facts={"os_family": "Windows", "system": "Win32NT"},
        bittrader_home="C:\\Users\\Jos\u00e9 O\u2019Neil",
        bittrader_base_dir=base,
        bittrader_venv_dir=base + "\\venv",
        bittrader_code_mode="folder",
        bittrader_code_folder="~\\OneDrive\\Strat\u00e9gies",
        bittrader_code_subdir="src",
    )
    assert facts["bittrader_code_path"] == "C:\\Users\\Jos\u00e9 O\u2019Neil\\OneDrive\\Strat\u00e9gies\\src"
    assert facts["bittrader_code_pth"] == base + "\\venv\\Lib\\site-packages\\bittrader_code.pth"


# --------------------------------------------------------------------------------------------------
# The .pth file: rendered as Ansible does, then read by Python's own site module
# --------------------------------------------------------------------------------------------------


def render_pth(facts: dict[str, Any]) -> str:
    return render(PTH_TEMPLATE, facts)


def site_sys_path(site_dir: Path) -> list[str]:
    """sys.path of a fresh Python that processes site_dir's .pth files as a venv's site-packages."""
    code = f"import json, site, sys; site.addsitedir({str(site_dir)!r}); print(json.dumps(sys.path))"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def header(text: str) -> dict[str, Any]:
    line = next(line for line in text.splitlines() if line.startswith("# bittrader-code "))
    return dict(json.loads(line[len("# bittrader-code ") :]))


def test_pth_puts_a_folder_with_spaces_on_a_real_pythons_path(tmp_path: Path) -> None:
    folder = tmp_path / "Google Drive" / "strategies"
    folder.mkdir(parents=True)
    facts = code_facts(bittrader_code_mode="folder", bittrader_code_folder=str(folder))
    text = render_pth(facts)
    assert "{{" not in text and "{%" not in text
    assert header(text) == {"mode": "folder", "root": str(folder), "path": str(folder), "repo": "", "version": ""}
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "bittrader_code.pth").write_text(text, encoding="ascii")  # ASCII only: any code page reads it
    assert str(folder) in site_sys_path(site)


def test_pth_escapes_a_non_ascii_path_into_an_import_line(tmp_path: Path) -> None:
    folder = tmp_path / "Jos\u00e9 O\u2019Neil" / "Strat\u00e9gies"
    folder.mkdir(parents=True)
    facts = code_facts(bittrader_code_mode="folder", bittrader_code_folder=str(folder))
    text = render_pth(facts)
    text.encode("ascii")  # raises if a non-ASCII character is left
    assert "import sys; sys.path.append(" in text
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "bittrader_code.pth").write_text(text, encoding="ascii")
    assert str(folder) in site_sys_path(site)
    assert header(text)["path"] == str(folder)


def test_pth_of_git_mode_names_the_pinned_commit() -> None:
    facts = code_facts(
        bittrader_code_mode="git",
        bittrader_code_git_repo="git@github.com:me/strats.git",
        bittrader_code_git_version=SHA,
        bittrader_code_subdir="src",
    )
    text = render_pth(facts)
    assert header(text) == {
        "mode": "git",
        "root": "/home/bittrader/.bittrader_worker/strategy",
        "path": "/home/bittrader/.bittrader_worker/strategy/src",
        "repo": "git@github.com:me/strats.git",
        "version": SHA,
    }
    assert text.splitlines()[-1] == "/home/bittrader/.bittrader_worker/strategy/src"


# --------------------------------------------------------------------------------------------------
# code_info: what a task on the node reports
# --------------------------------------------------------------------------------------------------


def make_package(root: Path, marker: str) -> None:
    pkg = root / "mystrategy"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(f"MARKER = {marker!r}\n")
    (pkg / "signals.py").write_text("def signal(x):\n    return x > 0\n")


def write_pth(site: Path, mode: str, root: Path, path: Path | None = None, version: str = "") -> None:
    site.mkdir(parents=True, exist_ok=True)
    head = {"mode": mode, "root": str(root), "path": str(path or root), "repo": "", "version": version}
    (site / "bittrader_code.pth").write_text(f"# bittrader-code {json.dumps(head)}\n{path or root}\n")


def test_without_pth_the_code_comes_with_each_job(tmp_path: Path) -> None:
    info = code_info(site_dir=str(tmp_path), sys_path=[])
    assert info == {"mode": "working_dir", "version": "shipped with each job"}
    assert code_label(info) == "working_dir (each job ships it)"
    assert code_problems(info, {"mode": "working_dir", "version": ""}) == []


def test_folder_fingerprint_follows_the_files_and_ignores_caches(tmp_path: Path) -> None:
    folder = tmp_path / "Dropbox" / "strategies"
    make_package(folder, "one")
    site = tmp_path / "site"
    write_pth(site, "folder", folder)
    first = code_info(site_dir=str(site), sys_path=[str(folder)])
    assert first["mode"] == "folder" and first["exists"] and first["on_path"]
    assert first["files"] == 2 and len(first["sha256"]) == 16
    assert first["version"] == f"sha256 {first['sha256']}"
    # Caches, hidden files and sync clients' folders do not count.
    (folder / "mystrategy" / "__pycache__").mkdir()
    (folder / "mystrategy" / "__pycache__" / "signals.cpython-312.pyc").write_bytes(b"\x00")
    (folder / ".dropbox.cache").mkdir()
    (folder / ".dropbox.cache" / "x").write_text("cache")
    (folder / ".DS_Store").write_bytes(b"\x01")
    assert code_info(site_dir=str(site), sys_path=[str(folder)])["sha256"] == first["sha256"]
    # A changed file, or a VERSION file, does.
    (folder / "mystrategy" / "signals.py").write_text("def signal(x):\n    return x >= 0\n")
    changed = code_info(site_dir=str(site), sys_path=[str(folder)])
    assert changed["sha256"] != first["sha256"]
    (folder / "VERSION").write_text("2026.11 momentum\n")
    labelled = code_info(site_dir=str(site), sys_path=[str(folder)])
    assert labelled["label"] == "2026.11 momentum" and labelled["files"] == 3
    assert code_label(labelled) == f"folder sha256 {labelled['sha256']} VERSION 2026.11 momentum (3 files)"


def test_folder_fingerprint_is_the_same_at_another_path(tmp_path: Path) -> None:
    a, b = tmp_path / "home-a" / "Dropbox", tmp_path / "home-b" / "Google Drive"
    make_package(a, "same")
    make_package(b, "same")
    write_pth(tmp_path / "sa", "folder", a)
    write_pth(tmp_path / "sb", "folder", b)
    info_a = code_info(site_dir=str(tmp_path / "sa"), sys_path=[str(a)])
    info_b = code_info(site_dir=str(tmp_path / "sb"), sys_path=[str(b)])
    assert info_a["sha256"] == info_b["sha256"]


def test_big_files_count_by_size_and_the_walk_is_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "candles.csv").write_bytes(b"a" * 2048)
    write_pth(tmp_path / "s", "folder", folder)
    small = code_info(site_dir=str(tmp_path / "s"), sys_path=[], max_file_bytes=1024)
    (folder / "candles.csv").write_bytes(b"b" * 2048)  # same size: same fingerprint (not read)
    assert code_info(site_dir=str(tmp_path / "s"), sys_path=[], max_file_bytes=1024)["sha256"] == small["sha256"]
    for i in range(5):
        (folder / f"m{i}.py").write_text(str(i))
    bounded = code_info(site_dir=str(tmp_path / "s"), sys_path=[], max_files=3)
    assert bounded["files"] == 3 and bounded["truncated"] is True


def test_a_missing_or_unlisted_folder_is_a_problem(tmp_path: Path) -> None:
    folder = tmp_path / "not-synced-yet"
    write_pth(tmp_path / "s", "folder", folder)
    info = code_info(site_dir=str(tmp_path / "s"), sys_path=[str(folder)])
    assert info["exists"] is False and info["version"] == "missing"
    assert code_problems(info, {"mode": "folder"}) == [
        f"has no synced folder {folder} (missing, or the service user cannot read it)"
    ]
    folder.mkdir()
    off_path = code_info(site_dir=str(tmp_path / "s"), sys_path=["/elsewhere"])
    assert code_problems(off_path, {"mode": "folder"}) == [
        f"does not have {folder} on the import path of Ray's workers"
    ]


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env)
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_checkout_commit_is_read_detached_on_a_branch_and_packed(tmp_path: Path) -> None:
    repo = tmp_path / "strategy"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    make_package(repo / "src", "v1")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "v1")
    first = git(repo, "rev-parse", "HEAD")
    make_package(repo / "src", "v2")
    git(repo, "commit", "-q", "-am", "v2")
    second = git(repo, "rev-parse", "HEAD")
    site = tmp_path / "site"
    write_pth(site, "git", repo, repo / "src", version=first)
    # On a branch (loose ref): the newer commit is checked out, not the pinned one.
    info = code_info(site_dir=str(site), sys_path=[str(repo / "src")])
    assert info["commit"] == second and info["version"] == second[:12]
    assert code_problems(info, {"mode": "git", "version": first}) == [
        f"has commit {second[:12]} checked out, the inventory pins {first[:12]}"
    ]
    # Detached at the pinned commit, as ansible.builtin.git leaves it.
    git(repo, "checkout", "-q", first)
    pinned = code_info(site_dir=str(site), sys_path=[str(repo / "src")])
    assert pinned["commit"] == first and code_problems(pinned, {"mode": "git", "version": first}) == []
    # A branch whose ref lives only in packed-refs.
    git(repo, "checkout", "-q", "main")
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert code_info(site_dir=str(site), sys_path=[])["commit"] == second


def test_mode_mismatch_is_named(tmp_path: Path) -> None:
    info = code_info(site_dir=str(tmp_path), sys_path=[])
    assert code_problems(info, {"mode": "git", "version": SHA}) == [
        "sees working_dir code, the inventory sets bittrader_code_mode git"
    ]


def test_probe_carries_code_info_and_compiles() -> None:
    import ast

    assert "def code_info(" in PROBE and '"code": code_info()' in PROBE
    compile(PROBE, "probe", "exec")
    first_statement = ast.parse(PROBE).body[1]  # after the module's docstring
    assert isinstance(first_statement, ast.ImportFrom) and first_statement.module == "__future__"
    assert [alias.name for alias in first_statement.names] == ["annotations"]


def test_code_info_runs_in_a_bare_interpreter_from_its_source(tmp_path: Path) -> None:
    """The probe sends code_info's source to the nodes: it must need nothing but the standard library."""
    import inspect

    folder = tmp_path / "f"
    make_package(folder, "bare")
    write_pth(tmp_path / "s", "folder", folder)
    script = "from __future__ import annotations\nimport json\n" + inspect.getsource(cluster_probe.code_info)
    script += f"\nprint(json.dumps(code_info(site_dir={str(tmp_path / 's')!r})))\n"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["files"] == 2 and info["exists"] is True and info["on_path"] is False


# --------------------------------------------------------------------------------------------------
# Verify's judgement with the code each node sees
# --------------------------------------------------------------------------------------------------


def node(ip: str, code: dict[str, Any]) -> dict[str, Any]:
    return {
        "node_id": ip,
        "alive": True,
        "ip": ip,
        "hostname": ip,
        "cpus": 1,
        "memory": 2**30,
        "object_store_memory": 2**28,
        "task": {"ray": "2.60.0", "python": "3.11.2", "uid": 1000, "code": code},
    }


def folder_code(sha: str, path: str = "/f") -> dict[str, Any]:
    return {
        "mode": "folder",
        "root": path,
        "path": path,
        "exists": True,
        "on_path": True,
        "sha256": sha,
        "files": 4,
        "version": f"sha256 {sha}",
        "error": "",
        "label": "",
        "pinned": "",
    }


def test_verify_rows_show_each_nodes_code_and_warn_when_folders_differ() -> None:
    git_code = {
        "mode": "git",
        "root": "/r",
        "path": "/r",
        "exists": True,
        "on_path": True,
        "commit": SHA,
        "pinned": SHA,
        "version": SHA[:12],
        "files": 3,
        "sha256": "x",
        "error": "",
        "label": "",
    }
    nodes = [
        node("10.0.0.10", folder_code("aaaa")),
        node("10.0.0.11", folder_code("bbbb", "/Users/x/Dropbox")),
        node("10.0.0.12", git_code),
    ]
    expected = [
        {"name": "head", "ip": "10.0.0.10", "cpus": 1, "code": {"mode": "folder", "version": ""}},
        {"name": "w1", "ip": "10.0.0.11", "cpus": 1, "code": {"mode": "folder", "version": ""}},
        {"name": "w2", "ip": "10.0.0.12", "cpus": 1, "code": {"mode": "git", "version": SHA}},
    ]
    result = evaluate(nodes, expected)
    assert result["problems"] == []
    assert [r["code"] for r in result["rows"]] == [
        "folder sha256 aaaa (4 files)",
        "folder sha256 bbbb (4 files)",
        f"git {SHA[:12]} (3 files)",
    ]
    assert result["warnings"] == [
        "the synced code folders differ (head: sha256 aaaa; w1: sha256 bbbb): a sync client may not have caught up"
    ]
    nodes[1] = node("10.0.0.11", folder_code("aaaa"))
    assert evaluate(nodes, expected)["warnings"] == []


def test_verify_fails_on_a_node_at_another_commit() -> None:
    other = "f" * 40
    code = {
        "mode": "git",
        "root": "/r",
        "path": "/r",
        "exists": True,
        "on_path": True,
        "commit": other,
        "pinned": other,
        "version": other[:12],
        "error": "",
    }
    result = evaluate(
        [node("10.0.0.12", code)],
        [{"name": "w2", "ip": "10.0.0.12", "cpus": 1, "code": {"mode": "git", "version": SHA}}],
    )
    assert result["problems"] == [f"w2 (10.0.0.12) has commit {other[:12]} checked out, the inventory pins {SHA[:12]}"]


# --------------------------------------------------------------------------------------------------
# The reference job records the code each task ran
# --------------------------------------------------------------------------------------------------


def test_job_records_carry_the_code_fingerprint(tmp_path: Path) -> None:
    from bittrader_workload import job

    fingerprint = job.code_fingerprint()
    package = REPO / "workload" / "bittrader_workload"
    assert fingerprint["path"] == str(package.resolve())
    assert fingerprint["files"] == len([p for p in package.rglob("*.py") if "__pycache__" not in p.parts])
    summary = tmp_path / "s.json"
    assert job.main(["--mode=serial", "--candles=2000", "--params=2", f"--summary={summary}", "--quiet"]) == 0
    data = json.loads(summary.read_text())
    assert data["code"] == {"driver": fingerprint, "shipped_by_job": False}
    assert data["nodes"][0]["code"] == [fingerprint]


def test_job_fingerprint_sees_another_copy_of_the_package(tmp_path: Path) -> None:
    """A copy with one changed line (as a node's folder or checkout would hold) has another fingerprint."""
    copy = tmp_path / "bittrader_workload"
    shutil.copytree(REPO / "workload" / "bittrader_workload", copy, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+node-'))
    script = textwrap.dedent("""
        import json, sys
        from bittrader_workload.job import code_fingerprint
        print(json.dumps(code_fingerprint()))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    theirs = json.loads(out.stdout)
    from bittrader_workload import job

    assert theirs["path"] == str(copy.resolve()) and theirs["version"].startswith("9.9.9+node-")
    assert theirs["sha256"] != job.code_fingerprint()["sha256"]


def test_job_ships_code_reads_the_runtime_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from bittrader_workload import job

    class Context:
        def __init__(self, env: dict[str, Any]) -> None:
            self.runtime_env = env

    for env, shipped in (
        ({}, False),
        ({"env_vars": {"A": "1"}}, False),
        ({"working_dir": "gcs://_ray_pkg_x.zip"}, True),
        ({"py_modules": ["gcs://_ray_pkg_y.zip"]}, True),
    ):
        monkeypatch.setattr(job.ray, "get_runtime_context", lambda env=env: Context(env))
        assert job.job_ships_code() is shipped


# --------------------------------------------------------------------------------------------------
# Validation: what the bittrader role refuses before any host changes
# --------------------------------------------------------------------------------------------------


def code_settings_ok(host: str = "w1", **overrides: Any) -> bool:
    tasks = yaml.safe_load((REPO / "roles" / "cluster_facts" / "tasks" / "validate.yml").read_text())
    task = next(t for t in tasks if t["name"] == "Check how the strategy code reaches the workers")
    scope = {
        **role_defaults("cluster_facts"),
        "inventory_hostname": host,
        "groups": {"workers_windows": ["gaming-pc"]},
        **overrides,
    }
    for name, value in task["vars"].items():
        scope[name] = render_value(value, scope)
    return all(render_value("{{ " + cond + " }}", scope) is True for cond in task["ansible.builtin.assert"]["that"])


@pytest.mark.parametrize(
    ("settings", "ok"),
    [
        ({}, True),
        ({"bittrader_code_mode": "folder"}, False),
        ({"bittrader_code_mode": "folder", "bittrader_code_folder": "~/Dropbox/strategies"}, True),
        ({"bittrader_code_mode": "folder", "bittrader_code_folder": "Dropbox/strategies"}, False),
        ({"bittrader_code_mode": "folder", "bittrader_code_folder": "D:\\Sync\\strategies"}, True),
        ({"bittrader_code_mode": "folder", "bittrader_code_folder": "~\\OneDrive\\strategies"}, True),
        ({"bittrader_code_mode": "folder", "bittrader_code_folder": "\\\\nas\\share\\strategies"}, True),
        ({"bittrader_code_mode": "folder", "bittrader_code_folder": "/srv/s", "bittrader_code_subdir": "src"}, True),
        ({"bittrader_code_mode": "folder", "bittrader_code_folder": "/srv/s", "bittrader_code_subdir": "../x"}, False),
        (
            {"bittrader_code_mode": "folder", "bittrader_code_folder": "/srv/s", "bittrader_code_subdir": "a\\..\\b"},
            False,
        ),
        ({"bittrader_code_mode": "folder", "bittrader_code_folder": "/srv/s", "bittrader_code_subdir": "/abs"}, False),
        ({"bittrader_code_mode": "git", "bittrader_code_git_repo": "https://example.invalid/s.git"}, False),
        (
            {
                "bittrader_code_mode": "git",
                "bittrader_code_git_repo": "/srv/s.git",
                "bittrader_code_git_version": "main",
            },
            False,
        ),
        (
            {
                "bittrader_code_mode": "git",
                "bittrader_code_git_repo": "/srv/s.git",
                "bittrader_code_git_version": SHA[:12],
            },
            False,
        ),
        (
            {"bittrader_code_mode": "git", "bittrader_code_git_repo": "/srv/s.git", "bittrader_code_git_version": SHA},
            True,
        ),
    ],
)
def test_code_settings_are_validated(settings: dict[str, Any], ok: bool) -> None:
    assert code_settings_ok(**settings) is ok


def test_git_mode_is_refused_on_windows_workers() -> None:
    git = {"bittrader_code_mode": "git", "bittrader_code_git_repo": "/srv/s.git", "bittrader_code_git_version": SHA}
    assert code_settings_ok("w1", **git) is True
    assert code_settings_ok("gaming-pc", **git) is False
    assert code_settings_ok("gaming-pc", bittrader_code_mode="folder", bittrader_code_folder="~\\OneDrive\\s") is True


# --------------------------------------------------------------------------------------------------
# Windows and macOS: the same variables, the same .pth template
# --------------------------------------------------------------------------------------------------


def test_windows_role_writes_the_shared_pth_into_its_venv() -> None:
    from test_windows_role import find_task, host_vars, load_tasks, task_args

    variables = host_vars(
        "Jos\u00e9 O\u2019Neil",
        "C:\\Users\\Jos\u00e9 O\u2019Neil",
        "lan",
        "192.168.1.0/24",
        "192.168.1.30",
        bittrader_code_mode="folder",
        bittrader_code_folder="~\\OneDrive\\Strategies",
    )
    facts = code_facts(
        **{
            k: variables[k]
            for k in (
                "ansible_facts",
                "bittrader_home",
                "bittrader_base_dir",
                "bittrader_venv_dir",
                "bittrader_code_mode",
                "bittrader_code_folder",
            )
        }
    )
    # The virtual environment is in the node's ASCII folder (Ray fails below a profile path with a blank or
    # an accent); the code folder stays the owner's, in the profile.
    base = "C:\\ProgramData\\Bittrader"
    assert facts["bittrader_code_pth"] == base + "\\venv\\Lib\\site-packages\\bittrader_code.pth"
    variables.update({k: facts[k] for k in ("bittrader_code_dir", "bittrader_code_path", "bittrader_code_pth")})
    write = find_task("code.yml", "ansible.windows.win_template")
    args = task_args(
        write, "ansible.windows.win_template", {**variables, "role_path": str(REPO / "roles/worker_windows")}
    )
    assert Path(args["src"]).resolve() == PTH_TEMPLATE
    assert args["dest"] == facts["bittrader_code_pth"]
    text = render(PTH_TEMPLATE, variables)
    text.encode("ascii")
    assert header(text)["path"] == "C:\\Users\\Jos\u00e9 O\u2019Neil\\OneDrive\\Strategies"
    assert text.splitlines()[-1] == (
        'import sys; sys.path.append("C:\\\\Users\\\\Jos\\u00e9 O\\u2019Neil\\\\OneDrive\\\\Strategies")'
    )
    # Python reads that line back as the path.
    assert eval(text.splitlines()[-1].split("append(", 1)[1][:-1]) == header(text)["path"]
    removal = find_task("code.yml", "ansible.windows.win_file")
    assert removal["when"] == "bittrader_code_mode == 'working_dir'"
    assert all("ansible.builtin.git" not in t for t in load_tasks("code.yml"))


def test_every_os_runs_the_code_tasks_before_the_service_starts() -> None:
    windows = [
        t.get("ansible.builtin.import_tasks")
        for t in yaml.safe_load((REPO / "roles/worker_windows/tasks/main.yml").read_text())
    ]
    assert windows.index("code.yml") < windows.index("node.yml") < windows.index("service.yml")
    paths = yaml.safe_load((REPO / "roles/worker_windows/tasks/paths.yml").read_text())
    assert paths[-1]["ansible.builtin.include_role"] == {"name": "cluster_facts", "tasks_from": "code_paths.yml"}
    # Linux and macOS: ray_node's main.yml includes the provisioning (node.yml, which makes the venv), then
    # the code; the node roles import ray_node first and start the service after it (head.yml, worker.yml).
    posix = [
        t.get("ansible.builtin.include_tasks")
        for t in yaml.safe_load((REPO / "roles/ray_node/tasks/main.yml").read_text())
    ]
    assert posix.index("code.yml") > posix.index("node.yml")
    node_yml = yaml.safe_load((REPO / "roles/ray_node/tasks/node.yml").read_text())
    node = [t.get("ansible.builtin.include_tasks") for t in node_yml]
    assert "venv.yml" in node
    for role, own in (("head", "head.yml"), ("worker_linux", "worker.yml")):
        tasks = yaml.safe_load((REPO / f"roles/{role}/tasks/main.yml").read_text())
        assert tasks[0]["ansible.builtin.import_role"] == {"name": "ray_node"}
        assert any(t.get("ansible.builtin.include_tasks") == own for t in tasks[1:])
        started = yaml.safe_load((REPO / f"roles/{role}/tasks/{own}").read_text())
        assert any(t.get("ansible.builtin.include_role", {}).get("tasks_from") == "service.yml" for t in started)
    assert (
        yaml.safe_load((REPO / "roles/cluster_facts/tasks/paths.yml").read_text())[-1]["ansible.builtin.import_tasks"]
        == "code_paths.yml"
    )


def test_posix_code_tasks_install_git_only_in_git_mode_and_check_out_as_the_service_user() -> None:
    tasks: list[dict[str, Any]] = []

    def walk(items: list[dict[str, Any]], when: list[Any]) -> None:
        for item in items:
            own = item.get("when", [])
            own = own if isinstance(own, list) else [own]
            if "block" in item:
                walk(item["block"], when + own)
            else:
                tasks.append({**item, "all_when": when + own})

    walk(yaml.safe_load((REPO / "roles/ray_node/tasks/code.yml").read_text()), [])
    installs = [t for t in tasks if t.get("ansible.builtin.apt") or t.get("ansible.builtin.package")]
    assert len(installs) == 2
    for task in installs:
        module = task.get("ansible.builtin.apt") or task.get("ansible.builtin.package")
        assert module["name"] == "git"
        assert "not ray_node__git_bin.stat.exists" in task["all_when"]
    probe = next(t for t in tasks if t["name"] == "Look for git (git mode)")
    assert "bittrader_code_mode == 'git'" in probe["when"]
    checkout = next(t for t in tasks if "ansible.builtin.git" in t)
    assert checkout["become_user"] == "{{ bittrader_user }}"
    assert checkout["ansible.builtin.git"]["version"] == "{{ bittrader_code_git_version }}"
    assert checkout["ansible.builtin.git"]["force"] is False
    mac = next(t for t in tasks if t.get("ansible.builtin.command", {}).get("argv", [""])[0] == "/usr/bin/xcrun")
    assert "ansible_facts.system == 'Darwin'" in mac["when"]
