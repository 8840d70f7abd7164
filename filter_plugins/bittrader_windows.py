"""Jinja filters for the Windows side of the Bittrader Ray cluster: the rules a Windows worker's settings
must follow before anything changes on the PC (roles/worker_windows/tasks/checks.yml and the cluster's
preflight), written once here and unit-tested without Windows (tests/unit/test_windows_filters.py).

- bittrader_windows_path_problem: the folders Ray lives in must be plain ASCII without blanks; Ray's
  workers and agents fail to start below paths with a space or a non-ASCII letter (C:\\Users\\John Smith,
  C:\\Users\\José), which is why the node does not live in the profile.
- bittrader_windows_installer_problem: python.org publishes Windows installers for bugfix releases only;
  a security-only release (source only) has no python-X.Y.Z-amd64.exe, and its download is a 404.
- bittrader_task_schedule_problems: a scheduled task's settings against the limits of Microsoft's Task
  Scheduler schema (a value out of range makes the registration fail on the PC, after the other hosts
  have changed).
- bittrader_windows_code_problem: whether the service account could read the strategy code folder
  (OneDrive's online-only files cannot be fetched from the session Ray's workers run in).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# The last patch release of each minor version that python.org shipped Windows installers for: its
# "final regular bugfix release with binary installers" (PEP 569, 596, 619, 664, 693, 719). Later patch
# releases of that minor version are source-only security releases. Minor versions not listed here
# are still in bugfix support (or newer than this table): every release of them has installers.
LAST_WINDOWS_INSTALLER: dict[tuple[int, int], int] = {
    (3, 8): 10,  # PEP 569
    (3, 9): 13,  # PEP 596
    (3, 10): 11,  # PEP 619
    (3, 11): 9,  # PEP 664
    (3, 12): 10,  # PEP 693
    (3, 13): 16,  # PEP 719 (2026-10-06)
}

_DRIVE_PATH = re.compile(r"^[A-Za-z]:(?:\\[A-Za-z0-9_.\-]+)+\\?$")


def path_problem(path: Any, what: str = "the path") -> str:
    """'' when path is an absolute Windows path of plain ASCII letters, digits, '.', '_', '-' and
    backslashes (no blanks, no other characters), else why not."""
    text = str(path or "")
    if not text:
        return f"{what} is empty"
    if not text.isascii() or any(ch.isspace() for ch in text):
        return (
            f"{what} {text!r} has a blank or a non-ASCII character: Ray's workers and agents fail to start "
            "below such a path on Windows. Use a plain path such as C:\\ProgramData\\Bittrader"
        )
    if not _DRIVE_PATH.match(text) or any(part in {".", ".."} for part in text.split("\\")):
        return (
            f"{what} {text!r} is not an absolute Windows folder made of letters, digits, '.', '_' and '-' "
            "(such as C:\\ProgramData\\Bittrader)"
        )
    return ""


def _release(version: Any) -> tuple[int, int, int] | None:
    found = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", str(version or "").strip())
    return (int(found.group(1)), int(found.group(2)), int(found.group(3))) if found else None


def installer_problem(version: Any, source: Any = "installer") -> str:
    """'' unless source is "installer" and python.org has no Windows installer of version (a source-only
    security release), else the refusal with the fix."""
    if str(source) != "installer":
        return ""
    release = _release(version)
    if release is None:
        return f"bittrader_python_version {version!r} is not a release such as 3.12.10"
    major, minor, patch = release
    last = LAST_WINDOWS_INSTALLER.get((major, minor))
    if last is None or patch <= last:
        return ""
    return (
        f"python.org has no Windows installer of Python {version}: {major}.{minor}.{patch} is a source-only "
        f"security release ({major}.{minor}.{last} was the last {major}.{minor} release with installers), so "
        f"worker_windows_python_source: installer would download a 404. Use worker_windows_python_source: uv "
        f"(uv's standalone build of {version}), or pin a release python.org has an installer of"
    )


_DURATION = re.compile(
    r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
_UNIT_S = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)


def duration_seconds(value: Any) -> float | None:
    """An XML Schema duration (PnYnMnDTnHnMnS; a year counted as 365 days, a month as 30) in seconds,
    or None when value is not one."""
    found = _DURATION.match(str(value or "").strip())
    if not found:
        return None
    return float(sum(float(part) * unit for part, unit in zip(found.groups(), _UNIT_S, strict=True) if part))


# Limits of Microsoft's Task Scheduler schema (learn.microsoft.com, windows/win32/taskschd,
# "Task Scheduler Schema Elements"):
#   RestartOnFailure/Count       unsignedByte, minInclusive 1                -> 1..255
#   RestartOnFailure/Interval    duration, minInclusive PT1M, maxInclusive P31D
#   Repetition/Interval          duration, minInclusive PT1M, maxInclusive P31D
#   Repetition/Duration          duration, minInclusive PT1M (absent: repeated indefinitely);
#                                the interval may not exceed it (win_scheduled_task refuses that too)
#   ExecutionTimeLimit           duration; PT0S lets the task run indefinitely
#   MultipleInstancesPolicy      Parallel | Queue | IgnoreNew | StopExisting (win_scheduled_task 0..3)
#   Priority                     priorityType: 0..10
#   Delay (boot, logon, event)   duration
#   StartBoundary                dateTime (win_scheduled_task wants YYYY-MM-DDThh:mm:ss)
RESTART_COUNT = (1, 255)
RESTART_INTERVAL_S = (60.0, 31 * 86400.0)
REPETITION_INTERVAL_S = (60.0, 31 * 86400.0)
REPETITION_DURATION_MIN_S = 60.0
MULTIPLE_INSTANCES = {0: "Parallel", 1: "Queue", 2: "IgnoreNew", 3: "StopExisting"}
PRIORITY = (0, 10)
TRIGGER_TYPES = (
    "boot", "daily", "event", "idle", "logon", "monthlydow", "monthly", "registration", "time", "weekly",
    "session_state_change",
)
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _duration(problems: list[str], where: str, value: Any, low: float | None = None, high: float | None = None,
              low_text: str = "", high_text: str = "") -> float | None:
    seconds = duration_seconds(value)
    if seconds is None:
        problems.append(f"{where} {value!r} is not an ISO 8601 duration such as PT1M")
        return None
    if low is not None and seconds < low:
        problems.append(f"{where} {value} is below the schema's minimum {low_text}")
    if high is not None and seconds > high:
        problems.append(f"{where} {value} is above the schema's maximum {high_text}")
    return seconds


def task_schedule_problems(task: Mapping[str, Any]) -> list[str]:
    """Every setting of a community.windows.win_scheduled_task definition (its module arguments) that
    Microsoft's Task Scheduler schema would refuse; [] when it would register."""
    problems: list[str] = []
    name = str(task.get("name") or "the task")
    restart_count = task.get("restart_count")
    if restart_count is not None:
        count = _int(restart_count)
        if count is None or not RESTART_COUNT[0] <= count <= RESTART_COUNT[1]:
            problems.append(f"{name}: restart_count {restart_count!r} is outside the schema's 1..255")
        if task.get("restart_interval") is None:
            problems.append(f"{name}: restart_count needs restart_interval")
    if task.get("restart_interval") is not None:
        _duration(problems, f"{name}: restart_interval", task["restart_interval"], *RESTART_INTERVAL_S, "PT1M", "P31D")
        if restart_count is None:
            problems.append(f"{name}: restart_interval needs restart_count")
    if task.get("execution_time_limit") is not None:
        _duration(problems, f"{name}: execution_time_limit", task["execution_time_limit"])
    if task.get("multiple_instances") is not None and _int(task["multiple_instances"]) not in MULTIPLE_INSTANCES:
        problems.append(f"{name}: multiple_instances {task['multiple_instances']!r} is none of 0..3 "
                        "(Parallel, Queue, IgnoreNew, StopExisting)")
    if task.get("priority") is not None:
        priority = _int(task["priority"])
        if priority is None or not PRIORITY[0] <= priority <= PRIORITY[1]:
            problems.append(f"{name}: priority {task['priority']!r} is outside the schema's 0..10")
    for index, trigger in enumerate(task.get("triggers") or []):
        where = f"{name}: trigger {index + 1} ({trigger.get('type')})"
        kind = trigger.get("type")
        if kind not in TRIGGER_TYPES:
            problems.append(f"{where}: unknown trigger type")
        if kind in ("daily", "monthlydow", "monthly", "time", "weekly") and not trigger.get("start_boundary"):
            problems.append(f"{where}: needs start_boundary")
        for key in ("start_boundary", "end_boundary"):
            if trigger.get(key) is not None and not _DATETIME.match(str(trigger[key])):
                problems.append(f"{where}: {key} {trigger[key]!r} is not YYYY-MM-DDThh:mm:ss")
        if kind == "event" and not str(trigger.get("subscription") or "").strip():
            problems.append(f"{where}: an event trigger needs its subscription (an event query)")
        for key in ("delay", "execution_time_limit", "random_delay"):
            if trigger.get(key) is not None:
                _duration(problems, f"{where}: {key}", trigger[key])
        repetition = trigger.get("repetition")
        if repetition:
            interval = _duration(problems, f"{where}: repetition interval", repetition.get("interval"),
                                 *REPETITION_INTERVAL_S, "PT1M", "P31D")
            if repetition.get("duration") is not None:
                duration = _duration(problems, f"{where}: repetition duration", repetition["duration"],
                                     REPETITION_DURATION_MIN_S, None, "PT1M")
                if interval is not None and duration is not None and interval > duration:
                    problems.append(f"{where}: the repetition interval exceeds its duration")
    return problems


def code_problem(result: Mapping[str, Any] | None, path: Any, user: Any) -> str:
    """'' when roles/worker_windows/files/code_check.py, run as the service account in a batch logon (as
    Ray's workers run), could read the strategy code folder; else what is wrong and how to fix it. result
    is the registered win_command result (rc, stdout: the script's JSON)."""
    import json

    where = f"the strategy code folder {path}"
    result = result or {}
    if result.get("skipped"):
        return ""
    try:
        report = json.loads(str(result.get("stdout") or "").strip().splitlines()[-1])
    except (IndexError, ValueError):
        report = None
    if result.get("rc", 0) != 0 or not isinstance(report, dict):
        output = str(result.get("stderr") or result.get("msg") or result.get("stdout") or "").strip()
        return f"{user} could not run the check of {where} ({output[:300] or 'no output'})"
    if not report.get("exists") or not report.get("readable"):
        return (
            f"{user} cannot read {where} ({report.get('error') or 'not a folder'}) from a session without a desktop, "
            f"as Ray's workers run: keep the code in a folder {user} can read (not in another account's profile)"
        )
    count = int(report.get("online_only_count") or 0)
    if count:
        listed = ", ".join(report.get("online_only") or [])
        return (
            f"{count} file(s) of {where} are online-only (OneDrive Files On-Demand: {listed}). OneDrive fetches them "
            f"only in a signed-in session, so Ray's workers (no desktop session) cannot import them. In File Explorer, "
            f"right-click the folder > Always keep on this device, or use a plain folder kept in sync"
        )
    if report.get("unreadable"):
        return f"{user} cannot read files of {where}: {'; '.join(report['unreadable'])}"
    return ""


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_windows_path_problem": path_problem,
            "bittrader_windows_installer_problem": installer_problem,
            "bittrader_task_schedule_problems": task_schedule_problems,
            "bittrader_duration_seconds": duration_seconds,
            "bittrader_windows_code_problem": code_problem,
        }
