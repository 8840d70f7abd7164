"""Can this Python read the strategy code folder? Prints one JSON object and changes nothing.

Run by the node's own venv Python as the account Ray runs as (roles/ray_node/tasks/code.yml, become_user),
as Ray's workers would import from it: list every folder and read every .py file (up to max_files), and
report the first refusal. An existence check passes on a macOS cloud folder that a daemon cannot read
(privacy protection answers "Operation not permitted") or whose files are online-only placeholders.
  python -B -c SOURCE FOLDER [MAX_FILES]
Keys: files (the .py files read), entries (every file seen), error ("" or "PATH: reason").
"""

from __future__ import annotations

import json
import os
import sys


def check(folder: str, max_files: int = 2000) -> dict[str, object]:
    problems: list[str] = []

    def refused(exc: OSError) -> None:
        problems.append(f"{getattr(exc, 'filename', '') or folder}: {exc.strerror or exc}")

    files = entries = 0
    try:
        os.listdir(folder)
    except OSError as exc:
        refused(exc)
    for current, dirs, names in os.walk(folder, onerror=refused):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            if name.startswith("."):
                continue
            entries += 1
            if not name.endswith(".py") or files >= max_files:
                continue
            try:
                with open(os.path.join(current, name), "rb") as handle:
                    handle.read()
            except OSError as exc:
                refused(exc)
                continue
            files += 1
    return {"files": files, "entries": entries, "error": problems[0] if problems else "",
            "refused": len(problems)}


if __name__ == "__main__":
    print(json.dumps(check(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000)))
