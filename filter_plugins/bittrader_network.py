"""Jinja filters for Ray's ports and the firewall: which ports a node opens and to whom, the ufw rules
that follow, and the checks of the port, address-range and admin-source variables (roles/ray_firewall,
validate.yml). Unit-tested in tests/unit/test_firewall.py, test_filters.py and test_validation.py."""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# Ansible loads each filter file on its own: the shared rules are imported from this folder.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from bittrader_basics import is_ip, is_on  # noqa: E402

# bittrader_ports keys that only the head listens on, and those an administrator reaches too (the
# dashboard and job API, Ray Client, and the head's two Prometheus metrics endpoints).
HEAD_ONLY_PORTS = frozenset({"gcs", "client_server", "dashboard", "autoscaler_metrics", "dashboard_metrics"})
ADMIN_PORTS = frozenset({"dashboard", "client_server", "autoscaler_metrics", "dashboard_metrics"})


def port_list(ports: Mapping[str, int], role: str = "worker", metrics: object = True) -> list[int]:
    """Every single TCP port a node of the role listens on (the worker range excluded). metrics:
    bittrader_ray_metrics_enabled; off, Ray records no metrics and its export port does not listen."""
    skip = {"min_worker", "max_worker"} | (set() if is_on(metrics) else {"metrics_export"})
    return sorted(
        int(v) for k, v in ports.items() if k not in skip and (role == "head" or k not in HEAD_ONLY_PORTS)
    )


def firewall_ports(ports: Mapping[str, Any], role: str = "worker", metrics: object = True) -> dict[str, list[str]]:
    """Ray's TCP ports on a node of the role, split by who may reach them, as nftables/ufw port specs.

    "cluster": the ports only the cluster's nodes reach (GCS, raylet, object manager, agents, metrics and
    the worker processes' range); "admin": the ports an administrator reaches too (the head's dashboard and
    job API, the Ray Client server and the head's Prometheus metrics). metrics: as for port_list (no rule
    for an export port nothing listens on).
    """
    singles = port_list(ports, role, metrics)
    admin = sorted(int(ports[name]) for name in ADMIN_PORTS if role == "head" and name in ports)
    cluster = [str(p) for p in singles if p not in admin]
    cluster.append(f"{int(ports['min_worker'])}-{int(ports['max_worker'])}")
    return {"cluster": cluster, "admin": [str(p) for p in admin]}


def node_addresses(hostvars: Mapping[str, Any], hosts: Iterable[str]) -> dict[str, str]:
    """Each host's cluster address: the address it advertises (resolved this run), else bittrader_node_ip,
    else ansible_host when that is an IP address; "" when none is known (for example a host named by DNS
    that is not part of this run)."""
    result: dict[str, str] = {}
    for host in hosts:
        hv = hostvars[host] if host in hostvars else {}
        address = ""
        for key in ("bittrader_advertise_ip", "bittrader_node_ip", "ansible_host"):
            value = hv.get(key) if hasattr(hv, "get") else None
            if value and is_ip(value):
                address = str(value)
                break
        result[host] = address
    return result


def ufw_rules(ports: Mapping[str, list[str]], cluster: list[str], admin: list[str]) -> list[dict[str, str]]:
    """The ufw rules of a node, in order: allows per source and port, then a deny per port."""
    rules = [{"rule": "allow", "from_ip": src, "port": port} for src in cluster for port in ports["cluster"]]
    rules += [{"rule": "allow", "from_ip": src, "port": port} for src in admin for port in ports["admin"]]
    rules += [{"rule": "deny", "from_ip": "any", "port": port} for port in ports["cluster"] + ports["admin"]]
    return rules


_UFW_ADDED = re.compile(
    r"^ufw (?P<rule>allow|deny|reject)(?: from (?P<src>\S+))? to any port (?P<port>\S+) proto tcp"
    r" comment '(?P<c>[^']*)'$"
)


def ufw_stale(added: Iterable[str], wanted: Iterable[Mapping[str, str]], comment: str) -> list[dict[str, str]]:
    """Rules of `ufw show added` that carry our comment but are not wanted any more (to delete)."""
    want = {(r["rule"], r["from_ip"], r["port"].replace("-", ":")) for r in wanted}
    stale: list[dict[str, str]] = []
    for line in added:
        m = _UFW_ADDED.match(line.strip())
        if not m or m["c"] != comment:
            continue
        key = (m["rule"], m["src"] or "any", m["port"])
        if key not in want:
            stale.append({"rule": key[0], "from_ip": key[1], "port": key[2]})
    return stale


def port_problems(ports: Mapping[str, Any]) -> list[str]:
    """Out-of-range, duplicated or overlapping Ray ports, as messages that say what to change."""
    problems: list[str] = []
    values: dict[str, int] = {}
    for name, value in ports.items():
        try:
            port = int(value)
        except (TypeError, ValueError):
            problems.append(f"bittrader_ports.{name}={value!r} is not a number: give a TCP port in 1024-65535")
            continue
        if not 1024 <= port <= 65535:
            problems.append(
                f"bittrader_ports.{name}={port} is outside 1024-65535: choose a free unprivileged port in that range"
            )
        values[name] = port
    lo, hi = values.get("min_worker"), values.get("max_worker")
    if lo is not None and hi is not None:
        if hi < lo:
            problems.append(
                f"bittrader_ports.min_worker={lo} is above bittrader_ports.max_worker={hi}: swap them "
                "(the range is min_worker-max_worker)"
            )
        elif hi - lo < 15:
            problems.append(
                f"the worker port range {lo}-{hi} is too small (at least 16 ports, one per Ray worker process): "
                f"raise bittrader_ports.max_worker to {lo + 15} or more"
            )
    singles = {k: v for k, v in values.items() if k not in {"min_worker", "max_worker"}}
    seen: dict[int, str] = {}
    for name, port in singles.items():
        if port in seen:
            problems.append(
                f"bittrader_ports.{name} and bittrader_ports.{seen[port]} are both {port}: give each its own port"
            )
        seen[port] = name
        if lo is not None and hi is not None and lo <= port <= hi:
            problems.append(
                f"bittrader_ports.{name}={port} lies inside the worker port range {lo}-{hi}: move it out of the "
                "range, or move the range (min_worker/max_worker)"
            )
    return problems


def admin_source_problems(sources: object, variable: str = "bittrader_firewall_admin_sources") -> list[str]:
    """Why the extra sources allowed to the head's dashboard / job API and Ray Client ports cannot be used.

    Each must be an IPv4 address or range (the firewall's sets are IPv4). A private or Tailscale range
    may be of any size; a public one must be a single address (an office's fixed IP), never a range of
    the internet: whoever reaches those ports with the token runs code on every node.
    """
    if sources in (None, ""):
        return []
    if isinstance(sources, (str, bytes, Mapping)) or not isinstance(sources, Iterable):
        return [f"{variable} must be a list of IPv4 addresses or ranges, for example ['100.101.102.103'], got "
                f"{sources!r}"]
    problems: list[str] = []
    for item in sources:
        text = str(item).strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(
                f"{variable}: '{text}' is not an IPv4 address or range: write your admin machine's address, "
                "for example 100.101.102.103 (its `tailscale ip -4`) or 192.168.1.20"
            )
            continue
        if net.version != 4:
            problems.append(f"{variable}: {text} is IPv6; the firewall's admin sources are IPv4 addresses or ranges")
        elif net.prefixlen == 0 or (net.is_global and net.num_addresses > 1):
            problems.append(
                f"{variable}: {text} is a range of public internet addresses, to which the dashboard, job API and "
                "Ray Client would be opened: give your admin machine's own address (a single public IP is "
                "accepted), or use an SSH tunnel through the head (docs/clients.md)"
            )
    return problems


def cidr_problem(cidr: object, variable: str = "bittrader_cluster_cidr") -> str:
    """Why cidr cannot be the range allowed to reach Ray's ports, or ""."""
    text = str(cidr).strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return (
            f"{variable} '{text}' is not an address range: write NETWORK/PREFIX, for example 192.168.1.0/24 "
            "(your LAN) or 100.64.0.0/10 (Tailscale)"
        )
    if "/" not in text:
        return f"{variable} '{text}' has no prefix length: write NETWORK/PREFIX, for example {net.network_address}/24"
    too_wide = net.prefixlen == 0 or (net.is_global if net.version == 4 else net.is_global and net.prefixlen < 48)
    if too_wide:
        return (
            f"{variable} {text} includes public internet addresses, and every Ray port would be opened to them "
            "(Ray runs any job it receives): use your LAN's private range (for example 192.168.1.0/24) or "
            "Tailscale's 100.64.0.0/10"
        )
    return ""


def duplicate_addresses(addresses: Mapping[str, object], host: str | None = None) -> list[str]:
    """Messages naming hosts that advertise the same address (host -> address; "" is ignored); with
    host, only the clash that host is part of, told from its side."""
    by_ip: dict[str, list[str]] = {}
    for name, ip in addresses.items():
        if ip:
            by_ip.setdefault(str(ip), []).append(str(name))
    problems: list[str] = []
    for ip, names in by_ip.items():
        if len(names) < 2:
            continue
        if host is None:
            problems.append(
                f"{' and '.join(names)} advertise the same address {ip}: every node needs its own; fix "
                f"ansible_host or bittrader_node_ip of {', '.join(names[1:])}"
            )
        elif host in names:
            others = [n for n in names if n != host]
            problems.append(
                f"{host} advertises {ip}, the address of {' and '.join(others)} too: every node needs its own; "
                f"fix ansible_host or bittrader_node_ip of one of them"
            )
    return problems


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_port_list": port_list,
            "bittrader_port_problems": port_problems,
            "bittrader_cidr_problem": cidr_problem,
            "bittrader_duplicate_addresses": duplicate_addresses,
            "bittrader_firewall_ports": firewall_ports,
            "bittrader_node_addresses": node_addresses,
            "bittrader_ufw_rules": ufw_rules,
            "bittrader_ufw_stale": ufw_stale,
            "bittrader_admin_source_problems": admin_source_problems,
        }
