"""``fedretrain``: the operator's command line for a run folder's registry and report.

Examples
--------
    fedretrain models list outputs/2025-01-31/12-00-00
    fedretrain models show RUN_DIR champion
    fedretrain models diff RUN_DIR v1 v3
    fedretrain models promote RUN_DIR 3 --reason "validated offline"
    fedretrain models rollback RUN_DIR [--to 1]
    fedretrain models export RUN_DIR champion model.safetensors
    fedretrain models check RUN_DIR
    fedretrain models events RUN_DIR [--kind promote]
    fedretrain report RUN_DIR
    fedretrain privacy RUN_DIR
    fedretrain resume RUN_DIR
    fedretrain compare scenario=sine_flip --policies periodic,triggered --out runs/sea
    fedretrain certs init CREDS --host superlink.example.org
    fedretrain certs site CREDS site-0 site-1 site-2
    fedretrain server --run-dir RUN_DIR --creds CREDS scenario=deployed [OVERRIDES...]
    fedretrain agent --superlink HOST:9092 --data DIR --site-id 0 --ca ca.crt --key site-0.key

A version is named by its number (``3`` or ``v3``) or an alias (``champion``, ``candidate``).
Errors print one line and exit with status 2, having changed nothing; ``models check`` exits
with 1 when it finds a problem. ``fedretrain compare`` is ``fedretrain-compare`` under another
name: every argument after ``compare`` goes to it unchanged. Simulations run with
``fedretrain-simulate`` (or ``python -m fedretrain``).

Each command group lives in its own module and adds its parsers with ``register``:
:mod:`~fedretrain.cli.models`, :mod:`~fedretrain.cli.run` (report, privacy, resume, compare)
and :mod:`~fedretrain.cli.deploy` (certs, server, agent).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedretrain import __version__
from fedretrain.cli import deploy, models, run
from fedretrain.cli.errors import CliError
from fedretrain.registry import RegistryError

__all__ = ["CliError", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``fedretrain`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (CliError, RegistryError) as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"fedretrain: error: {message}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedretrain",
        description="Inspect and steer a fedretrain run folder: its model registry and report.",
    )
    parser.add_argument("--version", action="version", version=f"fedretrain {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.register(commands)
    run.register(commands)
    deploy.register(commands)
    return parser
