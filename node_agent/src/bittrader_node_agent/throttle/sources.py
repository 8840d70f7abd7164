"""What the throttle observes, per operating system: the owner's input (logind, ioreg, Windows'
GetLastInputInfo, a file for tests), the battery, Ray's own processes and the CPU load of the rest."""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..common import run_command

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ..common import Runner
    from .config import Config

GRAPHICAL_SESSION_TYPES = ("x11", "wayland", "mir")
SESSION_REFRESH_S = 30.0
PROCESS_REFRESH_S = 30.0
# --------------------------------------------------------------------------------------------------
# Activity sources
# --------------------------------------------------------------------------------------------------


class ActivitySource(Protocol):
    """Seconds since the last user input: None when unknown, math.inf when nobody can use the machine."""

    name: str

    def idle_seconds(self) -> float | None: ...


_IOREG_IDLE_RE = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')


def parse_ioreg_idle(output: str) -> float | None:
    """Seconds since the last input from `ioreg -c IOHIDSystem` (HIDIdleTime is in nanoseconds)."""
    match = _IOREG_IDLE_RE.search(output)
    return None if match is None else int(match.group(1)) / 1e9


def parse_session_ids(output: str) -> list[str]:
    """Session ids from `loginctl list-sessions --no-legend` (the first column, any systemd version)."""
    ids: list[str] = []
    for line in output.splitlines():
        parts = line.split()
        if parts and re.match(r"^[A-Za-z0-9_-]+$", parts[0]) and parts[0].upper() != "SESSION":
            ids.append(parts[0])
    return ids


def parse_show_session(output: str) -> list[dict[str, str]]:
    """Property blocks of `loginctl show-session ID... -p ...` (one block per session, blank-line separated)."""
    sessions: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in output.splitlines():
        if not line.strip():
            if current:
                sessions.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            if key in current:  # no blank line between blocks: a new session begins
                sessions.append(current)
                current = {}
            current[key.strip()] = value.strip()
    if current:
        sessions.append(current)
    return sessions


def graphical_idle_seconds(sessions: Iterable[Mapping[str, str]], now: float) -> float:
    """Idle seconds from logind sessions: graphical user sessions count (any not idle: 0); none: headless."""
    graphical = [
        s
        for s in sessions
        if s.get("Type") in GRAPHICAL_SESSION_TYPES
        and s.get("Class", "user") == "user"
        and s.get("State", "active") != "closing"
    ]
    if not graphical:
        return math.inf
    if any(s.get("IdleHint", "no") != "yes" for s in graphical):
        return 0.0
    since_us = [int(s.get("IdleSinceHint", "0") or 0) for s in graphical]
    latest = max(since_us)
    if latest <= 0:
        return math.inf
    return max(0.0, now - latest / 1e6)


LOGIND_PROPERTIES = ("Id", "Type", "Class", "State", "Remote", "IdleHint", "IdleSinceHint")


class LogindSource:
    """Linux: logind's idle hint of graphical sessions (set by the desktop after its own idle delay)."""

    name = "logind"

    def __init__(
        self, runner: Runner = run_command, loginctl: str = "loginctl", clock: Callable[[], float] = time.time
    ) -> None:
        self._runner = runner
        self._loginctl = loginctl
        self._clock = clock
        self._ids: list[str] = []
        self._ids_at = -math.inf

    def _session_ids(self, refresh: bool = False) -> list[str] | None:
        now = self._clock()
        if refresh or now - self._ids_at >= SESSION_REFRESH_S:
            result = self._runner([self._loginctl, "list-sessions", "--no-legend"], None, 10.0)
            if not result.ok:
                return None
            self._ids = parse_session_ids(result.stdout)
            self._ids_at = now
        return self._ids

    def idle_seconds(self) -> float | None:
        for attempt in (0, 1):
            ids = self._session_ids(refresh=attempt == 1)
            if ids is None:
                return None
            if not ids:
                return math.inf
            argv = [self._loginctl, "show-session", *ids]
            for prop in LOGIND_PROPERTIES:
                argv += ["-p", prop]
            result = self._runner(argv, None, 10.0)
            if result.ok:
                return graphical_idle_seconds(parse_show_session(result.stdout), self._clock())
        return None  # a session vanished twice in a row: unknown this time


class IoregSource:
    """macOS: HIDIdleTime of IOHIDSystem (works from any user, with or without a GUI login)."""

    name = "ioreg"

    def __init__(self, runner: Runner = run_command, ioreg: str = "/usr/sbin/ioreg") -> None:
        self._runner = runner
        self._ioreg = ioreg

    def idle_seconds(self) -> float | None:
        result = self._runner([self._ioreg, "-c", "IOHIDSystem", "-r", "-d", "1"], None, 10.0)
        return parse_ioreg_idle(result.stdout) if result.ok else None


class WindowsSource:
    """Windows: GetLastInputInfo (input of the session the daemon runs in: run it in the owner's
    logon session, e.g. a scheduled task at logon, not as a session-0 service)."""

    name = "windows"

    def __init__(self, user32: Any = None, kernel32: Any = None) -> None:

        class LastInputInfo(ctypes.Structure):
            _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint)]

        self._ctypes = ctypes
        self._info_type = LastInputInfo
        windll = getattr(ctypes, "windll", None)
        self._user32 = user32 if user32 is not None else getattr(windll, "user32", None)
        self._kernel32 = kernel32 if kernel32 is not None else getattr(windll, "kernel32", None)

    def idle_seconds(self) -> float | None:
        if self._user32 is None or self._kernel32 is None:
            return None
        info = self._info_type()
        info.cbSize = self._ctypes.sizeof(info)
        if not self._user32.GetLastInputInfo(self._ctypes.byref(info)):
            return None
        ticks = int(self._kernel32.GetTickCount()) & 0xFFFFFFFF
        return ((ticks - int(info.dwTime)) & 0xFFFFFFFF) / 1000.0


class FileSource:
    """Test source: the file holds "active", "idle" or a number of idle seconds. Read only when the
    configuration names it; a missing or unreadable file means unknown (active)."""

    name = "file"

    def __init__(self, path: str) -> None:
        self._path = path

    def idle_seconds(self) -> float | None:
        try:
            with open(self._path, encoding="utf-8") as handle:
                text = handle.read(64).strip().lower()
        except OSError:
            return None
        if text == "active":
            return 0.0
        if text == "idle":
            return math.inf
        try:
            value = float(text)
        except ValueError:
            return None
        return value if value >= 0 else None


class HeadlessSource:
    """A machine nobody sits at: always idle."""

    name = "headless"

    def idle_seconds(self) -> float | None:
        return math.inf


def make_activity_source(config: Config, runner: Runner = run_command) -> ActivitySource:
    kind = config.activity_kind
    if kind == "file":
        return FileSource(str(config.policy.activity_file))
    if kind == "headless":
        return HeadlessSource()
    if kind == "ioreg":
        return IoregSource(runner)
    if kind == "windows":
        return WindowsSource()
    loginctl = shutil.which("loginctl")
    return LogindSource(runner, loginctl) if loginctl else HeadlessSource()


def read_battery(psutil_mod: Any) -> tuple[bool | None, float | None]:
    """(on battery, percent) from psutil.sensors_battery(); (None, None) without a battery."""
    sensors = getattr(psutil_mod, "sensors_battery", None)
    if sensors is None:
        return None, None
    try:
        battery = sensors()
    except Exception:  # noqa: BLE001 - a broken sensor must not stop the throttle
        return None, None
    if battery is None:
        return None, None
    plugged = getattr(battery, "power_plugged", None)
    percent = getattr(battery, "percent", None)
    on_battery = None if plugged is None else not plugged
    return on_battery, None if percent is None else float(percent)


# --------------------------------------------------------------------------------------------------
# Ray processes and CPU load
# --------------------------------------------------------------------------------------------------

RAY_PROCESS_NAMES = ("raylet", "gcs_server", "raylet.exe", "gcs_server.exe")
RAY_CMDLINE_MARKERS = (
    "default_worker.py",
    "ray/_private/",
    "ray\\_private\\",
    "ray/dashboard/",
    "ray\\dashboard\\",
    "ray/autoscaler/",
    "ray\\autoscaler\\",
    "ray/util/client/server",
    "ray\\util\\client\\server",
    "runtime_env/agent",
    "runtime_env\\agent",
)


def is_ray_process(name: str, cmdline: Sequence[str]) -> bool:
    """A process of a Ray node (raylet, GCS, workers, agents), from its name and command line."""
    if name.lower() in RAY_PROCESS_NAMES or name.startswith("ray::"):
        return True
    if cmdline and cmdline[0].startswith("ray::"):
        return True
    joined = " ".join(cmdline)
    if "bittrader-throttle" in joined:
        return False
    return any(marker in joined for marker in RAY_CMDLINE_MARKERS)


def is_ray_start_block(cmdline: Sequence[str], ray_bin: str | None = None, node_ip: str | None = None) -> bool:
    """The `ray start ... --block` process a supervisor runs; with ray_bin, only that venv's `ray`; with
    node_ip, not one started for another address (--node-ip-address)."""
    for index, arg in enumerate(cmdline):
        base = re.split(r"[\\/]", arg)[-1].lower()
        if base in ("ray", "ray.exe") and "start" in cmdline[index + 1 :]:
            if "--block" not in cmdline:
                return False
            if ray_bin is not None and os.path.normcase(arg) != os.path.normcase(ray_bin):
                return False
            return node_ip is None or _started_for(cmdline, node_ip)
    return False


def _started_for(cmdline: Sequence[str], node_ip: str) -> bool:
    for index, arg in enumerate(cmdline):
        if arg.startswith("--node-ip-address="):
            return arg.split("=", 1)[1] == node_ip
        if arg == "--node-ip-address" and index + 1 < len(cmdline):
            return cmdline[index + 1] == node_ip
    return True


def default_user() -> str | None:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name: match on processes only
        return None


def _same_user(process_user: str | None, wanted: str | None) -> bool:
    if process_user is None or wanted is None:
        return False
    return process_user.split("\\")[-1].lower() == wanted.split("\\")[-1].lower()


def owned(proc: Any, username: str | None, wanted: str | None) -> bool:
    """A process of the wanted account: the named user when given, else the daemon's own account (its
    uid on Linux and macOS). Never "anyone": an unknown owner does not match."""
    if wanted is not None:
        return _same_user(username, wanted)
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        try:
            return int(proc.uids().real) == getuid()
        except Exception:  # noqa: BLE001 - no uid: not ours
            return False
    return _same_user(username, default_user())


class RayProcesses:
    """The Ray processes of one user, refreshed at most every PROCESS_REFRESH_S seconds."""

    def __init__(self, psutil_mod: Any, user: str | None, clock: Callable[[], float] = time.time) -> None:
        self._psutil = psutil_mod
        self._user = user
        self._clock = clock
        self._procs: dict[int, Any] = {}
        self._at = -math.inf

    def get(self, refresh: bool = False) -> list[Any]:
        now = self._clock()
        if refresh or now - self._at >= PROCESS_REFRESH_S:
            found: dict[int, Any] = {}
            own = os.getpid()
            for proc in self._psutil.process_iter(["name", "username"]):
                try:
                    info = proc.info
                    if proc.pid == own or not owned(proc, info.get("username"), self._user):
                        continue
                    name = info.get("name") or ""
                    cmdline: list[str] = []
                    if name.lower() not in RAY_PROCESS_NAMES:
                        cmdline = proc.cmdline()
                    if is_ray_process(name, cmdline):
                        found[proc.pid] = self._procs.get(proc.pid, proc)
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                    continue
            self._procs = found
            self._at = now
        return list(self._procs.values())


def cgroup_cpu_file(unit: str) -> str | None:
    """The cgroup file counting the CPU time of a systemd system unit (v2 cpu.stat, v1 cpuacct.usage)."""
    candidates = (
        f"/sys/fs/cgroup/system.slice/{unit}/cpu.stat",
        f"/sys/fs/cgroup/cpuacct/system.slice/{unit}/cpuacct.usage",
    )
    for path in candidates:
        if os.path.exists(path):
            return path
    return None


def read_cgroup_cpu_seconds(path: str) -> float | None:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    if path.endswith("cpu.stat"):
        match = re.search(r"^usage_usec\s+(\d+)", text, re.MULTILINE)
        return None if match is None else int(match.group(1)) / 1e6
    try:
        return int(text.strip()) / 1e9
    except ValueError:
        return None


class CgroupCpuCounter:
    """Cumulative CPU seconds of Ray's systemd unit, from its cgroup (one small file read). None while
    the unit is not running (its cgroup exists only then)."""

    def __init__(self, unit: str) -> None:
        self.unit = unit

    def __call__(self) -> float | None:
        path = cgroup_cpu_file(self.unit)
        return None if path is None else read_cgroup_cpu_seconds(path)


class LoadMeter:
    """CPU load of everything but Ray, in percent of the machine, between two samples."""

    def __init__(self, psutil_mod: Any, ray_seconds: Callable[[], float | None], clock: Callable[[], float]) -> None:
        self._psutil = psutil_mod
        self._ray_seconds = ray_seconds
        self._clock = clock
        self._cpus = max(1, int(psutil_mod.cpu_count() or 1))
        self._last: tuple[float, float, float] | None = None

    def _busy_seconds(self) -> float:
        times = self._psutil.cpu_times()
        idle = float(getattr(times, "idle", 0.0)) + float(getattr(times, "iowait", 0.0))
        guests = float(getattr(times, "guest", 0.0)) + float(getattr(times, "guest_nice", 0.0))
        total = sum(float(v) for v in times) - guests
        return total - idle

    def sample(self) -> float | None:
        now = self._clock()
        busy = self._busy_seconds()
        ray = self._ray_seconds()
        last, self._last = self._last, (now, busy, ray if ray is not None else 0.0)
        if last is None or ray is None or now - last[0] <= 0:
            return None
        ray_used = ray - last[2]
        if ray_used < 0:  # Ray restarted: its counter began again
            return None
        other = (busy - last[1]) - ray_used
        return max(0.0, min(100.0, other / ((now - last[0]) * self._cpus) * 100.0))


class ProcessCpuCounter:
    """Cumulative CPU seconds of the Ray processes (deltas of processes seen in two samples)."""

    def __init__(self, processes: RayProcesses, psutil_mod: Any) -> None:
        self._processes = processes
        self._psutil = psutil_mod
        self._seen: dict[int, float] = {}
        self._total = 0.0

    def __call__(self) -> float:
        seen: dict[int, float] = {}
        for proc in self._processes.get():
            try:
                times = proc.cpu_times()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue
            used = float(times.user) + float(times.system)
            if proc.pid in self._seen:
                self._total += max(0.0, used - self._seen[proc.pid])
            seen[proc.pid] = used
        self._seen = seen
        return self._total


