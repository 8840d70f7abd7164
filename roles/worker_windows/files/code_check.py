"""Can this account read the strategy code folder? Run by tasks/verify.yml with the node's own Python, as
the service account in a batch logon (no desktop session: what Ray's workers have under the scheduled
task). Prints one JSON object and changes nothing:

    python -B code_check.py FOLDER

OneDrive's online-only files (Files On-Demand placeholders) are fetched by the OneDrive client of a
signed-in session; a process in session 0 cannot fetch them, so imports fail where an existence check
over SSH succeeds. Placeholders are recognised by their attributes (reading those fetches nothing);
the other Python files are opened and read. Standard library only; at most MAX_FILES files are looked at.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

MAX_FILES = 5000
LISTED = 5
# Attributes of a cloud file whose data is not on this PC (winnt.h): reading it asks the cloud
# provider, which only runs in the owner's session.
FILE_ATTRIBUTE_OFFLINE = 0x00001000
FILE_ATTRIBUTE_RECALL_ON_OPEN = 0x00040000
FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS = 0x00400000
ONLINE_ONLY = FILE_ATTRIBUTE_OFFLINE | FILE_ATTRIBUTE_RECALL_ON_OPEN | FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS


def check(root: str, lstat: Callable[[str], os.stat_result] = os.lstat) -> dict[str, Any]:
    """What this account finds in root: whether it is a readable folder, how many files were looked at,
    the online-only ones and the Python files it cannot read (the first LISTED of each)."""
    report: dict[str, Any] = {"path": root, "exists": False, "readable": False, "files": 0, "truncated": False,
                              "online_only": [], "online_only_count": 0, "unreadable": [], "error": ""}
    try:
        report["exists"] = stat.S_ISDIR(lstat(root).st_mode)
    except OSError as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        return report
    if not report["exists"]:
        report["error"] = "not a folder"
        return report
    try:
        os.listdir(root)
        report["readable"] = True
    except OSError as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        return report
    for folder, dirs, files in os.walk(root, onerror=lambda exc: report["unreadable"].append(str(exc))):
        dirs[:] = sorted(d for d in dirs if d not in {".git", "__pycache__", ".venv", "node_modules"})
        for name in sorted(files):
            if report["files"] >= MAX_FILES:
                report["truncated"] = True
                return report
            path = os.path.join(folder, name)
            report["files"] += 1
            try:
                attributes = int(getattr(lstat(path), "st_file_attributes", 0))
            except OSError as exc:
                report["unreadable"].append(f"{path}: {exc.strerror or exc}")
                continue
            if attributes & ONLINE_ONLY:
                report["online_only_count"] += 1
                if len(report["online_only"]) < LISTED:
                    report["online_only"].append(path)
                continue
            if name.endswith(".py"):
                try:
                    with open(path, "rb") as handle:
                        handle.read(1)
                except OSError as exc:
                    if len(report["unreadable"]) < LISTED:
                        report["unreadable"].append(f"{path}: {exc.strerror or exc}")
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: code_check.py FOLDER", file=sys.stderr)
        return 2
    print(json.dumps(check(argv[0]), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
