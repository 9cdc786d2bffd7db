"""One site's share of a simulated federation: its data and its model skeleton.

Every site of a run builds the same pool from the task's dataset factory and the same split
from the run's seed, then keeps its own part. Nothing here talks to Flower: the ClientApp caches
a :class:`Site` per worker process and hands it the arrays it receives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fedretrain.config import OWN_MODEL_KEYS, PRETRAINED_KEY, STRICT_KEY, Device, RunConfig
from fedretrain.drift.streams import sample_window
from fedretrain.errors import ConfigError
from fedretrain.finetune import (
    Frozen,
    LoadReport,
    freeze,
    head_names,
    load_pretrained,
)
from fedretrain.model_io import numpy_state, save_state_dict
from fedretrain.retraining.strategies import plans
from fedretrain.tasks.dataset import ArrayDataset


def build_pool(dataset_cfg: DictConfig) -> ArrayDataset:
    pool = instantiate(dataset_cfg)
    if not isinstance(pool, ArrayDataset):
        raise TypeError(
            f"{dataset_cfg._target_} returned {type(pool).__name__}; a dataset factory must "
            "return fedretrain.tasks.ArrayDataset (see fedretrain.tasks.as_dataset)"
        )
    return pool


def partition_pool(
    partitioner_cfg: DictConfig, pool: ArrayDataset, num_partitions: int, seed: int
) -> list[np.ndarray]:
    partitioner = instantiate(partitioner_cfg)
    return partitioner.partition(pool.y, num_partitions, np.random.default_rng([seed, 0]))


def select_device(device: Device) -> torch.device:
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)


@dataclass
class Site:
    """A site's train and holdout data and a model skeleton on its device."""

    partition_id: int
    train_data: ArrayDataset
    holdout: ArrayDataset
    model: nn.Module
    device: torch.device

    @classmethod
    def build(cls, cfg: RunConfig, partition_id: int, num_partitions: int) -> Site:
        """Build site ``partition_id`` of ``num_partitions`` as every process would."""
        return SimulatedFederation(cfg, num_partitions).site(partition_id)


class SimulatedFederation:
    """What all simulated sites of a run share: the pool, its split and one model skeleton.

    A worker process serves many sites in turn (Ray hands any partition to any worker), so it
    keeps one of these per run and slices sites from it, rather than rebuilding the pool for
    each site. The sites it hands out share the model skeleton: a worker handles one message
    at a time, and every message loads its own weights into it.
    """

    def __init__(self, cfg: RunConfig, num_partitions: int) -> None:
        self.cfg = cfg
        self.num_partitions = num_partitions
        self._pool = build_pool(cfg.task.dataset)
        self._parts = partition_pool(
            cfg.data.partitioner, self._pool, num_partitions, cfg.runtime.seed
        )
        self._device = select_device(cfg.runtime.device)
        self._model = build_model(cfg, self._pool).to(self._device)

    def site(self, partition_id: int) -> Site:
        if not 0 <= partition_id < self.num_partitions:
            raise ValueError(f"partition_id {partition_id} outside [0, {self.num_partitions})")
        local = self._pool.subset(self._parts[partition_id])
        rng = np.random.default_rng([self.cfg.runtime.seed, 1, partition_id])
        train_data, holdout = local.split(self.cfg.data.holdout_fraction, rng)
        return Site(partition_id, train_data, holdout, self._model, self._device)


def build_model(cfg: RunConfig, pool: ArrayDataset) -> nn.Module:
    """The task's model for data shaped like ``pool``; seeded so every process agrees."""
    return model_for(cfg, pool.input_shape, pool.num_classes)


def model_for(
    cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None
) -> nn.Module:
    """The task's model for inputs of ``input_shape``; seeded so every process agrees.

    Under ``privacy.enabled`` layers DP-SGD cannot train are replaced (BatchNorm becomes
    GroupNorm) here, where server and sites alike build the model, so that their state dicts
    agree; with ``privacy.fix_model=false`` such a model is refused. Then
    ``task.model.pretrained`` is loaded into it and ``train.freeze`` turns off the gradients
    it names (:mod:`fedretrain.finetune`).
    """
    return prepared_model(cfg, input_shape, num_classes, seed)[0]


def prepared_model(
    cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None
) -> tuple[nn.Module, LoadReport | None]:
    """:func:`model_for`'s model, and what loading ``task.model.pretrained`` did (None
    without one)."""
    torch.manual_seed(cfg.runtime.seed if seed is None else seed)
    factory = instantiate(factory_node(cfg.task.model))
    model: nn.Module = factory(input_shape=input_shape, num_classes=num_classes)
    if cfg.privacy.enabled:
        from fedretrain.privacy.opacus_adapter import make_compatible  # opacus: only when used

        model = make_compatible(model, fix=cfg.privacy.fix_model)
    report = None
    path = cfg.task.model.get(PRETRAINED_KEY)
    if path:
        report = load_pretrained(model, path, strict=bool(cfg.task.model.get(STRICT_KEY, True)))
    freeze(model, list(cfg.train.freeze))
    return model, report


def factory_node(node: DictConfig) -> DictConfig:
    """The task's model node without the keys fedretrain reads itself (``pretrained``,
    ``strict``): what ``instantiate`` calls the factory with."""
    return OmegaConf.masked_copy(node, [str(k) for k in node if k not in OWN_MODEL_KEYS])


def check_transfer_head(
    head: Sequence[str], parameters: Sequence[str], frozen: Iterable[str]
) -> None:
    """The transfer strategy trains the head alone on a frozen backbone: the model needs a
    backbone, and ``train.freeze`` must leave the head trainable."""
    problems = []
    if len(head) == len(parameters):
        problems.append(
            f"the transfer strategy re-initialises the head ({', '.join(head)}) on a frozen "
            "backbone, and this model has no layer before its head: use strategy incremental "
            "or full (retrain.strategy, retrain.candidates)"
        )
    frozen = set(frozen)
    held = [n for n in head if n in frozen]
    if held:
        problems.append(
            f"the transfer strategy trains the head, and train.freeze freezes {', '.join(held)}:"
            " leave the head out of train.freeze, or drop transfer from retrain.strategy/"
            "candidates"
        )
    if problems:
        raise ConfigError(problems)


class TaskModels:
    """The task's model as the server handles it: numpy weights in, a model file out
    (:class:`fedretrain.retraining.port.ModelFactory`).

    ``frozen``: the run's frozen parameters (``train.freeze``), which every model of the run
    shares; ``pretrained``: what loading ``task.model.pretrained`` did, or None; ``head``: the
    last layer's arrays (the transfer strategy's)."""

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
        self.cfg = cfg
        self.input_shape = input_shape
        self.num_classes = num_classes
        base, self.pretrained = prepared_model(cfg, input_shape, num_classes)
        self.frozen = Frozen.of(base)
        state = numpy_state(base.state_dict())
        self._constants = {n: state[n] for n in self.frozen.names}
        frozen = self.frozen.names
        self.trained = tuple(n for n in state if n not in frozen) if frozen else None
        self.head = head_names(base)
        if any(p.name == "transfer" for p in plans(cfg.retrain, self.head)):
            check_transfer_head(self.head, [n for n, _ in base.named_parameters()], frozen)

    def summary(self) -> dict[str, object]:
        """What the run's summary says of its model's start and of what trained."""
        facts: dict[str, object] = {}
        if self.pretrained is not None:
            facts["pretrained"] = self.pretrained.to_dict()
        if self.trained is not None:
            facts["trained_arrays"] = list(self.trained)
            facts["frozen_arrays"] = sorted(self.frozen.names)
        return facts

    def fresh(self, seed: int) -> dict[str, np.ndarray]:
        """A model initialised from ``seed`` (after the pretrained file: only what it does not
        fill differs between seeds); its frozen arrays are the run's, whatever the seed."""
        model = model_for(self.cfg, self.input_shape, self.num_classes, seed=seed)
        return numpy_state(model.state_dict()) | self._constants

    def save(self, weights: Mapping[str, np.ndarray], path: Path) -> None:
        model = model_for(self.cfg, self.input_shape, self.num_classes)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        save_state_dict(model.state_dict(), path, {"task": self.cfg.task.name})


class ScenarioFederation:
    """What all simulated sites of a drift scenario share: the stream, its schedule, a model.

    A site's data for period ``t`` is a window of ``scenario.samples_per_period`` samples drawn
    from the concept the schedule gives it, seeded by (run seed, site, period) so that any
    process draws the same window; ``data.holdout_fraction`` of it is held out for validation.
    """

    def __init__(self, cfg: RunConfig, num_partitions: int, max_windows: int = 256) -> None:
        self.cfg = cfg
        self.num_partitions = num_partitions
        self.stream = instantiate(cfg.scenario.stream)
        self.schedule = instantiate(cfg.scenario.schedule)(
            num_sites=num_partitions, num_periods=cfg.scenario.num_periods, seed=cfg.runtime.seed
        )
        self.device = select_device(cfg.runtime.device)
        self.model = model_for(cfg, self.stream.input_shape, self.stream.num_classes)
        self.model.to(self.device)
        self._windows: OrderedDict[tuple[int, int], tuple[ArrayDataset, ArrayDataset]] = (
            OrderedDict()
        )
        self._max_windows = max_windows

    def window(self, site: int, period: int) -> tuple[ArrayDataset, ArrayDataset]:
        """Site ``site``'s (train, holdout) split of its window for ``period``."""
        if not 0 <= site < self.num_partitions:
            raise ValueError(f"site {site} outside [0, {self.num_partitions})")
        if not 0 <= period < self.schedule.num_periods:
            raise ValueError(f"period {period} outside [0, {self.schedule.num_periods})")
        key = (site, period)
        if key not in self._windows:
            seed = self.cfg.runtime.seed
            data = sample_window(
                self.stream,
                self.schedule,
                site,
                period,
                self.cfg.scenario.samples_per_period,
                seed,
            )
            rng = np.random.default_rng([seed, 2, site, period])
            self._windows[key] = data.split(self.cfg.data.holdout_fraction, rng)
            if len(self._windows) > self._max_windows:
                self._windows.popitem(last=False)
        return self._windows[key]
