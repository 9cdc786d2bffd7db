"""``fedretrain-simulate``: compose the Hydra config, validate it, run a simulated federation.

Examples
--------
    fedretrain-simulate
    fedretrain-simulate task=digits_cnn strategy=fedprox train.lr=0.05 runtime.num_clients=20
    fedretrain-simulate -m train.lr=0.01,0.1
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from fedretrain.config import (
    FOLDER_STREAM,
    RunConfig,
    check_override_keys,
    compose,
    register_schema,
    to_yaml,
)
from fedretrain.errors import ConfigError, FederationError
from fedretrain.preflight import to_typed

log = logging.getLogger("fedretrain")


def _run(cfg: DictConfig, checked: bool = False) -> float:
    """One simulation in Hydra's run folder; ``checked``: :func:`main` validated the config
    and built its targets already, before Hydra made the folder."""
    try:
        run = to_typed(cfg, build_targets=not checked)
        _check_simulable(cfg, run)
    except ConfigError as err:
        print(f"fedretrain-simulate: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # this job fails; the sweep goes on with the others (sweep.csv says why)
        sys.exit(2)

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # Ray takes tens of seconds to start on a small machine: say what is starting, at once.
    log.info(starting_line(run, run_dir))
    # Flower and Ray are imported only once the config is known to be good.
    from clients.app import app as client_app
    from fedretrain.flower.simulation import connect, simulate
    from server.app import build_server_app

    _quiet_libraries()
    try:
        nodes = connect(run.runtime)
    except FederationError as err:
        print(f"fedretrain-simulate: {err}", file=sys.stderr)
        sys.exit(2)
    server_app = build_server_app(to_yaml(cfg), run_dir, workers=nodes)
    simulate(server_app, client_app, run.runtime, workers=nodes)
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        print("fedretrain-simulate: the federation ended without a summary", file=sys.stderr)
        sys.exit(1)
    import json

    return float(json.loads(summary_file.read_text())["final_accuracy"])


def starting_line(run: RunConfig, run_dir: Path) -> str:
    """The line a run prints before Ray starts (simulate.log keeps it too)."""
    sites = f"{run.runtime.num_clients} simulated sites"
    if run.scenario.enabled:
        what = f"scenario {run.scenario.name}, {run.scenario.num_periods} periods"
    else:
        rounds = run.runtime.num_rounds
        what = f"{rounds} round{'s' if rounds != 1 else ''}"
    return f"starting {sites} on Ray ({run.task.name}, {what}); run folder {run_dir}"


def resume(run_dir: Path) -> int:
    """Continue the run in ``run_dir`` from its last checkpoint; the exit status."""
    from fedretrain.checkpoint import STATE_FILE
    from fedretrain.config import from_yaml

    config_file, state = run_dir / "config.yaml", run_dir / "checkpoint" / STATE_FILE
    for needed in (config_file, state):
        if not needed.exists():
            print(
                f"fedretrain resume: {run_dir} is not a resumable run folder ({needed.name} "
                f"missing); a run writes {config_file.name} and checkpoint/{STATE_FILE} once "
                "its first round is done",
                file=sys.stderr,
            )
            return 2
    config_yaml = config_file.read_text()
    try:
        run = from_yaml(config_yaml)
    except ConfigError as err:
        print(f"fedretrain resume: {config_file}: {err}", file=sys.stderr)
        return 2
    from fedretrain.retraining.resume import check_resumable

    try:  # before Ray starts and any site trains (a DP site pays for every round)
        ledgers = run.privacy.ledger_dir
        check_resumable(run_dir, Path(ledgers) if ledgers else None)
    except FederationError as err:
        print(f"fedretrain resume: {err}", file=sys.stderr)
        return 2

    from clients.app import app as client_app
    from fedretrain.flower.simulation import connect, simulate
    from server.app import build_server_app

    _quiet_libraries()
    try:
        nodes = connect(run.runtime)
    except FederationError as err:
        print(f"fedretrain resume: {err}", file=sys.stderr)
        return 2
    server_app = build_server_app(config_yaml, run_dir.resolve(), resume=True, workers=nodes)
    simulate(server_app, client_app, run.runtime, workers=nodes)
    return 0 if (run_dir / "summary.json").exists() else 1


def _quiet_libraries() -> None:
    # Flower logs every sampling step at INFO and its own deprecation of run_simulation at
    # WARNING; our progress line reports rounds, and fedretrain.flower.federation logs failed
    # sites. Also before Ray is joined: ray.init gives its GPU tip there too.
    from fedretrain.flower.logs import quiet_flower

    quiet_flower(logging.ERROR)
    for chatty in ("matplotlib", "alembic"):  # font cache, Flower's in-memory state migrations
        logging.getLogger(chatty).setLevel(logging.WARNING)


def main() -> None:
    register_schema()
    overrides = [a for a in sys.argv[1:] if not a.startswith("-") and "=" in a]
    try:
        problems = check_override_keys(overrides)
    except Exception:
        problems = []  # unparsable overrides: Hydra reports them in its own words
    if problems:
        print(f"fedretrain-simulate: {ConfigError(problems)}", file=sys.stderr)
        sys.exit(2)
    # A single run (no -m, --cfg, --help...) is validated before Hydra creates its run folder,
    # so a bad value leaves nothing behind; a sweep's jobs are each checked in their folder.
    checked = not any(a.startswith("-") for a in sys.argv[1:])
    if checked:
        try:
            cfg = compose([o for o in overrides if not o.lstrip("+~").startswith("hydra.")])
            _check_simulable(cfg, to_typed(cfg))
        except HydraException as err:  # a value the schema refuses, an unknown group option
            text = str(err).split("\nConfig search path")[0]  # options, not Hydra's internals
            cause = f": {err.__cause__}".split("\n")[0] if err.__cause__ else ""
            print(f"fedretrain-simulate: {ConfigError([f'{text}{cause}'])}", file=sys.stderr)
            sys.exit(2)
        except ConfigError as err:
            print(f"fedretrain-simulate: {err}", file=sys.stderr)
            sys.exit(2)

    @hydra.main(config_path="pkg://fedretrain.conf", config_name="config", version_base="1.3")
    def simulate(cfg: DictConfig) -> float:  # Hydra names the job (simulate.log) after it
        return _run(cfg, checked)

    simulate()


def _check_simulable(cfg: DictConfig, run: RunConfig) -> None:
    """A scenario that reads deployed sites' folders cannot be simulated."""
    if run.scenario.enabled and str(cfg.scenario.stream.get("_target_")) == FOLDER_STREAM:
        raise ConfigError(
            [
                "scenario.stream reads the sites' data folders, which only deployed sites "
                "have: run it with `fedretrain server` and `fedretrain agent`, or simulate a "
                "synthetic scenario (e.g. scenario=sea_thresholds)"
            ]
        )


if __name__ == "__main__":
    main()
