"""The worker_windows role, checked here without a Windows host: its templates (and the shared
node.json.j2) rendered with Ansible's Templar for several hosts (user names and profile paths with
spaces, apostrophes and accents; tailscale and LAN mode), and the module arguments of its task files
(scheduled tasks, firewall rules, paths) rendered from the YAML the way Ansible would template them.
Every rendered PowerShell script is parsed by a real PowerShell grammar (tree-sitter-powershell), and
every scheduled task is checked against the limits of Microsoft's Task Scheduler schema."""

from __future__ import annotations

import importlib.util
import json
import ntpath
import re
from pathlib import Path
from typing import Any

import pytest
import tree_sitter_powershell
import yaml
from agent_throttle import bt as throttle  # the node agent's throttle (node_agent/src), as Windows runs it
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from ansible_render import REPO, render, render_value, role_defaults
from tree_sitter import Language, Node, Parser

ROLE = REPO / "roles" / "worker_windows"
TEMPLATES = ROLE / "templates"
TASKS = ROLE / "tasks"
NODE_JSON = REPO / "roles" / "ray_node" / "templates" / "node.json.j2"
HEAD_ONLY = {"gcs", "client_server", "dashboard", "autoscaler_metrics", "dashboard_metrics"}

_wspec = importlib.util.spec_from_file_location(
    "bittrader_windows_filters_test", REPO / "filter_plugins" / "bittrader_windows.py"
)
assert _wspec is not None and _wspec.loader is not None
winfilters = importlib.util.module_from_spec(_wspec)
_wspec.loader.exec_module(winfilters)

POWERSHELL = Parser(Language(tree_sitter_powershell.language()))
# Where the node lives whatever the profile is called (worker_windows_base_dir's default).
BASE = "C:\\ProgramData\\Bittrader"

# Hosts of different kinds: (id, bittrader_user, profile path or "" before the first sign-in, mode, cidr, address).
HOSTS = [
    ("tailscale", "trader", r"C:\Users\trader", "tailscale", "100.64.0.0/10", "100.77.179.30"),
    ("lan-spaces", "John Smith", r"C:\Users\John Smith", "lan", "192.168.1.0/24", "192.168.1.30"),
    ("apostrophe", "O'Brien", r"D:\Profiles\O'Brien", "lan", "10.0.0.0/8", "10.1.2.3"),
    (
        "typographic-accents",
        "Jos\u00e9 O\u2019Neil",
        "C:\\Users\\Jos\u00e9 O\u2019Neil",
        "tailscale",
        "100.64.0.0/10",
        "100.100.1.2",
    ),
    ("no-profile-yet", "bittrader", "", "tailscale", "100.64.0.0/10", "100.77.179.31"),
]


# --------------------------------------------------------------------------------------------------
# Helpers: trusted variables, data templating, task files
# --------------------------------------------------------------------------------------------------


def trusted(value: Any) -> Any:
    """Variables as Ansible holds those read from YAML files: strings trusted as templates."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [trusted(v) for v in value]
    return value


def template_data(data: Any, variables: dict[str, Any]) -> Any:
    """Template a task's arguments (any YAML data) with variables, as Ansible does (omit dropped)."""
    render(TEMPLATES / "verify_worker.cmd.j2", {})  # initialises the plugin loader (filters, collections)
    templar = Templar(loader=DataLoader(), variables=trusted(variables))
    return templar.template(trusted(data))


def load_tasks(name: str) -> list[dict[str, Any]]:
    """The tasks of a task file, blocks flattened (a block's vars and when go to its tasks)."""
    out: list[dict[str, Any]] = []

    def walk(items: list[dict[str, Any]], inherited_vars: dict[str, Any]) -> None:
        for item in items:
            if "block" in item:
                walk(item["block"], {**inherited_vars, **item.get("vars", {})})
            else:
                out.append({**item, "vars": {**inherited_vars, **item.get("vars", {})}})

    walk(yaml.safe_load((TASKS / name).read_text(encoding="utf-8")), {})
    return out


def find_task(name: str, module: str, nth: int = 0) -> dict[str, Any]:
    found = [t for t in load_tasks(name) if module in t]
    assert len(found) > nth, f"{name}: no task #{nth} using {module}"
    return found[nth]


def task_args(task: dict[str, Any], module: str, variables: dict[str, Any], item: Any = None) -> dict[str, Any]:
    scope = {**variables, **task.get("vars", {})}
    if item is not None:
        scope["item"] = item
    return template_data(task[module], scope)


def assert_fails(task: dict[str, Any], variables: dict[str, Any]) -> bool:
    """Whether an ansible.builtin.assert task fails for these variables: each of its conditions
    evaluated as Ansible does (a bare Jinja expression), with the task's vars; its when respected."""
    scope = {**variables, **task.get("vars", {})}
    when = task.get("when", [])
    for condition in [when] if isinstance(when, str) else when:
        if not template_data("{{ " + condition + " }}", scope):
            return False
    that = task["ansible.builtin.assert"]["that"]
    conditions = [that] if isinstance(that, str) else that
    return not all(template_data("{{ " + c + " }}", scope) for c in conditions)


def check_task(name: str) -> dict[str, Any]:
    """The task of tasks/checks.yml with this name."""
    return next(t for t in load_tasks("checks.yml") if t["name"] == name)


def split_command_line(line: str) -> list[str]:
    """CommandLineToArgvW / the MSVC runtime: how a Windows program splits its command line."""
    args: list[str] = []
    i, n = 0, len(line)
    # The program name: up to the closing quote, or to the first blank; no escapes.
    if line.startswith('"'):
        end = line.index('"', 1)
        args.append(line[1:end])
        i = end + 1
    else:
        end = len(line.split()[0])
        args.append(line[:end])
        i = end
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        current, quoted = [], False
        while i < n and (quoted or line[i] not in " \t"):
            if line[i] == "\\":
                j = i
                while j < n and line[j] == "\\":
                    j += 1
                count = j - i
                if j < n and line[j] == '"':
                    current.append("\\" * (count // 2))
                    if count % 2:
                        current.append('"')
                        i = j + 1
                    else:
                        i = j
                    continue
                current.append("\\" * count)
                i = j
                continue
            if line[i] == '"':
                quoted = not quoted
                i += 1
                continue
            current.append(line[i])
            i += 1
        args.append("".join(current))
    return args


PS_QUOTES = "'\u2018\u2019\u201a\u201b"


def ps_single_quoted(text: str) -> str:
    """The value of a PowerShell single-quoted literal (every PowerShell single-quote character
    counts as a quote, and two of them stand for one)."""
    assert text[0] in PS_QUOTES, text
    out, i = [], 1
    while i < len(text):
        ch = text[i]
        if ch in PS_QUOTES:
            if i + 1 < len(text) and text[i + 1] in PS_QUOTES:
                out.append(ch)
                i += 2
                continue
            assert text[i + 1 :].strip() == "", f"text after the literal: {text!r}"
            return "".join(out)
        out.append(ch)
        i += 1
    raise AssertionError(f"unterminated PowerShell literal: {text!r}")


def powershell_parse_errors(script: str) -> list[str]:
    """The syntax errors a real PowerShell grammar (tree-sitter-powershell) finds in a script: every
    ERROR or MISSING node, with its line and column; [] when the script parses."""
    data = script.encode("utf-8")
    tree = POWERSHELL.parse(data)
    errors: list[str] = []

    def walk(node: Node) -> None:
        if node.is_error or node.is_missing:
            line, column = node.start_point
            text = data[node.start_byte : node.end_byte][:60].decode("utf-8", "replace")
            kind = "missing " + node.type if node.is_missing else "error"
            errors.append(f"{kind} at {line + 1}:{column + 1}: {text!r}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    if tree.root_node.has_error and not errors:
        errors.append("the grammar reports an error")
    return errors


def test_the_powershell_grammar_finds_what_breaks_a_script() -> None:
    good = "param([string]$Name)\n$x = @{ a = 1 }\nif ($x.a) { Write-Output \"$($x.a) $Name\" }\n"
    assert powershell_parse_errors(good) == []
    for broken in (
        "param([string]$Name\n$x = 1\n",  # a missing parenthesis
        "if ($x) { Write-Output 1\n",  # an unclosed block
        "$x = 'O'Brien'\n",  # a name quoted without doubling its apostrophe
        'Write-Output "a$(b"\n',  # an unclosed subexpression in a string
    ):
        assert powershell_parse_errors(broken), broken


# --------------------------------------------------------------------------------------------------
# The variables of a Windows worker, with the paths computed by the role's own set_fact
# --------------------------------------------------------------------------------------------------


def host_vars(user: str, profile: str, mode: str, cidr: str, ip: str, **extra: Any) -> dict[str, Any]:
    variables = role_defaults("cluster_facts", "worker_windows")
    variables.update(
        {
            "inventory_hostname": "gaming-pc",
            "ansible_check_mode": False,
            "ansible_facts": {
                "system": "Win32NT",
                "os_family": "Windows",
                "architecture": "64-bit",
                "architecture2": "x86_64",
                "processor_vcpus": 16,
            },
            "bittrader_user": user,
            "bittrader_create_user": False,
            "bittrader_network_mode": mode,
            "bittrader_node_role": "worker",
            "bittrader_head_host": "macbook-pro",
            "bittrader_head_ip": "100.77.179.14" if mode == "tailscale" else "192.168.1.10",
            "bittrader_cidr": cidr,
            "bittrader_advertise_ip": ip,
            "bittrader_service_name": "bittrader-ray-worker",
            "worker_windows__account": {
                "result": {
                    "exists": True,
                    "sid": "S-1-5-21-1111111111-2222222222-3333333333-1001",
                    "is_admin": False,
                    "profile": profile,
                    "profiles_dir": r"C:\Users",
                }
            },
        }
    )
    variables["bittrader_head_address"] = f"{variables['bittrader_head_ip']}:{variables['bittrader_ports']['gcs']}"
    variables.update(extra)
    paths_task = find_task("paths.yml", "ansible.builtin.set_fact")
    variables.update(task_args(paths_task, "ansible.builtin.set_fact", variables))
    return variables


@pytest.fixture(params=HOSTS, ids=[h[0] for h in HOSTS])
def hv(request: pytest.FixtureRequest) -> dict[str, Any]:
    _id, user, profile, mode, cidr, ip = request.param
    return host_vars(user, profile, mode, cidr, ip)


def expected_home(variables: dict[str, Any]) -> str:
    profile = variables["worker_windows__account"]["result"]["profile"]
    return profile or "C:\\Users\\" + variables["bittrader_user"]


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def test_ray_lives_in_a_plain_ascii_folder_whatever_the_profile_is_called(hv: dict[str, Any]) -> None:
    """Ray's workers and agents fail below a path with a blank or a non-ASCII letter (C:\\Users\\John Smith,
    C:\\Users\\José): everything Ray runs from or writes is in worker_windows_base_dir, for every account."""
    base = BASE
    assert hv["bittrader_home"] == expected_home(hv)
    assert hv["bittrader_base_dir"] == base
    assert hv["bittrader_venv_dir"] == base + "\\venv"
    assert hv["bittrader_run_dir"] == base + "\\run"
    assert hv["bittrader_token_file"] == base + "\\auth_token"
    assert hv["bittrader_node_config"] == base + "\\node.json"
    assert hv["bittrader_ray_bin"] == base + "\\venv\\Scripts\\ray.exe"
    assert hv["bittrader_venv_python"] == base + "\\venv\\Scripts\\python.exe"
    assert hv["bittrader_ray_temp_path"] == base + "\\ray"
    assert hv["worker_windows_agent_modules"]["node"] == "bittrader_node_agent.supervisor"
    assert hv["worker_windows_paths"]["uv_dir"] == base + "\\uv\\" + hv["bittrader_uv_version"]
    assert hv["worker_windows_paths"]["tmp_dir"] == base + "\\tmp"
    # Only the logs stay where the owner looks for them: %USERPROFILE%\\.bittrader_worker\\logs.
    home_dir = expected_home(hv) + "\\.bittrader_worker"
    assert hv["worker_windows_paths"]["home_dir"] == home_dir
    assert hv["bittrader_log_dir"] == home_dir + "\\logs"
    assert hv["worker_windows_paths"]["throttle_log"] == home_dir + "\\logs\\throttle.log"
    for key, value in hv["worker_windows_paths"].items():
        assert "/" not in value and "{{" not in value, key
        if key not in {"home_dir", "throttle_log"}:
            assert value.startswith(base + "\\"), key
            assert winfilters.path_problem(value) == "", key
    for key in ("bittrader_base_dir", "bittrader_venv_dir", "bittrader_run_dir", "bittrader_ray_bin",
                "bittrader_venv_python", "bittrader_token_file", "bittrader_node_config"):
        assert winfilters.path_problem(hv[key]) == "", key


def test_everything_ray_is_given_is_ascii_for_a_profile_with_a_blank_or_an_accent() -> None:
    """The accounts of the issue, through the whole role's rendering: node.json (what the supervisor
    hands to `ray start`), the scheduled task's command line and the throttle's configuration."""
    for user, profile in [("John Smith", r"C:\Users\John Smith"), ("Jos\u00e9", "C:\\Users\\Jos\u00e9")]:
        variables = host_vars(user, profile, "lan", "192.168.1.0/24", "192.168.1.30", bittrader_throttle_enabled=True)
        node = json.loads(render(NODE_JSON, variables))
        for value in [node["ray"], node["env"]["RAY_AUTH_TOKEN_PATH"], node["num_cpus_file"], node["state_file"]]:
            assert winfilters.path_problem(ntpath.normpath(value)) == "", value
        # Ray's temporary (session) folder is TEMP\\ray: TEMP points into the node's folder, not the profile.
        assert node["env"]["TEMP"] == node["env"]["TMP"] == BASE + "\\tmp"
        task = find_task("service.yml", "community.windows.win_scheduled_task")
        args = task_args(task, "community.windows.win_scheduled_task", variables)
        (action,) = args["actions"]
        for arg in split_command_line(action["path"] + " " + action["arguments"]):
            assert arg.isascii() and " " not in arg, arg
        assert winfilters.path_problem(action["working_directory"]) == ""
        config = json.loads(render(TEMPLATES / "throttle.json.j2", variables))
        for key in ("venv", "ray_bin", "python_bin", "token_path"):
            assert winfilters.path_problem(config["ray"][key]) == "", key
        # The logs are the owner's, in the profile: the supervisor and the throttle write them, not Ray.
        assert ntpath.normpath(node["log_file"]) == profile + "\\.bittrader_worker\\logs\\worker.log"


def test_a_node_folder_with_a_blank_or_an_accent_is_refused_before_anything_changes() -> None:
    check = check_task("Check that the node's folder is a plain ASCII path")
    for base, refused in [
        (BASE, False),
        (r"D:\Bittrader", False),
        (r"C:\Users\John Smith\.bittrader_worker", True),
        ("C:\\Users\\Jos\u00e9\\.bittrader_worker", True),
        (r"Bittrader", True),
    ]:
        variables = host_vars("trader", r"C:\Users\trader", "lan", "192.168.1.0/24", "192.168.1.30",
                              worker_windows_base_dir=base)
        assert assert_fails(check, variables) is refused, base


def test_a_new_profile_path_wins() -> None:
    variables = host_vars("bittrader", "", "tailscale", "100.64.0.0/10", "100.77.179.31")
    variables["worker_windows__profile"] = {"changed": True, "path": r"C:\Users\bittrader.GAMING-PC"}
    paths_task = find_task("paths.yml", "ansible.builtin.set_fact")
    facts = task_args(paths_task, "ansible.builtin.set_fact", variables)
    assert facts["bittrader_log_dir"] == r"C:\Users\bittrader.GAMING-PC\.bittrader_worker\logs"
    assert facts["bittrader_base_dir"] == BASE


def test_the_node_folder_and_the_logs_folder_are_restricted_to_the_account() -> None:
    variables = host_vars("Jos\u00e9", "C:\\Users\\Jos\u00e9", "lan", "192.168.1.0/24", "192.168.1.30")
    tops = template_data(variables["worker_windows_top_folders"], variables)
    assert tops == [BASE, "C:\\Users\\Jos\u00e9\\.bittrader_worker"]
    created = template_data(find_task("folders.yml", "ansible.windows.win_file")["loop"], variables)
    assert variables["bittrader_log_dir"] in created and variables["worker_windows_paths"]["tmp_dir"] in created


# --------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------


def rendered_templates(variables: dict[str, Any]) -> dict[str, str]:
    return {path.name: render(path, variables) for path in sorted(TEMPLATES.glob("*.j2"))}


def test_every_template_renders_completely(hv: dict[str, Any]) -> None:
    for name, text in rendered_templates(hv).items():
        assert "{{" not in text and "{%" not in text and "{#" not in text, name
        assert text.strip(), name


def inline_powershell(variables: dict[str, Any]) -> dict[str, str]:
    """Every PowerShell script the task files and handlers hand to win_powershell, rendered: the
    templates they look up, and the scripts written inline in the YAML."""
    scripts: dict[str, str] = {}
    files = [(name, load_tasks(name)) for name in sorted(p.name for p in TASKS.glob("*.yml"))]
    files.append(("handlers/main.yml", yaml.safe_load((ROLE / "handlers" / "main.yml").read_text(encoding="utf-8"))))
    for name, tasks in files:
        for task in tasks:
            module = task.get("ansible.windows.win_powershell")
            if not module:
                continue
            script = module["script"]
            looked_up = re.fullmatch(r"\{\{ lookup\('ansible\.builtin\.template', '([\w.]+)'\) \}\}", script.strip())
            if looked_up:
                scripts[f"{name}: {task['name']}"] = render(TEMPLATES / looked_up.group(1), variables)
            else:
                scripts[f"{name}: {task['name']}"] = template_data(script, {**variables, **task.get("vars", {})})
    return scripts


def test_every_powershell_script_parses(hv: dict[str, Any]) -> None:
    scripts = {name: text for name, text in rendered_templates(hv).items() if name.endswith(".ps1.j2")}
    scripts.update(inline_powershell(hv))
    assert any(": " in name for name in scripts) and "scheduled_task.ps1.j2" in scripts
    for name, text in scripts.items():
        assert powershell_parse_errors(text) == [], name
        code = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        first = code[0].strip()
        assert first.startswith(("param(", "[CmdletBinding(")), f"{name}: param() must come first, got {first!r}"


def test_verify_script_quotes_paths_for_powershell(hv: dict[str, Any]) -> None:
    text = render(TEMPLATES / "verify_worker.ps1.j2", hv)
    literals = {}
    for line in text.splitlines():
        match = re.match(r"^\$(\w+) = (.+)$", line)
        if match and match.group(2)[0] in PS_QUOTES:
            literals[match.group(1)] = ps_single_quoted(match.group(2))
    assert literals["UserName"] == hv["bittrader_user"]
    assert literals["BaseDir"] == hv["bittrader_base_dir"]
    assert literals["VenvDir"] == hv["bittrader_venv_dir"]
    assert literals["LogDir"] == hv["bittrader_log_dir"]
    assert literals["RunDir"] == hv["bittrader_run_dir"]
    assert literals["TokenFile"] == hv["bittrader_token_file"]
    assert literals["NodeConfig"] == hv["bittrader_node_config"]
    assert literals["TaskPath"] == "\\Bittrader\\"
    assert literals["ThrottleResetTaskName"] == "Bittrader Throttle Reset"
    assert literals["HeadIp"] == hv["bittrader_head_ip"]
    assert re.search(r"^\$GcsPort = 6379$", text, re.MULTILINE)
    assert re.search(r"^\$ThrottleEnabled = \$false$", text, re.MULTILINE)


def test_verify_cmd_calls_the_script_next_to_it(hv: dict[str, Any]) -> None:
    text = render(TEMPLATES / "verify_worker.cmd.j2", hv)
    assert '-File "%~dp0verify_worker.ps1" %*' in text
    assert text.isascii()


def test_node_json_has_windows_paths_and_the_cluster_flag(hv: dict[str, Any]) -> None:
    config = json.loads(render(NODE_JSON, hv))
    assert config["role"] == "worker"
    assert config["ray"] == hv["bittrader_ray_bin"]
    assert config["ray"].endswith("\\venv\\Scripts\\ray.exe")
    assert config["env"]["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"
    assert config["env"]["RAY_AUTH_MODE"] == "token"
    assert config["env"]["RAY_AUTH_TOKEN_PATH"] == hv["bittrader_token_file"]
    assert ntpath.normpath(config["log_file"]) == hv["bittrader_log_dir"] + "\\worker.log"
    assert ntpath.normpath(config["error_log_file"]) == hv["bittrader_log_dir"] + "\\worker_error.log"
    assert ntpath.normpath(config["state_file"]) == hv["bittrader_run_dir"] + "\\supervisor.json"
    assert config["temp_dir"] == hv["bittrader_base_dir"] + "\\ray"  # not the head's, not %TEMP%\\ray
    assert ntpath.normpath(config["num_cpus_file"]) == hv["worker_windows_paths"]["num_cpus_file"]
    args = config["start_args"]
    assert args[:2] == ["start", "--block"]
    assert f"--node-ip-address={hv['bittrader_advertise_ip']}" in args
    assert f"--address={hv['bittrader_head_address']}" in args
    assert "--head" not in args
    ports = hv["bittrader_ports"]
    for flag, key in [
        ("--node-manager-port", "node_manager"),
        ("--object-manager-port", "object_manager"),
        ("--min-worker-port", "min_worker"),
        ("--max-worker-port", "max_worker"),
        ("--dashboard-agent-listen-port", "dashboard_agent_listen"),
    ]:
        assert f"{flag}={ports[key]}" in args


@pytest.mark.parametrize(
    ("extra", "cpus_idle", "battery"),
    [
        ({}, None, "pause"),
        ({"bittrader_num_cpus": 6}, 6, "pause"),
        ({"worker_windows_throttle_cpus_idle": 4, "worker_windows_throttle_battery_policy": "3"}, 4, 3),
        ({"worker_windows_throttle_battery_policy": "ignore"}, None, "ignore"),
    ],
)
def test_throttle_config_is_valid_for_the_daemon(extra: dict[str, Any], cpus_idle: int | None, battery: Any) -> None:
    variables = host_vars("John Smith", r"C:\Users\John Smith", "lan", "192.168.1.0/24", "192.168.1.30", **extra)
    variables["bittrader_throttle_enabled"] = True
    config = json.loads(render(TEMPLATES / "throttle.json.j2", variables))
    assert throttle.validate(config) == []
    assert config["platform"] == "windows"
    assert config["policy"]["activity_source"] == "windows"
    assert config["policy"]["cpus_active"] == 2
    assert config["policy"]["cpus_idle"] == cpus_idle
    assert config["policy"]["idle_threshold_s"] == 300
    assert config["policy"]["battery_policy"] == battery
    assert config["mechanism"] == {"kind": "windows", "process_user": "John Smith"}
    assert config["ray"]["head_address"] == variables["bittrader_head_address"]
    assert config["ray"]["node_ip"] == "192.168.1.30"
    assert config["ray"]["token_path"] == variables["bittrader_token_file"]
    assert "RAY_AUTH_TOKEN" not in config["ray"]["env"]
    node = json.loads(render(NODE_JSON, variables))
    assert ntpath.normpath(node["num_cpus_file"]) == config["paths"]["num_cpus_file"]


def test_throttle_config_passes_the_daemon_loader(tmp_path: Path) -> None:
    variables = host_vars("trader", r"C:\Users\trader", "tailscale", "100.64.0.0/10", "100.77.179.30")
    path = tmp_path / "throttle.json"
    path.write_text(render(TEMPLATES / "throttle.json.j2", variables), encoding="utf-8")
    loaded = throttle.load_config(str(path))
    assert loaded.activity_kind == "windows"
    assert loaded.mechanism_kind == "windows"


# --------------------------------------------------------------------------------------------------
# Windows Firewall
# --------------------------------------------------------------------------------------------------


def test_firewall_opens_exactly_the_worker_ports_to_the_cluster(hv: dict[str, Any]) -> None:
    task = find_task("firewall.yml", "community.windows.win_firewall_rule")
    items = template_data(task["loop"], hv)
    rules = [task_args(task, "community.windows.win_firewall_rule", hv, item) for item in items]
    ports = hv["bittrader_ports"]
    # Ray's metrics are off by default (bittrader_ray_metrics_enabled): their export port does not listen.
    assert hv["bittrader_ray_metrics_enabled"] is False
    closed = HEAD_ONLY | {"min_worker", "max_worker", "metrics_export"}
    singles = sorted(v for k, v in ports.items() if k not in closed)
    opened: list[str] = []
    for rule in rules:
        assert rule["name"].startswith("Bittrader Ray ")
        assert rule["remoteip"] == hv["bittrader_cidr"]
        assert rule["direction"] == "in"
        assert rule["action"] == "allow"
        assert rule["protocol"] == "tcp"
        assert rule["state"] == "present"
        assert rule["enabled"] is True
        assert sorted(rule["profiles"]) == ["domain", "private", "public"]
        opened.extend(rule["localport"].split(","))
    assert sorted(opened) == sorted([str(p) for p in singles] + [f"{ports['min_worker']}-{ports['max_worker']}"])
    for head_port in (ports[k] for k in HEAD_ONLY):
        assert str(head_port) not in opened
    assert len({r["name"] for r in rules}) == len(rules)
    metrics = {**hv, "bittrader_ray_metrics_enabled": True}
    with_metrics = [task_args(task, "community.windows.win_firewall_rule", metrics, item)
                    for item in template_data(task["loop"], metrics)]
    assert str(ports["metrics_export"]) in ",".join(r["localport"] for r in with_metrics)


def test_uninstall_removes_the_same_rules_and_tasks(hv: dict[str, Any]) -> None:
    firewall = find_task("firewall.yml", "community.windows.win_firewall_rule")
    removed = find_task("uninstall.yml", "community.windows.win_firewall_rule")
    assert firewall["loop"] == removed["loop"]
    assert removed["community.windows.win_firewall_rule"]["state"] == "absent"
    tasks = find_task("uninstall.yml", "community.windows.win_scheduled_task")
    names = template_data(tasks["loop"], hv)
    assert sorted(names) == ["Bittrader Ray Worker", "Bittrader Throttle", "Bittrader Throttle Reset"]
    assert tasks["community.windows.win_scheduled_task"]["state"] == "absent"
    base = find_task("uninstall.yml", "ansible.windows.win_file")
    removed = template_data(base["loop"], hv)
    assert removed == [hv["bittrader_base_dir"], hv["worker_windows_paths"]["home_dir"]]
    assert task_args(base, "ansible.windows.win_file", hv, removed[0]) == {"path": BASE, "state": "absent"}


# --------------------------------------------------------------------------------------------------
# Folders, token, Python and pip
# --------------------------------------------------------------------------------------------------


def test_base_folder_is_restricted_to_user_system_and_administrators(hv: dict[str, Any]) -> None:
    acl = find_task("folders.yml", "ansible.windows.win_acl")
    scope = {**hv, **acl["vars"]}
    items = template_data(acl["loop"], scope)
    folders = [hv["bittrader_base_dir"], hv["worker_windows_paths"]["home_dir"]]
    sids = [hv["worker_windows__account"]["result"]["sid"], "S-1-5-18", "S-1-5-32-544"]
    assert [(folder, owner["sid"]) for folder, owner in items] == [(f, sid) for f in folders for sid in sids]
    args = task_args(acl, "ansible.windows.win_acl", hv, items[0])
    assert args == {
        "path": hv["bittrader_base_dir"],
        "user": sids[0],
        "rights": "FullControl",
        "type": "allow",
        "state": "present",
    }
    inheritance = find_task("folders.yml", "ansible.windows.win_acl_inheritance")
    assert template_data(inheritance["loop"], hv) == folders
    args = task_args(inheritance, "ansible.windows.win_acl_inheritance", hv, folders[0])
    assert args == {"path": hv["bittrader_base_dir"], "state": "absent", "reorganize": False}


def test_token_is_written_without_logging_and_for_the_user_only(hv: dict[str, Any]) -> None:
    task = find_task("token.yml", "ansible.windows.win_powershell")
    assert task["no_log"] is True
    module = task["ansible.windows.win_powershell"]
    assert [p["name"] for p in module["sensitive_parameters"]] == ["Token"]
    assert "Token" not in module["parameters"]
    slurp = find_task("token.yml", "ansible.builtin.slurp")
    assert slurp["no_log"] is True
    script = render(TEMPLATES / "write_token.ps1.j2", hv)
    assert "SetAccessRuleProtection($true, $false)" in script
    assert "[System.Security.SecureString]$Token" in script
    assert "Write-Output" not in script and "Write-Host" not in script


def test_account_password_is_never_logged() -> None:
    for name in sorted(p.name for p in TASKS.glob("*.yml")):
        for task in load_tasks(name):
            if "ansible.builtin.assert" in task:  # conditions only: a failed assert shows no value
                continue
            text = yaml.safe_dump({k: v for k, v in task.items() if k != "vars"})
            if "worker_windows_user_password" in text or "head_cluster_token" in text:
                assert "no_log" in task, f"{name}: {task['name']}"


def test_uv_installs_the_pinned_python_into_the_base_folder(hv: dict[str, Any]) -> None:
    install = next(t for t in load_tasks("python-uv.yml") if t["name"] == "Install the pinned Python with uv")
    scope = {**hv, "worker_windows__uv_found": {"files": [{"path": r"C:\x\uv.exe"}]}}
    args = task_args(install, "ansible.windows.win_command", scope)
    assert args["argv"] == [
        r"C:\x\uv.exe",
        "python",
        "install",
        hv["bittrader_python_version"],
        "--no-bin",
        "--no-registry",
    ]
    assert args["creates"] == hv["worker_windows_paths"]["python_marker"]
    env = template_data(install["environment"], {**scope, **install["vars"]})
    assert env["UV_PYTHON_INSTALL_DIR"] == hv["bittrader_base_dir"] + "\\python"
    assert "UV_PYTHON_INSTALL_MIRROR" not in env


def test_the_installer_source_with_a_security_only_pin_is_refused() -> None:
    """python.org ships no Windows installer of a security-only release: the download would be a 404."""
    check = check_task("Check that python.org has a Windows installer of the pinned Python (installer source)")
    for version, source, refused in [
        ("3.12.12", "installer", True),
        ("3.12.12", "uv", False),
        ("3.12.10", "installer", False),
    ]:
        variables = host_vars("trader", r"C:\Users\trader", "lan", "192.168.1.0/24", "192.168.1.30",
                              bittrader_python_version=version, worker_windows_python_source=source)
        assert assert_fails(check, variables) is refused, (version, source)
    # The cluster's preflight refuses it too, before any host changes, when the inventory sets the source.
    preflight_file = REPO / "roles" / "cluster_facts" / "tasks" / "preflight.yml"
    preflight = yaml.safe_load(preflight_file.read_text(encoding="utf-8"))
    task = next(t for t in preflight if "bittrader_windows_installer_problem" in yaml.safe_dump(t))
    variables = host_vars("trader", r"C:\Users\trader", "lan", "192.168.1.0/24", "192.168.1.30",
                          worker_windows_python_source="installer")
    assert assert_fails(task, variables)
    defaults_only = {k: v for k, v in variables.items() if k != "worker_windows_python_source"}
    assert not assert_fails(task, defaults_only)  # the role's default source (uv) is never refused


def test_uv_download_is_checked_against_the_pinned_sha256(hv: dict[str, Any]) -> None:
    download = next(t for t in load_tasks("python-uv.yml") if t["name"] == "Download uv")
    args = task_args(download, "ansible.windows.win_get_url", hv)
    assert args["url"] == (
        f"https://github.com/astral-sh/uv/releases/download/{hv['bittrader_uv_version']}/uv-x86_64-pc-windows-msvc.zip"
    )
    assert args["checksum_algorithm"] == "sha256"
    assert re.fullmatch(r"[0-9a-f]{64}", args["checksum"])
    assert args["checksum"] == hv["bittrader_uv_windows_sha256"]
    check = check_task("Check that uv's download is verified by its SHA-256 (uv source)")
    assert not assert_fails(check, hv)
    assert assert_fails(check, {**hv, "worker_windows_uv_checksum": ""})
    installer = {**hv, "worker_windows_uv_checksum": "", "worker_windows_python_source": "installer"}
    assert not assert_fails(check, installer)


def test_pip_installs_the_same_pins_as_the_linux_nodes(hv: dict[str, Any]) -> None:
    scope = {
        **hv,
        "bittrader_extra_pip_packages": ["pandas==2.3.3"],
        "worker_windows_wheelhouse": r"C:\wheels",
        "worker_windows_pip_extra_args": "--timeout 60",
    }
    plan = next(t for t in load_tasks("venv.yml") if t["name"].startswith("Ask pip"))
    install = next(t for t in load_tasks("venv.yml") if t["name"].startswith("Install the pinned Ray"))
    plan_argv = task_args(plan, "ansible.windows.win_command", scope)["argv"]
    install_argv = task_args(install, "ansible.windows.win_command", scope)["argv"]
    pins = [
        f"ray[{','.join(sorted(hv['bittrader_ray_extras']))}]=={hv['bittrader_ray_version']}",
        f"psutil=={hv['bittrader_psutil_version']}",
        f"numpy=={hv['bittrader_numpy_version']}",
        f"optuna=={hv['bittrader_optuna_version']}",
        "pandas==2.3.3",
    ]
    assert pins[0] == "ray[default,tune]==2.60.0"
    assert install_argv == [
        hv["bittrader_venv_python"],
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        r"C:\wheels",
        "--no-compile",  # bittrader_pip_compile: false, as on the Linux and macOS nodes
        "--timeout",
        "60",
        *pins,
    ]
    compiled = task_args(install, "ansible.windows.win_command", {**scope, "bittrader_pip_compile": True})["argv"]
    assert "--no-compile" not in compiled and "--no-compile" in plan_argv
    assert plan_argv[:5] == install_argv[:5]
    assert {"--dry-run", "--report", "-"} <= set(plan_argv)
    assert plan_argv[-len(pins):] == pins
    # The Linux and macOS nodes' pins (ray_node's vars/main.yml, used by venv.yml, state.yml and the upgrade).
    linux = (REPO / "roles" / "ray_node" / "vars" / "main.yml").read_text(encoding="utf-8")
    for package in ("bittrader_ray_requirement(bittrader_ray_extras)", "'psutil=='", "'numpy=='", "'optuna=='"):
        assert package in linux
    pending = template_data(
        install["vars"]["worker_windows__pip_pending"],
        {**scope, "worker_windows__pip_plan": {"stdout": json.dumps({"install": []})}},
    )
    assert pending == []


def test_commands_declare_when_they_change_something() -> None:
    for name in sorted(p.name for p in TASKS.glob("*.yml")):
        for task in load_tasks(name):
            if "ansible.windows.win_command" in task:
                has_creates = "creates" in task["ansible.windows.win_command"]
                assert "changed_when" in task or has_creates, f"{name}: {task['name']}"


# --------------------------------------------------------------------------------------------------
# Role hygiene: every default specified and documented (argument spec, generated docs/variables.md)
# --------------------------------------------------------------------------------------------------


def test_every_default_is_under_a_heading_specified_and_documented() -> None:
    """Each default sits under a section heading of defaults/main.yml, is described once in the
    argument spec, and appears in docs/variables.md, which is generated from that spec (the README
    links there instead of repeating the table)."""
    lines = (ROLE / "defaults" / "main.yml").read_text(encoding="utf-8").splitlines()
    defaults = yaml.safe_load("\n".join(lines))
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    options = spec["argument_specs"]["main"]["options"]
    docs = (ROLE.parents[1] / "docs" / "variables.md").read_text(encoding="utf-8")
    for index, line in enumerate(lines):
        key = line.split(":", 1)[0]
        if key in defaults:
            above = index - 1
            while above >= 0 and not lines[above].startswith("#"):
                above -= 1
            assert lines[above].startswith("# --- "), f"{key} is under no section heading"
    assert all(key.startswith("worker_windows_") for key in defaults)
    assert sorted(options) == sorted(defaults)
    for key in defaults:
        assert options[key].get("description"), f"the argument spec does not describe {key}"
        assert f"`{key}`" in docs, f"docs/variables.md does not document {key}"
    assert "docs/variables.md" in (ROLE / "README.md").read_text(encoding="utf-8")
    for entry in ("verify", "uninstall", "control", "paths", "code"):
        for key in spec["argument_specs"][entry]["options"]:
            assert key in defaults or key.startswith("ray_node_control_"), f"{entry}: {key}"
    assert options["worker_windows_user_password"].get("no_log") is True


def test_site_runs_the_windows_workers_after_the_linux_workers() -> None:
    plays = yaml.safe_load((REPO / "site.yml").read_text(encoding="utf-8"))
    hosts = [play.get("hosts") for play in plays]
    assert hosts.index("workers_windows") == hosts.index("workers_linux") + 1 or (
        hosts.index("workers_windows") > hosts.index("workers_linux")
    )
    play = plays[hosts.index("workers_windows")]
    assert play["roles"] == [{"role": "worker_windows"}]
    assert play["gather_facts"] is True


def test_defaults_pass_the_argument_specs() -> None:
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    # Ansible templates role defaults before validating them: some refer to the bittrader role's.
    variables = role_defaults("cluster_facts", "worker_windows")
    # The control entry point's two inputs have no default: its caller (remove_worker.yml) passes them.
    variables |= {"ray_node_control_action": "stop", "ray_node_control_units": ["ray", "throttle"]}
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))["argument_specs"]
    for entry, spec in specs.items():
        values = {k: render_value(variables[k], variables) for k in spec["options"]}
        result = ArgumentSpecValidator(spec["options"]).validate(values)
        assert result.error_messages == [], entry
