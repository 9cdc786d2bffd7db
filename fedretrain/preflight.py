"""Every check a composed config gets before anything starts: the schema, then its targets.

:func:`to_typed` is what the entry points call (``fedretrain-simulate``, the ``flwr run``
ServerApp, ``fedretrain server``): it collects the schema's problems
(:func:`fedretrain.config.typed_groups`), checks that every ``_target_`` is importable and
accepts its keys, then builds each target once (dataset, partition, model, detectors,
strategy), so that a bad argument surfaces here and not in a worker process minutes later.
Every problem of a stage is reported at once, each naming the key, the bad value and what
would be valid.

This is the top floor of configuration: it imports what it builds, while
:mod:`fedretrain.config` stays the schema every module may import.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from fedretrain.config import (
    OWN_MODEL_KEYS,
    PRETRAINED_KEY,
    STRICT_KEY,
    RunConfig,
    RuntimeConfig,
    assemble,
    cross_checks,
    strategy_kwargs,
    typed_groups,
    uses_strategy,
)
from fedretrain.errors import ConfigError
from fedretrain.train_config import TrainConfig


def to_typed(cfg: DictConfig, build_targets: bool = True) -> RunConfig:
    """Validate a composed config and return it as typed objects; raise :class:`ConfigError`.

    Every group is checked even when an earlier one fails, so the user sees all problems at
    once. With ``build_targets`` the targets are also built once (dataset, partition, model,
    detectors, strategy), after the checks above have passed.
    """
    typed, problems = typed_groups(cfg)
    problems += target_problems(cfg)
    problems += tracking_problems(cfg)
    problems += cross_checks(cfg, typed)
    if problems:
        raise ConfigError(problems)
    if build_targets:
        problems += _build_targets(cfg, typed["runtime"], typed["train"])
    if problems:
        raise ConfigError(problems)
    return assemble(cfg, typed)


def tracking_problems(cfg: DictConfig) -> list[str]:
    """A tracking backend that is not installed where the run starts (sites never need it)."""
    if cfg.tracking.backend == "mlflow" and importlib.util.find_spec("mlflow") is None:
        return [
            "tracking=mlflow needs MLflow where the run starts: pip install "
            "'fedretrain[mlflow]' (mlflow-skinny), or tracking=none"
        ]
    if cfg.tracking.backend == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        return [
            "tracking=tensorboard needs TensorBoard where the run starts: pip install "
            "'fedretrain[tensorboard]', or tracking=none"
        ]
    return []


def target_problems(cfg: DictConfig) -> list[str]:
    """Every ``_target_`` node of ``cfg`` checked by :func:`check_target`, without building."""
    problems = check_target(cfg.task.dataset, "task.dataset")
    problems += check_target(cfg.task.model, "task.model", MODEL_RUNTIME_ARGS, OWN_MODEL_KEYS)
    problems += check_target(cfg.data.partitioner, "data.partitioner", ("num_partitions",))
    problems += check_target(cfg.strategy, "strategy", STRATEGY_RUNTIME_ARGS)
    if cfg.scenario.stream is not None:
        problems += check_target(cfg.scenario.stream, "scenario.stream")
        problems += check_target(cfg.scenario.schedule, "scenario.schedule", SCHEDULE_RUNTIME_ARGS)
    for i, detector in enumerate(cfg.monitor.detectors):
        problems += check_target(detector, f"monitor.detectors[{i}]", DETECTOR_RUNTIME_ARGS)
    return problems


def _locate(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ImportError(f"{target!r} is not a dotted path such as 'package.module.name'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)  # type: ignore[no-any-return]
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None


def check_target(
    node: Any, key: str, runtime_args: tuple[str, ...] = (), own_keys: tuple[str, ...] = ()
) -> list[str]:
    """Check that ``node`` names an importable ``_target_`` that accepts its keys.

    ``runtime_args`` are supplied by fedretrain when it builds the object and must not be set in
    the config; ``own_keys`` are read by fedretrain itself and never reach the target.
    Returns the problems found (empty when the node is fine).
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return [f"{key}: needs a '_target_' naming a class or function, got {node!r}"]
    try:
        target = _locate(str(node._target_))
    except ImportError as err:
        return [f"{key}._target_={node._target_}: cannot be imported ({err})"]
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return []  # builtins without signatures: let instantiate() judge
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    valid = [n for n in params if n not in runtime_args and n != "self"]
    problems = []
    for name in map(str, node):
        if name.startswith("_") or name in own_keys:
            continue
        if name in runtime_args:
            problems.append(f"{key}.{name}: is set by fedretrain at run time; remove it")
        elif name not in params:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(
                f"{key}.{name}: not an argument of {node._target_}; {hint}valid keys: {valid}"
            )
    return problems


def _model_problems(
    cfg: DictConfig, train: TrainConfig, shape: tuple[int, ...], num_classes: int
) -> list[str]:
    """The task's model built as every process builds it (DP-compatible layers, the
    pretrained file, frozen parameters), and its learning-rate groups checked."""
    from fedretrain.finetune import freeze, head_names, load_pretrained, lr_scales  # torch: late
    from fedretrain.site import check_transfer_head, factory_node

    target = cfg.task.model._target_
    try:
        model = instantiate(factory_node(cfg.task.model))(
            input_shape=shape, num_classes=num_classes
        )
    except Exception as err:
        return [f"task.model ({target}): {err}"]
    if cfg.privacy.enabled:
        from fedretrain.privacy.opacus_adapter import make_compatible  # opacus: late

        try:
            model = make_compatible(model, fix=cfg.privacy.fix_model)
        except ValueError as err:
            return [f"task.model ({target}) with privacy: {err}"]
    problems = []
    path = cfg.task.model.get(PRETRAINED_KEY)
    if path:
        try:
            load_pretrained(model, path, strict=bool(cfg.task.model.get(STRICT_KEY, True)))
        except ConfigError as err:
            problems += err.problems
    try:
        frozen = freeze(model, train.freeze)
        lr_scales(model, train.lr_multipliers)
        if uses_strategy(cfg.retrain, "transfer"):  # it trains the head on a frozen backbone
            names = [n for n, _ in model.named_parameters()]
            check_transfer_head(head_names(model), names, frozen)
    except ConfigError as err:
        problems += err.problems
    return problems


# Arguments fedretrain passes when it builds these targets: they are not config keys.
MODEL_RUNTIME_ARGS = ("input_shape", "num_classes")
SCHEDULE_RUNTIME_ARGS = ("num_sites", "num_periods", "seed")
DETECTOR_RUNTIME_ARGS = ("arl", "reference_periods", "stats_noise_std")
STRATEGY_RUNTIME_ARGS = (
    "fraction_train",
    "fraction_evaluate",
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn",
)


def _build_targets(cfg: DictConfig, runtime: RuntimeConfig, train: TrainConfig) -> list[str]:
    from fedretrain.monitor.monitor import build_detector  # hydra/scipy heavy, so late
    from fedretrain.site import build_pool, partition_pool  # torch/sklearn heavy, so late

    problems = []
    try:
        pool = build_pool(cfg.task.dataset)
    except Exception as err:
        return [f"task.dataset ({cfg.task.dataset._target_}): {err}"]
    try:
        partition_pool(cfg.data.partitioner, pool, runtime.num_clients, runtime.seed)
    except Exception as err:
        problems.append(f"data.partitioner with runtime.num_clients={runtime.num_clients}: {err}")
    if cfg.scenario.stream is not None:
        try:
            stream = instantiate(cfg.scenario.stream)
        except Exception as err:
            return [f"scenario.stream ({cfg.scenario.stream._target_}): {err}"]
        try:
            schedule = instantiate(cfg.scenario.schedule)(
                num_sites=runtime.num_clients,
                num_periods=cfg.scenario.num_periods,
                seed=runtime.seed,
            )
            if max(schedule.used_concepts) >= stream.num_concepts:
                top, count = max(schedule.used_concepts), stream.num_concepts
                problems.append(
                    f"scenario.schedule uses concept {top} but scenario.stream defines "
                    f"{count} concepts (ids 0..{count - 1}): add concepts or change the schedule"
                )
        except Exception as err:
            problems.append(f"scenario.schedule ({cfg.scenario.schedule._target_}): {err}")
        shape, num_classes = stream.input_shape, stream.num_classes
    else:
        shape, num_classes = pool.input_shape, pool.num_classes
    problems += _model_problems(cfg, train, shape, num_classes)
    from fedretrain.groups import feature_problem

    group_problem = feature_problem(cfg.task.get("group_feature"), shape)
    if group_problem is not None:
        problems.append(group_problem)
    if cfg.task.get("group_feature") is not None and pool.groups is not None:
        problems.append(
            "task.group_feature: the dataset has groups of its own (task.dataset.group_column); "
            "set one or the other"
        )
    for i, node in enumerate(cfg.monitor.detectors):
        try:
            noise = cfg.privacy.stats_noise_multiplier or 0.0  # what noise_std_for gives
            build_detector(node, arl=cfg.monitor.arl, reference_periods=1, stats_noise_std=noise)
        except Exception as err:
            problems.append(f"monitor.detectors[{i}] ({node._target_}): {err}")
    try:
        instantiate(cfg.strategy, _partial_=True)(**strategy_kwargs(runtime))
    except Exception as err:
        problems.append(f"strategy ({cfg.strategy._target_}): {err}")
    return problems
