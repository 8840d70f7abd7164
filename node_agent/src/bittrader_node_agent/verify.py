"""Check this Ray node on the machine itself (Linux and macOS; Windows has verify_worker.ps1): is its
service up, does the head's GCS port answer, which Ray and Python it runs, and did the head refuse its
auth token. Read-only.

    ~/.bittrader_worker/verify_worker.sh [--json]      (as the Ray account, or with sudo)

The wrapper runs this file with the node's venv Python and the node's service (systemd unit or launchd
job), so the Ray and Python it reports are the node's own. Exit code 0 when healthy, 1 otherwise.
Standard library only (Python 3.8+).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import load_json_config

__all__ = ["main"]

# What Ray logs when the head refuses a node's token (seen: InvalidAuthToken on a worker without the
# token; "GCS returned an authentication error" on a worker after the head's restart; Unauthorized from
# the job API).
AUTH_ERRORS = ("InvalidAuthToken", "authentication error", "Unauthorized", "Invalid auth token")
LOG_TAIL_LINES = 200


def head_address(config: dict[str, Any]) -> tuple[str, int] | None:
    """The head's GCS (host, port): a worker's --address, the head's own --node-ip-address and --port."""
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in config.get("start_args", []) if "=" in a}
    if "--address" in args:
        host, _, port = args["--address"].rpartition(":")
    elif "--port" in args:
        host, port = args.get("--node-ip-address", "127.0.0.1"), args["--port"]
    else:
        return None
    try:
        return host, int(port)
    except ValueError:
        return None


def reachable(address: tuple[str, int] | None, timeout: float = 3.0) -> bool:
    if address is None:
        return False
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def service_state(manager: str, service: str) -> str:
    """"running", or what the service manager says instead ("inactive", "missing", ...)."""
    if manager == "systemd":
        argv = ["systemctl", "is-active", service]
    elif manager == "launchd":
        argv = ["launchctl", "print", service]
    else:
        return "unknown"
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc.__class__.__name__})"
    text = res.stdout.strip()
    if manager == "systemd":
        return "running" if text == "active" else (text or "missing")
    if res.returncode != 0:
        return "missing"
    for line in text.splitlines():
        key, _, value = line.strip().partition(" = ")
        if key == "state":
            return value.strip()
    return "loaded"


def ray_version() -> str:
    try:
        from importlib.metadata import version

        return version("ray")
    except Exception:  # noqa: BLE001 - any failure means: no Ray in this Python
        return ""


def tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()[-lines:]
    except OSError:
        return []


def logged_at(line: str) -> float | None:
    """When the supervisor wrote a log line (its "%(asctime)s" prefix, local time); None without one."""
    try:
        return datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()
    except ValueError:
        return None


def auth_refusals(lines: list[str], since: float | None = None) -> list[str]:
    """The refusals logged by the Ray the supervisor runs now: lines older than its last start are history
    (a head restart makes each worker log "GCS returned an authentication error" once before the
    supervisor starts it again; a rotation, the old token's refusals)."""
    found = []
    for line in lines:
        if not any(marker in line for marker in AUTH_ERRORS):
            continue
        at = logged_at(line)
        if since is not None and at is not None and at < since:
            continue
        found.append(line.strip())
    return found


def report(config: dict[str, Any], manager: str, service: str) -> dict[str, Any]:
    address = head_address(config)
    token = str(config.get("env", {}).get("RAY_AUTH_TOKEN_PATH", ""))
    try:
        with open(str(config.get("state_file", "")), encoding="utf-8") as handle:
            supervisor = json.load(handle)
    except (OSError, ValueError):
        supervisor = {}
    logs = tail(str(config.get("error_log_file", ""))) + tail(str(config.get("log_file", "")))
    found: dict[str, Any] = {
        "node": config.get("node"),
        "role": config.get("role"),
        "service": service,
        "service_state": service_state(manager, service),
        "head": f"{address[0]}:{address[1]}" if address else "",
        "head_reachable": reachable(address),
        "token_present": bool(token) and os.path.exists(token),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "ray": ray_version(),
        "supervisor": supervisor,
        "auth_refused": auth_refusals(logs, supervisor.get("last_started"))[-3:],
    }
    problems = []
    if found["service_state"] != "running":
        problems.append(f"the service {service} is {found['service_state']}, not running")
    if not found["head_reachable"]:
        problems.append(f"the head's GCS port {found['head'] or '(unknown)'} does not answer from here")
    if not found["token_present"]:
        problems.append(f"the cluster's auth token {token or '(not configured)'} is missing")
    if found["auth_refused"]:
        problems.append(
            "the head refused this node's auth token (its log: "
            f"{found['auth_refused'][-1][:200]}): run site.yml for this node again so it gets the head's token"
        )
    if not found["ray"]:
        problems.append(f"{sys.executable} has no Ray installed")
    found["problems"] = problems
    found["healthy"] = not problems
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="the node's node.json")
    parser.add_argument("--manager", choices=["systemd", "launchd"], required=True)
    parser.add_argument("--service", required=True, help="systemd unit, or launchd target (system/LABEL)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_json_config(args.config)
    except (OSError, ValueError) as exc:
        print(f"verify_worker: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    found = report(config, args.manager, args.service)
    if args.json:
        print(json.dumps(found, sort_keys=True))
    else:
        print(f"Bittrader Ray {found['role']} {found['node']}")
        print(f"  service {found['service']}: {found['service_state']}")
        print(f"  head {found['head']}: {'reachable' if found['head_reachable'] else 'NOT reachable'}")
        print(f"  Ray {found['ray'] or '(none)'}, Python {found['python']} ({found['python_executable']})")
        print(f"  supervisor: {json.dumps(found['supervisor'], sort_keys=True)}")
        print("OK" if found["healthy"] else "\n".join(f"PROBLEM: {p}" for p in found["problems"]))
    return 0 if found["healthy"] else 1


if __name__ == "__main__":
    sys.exit(main())
