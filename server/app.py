"""The ServerApp, for ``flwr run .`` and for in-process simulation.

Under ``flwr run`` the config is composed here from ``conf/`` and the run config's
``overrides`` string; ``fedretrain-simulate`` composes it with Hydra and calls
:func:`build_server_app` instead.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedretrain.config import compose, to_typed, to_yaml
from server.loop import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    cfg = compose(overrides)
    to_typed(cfg)  # fail with every problem listed before any site is asked to train
    run_dir = str(context.run_config.get("run-dir", "")) or time.strftime(
        f"outputs/flwr-run-{context.run_id}-%Y-%m-%d_%H-%M-%S"
    )
    run_federation(grid, to_yaml(cfg), Path(run_dir).resolve())


def build_server_app(config_yaml: str, run_dir: Path) -> ServerApp:
    """A ServerApp bound to an already composed and validated config."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, config_yaml, run_dir)

    return server_app
