"""Start Flower's simulation engine (Ray) in the current process and environment."""

from __future__ import annotations

import inspect
import logging
import math
import os
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedretrain.config import Device, RuntimeConfig
from fedretrain.errors import FederationError
from fedretrain.flower.logs import quiet_flower

log = logging.getLogger(__name__)

# Flower's simulation engine hands messages to its ClientApp actors from one thread that sweeps
# the link state and then pauses 0.1 s (``vce_api.add_messages_to_queue``, whose pause is
# ``f_stop.wait(0.1)``; Flower's private code, no setting): a wave waits 50 ms on average
# before any site sees it. While :func:`simulate` runs, that thread's pause ends as soon as
# the server pushes a message (:func:`wake_feeder`, called by the grid ``server.app`` tunes).
_PUSHED = threading.Event()


def wake_feeder() -> None:
    """Tell the simulation engine's feeder that the server has pushed messages."""
    _PUSHED.set()


class _WakeableStop:
    """The feeder's stop event as the feeder sees it: its pause between sweeps waits on
    :func:`wake_feeder` as well as on the stop (which it still notices within the pause)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop

    def is_set(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        # Cleared before the sweep that follows: a push during that sweep wakes the next pause.
        _PUSHED.wait(timeout)
        _PUSHED.clear()
        return self._stop.is_set()


@contextmanager
def wakeable_feeder() -> Iterator[None]:
    """Within it, Flower's simulation feeder sweeps for messages when the server pushes them
    instead of every 0.1 s. Flower's own function still does the sweeping; only the stop event
    it is handed waits differently. If this Flower's feeder is not the one it was written
    for, the engine is left as it is."""
    from flwr.server.superlink.fleet.vce import vce_api

    feeder: Callable[..., None] | None = getattr(vce_api, "add_messages_to_queue", None)
    expected = ["state", "queue", "nodes_mapping", "f_stop"]
    if feeder is None or list(inspect.signature(feeder).parameters) != expected:
        log.debug("Flower's simulation feeder is not the one expected: left as it is")
        yield
        return

    def wakeable(state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event) -> None:
        feeder(state, queue, nodes_mapping, _WakeableStop(f_stop))

    vce_api.add_messages_to_queue = wakeable
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = feeder


def backend_config(runtime: RuntimeConfig) -> dict[str, dict[str, float | int | str | bool]]:
    """Per-client resources for Ray; Ray sets each worker's OMP threads to its CPUs."""
    return {
        "client_resources": {
            "num_cpus": runtime.cpus_per_client,
            "num_gpus": runtime.gpus_per_client,
        },
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }


def connect(runtime: RuntimeConfig) -> int:
    """Join the running Ray cluster that ``runtime.ray_address`` (or Ray's own ``RAY_ADDRESS``)
    names, if one does; the number of Flower nodes the simulation will run (:func:`workers`,
    from the cluster's CPUs and GPUs when it joined one).

    Flower then runs on this connection instead of starting Ray here.
    """
    address = runtime.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return workers(runtime)
    problem = _unreachable(address)
    if problem is not None:  # ray.init would retry for minutes
        raise _no_cluster(address, problem)
    import ray

    # As Flower starts Ray: its workers import fedretrain, clients and server from our path.
    # Each job of a sweep joins again: the path is kept once, not grown per job.
    entries = [*sys.path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    pythonpath = os.pathsep.join(dict.fromkeys(e for e in entries if e))
    os.environ["PYTHONPATH"] = pythonpath
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except ConnectionError as err:
        raise _no_cluster(address, str(err)) from err
    resources = ray.cluster_resources()
    log.info("joined the Ray cluster at %s: %s", address, _resources(resources))
    return workers(runtime, cpus=resources.get("CPU", 1.0), gpus=resources.get("GPU", 0.0))


def _no_cluster(address: str, why: str) -> FederationError:
    return FederationError(
        f"runtime.ray_address={address}: no Ray cluster answers there ({why}); start one "
        "with `ray start --head` or leave runtime.ray_address unset to start Ray here"
    )


def _unreachable(address: str, timeout_s: float = 10.0) -> str | None:
    """Why nothing listens at ``host:port``, or None (also for forms other than host:port,
    such as ``auto`` or ``ray://``, which Ray resolves itself).

    >>> _unreachable("auto") is None
    True
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return None
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        return str(err)
    return None


def _resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources[k]:g} {k}" for k in ("CPU", "GPU") if k in resources)


def workers(runtime: RuntimeConfig, cpus: float | None = None, gpus: float | None = None) -> int:
    """The Flower nodes a simulation runs: ``runtime.workers``, by default one per Ray slot
    (``cpus``, by default those this process may use, over ``runtime.cpus_per_client``; with
    ``runtime.gpus_per_client``, no more than ``gpus``, by default the visible GPUs, over it);
    never more than the sites.

    Each node runs a cohort of sites per message (:mod:`fedretrain.flower.cohorts`); with as
    many workers as sites, each site is a node of its own, as in plain Flower.
    """
    if runtime.workers is not None:
        return min(runtime.workers, runtime.num_clients)
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    slots = max(1, math.floor(cpus / runtime.cpus_per_client))
    if runtime.gpus_per_client > 0:
        if gpus is None:
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus:
            slots = min(slots, max(1, math.floor(gpus / runtime.gpus_per_client)))
    return min(slots, runtime.num_clients)


def simulate(
    server_app: ServerApp, client_app: ClientApp, runtime: RuntimeConfig, workers: int | None = None
) -> None:
    """Run one federation of ``runtime.num_clients`` simulated sites to completion, on
    ``workers`` Flower nodes (default: one per site). With fewer nodes than sites, the server
    app must wrap its grid in a :class:`~fedretrain.flower.cohorts.CohortGrid` (as
    :func:`server.app.build_server_app` does when given the same ``workers``) and the client
    app must run :func:`~fedretrain.flower.cohorts.cohort_mod` (as ``clients.app`` does)."""
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

    quiet_flower(level=None)  # fedretrain-simulate has set Flower's level already
    with warnings.catch_warnings(), wakeable_feeder():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=runtime.num_clients if workers is None else workers,
            backend_config=backend_config(runtime),  # type: ignore[arg-type]
        )
