"""The Control API stays the operator's: nginx in front of the SuperLink publishes the Fleet API
only (issue 18, item 6), on loopback with real processes.

Flower 1.42 serves its Fleet (``/v1/fleet/``), Control (``/v1/control/``) and Runtime
(``/v1/runtime/``) APIs, all HTTPS, on one ``--host``/``--port`` (``--control-api-address`` and
``--fleet-api-address`` are deprecated no-ops), and the open-source Control API has no
authentication. So the SuperLink listens on 127.0.0.1 only and nginx, on the sites' address,
forwards ``/v1/fleet/`` and refuses every other path. Here 127.0.0.2 stands for the server's
public address. Checked:

- the ``flwr`` CLI pointed at the sites' address is refused (``flwr ls``,
  ``flwr supernode register``), as are Control and Runtime paths sent directly, also dressed as
  Fleet paths (``/v1/fleet/../control/...``), while the same calls work at the operator's
  address, 127.0.0.1;
- the SuperLink's own port is closed on the sites' address;
- a registered SuperNode dialling the sites' address comes online, and a round of this repo's
  app runs through the proxy (model pulls and pushes included); a 6 MB Fleet request, more than
  one of Flower's 5 MB array chunks, passes nginx's body limit.

The nginx ``server`` block is read from ``docs/deployment.md`` (Security), so the guide shows
what ran. Skipped when nginx is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_deploy_e2e import _port, launched  # noqa: F401
from test_deploy_e2e import pytestmark as PYTESTMARK

from fedretrain.deploy.certs import (
    RegistrationError,
    make_ca,
    make_server_certificate,
    make_site_keys,
    register_sites,
    write_superlink_connection,
)
from fedretrain.deploy.launch import Launched, flower_env, wait_for_port
from fedretrain.deploy.server import superlink_command

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITES_HOST = "127.0.0.2"  # the server's public address, as the sites see it
OPERATOR, SITES = "operator", "sites"  # two connections of one CLI home
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)


def _loopback_alias_bindable() -> bool:
    try:
        with socket.socket() as s:
            s.bind((SITES_HOST, 0))
    except OSError:
        return False
    return True


pytestmark = [
    *PYTESTMARK,  # the deployment tests' marks and skips
    pytest.mark.skipif(NGINX is None, reason="nginx not installed (apt-get install nginx)"),
    pytest.mark.skipif(
        not _loopback_alias_bindable(), reason=f"{SITES_HOST} is not a loopback address here"
    ),
]


def fleet_proxy_server_block(listen: str, superlink_port: int, creds: Path) -> str:
    """The nginx ``server`` block of ``docs/deployment.md`` (Security) for this machine: its
    sites' port, SuperLink port and credentials folder replaced, nothing else."""
    guide = (REPO / "docs" / "deployment.md").read_text()
    [block] = re.findall(r"```nginx\n(.*?)```", guide, flags=re.DOTALL)
    block = textwrap.dedent(block)
    for old, new in (
        ("listen 9443 ssl;", f"listen {listen} ssl;"),
        ("127.0.0.1:9092", f"127.0.0.1:{superlink_port}"),
        ("/srv/fed/creds/", f"{creds}/"),
    ):
        assert old in block, f"{old!r} is no longer in the guide's nginx block"
        block = block.replace(old, new)
    return block


def _nginx_conf(directory: Path, server_block: str) -> Path:
    """A whole nginx.conf around ``server_block`` that writes only under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    # As root, nginx's workers would run as nobody, who cannot enter pytest's tmp_path.
    user = (
        f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
        if os.geteuid() == 0
        else ""
    )
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    server = "\n".join(f"    {line}" if line else "" for line in server_block.splitlines())
    conf = directory / "nginx.conf"
    conf.write_text(
        f"daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n{user}\n"
        f"error_log {directory / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {directory / 'access.log'};\n{temp}\n{server}\n}}\n"
    )
    return conf


def _post(host: str, port: int, path: str, ca: Path, body: bytes = b"") -> tuple[int, str]:
    """POST ``path`` exactly as given (no client-side normalisation): status and body."""
    connection = http.client.HTTPSConnection(
        host, port, context=ssl.create_default_context(cafile=str(ca)), timeout=30
    )
    try:
        connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/protobuf"}
        )
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def _flwr(cli_home: Path, *args: str, timeout_s: float = 60) -> dict:
    """The JSON object of ``flwr ARGS --format json``, run from the repo (``{}`` if none)."""
    out = subprocess.run(
        [str(BIN / "flwr"), *args, "--format", "json"],
        cwd=REPO, env=flower_env(cli_home), capture_output=True, text=True, timeout=timeout_s,
    ).stdout  # fmt: skip
    try:
        return json.loads(out[out.index("{") :])
    except ValueError:
        return {}


def _until(what: str, condition: Callable[[], bool], timeout_s: float, *logs: Launched) -> None:
    deadline = time.monotonic() + timeout_s  # generous: a busy machine starts Flower slowly
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n\n".join(f"--- {p.name} ---\n{p.tail(4000)}" for p in logs)
            pytest.fail(f"{what}: not within {timeout_s} s\n{tails}")
        time.sleep(0.5)


def test_sites_reach_the_fleet_api_through_nginx_and_never_the_control_api(
    tmp_path: Path,
    launched: list[Launched],  # noqa: F811
) -> None:
    began = time.monotonic()
    creds = tmp_path / "creds"
    ca = make_ca(creds)
    server = make_server_certificate(creds, ca, [SITES_HOST])
    keys = make_site_keys(creds, ["site-0", "intruder"])
    port = _port()  # the SuperLink's, on 127.0.0.1
    with socket.socket() as s:
        s.bind((SITES_HOST, 0))
        sites_port = int(s.getsockname()[1])  # nginx's, on the sites' address

    superlink = Launched.start(
        "superlink",
        superlink_command(
            ca.cert, server.cert, server.key, tmp_path / "superlink.db", "127.0.0.1", port
        ),
        flower_env(tmp_path / "superlink-home"),
        tmp_path / "logs" / "superlink.log",
    )  # fmt: skip
    launched.append(superlink)
    block = fleet_proxy_server_block(f"{SITES_HOST}:{sites_port}", port, creds)
    nginx_dir = tmp_path / "nginx"
    conf = _nginx_conf(nginx_dir, block)
    nginx_cmd = [str(NGINX), "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log")]
    checked = subprocess.run([*nginx_cmd, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    nginx = Launched.start(
        "nginx", [*nginx_cmd, "-c", str(conf)], dict(os.environ), tmp_path / "logs" / "nginx.log"
    )
    launched.append(nginx)
    wait_for_port(SITES_HOST, sites_port, nginx, timeout_s=30)
    wait_for_port("127.0.0.1", port, superlink, timeout_s=60)

    # The SuperLink itself is not on the sites' address.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((SITES_HOST, port), timeout=5).close()

    cli_home = tmp_path / "cli-home"
    write_superlink_connection(cli_home, OPERATOR, f"127.0.0.1:{port}", ca.cert)
    write_superlink_connection(cli_home, SITES, f"{SITES_HOST}:{sites_port}", ca.cert)
    flwr = BIN / "flwr"

    # The Control API through the sites' address: refused by nginx, whatever the path says.
    with pytest.raises(RegistrationError, match="404 Not Found"):
        register_sites([keys["intruder"]], SITES, flwr_home=cli_home, flwr=flwr)
    listed = _flwr(cli_home, "ls", SITES)
    assert listed.get("success") is False and "404" in listed["error-message"], listed
    for path in (
        "/v1/control/list-runs",
        "/v1/control/register-node",
        "/v1/runtime/get-nodes",
        "/docs",
        "/v1/fleet/../control/list-runs",
        "/v1/fleet/%2e%2e/control/list-runs",
        "/v1/fleet/..%2fcontrol/list-runs",
    ):
        status, body = _post(SITES_HOST, sites_port, path, ca.cert)
        assert (status, "nginx" in body) == (404, True), (path, status, body)
    # ... and the operator's address serves it.
    assert _post("127.0.0.1", port, "/v1/control/list-runs", ca.cert)[0] == 200
    assert _flwr(cli_home, "ls", OPERATOR) == {"success": True, "runs": []}
    [registration] = register_sites([keys["site-0"]], OPERATOR, flwr_home=cli_home, flwr=flwr)

    # A Fleet request larger than one array chunk reaches Flower (its 401, not nginx's 413).
    status, body = _post(SITES_HOST, sites_port, "/v1/fleet/push-object", ca.cert, b"0" * (6 << 20))
    assert (status, "SuperNode authentication" in body) == (401, True), (status, body)

    site = Launched.start(
        "site-0",
        [
            str(BIN / "flower-supernode"), "--superlink", f"{SITES_HOST}:{sites_port}",
            "--root-certificates", str(ca.cert),
            "--auth-supernode-private-key", str(keys["site-0"].private_key),
            "--node-config", "partition-id=0 num-partitions=1", "--port", str(_port()),
        ],
        flower_env(tmp_path / "site-0-home"),
        tmp_path / "logs" / "site-0.log",
    )  # fmt: skip
    launched.append(site)

    def nodes() -> list[tuple[str, str]]:
        listed = _flwr(cli_home, "supernode", "ls", OPERATOR).get("nodes", [])
        return [(n["node-id"], n["status"]) for n in listed]

    # Online through nginx; the intruder's key was never registered.
    expected = [(str(registration.node_id), "online")]
    _until("site-0 online through nginx", lambda: nodes() == expected, 90, site, nginx)
    online_s = time.monotonic() - began

    run_dir = tmp_path / "run"
    overrides = "runtime.num_rounds=1 runtime.num_clients=1"
    streamed = subprocess.run(  # --stream: returns when the run ends
        [
            str(BIN / "flwr"),
            "run",
            ".",
            OPERATOR,
            "--run-config",
            f'overrides="{overrides}" run-dir="{run_dir}"',
            "--stream",
        ],
        cwd=REPO,
        env=flower_env(cli_home),
        capture_output=True,
        text=True,
        timeout=180,
    )
    superlink.note_tree()
    runs = _flwr(cli_home, "ls", OPERATOR).get("runs", [])
    assert [r["status"] for r in runs] == ["finished:completed"], (
        f"{streamed.stdout[-3000:]}\n--- superlink ---\n{superlink.tail()}"
    )
    assert json.loads((run_dir / "summary.json").read_text())["clients"] == 1
    access = (nginx_dir / "access.log").read_text()
    for path in ("pull-messages", "pull-object", "push-object", "push-messages"):
        assert f'"POST /v1/fleet/{path} HTTP/1.1" 200' in access, path
    took = time.monotonic() - began
    print(f"site online after {online_s:.0f} s, run done after {took - online_s:.0f} s more")
