"""The ServerApp, for ``flwr run .`` and for in-process simulation.

Under ``flwr run`` the config is composed here from ``conf/`` and the run config's
``overrides`` string; ``fedretrain-simulate`` composes it with Hydra and calls
:func:`build_server_app` instead. Under ``flwr run`` the number of sites is the federation's
(``--federation-config num-supernodes=N``): ``runtime.num_clients`` follows it unless the
overrides set it, since the server would otherwise wait for nodes that never come. The run
config's ``resume = true`` (what ``fedretrain server`` submits after a restart) continues the
drift run in ``run-dir`` from its last checkpoint.
"""

from __future__ import annotations

import shlex
import time
from logging import WARNING
from pathlib import Path

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedretrain.config import (
    ConfigError,
    check_override_keys,
    compose,
    from_yaml,
    to_typed,
    to_yaml,
)
from server.controller import run_retraining
from server.loop import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    problems = check_override_keys(overrides)
    if problems:
        raise ConfigError(problems)
    nodes = _federation_size(grid)
    explicit = any(o.lstrip("+").startswith("runtime.num_clients=") for o in overrides)
    if nodes and not explicit:
        overrides.append(f"runtime.num_clients={nodes}")
    cfg = compose(overrides)
    wanted = cfg.runtime.num_clients
    if nodes and wanted != nodes:
        log(
            WARNING,
            f"runtime.num_clients={wanted} but the federation has {nodes} SuperNodes; the server "
            f"waits for {wanted} (forever in a simulation: set num-supernodes={wanted})",
        )
    to_typed(cfg)  # fail with every problem listed before any site is asked to train
    run_dir = str(context.run_config.get("run-dir", "")) or time.strftime(
        f"outputs/flwr-run-{context.run_id}-%Y-%m-%d_%H-%M-%S"
    )
    resume = str(context.run_config.get("resume", "false")).lower() == "true"
    run(grid, to_yaml(cfg), Path(run_dir).resolve(), resume)


def _federation_size(grid: Grid, timeout_s: float = 30.0, settle_s: float = 0.5) -> int:
    """Nodes connected once their count has held still for ``settle_s``; 0 if none came.

    A simulation registers all its nodes at once, right after the ServerApp starts.
    """
    deadline = time.monotonic() + timeout_s
    count, since = 0, time.monotonic()
    while time.monotonic() < deadline:
        now_count = len(list(grid.get_node_ids()))
        if now_count != count:
            count, since = now_count, time.monotonic()
        elif count and time.monotonic() - since >= settle_s:
            break
        time.sleep(0.1)
    return count


def build_server_app(config_yaml: str, run_dir: Path, resume: bool = False) -> ServerApp:
    """A ServerApp bound to an already composed and validated config."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run(grid, config_yaml, run_dir, resume)

    return server_app


def run(grid: Grid, config_yaml: str, run_dir: Path, resume: bool = False) -> dict[str, object]:
    """A drift scenario runs in monitoring periods; without one, a single training run.

    ``resume`` continues a drift run from its folder's last checkpoint.
    """
    if from_yaml(config_yaml).scenario.enabled:
        return run_retraining(grid, config_yaml, run_dir, resume=resume)
    if resume:
        raise ConfigError(["resume: only drift scenario runs checkpoint (scenario=...)"])
    return run_federation(grid, config_yaml, run_dir)
