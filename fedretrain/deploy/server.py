"""``fedretrain server``: Flower's SuperLink with TLS and SuperNode authentication, the sites'
keys registered, and the retraining app submitted with the composed Hydra config.

One run folder holds everything of a deployment: the registry, timeline and checkpoints the
ServerApp writes (as in simulation), and ``deploy/``: the SuperLink's database (its node
registrations and runs), the ``FLWR_HOME`` folders of the SuperLink and of the ``flwr`` CLI,
the app folder submitted with ``flwr run``, the overrides the run started with, and the
SuperLink's log. Started again on the same folder, the server resumes the run from its last
checkpoint (``fedretrain.checkpoint``) with the overrides it started with.

The server's own process runs the SuperLink as a child and ``flwr run --stream`` in the
foreground; it returns when the run ends, stopping the SuperLink and what it started.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from fedretrain.atomic import atomic_replace
from fedretrain.checkpoint import STATE_FILE
from fedretrain.config import check_override_keys, compose
from fedretrain.deploy.certs import SiteKeys, register_sites, write_superlink_connection
from fedretrain.deploy.launch import Launched, flower_bin, flower_env, wait_for_port
from fedretrain.errors import ConfigError
from fedretrain.preflight import to_typed
from fedretrain.simulate import FOLDER_STREAM

CONNECTION = "fedretrain"
DEPLOY_DIR = "deploy"
OVERRIDES_FILE = "overrides.json"


class DeployError(RuntimeError):
    """A deployment that cannot start as asked; the message says what to fix."""


@dataclass(frozen=True)
class ServerOptions:
    """What ``fedretrain server`` was asked for."""

    run_dir: Path
    creds: Path  # ca.crt, server.pem, server.key and the sites' *.pub (fedretrain certs)
    overrides: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 9092
    startup_timeout_s: float = 60.0


def check_config(overrides: Sequence[str]) -> list[str]:
    """The composed config's problems for a deployment; empty when it can start."""
    problems = check_override_keys(overrides)
    if problems:
        return problems
    try:
        cfg = compose(overrides)
        to_typed(cfg)
    except ConfigError as err:
        return list(err.problems)
    stream = cfg.scenario.stream
    if stream is None or str(stream.get("_target_")) != FOLDER_STREAM:
        target = None if stream is None else stream.get("_target_")
        return [
            f"scenario.stream is {target}: a deployment reads the sites' folders, so run "
            "scenario=deployed (and set its schema: scenario.stream.features, .label, .labels)"
        ]
    return []


def site_public_keys(creds: Path) -> list[SiteKeys]:
    """Every site's key pair in ``creds`` (``NAME.pub`` beside ``NAME.key``), by name."""
    keys = []
    for public in sorted(creds.glob("*.pub")):
        keys.append(SiteKeys(public.stem, public.with_suffix(".key"), public))
    return keys


def superlink_command(
    ca: Path, cert: Path, key: Path, database: Path, host: str, port: int
) -> list[str]:
    """The SuperLink a federation runs: TLS, SuperNode authentication, its state in
    ``database``, apps run in this environment."""
    return [
        flower_bin("flower-superlink"),
        "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
        "--enable-supernode-auth", "--database", str(database),
        "--host", host, "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def serve(options: ServerOptions, out: TextIO = sys.stdout) -> int:
    """Run the deployment to the end of its run; the exit status (0: the run completed)."""
    run_dir = options.run_dir.resolve()
    creds = options.creds.resolve()
    files = {name: creds / name for name in ("ca.crt", "server.pem", "server.key")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise DeployError(
            f"credentials missing: {missing}; make them with `fedretrain certs init {creds}`"
        )
    sites = site_public_keys(creds)
    if not sites:
        raise DeployError(
            f"no site public keys (*.pub) in {creds}: add sites with `fedretrain certs site "
            f"{creds} NAME`"
        )
    overrides = _overrides(run_dir, list(options.overrides), len(sites))
    problems = check_config(overrides)
    if problems:
        raise DeployError(str(ConfigError(problems)))
    resume = (run_dir / "checkpoint" / STATE_FILE).exists()

    deploy = run_dir / DEPLOY_DIR
    deploy.mkdir(parents=True, exist_ok=True)
    cli_home = deploy / "cli-home"
    dial = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    write_superlink_connection(cli_home, CONNECTION, f"{dial}:{options.port}", files["ca.crt"])
    app = write_app(deploy / "app")
    superlink = Launched.start(
        "superlink",
        superlink_command(
            files["ca.crt"],
            files["server.pem"],
            files["server.key"],
            deploy / "superlink.db",
            options.host,
            options.port,
        ),
        flower_env(deploy / "superlink-home"),
        deploy / "superlink.log",
    )
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, _raise_interrupt)
    try:
        wait_for_port(dial, options.port, superlink, options.startup_timeout_s)
        _say(out, f"SuperLink on {options.host}:{options.port} (log: {superlink.log})")
        for r in register_sites(sites, CONNECTION, flwr_home=cli_home, flwr=flower_bin("flwr")):
            state = "already registered" if r.already_registered else f"node {r.node_id}"
            _say(out, f"site {r.site}: {state}")
        _say(out, ("resuming " if resume else "starting ") + f"the run in {run_dir}")
        return _run(app, cli_home, overrides, run_dir, resume, superlink, out)
    finally:
        superlink.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    app: Path,
    cli_home: Path,
    overrides: list[str],
    run_dir: Path,
    resume: bool,
    superlink: Launched,
    out: TextIO,
) -> int:
    """Submit the app with ``flwr run --stream`` and wait for it; the exit status."""
    run_config = (
        f"overrides={json.dumps(shlex.join(overrides))} run-dir={json.dumps(str(run_dir))} "
        f"resume={'true' if resume else 'false'}"
    )
    env = flower_env(cli_home)
    flwr = flower_bin("flwr")
    command = [flwr, "run", str(app), CONNECTION, "--run-config", run_config, "--stream"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    run_id = None
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        superlink.note_tree()
        if run_id is None and "Successfully started run" in line:
            run_id = line.rsplit(" ", 1)[-1].strip()
        _say(out, line.rstrip("\n"))
    proc.wait()
    status = _run_status(flwr, env, run_id) if run_id else None
    if status != "finished:completed" or not (run_dir / "summary.json").exists():
        _say(out, f"the run ended as {status or 'never started'}; SuperLink log:\n")
        _say(out, superlink.tail())
        return 1
    return 0


def _run_status(flwr: str, env: dict[str, str], run_id: str) -> str | None:
    """The SuperLink's status of ``run_id`` (``finished:completed`` when it went well)."""
    for _ in range(20):  # the status may lag the end of the stream by a moment
        proc = subprocess.run(
            [flwr, "ls", CONNECTION, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        try:
            runs = json.loads(proc.stdout[proc.stdout.index("{") :]).get("runs", [])
        except ValueError:
            runs = []
        status = {str(r.get("run-id")): str(r.get("status")) for r in runs}.get(run_id)
        if status is not None and status.startswith("finished"):
            return status
        time.sleep(0.5)
    return None


def _overrides(run_dir: Path, given: list[str], num_sites: int) -> list[str]:
    """The run's overrides: those it started with when resuming (different ones are refused),
    else ``given`` with ``runtime.num_clients`` set to the number of sites unless given."""
    saved = run_dir / DEPLOY_DIR / OVERRIDES_FILE
    if saved.exists():
        started = json.loads(saved.read_text())
        if given and given != started["given"]:
            raise DeployError(
                f"{run_dir} was started with overrides {started['given']}; restart it with the "
                "same overrides (or none), or start a new run in another folder"
            )
        return list(started["overrides"])
    overrides = list(given)
    if not any(o.lstrip("+").startswith("runtime.num_clients=") for o in overrides):
        overrides.append(f"runtime.num_clients={num_sites}")
    text = json.dumps({"given": given, "overrides": overrides}, indent=1)
    saved.parent.mkdir(parents=True, exist_ok=True)
    _write_text(saved, text)
    return overrides


def write_app(folder: Path) -> Path:
    """The Flower app folder ``flwr run`` submits: a ``pyproject.toml`` naming our ServerApp
    and ClientApp, which come from the fedretrain installed on each side (the SuperLink runs
    without installing dependencies; the sites have fedretrain installed)."""
    folder.mkdir(parents=True, exist_ok=True)
    pyproject = textwrap.dedent(
        """\
        # Written by fedretrain server: the app `flwr run` submits to the SuperLink.
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "fedretrain-app"
        version = "1.0.0"
        description = "fedretrain's retraining ServerApp and ClientApp"
        license = "Apache-2.0"
        dependencies = []

        [tool.hatch.build.targets.wheel]
        packages = ["."]

        [tool.flwr.app]
        publisher = "fedretrain"
        fab-include = ["fedretrain_app.py"]

        [tool.flwr.app.components]
        serverapp = "fedretrain_app:serverapp"
        clientapp = "fedretrain_app:clientapp"

        [tool.flwr.app.config]
        overrides = ""
        run-dir = ""
        resume = false
        """
    )
    shim = textwrap.dedent(
        '''\
        """fedretrain's ServerApp and ClientApp, from the fedretrain installed here."""

        from clients.app import app as clientapp
        from server.app import app as serverapp

        __all__ = ["clientapp", "serverapp"]
        '''
    )
    for name, text in (("pyproject.toml", pyproject), ("fedretrain_app.py", shim)):
        _write_text(folder / name, text)
    return folder


def _write_text(path: Path, text: str) -> None:
    atomic_replace(path, lambda tmp: tmp.write_text(text))


def _say(out: TextIO, line: str) -> None:
    print(line, file=out, flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
