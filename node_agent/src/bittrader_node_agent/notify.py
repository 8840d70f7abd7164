"""Bittrader worker notifier: macOS notifications for the worker's owner.

    bittrader-notify --config notifier.json          follow and notify (the LaunchAgent's command)
    bittrader-notify --config notifier.json --test   show one test notification and exit

Runs as a LaunchAgent of the worker's user, in the user's desktop session: notifications can only be
shown there (a LaunchDaemon, even with UserName set, has no access to the desktop). It follows
  * the node supervisor's logs (worker.log and worker_error.log, rotated): "Ray runtime started" means
    Ray on this Mac joined the cluster ("joined"); "bittrader-node: ray exited with code N" means it
    left ("lost_head"): on a worker nearly always a lost head, else a restart (a throttle change, an
    update); the supervisor starts it again by itself and it rejoins when the head answers;
  * the throttle's status file (one JSON line, rewritten atomically): a new "state" is a "throttle"
    event (active, idle, battery, stopped), shown with the CPUs Ray now gets.
Only changes are notified (joined after lost, not every start), at most one notification per event
kind per min_interval_s. Notifications go through `osascript -e 'display notification ...'`, with the
text passed as arguments, never pasted into the script. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import config_error, load_json_config, read_json_line

__all__ = ["main"]

JOINED = "joined"
LOST_HEAD = "lost_head"
THROTTLE = "throttle"
EVENTS = (JOINED, LOST_HEAD, THROTTLE)

_JOINED_RE = re.compile(r"Ray runtime started")
_EXITED_RE = re.compile(r"bittrader-node: ray exited with code (-?\d+)")

APPLESCRIPT = [
    "on run argv",
    "display notification (item 1 of argv) with title (item 2 of argv) subtitle (item 3 of argv)",
    "end run",
]


class LogFollower:
    """New lines of a log file that may be rotated (renamed and recreated) or truncated.

    The first read starts at the end of the file (history is not replayed); after a rotation the new
    file is read from its beginning."""

    def __init__(self, path: str, from_start: bool = False) -> None:
        self.path = path
        self._inode: int | None = None
        self._offset = 0
        self._started = from_start
        self._partial = ""

    def read(self) -> list[str]:
        try:
            stat = os.stat(self.path)
        except OSError:
            return []
        if not self._started:
            self._started = True
            self._inode, self._offset = stat.st_ino, stat.st_size
            return []
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset, self._partial = stat.st_ino, 0, ""
        if stat.st_size == self._offset:
            return []
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return []
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        return lines


def classify(line: str) -> tuple[str, str] | None:
    """(event, detail) for a supervisor log line that matters, else None."""
    if _JOINED_RE.search(line):
        return JOINED, ""
    found = _EXITED_RE.search(line)
    if found:
        return LOST_HEAD, found.group(1)
    return None


def read_status(path: str | None) -> dict[str, Any] | None:
    """The throttle's last status line, or None when there is none (yet)."""
    return read_json_line(path, last=True)


def throttle_message(status: dict[str, Any]) -> str:
    state = str(status.get("state", "?"))
    cpus = status.get("cpus")
    if state == "stopped":
        text = "Throttle stopped: Ray runs without limits"
    elif cpus is None:
        text = f"Throttle: {state}"
    elif int(cpus) == 0:
        text = f"Throttle: {state}, Ray paused"
    else:
        text = f"Throttle: {state}, Ray gets {int(cpus)} CPU{'s' if int(cpus) != 1 else ''}"
    reason = str(status.get("reason") or "").strip()
    return f"{text} ({reason})" if reason else text


@dataclass
class Notifier:
    """What to notify, from the log lines and the throttle status seen so far."""

    node: str
    head: str
    events: tuple[str, ...] = EVENTS
    min_interval_s: float = 60.0
    connected: bool | None = None
    throttle_state: str | None = None
    last_sent: dict[str, float] = field(default_factory=dict)

    def _due(self, event: str, now: float) -> bool:
        if event not in self.events:
            return False
        last = self.last_sent.get(event)
        if last is not None and now - last < self.min_interval_s:
            return False
        self.last_sent[event] = now
        return True

    def on_lines(self, lines: list[str], now: float) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for line in lines:
            found = classify(line)
            if found is None:
                continue
            event, detail = found
            if event == JOINED and self.connected is not True:
                self.connected = True
                if self._due(JOINED, now):
                    out.append((JOINED, f"{self.node} joined the Ray cluster at {self.head}"))
            elif event == LOST_HEAD and self.connected is not False:
                self.connected = False
                if self._due(LOST_HEAD, now):
                    out.append(
                        (
                            LOST_HEAD,
                            f"{self.node} left the Ray cluster (exit code {detail}): head {self.head} lost, "
                            "or Ray restarted; it rejoins by itself",
                        )
                    )
        return out

    def on_status(self, status: dict[str, Any] | None, now: float) -> list[tuple[str, str]]:
        if status is None:
            return []
        state = str(status.get("state", ""))
        if not state or state == self.throttle_state:
            return []
        first = self.throttle_state is None
        self.throttle_state = state
        if first and state != "stopped":
            return []  # the state found at start is the baseline, not a change
        if self._due(THROTTLE, now):
            return [(THROTTLE, throttle_message(status))]
        return []


Runner = Callable[..., Any]


def notify(osascript: str, title: str, subtitle: str, message: str, runner: Runner | None = None) -> bool:
    """Show a notification; False (never an exception) when osascript fails."""
    runner = runner or subprocess.run
    argv = [osascript]
    for line in APPLESCRIPT:
        argv += ["-e", line]
    argv += [message, title, subtitle]
    try:
        done = runner(argv, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"bittrader-notify: osascript failed: {exc}", file=sys.stderr, flush=True)
        return False
    if done.returncode != 0:
        print(f"bittrader-notify: osascript exit {done.returncode}: {done.stderr.strip()}", file=sys.stderr, flush=True)
        return False
    return True


SUBTITLES = {JOINED: "Worker joined", LOST_HEAD: "Head lost", THROTTLE: "Throttle"}


def load_config(path: Path) -> dict[str, Any]:
    config = load_json_config(path, ("log_file",))
    unknown = [e for e in config.get("events", EVENTS) if e not in EVENTS]
    if unknown:
        raise ValueError(f"{path}: unknown events {', '.join(unknown)}")
    return config


def run(config: dict[str, Any], once: bool = False, sleep: Callable[[float], None] = time.sleep,
        runner: Runner | None = None, clock: Callable[[], float] = time.time) -> int:
    notifier = Notifier(
        node=str(config.get("node", "this Mac")),
        head=str(config.get("head", "the head")),
        events=tuple(config.get("events", EVENTS)),
        min_interval_s=float(config.get("min_interval_s", 60)),
    )
    followers = [LogFollower(str(path)) for path in (config["log_file"], config.get("error_log_file")) if path]
    osascript = str(config.get("osascript", "/usr/bin/osascript"))
    title = str(config.get("title", "Bittrader Ray"))
    poll = max(1.0, float(config.get("poll_interval_s", 5)))
    while True:
        now = clock()
        lines = [line for follower in followers for line in follower.read()]
        messages = notifier.on_lines(lines, now) + notifier.on_status(read_status(config.get("status_file")), now)
        for event, message in messages:
            print(f"bittrader-notify: {event}: {message}", flush=True)
            notify(osascript, title, SUBTITLES[event], message, runner)
        if once:
            return 0
        sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bittrader-notify", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--test", action="store_true", help="show one test notification and exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (OSError, ValueError) as exc:
        return config_error("bittrader-notify", exc)
    if args.test:
        ok = notify(
            str(config.get("osascript", "/usr/bin/osascript")),
            str(config.get("title", "Bittrader Ray")),
            "Test",
            f"Notifications from the Ray worker {config.get('node', '')} work.",
        )
        return 0 if ok else 1
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
