"""A client of the Bittrader cluster: check the environment, then connect, and say what is missing
before Ray does.

Ray Client (``ray://HEAD:10001``) without the cluster's token does not say so: it waits and fails after
about 31 s with ``ConnectionError: ray client connection timeout`` (only the head's log tells why:
``Authentication required but no authorization header provided``). A driver on a node without the token
fails at once with ``InvalidAuthToken``, ``ray job submit`` with ``Unauthorized``. The client environment
file (``~/.bittrader_head/client.env`` on the head, ``playbooks/client.yml`` on the admin machine) sets
everything; this checks it::

    . ~/.bittrader/HEAD/client.env
    python -m bittrader_workload.client            # check, connect, print the cluster's nodes
    python -m bittrader_workload.client --no-connect

Exit codes: 0 connected (or checked), 3 no usable token, 4 the address does not answer, 1 Ray failed.
Drivers call :func:`connect` (or :func:`auth_problem` before their own ``ray.init``).
"""

from __future__ import annotations

import argparse
import os
import socket
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

EXIT_NO_TOKEN = 3
EXIT_UNREACHABLE = 4
ENV_FILE_HINT = ("source the cluster's client environment file: ~/.bittrader_head/client.env on the head, or "
                 "the one playbooks/client.yml writes on the admin machine (docs/clients.md)")


def effective_address(address: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The address ray.init() will use: the argument, else RAY_ADDRESS when the argument is empty or
    "auto" (as Ray does), else "auto" (a local cluster found through /tmp/ray)."""
    env = os.environ if environ is None else environ
    if address and address != "auto":
        return address
    return env.get("RAY_ADDRESS") or "auto"


def token_source(environ: Mapping[str, str] | None = None, home: str | None = None) -> tuple[str, str]:
    """(where the token comes from, problem or ""), in Ray's order: RAY_AUTH_TOKEN, the file named by
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token. Never returns the token."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN", ""
    named = env.get("RAY_AUTH_TOKEN_PATH", "").strip()
    path = Path(os.path.expanduser(named)) if named else Path(home or os.path.expanduser("~")) / ".ray" / "auth_token"
    where = f"RAY_AUTH_TOKEN_PATH {path}" if named else str(path)
    try:
        mode = path.stat().st_mode
        with path.open("rb") as handle:
            empty = not handle.read(4096).strip()
    except FileNotFoundError:
        return where, (f"the token file {path} does not exist" if named else
                       "no token: RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are unset and ~/.ray/auth_token does not "
                       "exist")
    except OSError as exc:
        return where, f"cannot read the token file {path}: {exc.strerror or exc}"
    if empty:
        return where, f"the token file {path} is empty"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return where, f"the token file {path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
    return where, ""


def auth_problem(environ: Mapping[str, str] | None = None, home: str | None = None) -> str:
    """Why a client of this cluster would be refused (or, with Ray Client, time out), or "" when the
    token settings are complete."""
    env = os.environ if environ is None else environ
    problems = []
    if env.get("RAY_AUTH_MODE", "").strip().lower() != "token":
        problems.append("RAY_AUTH_MODE is not 'token'")
    problem = token_source(env, home)[1]
    if problem:
        problems.append(problem)
    if not problems:
        return ""
    return ("the cluster requires its auth token, and " + "; ".join(problems) + " (without it Ray Client waits "
            f"about 30 s and fails with 'ray client connection timeout'): {ENV_FILE_HINT}")


def endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a ray:// or http(s):// address, or of HOST:PORT; None for "auto" and others."""
    if address in ("", "auto", "local"):
        return None
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    default = {"ray": 10001, "http": 80, "https": 443}.get(parts.scheme)
    port = port or default
    return (parts.hostname, port) if port else None


def answers(host: str, port: int, timeout: float = 3.0) -> str:
    """"" when something accepts a TCP connection at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except TimeoutError:
        return "no answer (dropped by a firewall, or no route)"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def connect(address: str | None = None, **init_kwargs: Any) -> Any:
    """ray.init() for this cluster, after checking the token settings: raises RuntimeError naming what
    is missing instead of Ray Client's silent timeout. Returns ray.init's context."""
    problem = auth_problem()
    if problem:
        raise RuntimeError(problem)
    import ray

    return ray.init(address=effective_address(address), **init_kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bittrader_workload.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, as ray.init() uses it)")
    parser.add_argument("--no-connect", action="store_true", help="only check the environment and the ports")
    args = parser.parse_args(argv)
    address = effective_address(args.address)
    api = os.environ.get("RAY_API_SERVER_ADDRESS", "") or "(unset: ray job falls back to RAY_ADDRESS)"
    where, _ = token_source()
    print(f"ray.init() address: {address}\njob API:            {api}\ntoken:              {where}", flush=True)
    problem = auth_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_NO_TOKEN
    for label, target in (("ray.init()", address), ("job API", os.environ.get("RAY_API_SERVER_ADDRESS", ""))):
        point = endpoint(target)
        if point is None:
            continue
        why = answers(*point)
        if why:
            print(f"error: {label} address {point[0]}:{point[1]}: {why}. From the admin machine, start the SSH "
                  "tunnel first (bittrader_tunnel), or allow this machine in bittrader_firewall_admin_sources",
                  file=sys.stderr)
            return EXIT_UNREACHABLE
    if args.no_connect:
        print("ok: token settings complete, addresses answer")
        return 0
    try:
        import ray

        connect(args.address, logging_level="ERROR")
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        print(f"connected: {len(nodes)} alive nodes, {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs")
        for node in sorted(nodes, key=lambda n: str(n.get("NodeManagerAddress"))):
            res = node.get("Resources") or {}
            print(f"  {node.get('NodeManagerAddress')}  {node.get('NodeManagerHostname')}  "
                  f"cpus {res.get('CPU', 0):g}  gpus {res.get('GPU', 0):g}")
        ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - the user sees Ray's own message
        print(f"error: Ray could not connect to {address}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
