"""``fedretrain agent``: one site's Flower SuperNode serving fedretrain's ClientApp on the
site's own data folder.

The agent runs ``flower-supernode`` with TLS (the federation's CA) and the site's
authentication key, and tells the ClientApp where the data is through the node config
(``data-dir``, ``site-id``, ``ledger-dir``). Files dropped into the folder become the data of
the next monitoring period; bad files and rows are quarantined and reported to the server
(:mod:`fedretrain.deploy.folder`). The agent's own state (Flower's home, the privacy ledger)
lives in ``--state-dir``, by default ``DATA/.fedretrain-agent`` (hidden names in the data
folder are never read as data).

A SuperNode that exits because the SuperLink is unreachable is started again after a pause. So
is one whose key the SuperLink does not know yet: the server registers the sites' keys after
its SuperLink is up, and an operator may register a new site's key after starting its agent;
the agent says that it waits for its key, and tries again with a growing pause (up to
:data:`MAX_WAIT_S`). One refused for its certificate, or for having no key at all, needs the
operator: the agent exits with status 3 and says what to do.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedretrain.deploy.launch import Launched, flower_bin, flower_env
from fedretrain.deploy.trust import DEFAULT_ALLOWED

# What flower-supernode 1.41 logs when the SuperLink will not have it (docs/deployment-notes.md).
UNKNOWN_KEY = "[code: 2004]"  # not registered (yet): worth waiting for
MAX_WAIT_S = 60.0
REFUSED = {
    "[code: 2001]": "the SuperLink requires node authentication: pass --key with the site's "
    "private key (from `fedretrain certs site`)",
    "CERTIFICATE_VERIFY_FAILED": "the SuperLink's certificate was not signed by --ca: use the "
    "federation's ca.crt",
}


@dataclass(frozen=True)
class AgentOptions:
    superlink: str  # host:port
    data: Path
    site_id: int
    ca: Path
    key: Path
    state_dir: Path | None = None
    runtime_port: int = 9094  # the SuperNode's own local API; one per agent on a host
    restart_delay_s: float = 5.0
    allow_targets: tuple[str, ...] = DEFAULT_ALLOWED  # packages whose _target_s the site builds


def node_config(options: AgentOptions, ledger_dir: Path) -> str:
    """The ``--node-config`` string the ClientApp reads."""
    return (
        f'data-dir="{options.data.resolve()}" site-id={options.site_id} '
        f'ledger-dir="{ledger_dir.resolve()}" '
        f'allowed-targets="{",".join(options.allow_targets)}"'
    )


def run_agent(options: AgentOptions) -> int:
    """Serve until stopped (status 0) or refused for good by the SuperLink (status 3)."""
    for path, what in ((options.data, "--data"), (options.ca, "--ca"), (options.key, "--key")):
        if not path.exists():
            print(f"fedretrain agent: {what} {path} does not exist", file=sys.stderr)
            return 2
    if not options.data.is_dir():
        print(f"fedretrain agent: --data {options.data} is not a folder", file=sys.stderr)
        return 2
    state = (options.state_dir or options.data / ".fedretrain-agent").resolve()
    ledger = state / "privacy"
    ledger.mkdir(parents=True, exist_ok=True)
    command = [
        flower_bin("flower-supernode"),
        "--superlink",
        options.superlink,
        "--root-certificates",
        str(options.ca.resolve()),
        "--auth-supernode-private-key",
        str(options.key.resolve()),
        "--node-config",
        node_config(options, ledger),
        "--port",
        str(options.runtime_port),
    ]
    env = flower_env(state / "flwr-home")
    delay = options.restart_delay_s
    try:
        while True:
            print(f"fedretrain agent: site {options.site_id} -> {options.superlink}", flush=True)
            refused, unknown_key = _supervise(command, env, state / "supernode.log")
            if refused is not None:
                print(f"fedretrain agent: {refused}", file=sys.stderr, flush=True)
                return 3
            if unknown_key:
                print(
                    f"fedretrain agent: the SuperLink does not know this site's key yet; "
                    f"waiting for the server to register it (it registers the keys in its "
                    f"--creds when it starts; a new site's: `fedretrain certs register CREDS "
                    f"SITE.pub --superlink HOST:PORT`); trying again in {delay:.0f} s",
                    flush=True,
                )
                time.sleep(delay)
                delay = min(2 * delay, MAX_WAIT_S)
                continue
            delay = options.restart_delay_s
            print(
                f"fedretrain agent: the SuperNode exited; starting it again in {delay:.0f} s",
                flush=True,
            )
            time.sleep(delay)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI turns it into this)
        return 0


def _supervise(command: list[str], env: dict[str, str], log: Path) -> tuple[str | None, bool]:
    """Run the SuperNode until it exits, its log echoed to our stdout; why it was refused for
    good (or None), and whether its key was unknown. Whatever it started (its detached
    SuperExec) is stopped with it."""
    offset = log.stat().st_size if log.exists() else 0
    node = Launched.start("supernode", command, env, log)
    refused, unknown_key = None, False
    try:
        while True:
            exited = not node.alive()
            with log.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            text = chunk.decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            for marker, advice in REFUSED.items():
                if marker in text and refused is None:
                    refused = advice
            unknown_key = unknown_key or UNKNOWN_KEY in text
            if exited:
                break
            node.note_tree()
            time.sleep(0.5)
    finally:
        node.stop()
    return refused, unknown_key
