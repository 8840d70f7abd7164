"""Lifecycle pieces that run on the nodes: the supervisor's hold (remove_worker.yml) and the health
program's wait for a drained node to leave (remove_worker.yml's --gone)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def load(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


node = importlib.import_module("bittrader_node_agent.supervisor")
health = importlib.import_module("bittrader_node_agent.health")


def test_the_hold_file_lies_next_to_the_supervisors_state(tmp_path: Path) -> None:
    config = {"state_file": str(tmp_path / "run" / "supervisor.json")}
    assert node.hold_path(config) == tmp_path / "run" / "hold"


def test_the_supervisor_waits_while_held_and_starts_once_released(tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    assert node.wait_while_held(hold, poll_s=0.05) is False
    hold.write_text("remove_worker.yml")
    released = threading.Timer(0.5, hold.unlink)
    started = time.monotonic()
    released.start()
    assert node.wait_while_held(hold, poll_s=0.05) is True
    waited = time.monotonic() - started
    assert 0.4 < waited < 5, waited


def test_status_reports_the_hold(tmp_path: Path, capsys: Any) -> None:
    config = {"state_file": str(tmp_path / "supervisor.json"), "node": "w1", "role": "worker"}
    (tmp_path / "hold").write_text("x")
    node.status(config)
    assert '"held": true' in capsys.readouterr().out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_gone_returns_when_no_alive_node_has_the_address() -> None:
    clock = Clock()
    reads = iter([
        [{"ip": "10.0.0.11", "alive": True}, {"ip": "10.0.0.12", "alive": True}],
        RuntimeError("GCS briefly unreachable"),
        [{"ip": "10.0.0.11", "alive": True, "draining": True}],
        [{"ip": "10.0.0.11", "alive": False}, {"ip": "10.0.0.12", "alive": True}],
    ])

    def reader() -> list[dict[str, Any]]:
        item = next(reads)
        if isinstance(item, Exception):
            raise item
        return item

    gone, last = health.wait_gone(reader, "10.0.0.11", 60, poll_s=3, clock=clock, sleep=clock.sleep)
    assert gone is True and clock.now == 9
    assert last[1]["ip"] == "10.0.0.12"


def test_wait_gone_gives_up_after_the_wait() -> None:
    clock = Clock()
    gone, last = health.wait_gone(lambda: [{"ip": "10.0.0.11", "alive": True}], "10.0.0.11", 10, poll_s=3,
                                  clock=clock, sleep=clock.sleep)
    assert gone is False and clock.now == 12 and last == [{"ip": "10.0.0.11", "alive": True}]
