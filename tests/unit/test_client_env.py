"""Client environments: the env file the head role and playbooks/client.yml write (rendered by Ansible's
templating, then sourced by a real shell), the SSH tunnel it starts, and the validation of the
firewall's admin sources (the direct path for an admin machine)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "filter_plugins"))
sys.path.insert(0, str(Path(__file__).parent))

from ansible_render import render, render_value, role_defaults  # noqa: E402
from bittrader_network import admin_source_problems  # noqa: E402
from bittrader_validation import host_problems  # noqa: E402

TEMPLATE = "roles/head/templates/client.env.j2"
HEAD_BASE = "/home/bittrader/.bittrader_head"


def head_env() -> dict[str, Any]:
    """head_client_env as roles/head/tasks/client_env.yml builds it, rendered for a head."""
    task = yaml.safe_load((REPO / "roles/head/tasks/client_env.yml").read_text())[0]
    facts = {
        **role_defaults("cluster_facts"), "inventory_hostname": "head", "bittrader_user": "bittrader",
        "bittrader_base_dir": HEAD_BASE, "bittrader_head_address": "10.0.0.10:6379", "bittrader_head_ip": "10.0.0.10",
        "bittrader_token_file": f"{HEAD_BASE}/auth_token", "bittrader_venv_dir": f"{HEAD_BASE}/venv",
    }
    env: dict[str, Any] = render_value(task["vars"]["head_client_env"], facts)
    return env


def admin_env(access: str, tmp: Path, **over: Any) -> dict[str, Any]:
    """head_client_env as playbooks/client.yml's second play builds it on the admin machine."""
    plays = yaml.safe_load((REPO / "playbooks/client.yml").read_text())
    play = plays[1]
    task = next(t for t in play["tasks"] if t["name"] == "Write the client environment file")
    head = {"name": "head", "ip": "100.64.0.10", "dashboard_port": 8265, "client_port": 10001,
            "ray_version": "2.60.0", "python_version": "3.12.12", "ssh_host": "head.tail", "ssh_user": "me",
            "ssh_port": 2222, "ssh_key": "", **over}
    context: dict[str, Any] = {"groups": {"ray_head": ["head"]}, "hostvars": {"head": {"client__head": head}},
                               "client_access": access}
    pending = {k: v for k, v in play["vars"].items() if k != "client_access"}
    pending["client_dir"] = str(tmp / "client")
    for _ in range(len(pending) + 1):  # resolve the play's vars, each once those it uses are known
        for name, value in list(pending.items()):
            try:
                context[name] = render_value(value, context)
            except Exception:  # noqa: BLE001 - refers to a variable not resolved yet
                continue
            del pending[name]
    assert not pending, pending
    env: dict[str, Any] = render_value(task["vars"]["head_client_env"], context)
    return env


def write(env: dict[str, Any], path: Path) -> Path:
    path.write_text(render(TEMPLATE, {"head_client_env": env}))
    return path


def sourced(env_file: Path, script: str, path: str = "/usr/bin:/bin", **extra: str) -> str:
    """Run script in sh after sourcing env_file, with a clean environment."""
    environ = {"PATH": path, "HOME": str(env_file.parent), "RAY_AUTH_TOKEN": "stale-token", **extra}
    done = subprocess.run(["sh", "-c", f". {shlex.quote(str(env_file))} && {script}"], env=environ,
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_head_env_file_reaches_the_cluster_by_address(tmp_path: Path) -> None:
    env_file = write(head_env(), tmp_path / "client.env")
    out = sourced(env_file, 'echo "$RAY_ADDRESS|$RAY_API_SERVER_ADDRESS|$BITTRADER_RAY_CLIENT_ADDRESS|$RAY_AUTH_MODE|'
                            '$RAY_AUTH_TOKEN_PATH|${RAY_AUTH_TOKEN-unset}|$PATH"')
    assert out.strip().split("|") == [
        "10.0.0.10:6379", "http://10.0.0.10:8265", "ray://10.0.0.10:10001", "token", f"{HEAD_BASE}/auth_token",
        "unset", f"{HEAD_BASE}/venv/bin:/usr/bin:/bin",
    ]
    # Sourced twice, the venv is on PATH once.
    twice = sourced(env_file, f'. {shlex.quote(str(env_file))} && echo "$PATH"')
    assert twice.strip() == f"{HEAD_BASE}/venv/bin:/usr/bin:/bin"
    text = env_file.read_text()
    assert "bittrader_tunnel" not in text and "auto" not in text.split("export RAY_ADDRESS=")[1].splitlines()[0]


def test_admin_env_file_with_the_tunnel(tmp_path: Path) -> None:
    env = admin_env("tunnel", tmp_path)
    client = tmp_path / "client"
    client.mkdir()
    env_file = write(env, client / "client.env")
    out = sourced(env_file, 'echo "$RAY_ADDRESS|$RAY_API_SERVER_ADDRESS|$RAY_AUTH_TOKEN_PATH|$PATH"')
    assert out.strip().split("|") == ["ray://127.0.0.1:10001", "http://127.0.0.1:8265", f"{client}/auth_token",
                                      "/usr/bin:/bin"]
    # bittrader_tunnel runs ssh with both forwards to the head's cluster address (the dashboard and the
    # Ray Client server listen there, not on the head's loopback), extra options before the host.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "ssh").chmod(0o755)
    args = sourced(env_file, "bittrader_tunnel -o StrictHostKeyChecking=no", path=f"{fake}:/usr/bin:/bin").split("\n")
    assert args[:-1] == [
        "-f", "-N", "-M", "-S", f"{client}/tunnel.sock", "-o", "ExitOnForwardFailure=yes", "-o",
        "ServerAliveInterval=30", "-L", "127.0.0.1:8265:100.64.0.10:8265", "-L", "127.0.0.1:10001:100.64.0.10:10001",
        "-p", "2222", "-o", "StrictHostKeyChecking=no", "me@head.tail",
    ]
    stop = sourced(env_file, "bittrader_tunnel_stop", path=f"{fake}:/usr/bin:/bin").split("\n")
    assert stop[:-1] == ["-S", f"{client}/tunnel.sock", "-O", "exit", "me@head.tail"]


def test_admin_env_file_tunnel_ports_and_key(tmp_path: Path) -> None:
    env = admin_env("tunnel", tmp_path, ssh_user="", ssh_port=22, ssh_key="/keys/id_ed25519")
    assert env["tunnel"] == ["-L", "127.0.0.1:8265:100.64.0.10:8265", "-L", "127.0.0.1:10001:100.64.0.10:10001",
                             "-p", "22", "-i", "/keys/id_ed25519", "head.tail"]


def test_admin_env_file_direct(tmp_path: Path) -> None:
    env = admin_env("direct", tmp_path)
    assert env["tunnel"] == []
    assert (env["ray_address"], env["api_address"]) == ("ray://100.64.0.10:10001", "http://100.64.0.10:8265")
    text = render(TEMPLATE, {"head_client_env": env})
    assert "bittrader_tunnel" not in text


def test_the_env_file_quotes_what_it_sets(tmp_path: Path) -> None:
    env = {**head_env(), "token_path": "/Users/Jane Doe/.bittrader_head/auth_token; echo INJECTED",
           "path_dir": "/Users/Jane Doe/.bittrader_head/venv/bin"}
    env_file = write(env, tmp_path / "client.env")
    out = sourced(env_file, 'echo "$RAY_AUTH_TOKEN_PATH|$PATH"')
    assert out.strip() == ("/Users/Jane Doe/.bittrader_head/auth_token; echo INJECTED|"
                           "/Users/Jane Doe/.bittrader_head/venv/bin:/usr/bin:/bin")


@pytest.mark.parametrize("sources", [[], None, "", ["100.101.102.103"], ["192.168.1.0/24", "10.0.0.5/32"],
                                     ["100.64.0.0/10"], ["81.2.69.142"], ["81.2.69.142/32"]])
def test_admin_sources_accepted(sources: Any) -> None:
    assert admin_source_problems(sources) == []


@pytest.mark.parametrize(("sources", "words"), [
    ("100.101.102.103", "must be a list"),
    (["laptop.local"], "not an IPv4 address or range"),
    (["fd7a:115c:a1e0::1"], "is IPv6"),
    (["0.0.0.0/0"], "public internet"),
    (["81.2.69.0/24"], "public internet"),
    (["8.8.0.0/16", "10.0.0.1"], "public internet"),
])
def test_admin_sources_refused(sources: Any, words: str) -> None:
    problems = admin_source_problems(sources)
    assert len(problems) == 1 and words in problems[0], problems
    assert problems[0].startswith("bittrader_firewall_admin_sources")


def test_admin_sources_are_part_of_the_host_checks() -> None:
    settings = {"host": "head", "groups": ["ray_head"], "head_group": "ray_head", "worker_groups": [],
                "ray_version": "2.60.0", "python_version": "3.12.12", "network_mode": "lan",
                "cluster_cidr": "10.0.0.0/24", "ports": role_defaults("cluster_facts")["bittrader_ports"],
                "user": "bittrader", "extra_pip_packages": [], "firewall_admin_sources": ["0.0.0.0/0"]}
    assert any(p.startswith("bittrader_firewall_admin_sources: 0.0.0.0/0") for p in host_problems(settings, {}))
    settings["firewall_admin_sources"] = ["10.0.0.99"]
    assert not [p for p in host_problems(settings, {}) if "admin_sources" in p]


def test_validate_passes_the_admin_sources() -> None:
    text = (REPO / "roles/cluster_facts/tasks/validate.yml").read_text()
    assert "'firewall_admin_sources': bittrader_firewall_admin_sources" in text
    assert os.path.exists(REPO / "playbooks/client.yml")
