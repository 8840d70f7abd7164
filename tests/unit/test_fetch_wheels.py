"""roles/ray_node/files/fetch_wheels.py: the admin machine's wheel archive, made once even when plays
that share the cache (Molecule's two clusters, two admins' runs) ask for it at the same time."""

from __future__ import annotations

import importlib.util
import json
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_wheels", REPO / "roles/ray_node/files/fetch_wheels.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_wheels = load()


class SlowDownload:
    """A stand-in for pip download: takes its time (as a real download does) and writes two wheels,
    the first before the wait, so a reader that does not wait for it would see a folder half full."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds
        self.calls: list[tuple[Path, list[str]]] = []

    def __call__(self, dest: Path, args: Sequence[str]) -> None:
        self.calls.append((dest, list(args)))
        (dest / "ray-2.60.0-cp311-manylinux.whl").write_bytes(b"ray" * 1000)
        time.sleep(self.seconds)
        (dest / "numpy-2.0.0-cp311-manylinux.whl").write_bytes(b"np" * 1000)


def test_plays_asking_at_once_download_once_and_each_sees_the_whole_archive(tmp_path: Path) -> None:
    archive = tmp_path / "wheels" / "linux-x86_64-cp311-abc.tar"
    download = SlowDownload()
    seen: list[tuple[bool, list[str]]] = []

    def play() -> None:
        changed = fetch_wheels.fetch(archive, ["ray[default]==2.60.0"], download)
        with tarfile.open(archive) as tar:  # what the play's unarchive would then copy
            seen.append((changed, sorted(tar.getnames())))

    threads = [threading.Thread(target=play) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(download.calls) == 1
    assert download.calls[0] == (archive.with_suffix(""), ["ray[default]==2.60.0"])
    wheels = ["numpy-2.0.0-cp311-manylinux.whl", "ray-2.60.0-cp311-manylinux.whl"]
    assert sorted(seen) == [(False, wheels), (False, wheels), (True, wheels)]
    assert archive.stat().st_mode & 0o777 == 0o644
    assert not list(archive.parent.glob(".*partial"))


def test_a_failed_download_leaves_no_archive_and_the_next_run_tries_again(tmp_path: Path) -> None:
    archive = tmp_path / "key.tar"

    def broken(dest: Path, args: Sequence[str]) -> None:
        (dest / "half.whl").write_bytes(b"x")
        raise OSError("network unreachable")

    with pytest.raises(OSError, match="unreachable"):
        fetch_wheels.fetch(archive, [], broken)
    assert not archive.exists() and not list(tmp_path.glob(".*partial"))
    assert fetch_wheels.fetch(archive, [], SlowDownload(0)) is True
    assert fetch_wheels.fetch(archive, [], SlowDownload(0)) is False


def test_main_prints_whether_it_made_the_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "key.tar"
    download = SlowDownload(0)
    assert fetch_wheels.main([str(archive), "--", "--only-binary=:all:", "ray==2.60.0"], download) == 0
    assert json.loads(capsys.readouterr().out) == {"changed": True, "archive": str(archive)}
    assert download.calls[0][1] == ["--only-binary=:all:", "ray==2.60.0"]
    assert fetch_wheels.main([str(archive), "--", "ray==2.60.0"], download) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert fetch_wheels.main([str(archive)], download) == 2


def test_wheelhouse_tasks_fetch_through_the_locked_helper() -> None:
    """One controller task, no unlocked download or pack that a second play could race."""
    text = (REPO / "roles/ray_node/tasks/wheelhouse.yml").read_text(encoding="utf-8")
    assert "/files/fetch_wheels.py" in text
    assert "pip', 'download'" not in text and "community.general.archive" not in text
