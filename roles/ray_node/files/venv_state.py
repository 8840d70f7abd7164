# Prints the venv's Python release and, for each pinned requirement "name[extra]==version", the
# installed version; "pinned" is true when every requirement is installed at its pin.
import importlib.metadata as m
import json
import platform
import re
import sys

found: dict[str, str | None] = {}
pinned = True
for req in json.loads(sys.argv[1]):
    name, _, want = re.sub(r"\[.*?\]", "", req).partition("==")
    have: str | None
    try:
        have = m.version(name.strip())
    except m.PackageNotFoundError:
        have = None
    found[req] = have
    pinned = pinned and bool(want) and have == want.strip()
print(json.dumps({"python": platform.python_version(), "pinned": pinned, "packages": found}))
