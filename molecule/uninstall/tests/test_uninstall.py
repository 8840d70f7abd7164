"""playbooks/uninstall.yml removes everything the roles installed, and a second run changes nothing.
The uninstall scenario is the last one `./lab test` names (it leaves no cluster behind); Molecule
destroys the containers afterwards."""

from __future__ import annotations

from conftest import ALL_HOSTS, HEAD, USER, WORKERS, recap, run_playbook

testinfra_hosts = ALL_HOSTS
_runs: list[str] = []


def uninstall() -> str:
    """Run the uninstall playbook against Molecule's inventory (once per round), return its output."""
    res, _ = run_playbook("playbooks/uninstall.yml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    return res.stdout


def changed_counts(output: str) -> dict[str, int]:
    return {host: counts["changed"] for host, counts in recap(output).items()}


def test_uninstall_removes_everything_and_is_idempotent(host) -> None:  # type: ignore[no-untyped-def]
    if not _runs:
        _runs.append(uninstall())
        _runs.append(uninstall())
        first, second = changed_counts(_runs[0]), changed_counts(_runs[1])
        assert all(first[h] > 0 for h in [HEAD, *WORKERS]), first
        assert all(v == 0 for v in second.values()), second
    for unit in ("bittrader-ray-head", "bittrader-ray-worker", "bittrader-throttle", "bittrader-health"):
        assert not host.file(f"/etc/systemd/system/{unit}.service").exists
    assert not host.file("/etc/systemd/system/bittrader-health.timer").exists
    assert not host.file("/etc/sudoers.d/bittrader-throttle").exists
    assert not host.file("/etc/ansible/facts.d/bittrader_node.fact").exists  # the node's record
    assert not host.user(USER).exists
    assert not host.file(f"/home/{USER}").exists
    assert host.run("pgrep -x raylet").rc != 0
    assert host.run("pgrep -x gcs_server").rc != 0
