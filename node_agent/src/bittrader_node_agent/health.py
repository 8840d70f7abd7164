"""Bittrader cluster health record, run on the head by a timer (systemd) or a launchd job (macOS).

    bittrader-health check  --config health.json   read the cluster once, append one line to the log
                    [--quiet]                      (and a WARN line per node missing for too long)
    bittrader-health status --config health.json   print the latest state; exit 0 healthy, 1 a node is
                                                   missing or the cluster unreachable, 2 no recent record
    bittrader-health nodes  --config health.json   print the cluster's nodes as JSON (for playbooks);
                    [--gone IP --wait S]           with --gone, first wait up to S seconds until no
                                                   alive node has address IP (exit 3 if one still has)

health.json is written by Ansible: the cluster's address, the token file, the inventory's hosts
(name, ip, cpus, the throttle's CPU counts) and the warning threshold. The program reads the GCS's
resource view (live CPU totals, draining state) with Ray's GcsClient, which registers no driver and
no job. A node is "missing" while no alive Ray node has its address; the state file remembers since
when, across runs, so a WARN line appears once a node has been missing longer than missing_warn_s.
The log is size-rotated. Everything but read_nodes() is standard library and unit-tested.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import (
    EX_CONFIG,
    config_error,
    fresh_logger,
    load_json_config,
    read_json_object,
    rotating_handler,
    write_json_atomic,
)

__all__ = ["EX_CONFIG", "main"]

REQUIRED = ("address", "expected", "log_file", "state_file")


def load_config(path: Path) -> dict[str, Any]:
    config = load_json_config(path, REQUIRED)
    for host in config["expected"]:
        if not isinstance(host, dict) or "name" not in host or "ip" not in host:
            raise ValueError(f"{path}: each expected host needs name and ip, got {host!r}")
    return config


def stamp(ts: float) -> str:
    """Local time with its UTC offset, to the second."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def num(value: Any) -> int | float:
    number = float(value or 0)
    return int(number) if number.is_integer() else round(number, 2)


def read_nodes(address: str, token_file: str | None, timeout: float) -> list[dict[str, Any]]:
    """Every node the GCS knows, from the autoscaler's resource view (live CPU totals, draining), in
    the form summarize() reads: node_id, ip, alive, draining, cpus, is_head. Needs Ray (the venv)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    if token_file:
        os.environ["RAY_AUTH_TOKEN_PATH"] = token_file
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    client = GcsClient(address=address)
    nodes: list[dict[str, Any]] = []
    try:
        from ray.core.generated.autoscaler_pb2 import (  # type: ignore[attr-defined]
            GetClusterResourceStateReply,
            NodeStatus,
        )

        reply = GetClusterResourceStateReply()
        reply.ParseFromString(client.get_cluster_resource_state(timeout_s=timeout))
        for state in reply.cluster_resource_state.node_states:
            total = dict(state.total_resources)
            nodes.append({
                "node_id": state.node_id.hex(),
                "ip": state.node_ip_address,
                "alive": state.status != NodeStatus.DEAD,
                "draining": state.status == NodeStatus.DRAINING,
                "cpus": float(total.get("CPU", 0.0)),
                "is_head": any(key.startswith("node:__internal_head__") for key in total),
            })
        return nodes
    except (ImportError, AttributeError, TypeError):
        pass  # another Ray release: fall back to the node table (CPU totals as registered)
    for info in client.get_all_node_info(timeout=timeout).values():
        total = dict(info.resources_total)
        nodes.append({
            "node_id": info.node_id.hex(),
            "ip": info.node_manager_address,
            "alive": info.state == 0,  # GcsNodeInfo.ALIVE
            "draining": False,
            "cpus": float(total.get("CPU", 0.0)),
            "is_head": bool(info.is_head_node),
        })
    return nodes


def wait_gone(reader: Any, ip: str, wait_s: float, poll_s: float = 3.0, clock: Any = time.monotonic,
              sleep: Any = time.sleep) -> tuple[bool, list[dict[str, Any]]]:
    """Poll reader() until no alive node has address ip (True), or wait_s has passed (False); returns
    the last nodes read. A failed read counts as not gone yet."""
    deadline = clock() + wait_s
    last: list[dict[str, Any]] = []
    while True:
        try:
            last = reader()
            if not any(n.get("alive") and str(n.get("ip")) == ip for n in last):
                return True, last
        except Exception:  # noqa: BLE001, S110 - the GCS may be briefly unreachable: try again
            pass
        if clock() >= deadline:
            return False, last
        sleep(poll_s)


def throttle_state(cpus: float, throttle: dict[str, Any] | None) -> str | None:
    """The throttle's state as Ray's scheduler shows it: full (the idle count), throttled (the active
    count), paused (0 CPUs) or N CPUs; None for a node without the throttle."""
    if not throttle:
        return None
    idle, active = throttle.get("cpus_idle"), throttle.get("cpus_active")
    if idle not in (None, "") and float(cpus) == float(idle):
        return f"full {num(cpus)}/{num(idle)}"
    if float(cpus) == 0:
        return f"paused 0/{num(idle)}" if idle not in (None, "") else "paused"
    if active not in (None, "") and float(cpus) == float(active):
        return f"throttled {num(cpus)}/{num(idle)}" if idle not in (None, "") else f"throttled {num(cpus)}"
    return f"{num(cpus)} CPUs"


def summarize(
    nodes: list[dict[str, Any]] | None,
    expected: list[dict[str, Any]],
    state: dict[str, Any],
    now: float,
    warn_after_s: float,
    error: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One check's record and the state to keep. nodes None means the cluster could not be read
    (error says why): every expected node then counts as missing."""
    since: dict[str, float] = {str(k): float(v) for k, v in (state.get("missing_since") or {}).items()}
    by_ip: dict[str, dict[str, Any]] = {}
    for node in nodes or []:
        ip = str(node.get("ip"))
        if node.get("alive") and (ip not in by_ip or not by_ip[ip].get("alive")):
            by_ip[ip] = node
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    kept: dict[str, float] = {}
    expected_ips = set()
    for host in expected:
        name, ip = str(host["name"]), str(host["ip"])
        expected_ips.add(ip)
        found = by_ip.get(ip)
        row: dict[str, Any] = {"name": name, "ip": ip, "state": "missing", "cpus": None, "throttle": None,
                               "missing_s": None}
        if found is not None:
            row.update(state="draining" if found.get("draining") else "alive", cpus=num(found.get("cpus")),
                       throttle=throttle_state(float(found.get("cpus") or 0), host.get("throttle")))
            want = host.get("cpus")
            if want not in (None, "") and float(found.get("cpus") or 0) != float(want):
                row["note"] = f"expected {num(want)} CPUs"
        else:
            first = since.get(name, now)
            kept[name] = first
            row["missing_s"] = round(now - first)
            if now - first >= warn_after_s:
                warnings.append(f"{name} ({ip}) missing for {now - first:.0f} s (since {stamp(first)}; "
                                f"warns after {num(warn_after_s)} s)")
        rows.append(row)
    alive = [n for n in by_ip.values() if n.get("alive")]
    extra = sorted(ip for ip in by_ip if ip not in expected_ips)
    record = {
        "time": stamp(now),
        "ts": now,
        "alive": sum(1 for r in rows if r["state"] != "missing"),
        "expected": len(rows),
        "cpus": num(sum(float(n.get("cpus") or 0) for n in alive)),
        "nodes": rows,
        "extra": extra,
        "warnings": warnings,
        "error": error,
    }
    return record, {"missing_since": kept, "last": record}


def format_line(record: dict[str, Any]) -> str:
    """The log line of one check: time, alive/expected, CPUs, then each host."""
    parts = [record["time"], f"alive={record['alive']}/{record['expected']}", f"cpus={record['cpus']}"]
    for row in record["nodes"]:
        if row["state"] == "missing":
            parts.append(f"{row['name']}=missing({row['missing_s']}s)")
            continue
        text = f"{row['name']}={row['cpus']}"
        extras = [x for x in (row["state"] if row["state"] != "alive" else None, row.get("throttle"),
                              row.get("note")) if x]
        parts.append(text + (f"({', '.join(extras)})" if extras else ""))
    if record.get("extra"):
        parts.append("not-in-inventory=" + ",".join(record["extra"]))
    if record.get("error"):
        parts.append(f"ERROR {record['error']}")
    return " ".join(parts)


def log_lines(record: dict[str, Any]) -> list[str]:
    return [format_line(record)] + [f"{record['time']} WARN {w}" for w in record["warnings"]]


def status_text(state: dict[str, Any], now: float, interval_s: float) -> tuple[str, int]:
    """The status command's text and exit code from the kept state."""
    record = state.get("last")
    if not isinstance(record, dict):
        return "no health record yet (the timer has not run, or the state file is missing)", 2
    age = now - float(record.get("ts", 0))
    lines = [f"Bittrader cluster health: last check {record['time']} ({age:.0f} s ago; every {num(interval_s)} s)"]
    code = 0
    if age > 3 * interval_s + 30:
        lines.append(f"STALE: no check for {age:.0f} s; is the health timer running?")
        code = 2
    lines.append(f"{record['alive']}/{record['expected']} inventory hosts alive, {record['cpus']} CPUs")
    width = max([len(r["name"]) for r in record["nodes"]] + [4])
    for row in record["nodes"]:
        if row["state"] == "missing":
            detail = f"missing for {row['missing_s']} s"
        else:
            detail = f"{row['state']}, {row['cpus']} CPUs" + "".join(
                f", {x}" for x in (row.get("throttle"), row.get("note")) if x)
        lines.append(f"  {row['name'].ljust(width)}  {row['ip']:<15}  {detail}")
    if record.get("extra"):
        lines.append("alive but not in the head's inventory list: " + ", ".join(record["extra"]))
    if record.get("error"):
        lines.append(f"ERROR {record['error']}")
    lines += [f"WARN {w}" for w in record.get("warnings", [])]
    if code == 0 and (record["alive"] < record["expected"] or record.get("error")):
        code = 1
    return "\n".join(lines), code


read_state = read_json_object
write_state = write_json_atomic


def append_log(config: dict[str, Any], lines: list[str]) -> None:
    """Append lines to the size-rotated health log."""
    handler = rotating_handler(config["log_file"], int(config.get("log_max_bytes", 10 * 1024 * 1024)),
                               int(config.get("log_backups", 5)), fmt="%(message)s")
    logger = fresh_logger("bittrader.health")
    logger.addHandler(handler)
    try:
        for line in lines:
            logger.info(line)
    finally:
        logger.removeHandler(handler)
        handler.close()


def check(config: dict[str, Any], now: float | None = None,
          reader: Any = read_nodes) -> dict[str, Any]:
    """One check: read the cluster, append to the log, keep the state; returns the record."""
    now = time.time() if now is None else now
    state_path = Path(config["state_file"])
    nodes: list[dict[str, Any]] | None
    error = None
    try:
        nodes = reader(str(config["address"]), config.get("token_file"), float(config.get("timeout_s", 20)))
    except Exception as exc:  # noqa: BLE001 - any failure to read the cluster is recorded, not raised
        nodes, error = None, f"cannot read the cluster at {config['address']}: {type(exc).__name__}: {exc}"[:400]
    record, state = summarize(nodes, config["expected"], read_state(state_path), now,
                              float(config.get("missing_warn_s", 300)), error)
    append_log(config, log_lines(record))
    write_state(state_path, state)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bittrader-health", description=__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["check", "status", "nodes"])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--json", action="store_true", help="status: print the latest record as JSON")
    parser.add_argument("--quiet", action="store_true", help="check: write the log only, print nothing")
    parser.add_argument("--gone", metavar="IP", help="nodes: wait until no alive node has this address")
    parser.add_argument("--wait", type=float, default=0.0, metavar="S", help="nodes --gone: seconds to wait")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (OSError, ValueError) as exc:
        return config_error("bittrader-health", exc)
    if args.verb == "check":
        record = check(config)
        if not args.quiet:
            print("\n".join(log_lines(record)))
        return 0
    if args.verb == "nodes":
        def reader() -> list[dict[str, Any]]:
            return read_nodes(str(config["address"]), config.get("token_file"), float(config.get("timeout_s", 20)))

        gone = None
        try:
            if args.gone:
                gone, nodes = wait_gone(reader, args.gone, args.wait)
            else:
                nodes = reader()
        except Exception as exc:  # noqa: BLE001 - reported to the caller as one line
            print(f"bittrader-health: ERROR: cannot read the cluster: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"nodes": nodes, "gone": gone}, sort_keys=True))
        return 3 if gone is False else 0
    state = read_state(Path(config["state_file"]))
    text, code = status_text(state, time.time(), float(config.get("interval_s", 60)))
    print(json.dumps(state.get("last"), sort_keys=True) if args.json else text)
    return code


if __name__ == "__main__":
    sys.exit(main())
