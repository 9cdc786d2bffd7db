"""An agent started before its key is registered waits for it (issue 18, item 8), on loopback
with real processes: a SuperLink with TLS and SuperNode authentication, ``fedretrain agent``
with a key the SuperLink does not know, then the key registered as an operator would.

Before, the agent exited for good (status 3) on the SuperNode's first refusal, with advice to
register the key and start again, although the server registers its sites' keys only once its
SuperLink is up, seconds after agents may have started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_deploy_e2e import _port, launched  # noqa: F401
from test_deploy_e2e import pytestmark as PYTESTMARK

from fedretrain.deploy.certs import (
    make_ca,
    make_server_certificate,
    make_site_keys,
    register_sites,
    write_superlink_connection,
)
from fedretrain.deploy.launch import Launched, flower_env, wait_for_port
from fedretrain.deploy.server import superlink_command

BIN = Path(sys.executable).parent
CONNECTION = "fedretrain-wait"

pytestmark = PYTESTMARK  # the deployment tests' marks and skips


def _until(what: str, condition: object, timeout_s: float, *logs: Launched) -> None:
    deadline = time.monotonic() + timeout_s  # generous: a busy machine starts Flower slowly
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            tails = "\n\n".join(f"--- {p.name} ---\n{p.tail(4000)}" for p in logs)
            pytest.fail(f"{what}: not within {timeout_s} s\n{tails}")
        time.sleep(0.5)


def test_an_agent_waits_for_its_key_and_joins_once_it_is_registered(
    tmp_path: Path,
    launched: list[Launched],  # noqa: F811
) -> None:
    creds = tmp_path / "creds"
    ca = make_ca(creds)
    server = make_server_certificate(creds, ca)
    keys = make_site_keys(creds, ["site-0"])
    port = _port()
    superlink = Launched.start(
        "superlink",
        superlink_command(
            ca.cert, server.cert, server.key, tmp_path / "superlink.db", "127.0.0.1", port
        ),
        flower_env(tmp_path / "superlink-home"),
        tmp_path / "logs" / "superlink.log",
    )  # fmt: skip
    launched.append(superlink)
    wait_for_port("127.0.0.1", port, superlink, timeout_s=60)

    data = tmp_path / "site-0"
    data.mkdir()
    agent = Launched.start(
        "agent",
        [
            sys.executable, "-m", "fedretrain.cli", "agent", "--superlink", f"127.0.0.1:{port}",
            "--data", str(data), "--site-id", "0", "--ca", str(ca.cert),
            "--key", str(keys["site-0"].private_key), "--runtime-port", str(_port()),
        ],
        flower_env(tmp_path / "agent-home"),
        tmp_path / "logs" / "agent.log",
    )  # fmt: skip
    launched.append(agent)
    _until(
        "the agent says it waits for its key",
        lambda: "waiting for the server to register it" in agent.tail(10**6),
        120, agent,
    )  # fmt: skip
    assert agent.alive(), agent.tail()
    assert "[code: 2004]" in agent.tail(10**6)  # the SuperNode was refused, and not for good

    cli_home = tmp_path / "cli-home"
    write_superlink_connection(cli_home, CONNECTION, f"127.0.0.1:{port}", ca.cert)
    [registration] = register_sites(
        [keys["site-0"]], CONNECTION, flwr_home=cli_home, flwr=BIN / "flwr"
    )

    def online() -> bool:
        listed = subprocess.run(
            [str(BIN / "flwr"), "supernode", "ls", CONNECTION, "--format", "json"],
            env=flower_env(cli_home), capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        try:
            nodes = json.loads(listed[listed.index("{") :]).get("nodes", [])
        except ValueError:
            return False
        return [(n["node-id"], n["status"]) for n in nodes] == [
            (str(registration.node_id), "online")
        ]

    _until("the waiting agent's SuperNode is online", online, 180, agent, superlink)
    assert agent.alive()
