"""The throttle's decisions: pure functions of the state, an observation, the policy and `now`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from .config import Config, Policy, possible_cpu_counts

__all__ = ["Decision", "Mode", "Observation", "State", "decide", "possible_cpu_counts", "target"]

# --------------------------------------------------------------------------------------------------
# Decisions (pure: injectable clock through `now`)
# --------------------------------------------------------------------------------------------------


class Mode(str, Enum):  # noqa: UP042 - StrEnum is 3.11+; the module side runs on the host's Python
    """What the throttle is doing."""

    ACTIVE = "active"
    IDLE = "idle"
    BATTERY = "battery"


@dataclass(frozen=True)
class Observation:
    """What the machine looks like now. idle_seconds None: unknown (treated as active); math.inf:
    nobody can use it (headless). on_battery None: no battery (a desktop). cpu_load: percent of the
    whole machine used by everything but Ray, None when not measured."""

    idle_seconds: float | None
    on_battery: bool | None = None
    battery_percent: float | None = None
    cpu_load: float | None = None


@dataclass(frozen=True)
class State:
    """The throttle's memory between decisions. mode None: nothing applied yet (start-up)."""

    mode: Mode | None
    cpus: int
    since: float = -math.inf
    load_high_at: float | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation. changed: the caller must apply cpus_after. held: a change was
    wanted but hysteresis postponed it."""

    state: Mode
    reason: str
    cpus_before: int
    cpus_after: int
    changed: bool
    held: bool
    next_state: State

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "cpus_before": self.cpus_before,
            "cpus_after": self.cpus_after,
            "changed": self.changed,
            "held": self.held,
        }


def _fmt_s(seconds: float) -> str:
    return "ever" if math.isinf(seconds) else f"{seconds:.0f} s"


def _presence(state: State, obs: Observation, policy: Policy, now: float) -> tuple[bool, str, float | None]:
    """(someone is using the machine, why, updated load_high_at)."""
    load_high_at = state.load_high_at
    load_now = policy.load_guard is not None and obs.cpu_load is not None and obs.cpu_load >= policy.load_guard
    if load_now:
        load_high_at = now
    if obs.idle_seconds is None:
        return True, "activity unknown (assumed active)", load_high_at
    if obs.idle_seconds < policy.idle_threshold_s:
        return True, f"input {_fmt_s(obs.idle_seconds)} ago", load_high_at
    if load_now:
        return True, f"non-Ray CPU load {obs.cpu_load:.0f}% >= load_guard {policy.load_guard:.0f}%", load_high_at
    if load_high_at is not None and now - load_high_at < policy.idle_threshold_s:
        return True, f"non-Ray CPU load above load_guard {_fmt_s(now - load_high_at)} ago", load_high_at
    if math.isinf(obs.idle_seconds):
        return False, "no user session (headless)", load_high_at
    return False, f"no input for {_fmt_s(obs.idle_seconds)}", load_high_at


def target(state: State, obs: Observation, policy: Policy, now: float) -> tuple[Mode, int, str, float | None]:
    """The mode and CPU count wanted now, ignoring hysteresis: (mode, cpus, reason, load_high_at)."""
    present, why, load_high_at = _presence(state, obs, policy, now)
    mode, cpus = (Mode.ACTIVE, policy.cpus_active) if present else (Mode.IDLE, policy.cpus_idle)
    if obs.on_battery:
        pct = obs.battery_percent
        pct_text = "" if pct is None else f" at {pct:.0f}%"
        if policy.battery_min_percent is not None and pct is not None and pct < policy.battery_min_percent:
            low = f"on battery{pct_text} < {policy.battery_min_percent:.0f}%: paused; {why}"
            return Mode.BATTERY, 0, low, load_high_at
        if policy.battery_policy == "pause":
            return Mode.BATTERY, 0, f"on battery{pct_text}: paused; {why}", load_high_at
        if isinstance(policy.battery_policy, int) and policy.battery_policy < cpus:
            limit = policy.battery_policy
            return Mode.BATTERY, limit, f"on battery{pct_text}: at most {limit} CPUs; {why}", load_high_at
    return mode, cpus, why, load_high_at


def decide(state: State, observation: Observation, config: Config, now: float) -> Decision:
    """One evaluation. Fewer CPUs for Ray (owner back, unplugged) apply at once; more CPUs only when
    hysteresis_s have passed since the last change; the first decision always applies."""
    policy = config.policy
    mode, cpus, reason, load_high_at = target(state, observation, policy, now)
    kept = replace(state, load_high_at=load_high_at)
    current = state.mode if state.mode is not None else mode
    if state.mode is not None and mode == state.mode and cpus == state.cpus:
        return Decision(current, reason, state.cpus, state.cpus, False, False, kept)
    waited = now - state.since
    if state.mode is not None and cpus > state.cpus and waited < policy.hysteresis_s:
        left = policy.hysteresis_s - waited
        held_reason = f"{reason}; wants {mode.value} ({cpus} CPUs) in {left:.0f} s (hysteresis)"
        return Decision(current, held_reason, state.cpus, state.cpus, False, True, kept)
    new_state = State(mode=mode, cpus=cpus, since=now, load_high_at=load_high_at)
    return Decision(mode, reason, state.cpus, cpus, True, False, new_state)

