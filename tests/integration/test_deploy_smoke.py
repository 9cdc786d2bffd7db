"""Deployment on loopback: a real SuperLink with TLS and SuperNode authentication, two registered
sites, one unregistered site that is refused, and one round of this repo's app through
``flwr run``.

Every credential comes from :mod:`fedretrain.deploy.certs`. The SuperLink, the SuperNodes and
the ``flwr`` CLI each get their own ``FLWR_HOME`` under ``tmp_path`` and free ports, so nothing
of the developer's is read or changed. Every process started here, and everything they start,
is stopped at the end. The command lines are those of ``docs/deployment-notes.md``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedretrain.deploy.certs import (
    make_ca,
    make_server_certificate,
    make_site_keys,
    register_sites,
    write_superlink_connection,
)
from fedretrain.deploy.launch import Launched, flower_env, wait_for_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # flwr, flower-superlink, flower-supernode beside python
CONNECTION = "fedretrain-smoke"
RUN_TIMEOUT_S = 150

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(), reason="finds child processes in /proc"
    ),
    pytest.mark.skipif(
        not (BIN / "flower-superlink").exists(), reason="flower-superlink not beside python"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Processes:
    """Processes started by this test (:class:`~fedretrain.deploy.launch.Launched`, which
    tracks the detached SuperExec trees too), each with its own ``FLWR_HOME`` and log."""

    logs: Path
    started: dict[str, Launched] = field(default_factory=dict)

    def start(self, name: str, command: list[str], home: Path) -> subprocess.Popen[bytes]:
        home.mkdir(parents=True, exist_ok=True)
        launched = Launched.start(name, command, flower_env(home), self.logs / f"{name}.log")
        self.started[name] = launched
        return launched.proc

    def log(self, name: str) -> str:
        launched = self.started.get(name)
        return launched.tail(chars=10**7) if launched else f"(no {name}.log)"

    def remember_children(self) -> None:
        """SuperExec runs detached: note the trees while their parents still live."""
        for launched in self.started.values():
            launched.note_tree()

    def stop_all(self) -> set[int]:
        """SIGTERM, then SIGKILL, every process tree started here; returns survivors."""
        for launched in self.started.values():
            launched.stop()
        return {pid for launched in self.started.values() for pid in launched.running()}


def _flwr(cli_env: dict[str, str], *args: str, timeout_s: float = 60) -> str:
    """Run the ``flwr`` CLI from the repo; its output, also when it hits ``timeout_s``."""
    try:
        proc = subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=REPO,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        partial = err.stdout or b""
        text = partial if isinstance(partial, str) else partial.decode(errors="replace")
        return f"{text}\n[flwr {args[0]} did not finish within {timeout_s} s]"
    return proc.stdout


def _json(output: str) -> dict:
    """The JSON object a ``flwr ... --format json`` printed, or ``{}``."""
    try:
        return json.loads(output[output.index("{") :])
    except ValueError:
        return {}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs=logs)
    try:
        yield procs
    finally:
        survivors = procs.stop_all()
        assert not survivors, f"processes left running: {sorted(survivors)}"


def test_tls_and_supernode_auth_admit_registered_sites_only(
    tmp_path: Path, processes: Processes
) -> None:
    start = time.monotonic()
    creds = tmp_path / "creds"
    ca = make_ca(creds)
    server = make_server_certificate(creds, ca)  # loopback names only
    keys = make_site_keys(creds, ["site-0", "site-1", "rogue"])
    port = _free_port()

    cli_home = tmp_path / "cli-home"
    write_superlink_connection(cli_home, CONNECTION, f"127.0.0.1:{port}", ca.cert)
    cli_env = flower_env(cli_home)

    processes.start(
        "superlink",
        [
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile",
            str(ca.cert),
            "--ssl-certfile",
            str(server.cert),
            "--ssl-keyfile",
            str(server.key),
            "--enable-supernode-auth",
            "--database",
            str(tmp_path / "superlink.db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        home=tmp_path / "superlink-home",
    )
    wait_for_port("127.0.0.1", port, processes.started["superlink"], timeout_s=30)

    t0 = time.monotonic()
    registered = register_sites(
        [keys["site-0"], keys["site-1"]], CONNECTION, flwr_home=cli_home, flwr=BIN / "flwr"
    )
    registration_s = time.monotonic() - t0
    assert [r.site for r in registered] == ["site-0", "site-1"]
    assert all(isinstance(r.node_id, int) and not r.already_registered for r in registered)
    node_ids = {str(r.node_id) for r in registered}
    again = register_sites([keys["site-0"]], CONNECTION, flwr_home=cli_home, flwr=BIN / "flwr")
    assert again[0].already_registered and again[0].node_id is None

    def supernode(name: str, private_key: Path, partition: int) -> subprocess.Popen[bytes]:
        return processes.start(
            name,
            [
                str(BIN / "flower-supernode"),
                "--superlink",
                f"127.0.0.1:{port}",
                "--root-certificates",
                str(ca.cert),
                "--auth-supernode-private-key",
                str(private_key),
                "--node-config",
                f"partition-id={partition} num-partitions=2",
                "--port",
                str(_free_port()),  # its own Runtime API, one per SuperNode
            ],
            home=tmp_path / f"{name}-home",
        )

    # An unregistered key is refused at activation and the SuperNode exits (no retries).
    rogue = supernode("rogue", keys["rogue"].private_key, 0)
    try:
        rogue.wait(timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the unregistered SuperNode kept running:\n{processes.log('rogue')}")
    rogue_log = processes.log("rogue")
    assert rogue.returncode == 1, rogue_log
    assert "Exit Code: 305" in rogue_log, rogue_log
    assert "[code: 2004] Failed to activate SuperNode." in rogue_log, rogue_log

    for i in range(2):
        supernode(f"site-{i}", keys[f"site-{i}"].private_key, i)
    deadline, nodes = time.monotonic() + 45, []
    while time.monotonic() < deadline:
        nodes = _json(_flwr(cli_env, "supernode", "ls", CONNECTION, "--format", "json")).get(
            "nodes", []
        )
        if sum(n["status"] == "online" for n in nodes) == 2:
            break
        time.sleep(1)
    processes.remember_children()
    # The SuperLink knows the two registered nodes, both online, and nothing of the rogue.
    assert {n["node-id"]: n["status"] for n in nodes} == dict.fromkeys(node_ids, "online"), (
        nodes,
        processes.log("site-0"),
    )

    run_dir = tmp_path / "run"
    run_output = _flwr(
        cli_env,
        "run",
        ".",
        CONNECTION,
        "--run-config",
        f'overrides="runtime.num_rounds=1 runtime.num_clients=2" run-dir="{run_dir}"',
        "--stream",
        timeout_s=RUN_TIMEOUT_S,
    )
    processes.remember_children()
    context = (
        f"flwr run:\n{run_output[-4000:]}\n\nsuperlink.log:\n{processes.log('superlink')[-4000:]}"
        f"\n\nsite-0.log:\n{processes.log('site-0')[-3000:]}"
    )
    match = re.search(r"Successfully started run (\d+)", run_output)
    assert match, context
    runs = _json(_flwr(cli_env, "ls", CONNECTION, "--format", "json")).get("runs", [])
    status = {r["run-id"]: r["status"] for r in runs}
    assert status == {match.group(1): "finished:completed"}, context
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["clients"] == 2, summary
    elapsed = time.monotonic() - start
    print(f"registering 2 sites took {registration_s:.1f} s; the whole test {elapsed:.0f} s")
