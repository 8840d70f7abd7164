"""The throttle's configuration and decisions: pure logic with a fake clock (no processes, no Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from agent_throttle import bt

REPO = Path(__file__).resolve().parents[2]

ACTIVE, IDLE, BATTERY = bt.Mode.ACTIVE, bt.Mode.IDLE, bt.Mode.BATTERY


def raw_config(tmp: Path | None = None, platform: str = "linux", **policy) -> dict:
    base = tmp or Path("/srv/node")
    return {
        "version": 1,
        "platform": platform,
        "policy": {"cpus_active": 2, "cpus_idle": 8, "idle_threshold_s": 300, "hysteresis_s": 60, **policy},
        "mechanism": {},
        "paths": {
            "log_file": str(base / "logs" / "throttle.log"),
            "status_file": str(base / "run" / "throttle_status.json"),
            "num_cpus_file": str(base / "run" / "num_cpus"),
        },
        "ray": {"venv": str(base / "venv"), "head_address": "100.64.0.1:6379", "node_ip": "100.64.0.2"},
    }


def make(**policy) -> bt.Config:
    return bt.config_from_dict(raw_config(**policy))


def obs(idle, on_battery=None, percent=None, load=None) -> bt.Observation:
    return bt.Observation(idle_seconds=idle, on_battery=on_battery, battery_percent=percent, cpu_load=load)


class Clock:
    """A fake clock the tests move by hand."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Walker:
    """Feeds observations through decide() with a fake clock, like the daemon's loop."""

    def __init__(self, config: bt.Config, cpus: int = 8) -> None:
        self.config = config
        self.clock = Clock()
        self.state = bt.State(mode=None, cpus=cpus)

    def see(self, observation: bt.Observation, after: float = 2.0) -> bt.Decision:
        now = self.clock.advance(after)
        decision = bt.decide(self.state, observation, self.config, now)
        self.state = decision.next_state
        return decision


# -- transitions ------------------------------------------------------------------------------------


def test_first_decision_always_applies_even_without_a_change():
    walk = Walker(make(), cpus=8)
    decision = walk.see(obs(math.inf))
    assert decision.changed and not decision.held
    assert (decision.state, decision.cpus_before, decision.cpus_after) == (IDLE, 8, 8)
    assert decision.reason == "no user session (headless)"


def test_startup_with_the_owner_present_throttles_at_once():
    walk = Walker(make(), cpus=8)
    decision = walk.see(obs(3.0))
    assert (decision.state, decision.cpus_before, decision.cpus_after, decision.changed) == (ACTIVE, 8, 2, True)
    assert decision.reason == "input 3 s ago"


def test_idle_to_active_is_immediate_even_right_after_a_change():
    walk = Walker(make(hysteresis_s=600))
    assert walk.see(obs(math.inf)).state == IDLE
    decision = walk.see(obs(0.5), after=1.0)  # 1 s after the last change, hysteresis is 600 s
    assert decision.changed and (decision.state, decision.cpus_before, decision.cpus_after) == (ACTIVE, 8, 2)


def test_active_to_idle_needs_the_idle_threshold():
    walk = Walker(make(hysteresis_s=0))
    walk.see(obs(0.0))
    held = walk.see(obs(299.0))
    assert not held.changed and held.state == ACTIVE and held.cpus_after == 2
    decision = walk.see(obs(300.0))
    assert decision.changed and (decision.state, decision.cpus_before, decision.cpus_after) == (IDLE, 2, 8)
    assert decision.reason == "no input for 300 s"


def test_more_cpus_wait_for_the_hysteresis():
    walk = Walker(make(hysteresis_s=60, idle_threshold_s=10))
    walk.see(obs(0.0))  # active at t0
    held = walk.see(obs(30.0), after=30.0)  # idle enough, but only 30 s since the change
    assert held.held and not held.changed
    assert held.state == ACTIVE and held.cpus_after == 2
    assert "wants idle (8 CPUs) in 30 s (hysteresis)" in held.reason
    still = walk.see(obs(59.0), after=29.0)
    assert still.held
    decision = walk.see(obs(60.0), after=1.0)
    assert decision.changed and decision.state == IDLE and decision.cpus_after == 8


def test_no_change_is_reported_unchanged():
    walk = Walker(make())
    walk.see(obs(math.inf))
    decision = walk.see(obs(math.inf))
    assert not decision.changed and not decision.held
    assert decision.cpus_before == decision.cpus_after == 8


def test_unknown_activity_counts_as_active():
    walk = Walker(make())
    decision = walk.see(obs(None))
    assert decision.state == ACTIVE and decision.cpus_after == 2
    assert "unknown" in decision.reason


def test_cpus_active_may_be_zero():
    walk = Walker(make(cpus_active=0))
    assert walk.see(obs(1.0)).cpus_after == 0


def test_equal_counts_change_only_the_label():
    walk = Walker(make(cpus_active=8, cpus_idle=8, hysteresis_s=600))
    walk.see(obs(math.inf))
    decision = walk.see(obs(1.0), after=1.0)
    assert decision.changed and decision.state == ACTIVE and decision.cpus_before == decision.cpus_after == 8


def test_a_day_on_a_laptop():
    """A sequence with the fake clock: every state and both directions of every transition."""
    walk = Walker(make(battery_policy=1, hysteresis_s=60, idle_threshold_s=300), cpus=8)
    steps = [
        # (seconds later, observation, expected state, expected cpus, changed)
        (1, obs(math.inf, False, 90), IDLE, 8, True),  # boot, nobody there
        (2, obs(0.0, False, 90), ACTIVE, 2, True),  # owner types: at once
        (100, obs(100.0, False, 90), ACTIVE, 2, False),  # reading, not idle yet
        (200, obs(300.0, False, 90), IDLE, 8, True),  # 300 s without input
        (5, obs(305.0, True, 89), BATTERY, 1, True),  # unplugged: at once
        (5, obs(310.0, False, 89), BATTERY, 1, False),  # plugged back: more CPUs wait
        (60, obs(370.0, False, 89), IDLE, 8, True),  # hysteresis over
        (2, obs(0.0, True, 88), BATTERY, 1, True),  # owner back on battery: 1 < 2
    ]
    for after, observation, state, cpus, changed in steps:
        decision = walk.see(observation, after=after)
        assert (decision.state, decision.cpus_after, decision.changed) == (state, cpus, changed), (
            after,
            observation,
            decision,
        )


# -- battery ----------------------------------------------------------------------------------------


def test_battery_pause_is_immediate_and_zero():
    walk = Walker(make(battery_policy="pause", hysteresis_s=600))
    walk.see(obs(math.inf, on_battery=False, percent=80))
    decision = walk.see(obs(math.inf, on_battery=True, percent=80), after=1.0)
    assert decision.changed and (decision.state, decision.cpus_after) == (BATTERY, 0)
    assert decision.reason.startswith("on battery at 80%: paused")


def test_battery_count_caps_both_states():
    walk = Walker(make(battery_policy=1))
    assert (walk.see(obs(math.inf, True, 50)).state, walk.state.cpus) == (BATTERY, 1)
    decision = walk.see(obs(0.0, True, 50))
    assert (decision.state, decision.cpus_after, decision.changed) == (BATTERY, 1, False)


def test_battery_count_never_raises_the_count():
    walk = Walker(make(battery_policy=4))
    decision = walk.see(obs(0.0, True, 50))
    assert (decision.state, decision.cpus_after) == (ACTIVE, 2)
    decision = walk.see(obs(math.inf, True, 50), after=120)
    assert (decision.state, decision.cpus_after) == (BATTERY, 4)
    assert "at most 4 CPUs" in decision.reason


def test_battery_ignore():
    walk = Walker(make(battery_policy="ignore"))
    decision = walk.see(obs(math.inf, True, 10))
    assert (decision.state, decision.cpus_after) == (IDLE, 8)


def test_battery_min_percent_pauses_whatever_the_policy():
    walk = Walker(make(battery_policy="ignore", battery_min_percent=20))
    assert walk.see(obs(math.inf, True, 50)).state == IDLE
    decision = walk.see(obs(math.inf, True, 19), after=1.0)
    assert (decision.state, decision.cpus_after, decision.changed) == (BATTERY, 0, True)
    assert "< 20%" in decision.reason


def test_battery_min_percent_without_a_reading_does_not_pause():
    walk = Walker(make(battery_policy="ignore", battery_min_percent=20))
    assert walk.see(obs(math.inf, True, None)).state == IDLE


def test_no_battery_means_mains_power():
    walk = Walker(make(battery_policy="pause"))
    assert walk.see(obs(math.inf, None, None)).state == IDLE


def test_leaving_battery_waits_for_the_hysteresis():
    walk = Walker(make(battery_policy="pause", hysteresis_s=60))
    walk.see(obs(math.inf, True, 50))
    held = walk.see(obs(math.inf, False, 50), after=10)
    assert held.held and held.state == BATTERY and held.cpus_after == 0
    assert walk.see(obs(math.inf, False, 50), after=50).state == IDLE


# -- load guard -------------------------------------------------------------------------------------


def test_load_guard_counts_as_activity_until_the_threshold_passes():
    walk = Walker(make(load_guard=60, idle_threshold_s=300, hysteresis_s=0))
    walk.see(obs(math.inf, load=5))
    busy = walk.see(obs(math.inf, load=75))
    assert (busy.state, busy.cpus_after, busy.changed) == (ACTIVE, 2, True)
    assert busy.reason == "non-Ray CPU load 75% >= load_guard 60%"
    calm = walk.see(obs(math.inf, load=5), after=100)
    assert calm.state == ACTIVE and not calm.changed
    assert "above load_guard 100 s ago" in calm.reason
    idle = walk.see(obs(math.inf, load=5), after=200)
    assert (idle.state, idle.cpus_after, idle.changed) == (IDLE, 8, True)


def test_load_is_ignored_without_a_guard():
    walk = Walker(make())
    assert walk.see(obs(math.inf, load=100)).state == IDLE


def test_load_guard_with_no_measure_yet():
    walk = Walker(make(load_guard=50))
    assert walk.see(obs(math.inf, load=None)).state == IDLE


# -- configuration ----------------------------------------------------------------------------------


def test_defaults_fill_in():
    raw = raw_config()
    raw["policy"] = {"cpus_idle": 6}
    config = bt.config_from_dict(raw)
    p = config.policy
    assert (p.cpus_active, p.cpus_idle, p.idle_threshold_s, p.battery_policy) == (2, 6, 300.0, "pause")
    assert (p.hysteresis_s, p.poll_interval_s, p.activity_source, p.drain, p.live_resize) == (
        60.0,
        2.0,
        "auto",
        True,
        True,
    )
    assert config.mechanism.pause_quota_percent == 5
    assert config.ray.unit == "bittrader-ray-worker.service"
    assert (config.activity_kind, config.mechanism_kind) == ("logind", "systemd")


def test_cpus_idle_defaults_to_every_cpu():
    raw = raw_config()
    del raw["policy"]["cpus_idle"]
    raw["policy"]["cpus_active"] = 1
    assert bt.config_from_dict(raw, cpu_count=12).policy.cpus_idle == 12


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpus_active": 9}, "policy.cpus_active (9) must not exceed policy.cpus_idle (8)"),
        ({"cpus_active": -1}, "policy.cpus_active must be a whole number of CPUs >= 0 (got -1)"),
        ({"cpus_active": True}, "policy.cpus_active must be a whole number of CPUs >= 0 (got True)"),
        ({"cpus_idle": 0}, "policy.cpus_idle must be a whole number of CPUs >= 1 (got 0)"),
        ({"cpus_idle": "8"}, "policy.cpus_idle must be a whole number of CPUs >= 1 (got '8')"),
        ({"idle_threshold_s": 0}, "policy.idle_threshold_s must be a number of seconds > 0 (got 0)"),
        ({"battery_policy": "sometimes"}, "policy.battery_policy must be 'pause', 'ignore' or a whole number"),
        ({"battery_policy": -2}, "policy.battery_policy must be 'pause', 'ignore' or a whole number"),
        ({"battery_min_percent": 120}, "policy.battery_min_percent must be empty or a percentage in 1..100"),
        ({"hysteresis_s": -1}, "policy.hysteresis_s must be a number of seconds >= 0 (got -1)"),
        ({"load_guard": 0}, "policy.load_guard must be empty or a CPU load percentage in (0, 100] (got 0)"),
        (
            {"poll_interval_s": 10},
            "policy.poll_interval_s must be a number of seconds in 0.1..5 (the daemon must react",
        ),
        ({"activity_source": "mouse"}, "policy.activity_source must be one of auto, logind, headless, ioreg"),
        ({"activity_source": "ioreg"}, "policy.activity_source 'ioreg' only works on darwin (platform is linux)"),
        ({"activity_source": "file"}, "policy.activity_file must be an absolute path when activity_source is 'file'"),
        ({"activity_file": "/tmp/a"}, "policy.activity_file is only used with activity_source 'file'"),
        ({"drain": "yes"}, "policy.drain must be true or false (got 'yes')"),
        ({"drain_deadline_s": 1.5}, "policy.drain_deadline_s must be a whole number of seconds >= 0 (got 1.5)"),
        ({"cpus_actve": 2}, "unknown key policy.cpus_actve"),
    ],
)
def test_bad_policy_messages(changes, message):
    raw = raw_config(**changes)
    errors = bt.validate(raw)
    assert any(message in e for e in errors), errors
    with pytest.raises(ValueError, match="policy"):
        bt.config_from_dict(raw)


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        ("mechanism", {"pause_quota_percent": 0}, "mechanism.pause_quota_percent must be a whole percentage in 1..100"),
        ("mechanism", {"kind": "taskpolicy"}, "mechanism.kind 'taskpolicy' only works on darwin (platform is linux)"),
        ("mechanism", {"systemctl": "systemctl"}, "mechanism.systemctl must be an absolute path"),
        ("paths", {"log_file": "throttle.log"}, "paths.log_file must be an absolute path (got 'throttle.log')"),
        ("ray", {"head_address": "100.64.0.1"}, "ray.head_address must be the head's HOST:PORT"),
        ("ray", {"node_ip": None}, "ray.node_ip must be the address this node advertises"),
        ("ray", {"unit": "ray"}, "ray.unit must be the Ray systemd unit"),
        ("ray", {"env": {"RAY_AUTH_TOKEN": "x"}}, "ray.env must not carry RAY_AUTH_TOKEN"),
    ],
)
def test_bad_section_messages(section, changes, message):
    raw = raw_config()
    raw[section] = {**raw[section], **changes}
    errors = bt.validate(raw)
    assert any(message in e for e in errors), errors


def test_top_level_problems():
    errors = bt.validate({"platform": "beos", "policy": [], "extra": 1, "version": 2})
    assert "unknown key 'extra' (expected version, platform, policy, mechanism, paths, ray)" in errors
    assert "version must be 1 (got 2)" in errors
    assert "platform must be one of linux, darwin, windows (got 'beos')" in errors
    assert "policy must be an object (got [])" in errors
    assert bt.validate([]) == ["the configuration must be a JSON object"]  # type: ignore[arg-type]


def test_ray_is_optional_without_resize_or_drain():
    raw = raw_config(live_resize=False, drain=False)
    raw["ray"] = {}
    assert bt.validate(raw) == []


def test_load_config(tmp_path):
    path = tmp_path / "throttle.json"
    path.write_text(bt.render_config(raw_config(tmp_path)))
    config = bt.load_config(str(path))
    assert config.paths.status_file == str(tmp_path / "run" / "throttle_status.json")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        bt.load_config(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        bt.load_config(str(tmp_path / "missing.json"))
    path.write_text(json.dumps(raw_config(tmp_path, cpus_active=20)))
    with pytest.raises(ValueError, match=r"throttle.json: policy.cpus_active \(20\) must not exceed"):
        bt.load_config(str(path))


def test_render_config_is_stable():
    a = raw_config()
    b = json.loads(json.dumps(a))
    b["policy"] = dict(reversed(list(b["policy"].items())))
    b = dict(reversed(list(b.items())))
    assert bt.render_config(a) == bt.render_config(b)
    assert bt.render_config(a).endswith("}\n")
    keys = list(json.loads(bt.render_config(a)))
    assert keys == sorted(keys)


def test_build_config_drops_unset_values():
    config = bt.build_config(
        "linux",
        policy={"cpus_active": 2, "cpus_idle": 4, "battery_policy": "3", "load_guard": None},
        paths={"log_file": "/l", "status_file": "/s", "num_cpus_file": "/n"},
        ray={"head_address": "h:1", "node_ip": "1.2.3.4", "venv": "/v", "token_path": None},
    )
    assert config["policy"] == {"cpus_active": 2, "cpus_idle": 4, "battery_policy": 3}
    assert "token_path" not in config["ray"]
    assert config["mechanism"] == {}
    assert bt.validate(config) == []


# -- quotas and sudoers -----------------------------------------------------------------------------


def test_quota_percent_never_zero():
    assert bt.quota_percent(0, 5) == 5
    assert bt.quota_percent(2, 5) == 200


def test_possible_counts_and_sudoers_rule():
    config = make(battery_policy=1)
    assert bt.possible_cpu_counts(config.policy) == [1, 2, 8]
    assert bt.possible_cpu_counts(make().policy) == [0, 2, 8]
    rule = bt.sudoers_rule("bittrader", make())
    cmd = "/usr/bin/systemctl set-property --runtime bittrader-ray-worker.service CPUQuota\\="
    assert f"Cmnd_Alias BITTRADER_THROTTLE_BITTRADER = {cmd}5%, \\\n" in rule
    for value in ("5%", "200%", "800%"):
        assert cmd + value in rule
    assert rule.count(cmd) == 4  # the three quotas and the lift (empty value)
    assert rule.rstrip().endswith("bittrader ALL=(root) NOPASSWD: BITTRADER_THROTTLE_BITTRADER")
    assert "Defaults!BITTRADER_THROTTLE_BITTRADER !requiretty" in rule
    assert "*" not in rule  # no wildcard: exactly these commands
