# Run on the admin machine by wheelhouse.yml: makes ARCHIVE (one tar of the pinned wheels for a node
# platform) unless it exists, and prints {"changed": bool, "archive": path}. Safe when several plays
# share the cache at once (two clusters provisioned side by side, Molecule's two test clusters): an
# exclusive lock on ARCHIVE.lock serialises them, pip downloads into ARCHIVE without its ".tar", and
# the archive appears only whole (written under another name, then renamed), so a play never copies
# a half-written tar. fcntl works on the Linux and macOS admin machines alike.
#   python fetch_wheels.py ARCHIVE -- PIP_DOWNLOAD_ARGUMENTS...
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

Download = Callable[[Path, Sequence[str]], None]


def pip_download(dest: Path, args: Sequence[str]) -> None:
    """pip download ARGS into dest, with this Python's pip (the admin machine's Ansible venv)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), *args], check=True
    )


def fetch(archive: Path, args: Sequence[str], download: Download = pip_download) -> bool:
    """Make archive from the wheels args name unless it exists; True when it was made."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with open(archive.with_name(archive.name + ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return False
        folder = archive.with_suffix("")
        folder.mkdir(exist_ok=True)
        download(folder, args)
        partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
        try:
            with tarfile.open(partial, "w") as tar:
                for wheel in sorted(folder.iterdir()):
                    tar.add(wheel, arcname=wheel.name)
            partial.chmod(0o644)
            os.replace(partial, archive)
        finally:
            partial.unlink(missing_ok=True)
        return True


def main(argv: list[str] | None = None, download: Download = pip_download) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[1] != "--":
        print("usage: fetch_wheels.py ARCHIVE -- PIP_DOWNLOAD_ARGUMENTS...", file=sys.stderr)
        return 2
    archive = Path(args[0])
    changed = fetch(archive, args[2:], download)
    print(json.dumps({"changed": changed, "archive": str(archive)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
