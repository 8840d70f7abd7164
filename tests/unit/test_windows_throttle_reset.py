"""The throttle's `--reset` (node_agent/src/bittrader_node_agent/throttle/cli.py), which the Windows reset
task runs at boot, after a sign-out and periodically: Windows ends the throttle without a signal (at
sign-out, and when Task Scheduler stops its task), so the daemon's own clean-up never runs and Ray would
stay throttled. Checked with the fakes of test_throttle_sources.py (processes, GCS helper output, clock)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

from test_throttle_daemon import NODE
from test_throttle_sources import (
    FAKE_PSUTIL,
    FakeProc,
    FakeRunner,
    FixedProcesses,
    bt,
    config,
    helper_out,
)

CONFIG_PATH = r"C:\ProgramData\Bittrader\throttle.json"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def killed_daemon_left(tmp_path: Path, cpus: int = 2, state: str = "active") -> None:
    """What a daemon ended by TerminateProcess leaves: its last status and CPU count, no "stopped"."""
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / "num_cpus").write_text(f"{cpus}\n")
    (tmp_path / "run" / "throttle_status.json").write_text(json.dumps({"state": state, "cpus": cpus}) + "\n")


def windows_setup(tmp_path: Path, runner: FakeRunner, procs: list[FakeProc], clock: Clock):
    cfg = config(tmp_path, platform="windows", mechanism={"kind": "windows"})
    mechanism = bt.WindowsMechanism(FixedProcesses(procs), FAKE_PSUTIL, full_cpus=8, logical_cpus=8)
    sync = bt.RaySync(cfg, runner, clock=clock)
    return cfg, mechanism, sync


def test_reset_after_a_killed_throttle_gives_ray_every_cpu_back(tmp_path: Path) -> None:
    killed_daemon_left(tmp_path, cpus=2)
    procs = [FakeProc(11), FakeProc(12)]
    for proc in procs:  # as the throttle left them: below normal, 2 CPUs of affinity
        proc.nice(0x4000)
        proc.cpu_affinity([0, 1])
    clock = Clock()
    runner = FakeRunner(helper_out([{"node_id": NODE, "is_head": False, "cpus": 2.0}], {"node_id": NODE, "cpus": 8.0}))
    cfg, mechanism, sync = windows_setup(tmp_path, runner, procs, clock)
    text = bt.reset(cfg, mechanism=mechanism, ray_sync=sync, running=list, logger=logging.getLogger("t"),
                    clock=clock, sleep=clock.sleep)
    assert text == "Ray has its 8 CPUs again"
    assert [(p.niceness, p.cpus) for p in procs] == [(0x20, list(range(8)))] * 2  # NORMAL, every CPU
    assert (tmp_path / "run" / "num_cpus").read_text() == "8\n"
    assert json.loads(runner.calls[0][0][3])["resize"] == 8  # Ray's scheduler brought to cpus_idle live
    status = json.loads((tmp_path / "run" / "throttle_status.json").read_text())
    assert status["state"] == "reset" and status["cpus"] == 8 and status["ray_done"] is True
    # The periodic run after that finds nothing to do and asks the GCS nothing.
    again = bt.reset(cfg, mechanism=mechanism, ray_sync=bt.RaySync(cfg, runner, clock=clock), running=list,
                     logger=logging.getLogger("t"), clock=clock, sleep=clock.sleep)
    assert again == "already reset" and len(runner.calls) == 1


def test_reset_does_nothing_while_the_throttle_runs(tmp_path: Path) -> None:
    killed_daemon_left(tmp_path, cpus=2)
    procs = [FakeProc(11)]
    clock = Clock()
    runner = FakeRunner()
    cfg, mechanism, sync = windows_setup(tmp_path, runner, procs, clock)
    text = bt.reset(cfg, mechanism=mechanism, ray_sync=sync, running=lambda: [4242],
                    logger=logging.getLogger("t"), clock=clock, sleep=clock.sleep)
    assert text == "the throttle runs (pid 4242): nothing to reset"
    assert procs[0].niceness is None and runner.calls == []
    assert (tmp_path / "run" / "num_cpus").read_text() == "2\n"


def test_reset_keeps_trying_until_ray_is_up_and_yields_to_a_new_throttle(tmp_path: Path) -> None:
    killed_daemon_left(tmp_path, cpus=2)
    clock = Clock()
    # At boot Ray is not up yet: no worker node; then the owner signs in and a throttle starts.
    runner = FakeRunner(helper_out([]))
    cfg, mechanism, sync = windows_setup(tmp_path, runner, [], clock)
    calls = {"n": 0}

    def running() -> list[int]:
        calls["n"] += 1
        return [77] if clock.now > 1100 else []

    text = bt.reset(cfg, mechanism=mechanism, ray_sync=sync, running=running, logger=logging.getLogger("t"),
                    clock=clock, sleep=clock.sleep)
    assert text == "the throttle started again: it takes over"
    assert (tmp_path / "run" / "num_cpus").read_text() == "8\n"  # Ray's next start gets every CPU
    assert len(runner.calls) >= 2  # retried with the daemon's back-off
    assert json.loads((tmp_path / "run" / "throttle_status.json").read_text())["state"] == "active"


def test_reset_gives_up_after_its_time_and_says_so(tmp_path: Path) -> None:
    killed_daemon_left(tmp_path, cpus=0, state="battery")
    clock = Clock()
    runner = FakeRunner(helper_out([], error="RpcError: Timed out"))
    cfg, mechanism, sync = windows_setup(tmp_path, runner, [], clock)
    text = bt.reset(cfg, mechanism=mechanism, ray_sync=sync, running=list, logger=logging.getLogger("t"),
                    clock=clock, sleep=clock.sleep, wait_s=120)
    assert text.startswith("Ray's scheduler not yet at 8 CPUs (ray: cannot reach the GCS")
    status = json.loads((tmp_path / "run" / "throttle_status.json").read_text())
    assert status["state"] == "reset" and status["ray_done"] is False
    # Not done: the next periodic run tries again instead of reporting "already reset".
    runner.answers = [helper_out([{"node_id": NODE, "is_head": False, "cpus": 0.0}], {"node_id": NODE, "cpus": 8.0})]
    again = bt.reset(cfg, mechanism=mechanism, ray_sync=bt.RaySync(cfg, runner, clock=clock), running=list,
                     logger=logging.getLogger("t"), clock=clock, sleep=clock.sleep)
    assert again == "Ray has its 8 CPUs again"


def test_only_a_daemon_of_the_same_configuration_counts_as_running() -> None:
    python = r"C:\ProgramData\Bittrader\venv\Scripts\pythonw.exe"
    script = r"C:\ProgramData\Bittrader\venv\Scripts\bittrader-throttle.py"
    assert bt.is_throttle_daemon([python, script, "--config", CONFIG_PATH], CONFIG_PATH)
    assert not bt.is_throttle_daemon([python, script, "--config", CONFIG_PATH, "--reset"], CONFIG_PATH)
    assert not bt.is_throttle_daemon([python, script, "--config", CONFIG_PATH, "--once"], CONFIG_PATH)
    assert not bt.is_throttle_daemon([python, script, "--config", "/other/throttle.json"], CONFIG_PATH)
    assert not bt.is_throttle_daemon([python, "other.py", "--config", CONFIG_PATH], CONFIG_PATH)
    # The scheduled tasks run the package (`pythonw.exe -m bittrader_node_agent.throttle`).
    module = ["-m", "bittrader_node_agent.throttle"]
    assert bt.is_throttle_daemon([python, *module, "--config", CONFIG_PATH], CONFIG_PATH)
    assert not bt.is_throttle_daemon([python, *module, "--config", CONFIG_PATH, "--reset"], CONFIG_PATH)
    assert not bt.is_throttle_daemon([python, "-m", "bittrader_node_agent.supervisor", "--config", CONFIG_PATH],
                                     CONFIG_PATH)

    def proc(pid: int, user: str, cmdline: list[str]) -> SimpleNamespace:
        return SimpleNamespace(pid=pid, info={"username": user}, cmdline=lambda: cmdline)

    procs = [
        proc(1, "GAMING-PC\\trader", [python, script, "--config", CONFIG_PATH]),
        proc(2, "GAMING-PC\\other", [python, script, "--config", CONFIG_PATH]),
        proc(3, "GAMING-PC\\trader", [python, script, "--config", CONFIG_PATH, "--reset"]),
    ]
    fake = SimpleNamespace(process_iter=lambda attrs: procs, **vars(FAKE_PSUTIL))
    assert bt.throttle_daemon_pids(fake, CONFIG_PATH, "trader") == [1]


def test_reset_is_a_command_line_option(tmp_path: Path, capsys) -> None:
    path = tmp_path / "throttle.json"
    raw = config(tmp_path, mechanism={"kind": "none"})
    path.write_text(json.dumps({"version": 1, "platform": raw.platform, "policy": {"cpus_idle": 8, "live_resize": False,
                                                                                    "drain": False},
                                "mechanism": {"kind": "none"},
                                "paths": {"log_file": str(tmp_path / "throttle.log"),
                                          "status_file": str(tmp_path / "status.json"),
                                          "num_cpus_file": str(tmp_path / "num_cpus")}}))
    assert bt.main(["--config", str(path), "--reset"]) == 0
    assert capsys.readouterr().out.strip() == "bittrader-throttle: Ray has its 8 CPUs again"
    assert (tmp_path / "num_cpus").read_text() == "8\n"
