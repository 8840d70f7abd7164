"""Build the node agent's pure wheel on the admin machine (standard library only, offline).

    python node_agent/build_wheel.py --out DIR      build DIR/bittrader_node_agent-VERSION-py3-none-any.whl
                                                    unless it is there; print {"wheel", "version", "built"}
    python node_agent/build_wheel.py --version      print the version only

The version is pyproject.toml's plus a local label from a hash of everything that goes into the wheel
(1.0.0+src.0123456789ab): a changed source is a new version, so a node whose installed version differs
installs it again, and an unchanged source is never rebuilt. The archive is reproducible (sorted
entries, fixed dates). Every file below src/ is packed (the setuptools discovery of pyproject.toml),
so a new module of the package needs nothing here. Older wheels of the agent in DIR are removed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo")
DATE = (1980, 1, 1, 0, 0, 0)


def project(root: Path = ROOT) -> dict[str, object]:
    with (root / "pyproject.toml").open("rb") as handle:
        data: dict[str, object] = tomllib.load(handle)["project"]
    return data


def sources(root: Path = ROOT) -> list[tuple[str, bytes]]:
    """(path inside the wheel, content) of every file of the packages below src/, sorted."""
    found: list[tuple[str, bytes]] = []
    src = root / "src"
    for directory, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith(SKIP_SUFFIXES):
                continue
            path = Path(directory) / name
            found.append((path.relative_to(src).as_posix(), path.read_bytes()))
    return sorted(found)


def version(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "build_wheel.py"):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    for name, content in sources(root):
        digest.update(name.encode() + b"\0" + content + b"\0")
    return f"{project(root)['version']}+src.{digest.hexdigest()[:12]}"


def dist_name(root: Path = ROOT) -> str:
    return str(project(root)["name"]).replace("-", "_")


def wheel_name(root: Path = ROOT) -> str:
    return f"{dist_name(root)}-{version(root)}-py3-none-any.whl"


def _record_hash(content: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()


def metadata_files(root: Path = ROOT) -> list[tuple[str, bytes]]:
    meta = project(root)
    info = f"{dist_name(root)}-{version(root)}.dist-info"
    lines = ["Metadata-Version: 2.1", f"Name: {meta['name']}", f"Version: {version(root)}"]
    lines += [f"Summary: {meta.get('description', '')}", f"Requires-Python: {meta.get('requires-python', '>=3')}"]
    lines += [f"Requires-Dist: {dep}" for dep in meta.get("dependencies", []) or []]  # type: ignore[attr-defined]
    scripts: dict[str, str] = meta.get("scripts", {}) or {}  # type: ignore[assignment]
    entry_points = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(scripts.items()))
    tops = sorted({name.split("/", 1)[0].removesuffix(".py") for name, _ in sources(root)})
    wheel = "Wheel-Version: 1.0\nGenerator: bittrader build_wheel.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    return [
        (f"{info}/METADATA", ("\n".join(lines) + "\n").encode()),
        (f"{info}/WHEEL", wheel.encode()),
        (f"{info}/entry_points.txt", entry_points.encode()),
        (f"{info}/top_level.txt", ("\n".join(tops) + "\n").encode()),
    ]


def build(out: Path, root: Path = ROOT) -> dict[str, object]:
    """The wheel in out (built unless there); older wheels of the agent removed."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / wheel_name(root)
    for old in out.glob(f"{dist_name(root)}-*.whl"):
        if old != target:
            old.unlink()
    result: dict[str, object] = {"wheel": str(target), "version": version(root), "built": False}
    if target.exists():
        return result
    entries = sources(root) + metadata_files(root)
    record_name = f"{dist_name(root)}-{version(root)}.dist-info/RECORD"
    record = "".join(f"{name},{_record_hash(content)},{len(content)}\n" for name, content in entries)
    record += f"{record_name},,\n"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in [*entries, (record_name, record.encode())]:
            item = zipfile.ZipInfo(name, DATE)
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(item, content)
    os.replace(tmp, target)
    result["built"] = True
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="the folder of the wheel (a cache on the admin machine)")
    group.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(version())
        return 0
    print(json.dumps(build(args.out.expanduser()), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
