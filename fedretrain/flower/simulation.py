"""Start Flower's simulation engine (Ray) in the current process and environment."""

from __future__ import annotations

import logging
import os
import warnings

import torch
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedretrain.config import Device, RuntimeConfig

log = logging.getLogger(__name__)


def backend_config(runtime: RuntimeConfig) -> dict[str, dict[str, float | int | str | bool]]:
    """Per-client resources for Ray; Ray sets each worker's OMP threads to its CPUs."""
    return {
        "client_resources": {
            "num_cpus": runtime.cpus_per_client,
            "num_gpus": runtime.gpus_per_client,
        },
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }


def simulate(server_app: ServerApp, client_app: ClientApp, runtime: RuntimeConfig) -> None:
    """Run one federation of ``runtime.num_clients`` simulated sites to completion."""
    from flwr.simulation import run_simulation

    if (
        runtime.gpus_per_client == 0
        and runtime.device is not Device.cpu
        and torch.cuda.is_available()
    ):
        log.warning(
            "a GPU is present but runtime.gpus_per_client=0, so Ray hides it from the sites and "
            "they train on CPU; set runtime.gpus_per_client (e.g. 0.25 for four sites per GPU)"
        )

    # Ray would otherwise warn on every start that it may override accelerator env vars.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=runtime.num_clients,
            backend_config=backend_config(runtime),  # type: ignore[arg-type]
        )
