"""Jinja filters for the macOS side of the Bittrader Ray cluster: launchd property lists and the parsing
of macOS command output (dscacheutil, launchctl, socketfilterfw, pmset).

Plain Python, unit-tested without a Mac (tests/unit/test_filters_macos.py); the outputs parsed here
are those of macOS 12 to 15.
"""

from __future__ import annotations

import plistlib
import re
from collections.abc import Callable, Mapping
from typing import Any

_PLIST_HEADER_END = b"<plist"


def _plain(value: Any, where: str = "plist") -> Any:
    """value as plain Python types plistlib accepts; None entries of dicts are dropped."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if item is None:
                continue
            out[str(key)] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value) if item is not None]
    raise TypeError(f"{where}: a launchd property list cannot hold {type(value).__name__} ({value!r})")


def plist(value: Mapping[str, Any], comment: str = "") -> str:
    """An XML property list (launchd job) from a mapping. Keys whose value is None are left out, so a
    template can write optional keys as `'UserName': user if daemon else none`. Strings are escaped by
    plistlib (paths with spaces, & or < are safe). comment, when given, becomes an XML comment after
    the doctype. A job whose UserName is root is refused: nothing of this project runs as root."""
    if not isinstance(value, Mapping):
        raise TypeError(f"bittrader_plist needs a mapping, got {type(value).__name__}")
    if str(value.get("UserName") or "").strip() in {"root", "0"}:
        raise ValueError(f"launchd job {value.get('Label')!r}: UserName root is refused; Ray never runs as root")
    data = plistlib.dumps(_plain(value), fmt=plistlib.FMT_XML, sort_keys=True)
    if comment:
        safe = re.sub(r"-{2,}", "-", str(comment)).strip().strip("-")
        at = data.index(_PLIST_HEADER_END)
        data = data[:at] + f"<!-- {safe} -->\n".encode() + data[at:]
    return data.decode("utf-8")


def dscache_passwd(output: str) -> dict[str, list[str]]:
    """`dscacheutil -q user [-a name NAME]` output as getent's passwd shape:
    {name: [password, uid, gid, gecos, home, shell]} (what ansible.builtin.getent gives on Linux;
    macOS has no getent). Records are separated by blank lines; a missing user gives {}."""
    users: dict[str, list[str]] = {}
    record: dict[str, str] = {}

    def flush() -> None:
        name = record.get("name")
        if name:
            users[name] = [
                record.get("password", ""),
                record.get("uid", ""),
                record.get("gid", ""),
                record.get("gecos", ""),
                record.get("dir", ""),
                record.get("shell", ""),
            ]
        record.clear()

    for raw in str(output or "").splitlines():
        line = raw.rstrip()
        if not line.strip():
            flush()
            continue
        key, sep, val = line.partition(":")
        if sep:
            record.setdefault(key.strip(), val.strip())
    flush()
    return users


def launchd_disabled(output: str, label: str) -> bool:
    """True when `launchctl print-disabled DOMAIN` lists label as disabled. macOS 12 prints
    `"label" => true`, macOS 13 and later `"label" => disabled`."""
    pattern = re.compile(r'^\s*"' + re.escape(str(label)) + r'"\s*=>\s*(\S+)')
    for line in str(output or "").splitlines():
        found = pattern.match(line)
        if found:
            return found.group(1).lower() in {"true", "disabled"}
    return False


def launchd_exit_timeout(output: str, default: int = 20) -> int:
    """The job's ExitTimeOut as `launchctl print DOMAIN/LABEL` shows it (`exit timeout = 60`): the
    longest launchd lets the job run after `bootout` sends SIGTERM before it sends SIGKILL. default when
    the output has no such line."""
    found = re.search(r"^\s*exit timeout\s*=\s*(\d+)", str(output or ""), re.MULTILINE)
    return int(found.group(1)) if found else int(default)


def btm_disabled(output: str, label: str) -> bool:
    """True when `sfltool dumpbtm` (macOS 13 and later, as root) shows the launchd job label switched
    off in Background Task Management: System Settings > General > Login Items & Extensions >
    Allow in the Background. A record names the job by `Identifier: <type>.LABEL` (16 for a daemon) or by the
    `URL: file:///.../LABEL.plist` of its property list, and carries `Disposition: [disabled, ...]`."""
    label = str(label)
    records: list[list[str]] = [[]]
    for raw in str(output or "").splitlines():
        if re.match(r"^\s*#\d+:\s*$", raw):
            records.append([])
        records[-1].append(raw.strip())
    for record in records:
        names = False
        disabled = False
        for line in record:
            key, _, value = line.partition(":")
            key, value = key.strip().lower(), value.strip()
            if key == "identifier" and re.fullmatch(r"(\d+\.)?" + re.escape(label), value):
                names = True
            elif key == "url" and value.endswith("/" + label + ".plist"):
                names = True
            elif key == "disposition":
                flags = [flag.strip() for flag in value.split("]")[0].lstrip("[").split(",")]
                disabled = "disabled" in flags
        if names and disabled:
            return True
    return False


_PROTECTED_FOLDERS = (
    ("Library/CloudStorage", "a cloud folder (Dropbox, Google Drive, OneDrive, Box) under ~/Library/CloudStorage"),
    ("Library/Mobile Documents", "iCloud Drive (~/Library/Mobile Documents)"),
    ("Desktop", "the Desktop folder"),
    ("Documents", "the Documents folder"),
    ("Downloads", "the Downloads folder"),
)


def macos_protected_folder(path: str, home: str) -> str:
    """What macOS's privacy protection (TCC) guards path as, or "" for a plain folder. A LaunchDaemon's
    Python cannot read these folders (no one is there to click Allow) unless it has Full Disk Access, and
    the cloud folders may hold online-only files that a daemon cannot have downloaded."""
    clean = str(path or "").rstrip("/")
    base = str(home or "").rstrip("/")
    if not clean or not base:
        return ""
    for sub, what in _PROTECTED_FOLDERS:
        root = f"{base}/{sub}"
        if clean == root or clean.startswith(root + "/"):
            return what
    return ""


def alf_apps(output: str) -> dict[str, str]:
    """`socketfilterfw --listapps` as {path: "allow" | "block"}. Each app is a `N : PATH` line followed
    by a `( Allow incoming connections )` or `( Block incoming connections )` line. (`--getappblocked`
    answers "permitted" for paths the firewall does not know, so it cannot tell allowed from absent.)"""
    apps: dict[str, str] = {}
    pending: str | None = None
    for raw in str(output or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        if pending is not None and line.startswith("("):
            verdict = line.strip("()").strip().lower()
            apps[pending] = "block" if verdict.startswith("block") else "allow"
            pending = None
            continue
        pending = None
        found = re.match(r"^\d+\s*:\s*(.+)$", line)
        if found:
            pending = found.group(1).strip()
    return apps


def alf_enabled(output: str) -> bool:
    """True when `socketfilterfw --getglobalstate` says the application firewall is on
    ("Firewall is enabled. (State = 1)"; State = 2 is the old "block all" state)."""
    text = str(output or "")
    found = re.search(r"State\s*=\s*(\d+)", text)
    if found:
        return int(found.group(1)) > 0
    lowered = text.lower()
    return "enabled" in lowered and "disabled" not in lowered


def alf_blockall(output: str) -> bool:
    """True when `socketfilterfw --getblockall` says every incoming connection is blocked
    ("Firewall is set to block all non-essential incoming connections", "Block all ENABLED!",
    "... block all state set to enabled")."""
    lowered = str(output or "").lower()
    if "block all non-essential" in lowered:
        return True
    return "block all" in lowered and "enabled" in lowered and "disabled" not in lowered


def pmset_ac_sleep(output: str) -> int | None:
    """The system sleep timer (minutes, 0 = never) of the "AC Power:" section of `pmset -g custom`,
    or None when the output has no such section."""
    section = ""
    for raw in str(output or "").splitlines():
        if raw and not raw[0].isspace() and raw.rstrip().endswith(":"):
            section = raw.strip().rstrip(":").lower()
            continue
        if section != "ac power":
            continue
        found = re.match(r"^\s+sleep\s+(\d+)", raw)
        if found:
            return int(found.group(1))
    return None


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "bittrader_plist": plist,
            "bittrader_dscache_passwd": dscache_passwd,
            "bittrader_launchd_disabled": launchd_disabled,
            "bittrader_launchd_exit_timeout": launchd_exit_timeout,
            "bittrader_btm_disabled": btm_disabled,
            "bittrader_macos_protected_folder": macos_protected_folder,
            "bittrader_alf_apps": alf_apps,
            "bittrader_alf_enabled": alf_enabled,
            "bittrader_alf_blockall": alf_blockall,
            "bittrader_pmset_ac_sleep": pmset_ac_sleep,
        }
