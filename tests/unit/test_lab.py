"""The lab tool: its podman settings and that its hosts agree with inventory/lab and Molecule."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import lab  # noqa: E402
from ansible_render import render_value  # noqa: E402


def test_containers_conf_caps_nofile_at_the_hard_limit() -> None:
    text = lab.containers_conf_text(20000)
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=16384:16384"]' in text
    assert 'runtime = "runc"' in text and 'cgroup_manager = "cgroupfs"' in text
    assert "nofile=65536:65536" in lab.containers_conf_text(1_000_000)


def test_cache_dir_follows_bittrader_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITTRADER_CACHE", str(tmp_path))
    assert lab.cache_dir() == tmp_path / "bittrader-lab"
    assert lab.cache_dir().is_dir()


def inventory_hosts() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((REPO / "inventory/lab/hosts.yml").read_text())
    found: dict[str, dict[str, object]] = {}

    def walk(group: dict[str, object]) -> None:
        for name, hostvars in (group.get("hosts") or {}).items():  # type: ignore[union-attr]
            found[name] = hostvars or {}
        for child in (group.get("children") or {}).values():  # type: ignore[union-attr]
            walk(child)

    walk(data["ray_cluster"])
    return found


def molecule_config() -> dict[str, Any]:
    """What every Molecule scenario shares (platforms, provisioner, verifier), with the project's path."""
    text = (REPO / ".config/molecule/config.yml").read_text().replace("${MOLECULE_PROJECT_DIRECTORY}", str(REPO))
    return dict(yaml.safe_load(text))


def create_argv(monkeypatch: pytest.MonkeyPatch, playbook: str = "create.yml") -> list[str]:
    """The command molecule/default/create.yml (or destroy.yml) runs, rendered as Ansible would."""
    monkeypatch.setenv("MOLECULE_PROJECT_DIRECTORY", str(REPO))
    play = yaml.safe_load((REPO / "molecule/default" / playbook).read_text())[0]
    variables: dict[str, Any] = {"molecule_yml": molecule_config(), "ansible_playbook_python": sys.executable}
    for name, value in (play.get("vars") or {}).items():
        variables[name] = render_value(value, variables)
    (task,) = play["tasks"]
    return [str(a) for a in render_value(task["ansible.builtin.command"]["argv"], variables)]


def test_lab_containers_match_the_lab_inventory() -> None:
    hosts = inventory_hosts()
    the_lab = lab.Lab()
    assert {h.name for h in the_lab.hosts} == set(hosts)
    subnet = ipaddress.ip_network(the_lab.subnet)
    for host in the_lab.hosts:
        assert hosts[host.name]["bittrader_node_ip"] == host.ip
        assert ipaddress.ip_address(host.ip) in subnet


def test_lab_gives_ray_no_more_cpus_than_a_two_core_machine() -> None:
    assert sum(int(h["bittrader_num_cpus"]) for h in inventory_hosts().values()) <= 2  # type: ignore[call-overload]


def test_lab_and_molecule_addresses_lie_in_the_lab_cidr() -> None:
    group_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/all.yml").read_text())
    cidr = ipaddress.ip_network(group_vars["bittrader_cluster_cidr"])
    for platform in molecule_config()["platforms"]:
        assert ipaddress.ip_address(platform["ip"]) in cidr
        host_vars = yaml.safe_load((REPO / "molecule/shared/host_vars" / f"{platform['name']}.yml").read_text())
        assert host_vars["bittrader_node_ip"] == platform["ip"]
    for host in lab.Lab().hosts:
        assert ipaddress.ip_address(host.ip) in cidr


def test_lab_inventory_reaches_the_nodes_over_ssh_as_the_images_login() -> None:
    lab_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/ray_cluster.yml").read_text())
    assert lab_vars["ansible_connection"] == "ansible.builtin.ssh"
    assert lab_vars["ansible_user"] == lab.SSH_USER != "root"
    assert lab_vars["ansible_host"] == "{{ bittrader_node_ip }}"
    assert "BITTRADER_LAB_SSH_KEY" in lab_vars["ansible_ssh_private_key_file"]
    cfg = (REPO / "ansible.cfg").read_text()
    assert "pipelining = True" in cfg


def test_molecule_reaches_its_nodes_over_ssh_with_the_labs_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    provisioner = molecule_config()["provisioner"]
    # The podman driver writes ansible_connection as a host variable; connection_options replaces it,
    # and the linked lab group_vars give the rest (address, login, key).
    assert provisioner["connection_options"]["ansible_connection"] == "ansible.builtin.ssh"
    linked = (REPO / "molecule/default" / provisioner["inventory"]["links"]["group_vars"]).resolve()
    assert linked == (REPO / "inventory/lab/group_vars").resolve()
    assert (linked / "ray_cluster.yml").is_file()
    # Molecule's hosts are made by the lab's own code: the lab's SSH login mounted, SSH awaited.
    runs, waits = made_hosts(monkeypatch, create_argv(monkeypatch))
    mounts = [r[r.index("--volume") + 1] for r in runs if r[:2] == ["podman", "run"]]
    assert mounts == [lab.ssh_mount()] * 3
    assert mounts[0] == f"{lab.ssh_key()}.pub:/home/{lab.SSH_USER}/.ssh/authorized_keys:ro"
    assert waits == [(p["ip"], 22) for p in molecule_config()["platforms"]]


def made_hosts(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[list[list[str]], list[tuple[str, int]]]:
    """Run tools/lab.py as argv does, with podman and the waits recorded: podman commands, awaited ports."""
    assert argv[1] == str(REPO / "tools/lab.py"), argv
    runs: list[list[str]] = []
    waits: list[tuple[str, int]] = []

    def fake_run(cmd: list[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        runs.append(cmd)
        missing = cmd[1:3] in (["network", "exists"], ["container", "exists"])  # fresh hosts
        return subprocess.CompletedProcess(cmd, 1 if missing else 0)

    monkeypatch.setattr(lab, "run", fake_run)
    monkeypatch.setattr(lab, "wait_for_systemd", lambda name: None)
    monkeypatch.setattr(lab, "wait_for_port", lambda ip, port: waits.append((ip, port)) or 0.0)
    monkeypatch.setattr(lab, "ssh_key", lambda: Path("/cache/ssh/id_ed25519"))
    assert lab.main(argv[2:]) == 0
    return runs, waits


def test_molecule_creates_its_hosts_with_the_labs_tool_on_its_own_network(monkeypatch: pytest.MonkeyPatch) -> None:
    platforms = molecule_config()["platforms"]
    runs, _ = made_hosts(monkeypatch, create_argv(monkeypatch))
    assert ["podman", "network", "create", "--subnet", "10.89.77.0/24", "bittrader-molecule"] in runs
    started = [r for r in runs if r[:2] == ["podman", "run"]]
    assert [r[r.index("--name") + 1] for r in started] == [p["name"] for p in platforms]
    for run, platform in zip(started, platforms, strict=True):
        assert run[run.index("--ip") + 1] == platform["ip"] and run[run.index("--network") + 1] == platform["network"]
        assert run[run.index("--label") + 1] == "owner=molecule"
        assert run[-2:] == [platform["image"], platform["command"]]
        assert "--systemd=always" in run and "--cap-add=NET_ADMIN" in run and "--cap-add=SYS_ADMIN" in run
    assert ipaddress.ip_address(platforms[0]["ip"]) in ipaddress.ip_network("10.89.77.0/24")


def test_molecule_destroys_exactly_its_hosts_and_network(monkeypatch: pytest.MonkeyPatch) -> None:
    runs, _ = made_hosts(monkeypatch, create_argv(monkeypatch, "destroy.yml"))
    assert runs == [["podman", "rm", "-f", "-t", "5", *(p["name"] for p in molecule_config()["platforms"])],
                    ["podman", "network", "rm", "-f", "bittrader-molecule"]]


def test_the_lab_verbs_make_the_labs_own_hosts_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    runs, waits = made_hosts(monkeypatch, ["python", str(REPO / "tools/lab.py"), "hosts-up"])
    assert ["podman", "network", "create", "--subnet", "10.89.42.0/24", "bittrader-lab"] in runs
    assert [r[r.index("--label") + 1] for r in runs if r[:2] == ["podman", "run"]] == ["project=bittrader-lab"] * 3
    assert waits == [(h.ip, 22) for h in lab.Lab().hosts]
    with pytest.raises(SystemExit, match="NAME=IP"):
        lab.lab_from_args(None, None, ["no-address"], None)


def test_image_layer_has_sshd_per_container_host_keys_and_a_sudo_login() -> None:
    text = lab.containerfile("BASE")
    assert text.startswith("FROM BASE\n")
    assert f"LABEL bittrader.image-revision={lab.IMAGE_REVISION}\n" in text
    assert "openssh-server" in lab.PACKAGES.split(",")
    assert "rm -f /etc/ssh/ssh_host_*" in text and "ExecStartPre=/usr/bin/ssh-keygen -A" in text
    assert "PasswordAuthentication no" in text and "PermitRootLogin no" in text
    assert f"useradd --create-home --shell /bin/bash {lab.SSH_USER}" in text
    assert f"{lab.SSH_USER} ALL=(ALL:ALL) NOPASSWD: ALL" in text
    assert text.rstrip().endswith('CMD ["/sbin/init"]')


def test_ssh_key_is_made_once_and_mounted_as_authorized_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITTRADER_CACHE", str(tmp_path))
    monkeypatch.delenv("BITTRADER_LAB_SSH_KEY", raising=False)  # ./lab exports it for Molecule
    key = lab.ssh_key()
    assert key == tmp_path / "bittrader-lab" / "ssh" / "id_ed25519"
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    pub = key.with_suffix(".pub").read_text()
    assert pub.startswith("ssh-ed25519 ")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert lab.ssh_key() == key and key.with_suffix(".pub").read_text() == pub  # kept, not remade
    assert lab.ssh_mount() == f"{key}.pub:/home/{lab.SSH_USER}/.ssh/authorized_keys:ro"
    assert lab.lab_env()["BITTRADER_LAB_SSH_KEY"] == str(key)
    monkeypatch.setenv("BITTRADER_LAB_SSH_KEY", "/elsewhere/key")
    assert lab.lab_env()["BITTRADER_LAB_SSH_KEY"] == "/elsewhere/key"  # one given is kept


def test_process_labels_name_rays_parts() -> None:
    venv = "/home/bittrader/.bittrader_worker/venv"
    assert lab.process_label("ray::IDLE", ["ray::IDLE"]) == "ray::IDLE"
    assert lab.process_label("ray::evaluate", ["ray::evaluate_task"]) == "ray::evaluate_task"
    assert lab.process_label("raylet", [f"{venv}/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet",
                                        "--raylet_socket_name=x"]) == "raylet"
    assert lab.process_label("python3", [f"{venv}/bin/python3", "-u", f"{venv}/lib/ray/_private/log_monitor.py",
                                         "--x"]) == "log_monitor.py"
    assert lab.process_label("python3", [f"{venv}/bin/python3", f"{venv}/bin/ray", "start", "--block"]) == "ray start"
    assert lab.process_label("python", [f"{venv}/bin/python", "-m", "bittrader_workload.job"]) == (
        "python -m bittrader_workload.job"
    )
    assert lab.process_label("python3", [
        "ray-dashboard-NodeHead-0 (/v/bin/python3 -c \"from multiprocessing.forkserver import main; "
        "main(25, 27, ['ray', '/v/lib/python3.11/site-packages']})\")"
    ]) == "ray-dashboard-NodeHead-0"
    assert lab.process_label("kworker/0:1", []) == "kworker/0:1"
    assert lab.process_label("sshd", ["/usr/sbin/sshd", "-D"]) == "sshd"


def test_cpu_profile_counts_the_ticks_used_in_the_window() -> None:
    before = {"ticks_per_s": 100, "procs": {
        "10": ["raylet", ["/x/raylet"], 500],
        "11": ["python3", ["/v/python3", "/v/dashboard.py"], 1000],
        "12": ["ray::IDLE", ["ray::IDLE"], 50],      # ends in the window: not seen
        "13": ["sleep", ["sleep", "9"], 7],           # pid reused by another program: counts from zero
    }}
    after = {"ticks_per_s": 100, "procs": {
        "10": ["raylet", ["/x/raylet"], 530],
        "11": ["python3", ["/v/python3", "/v/dashboard.py"], 1250],
        "13": ["ray::evaluate", ["ray::evaluate"], 40],
        "14": ["ray::evaluate", ["ray::evaluate"], 60],  # started in the window
        "15": ["bash", ["bash"], 3],
    }}
    got = lab.cpu_profile(before, after)
    assert got == {"dashboard.py": 2.5, "ray::evaluate": 1.0, "raylet": 0.3, "bash": 0.03}
    assert list(got) == ["dashboard.py", "ray::evaluate", "raylet", "bash"]  # largest first
    table = lab.profile_table({"seconds": 10.0, "nodes": {"bt-head": got}})
    assert "bt-head        total" in table and "38.3 %" in table  # 3.83 s of 10 s
    assert "bash" not in table  # under 0.05 s


def test_profile_verb_samples_each_node_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    ticks = iter(range(0, 1000, 100))

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd[2])
        sample = {"ticks_per_s": 100, "procs": {"1": ["raylet", ["raylet"], next(ticks)]}}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(sample), stderr="")

    monkeypatch.setattr(lab, "run", fake_run)
    monkeypatch.setattr(lab.time, "sleep", lambda s: None)
    out = tmp_path / "p.json"
    report = lab.profile(lab.Lab(), 5.0, out)
    assert calls == ["bt-head", "bt-worker1", "bt-worker2"] * 2
    assert report["nodes"] == {"bt-head": {"raylet": 3.0}, "bt-worker1": {"raylet": 3.0}, "bt-worker2": {"raylet": 3.0}}
    assert json.loads(out.read_text())["schema"] == "bittrader-cpu-profile/1"


def test_wait_for_port_waits_for_a_listener_on_loopback() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert lab.wait_for_port("127.0.0.1", server.getsockname()[1], timeout=5) < 5
        port = server.getsockname()[1]
    with pytest.raises(SystemExit, match="not reachable"):
        lab.wait_for_port("127.0.0.1", port, timeout=0.5)


def test_ceiling_report_separates_the_machine_from_rays_background() -> None:
    report = lab.ceiling_report([1.0, 1.2], [[1.2, 1.2], [1.3, 1.1]], [[1.1, 1.1], [1.1, 1.1]])
    assert report["alone_s"] == 1.1 and report["both_workers_ray_idle_s"] == 1.2
    assert report["efficiency_ceiling"] == round(1.1 / 1.2, 3)
    assert report["efficiency_ceiling_without_ray"] == 1.0
    assert report["ray_idle_cost"] == round(1.2 / 1.1 - 1, 3)
    assert report["evaluations"] == {"alone": 2, "pair": 4, "quiet": 4}
    assert "efficiency ceiling of 2 CPUs: 0.917" in lab.ceiling_table(report)
    empty = lab.ceiling_report([], [], [])
    assert empty["efficiency_ceiling"] is None and empty["ray_idle_cost"] is None


def test_serial_command_runs_the_reference_job_as_the_service_user() -> None:
    cmd = lab.serial_command("bt-worker1", 5000, 3)
    assert cmd[:7] == ["podman", "exec", "bt-worker1", "runuser", "-u", lab.SERVICE_USER, "--"]
    assert "/home/bittrader/.bittrader_worker/venv/bin/python" in cmd
    assert lab.node_venv_python("bt-head") == "/home/bittrader/.bittrader_head/venv/bin/python"
    assert cmd[cmd.index("-m") + 1] == "bittrader_workload.job"
    assert {"--mode=serial", "--candles=5000", "--params=3", f"--results={lab.CEILING_DIR}/r.jsonl"} <= set(cmd)


def test_ceiling_restarts_ray_and_cleans_up_when_a_run_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    monkeypatch.setattr(lab, "run", lambda cmd, **kw: steps.append(" ".join(cmd[2:4] + cmd[-2:])))
    runs: list[list[str]] = []

    def durations(names: list[str], candles: int, params: int) -> dict[str, list[float]]:
        runs.append(names)
        if len(runs) == 3:  # the run with Ray stopped
            raise SystemExit("boom")
        return {name: [1.0] for name in names}

    monkeypatch.setattr(lab, "serial_durations", durations)
    with pytest.raises(SystemExit):
        lab.ceiling(lab.Lab(), 1000, 2, tmp_path / "ceiling.json")
    assert runs == [["bt-worker1"], ["bt-worker1", "bt-worker2"], ["bt-worker1", "bt-worker2"]]
    starts = [s for s in steps if " start " in f" {s} "]
    assert len(starts) == 3  # every node's Ray service started again
    assert steps[-2:] == [f"bt-worker1 rm -rf {lab.CEILING_DIR}", f"bt-worker2 rm -rf {lab.CEILING_DIR}"]
    assert not (tmp_path / "ceiling.json").exists()


def test_ceiling_writes_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "run", lambda cmd, **kw: None)
    monkeypatch.setattr(lab, "serial_durations", lambda names, c, p: {n: [1.0 + 0.1 * (len(names) - 1)] for n in names})
    report = lab.ceiling(lab.Lab(), 1000, 2, tmp_path / "ceiling.json")
    assert json.loads((tmp_path / "ceiling.json").read_text()) == report
    assert report["efficiency_ceiling"] == round(1.0 / 1.1, 3) and report["candles"] == 1000


def test_every_test_node_keeps_one_mac_address_made_from_its_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted or reconnected container must come back with its MAC, or the other nodes' ARP
    entries point at the old one for about 8 s (seen: worker2 could not reach worker1 after a cut)."""
    assert lab.mac_for("10.89.77.11") == "02:42:0a:59:4d:0b"
    macs = [h.mac for h in lab.Lab().hosts]
    assert len(set(macs)) == len(macs)
    runs, _ = made_hosts(monkeypatch, create_argv(monkeypatch))
    started = [r for r in runs if r[:2] == ["podman", "run"]]
    for run, platform in zip(started, molecule_config()["platforms"], strict=True):
        assert run[run.index("--mac-address") + 1] == lab.mac_for(platform["ip"])


def test_optimize_verb_runs_the_optimize_playbook_with_the_extra_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(lab, "playbook", lambda path, *extra: calls.append((path, *extra)))
    assert lab.main(["optimize", "-e", "optimize_trials=12"]) == 0
    assert calls == [("playbooks/optimize.yml", "-e", "optimize_trials=12")]
    script = (REPO / "lab").read_text(encoding="utf-8")
    assert "|optimize|" in script  # ./lab passes the verb on to tools/lab.py


def test_lab_test_runs_every_molecule_scenario_once_default_first_and_uninstall_last() -> None:
    """The order is the test command's (molecule test -s A -s B runs them as named), not file names."""
    script = (REPO / "lab").read_text(encoding="utf-8")
    (line,) = [x for x in script.splitlines() if x.startswith("MOLECULE_SCENARIOS=")]
    named = line.split("=", 1)[1].strip('"').split()
    scenarios = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
    assert sorted(named) == scenarios and len(set(named)) == len(named)
    assert named[0] == "default" and named[-1] == "uninstall"
    assert "molecule test $(printf -- '-s %s ' $MOLECULE_SCENARIOS)" in script
    assert molecule_config()["shared_state"] is True
    for name in scenarios:  # each runnable alone: default's create and destroy run around it
        sequence = yaml.safe_load((REPO / "molecule" / name / "molecule.yml").read_text())["scenario"]["test_sequence"]
        assert sequence[0] == "create" and sequence[-1] == "destroy" and "verify" in sequence, (name, sequence)
        assert any((REPO / "molecule" / name / "tests").glob("test_*.py")), name


def test_molecule_verifier_options_are_what_molecule_can_quote() -> None:
    """Molecule turns the verifier's options into pytest's arguments and quotes each one with shlex, which
    raises on a number: `durations: 10` failed every scenario's verify. Strings and true only."""
    import shlex

    from molecule import util

    config = yaml.safe_load((lab.REPO / ".config" / "molecule" / "config.yml").read_text())
    options = config["verifier"]["options"]
    assert all(isinstance(v, str) or v is True for v in options.values()), options
    argv = util.dict2args(options)
    assert "--durations" in shlex.join(["pytest", *argv])


def test_the_side_chain_starts_before_the_image_and_its_bad_input_stage_waits_for_it() -> None:
    """On a fresh machine the image's debootstrap waits on the network: the side chain's CPU-bound
    stages use that time; only the bad-input stage needs the image (its containers)."""
    script = (REPO / "lab").read_text(encoding="utf-8")
    run_tests = script[script.index("run_tests() {"):]
    assert run_tests.index("./lab _side-tests") < run_tests.index('stage "test image"')
    assert run_tests.index('stage "test image"') < run_tests.index('touch "$LAB_WORK/image.ok"')
    assert run_tests.index('touch "$LAB_WORK/image.ok"') < run_tests.index("stage molecule molecule_tests")
    side = script[script.index("side_tests() {"):script.index("run_tests() {")]
    assert side.index('"$LAB_WORK/image.ok"') < side.index('stage "bad input"')
    assert "export LAB_WORK" in run_tests


def lab_functions(*names: str) -> str:
    """The bash source of ./lab's functions NAMES (each from `NAME() {` to its closing `}`)."""
    script = (REPO / "lab").read_text(encoding="utf-8")
    parts = []
    for name in names:
        start = script.index(f"\n{name}() {{\n") + 1
        parts.append(script[start:script.index("\n}\n", start) + 3])
    return "".join(parts)


def test_a_stage_records_its_seconds_status_and_the_cpu_its_own_processes_used(tmp_path: Path) -> None:
    """The summary's CPU columns (where CI's minutes go): a stage that burns about 1 s of CPU in a child
    process and then fails is recorded with that CPU as its own, and the machine's at least as much."""
    times = tmp_path / "times"
    burn = "import time; end = time.process_time() + 1.0\nwhile time.process_time() < end: pass"
    script = (lab_functions("cpu_now", "cpu_busy", "containers_cpu_ms", "times_s", "stage")
              + f'LAB_TIMES={times}\nstage "burn" python3 -c "{burn}" || exit_code=$?\n'
              + 'stage "quick" true\necho "exit ${exit_code:-0}"\n')
    burn_fail = script.replace(f'python3 -c "{burn}"', f'sh -c \'python3 -c "{burn}"; exit 3\'')
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", burn_fail], capture_output=True, text=True, check=True)
    assert "== burn: " in done.stdout and "FAILED (exit 3)" in done.stdout and done.stdout.endswith("exit 3\n")
    rows = [line.split("\t") for line in times.read_text().splitlines()]
    assert [r[0] for r in rows] == ["burn", "quick"] and [r[2] for r in rows] == ["3", "0"]
    seconds, own, machine, containers = (rows[0][i] for i in (1, 4, 5, 6))
    assert int(own) >= 1 and int(machine) >= int(own) - 1 and int(containers) >= 0 and int(seconds) >= 0
    assert rows[1][4] == "0"
    parse = lab_functions("times_s") + "printf '0m1.50s 0m0.25s\\n1m2.00s 0m3.00s\\n' | times_s"
    assert subprocess.run(["bash", "-c", parse], capture_output=True, text=True, check=True).stdout == "66\n"
