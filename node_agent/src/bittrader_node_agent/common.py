"""What every program of the node agent needs, written once: JSON configuration and state files
(written atomically), size-rotated logs, the command-line error convention, commands without a shell,
and psutil loaded lazily."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

# sysexits.h EX_CONFIG: the configuration is unreadable or wrong (the service managers do not retry it
# in a tight loop, and the roles look for it).
EX_CONFIG = 78


# --------------------------------------------------------------------------------------------------
# Configuration and state files
# --------------------------------------------------------------------------------------------------


def load_json_config(path: Path | str, required: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON object from path; ValueError names the missing keys (OSError when unreadable)."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        config = json.load(handle)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object")
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"{path}: missing keys {', '.join(missing)}")
    return config


def config_error(prog: str, exc: BaseException) -> int:
    """The one-line error of a program whose configuration cannot be used; returns EX_CONFIG."""
    print(f"{prog}: ERROR: {exc}", file=sys.stderr)
    return EX_CONFIG


def read_json_object(path: Path | str) -> dict[str, Any]:
    """A state file's object; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json_line(path: str | None, last: bool = False) -> dict[str, Any] | None:
    """The object on the first (or last) line of a status file; None when there is none (yet)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().strip().splitlines() if last else [handle.readline()]
    except OSError:
        return None
    if not lines:
        return None
    try:
        data = json.loads(lines[-1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def read_first_json_line(path: str) -> dict[str, Any] | None:
    return read_json_line(path)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a part (creates its folder)."""
    path = str(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str | Path, data: Mapping[str, Any]) -> None:
    """A state file: one JSON object, keys sorted, written atomically."""
    write_atomic(path, json.dumps(data, sort_keys=True))


# --------------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------------


def rotating_handler(
    path: str | Path,
    max_bytes: int,
    backups: int,
    fmt: str = "%(asctime)s %(message)s",
    handler_class: type[logging.handlers.RotatingFileHandler] = logging.handlers.RotatingFileHandler,
    delay: bool = False,
) -> logging.handlers.RotatingFileHandler:
    """A size-rotated UTF-8 log file (its folder created); OSError when it cannot be opened."""
    if not delay:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = handler_class(str(path), maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=delay)
    handler.setFormatter(logging.Formatter(fmt))
    return handler


def fresh_logger(name: str) -> logging.Logger:
    """The named logger at INFO, not propagating, its previous handlers closed and removed."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    return logger


# --------------------------------------------------------------------------------------------------
# Commands and processes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def brief(self) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return f"exit {self.returncode}" + (f": {text[-1][:200]}" if text else "")


if TYPE_CHECKING:
    Runner = Callable[[Sequence[str], "Mapping[str, str] | None", float], CommandResult]


def run_command(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30.0) -> CommandResult:
    """Run a command without a shell; never raises (127: not found, 124: timed out)."""
    try:
        done = subprocess.run(
            list(argv),
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        return CommandResult(127, "", f"{argv[0]}: not found ({exc.strerror})")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{argv[0]}: timed out after {timeout:.0f} s")
    except OSError as exc:
        return CommandResult(126, "", f"{argv[0]}: {exc}")
    return CommandResult(done.returncode, done.stdout or "", done.stderr or "")


def psutil_module() -> Any:
    """psutil, imported when first needed (the programs' --help and config checks run without it)."""
    import psutil

    return psutil
