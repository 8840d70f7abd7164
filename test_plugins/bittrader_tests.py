"""Jinja tests of the Bittrader cluster (the filters of the same names, usable with select/reject/is)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "filter_plugins"))

from bittrader_basics import in_cidr, is_ip, is_loopback


class TestModule:
    """Ansible entry point."""

    def tests(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_is_ip": is_ip,
            "bittrader_in_cidr": in_cidr,
            "bittrader_is_loopback": is_loopback,
        }
