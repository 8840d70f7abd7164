"""Bringing Ray's scheduler to the wanted CPU count: num_cpus_file, live resize through the GCS, drain."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..common import run_command, write_atomic
from .sources import is_ray_start_block, owned

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..common import Runner
    from .config import Config

DRAIN_REASON = "DRAIN_NODE_REASON_PREEMPTION"
HELPER_MARKER = "BITTRADER_THROTTLE_JSON:"
RAY_RETRY_S = (15.0, 30.0, 60.0, 120.0, 300.0)
# --------------------------------------------------------------------------------------------------
# Ray's scheduler: num_cpus_file, live resize, drain
# --------------------------------------------------------------------------------------------------

# Run by the venv's Python (`python -c RAY_HELPER ARGS_JSON`), never imported here: it reads the alive
# nodes at node_ip from the GCS and, with "resize", changes the worker raylet's CPU total in place.
RAY_HELPER = r"""
import json, sys
args = json.loads(sys.argv[1])
out = {"nodes": [], "resized": None, "error": None}
try:
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest
    client = GcsClient(address=args["address"])
    selector = GetAllNodeInfoRequest.NodeSelector(node_ip_address=args["node_ip"])
    infos = client.get_all_node_info(
        timeout=args["timeout"], node_selectors=[selector], state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
    for info in infos.values():
        out["nodes"].append({"node_id": info.node_id.hex(), "is_head": bool(info.is_head_node),
                             "cpus": float(info.resources_total.get("CPU", 0.0))})
    workers = [n for n in out["nodes"] if not n["is_head"]]
    if args.get("resize") is not None and len(workers) == 1:
        total = client.resize_raylet_resource_instances(
            workers[0]["node_id"], {"CPU": float(args["resize"])}, timeout_s=args["timeout"])
        out["resized"] = {"node_id": workers[0]["node_id"], "cpus": float(total.get("CPU", 0.0))}
except Exception as exc:
    out["error"] = (type(exc).__name__ + ": " + str(exc))[:300]
print("BITTRADER_THROTTLE_JSON:" + json.dumps(out))
"""


def parse_helper_output(output: str) -> dict[str, Any] | None:
    for line in output.splitlines():
        if line.startswith(HELPER_MARKER):
            try:
                data = json.loads(line[len(HELPER_MARKER) :])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None



def read_num_cpus_file(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(32).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class RaySync:
    """Brings Ray's scheduler to the wanted CPU count. attempt() is one synchronous try (tested with a
    fake runner); the daemon calls it from a background thread, so a slow GCS never delays the OS limit."""

    def __init__(
        self,
        config: Config,
        runner: Runner = run_command,
        clock: Callable[[], float] = time.time,
        terminate_ray_start: Callable[[], list[int]] | None = None,
    ) -> None:
        self._config = config
        self._runner = runner
        self._clock = clock
        self.terminate_ray_start = terminate_ray_start
        self._lock = threading.Lock()
        self.desired: int | None = None
        self.reason = ""
        self.pending = False
        self.next_try = math.inf
        self.retries = 0
        self.drained_node: str | None = None
        self.last_result = ""
        self._generation = 0
        ray = config.ray
        scripts = "Scripts" if config.platform == "windows" else "bin"
        exe = ".exe" if config.platform == "windows" else ""
        venv = ray.venv or ""
        self.ray_bin = ray.ray_bin or os.path.join(venv, scripts, "ray" + exe)
        self.python_bin = ray.python_bin or os.path.join(venv, scripts, "python" + exe)

    @property
    def enabled(self) -> bool:
        return self._config.policy.live_resize or self._config.policy.drain

    def env(self) -> dict[str, str]:
        """Environment of the Ray subprocesses: the token by path only, never by value."""
        env = dict(os.environ)
        env.update(self._config.ray.env)
        if self._config.ray.token_path:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = self._config.ray.token_path
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        return env

    def request(self, cpus: int, reason: str) -> str:
        """Record the wanted count: num_cpus_file at once, the GCS at the next attempt()."""
        path = self._config.paths.num_cpus_file
        try:
            write_atomic(path, f"{cpus}\n")
            text = f"num_cpus_file={cpus}"
        except OSError as exc:
            text = f"cannot write {path}: {exc.strerror or exc}"
        with self._lock:
            self.desired = cpus
            self.reason = reason
            self._generation += 1
            if self.enabled:
                self.pending = True
                self.retries = 0
                self.next_try = self._clock()
        return text + ("; Ray update queued" if self.enabled else "")

    def due(self, now: float) -> bool:
        with self._lock:
            return self.pending and now >= self.next_try

    def helper_argv(self, resize: int | None) -> list[str]:
        args = {"address": self._config.ray.head_address, "node_ip": self._config.ray.node_ip, "timeout": 20}
        if resize is not None:
            args["resize"] = resize
        return [self.python_bin, "-c", RAY_HELPER, json.dumps(args, sort_keys=True)]

    def drain_argv(self, node_id: str, reason: str) -> list[str]:
        return [
            self.ray_bin,
            "drain-node",
            "--address",
            str(self._config.ray.head_address),
            "--node-id",
            node_id,
            "--reason",
            DRAIN_REASON,
            "--reason-message",
            f"bittrader throttle: {reason}"[:500],
            "--deadline-remaining-seconds",
            str(self._config.policy.drain_deadline_s),
        ]

    def attempt(self) -> str:
        """One try to make Ray agree with `desired`; returns a one-line result ("" when nothing is due)."""
        now = self._clock()
        with self._lock:
            if self.desired is None or not self.pending:
                return ""
            desired, reason, generation = self.desired, self.reason, self._generation
        done, text, reset = self._try(desired, reason)
        with self._lock:
            if reset:
                self.retries = 0
            if generation != self._generation:
                self.next_try = now  # a newer request came meanwhile: go again at once
            elif done:
                self.pending = False
            else:
                delay = RAY_RETRY_S[min(self.retries, len(RAY_RETRY_S) - 1)]
                self.retries += 1
                self.next_try = now + delay
                text += f"; retry in {delay:.0f} s"
            self.last_result = text
        return text

    def _try(self, desired: int, reason: str) -> tuple[bool, str, bool]:
        """(converged, result, restart the back-off)."""
        policy = self._config.policy
        node_ip = self._config.ray.node_ip
        resize = desired if policy.live_resize and self.drained_node is None else None
        result = self._runner(self.helper_argv(resize), self.env(), 60.0)
        data = parse_helper_output(result.stdout)
        if data is None or data.get("error"):
            problem = data["error"] if data and data.get("error") else result.brief()
            return False, f"ray: cannot reach the GCS ({problem})", False
        workers = [n for n in data.get("nodes", []) if not n.get("is_head")]
        if self.drained_node is not None:
            if any(n.get("node_id") == self.drained_node for n in workers):
                return False, f"ray: node {self.drained_node[:12]} still draining", False
            gone, self.drained_node = self.drained_node, None
            restarted = ""
            if policy.restart_after_drain and self.terminate_ray_start is not None:
                pids = self.terminate_ray_start()
                if pids:
                    listed = ", ".join(str(pid) for pid in pids)
                    restarted = f"; ended `ray start --block` (pid {listed}) so its supervisor restarts Ray"
            return False, f"ray: drained node {gone[:12]} has left{restarted}", True
        if not workers:
            return False, f"ray: no worker node at {node_ip} yet (its next start uses {desired} CPUs)", False
        if len(workers) > 1:
            return False, f"ray: {len(workers)} worker nodes at {node_ip}; changing none", False
        node_id = str(workers[0]["node_id"])
        resized = data.get("resized")
        cpus = float(resized["cpus"]) if isinstance(resized, dict) else float(workers[0].get("cpus", 0.0))
        if round(cpus) == desired:
            how = "live resize" if isinstance(resized, dict) else "as started"
            return True, f"ray: node {node_id[:12]} has {desired} CPUs ({how})", False
        if not policy.drain:
            return False, f"ray: node {node_id[:12]} busy at {cpus:g} CPUs, wants {desired}", False
        drained = self._runner(self.drain_argv(node_id, reason), self.env(), 120.0)
        if not drained.ok:
            return False, f"ray: drain of node {node_id[:12]} failed ({drained.brief()})", False
        self.drained_node = node_id
        text = (
            f"ray: node {node_id[:12]} has {cpus:g} CPUs; drain requested (deadline {policy.drain_deadline_s} s), "
            f"it restarts with {desired}"
        )
        return False, text, True


def terminate_ray_start(psutil_mod: Any, ray_bin: str, node_ip: str | None, user: str | None = None) -> list[int]:
    """End the `ray start --block` process of this node (its raylet has exited after a drain): only this
    venv's `ray`, started for this node's address, by this account (containers on the same machine
    show their processes too)."""
    ended: list[int] = []
    for proc in psutil_mod.process_iter(["username"]):
        try:
            if proc.pid == os.getpid() or not owned(proc, proc.info.get("username"), user):
                continue
            if is_ray_start_block(proc.cmdline(), ray_bin, node_ip):
                proc.terminate()
                ended.append(proc.pid)
        except (psutil_mod.NoSuchProcess, psutil_mod.AccessDenied, psutil_mod.ZombieProcess):
            continue
    return ended


