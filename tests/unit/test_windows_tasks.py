"""The Windows worker's scheduled tasks (roles/worker_windows): the Ray worker's and the throttle's, their
schedules within Task Scheduler's schema, and the throttle's reset task. The helpers and the hosts are
test_windows_role.py's."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_render import render
from test_windows_role import (
    HOSTS,
    NODE_JSON,
    REPO,
    ROLE,
    TASKS,
    TEMPLATES,
    assert_fails,
    check_task,
    find_task,
    host_vars,
    load_tasks,
    split_command_line,
    task_args,
    template_data,
    throttle,
    winfilters,
)


@pytest.fixture(params=HOSTS, ids=[h[0] for h in HOSTS])
def hv(request: pytest.FixtureRequest) -> dict[str, Any]:
    """test_windows_role.py's hosts."""
    _id, user, profile, mode, cidr, ip = request.param
    return host_vars(user, profile, mode, cidr, ip)

# --------------------------------------------------------------------------------------------------
# Scheduled tasks
# --------------------------------------------------------------------------------------------------



def throttle_argv(hv: dict[str, Any]) -> list[str]:
    """The command line of the throttle's tasks: the venv's windowless Python runs the agent's module."""
    paths = hv["worker_windows_paths"]
    return [paths["venv_pythonw"], "-m", "bittrader_node_agent.throttle", "--config", paths["throttle_config"]]

def test_ray_task_runs_the_supervisor_at_boot_as_the_standard_user(hv: dict[str, Any]) -> None:
    task = find_task("service.yml", "community.windows.win_scheduled_task")
    args = task_args(task, "community.windows.win_scheduled_task", hv)
    assert args["name"] == "Bittrader Ray Worker"
    assert args["path"] == "\\Bittrader\\"
    assert args["state"] == "present"
    # At boot, and every minute: with IgnoreNew the repeating trigger starts the supervisor again only
    # when it died (Task Scheduler's restart-on-failure does not fire for a process that dies later).
    assert args["triggers"] == [
        {"type": "boot", "enabled": True, "delay": "PT30S"},
        {"type": "time", "enabled": True, "start_boundary": "2000-01-01T00:00:00", "repetition": {"interval": "PT1M"}},
    ]
    assert "duration" not in args["triggers"][1]["repetition"]  # repeated indefinitely
    assert args["username"] == hv["bittrader_user"]
    assert args["username"].lower() not in {"administrator", "system", "admin", "administrators"}
    assert args["run_level"] == "limited"
    assert args["logon_type"] == "s4u"
    assert "password" not in args
    assert args["hidden"] is True
    assert args["enabled"] is True
    assert args["execution_time_limit"] == "PT0S"
    assert args["multiple_instances"] == 2
    assert args["restart_count"] == 3
    assert args["restart_interval"] == "PT1M"
    assert winfilters.task_schedule_problems(args) == []
    assert args["disallow_start_if_on_batteries"] is False
    assert args["stop_if_going_on_batteries"] is False
    (action,) = args["actions"]
    assert action["path"] == f'"{hv["bittrader_venv_python"]}"'
    assert '"' not in action["working_directory"]
    assert action["working_directory"] == hv["bittrader_base_dir"]
    argv = split_command_line(action["path"] + " " + action["arguments"])
    assert argv == [
        hv["bittrader_venv_python"],
        "-m",
        "bittrader_node_agent.supervisor",
        "run",
        "--config",
        hv["bittrader_node_config"],
        "--loop",
    ]
    assert template_data(task["no_log"], hv) is False
    assert task["notify"] == "Restart the Windows Ray worker"


def test_ray_task_with_a_stored_password_hides_it() -> None:
    variables = host_vars(
        "John Smith",
        r"C:\Users\John Smith",
        "lan",
        "192.168.1.0/24",
        "192.168.1.30",
        worker_windows_task_logon_type="password",
        worker_windows_user_password="s3cret pass",
    )
    task = find_task("service.yml", "community.windows.win_scheduled_task")
    args = task_args(task, "community.windows.win_scheduled_task", variables)
    assert args["logon_type"] == "password"
    assert args["password"] == "s3cret pass"
    assert args["update_password"] is False
    assert template_data(task["no_log"], variables) is True


def test_throttle_task_starts_at_sign_in_in_the_users_session(hv: dict[str, Any]) -> None:
    task = find_task("throttle.yml", "community.windows.win_scheduled_task")
    args = task_args(task, "community.windows.win_scheduled_task", hv)
    assert args["triggers"] == [{"type": "logon", "enabled": True, "user_id": hv["bittrader_user"]}]
    assert args["username"] == hv["bittrader_user"]
    assert args["logon_type"] == "interactive_token"
    assert args["run_level"] == "limited"
    assert args["execution_time_limit"] == "PT0S"
    assert args["multiple_instances"] == 2
    (action,) = args["actions"]
    assert action["path"] == '"' + hv["worker_windows_paths"]["venv_pythonw"] + '"'
    argv = split_command_line(action["path"] + " " + action["arguments"])
    assert argv == throttle_argv(hv)


def registered_tasks(variables: dict[str, Any]) -> list[dict[str, Any]]:
    """The module arguments of every scheduled task the role registers."""
    found = []
    for name in sorted(p.name for p in TASKS.glob("*.yml")):
        for task in load_tasks(name):
            module = task.get("community.windows.win_scheduled_task")
            if module and module.get("state") == "present":
                found.append(task_args(task, "community.windows.win_scheduled_task", variables))
    return found


def test_every_scheduled_task_is_within_the_task_scheduler_schema(hv: dict[str, Any]) -> None:
    tasks = registered_tasks(hv)
    names = sorted(t["name"] for t in tasks)
    assert names == ["Bittrader Ray Worker", "Bittrader Throttle", "Bittrader Throttle Reset"]
    for args in tasks:
        assert winfilters.task_schedule_problems(args) == [], args["name"]
        assert args["multiple_instances"] == 2, args["name"]  # IgnoreNew: never two at once


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("worker_windows_task_restart_count", 999, "restart_count 999 is outside the schema's 1..255"),
        ("worker_windows_task_restart_count", 0, "restart_count 0 is outside the schema's 1..255"),
        ("worker_windows_task_restart_interval", "PT30S", "restart_interval PT30S is below the schema's minimum PT1M"),
        ("worker_windows_task_restart_interval", "P32D", "restart_interval P32D is above the schema's maximum P31D"),
        ("worker_windows_task_watchdog_interval", "PT30S", "repetition interval PT30S is below the schema's minimum"),
        ("worker_windows_task_boot_delay", "30s", "delay '30s' is not an ISO 8601 duration"),
        ("worker_windows_task_priority", 11, "priority 11 is outside the schema's 0..10"),
        ("worker_windows_throttle_reset_interval", "P40D", "repetition interval P40D is above the schema's maximum"),
    ],
)
def test_the_checks_refuse_a_schedule_the_schema_refuses(setting: str, value: Any, problem: str) -> None:
    variables = host_vars("trader", r"C:\Users\trader", "lan", "192.168.1.0/24", "192.168.1.30", **{setting: value})
    check = check_task("Check the scheduled tasks against the Task Scheduler schema")
    assert assert_fails(check, variables)
    problems = template_data(check["vars"]["worker_windows__problems"], variables)
    assert any(problem in p for p in problems), problems
    # The same value in the registered task's arguments breaks the schema there too.
    assert any(problem in p for args in registered_tasks(variables) for p in winfilters.task_schedule_problems(args))


def test_the_role_defaults_pass_the_schedule_checks() -> None:
    variables = host_vars("trader", r"C:\Users\trader", "lan", "192.168.1.0/24", "192.168.1.30")
    check = check_task("Check the scheduled tasks against the Task Scheduler schema")
    assert not assert_fails(check, variables)


def test_a_stopped_task_stays_stopped_until_it_is_started() -> None:
    """The every-minute trigger would start a stopped supervisor again (before pip replaces the venv's
    files, or while a worker is being removed): a stop also disables the task, a start enables it."""
    script = render(TEMPLATES / "scheduled_task.ps1.j2", {})
    stop_at = script.index("if ($Action -in @('stop', 'restart'))")
    start_at = script.index("if ($Action -in @('start', 'restart'))")
    stop, start = script[stop_at:start_at], script[start_at:]
    assert "Disable-ScheduledTask -InputObject $task" in stop
    assert stop.index("Stop-ScheduledTask") < stop.index("Disable-ScheduledTask") < stop.index("Get-LeftoverProcess")
    assert "Enable-ScheduledTask -InputObject $task" in start
    assert start.index("Enable-ScheduledTask") < start.index("Start-ScheduledTask")
    assert "is disabled; enable it" not in script  # a start no longer fails on a task a stop disabled


def test_throttle_reset_task_runs_as_the_user_at_boot_sign_out_and_periodically(hv: dict[str, Any]) -> None:
    variables = {**hv, "bittrader_throttle_enabled": True}
    task = next(t for t in load_tasks("throttle.yml") if t["name"].startswith("Register the throttle's reset task"))
    args = task_args(task, "community.windows.win_scheduled_task", variables)
    assert args["name"] == "Bittrader Throttle Reset"
    assert args["username"] == hv["bittrader_user"] and args["run_level"] == "limited"
    assert args["logon_type"] == "s4u"  # runs with nobody signed in, like the Ray worker's task
    kinds = [t["type"] for t in args["triggers"]]
    assert kinds == ["boot", "event", "time"]
    event = args["triggers"][1]
    assert "Microsoft-Windows-Winlogon" in event["subscription"] and "EventID=7002" in event["subscription"]
    assert args["triggers"][2]["repetition"] == {"interval": "PT5M"}
    (action,) = args["actions"]
    argv = split_command_line(action["path"] + " " + action["arguments"])
    assert argv == [*throttle_argv(hv), "--reset"]
    # The option exists in the daemon it runs.
    assert throttle.main(["--config", "/nonexistent/throttle.json", "--reset"]) == throttle.EX_CONFIG
    removed = template_data(find_task("throttle-off.yml", "community.windows.win_scheduled_task")["loop"], hv)
    assert "Bittrader Throttle Reset" in removed
    uninstalled = template_data(find_task("uninstall.yml", "community.windows.win_scheduled_task")["loop"], hv)
    assert "Bittrader Throttle Reset" in uninstalled


def test_throttle_files_come_from_the_shared_sources() -> None:
    # The supervisor and the throttle are the node agent's modules, from the wheel the Linux nodes get too.
    key = "ansible.builtin.include_tasks"
    includes = [t[key] for t in load_tasks("node.yml") if key in t]
    assert includes == ["agent.yml"]
    builds = [t[key] for t in load_tasks("agent.yml") if key in t]
    assert builds == ["{{ role_path }}/../ray_node/tasks/agent-build.yml"]
    for src in builds:
        assert (ROLE / src.replace("{{ role_path }}/", "")).resolve().is_file(), src
    assert not [t for t in load_tasks("throttle.yml") + load_tasks("node.yml") if "ansible.windows.win_copy" in t]
    for module in ("supervisor", "throttle/__main__"):
        assert (REPO / "node_agent/src/bittrader_node_agent" / f"{module}.py").is_file()
    template = find_task("node.yml", "ansible.windows.win_template")
    src = template["ansible.windows.win_template"]["src"]
    assert (ROLE / src.replace("{{ role_path }}/", "")).resolve() == NODE_JSON


