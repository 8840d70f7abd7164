"""Bittrader smart CPU throttle: gives Ray few CPUs while a worker's owner uses the machine, all of
them when the machine is idle, and pauses or reduces Ray on battery.

    bittrader-throttle --config CONFIG.json            watch and throttle (the service's command)
    bittrader-throttle --config CONFIG.json --once     evaluate once, print the decision (changes nothing)
    bittrader-throttle --config CONFIG.json --status   print the last status line
    bittrader-throttle --config CONFIG.json --check-config   validate the configuration
    bittrader-throttle --config CONFIG.json --reset    give Ray its CPUs back when no throttle runs

Standard library and psutil, never Ray (so the watcher stays small); installed with the node agent's
wheel (console script bittrader-throttle, or `python -m bittrader_node_agent.throttle`). By concern:
config (the schema, also imported by the Ansible module ray_throttle_daemon and the controller's
filters), policy (pure decisions), sources (input, battery, load per OS), limiters (CPU limits per
OS), raysync (Ray's scheduler), loop (the daemon), cli (the command line and --reset).

This file imports nothing: Ansible packs it with config.py for the module.

Decisions (decide()):
  * ACTIVE while someone uses the machine: the last input is younger than idle_threshold_s, the
    activity is unknown, or (load_guard) the CPU load of everything but Ray reached load_guard percent
    less than idle_threshold_s ago. Ray gets cpus_active.
  * IDLE otherwise (a headless machine is always idle). Ray gets cpus_idle.
  * BATTERY on battery power: battery_policy "pause" gives Ray 0 CPUs, an integer N gives it at most
    N, "ignore" changes nothing; below battery_min_percent (when set) Ray is paused whatever the
    policy.
  * Hysteresis: a change that gives Ray fewer CPUs (the owner came back, the laptop was unplugged) is
    applied at once; a change that gives Ray more CPUs waits until hysteresis_s have passed since the
    previous change. Going to ACTIVE is therefore always immediate.

Applying a change:
  1. At once, an operating-system limit on the Ray processes: Linux `sudo -n systemctl set-property
     --runtime UNIT CPUQuota=N*100%` (0 CPUs: pause_quota_percent, never 0, so nothing is killed);
     macOS `taskpolicy -b|-B -p PID` on the Ray processes (renice cannot be undone by a normal user);
     Windows priority class and CPU affinity of the Ray processes.
  2. Ray's scheduler is told, in the background: the CPU count is written to num_cpus_file (the node
     supervisor uses it at the next `ray start`); with live_resize the raylet's CPU total is changed in
     place through the GCS (what KubeRay's in-place resize uses in Ray 2.60; a busy node only shrinks
     down to the CPUs in use); when the node still has more CPUs than wanted and drain is on, the node
     is drained (`ray drain-node ... --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds
     S`): running tasks finish, nothing new is placed there, the raylet exits when idle. `ray start
     --block` does not exit when its raylet exits cleanly, so with restart_after_drain the throttle
     then ends that `ray start` process and the supervisor starts Ray again with the new count.

On SIGTERM/SIGINT the daemon lifts its operating-system limit (Ray is never left throttled by a
daemon that is not running), writes a final "stopped" status and exits 0. num_cpus_file is kept.
A daemon ended without a signal (Windows ends it at sign-out, and Task Scheduler when its task stops)
cannot do that: `--reset`, run by the system at boot, after a sign-out and periodically, does it when
no daemon runs for this configuration: normal priority and every CPU for Ray's processes, cpus_idle in
num_cpus_file and in Ray's scheduler (as when the machine goes idle), then a "reset" status.
The cluster's auth token is never read: Ray's subprocesses get RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH.
"""
