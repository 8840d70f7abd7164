# Prints the venv's Python release and, for each pinned requirement "name[extra,...]==version", the
# installed version; "pinned" is true when every requirement is installed at its pin and, for each of
# its extras, every package that extra brings (ray[tune]: fsspec, pandas, pyarrow, ...) is installed at
# a version its requirement accepts. Without that check a venv that has ray[default] at the pin would
# count as up to date after an extra was added to the cluster's list, and pip would never run.
from __future__ import annotations

import importlib.metadata as m
import json
import platform
import re
import sys
from collections.abc import Callable


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_missing(
    name: str,
    extras: list[str],
    version: Callable[[str], str] = m.version,
    requires: Callable[[str], list[str] | None] = m.requires,
) -> list[str]:
    """The requirements that name's extras bring and that are not installed (or not at an accepted
    version), as written in name's metadata. Needs packaging (a dependency of Ray) for markers and
    versions; without it only a package's presence is checked, for markers that name the extra."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - Ray depends on packaging
        Requirement = None  # type: ignore[assignment,misc]
    missing: list[str] = []
    for text in requires(name) or []:
        for extra in extras:
            if Requirement is not None:
                req = Requirement(text)
                wanted = req.marker is not None and req.marker.evaluate({"extra": extra})
                dep = req.name
            else:
                wanted = re.search(r"extra\s*==\s*['\"]" + re.escape(extra) + "['\"]", text) is not None
                dep = re.split(r"[\s\[<>=!~;]", text, maxsplit=1)[0]
            if not wanted or _norm(dep) == _norm(name):
                continue  # ray[tune] requires ray[default]-style self-references: the pin covers them
            try:
                have = version(dep)
            except m.PackageNotFoundError:
                missing.append(text)
                break
            if Requirement is not None and req.specifier and not req.specifier.contains(have, prereleases=True):
                missing.append(text)
            break
    return missing


def state(
    requirements: list[str],
    version: Callable[[str], str] = m.version,
    requires: Callable[[str], list[str] | None] = m.requires,
) -> dict[str, object]:
    found: dict[str, str | None] = {}
    missing: dict[str, list[str]] = {}
    pinned = True
    for req in requirements:
        extras_text = re.search(r"\[(.*?)\]", req)
        extras = [e.strip() for e in extras_text.group(1).split(",") if e.strip()] if extras_text else []
        name, _, want = re.sub(r"\[.*?\]", "", req).partition("==")
        have: str | None
        try:
            have = version(name.strip())
        except m.PackageNotFoundError:
            have = None
        found[req] = have
        pinned = pinned and bool(want) and have == want.strip()
        if have is not None and extras:
            lacking = extra_missing(name.strip(), extras, version, requires)
            if lacking:
                missing[req] = lacking
                pinned = False
    return {"python": platform.python_version(), "pinned": pinned, "packages": found, "extras_missing": missing}


if __name__ == "__main__":
    print(json.dumps(state(json.loads(sys.argv[1]))))
