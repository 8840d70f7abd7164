"""The macOS worker's notifier (node_agent/src/bittrader_node_agent/notify.py): which log lines and
throttle states become notifications, log rotation, and the osascript call. osascript itself is
replaced by a recorder: showing the notification is only possible on a Mac."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bittrader_node_agent import notify as bn


class Recorder:
    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, argv: list[str], **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, self.returncode, "", "boom" if self.returncode else "")


def test_classify() -> None:
    assert bn.classify("2026-11-28 10:00:01 Ray runtime started.") == ("joined", "")
    assert bn.classify("2026-11-28 10:05:00 bittrader-node: ray exited with code 1 after 300 s") == ("lost_head", "1")
    assert bn.classify("bittrader-node: ray exited with code -15 after 3 s") == ("lost_head", "-15")
    assert bn.classify("bittrader-node: ray stop --force: exit 0") is None


def test_only_changes_are_notified() -> None:
    n = bn.Notifier(node="macbook-air", head="100.77.179.14:6379", min_interval_s=0)
    started = "Ray runtime started."
    exited = "bittrader-node: ray exited with code 1 after 70 s"
    assert [e for e, _ in n.on_lines([started], 0)] == ["joined"]
    assert n.on_lines([started], 1) == []
    lost = n.on_lines([exited, exited, exited], 2)
    assert [e for e, _ in lost] == ["lost_head"]
    assert "100.77.179.14:6379" in lost[0][1] and "exit code 1" in lost[0][1]
    assert [e for e, _ in n.on_lines([started], 3)] == ["joined"]


def test_min_interval_limits_each_event() -> None:
    n = bn.Notifier(node="m", head="h", min_interval_s=60)
    started, exited = "Ray runtime started.", "bittrader-node: ray exited with code 1 after 1 s"
    assert len(n.on_lines([started], 0)) == 1
    assert len(n.on_lines([exited], 5)) == 1
    assert n.on_lines([started], 10) == []  # joined again too soon: followed, not shown
    assert n.connected is True
    assert len(n.on_lines([exited, started], 100)) == 2


def test_disabled_events_are_followed_but_not_shown() -> None:
    n = bn.Notifier(node="m", head="h", events=("lost_head",), min_interval_s=0)
    assert n.on_lines(["Ray runtime started."], 0) == []
    assert n.connected is True
    assert [e for e, _ in n.on_lines(["bittrader-node: ray exited with code 1"], 1)] == ["lost_head"]


def test_throttle_state_changes() -> None:
    n = bn.Notifier(node="m", head="h", min_interval_s=0)
    assert n.on_status(None, 0) == []
    assert n.on_status({"state": "active", "cpus": 2}, 0) == []  # baseline at start
    assert n.on_status({"state": "active", "cpus": 2}, 1) == []
    idle = n.on_status({"state": "idle", "cpus": 10, "reason": "no input for 300 s"}, 2)
    assert idle == [("throttle", "Throttle: idle, Ray gets 10 CPUs (no input for 300 s)")]
    battery = n.on_status({"state": "battery", "cpus": 0}, 3)
    assert battery == [("throttle", "Throttle: battery, Ray paused")]
    stopped = n.on_status({"state": "stopped", "cpus": 0}, 4)
    assert stopped == [("throttle", "Throttle stopped: Ray runs without limits")]


def test_log_follower_starts_at_the_end_and_follows_rotation(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("old line\n")
    follower = bn.LogFollower(str(log))
    assert follower.read() == []  # history is not replayed
    with log.open("a") as handle:
        handle.write("Ray runtime started.\npartial")
    assert follower.read() == ["Ray runtime started."]
    with log.open("a") as handle:
        handle.write(" line\n")
    assert follower.read() == ["partial line"]
    os.replace(log, tmp_path / "worker.log.1")  # RotatingFileHandler renames, then starts a new file
    log.write_text("bittrader-node: ray exited with code 1 after 5 s\n")
    assert follower.read() == ["bittrader-node: ray exited with code 1 after 5 s"]
    log.write_text("")  # truncated
    assert follower.read() == []
    log.write_text("again\n")
    assert follower.read() == ["again"]


def test_missing_log_and_status(tmp_path: Path) -> None:
    assert bn.LogFollower(str(tmp_path / "none.log")).read() == []
    assert bn.read_status(str(tmp_path / "none.json")) is None
    assert bn.read_status(None) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert bn.read_status(str(bad)) is None
    good = tmp_path / "status.json"
    good.write_text(json.dumps({"state": "idle", "cpus": 4}) + "\n")
    assert bn.read_status(str(good)) == {"state": "idle", "cpus": 4}


def test_notify_passes_text_as_arguments() -> None:
    rec = Recorder()
    message = 'He said "hi" & left; do shell script "rm -rf /"'
    assert bn.notify("/usr/bin/osascript", "Bittrader Ray", "Worker joined", message, runner=rec)
    argv = rec.calls[0]
    assert argv[0] == "/usr/bin/osascript"
    script = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert script[0] == "on run argv" and script[-1] == "end run"
    assert all(message not in line for line in script)  # never pasted into AppleScript
    assert argv[-3:] == [message, "Bittrader Ray", "Worker joined"]


def test_notify_failure_is_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    assert not bn.notify("/usr/bin/osascript", "t", "s", "m", runner=Recorder(returncode=1))

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("no osascript")

    assert not bn.notify("/nope", "t", "s", "m", runner=broken)
    assert "osascript" in capsys.readouterr().err


def test_run_once_end_to_end(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("")
    status = tmp_path / "throttle_status.json"
    status.write_text(json.dumps({"state": "active", "cpus": 2}) + "\n")
    config = {"log_file": str(log), "status_file": str(status), "node": "macbook-air", "head": "h:6379",
              "title": "Bittrader Ray", "min_interval_s": 0}
    rec = Recorder()
    clock = iter(range(100)).__next__
    sleeps: list[float] = []

    class Stop(Exception):
        pass

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            log.write_text("Ray runtime started.\n")
            status.write_text(json.dumps({"state": "idle", "cpus": 10}) + "\n")
        else:
            raise Stop

    with pytest.raises(Stop):
        bn.run(config, sleep=sleep, runner=rec, clock=lambda: float(clock()))
    subtitles = [call[-1] for call in rec.calls]
    assert subtitles == ["Worker joined", "Throttle"]
    assert sleeps == [5.0, 5.0]


def test_config_and_test_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "notifier.json"
    config.write_text(json.dumps({"log_file": "/x.log", "events": ["joined", "bogus"]}))
    assert bn.main(["--config", str(config)]) == 78
    config.write_text(json.dumps({"log_file": "/x.log", "node": "macbook-air"}))
    rec = Recorder()
    monkeypatch.setattr(bn.subprocess, "run", rec)
    assert bn.main(["--config", str(config), "--test"]) == 0
    assert "macbook-air" in rec.calls[0][-3]
