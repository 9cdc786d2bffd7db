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
import sys
import time
from collections.abc import Iterable
from logging import WARNING
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from flwr.app import Context, Message
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from hydra.utils import instantiate

from fedretrain.config import (
    ConfigError,
    check_override_keys,
    compose,
    from_yaml,
    to_yaml,
)
from fedretrain.deploy.stream import FolderStream
from fedretrain.flower.cohorts import CohortGrid
from fedretrain.flower.federation import FlowerFederation, privacy_accounting, seed_sampling
from fedretrain.flower.logs import quiet_flower
from fedretrain.flower.polling import PollingGrid
from fedretrain.flower.simulation import wake_feeder
from fedretrain.flower.strategies import build_strategy
from fedretrain.monitor.monitor import Monitor, build_detectors
from fedretrain.monitor.private import noise_std_for
from fedretrain.monitor.trigger import TriggerPolicy
from fedretrain.preflight import to_typed
from fedretrain.registry import config_hash
from fedretrain.report import RunReport
from fedretrain.retraining.clustered import ClusteredController
from fedretrain.retraining.controller import Controller
from fedretrain.retraining.drift_watch import DriftWatch
from fedretrain.site import TaskModels, build_pool
from fedretrain.tracking import build_tracker

app = ServerApp()

# Flower's in-memory grid sleeps 0.1 s between polls for replies, once per message wave; its
# node side (the simulation engine's queue feeder) is woken at each push instead.
PULL_INTERVAL_S = 0.005


def polled(grid: Grid, interval_s: float) -> Grid:
    """``grid`` without Flower's long pauses: simulation's in-memory grid asks for a wave's
    replies every :data:`PULL_INTERVAL_S` and wakes the engine's feeder when it pushes
    (:func:`fedretrain.flower.simulation.wake_feeder`); the deployment grid (which sleeps 3 s
    between pulls) asks every ``interval_s`` (``runtime.poll_interval_s``)."""
    if hasattr(grid, "pull_interval"):  # simulation's in-memory grid
        grid.pull_interval = PULL_INTERVAL_S
        push = grid.push_messages

        def push_and_wake(messages: Iterable[Message]) -> Iterable[str]:
            ids = list(push(messages))
            wake_feeder()
            return ids

        grid.push_messages = push_and_wake  # type: ignore[method-assign]
        return grid
    return PollingGrid(grid, interval_s)


@app.main()
def main(grid: Grid, context: Context) -> None:
    quiet_flower()  # under flwr run: our line per round, no colour codes in the stream
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
            f"waits for {wanted}: in a deployment, start the missing SuperNodes; a simulation "
            f"never gets more, so set its num-supernodes={wanted}",
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


def build_server_app(
    config_yaml: str, run_dir: Path, resume: bool = False, workers: int | None = None
) -> ServerApp:
    """A ServerApp bound to an already composed and validated config; in a simulation on
    ``workers`` Flower nodes, fewer than the sites, each node runs a cohort of sites."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run(grid, config_yaml, run_dir, resume, workers=workers)

    return server_app


def run(
    grid: Grid,
    config_yaml: str,
    run_dir: Path,
    resume: bool = False,
    out: TextIO = sys.stdout,
    workers: int | None = None,
) -> dict[str, object]:
    """Build the retraining controller for the config and run it; the run's summary.

    A drift scenario runs in monitoring periods; without one, a static run is one period of
    exactly ``runtime.num_rounds`` rounds. ``resume`` continues either from its folder's last
    checkpoint. ``workers``: a simulation's Flower nodes, when fewer than its sites (each runs
    a cohort of sites, :class:`~fedretrain.flower.cohorts.CohortGrid`).
    """
    cfg = from_yaml(config_yaml)  # parsed once here; config_yaml is what travels to the sites
    grid = polled(grid, cfg.runtime.poll_interval_s)
    if workers is not None and workers < cfg.runtime.num_clients:
        grid = CohortGrid(grid, cfg.runtime.num_clients, workers)
    static = not cfg.scenario.enabled
    seed_sampling(cfg.runtime.seed)
    report = RunReport(run_dir, cfg.runtime.num_rounds if static else 0, out)
    if not resume:
        (run_dir / "config.yaml").write_text(config_yaml)
    if static:
        pool = build_pool(cfg.task.dataset)
        input_shape, num_classes, change_points = pool.input_shape, pool.num_classes, []
        deployed, site_changes, truth = False, None, None
    else:
        stream = instantiate(cfg.scenario.stream)
        input_shape, num_classes = stream.input_shape, stream.num_classes
        deployed = isinstance(stream, FolderStream)
        schedule = instantiate(cfg.scenario.schedule)(
            num_sites=cfg.runtime.num_clients,
            num_periods=cfg.scenario.num_periods,
            seed=cfg.runtime.seed,
        )
        change_points = schedule.change_points()
        site_changes = None if deployed else schedule.site_changes()
        truth = None if deployed else schedule.concepts
    m = cfg.monitor
    detectors = (
        []
        if static
        else build_detectors(
            m.detectors, m.arl, m.reference_periods, stats_noise_std=noise_std_for(cfg.privacy)
        )
    )
    drift = DriftWatch(Monitor(detectors), TriggerPolicy(cfg.policy, change_points))
    ledger_dir, epsilon = privacy_accounting(cfg, run_dir)
    num_features = int(np.prod(input_shape))
    models = TaskModels(cfg, input_shape, num_classes)
    if models.pretrained is not None:
        print(models.pretrained.line(), file=out)
    federation = FlowerFederation(
        grid,
        build_strategy(cfg, report.reject),
        cfg,
        config_yaml,
        report,
        num_features=num_features,
        num_classes=num_classes,
        num_rounds=cfg.runtime.num_rounds if static else cfg.retrain.max_rounds,
        periods=not static,
        epsilon=epsilon,
        ledger_dir=ledger_dir,
        frozen=models.frozen,
    )
    kind = ClusteredController if cfg.adaptation.clustered else Controller
    clustered: dict[str, Any] = {"truth": truth} if cfg.adaptation.clustered else {}
    controller = kind(
        cfg,
        federation,
        drift,
        models,
        run_dir,
        report,
        num_features=num_features,
        change_points=change_points,
        site_changes=site_changes,
        config_hash=config_hash(config_yaml),
        epsilon=epsilon,
        deployed=deployed,
        summary_extras=lambda: {**federation.summary(), **models.summary()},
        fixed_rounds=cfg.runtime.num_rounds if static else None,
        out=out,
        resume=resume,
        tracker=build_tracker(cfg, run_dir, config_yaml),
        **clustered,
    )
    return controller.run()
