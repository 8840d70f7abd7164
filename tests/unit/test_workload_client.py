"""The client helper (workload/bittrader_workload/client.py): the token settings checked before Ray
Client would time out without a word, the address ray.init() uses, and the reachability check."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

WORKLOAD = Path(__file__).resolve().parents[2] / "workload"
sys.path.insert(0, str(WORKLOAD))

from bittrader_workload import client, job  # noqa: E402


def token_file(tmp_path: Path, mode: int = 0o600, content: str = "a" * 64) -> Path:
    path = tmp_path / "auth_token"
    path.write_text(content)
    path.chmod(mode)
    return path


def test_complete_settings(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
    assert client.auth_problem(env, home=str(tmp_path)) == ""
    assert client.token_source(env) == (f"RAY_AUTH_TOKEN_PATH {path}", "")
    assert client.auth_problem({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x" * 64}, home=str(tmp_path)) == ""
    (tmp_path / ".ray").mkdir()
    token_file(tmp_path / ".ray")
    assert client.auth_problem({"RAY_AUTH_MODE": "token"}, home=str(tmp_path)) == ""


@pytest.mark.parametrize(("env", "words"), [
    ({}, ["RAY_AUTH_MODE is not 'token'", "no token"]),
    ({"RAY_AUTH_MODE": "token"}, ["no token: RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are unset"]),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/nonexistent/auth_token"},
     ["/nonexistent/auth_token does not"]),
    ({"RAY_AUTH_TOKEN": "x" * 64}, ["RAY_AUTH_MODE is not 'token'"]),
])
def test_missing_settings_are_named(tmp_path: Path, env: dict[str, str], words: list[str]) -> None:
    problem = client.auth_problem(env, home=str(tmp_path))
    for word in words:
        assert word in problem, problem
    assert "ray client connection timeout" in problem and "client.env" in problem


def test_a_token_file_others_can_read_or_an_empty_one(tmp_path: Path) -> None:
    path = token_file(tmp_path, mode=0o644)
    problem = client.auth_problem({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)})
    assert "readable by others (mode 0644)" in problem
    path.chmod(0o600)
    path.write_text("\n")
    assert "is empty" in client.auth_problem({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)})


def test_effective_address_follows_ray() -> None:
    assert client.effective_address(None, {"RAY_ADDRESS": "ray://127.0.0.1:10001"}) == "ray://127.0.0.1:10001"
    assert client.effective_address("auto", {"RAY_ADDRESS": "10.0.0.10:6379"}) == "10.0.0.10:6379"
    assert client.effective_address("ray://h:1", {"RAY_ADDRESS": "10.0.0.10:6379"}) == "ray://h:1"
    assert client.effective_address(None, {}) == "auto"


def test_endpoints() -> None:
    assert client.endpoint("ray://127.0.0.1:10001") == ("127.0.0.1", 10001)
    assert client.endpoint("ray://head") == ("head", 10001)
    assert client.endpoint("http://10.0.0.10:8265") == ("10.0.0.10", 8265)
    assert client.endpoint("10.0.0.10:6379") == ("10.0.0.10", 6379)
    assert client.endpoint("auto") is None


def test_main_refuses_without_the_token_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:1")
    assert client.main([]) == client.EXIT_NO_TOKEN
    assert "requires its auth token" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="requires its auth token"):
        client.connect()


def test_main_names_an_address_that_does_not_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file(tmp_path)))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert client.main(["--no-connect"]) == client.EXIT_UNREACHABLE
    assert "bittrader_tunnel" in capsys.readouterr().err
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{server.getsockname()[1]}")
        assert client.main(["--no-connect"]) == 0
    out = capsys.readouterr().out
    assert "RAY_AUTH_TOKEN_PATH" in out and "a" * 64 not in out


def test_the_job_refuses_ray_client_without_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The reference job, pointed at Ray Client without the token, says so instead of waiting 30 s."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    code = job.main(["--candles", "2000", "--params", "2", "--address", "ray://127.0.0.1:1"])
    assert code == job.EXIT_USAGE
    assert "requires its auth token" in capsys.readouterr().err
