"""How the throttle limits Ray's processes at once, per operating system: systemd's CPUQuota on
Linux, taskpolicy on macOS, priority class and CPU affinity on Windows (or nothing)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

from ..common import psutil_module, run_command
from .config import quota_percent
from .sources import RayProcesses

if TYPE_CHECKING:

    from ..common import Runner
    from .config import Config, MechanismSettings

# --------------------------------------------------------------------------------------------------
# Operating-system mechanisms
# --------------------------------------------------------------------------------------------------


class Mechanism(Protocol):
    """Limits the Ray processes at once. apply/release/refresh return a one-line result."""

    name: str

    def apply(self, cpus: int) -> str: ...

    def release(self) -> str: ...

    def refresh(self) -> str | None: ...



class SystemdQuota:
    """Linux: CPUQuota on Ray's systemd unit, through sudo (runtime only: gone at reboot)."""

    name = "systemd"

    def __init__(
        self, settings: MechanismSettings, unit: str, runner: Runner = run_command, as_root: bool = False
    ) -> None:
        self._settings = settings
        self._unit = unit
        self._runner = runner
        self._prefix = [] if as_root else [settings.sudo, "-n"]

    def argv(self, value: str) -> list[str]:
        return [*self._prefix, self._settings.systemctl, "set-property", "--runtime", self._unit, f"CPUQuota={value}"]

    def _set(self, value: str, timeout: float = 30.0) -> str:
        result = self._runner(self.argv(value), None, timeout)
        shown = value or "(none)"
        return f"CPUQuota={shown} on {self._unit}: " + ("ok" if result.ok else f"failed ({result.brief()})")

    def apply(self, cpus: int) -> str:
        return self._set(f"{quota_percent(cpus, self._settings.pause_quota_percent)}%")

    def release(self) -> str:
        return self._set("", timeout=10.0)

    def refresh(self) -> str | None:
        return None


class _ProcessMechanism:
    """Shared part of the per-process mechanisms: remembers the level given to each Ray process and
    gives newly started Ray processes the current level at each refresh."""

    name = "process"

    def __init__(self, processes: RayProcesses, psutil_mod: Any, full_cpus: int) -> None:
        self._processes = processes
        self._psutil = psutil_mod
        self._full = full_cpus
        self._cpus: int | None = None
        self._applied: dict[int, int] = {}

    def _set(self, proc: Any, cpus: int) -> str | None:
        raise NotImplementedError

    def _label(self, cpus: int | None) -> str:
        raise NotImplementedError

    def _apply_all(self, cpus: int, refresh: bool, only_new: bool) -> str:
        procs = self._processes.get(refresh=refresh)
        done, failed = 0, []
        applied: dict[int, int] = {}
        for proc in procs:
            if only_new and self._applied.get(proc.pid) == cpus:
                applied[proc.pid] = cpus
                continue
            try:
                error = self._set(proc, cpus)
            except (self._psutil.NoSuchProcess, self._psutil.ZombieProcess):
                continue
            except Exception as exc:  # noqa: BLE001 - report and go on with the other processes
                error = str(exc)
            if error is None:
                done += 1
                applied[proc.pid] = cpus
            else:
                failed.append(f"{proc.pid}: {error}")
        self._applied = applied
        text = f"{self._label(cpus)} on {done} Ray processes"
        if failed:
            text += f", failed on {len(failed)} ({'; '.join(failed[:3])})"
        return text

    def apply(self, cpus: int) -> str:
        self._cpus = cpus
        return self._apply_all(cpus, refresh=True, only_new=False)

    def release(self) -> str:
        self._cpus = None
        return self._apply_all(self._full, refresh=True, only_new=False)

    def refresh(self) -> str | None:
        if self._cpus is None:
            return None
        before = set(self._applied)
        text = self._apply_all(self._cpus, refresh=False, only_new=True)
        return None if set(self._applied) == before else text


class TaskpolicyMechanism(_ProcessMechanism):
    """macOS: `taskpolicy -b -p PID` (darwin background: lowest CPU priority, throttled I/O, efficiency
    cores on Apple silicon) while Ray has fewer than all its CPUs; `taskpolicy -B -p PID` otherwise.
    No renice: a normal user cannot lower a nice value again."""

    name = "taskpolicy"

    def __init__(
        self, processes: RayProcesses, psutil_mod: Any, full_cpus: int, taskpolicy: str, runner: Runner = run_command
    ) -> None:
        super().__init__(processes, psutil_mod, full_cpus)
        self._taskpolicy = taskpolicy
        self._runner = runner

    def argv(self, pid: int, cpus: int) -> list[str]:
        return [self._taskpolicy, "-b" if cpus < self._full else "-B", "-p", str(pid)]

    def _set(self, proc: Any, cpus: int) -> str | None:
        result = self._runner(self.argv(proc.pid, cpus), None, 10.0)
        return None if result.ok else result.brief()

    def _label(self, cpus: int | None) -> str:
        return "background (taskpolicy -b)" if cpus is not None and cpus < self._full else "normal (taskpolicy -B)"


WINDOWS_PRIORITY = {"NORMAL_PRIORITY_CLASS": 0x20, "BELOW_NORMAL_PRIORITY_CLASS": 0x4000, "IDLE_PRIORITY_CLASS": 0x40}


class WindowsMechanism(_ProcessMechanism):
    """Windows: priority class (below normal while throttled, idle while paused) and CPU affinity
    (the first N logical CPUs, at least 1) of the Ray processes; both are inherited by new workers."""

    name = "windows"

    def __init__(self, processes: RayProcesses, psutil_mod: Any, full_cpus: int, logical_cpus: int) -> None:
        super().__init__(processes, psutil_mod, full_cpus)
        self._logical = max(1, logical_cpus)

    def priority(self, cpus: int) -> int:
        if cpus <= 0:
            key = "IDLE_PRIORITY_CLASS"
        elif cpus < self._full:
            key = "BELOW_NORMAL_PRIORITY_CLASS"
        else:
            key = "NORMAL_PRIORITY_CLASS"
        return int(getattr(self._psutil, key, WINDOWS_PRIORITY[key]))

    def affinity(self, cpus: int) -> list[int]:
        count = self._logical if cpus >= self._full else min(self._logical, max(1, cpus))
        return list(range(count))

    def _set(self, proc: Any, cpus: int) -> str | None:
        proc.nice(self.priority(cpus))
        proc.cpu_affinity(self.affinity(cpus))
        return None

    def _label(self, cpus: int | None) -> str:
        level = self._full if cpus is None else cpus
        return f"priority {self.priority(level):#x}, {len(self.affinity(level))} CPUs affinity"


class NoMechanism:
    """No operating-system limit (tests, or Ray's scheduler alone)."""

    name = "none"

    def apply(self, cpus: int) -> str:
        return "no OS limit (mechanism none)"

    def release(self) -> str:
        return "no OS limit (mechanism none)"

    def refresh(self) -> str | None:
        return None


def make_mechanism(
    config: Config, runner: Runner = run_command, psutil_mod: Any = None, processes: RayProcesses | None = None
) -> Mechanism:
    kind = config.mechanism_kind
    if kind == "none":
        return NoMechanism()
    if kind == "systemd":
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        return SystemdQuota(config.mechanism, config.ray.unit, runner, as_root=as_root)
    psutil_mod = psutil_mod if psutil_mod is not None else psutil_module()
    if processes is None:
        processes = RayProcesses(psutil_mod, config.mechanism.process_user)
    if kind == "taskpolicy":
        return TaskpolicyMechanism(processes, psutil_mod, config.policy.cpus_idle, config.mechanism.taskpolicy, runner)
    return WindowsMechanism(processes, psutil_mod, config.policy.cpus_idle, int(psutil_mod.cpu_count() or 1))


