"""The filters' macOS rules: which Macs get Ray wheels (preflight and setup-Darwin.yml), the launchd
property list writer, and the parsers of macOS command output. Output samples are those of macOS 12-15."""

from __future__ import annotations

import plistlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "filter_plugins"))

import bittrader_macos as mac
import bittrader_versions
from filter_modules import all_filters

# --- Ray wheels on macOS --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["arm64", "aarch64"])
@pytest.mark.parametrize("macos", ["12.0", "12.7.6", "13.6", "14.5", "15.2.1", "26.1", ""])
def test_apple_silicon_on_macos_12_or_newer_has_current_ray(arch: str, macos: str) -> None:
    assert bittrader_versions.ray_wheel_problem("2.60.0", "3.12.12", "Darwin", arch, macos) == ""


@pytest.mark.parametrize("macos", ["11.7.10", "11.0", "10.15.7"])
def test_current_ray_needs_macos_12(macos: str) -> None:
    problem = bittrader_versions.ray_wheel_problem("2.60.0", "3.12.12", "Darwin", "arm64", macos)
    assert "macOS 12" in problem
    assert macos in problem


def test_macos_11_apple_silicon_keeps_ray_up_to_2_47() -> None:
    assert bittrader_versions.ray_wheel_problem("2.47.1", "3.10.14", "Darwin", "arm64", "11.7.10") == ""
    assert "macOS 12" in bittrader_versions.ray_wheel_problem("2.48.0", "3.10.14", "Darwin", "arm64", "11.7.10")


def test_macos_11_intel_keeps_ray_up_to_2_46() -> None:
    assert bittrader_versions.ray_wheel_problem("2.46.0", "3.10.14", "Darwin", "x86_64", "11.7.10") == ""
    assert "macOS 12" in bittrader_versions.ray_wheel_problem("2.47.0", "3.10.14", "Darwin", "x86_64", "11.7.10")
    assert bittrader_versions.ray_wheel_problem("2.47.0", "3.10.14", "Darwin", "x86_64", "12.7") == ""


@pytest.mark.parametrize("arch", ["x86_64", "amd64", "i386"])
def test_intel_mac_has_no_current_ray(arch: str) -> None:
    problem = bittrader_versions.ray_wheel_problem("2.60.0", "3.12.12", "Darwin", arch, "15.2.1")
    assert "Intel Macs" in problem
    assert "2.49.2" in problem


def test_intel_mac_with_ray_2_49_2() -> None:
    assert bittrader_versions.ray_wheel_problem("2.49.2", "3.12.8", "Darwin", "x86_64", "14.6") == ""
    assert "Intel" in bittrader_versions.ray_wheel_problem("2.50.0", "3.12.8", "Darwin", "x86_64", "14.6")


def test_intel_rule_comes_before_the_version_rule() -> None:
    problem = bittrader_versions.ray_wheel_problem("2.60.0", "3.12.12", "Darwin", "x86_64", "11.7")
    assert "Intel Macs" in problem


def test_unknown_mac_architecture() -> None:
    assert "macOS on ppc" in bittrader_versions.ray_wheel_problem("2.60.0", "3.12.12", "Darwin", "ppc", "15.0")


def test_os_version_is_optional_and_ignored_off_macos() -> None:
    assert bittrader_versions.ray_wheel_problem("2.60.0", "3.12.12", "Darwin", "arm64") == ""
    assert bittrader_versions.ray_wheel_problem("2.60.0", "3.12.12", "Linux", "x86_64", "11.0") == ""


def test_python_rules_still_apply_on_macs() -> None:
    assert "3.9" in bittrader_versions.ray_wheel_problem("2.60.0", "3.9.6", "Darwin", "arm64", "15.2")


def test_filter_is_registered() -> None:
    assert all_filters()["bittrader_ray_wheel_problem"] is bittrader_versions.ray_wheel_problem


# --- plist ----------------------------------------------------------------------------------------


def test_plist_round_trip_drops_none_and_escapes() -> None:
    text = mac.plist(
        {
            "Label": "com.bittrader.ray-worker",
            "UserName": None,
            "ProgramArguments": ["/Users/a b/R&D <x>/python", "run", None],
            "KeepAlive": True,
            "ThrottleInterval": 5,
            "Env": {"A": "1", "B": None},
        },
        comment="Ansible managed -- do not edit",
    )
    assert text.startswith("<?xml")
    assert "<!-- Ansible managed - do not edit -->" in text
    data = plistlib.loads(text.encode())
    assert data == {
        "Label": "com.bittrader.ray-worker",
        "ProgramArguments": ["/Users/a b/R&D <x>/python", "run"],
        "KeepAlive": True,
        "ThrottleInterval": 5,
        "Env": {"A": "1"},
    }


def test_plist_keeps_bool_apart_from_int() -> None:
    data = plistlib.loads(mac.plist({"RunAtLoad": True, "Nice": 1}).encode())
    assert data["RunAtLoad"] is True
    assert data["Nice"] == 1 and not isinstance(data["Nice"], bool)


def test_plist_refuses_root() -> None:
    for user in ("root", "0"):
        with pytest.raises(ValueError, match="root"):
            mac.plist({"Label": "x", "UserName": user})


def test_plist_rejects_what_launchd_cannot_hold() -> None:
    with pytest.raises(TypeError):
        mac.plist({"Label": object()})
    with pytest.raises(TypeError):
        mac.plist(["not", "a", "dict"])  # type: ignore[arg-type]


# --- dscacheutil ----------------------------------------------------------------------------------

DSCACHE = """name: trader
password: ********
uid: 501
gid: 20
dir: /Users/trader
shell: /bin/zsh
gecos: Trader Joe

"""


def test_dscache_passwd_has_getents_shape() -> None:
    users = mac.dscache_passwd(DSCACHE)
    assert users == {"trader": ["********", "501", "20", "Trader Joe", "/Users/trader", "/bin/zsh"]}
    assert users["trader"][4] == "/Users/trader"


def test_dscache_passwd_missing_user_and_spaces() -> None:
    assert mac.dscache_passwd("") == {}
    spaced = DSCACHE.replace("/Users/trader", "/Users/Shared Homes/trader")
    assert mac.dscache_passwd(spaced)["trader"][4] == "/Users/Shared Homes/trader"


def test_dscache_passwd_root_is_uid_0() -> None:
    users = mac.dscache_passwd(
        "name: root\npassword: *\nuid: 0\ngid: 0\ndir: /var/root\nshell: /bin/sh\ngecos: System Administrator\n"
    )
    assert users["root"][1] == "0"


# --- launchctl print-disabled ---------------------------------------------------------------------

DISABLED_12 = """disabled services = {
\t"com.apple.ftpd" => true
\t"com.bittrader.ray-worker" => true
\t"com.bittrader.ray-head" => false
}
"""
DISABLED_14 = """disabled services = {
\t"com.apple.ftpd" => disabled
\t"com.bittrader.ray-worker" => disabled
\t"com.bittrader.ray-throttle" => enabled
}
"""


def test_launchd_disabled_both_formats() -> None:
    assert mac.launchd_disabled(DISABLED_12, "com.bittrader.ray-worker")
    assert not mac.launchd_disabled(DISABLED_12, "com.bittrader.ray-head")
    assert mac.launchd_disabled(DISABLED_14, "com.bittrader.ray-worker")
    assert not mac.launchd_disabled(DISABLED_14, "com.bittrader.ray-throttle")
    assert not mac.launchd_disabled(DISABLED_14, "com.bittrader.ray")  # no prefix match
    assert not mac.launchd_disabled("", "com.bittrader.ray-worker")


# --- socketfilterfw -------------------------------------------------------------------------------

LISTAPPS = """ALF: total number of apps = 3

1 :  /Applications/Tailscale.app
 \t ( Allow incoming connections )

2 :  /Users/trader/.bittrader_worker/python/cpython-3.12.12-macos-aarch64-none/bin/python3.12
 \t ( Block incoming connections )

3 :  /Users/trader/.bittrader_worker/venv/lib/python3.12/site-packages/ray/core/src/ray/raylet/raylet
 \t ( Allow incoming connections )
"""


def test_alf_apps() -> None:
    apps = mac.alf_apps(LISTAPPS)
    assert apps == {
        "/Applications/Tailscale.app": "allow",
        "/Users/trader/.bittrader_worker/python/cpython-3.12.12-macos-aarch64-none/bin/python3.12": "block",
        "/Users/trader/.bittrader_worker/venv/lib/python3.12/site-packages/ray/core/src/ray/raylet/raylet": "allow",
    }
    assert mac.alf_apps("ALF: total number of apps = 0\n") == {}


@pytest.mark.parametrize(
    ("text", "enabled"),
    [
        ("Firewall is enabled. (State = 1)", True),
        ("Firewall is disabled. (State = 0)", False),
        ("Firewall is blocking all non-essential incoming connections. (State = 2)", True),
        ("", False),
    ],
)
def test_alf_enabled(text: str, enabled: bool) -> None:
    assert mac.alf_enabled(text) is enabled


@pytest.mark.parametrize(
    ("text", "blocked"),
    [
        ("Firewall is set to block all non-essential incoming connections", True),
        ("Block all ENABLED! ", True),
        ("Block all DISABLED! ", False),
        ("Firewall has block all state set to enabled.", True),
        ("Firewall has block all state set to disabled.", False),
    ],
)
def test_alf_blockall(text: str, blocked: bool) -> None:
    assert mac.alf_blockall(text) is blocked


# --- pmset ----------------------------------------------------------------------------------------

PMSET_LAPTOP = """Battery Power:
 lidwake              1
 standby              1
 sleep                1
 displaysleep         2
AC Power:
 lidwake              1
 disksleep            10
 sleep                1
 displaysleep         10
"""


def test_pmset_ac_sleep() -> None:
    assert mac.pmset_ac_sleep(PMSET_LAPTOP) == 1
    ac_before = "disksleep            10\n sleep                1"
    ac_after = "disksleep            10\n sleep                0 (sleep prevented by caffeinate)"
    prevented = PMSET_LAPTOP.replace(ac_before, ac_after)
    assert prevented.count("sleep prevented") == 1
    assert mac.pmset_ac_sleep(prevented) == 0
    desktop = "AC Power:\n disksleep            10\n sleep                0\n displaysleep         10\n"
    assert mac.pmset_ac_sleep(desktop) == 0
    assert mac.pmset_ac_sleep("Battery Power:\n sleep 5\n") is None


def test_macos_filters_are_registered() -> None:
    names = mac.FilterModule().filters()
    for name in ("bittrader_plist", "bittrader_dscache_passwd", "bittrader_launchd_disabled", "bittrader_alf_apps",
                 "bittrader_alf_enabled", "bittrader_alf_blockall", "bittrader_pmset_ac_sleep"):
        assert callable(names[name])
