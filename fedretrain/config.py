"""The configuration schema: the root of the composed config, one dataclass per config group.

Hydra merges the YAML files under ``conf/`` into :class:`RunConfig`, so a misspelt key or a
value of the wrong type fails at compose time. Each group's ``__post_init__`` checks what types
cannot (ranges) and :func:`typed_groups` collects every group's problems at once, each naming
the key, the bad value and what would be valid.

Groups whose code lives elsewhere keep their schema beside it (``train`` in
:mod:`fedretrain.train_config`, ``validation`` in :mod:`fedretrain.validation`, ``attack`` in
:mod:`fedretrain.attacks`, ``policy`` in :mod:`fedretrain.monitor.trigger`, ``privacy`` in
:mod:`fedretrain.privacy.config`); they are re-exported here. This module imports no target:
:func:`fedretrain.preflight.to_typed` checks the ``_target_`` nodes and builds each once.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from fedretrain.attacks import AttackConfig
from fedretrain.errors import ConfigError, raise_failed
from fedretrain.monitor.trigger import TriggerConfig
from fedretrain.privacy.config import PrivacyConfig
from fedretrain.train_config import LrSchedule, Optimizer, TrainConfig
from fedretrain.validation import ValidationConfig

__all__ = [  # the schema classes defined beside their code are importable from here too
    "AttackConfig",
    "ConfigError",
    "DataConfig",
    "Device",
    "LrSchedule",
    "MonitorConfig",
    "Optimizer",
    "PrivacyConfig",
    "ReleaseConfig",
    "RetrainConfig",
    "RetrainStrategy",
    "RunConfig",
    "RuntimeConfig",
    "ScenarioConfig",
    "TaskConfig",
    "TrainConfig",
    "TriggerConfig",
    "ValidationConfig",
    "assemble",
    "check_override_keys",
    "compose",
    "cross_checks",
    "from_yaml",
    "register_schema",
    "strategy_kwargs",
    "to_yaml",
    "typed_groups",
]

# Keys of the task's model node that fedretrain reads itself (fedretrain.finetune): the
# factory never sees them.
PRETRAINED_KEY = "pretrained"  # a safetensors file or a PyTorch state dict; null: none
STRICT_KEY = "strict"  # false: a partial load (e.g. a new head) is allowed, and reported
OWN_MODEL_KEYS = (PRETRAINED_KEY, STRICT_KEY)
CONFIG_MODULE = "fedretrain.conf"  # conf/ at the repository root, installed under this name


class Device(str, Enum):
    auto = "auto"  # CUDA when the client sees a GPU, else CPU
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class TaskConfig:
    """What is learned: a dataset factory and a model factory, both given by ``_target_``.

    ``dataset`` returns a :class:`fedretrain.tasks.ArrayDataset`; ``model`` is a partial called
    as ``model(input_shape=..., num_classes=...)``. ``feature_bound`` is the largest feature
    magnitude the task's data can have, known without looking at the data (1.0 for features in
    [0, 1]); private monitoring statistics clip to it (``privacy.stats_feature_bound``), and
    null means the task does not know one. ``image``: the inputs are images ``(channels,
    height, width)``, so ``train.augment`` may shift and rotate them. ``group_feature`` and
    ``group_threshold`` give the data a synthetic group attribute (:mod:`fedretrain.groups`).
    """

    name: str = "custom"
    dataset: Any = None
    model: Any = None
    feature_bound: float | None = None
    image: bool = False  # inputs are images (n, channels, height, width): train.augment applies
    # A synthetic group attribute for a task whose data has none: group 1 is every sample
    # whose flattened feature ``group_feature`` exceeds ``group_threshold``, group 0 the rest
    # (fedretrain.groups). null: no such groups.
    group_feature: int | None = None
    group_threshold: float = 0.0


@dataclass
class DataConfig:
    """How the task's pool is split across sites and, at each site, into train and holdout."""

    partitioner: Any = None
    holdout_fraction: float = 0.2


@dataclass
class RuntimeConfig:
    """Where and how the federation runs."""

    num_clients: int = 10
    num_rounds: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    cpus_per_client: float = 1.0
    gpus_per_client: float = 0.0
    device: Device = Device.auto
    torch_threads: int = 1
    seed: int = 0
    workers: int | None = None
    ray_address: str | None = None
    poll_interval_s: float = 0.1

    def __post_init__(self) -> None:
        gpus = self.gpus_per_client
        raise_failed(
            (self.num_clients >= 1, f"runtime.num_clients={self.num_clients}: must be at least 1"),
            (self.num_rounds >= 1, f"runtime.num_rounds={self.num_rounds}: must be at least 1"),
            (
                0 < self.fraction_train <= 1,
                f"runtime.fraction_train={self.fraction_train}: must lie in (0, 1]",
            ),
            (
                0 <= self.fraction_evaluate <= 1,
                f"runtime.fraction_evaluate={self.fraction_evaluate}: must lie in [0, 1]",
            ),
            (
                self.cpus_per_client > 0,
                f"runtime.cpus_per_client={self.cpus_per_client}: must be positive",
            ),
            (
                gpus == 0 or 0 < gpus <= 1 or float(gpus).is_integer(),
                f"runtime.gpus_per_client={gpus}: a fraction in [0, 1] or a whole number",
            ),
            (
                self.torch_threads >= 1,
                f"runtime.torch_threads={self.torch_threads}: must be at least 1",
            ),
            (
                self.workers is None or self.workers >= 1,
                f"runtime.workers={self.workers}: must be at least 1, or null for one per "
                "Ray slot (runtime.cpus_per_client CPUs each)",
            ),
            (
                0.01 <= self.poll_interval_s <= 60,
                f"runtime.poll_interval_s={self.poll_interval_s}: must lie in [0.01, 60] seconds",
            ),
        )


@dataclass
class ScenarioConfig:
    """A drifting world in monitoring periods (fedretrain.drift); ``stream: null`` for none.

    ``stream`` is a :class:`fedretrain.drift.streams.DriftStream`; ``schedule`` a partial called
    as ``schedule(num_sites=..., num_periods=..., seed=...)`` returning the sites x periods
    matrix of concept ids. Each site draws ``samples_per_period`` samples per period, of which
    ``data.holdout_fraction`` are held out for validation.

    ``period_seconds`` > 0 paces the periods by the wall clock (deployment: a period starts
    that long after the previous one started); 0 runs them back to back (simulation).
    """

    name: str = "none"
    stream: Any = None
    schedule: Any = None
    num_periods: int = 10
    samples_per_period: int = 100
    period_seconds: float = 0.0

    def __post_init__(self) -> None:
        raise_failed(
            (self.num_periods >= 2, f"scenario.num_periods={self.num_periods}: must be >= 2"),
            (
                self.period_seconds >= 0,
                f"scenario.period_seconds={self.period_seconds}: must be >= 0",
            ),
            (
                self.samples_per_period >= 2,
                f"scenario.samples_per_period={self.samples_per_period}: must be >= 2",
            ),
        )

    @property
    def enabled(self) -> bool:
        return self.stream is not None


@dataclass
class MonitorConfig:
    """The global drift monitor (fedretrain.monitor).

    ``detectors`` are partial ``_target_`` nodes, each built with its share of the monitor's
    false-alarm budget (``arl`` times the number of detectors) and ``reference_periods``.
    """

    arl: float = 5000.0  # target mean run length, in periods, between false alarms
    reference_periods: int = 2  # periods after each (re)training that form the reference
    histogram_bins: int = 8  # per feature, on edges the server sets from the first period
    detectors: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        raise_failed(
            (self.arl >= 1, f"monitor.arl={self.arl}: a run length in periods, >= 1"),
            (
                self.reference_periods >= 1,
                f"monitor.reference_periods={self.reference_periods}: must be >= 1",
            ),
            (
                self.histogram_bins >= 2,
                f"monitor.histogram_bins={self.histogram_bins}: must be >= 2",
            ),
        )


class RetrainStrategy(str, Enum):
    """How a triggered retrain makes its candidate (:mod:`fedretrain.retraining.strategies`)."""

    auto = "auto"  # reuse a stored version that wins, else train retrain.candidates and pick
    incremental = "incremental"  # fine-tune the serving model (a warm start)
    full = "full"  # fresh weights, trained on the windows kept since the change
    transfer = "transfer"  # the serving model's backbone frozen, its head re-initialised
    reuse = "reuse"  # serve the stored version that does best on current data


TRAINED_STRATEGIES = ("incremental", "full", "transfer")  # what a tournament may train


@dataclass
class RetrainConfig:
    """How a triggered retrain runs (server.controller)."""

    strategy: RetrainStrategy = RetrainStrategy.auto
    # strategy=auto: the strategies that train a candidate each, in the same period, when no
    # stored version is reused; federated validation picks one for the gate. One: no tournament.
    candidates: list[str] = field(default_factory=lambda: ["incremental"])
    buffer_periods: int = 1  # strategy full: each site's windows since the change, at most
    # A proximal term anchored at the serving model: a retrain's local loss gains
    # anchor_mu / 2 * ||w - w_champion||^2 (FedProx's term, with the champion for the anchor).
    anchor_mu: float = 0.0
    max_rounds: int = 20  # cap on rounds per retrain
    patience: int = 3  # stop after this many rounds without validation gain
    min_delta: float = 0.002  # validation accuracy gain that counts as progress
    reinit_after: int | None = 2  # warm rounds after which a stalled retrain re-initialises
    stall_gap: float = 0.05  # stalled: still this far below the serving model's own accuracy
    reuse_stored: bool = True  # try stored earlier models before training (recurring concepts)
    reuse_margin: float = 0.02  # a stored model must beat the serving one by this much
    reuse_tolerance: float = 0.03  # ...and score within this of its own validation accuracy
    max_stored: int = 20  # earlier models kept for reuse
    # Rehearsal: a retrain's sites train on their windows of this many earlier periods too (a
    # bounded replay buffer, so that what still matters is not forgotten); 0: the period's.
    rehearsal_periods: int = 0

    def __post_init__(self) -> None:
        r = "retrain."
        raise_failed(
            (self.max_rounds >= 1, f"{r}max_rounds={self.max_rounds}: must be >= 1"),
            (self.patience >= 1, f"{r}patience={self.patience}: must be >= 1"),
            (self.min_delta >= 0, f"{r}min_delta={self.min_delta}: must be >= 0"),
            (
                self.reinit_after is None or self.reinit_after >= 1,
                f"{r}reinit_after={self.reinit_after}: must be >= 1, or null to never re-init",
            ),
            (self.reuse_margin >= 0, f"{r}reuse_margin={self.reuse_margin}: must be >= 0"),
            (0 <= self.stall_gap <= 1, f"{r}stall_gap={self.stall_gap}: must lie in [0, 1]"),
            (
                0 <= self.reuse_tolerance <= 1,
                f"{r}reuse_tolerance={self.reuse_tolerance}: must lie in [0, 1]",
            ),
            (self.max_stored >= 0, f"{r}max_stored={self.max_stored}: must be >= 0"),
            (
                self.rehearsal_periods >= 0,
                f"{r}rehearsal_periods={self.rehearsal_periods}: must be >= 0 (0: no rehearsal)",
            ),
            (self.buffer_periods >= 1, f"{r}buffer_periods={self.buffer_periods}: must be >= 1"),
            (
                self.anchor_mu >= 0,
                f"{r}anchor_mu={self.anchor_mu}: must be >= 0 (0: no proximal term)",
            ),
            *_candidate_problems(list(self.candidates)),
        )


def _candidate_problems(candidates: list[str]) -> list[tuple[bool, str]]:
    """``retrain.candidates``: one or more distinct strategies that train."""
    key = f"retrain.candidates={candidates}"
    unknown = [c for c in candidates if c not in TRAINED_STRATEGIES]
    return [
        (bool(candidates), f"{key}: name at least one of {', '.join(TRAINED_STRATEGIES)}"),
        (
            not unknown,
            f"{key}: {', '.join(map(repr, unknown))} is not a strategy that trains; choose "
            f"from {', '.join(TRAINED_STRATEGIES)} (reuse is tried first by strategy=auto)",
        ),
        (len(set(candidates)) == len(candidates), f"{key}: names a strategy twice"),
    ]


@dataclass
class ReleaseConfig:
    """How a retrained model becomes the champion (server.controller, fedretrain.registry).

    Every candidate meets the validation gate: it is evaluated with the champion on every
    site's holdout for the current period and passes when the federation's accuracy is not
    worse than the champion's by more than ``global_margin``, no site's by more than
    ``site_margin`` and, when the task has groups of users (:mod:`fedretrain.groups`), no
    group's recall by more than ``group_margin`` (null: groups are reported, not gated).
    With ``canary_fraction > 0`` a candidate that passes is first served by that share of
    sites for ``canary_periods`` periods and promoted or rolled back on their prequential
    scores. A fresh champion is then watched for ``watch_periods`` periods and
    rolled back to its parent if the parent does better on current data by ``rollback_margin``.
    Under ``adaptation=clustered`` each rule works per cluster, on that cluster's sites (the
    groups of users are not gated there yet).
    """

    global_margin: float = 0.0
    site_margin: float = 0.05
    min_site_examples: int = 5  # sites with fewer holdout examples cannot block a promotion
    canary_fraction: float = 0.0  # 0: promote at the gate
    canary_periods: int = 2
    canary_margin: float = 0.02
    watch_periods: int = 1
    rollback_margin: float = 0.03
    group_margin: float | None = None
    # Knowledge preservation: the gate also scores both models on the sites' holdouts of this
    # many periods before the current one (backward transfer) and, with forgetting_margin,
    # refuses a candidate that does worse there than the champion by more.
    memory_periods: int = 0
    forgetting_margin: float | None = None

    def __post_init__(self) -> None:
        r = "release."
        raise_failed(
            (self.memory_periods >= 0, f"{r}memory_periods={self.memory_periods}: must be >= 0"),
            (
                self.forgetting_margin is None or self.forgetting_margin >= 0,
                f"{r}forgetting_margin={self.forgetting_margin}: must be >= 0, or null",
            ),
            (
                self.forgetting_margin is None or self.memory_periods > 0,
                f"{r}forgetting_margin={self.forgetting_margin} needs earlier holdouts to "
                f"judge forgetting on: set {r}memory_periods (e.g. 3)",
            ),
            (
                self.group_margin is None or self.group_margin >= 0,
                f"{r}group_margin={self.group_margin}: must be >= 0, or null not to gate groups",
            ),
            (self.global_margin >= 0, f"{r}global_margin={self.global_margin}: must be >= 0"),
            (self.site_margin >= 0, f"{r}site_margin={self.site_margin}: must be >= 0"),
            (
                self.min_site_examples >= 1,
                f"{r}min_site_examples={self.min_site_examples}: must be >= 1",
            ),
            (
                0 <= self.canary_fraction < 1,
                f"{r}canary_fraction={self.canary_fraction}: must lie in [0, 1) "
                "(0 promotes at the gate)",
            ),
            (self.canary_periods >= 1, f"{r}canary_periods={self.canary_periods}: must be >= 1"),
            (self.canary_margin >= 0, f"{r}canary_margin={self.canary_margin}: must be >= 0"),
            (self.watch_periods >= 0, f"{r}watch_periods={self.watch_periods}: must be >= 0"),
            (
                self.rollback_margin >= 0,
                f"{r}rollback_margin={self.rollback_margin}: must be >= 0",
            ),
        )


class AdaptationMode(str, Enum):
    single = "single"  # one global model, retrained by the policy (the default)
    clustered = "clustered"  # one model per concept; each site served its cluster's model
    oracle = "oracle"  # simulation baseline: clustered, with each site's true concept known


@dataclass
class AdaptationConfig:
    """How many models serve the federation (:mod:`fedretrain.retraining.clusters`).

    ``clustered``: every period each site scores every live model on its new window. A site
    whose own model's accuracy fell below its reference (the scores it had under that model)
    by more than ``min_drop`` and by more than ``z`` standard errors has drifted: it moves to
    a stored model that fits it (a recurring concept, no training), or with the other drifted
    sites that no model fits it gets a new model trained on their data only. Clusters whose
    models are interchangeable on each other's sites (FedDrift's distance at most
    ``merge_margin``) are merged. ``max_models``: the most models sent to the sites (the least
    recently served are dropped). ``refine_on_join``: a cluster that sites join is fine-tuned
    on all its sites' data, and kept only if the gate prefers it on them.

    A cluster's model trains on its concept's data so far: each site trains on its windows
    since it joined its cluster, the last ``buffer_periods`` of them (1: the period's window
    alone). ``refresh``: while a cluster's sites still gain windows (fewer than
    ``buffer_periods`` since they joined), its model is fine-tuned on them every period, and
    kept only if the gate prefers it.
    """

    mode: AdaptationMode = AdaptationMode.single
    z: float = 3.7
    min_drop: float = 0.05
    merge_margin: float = 0.05
    reference_periods: int = 3
    max_models: int = 8
    refine_on_join: bool = True
    buffer_periods: int = 4
    refresh: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.mode, AdaptationMode):
            try:
                self.mode = AdaptationMode(self.mode)
            except ValueError:
                valid = [m.value for m in AdaptationMode]
                raise ConfigError(
                    [f"adaptation.mode={self.mode!r}: must be one of {valid}"]
                ) from None
        a = "adaptation."
        raise_failed(
            (self.z > 0, f"{a}z={self.z}: must be > 0 (standard errors of a drop in accuracy)"),
            (0 <= self.min_drop < 1, f"{a}min_drop={self.min_drop}: must lie in [0, 1)"),
            (
                0 <= self.merge_margin < 1,
                f"{a}merge_margin={self.merge_margin}: must lie in [0, 1)",
            ),
            (
                self.reference_periods >= 1,
                f"{a}reference_periods={self.reference_periods}: must be >= 1",
            ),
            (self.max_models >= 2, f"{a}max_models={self.max_models}: must be >= 2"),
            (
                self.buffer_periods >= 1,
                f"{a}buffer_periods={self.buffer_periods}: must be >= 1 (1 trains on the "
                "period's window alone)",
            ),
        )

    @property
    def clustered(self) -> bool:
        """One model per cluster (``clustered``, or the ``oracle`` baseline)."""
        return self.mode is not AdaptationMode.single

    @property
    def oracle(self) -> bool:
        return self.mode is AdaptationMode.oracle


class TrackingBackend(str, Enum):
    none = "none"
    mlflow = "mlflow"  # pip install 'fedretrain[mlflow]' (mlflow-skinny)
    tensorboard = "tensorboard"  # pip install 'fedretrain[tensorboard]'


@dataclass
class TrackingConfig:
    """Where a run is also recorded for experiment tracking (:mod:`fedretrain.tracking`).

    With ``backend=mlflow`` each run is one MLflow run in ``experiment``: the config as
    params, every round's and period's numbers as metrics with their step, the run folder's
    tables, plots and summary as artifacts, and each registry version as a version of the
    registered model ``model_name`` (null: ``fedretrain-<task.name>``) with the aliases
    ``champion`` and ``challenger`` and its lineage as tags. ``uri`` null takes
    ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the folder the run was started
    from. With ``backend=tensorboard`` the run's scalars go to TensorBoard's event files in the
    run folder's ``tensorboard/`` (the other fields are MLflow's). The run folder stays the
    record: a tracking failure is one warning, and the run goes on.
    """

    backend: TrackingBackend = TrackingBackend.none
    uri: str | None = None
    experiment: str = "fedretrain"
    model_name: str | None = None
    register_models: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.backend, TrackingBackend):
            try:
                self.backend = TrackingBackend(self.backend)
            except ValueError:
                valid = [b.value for b in TrackingBackend]
                raise ConfigError(
                    [f"tracking.backend={self.backend!r}: must be one of {valid}"]
                ) from None
        raise_failed(
            (
                bool(self.experiment),
                "tracking.experiment: must name an experiment, e.g. fedretrain",
            ),
        )


@dataclass
class RunConfig:
    """The root of the composed config."""

    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    policy: TriggerConfig = field(default_factory=TriggerConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)


def register_schema() -> None:
    """Make the schema known to Hydra as ``fedretrain_schema`` (``conf/config.yaml`` uses it)."""
    ConfigStore.instance().store(name="fedretrain_schema", node=RunConfig)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, as ``fedretrain-simulate`` would."""
    register_schema()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def check_override_keys(overrides: Sequence[str]) -> list[str]:
    """Find dotted override keys that name nothing in the config they would change.

    Hydra rejects these too, but suggests ``+key=value``, which a schema refuses as well. This
    check names the closest existing key instead. Group choices are applied first (the first
    value of a sweep), so ``strategy=krum strategy.num_malicous_nodes=2`` is checked against
    Krum's keys.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices = []
    for o in parsed:
        if "." in o.key_or_group or o.is_hydra_override() or o.is_delete() or o.is_add():
            continue
        if o.is_sweep_override():
            if not o.is_choice_sweep():
                continue
            first = next(o.sweep_string_iterator())
            choices.append(f"{o.key_or_group}={first}")
        else:
            choices.append(f"{o.key_or_group}={o.get_value_element_as_str()}")
    try:
        cfg = compose(choices)
    except Exception:
        return []  # a bad group choice: Hydra's own message lists the options
    problems = []
    for o in parsed:
        key = o.key_or_group
        if "." not in key or o.is_hydra_override() or o.is_add() or o.is_force_add():
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None)
        # keys(), not `in`: OmegaConf's `in` is False for a mandatory (???) value.
        if isinstance(parent, DictConfig) and leaf not in list(parent.keys()):
            valid = [str(k) for k in parent if not str(k).startswith("_")]
            close = difflib.get_close_matches(leaf, valid, n=1)
            hint = f"did you mean '{parent_key}.{close[0]}'? " if close else ""
            problems.append(f"{key}: no such key; {hint}keys of '{parent_key}': {valid}")
        elif parent is None and OmegaConf.select(cfg, key, default=None) is None:
            top = [str(k) for k in cfg]
            problems.append(f"{key}: no such key; top-level keys are {top}")
    return problems


def to_yaml(cfg: DictConfig) -> str:
    """The config with every interpolation resolved: what sites receive and runs record.

    A relative ``task.model.pretrained`` becomes absolute, against the folder the run is
    started from: the processes that read it (Ray's workers) may start elsewhere."""
    model = cfg.task.get("model")
    path = model.get(PRETRAINED_KEY) if isinstance(model, DictConfig) else None
    if path and not Path(str(path)).expanduser().is_absolute():
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.task.model[PRETRAINED_KEY] = str(Path(str(path)).resolve())
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml(text: str) -> RunConfig:
    """Parse a config written by :func:`to_yaml`, re-checking it against the schema.

    Targets are not checked or built again: the launcher did that before the run started.
    """
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(text))
    assert isinstance(merged, DictConfig)
    typed, problems = typed_groups(merged)
    problems += cross_checks(merged, typed)
    if problems:
        raise ConfigError(problems)
    return assemble(merged, typed)


GROUPS = (
    "train",
    "runtime",
    "data",
    "task",
    "validation",
    "attack",
    "scenario",
    "monitor",
    "policy",
    "retrain",
    "privacy",
    "release",
    "tracking",
    "adaptation",
)


def typed_groups(cfg: DictConfig) -> tuple[dict[str, Any], list[str]]:
    """Each group of ``cfg`` as its typed dataclass, and the problems of those that fail.

    Every group is checked even when an earlier one fails, so the user sees all problems at
    once; a group that fails is missing from the dict.
    """
    problems: list[str] = []
    typed: dict[str, Any] = {}
    for group in GROUPS:
        try:
            typed[group] = OmegaConf.to_object(cfg[group])
        except ConfigError as err:
            problems += err.problems
        except Exception as err:  # OmegaConf's own type errors
            problems.append(f"{group}: {err}")
    return typed, problems


def cross_checks(cfg: DictConfig, typed: dict[str, Any]) -> list[str]:
    """What no group's schema sees alone: the holdout share, the device here, user-level DP.

    ``typed`` is what :func:`typed_groups` returned. ``_target_`` nodes are not looked at here
    (:func:`fedretrain.preflight.to_typed` imports and builds them).
    """
    problems = []
    if not 0 <= cfg.data.holdout_fraction < 1:
        problems.append(f"data.holdout_fraction={cfg.data.holdout_fraction}: must lie in [0, 1)")
    runtime = typed.get("runtime")
    if runtime is not None:
        problems += _check_device(runtime)
    if cfg.privacy.user_level:
        problems += _check_user_level_dp(cfg)
    problems += _check_stats_bound(cfg)
    problems += _check_augment(cfg)
    problems += _check_windows(cfg)
    problems += _check_memory(cfg)
    problems += _check_strategy(cfg)
    if cfg.adaptation.mode != AdaptationMode.single.value:
        problems += _check_clustered(cfg)
    return problems


def _check_augment(cfg: DictConfig) -> list[str]:
    """train.augment shifts and rotates images: only a task that declares them has them."""
    if not cfg.train.get("augment") or cfg.task.get("image"):
        return []
    return [
        f"train.augment=true: shifts and rotates images, and task {cfg.task.get('name')} "
        "does not declare image inputs (task.image=false): use an image task (e.g. "
        "task=digits_cnn), set task.image=true if your inputs are (channels, height, width) "
        "images, or set train.augment=false"
    ]


def _check_memory(cfg: DictConfig) -> list[str]:
    """Earlier holdouts and rehearsal need earlier periods: a drift scenario's."""
    if not (cfg.release.get("memory_periods") or cfg.retrain.get("rehearsal_periods")):
        return []
    if cfg.scenario.get("stream") is not None and cfg.scenario.num_periods > 1:
        return []
    return [
        "release.memory_periods / retrain.rehearsal_periods: use earlier monitoring periods, "
        "which only a drift scenario has (e.g. scenario=sea_recurring); leave them at 0"
    ]


# Flower's strategies that keep a server optimizer's state across rounds: one state for the
# one model they train, which a tournament's several models would share.
STATEFUL_STRATEGIES = ("FedAdam", "FedYogi", "FedAdagrad")


def tournament(retrain: DictConfig) -> bool:
    """Whether ``retrain`` (the config node) trains several candidates per retrain."""
    auto = RetrainStrategy(retrain.get("strategy", "auto")) is RetrainStrategy.auto
    return auto and len(retrain.get("candidates") or ()) > 1


def uses_strategy(retrain: DictConfig, name: str) -> bool:
    """Whether a retrain under ``retrain`` may train with strategy ``name``."""
    strategy = RetrainStrategy(retrain.get("strategy", "auto"))
    if strategy is RetrainStrategy.auto:
        return name in (retrain.get("candidates") or ())
    return strategy.value == name


def _check_strategy(cfg: DictConfig) -> list[str]:
    """retrain.strategy, retrain.candidates and retrain.anchor_mu against the rest."""
    r = cfg.retrain
    try:
        strategy = RetrainStrategy(r.get("strategy", "auto"))
    except ValueError:
        return []  # the group's own schema reports the value
    problems = []
    mode = AdaptationMode(cfg.adaptation.mode).value
    default = strategy is RetrainStrategy.auto and list(r.get("candidates") or ()) == [
        "incremental"
    ]
    if cfg.adaptation.mode != AdaptationMode.single.value and not default:
        problems.append(
            f"retrain.strategy={strategy.value} / retrain.candidates with "
            f"adaptation={mode}: a cluster's model is fine-tuned on its concept's buffer; "
            "strategies are not combined with clusters yet: use "
            "adaptation=single, or leave retrain.strategy=auto with candidates=[incremental]"
        )
    if uses_strategy(r, "transfer") and cfg.train.get("lr_groups"):
        problems.append(
            f"train.lr_groups={list(cfg.train.lr_groups)} with the transfer strategy: transfer "
            "trains the head alone, which the groups' patterns may not name; leave "
            "train.lr_groups empty, or drop transfer from retrain.strategy/candidates"
        )
    target = str(cfg.strategy.get("_target_", ""))
    if tournament(r) and target.rsplit(".", 1)[-1] in STATEFUL_STRATEGIES:
        problems.append(
            f"retrain.candidates={list(r.candidates)} with strategy {target}: its server "
            "optimizer keeps one state across rounds, which the tournament's models would "
            "share: use a stateless strategy (strategy=fedavg, fedprox, fedmedian, ...), or "
            "one candidate"
        )
    if r.get("anchor_mu", 0.0) > 0:
        if target.endswith("FedProx"):
            problems.append(
                "retrain.anchor_mu with strategy=fedprox: FedProx anchors its proximal term at "
                "each round's incoming model, retrain.anchor_mu at the serving model; use one "
                "of them"
            )
        if cfg.scenario.get("stream") is None or cfg.scenario.num_periods <= 1:
            problems.append(
                "retrain.anchor_mu: anchors a retrain at the serving model, and a static run "
                "has no retrains (use a drift scenario, e.g. scenario=sea_recurring); leave it 0"
            )
        elif cfg.adaptation.mode != AdaptationMode.single.value:
            problems.append(
                f"retrain.anchor_mu with adaptation={mode}: not combined with clusters yet; "
                "use adaptation=single or leave it 0"
            )
        if strategy in (RetrainStrategy.full, RetrainStrategy.transfer, RetrainStrategy.reuse):
            problems.append(
                f"retrain.anchor_mu with retrain.strategy={strategy.value}: the anchor holds an "
                "incremental fine-tune near the serving model, and this strategy does not "
                "fine-tune it; use strategy=incremental or auto, or leave it 0"
            )
    return problems


FOLDER_STREAM = "fedretrain.deploy.stream.FolderStream"  # a deployed site's data folder


def _check_windows(cfg: DictConfig) -> list[str]:
    """Retraining windows and a daily round budget keep the wall clock: a deployment's."""
    p = cfg.policy
    if not p.get("windows") and p.get("max_rounds_per_day") is None:
        return []
    keys = "policy.windows / policy.max_rounds_per_day"
    problems = []
    stream = cfg.scenario.get("stream")
    if stream is None or str(stream.get("_target_")) != FOLDER_STREAM:
        problems.append(
            f"{keys}: wall-clock retraining windows and a daily budget apply to a deployment "
            "(scenario=deployed, `fedretrain server`), whose periods happen in real time; a "
            "simulation's periods have no clock: leave them unset"
        )
    mode = AdaptationMode(cfg.adaptation.mode).value
    if mode != AdaptationMode.single.value:
        problems.append(
            f"{keys} with adaptation={mode}: a clustered run's retrains are not "
            "scheduled by windows yet: use adaptation=single, or leave them unset"
        )
    budget, rounds = p.get("max_rounds_per_day"), cfg.retrain.max_rounds
    if budget is not None and budget < rounds:
        problems.append(
            f"policy.max_rounds_per_day={budget} is below retrain.max_rounds={rounds}: no "
            "retrain could ever start; raise the budget or lower retrain.max_rounds"
        )
    return problems


def _check_clustered(cfg: DictConfig) -> list[str]:
    """What adaptation=clustered (and its oracle) does not combine with (yet)."""
    problems = []
    if cfg.adaptation.mode == AdaptationMode.oracle.value and cfg.scenario.name == "deployed":
        problems.append(
            "adaptation=oracle: knows each site's true concept, which only a simulated "
            "scenario has: use adaptation=clustered in a deployment"
        )
    if cfg.scenario.num_periods <= 1 or cfg.scenario.stream is None:
        problems.append(
            "adaptation=clustered: needs a drift scenario (monitoring periods), e.g. "
            "scenario=sine_staggered"
        )
    if cfg.release.get("memory_periods") or cfg.retrain.get("rehearsal_periods"):
        problems.append(
            "release.memory_periods / retrain.rehearsal_periods with adaptation=clustered: a "
            "cluster's sites already train on their concept's buffer; not combined yet"
        )
    if cfg.release.get("group_margin") is not None:
        problems.append(
            "release.group_margin with adaptation=clustered: a cluster's gate does not compare "
            "groups of users yet: use adaptation=single, or release.group_margin=null"
        )
    if cfg.privacy.user_level:
        problems.append(
            "adaptation=clustered with privacy.user_level=true: user-level DP accounts every "
            "round as a sample of the whole federation (Flower's DP strategy), while a "
            "cluster's rounds train its own sites only: use site-level DP-SGD "
            "(privacy.user_level=false), or adaptation=single"
        )
    return problems


def assemble(cfg: DictConfig, typed: dict[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of ``cfg`` from its groups, typed by :func:`typed_groups`."""
    # Target nodes stay DictConfigs: instantiate() and error messages want them as written.
    typed["task"].dataset, typed["task"].model = cfg.task.dataset, cfg.task.model
    typed["data"].partitioner = cfg.data.partitioner
    typed["scenario"].stream = cfg.scenario.stream
    typed["scenario"].schedule = cfg.scenario.schedule
    typed["monitor"].detectors = list(cfg.monitor.detectors)
    privacy = typed["privacy"]
    if privacy.stats_feature_bound is None:  # null: the bound the task declares
        privacy.stats_feature_bound = typed["task"].feature_bound
    return RunConfig(strategy=cfg.strategy, **{group: typed[group] for group in GROUPS})


def strategy_kwargs(runtime: RuntimeConfig) -> dict[str, Any]:
    """The sampling arguments every Flower strategy takes, derived from ``runtime``.

    In simulation every site exists from the start, so the strategy waits for all of them and
    samples by fraction alone (at least one site).
    """
    return {
        "fraction_train": runtime.fraction_train,
        "fraction_evaluate": runtime.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if runtime.fraction_evaluate > 0 else 0,
        "min_available_nodes": runtime.num_clients,
    }


def _check_stats_bound(cfg: DictConfig) -> list[str]:
    """Noisy monitoring statistics need a feature bound, from the privacy group or the task;
    only a drift scenario sends statistics at all."""
    privacy, task = cfg.privacy, cfg.task
    noisy = privacy.get("stats_noise_multiplier") is not None
    if not noisy or cfg.scenario.get("stream") is None:
        return []
    if privacy.get("stats_feature_bound") is not None or task.get("feature_bound") is not None:
        return []
    default = " (privacy=dpsgd noises them by default)" if privacy.get("enabled") else ""
    return [
        f"privacy.stats_noise_multiplier={privacy.stats_noise_multiplier}: the monitoring "
        f"statistics are noised{default}, and their sums need a feature bound that task "
        f"{task.get('name')} does not declare (task.feature_bound=null): set "
        "privacy.stats_feature_bound=B, the largest feature magnitude of your data (e.g. 4.0 "
        "for standardised features), or privacy.stats_noise_multiplier=null to send exact "
        "statistics (then they are not private)"
    ]


def _check_user_level_dp(cfg: DictConfig) -> list[str]:
    """Flower's accounted server-side clipping needs plain FedAvg, and our reply validation
    in front of it (a zero update makes its clipping divide by zero)."""
    problems = []
    if cfg.strategy._target_ != "flwr.serverapp.strategy.FedAvg":
        problems.append(
            f"privacy.user_level=true needs strategy=fedavg (Flower accounts user-level DP only "
            f"for FedAvg's mean); got {cfg.strategy._target_}"
        )
    if not cfg.validation.enabled:
        problems.append(
            "privacy.user_level=true needs validation on (validation=default): replies are "
            "checked before Flower's clipping, which fails on a zero update"
        )
    return problems


def _check_device(runtime: RuntimeConfig) -> list[str]:
    if torch.cuda.is_available():
        return []
    problems = []
    if runtime.device is Device.cuda:
        problems.append(
            "runtime.device=cuda: torch sees no CUDA device here; use runtime.device=auto or cpu"
        )
    if runtime.gpus_per_client > 0:
        problems.append(
            f"runtime.gpus_per_client={runtime.gpus_per_client}: torch sees no CUDA device "
            "here; set it to 0"
        )
    return problems
