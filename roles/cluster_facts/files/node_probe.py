"""Read-only facts the preflight needs from a node, printed as one JSON object.

Run by the node's system Python as root (`python3 -B -c SOURCE VENV_PYTHON USER BASE_DIR SPILL_DIR`,
roles/cluster_facts/tasks/preflight.yml) on Linux and macOS; it changes nothing. Keys:
  python     the running interpreter's release (bittrader_system_python)
  venv       "PYTHON RAY" of the node's virtual environment, "" when it has none
  shm_bytes  size of /dev/shm (Linux; null elsewhere), which bounds Ray's object store
  listening  [[port, user], ...]: TCP ports something listens on, and as whom
  sudo_nopasswd  the rules of `sudo -n -l -U USER` that need no password ([] when USER does not exist yet,
             has none, or sudo is missing); null when they could not be read (not root)
  disk       {"base": [PATH, FREE_BYTES], "spill": [PATH, FREE_BYTES]}: free space where the node's folder
             goes (its nearest existing folder) and where Ray spills objects
Python 3.8 compatible (macOS's /usr/bin/python3).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

VENV_CODE = "import platform, importlib.metadata as m; print(platform.python_version(), m.version('ray'))"


def venv_state(python: str) -> str:
    """ "PYTHON RAY" of the virtual environment whose interpreter is python, or ""."""
    if not python or not os.path.exists(python):
        return ""
    try:
        res = subprocess.run(
            [python, "-B", "-c", VENV_CODE], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def parse_proc_net_tcp(text: str) -> list[tuple[int, int]]:
    """(port, uid) of every listening socket in /proc/net/tcp or tcp6 text."""
    found: list[tuple[int, int]] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != "0A":  # 0A: TCP_LISTEN
            continue
        try:
            found.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[7])))
        except (IndexError, ValueError):
            continue
    return found


def parse_lsof(text: str) -> list[tuple[int, str]]:
    """(port, login) of every listening socket in `lsof -nP -iTCP -sTCP:LISTEN -FLn` output."""
    found: list[tuple[int, str]] = []
    login = "?"
    for line in text.splitlines():
        if line.startswith("p"):
            login = "?"
        elif line.startswith("L"):
            login = line[1:]
        elif line.startswith("n") and ":" in line:
            try:
                found.append((int(line.rsplit(":", 1)[1]), login))
            except ValueError:
                continue
    return found


def listening() -> list[list[object]]:
    ports: set[tuple[int, str]] = set()
    if sys.platform.startswith("linux"):
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(path, encoding="ascii") as handle:
                    text = handle.read()
            except OSError:
                continue
            ports.update((port, user_name(uid)) for port, uid in parse_proc_net_tcp(text))
    elif sys.platform == "darwin":
        try:
            res = subprocess.run(
                ["/usr/sbin/lsof", "-nP", "-iTCP", "-sTCP:LISTEN", "-FLn"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            ports.update(parse_lsof(res.stdout))
        except (OSError, subprocess.SubprocessError):
            pass
    return [[port, user] for port, user in sorted(ports)]


def shm_bytes() -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_frsize * st.f_blocks


def parse_sudo_list(text: str) -> list[str]:
    """The rules of `sudo -l -U USER` output that run without a password (NOPASSWD, or !authenticate).
    Preflight's bittrader_probe_problems (filter_plugins/bittrader_preflight.py) judges the rules it returns."""
    rules: list[str] = []
    no_auth = False
    in_rules = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("User ") and "may run the following commands" in stripped:
            in_rules = True
            continue
        if stripped.startswith("Matching Defaults entries") or stripped.startswith("Runas and Command-specific"):
            in_rules = False
        if "!authenticate" in stripped:
            no_auth = True
        if in_rules and stripped and ("NOPASSWD" in stripped or no_auth):
            rules.append(stripped)
    return rules


def sudo_nopasswd(user: str, sudo: str = "") -> list[str] | None:
    """user's passwordless sudo rules; [] when the account does not exist or sudo is missing; None when
    they could not be read."""
    if not user:
        return []
    try:
        import pwd

        pwd.getpwnam(user)
    except (ImportError, KeyError):
        return []
    sudo = sudo or next((p for p in ("/usr/bin/sudo", "/bin/sudo", "/usr/local/bin/sudo") if os.path.exists(p)), "")
    if not sudo:
        return []
    try:
        res = subprocess.run(
            [sudo, "-n", "-l", "-U", user], capture_output=True, text=True, timeout=30, check=False,
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0 and "not allowed to run sudo" not in res.stdout + res.stderr:
        return None
    return parse_sudo_list(res.stdout)


def free_space(path: str) -> list[object]:
    """[the nearest existing folder of path, its free bytes for an ordinary user]; [path, None] if unknown."""
    folder = os.path.abspath(path) if path else ""
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        folder = "" if parent == folder else parent
    if not folder:
        return [path, None]
    try:
        st = os.statvfs(folder)
    except OSError:
        return [folder, None]
    return [folder, st.f_frsize * st.f_bavail]


def main(argv: list[str]) -> int:
    arg = (argv + [""] * 5)[1:5]
    report = {
        "python": platform.python_version(),
        "venv": venv_state(arg[0]),
        "shm_bytes": shm_bytes(),
        "listening": listening(),
        "sudo_nopasswd": sudo_nopasswd(arg[1]),
        "disk": {"base": free_space(arg[2]), "spill": free_space(arg[3] or "/tmp")},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
