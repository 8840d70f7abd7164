"""The throttle's activity sources, battery, Ray processes, CPU load and mechanisms (limiters), with
captured command output and mocked subprocesses. Its Ray calls and daemon loop: test_throttle_daemon.py,
which shares the fakes defined here."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from agent_throttle import bt

REPO = Path(__file__).resolve().parents[2]

TOKEN = "s3cr3t-cluster-token-0123456789"

# `ioreg -c IOHIDSystem -r -d 1` on a MacBook Air (macOS 14), shortened.
IOREG_OUTPUT = """\
+-o IOHIDSystem  <class IOHIDSystem, id 0x1000002b1, registered, matched, active, busy 0 (0 ms), retain 29>
    {
      "IOClass" = "IOHIDSystem"
      "CFBundleIdentifier" = "com.apple.iokit.IOHIDFamily"
      "IOProviderClass" = "IOResources"
      "IOGeneralInterest" = "IOCommand is not serializable"
      "HIDParameters" = {"HIDClickTime"=500000000,"HIDKeyRepeat"=83333333,"HIDInitialKeyRepeat"=250000000}
      "IOMatchCategory" = "IOHIDSystem"
      "CFBundleIdentifierKernel" = "com.apple.iokit.IOHIDFamily"
      "IOProbeScore" = 0
      "HIDIdleTime" = 1234567890
      "IOResourceMatch" = "IOKit"
      "IOUserClientClass" = "IOHIDUserClient"
      "HIDScrollCountAccelerationFactor" = 163840
    }
"""

# `loginctl list-sessions --no-legend`: systemd 252 (Debian 12) and systemd 256 (extra columns).
LOGINCTL_LIST_252 = """\
      2 1000 alice seat0 tty2
     c1  117 gdm   seat0 tty1
     14 1001 admin
"""
LOGINCTL_LIST_256 = """\
2    1000 alice seat0 1873 user    tty2 no  -
c1    117 gdm   seat0 1201 greeter tty1 no  -
14   1001 admin -     9932 user    -    yes 3min ago
"""

# `loginctl show-session 2 c1 14 -p Id -p Type -p Class -p State -p Remote -p IdleHint -p IdleSinceHint`
SHOW_IDLE = """\
Id=2
Type=wayland
Class=user
State=active
Remote=no
IdleHint=yes
IdleSinceHint=1700000000000000

Id=c1
Type=wayland
Class=greeter
State=online
Remote=no
IdleHint=no
IdleSinceHint=0

Id=14
Type=tty
Class=user
State=active
Remote=yes
IdleHint=no
IdleSinceHint=0
"""
SHOW_ACTIVE = SHOW_IDLE.replace("IdleHint=yes\nIdleSinceHint=1700000000000000", "IdleHint=no\nIdleSinceHint=0")


def config(tmp_path: Path, platform: str = "linux", mechanism: dict | None = None, ray: dict | None = None, **policy):
    raw = {
        "version": 1,
        "platform": platform,
        "policy": {"cpus_active": 2, "cpus_idle": 8, "hysteresis_s": 60, **policy},
        "mechanism": mechanism or {},
        "paths": {
            "log_file": str(tmp_path / "logs" / "throttle.log"),
            "status_file": str(tmp_path / "run" / "throttle_status.json"),
            "num_cpus_file": str(tmp_path / "run" / "num_cpus"),
        },
        "ray": {
            "venv": "/home/bittrader/.bittrader_worker/venv",
            "head_address": "100.64.0.1:6379",
            "node_ip": "100.64.0.2",
            "token_path": str(tmp_path / "auth_token"),
            **(ray or {}),
        },
    }
    (tmp_path / "auth_token").write_text(TOKEN)
    return bt.config_from_dict(raw)


class FakeRunner:
    """Records every command; answers from a list of results (or a function of argv)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[tuple[list[str], dict | None]] = []

    def __call__(self, argv, env=None, timeout=30.0):
        self.calls.append((list(argv), None if env is None else dict(env)))
        if not self.answers:
            return bt.CommandResult(0, "", "")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(argv) if callable(answer) else answer


def ok(stdout: str = "") -> bt.CommandResult:
    return bt.CommandResult(0, stdout, "")


def helper_out(nodes, resized=None, error=None) -> bt.CommandResult:
    payload = {"nodes": nodes, "resized": resized, "error": error}
    return ok("some ray warning\n" + bt.HELPER_MARKER + json.dumps(payload) + "\n")


# -- macOS ioreg ------------------------------------------------------------------------------------


def test_ioreg_idle_time_in_seconds():
    assert bt.parse_ioreg_idle(IOREG_OUTPUT) == pytest.approx(1.23456789)
    assert bt.parse_ioreg_idle('    | |   "HIDIdleTime" = 42000000000\n') == 42.0
    assert bt.parse_ioreg_idle('"IOClass" = "IOHIDSystem"') is None


def test_ioreg_source_command():
    runner = FakeRunner(ok(IOREG_OUTPUT))
    source = bt.IoregSource(runner)
    assert source.idle_seconds() == pytest.approx(1.23456789)
    assert runner.calls[0][0] == ["/usr/sbin/ioreg", "-c", "IOHIDSystem", "-r", "-d", "1"]
    assert bt.IoregSource(FakeRunner(bt.CommandResult(1, "", "boom"))).idle_seconds() is None


# -- Linux logind -----------------------------------------------------------------------------------


@pytest.mark.parametrize("listing", [LOGINCTL_LIST_252, LOGINCTL_LIST_256])
def test_session_ids_any_systemd(listing):
    assert bt.parse_session_ids(listing) == ["2", "c1", "14"]


def test_show_session_blocks():
    sessions = bt.parse_show_session(SHOW_IDLE)
    assert [s["Id"] for s in sessions] == ["2", "c1", "14"]
    assert sessions[0]["Type"] == "wayland" and sessions[0]["IdleHint"] == "yes"
    # without blank lines between blocks (one session per call on old systemd)
    joined = bt.parse_show_session(SHOW_IDLE.replace("\n\n", "\n"))
    assert [s["Id"] for s in joined] == ["2", "c1", "14"]


def test_graphical_session_idle_since_hint():
    now = 1_700_000_000 + 420.0
    assert bt.graphical_idle_seconds(bt.parse_show_session(SHOW_IDLE), now) == pytest.approx(420.0)
    assert bt.graphical_idle_seconds(bt.parse_show_session(SHOW_ACTIVE), now) == 0.0


def test_no_graphical_user_session_is_headless():
    only_ssh_and_greeter = [s for s in bt.parse_show_session(SHOW_IDLE) if s["Id"] != "2"]
    assert bt.graphical_idle_seconds(only_ssh_and_greeter, 0.0) == math.inf
    assert bt.graphical_idle_seconds([], 0.0) == math.inf
    closing = [{"Type": "x11", "Class": "user", "State": "closing", "IdleHint": "no"}]
    assert bt.graphical_idle_seconds(closing, 0.0) == math.inf


def test_logind_source_commands_and_cache():
    clock = SimpleNamespace(now=1_700_000_000 + 60.0)
    runner = FakeRunner(ok(LOGINCTL_LIST_252), ok(SHOW_IDLE))
    runner.answers = [ok(LOGINCTL_LIST_252), ok(SHOW_IDLE), ok(SHOW_IDLE)]
    source = bt.LogindSource(runner, "/usr/bin/loginctl", clock=lambda: clock.now)
    assert source.idle_seconds() == pytest.approx(60.0)
    assert runner.calls[0][0] == ["/usr/bin/loginctl", "list-sessions", "--no-legend"]
    props = [a for p in bt.LOGIND_PROPERTIES for a in ("-p", p)]
    assert runner.calls[1][0] == ["/usr/bin/loginctl", "show-session", "2", "c1", "14", *props]
    clock.now += 2
    assert source.idle_seconds() == pytest.approx(62.0)
    assert len(runner.calls) == 3  # the session list is cached for 30 s


def test_logind_source_vanished_session_and_failures():
    gone = bt.CommandResult(1, "", "Failed to get session: No session '14' known")
    runner = FakeRunner()
    runner.answers = [ok(LOGINCTL_LIST_252), gone, ok("      2 1000 alice seat0 tty2\n"), ok(SHOW_ACTIVE)]
    source = bt.LogindSource(runner, "loginctl", clock=lambda: 1_700_000_100.0)
    assert source.idle_seconds() == 0.0
    assert runner.calls[3][0][:3] == ["loginctl", "show-session", "2"]
    assert bt.LogindSource(FakeRunner(bt.CommandResult(1, "", "no bus")), "loginctl").idle_seconds() is None
    assert bt.LogindSource(FakeRunner(ok("")), "loginctl").idle_seconds() == math.inf


# -- Windows GetLastInputInfo (mocked: the module must import and run on Linux) ------------------------


class FakeUser32:
    def __init__(self, last_input_ms: int, ok: bool = True) -> None:
        self.last_input_ms = last_input_ms
        self.ok = ok

    def GetLastInputInfo(self, pointer):
        info = pointer._obj
        assert info.cbSize == 8
        info.dwTime = self.last_input_ms
        return 1 if self.ok else 0


class FakeKernel32:
    def __init__(self, ticks: int) -> None:
        self.ticks = ticks

    def GetTickCount(self):
        return self.ticks


def test_windows_last_input():
    source = bt.WindowsSource(FakeUser32(1_000_000), FakeKernel32(1_042_500))
    assert source.idle_seconds() == pytest.approx(42.5)
    # the 32-bit tick counter wrapped (49.7 days of uptime) since the last input
    wrapped = bt.WindowsSource(FakeUser32(0xFFFFFF00), FakeKernel32(0x100))
    assert wrapped.idle_seconds() == pytest.approx(0x200 / 1000)
    assert bt.WindowsSource(FakeUser32(0, ok=False), FakeKernel32(5)).idle_seconds() is None


def test_windows_source_on_linux_is_unknown():
    assert bt.WindowsSource().idle_seconds() is None  # no ctypes.windll here: unknown, never a crash


# -- file source and source choice ------------------------------------------------------------------


def test_file_source(tmp_path):
    path = tmp_path / "activity"
    source = bt.FileSource(str(path))
    assert source.idle_seconds() is None  # missing: unknown
    for text, expected in (("active\n", 0.0), ("idle", math.inf), ("  12.5 ", 12.5), ("garbage", None), ("-3", None)):
        path.write_text(text)
        assert source.idle_seconds() == expected


def test_file_source_only_when_configured(tmp_path, monkeypatch):
    activity = tmp_path / "activity"
    chosen = bt.make_activity_source(config(tmp_path, activity_source="file", activity_file=str(activity)))
    assert isinstance(chosen, bt.FileSource)
    monkeypatch.setattr(bt.shutil, "which", lambda name: "/usr/bin/loginctl")
    assert isinstance(bt.make_activity_source(config(tmp_path)), bt.LogindSource)
    monkeypatch.setattr(bt.shutil, "which", lambda name: None)
    assert isinstance(bt.make_activity_source(config(tmp_path)), bt.HeadlessSource)
    assert isinstance(
        bt.make_activity_source(config(tmp_path, platform="darwin", mechanism={"kind": "none"})), bt.IoregSource
    )
    headless = bt.make_activity_source(config(tmp_path, activity_source="headless"))
    assert headless.idle_seconds() == math.inf


# -- battery ----------------------------------------------------------------------------------------


def test_battery_readings():
    def fake(value):
        return SimpleNamespace(sensors_battery=lambda: value)

    assert bt.read_battery(fake(None)) == (None, None)
    assert bt.read_battery(fake(SimpleNamespace(percent=41.0, power_plugged=False, secsleft=3600))) == (True, 41.0)
    assert bt.read_battery(fake(SimpleNamespace(percent=100, power_plugged=True, secsleft=-2))) == (False, 100.0)
    assert bt.read_battery(fake(SimpleNamespace(percent=55, power_plugged=None, secsleft=-1))) == (None, 55.0)

    def broken():
        raise OSError("no /sys/class/power_supply")

    assert bt.read_battery(SimpleNamespace(sensors_battery=broken)) == (None, None)
    assert bt.read_battery(SimpleNamespace()) == (None, None)  # psutil without sensors (some BSDs)


# -- Ray processes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cmdline", "expected"),
    [
        ("raylet", ["/v/lib/python3.12/site-packages/ray/core/src/ray/raylet/raylet", "--x"], True),
        ("gcs_server", [], True),
        ("ray::IDLE", ["ray::IDLE", "", ""], True),
        ("python3.12", ["ray::backtest", ""], True),
        (
            "python.exe",
            ["C:\\v\\Scripts\\python.exe", "C:\\v\\Lib\\site-packages\\ray\\_private\\workers\\default_worker.py"],
            True,
        ),
        ("python3", ["/v/bin/python3", "-u", "/v/lib/python3.12/site-packages/ray/dashboard/agent.py"], True),
        ("python3", ["/v/bin/python3", "-u", "/v/lib/python3.12/site-packages/ray/_private/log_monitor.py"], True),
        ("python3", ["/v/bin/python", "/v/bin/bittrader-throttle", "--config", "/x/ray/_private/t.json"], False),
        ("python3", ["/v/bin/python3", "/v/bin/ray", "start", "--block"], False),
        ("firefox", ["/usr/lib/firefox/firefox"], False),
    ],
)
def test_is_ray_process(name, cmdline, expected):
    assert bt.is_ray_process(name, cmdline) is expected


def test_is_ray_start_block():
    assert bt.is_ray_start_block(["/v/bin/python3", "/v/bin/ray", "start", "--block", "--address=h:6379"])
    assert bt.is_ray_start_block(["C:\\v\\Scripts\\ray.exe", "start", "--block"])
    assert not bt.is_ray_start_block(["/v/bin/python3", "/v/bin/ray", "start", "--address=h:6379"])
    assert not bt.is_ray_start_block(["/v/bin/python3", "/v/bin/bittrader-node", "run", "--block"])
    ours = ["/v/bin/python3", "/v/bin/ray", "start", "--block", "--node-ip-address=100.64.0.2", "--address=h:1"]
    assert bt.is_ray_start_block(ours, "/v/bin/ray", "100.64.0.2")
    assert not bt.is_ray_start_block(ours, "/other/venv/bin/ray", "100.64.0.2")  # another venv
    assert not bt.is_ray_start_block(ours, "/v/bin/ray", "10.89.42.11")  # another node (a container)
    spaced = ["/v/bin/python3", "/v/bin/ray", "start", "--block", "--node-ip-address", "100.64.0.2"]
    assert bt.is_ray_start_block(spaced, "/v/bin/ray", "100.64.0.2")


class PsProc:
    def __init__(self, pid, uid, cmdline, username="bittrader"):
        self.pid = pid
        self._uid = uid
        self._cmdline = cmdline
        self.info = {"username": username}
        self.terminated = False

    def uids(self):
        return SimpleNamespace(real=self._uid, effective=self._uid, saved=self._uid)

    def cmdline(self):
        return self._cmdline

    def terminate(self):
        self.terminated = True


def test_terminate_ray_start_touches_only_this_node():
    me = os.getuid()
    start = ["/v/bin/python3", "/v/bin/ray", "start", "--block", "--node-ip-address=100.64.0.2"]
    procs = [
        PsProc(10, me, start),  # ours
        PsProc(11, me + 1, start),  # another account
        PsProc(12, me, ["/c/bin/python3", "/c/bin/ray", "start", "--block", "--node-ip-address=100.64.0.2"]),
        PsProc(13, me, [*start[:4], "--node-ip-address=10.89.42.11"]),  # a container's node
        PsProc(14, me, ["/v/bin/python3", "/v/bin/ray", "start", "--address=h:1"]),  # not --block
    ]
    fake = SimpleNamespace(
        process_iter=lambda attrs: iter(procs),
        NoSuchProcess=ProcessLookupError,
        AccessDenied=PermissionError,
        ZombieProcess=ProcessLookupError,
    )
    assert bt.terminate_ray_start(fake, "/v/bin/ray", "100.64.0.2") == [10]
    assert [p.terminated for p in procs] == [True, False, False, False, False]


def test_process_owner():
    me = PsProc(1, os.getuid(), [])
    other = PsProc(2, os.getuid() + 1, [], username="trader")
    assert bt.owned(me, "whoever", None) and not bt.owned(other, "trader", None)
    assert bt.owned(other, "trader", "trader") and bt.owned(other, "HOST\\Trader", "trader")
    assert not bt.owned(me, None, "trader")


# -- mechanisms -------------------------------------------------------------------------------------


def test_systemd_quota_exact_argv(tmp_path):
    runner = FakeRunner(ok())
    mech = bt.SystemdQuota(config(tmp_path).mechanism, "bittrader-ray-worker.service", runner)
    base = ["/usr/bin/sudo", "-n", "/usr/bin/systemctl", "set-property", "--runtime", "bittrader-ray-worker.service"]
    assert mech.apply(2) == "CPUQuota=200% on bittrader-ray-worker.service: ok"
    assert mech.apply(0) == "CPUQuota=5% on bittrader-ray-worker.service: ok"  # pause: small, never 0
    assert mech.apply(8).startswith("CPUQuota=800%")
    assert mech.release() == "CPUQuota=(none) on bittrader-ray-worker.service: ok"
    assert [c[0] for c in runner.calls] == [
        [*base, "CPUQuota=200%"],
        [*base, "CPUQuota=5%"],
        [*base, "CPUQuota=800%"],
        [*base, "CPUQuota="],
    ]
    assert all(env is None for _, env in runner.calls)


def test_systemd_quota_as_root_and_failure(tmp_path):
    failing = FakeRunner(bt.CommandResult(1, "", "sudo: a password is required"))
    mech = bt.SystemdQuota(config(tmp_path).mechanism, "u.service", failing, as_root=True)
    assert mech.apply(2) == "CPUQuota=200% on u.service: failed (exit 1: sudo: a password is required)"
    assert failing.calls[0][0][0] == "/usr/bin/systemctl"


def test_sudoers_rule_matches_the_argv(tmp_path):
    cfg = config(tmp_path)
    runner = FakeRunner(ok())
    mech = bt.SystemdQuota(cfg.mechanism, cfg.ray.unit, runner)
    rule = bt.sudoers_rule("bittrader", cfg)
    for cpus in bt.possible_cpu_counts(cfg.policy):
        mech.apply(cpus)
    mech.release()
    for argv, _ in runner.calls:
        command = " ".join(a.replace("=", "\\=") for a in argv[2:])  # what sudo sees after `sudo -n`
        assert command in rule


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.niceness = None
        self.cpus = None

    def nice(self, value):
        self.niceness = value

    def cpu_affinity(self, cpus):
        self.cpus = cpus


class FixedProcesses:
    def __init__(self, procs) -> None:
        self.procs = procs

    def get(self, refresh=False):
        return list(self.procs)


FAKE_PSUTIL = SimpleNamespace(
    NoSuchProcess=ProcessLookupError, ZombieProcess=ProcessLookupError, AccessDenied=PermissionError
)


def test_taskpolicy_argv():
    runner = FakeRunner(ok())
    procs = FixedProcesses([FakeProc(101), FakeProc(102)])
    mech = bt.TaskpolicyMechanism(procs, FAKE_PSUTIL, 8, "/usr/sbin/taskpolicy", runner)
    assert mech.apply(2) == "background (taskpolicy -b) on 2 Ray processes"
    assert [c[0] for c in runner.calls] == [
        ["/usr/sbin/taskpolicy", "-b", "-p", "101"],
        ["/usr/sbin/taskpolicy", "-b", "-p", "102"],
    ]
    procs.procs.append(FakeProc(103))  # a new worker: the refresh gives it the same level
    assert mech.refresh() == "background (taskpolicy -b) on 1 Ray processes"
    assert runner.calls[-1][0] == ["/usr/sbin/taskpolicy", "-b", "-p", "103"]
    assert mech.refresh() is None
    assert mech.release() == "normal (taskpolicy -B) on 3 Ray processes"
    assert runner.calls[-1][0] == ["/usr/sbin/taskpolicy", "-B", "-p", "103"]


def test_windows_priority_and_affinity():
    procs = [FakeProc(7), FakeProc(8)]
    mech = bt.WindowsMechanism(FixedProcesses(procs), FAKE_PSUTIL, full_cpus=8, logical_cpus=8)
    mech.apply(2)
    assert [(p.niceness, p.cpus) for p in procs] == [(0x4000, [0, 1])] * 2  # BELOW_NORMAL, 2 CPUs
    mech.apply(0)
    assert [(p.niceness, p.cpus) for p in procs] == [(0x40, [0])] * 2  # IDLE, 1 CPU: paused, alive
    mech.release()
    assert [(p.niceness, p.cpus) for p in procs] == [(0x20, list(range(8)))] * 2  # NORMAL, all



def test_cgroup_cpu_files(tmp_path):
    v2 = tmp_path / "cpu.stat"
    v2.write_text("usage_usec 12500000\nuser_usec 10000000\nsystem_usec 2500000\nnr_periods 0\n")
    assert bt.read_cgroup_cpu_seconds(str(v2)) == 12.5
    v1 = tmp_path / "cpuacct.usage"
    v1.write_text("3000000000\n")
    assert bt.read_cgroup_cpu_seconds(str(v1)) == 3.0
    assert bt.read_cgroup_cpu_seconds(str(tmp_path / "missing")) is None
    assert bt.CgroupCpuCounter("no-such-unit.service")() is None


def test_load_meter_subtracts_ray():
    state = {"busy": 100.0, "ray": 50.0, "now": 0.0}

    class Times(tuple):
        """Like psutil's scputimes: iterable fields with names."""

        idle = 1000.0

    def cpu_times():
        return Times((state["busy"], 0.0, 1000.0))

    fake = SimpleNamespace(cpu_count=lambda: 4, cpu_times=cpu_times)
    meter = bt.LoadMeter(fake, lambda: state["ray"], lambda: state["now"])
    assert meter.sample() is None  # first sample: no interval yet
    state.update(now=10.0, busy=100.0 + 30.0, ray=50.0 + 10.0)  # 30 CPU-s busy, 10 of them Ray's
    assert meter.sample() == pytest.approx(20.0 / 40.0 * 100)  # 20 CPU-s of 4 CPUs x 10 s
    state.update(now=20.0, busy=140.0, ray=1.0)  # Ray restarted: its counter began again
    assert meter.sample() is None
    state.update(now=30.0, busy=180.0, ray=41.0)
    assert meter.sample() == pytest.approx(0.0)
