"""The Windows rules of filter_plugins/bittrader_windows.py: Ray-safe paths, python.org's Windows installers
(none for source-only security releases) and the limits of Microsoft's Task Scheduler schema."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from ansible_render import REPO, render_value, role_defaults

_spec = importlib.util.spec_from_file_location(
    "bittrader_windows_filters", REPO / "filter_plugins" / "bittrader_windows.py"
)
assert _spec is not None and _spec.loader is not None
bw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bw)


@pytest.mark.parametrize(
    ("path", "fine"),
    [
        (r"C:\ProgramData\Bittrader", True),
        (r"D:\bittrader-node_2\x.y", True),
        ("C:\\ProgramData\\Bittrader\\", True),
        (r"C:\Users\John Smith\.bittrader_worker", False),  # a blank
        ("C:\\Users\\Jos\u00e9\\.bittrader_worker", False),  # an accent
        ("C:\\Users\\O\u2019Neil", False),  # a typographic apostrophe
        ("C:\\Users\\\u5f20\u4f1f", False),  # CJK letters
        (r"C:\Users\x\.\y", False),
        (r"C:\Users\..\y", False),
        (r"C:\\Users", False),
        ("Bittrader", False),
        (r"\\server\share\Bittrader", False),
        ("C:/ProgramData/Bittrader", False),
        ("", False),
    ],
)
def test_ray_safe_paths(path: str, fine: bool) -> None:
    assert (bw.path_problem(path, "worker_windows_base_dir") == "") is fine


def test_a_path_problem_names_the_setting_and_the_fix() -> None:
    text = bw.path_problem(r"C:\Users\John Smith\.bittrader_worker", "worker_windows_base_dir")
    assert text.startswith("worker_windows_base_dir 'C:\\\\Users\\\\John Smith")
    assert "blank or a non-ASCII character" in text and "C:\\ProgramData\\Bittrader" in text


@pytest.mark.parametrize(
    ("version", "refused"),
    [
        ("3.12.10", False),  # the last 3.12 release with Windows installers
        ("3.12.11", True),  # the first source-only 3.12 release
        ("3.12.12", True),  # the cluster's default pin
        ("3.11.9", False),
        ("3.11.10", True),
        ("3.10.11", False),
        ("3.10.12", True),
        ("3.9.13", False),
        ("3.9.14", True),
        ("3.13.16", False),
        ("3.13.17", True),
        ("3.14.2", False),  # 3.14 is still in bugfix support
        ("3.15.0", False),
    ],
)
def test_python_org_has_no_installer_for_source_only_releases(version: str, refused: bool) -> None:
    assert (bw.installer_problem(version, "installer") != "") is refused
    assert bw.installer_problem(version, "uv") == ""  # uv's standalone builds exist for every release


def test_the_installer_refusal_says_what_to_do() -> None:
    text = bw.installer_problem("3.12.12", "installer")
    assert "3.12.12 is a source-only security release" in text
    assert "3.12.10 was the last 3.12 release with installers" in text
    assert "worker_windows_python_source: uv" in text
    assert bw.installer_problem("3.12", "installer").startswith("bittrader_python_version '3.12' is not a release")


def test_the_cluster_default_pin_with_the_installer_source_is_refused() -> None:
    variables = role_defaults("cluster_facts", "worker_windows")
    version = render_value(variables["bittrader_python_version"], variables)
    assert bw.installer_problem(version, "installer") != ""
    assert bw.installer_problem(version, render_value(variables["worker_windows_python_source"], variables)) == ""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT0S", 0), ("PT1M", 60), ("PT30S", 30), ("PT1H30M", 5400), ("P31D", 31 * 86400), ("P1DT2H", 93600),
     ("PT0.5S", 0.5), ("P1W", 604800), ("P", None), ("PT", None), ("1M", None), ("PT1X", None), ("", None)],
)
def test_iso_8601_durations(text: str, seconds: float | None) -> None:
    assert bw.duration_seconds(text) == seconds


def task(**settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "T",
        "triggers": [{"type": "boot", "delay": "PT30S"}],
        "execution_time_limit": "PT0S",
        "multiple_instances": 2,
        "restart_count": 3,
        "restart_interval": "PT1M",
        "priority": 7,
    }
    base.update(settings)
    return base


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({}, None),
        ({"restart_count": 255}, None),
        ({"restart_count": 256}, "restart_count 256 is outside the schema's 1..255"),
        ({"restart_count": 999}, "restart_count 999 is outside the schema's 1..255"),
        ({"restart_count": 0}, "restart_count 0 is outside the schema's 1..255"),
        ({"restart_interval": "PT59S"}, "restart_interval PT59S is below the schema's minimum PT1M"),
        ({"restart_interval": "P31D"}, None),
        ({"restart_interval": "PT745H"}, "restart_interval PT745H is above the schema's maximum P31D"),
        ({"restart_interval": None}, "restart_count needs restart_interval"),
        ({"restart_count": None, "restart_interval": "PT1M"}, "restart_interval needs restart_count"),
        ({"execution_time_limit": "72h"}, "execution_time_limit '72h' is not an ISO 8601 duration"),
        ({"multiple_instances": 4}, "multiple_instances 4 is none of 0..3"),
        ({"priority": 11}, "priority 11 is outside the schema's 0..10"),
        ({"triggers": [{"type": "time", "repetition": {"interval": "PT1M"}}]}, "needs start_boundary"),
        ({"triggers": [{"type": "time", "start_boundary": "2000-01-01 00:00", "repetition": {"interval": "PT1M"}}]},
         "start_boundary '2000-01-01 00:00' is not YYYY-MM-DDThh:mm:ss"),
        ({"triggers": [{"type": "time", "start_boundary": "2000-01-01T00:00:00", "repetition": {"interval": "PT30S"}}]},
         "repetition interval PT30S is below the schema's minimum PT1M"),
        ({"triggers": [{"type": "boot", "repetition": {"interval": "PT5M", "duration": "PT1M"}}]},
         "the repetition interval exceeds its duration"),
        ({"triggers": [{"type": "boot", "repetition": {"interval": "PT1M", "duration": "PT30S"}}]},
         "repetition duration PT30S is below the schema's minimum PT1M"),
        ({"triggers": [{"type": "event"}]}, "an event trigger needs its subscription"),
        ({"triggers": [{"type": "startup"}]}, "unknown trigger type"),
    ],
)
def test_task_scheduler_schema_limits(settings: dict[str, Any], problem: str | None) -> None:
    problems = bw.task_schedule_problems(task(**settings))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_the_filters_are_registered() -> None:
    filters = bw.FilterModule().filters()
    assert filters["bittrader_windows_path_problem"] is bw.path_problem
    assert filters["bittrader_windows_installer_problem"] is bw.installer_problem
    assert filters["bittrader_task_schedule_problems"] is bw.task_schedule_problems
