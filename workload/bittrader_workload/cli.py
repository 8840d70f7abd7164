"""Command-line helpers shared by the workload's entry points (job.py and search.py)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

# argparse exits 2 on a bad command line; 2 means "too few nodes" here, so use 64 (EX_USAGE).
EXIT_USAGE = 64


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser that exits EXIT_USAGE on a bad command line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
