"""Jinja filters of the node's recorded state (roles/ray_node/tasks/state.yml,
library/bittrader_node_state.py). Plain Python, unit-tested without Ansible (tests/unit/test_node_state.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

# Hex digits kept of each input's SHA-256: enough to tell two values apart, short enough to keep the
# record small (a few hundred inputs).
DIGEST_CHARS = 16


def input_digests(inputs: Mapping[str, Any]) -> dict[str, str]:
    """Each input's value as a short SHA-256 of its canonical JSON. Values are never kept, so a secret
    among the inputs (a Vault variable) reaches neither the node nor the log."""
    out: dict[str, str] = {}
    for name, value in inputs.items():
        text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
        out[str(name)] = hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]
    return out


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"bittrader_input_digests": input_digests}
