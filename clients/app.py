"""The ClientApp: each site trains and evaluates the global model on its own data, and in a
drift scenario reports its window's summable statistics to the monitor.

Flower builds a fresh ClientApp call for every message, so the run's pool, split and model
skeleton are cached per worker process, keyed by the run config, and so is each site's data.
In a drift scenario a message names its monitoring period and the site uses that period's
window (``fedretrain.site.ScenarioFederation``). A deployed site (``data-dir`` in its node
config, set by ``fedretrain agent``) reads the window from its folder instead
(:class:`fedretrain.deploy.stream.FolderStream`) and reports the files it quarantined and the
rows it dropped with its statistics.

The handlers carry no attack code: simulation's attack harness is a Flower mod around them
(:mod:`clients.attack`), a no-op unless the run config sets ``attack``.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from hydra.utils import instantiate

from clients.attack import LABEL_MAP_KEY, REVERSED_LABELS, attack_mod
from fedretrain.config import RunConfig, from_yaml
from fedretrain.finetune import anchor_tensors, load_travelling, training_only, travelling_state
from fedretrain.flower.arrays import to_numpy, to_record
from fedretrain.flower.cohorts import cohort_mod
from fedretrain.flower.logs import quiet_flower
from fedretrain.flower.records import (
    ALLOWED_TARGETS_KEY,
    ANCHOR_MU_KEY,
    ANCHOR_RECORD,
    CANARY_KEY,
    DATA_DIR_KEY,
    DATA_REPORT_KEY,
    INCOMING_EVAL_KEY,
    LEDGER_DIR_KEY,
    MEMORY_KEY,
    MODEL_SCORES_KEY,
    MODELS_KEY,
    SITE_ID_KEY,
    Instruction,
    buffer_start,
    data_report_record,
    declined_reply,
    edges_from_record,
    epsilon_metrics,
    eval_metrics,
    model_record_name,
    serving_cluster,
    stats_record,
    train_metrics,
)
from fedretrain.groups import group_ids
from fedretrain.metrics import EvalResult
from fedretrain.model_io import numpy_state
from fedretrain.monitor.private import StatsMechanism, ledgered
from fedretrain.monitor.private_scores import privatize_scores
from fedretrain.monitor.stats import HistogramEdges, WindowStats
from fedretrain.privacy.releases import AGAIN, RELEASED_AGAIN, Release, ReleaseCache, release_key
from fedretrain.retraining.port import digest
from fedretrain.site import ScenarioFederation, SimulatedFederation, Site, model_for, select_device
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.training import evaluate, lr_at, predict, train
from fedretrain.validation import NO_DATA_PHASE

if TYPE_CHECKING:
    from fedretrain.deploy.stream import FolderStream
    from fedretrain.privacy import PrivacyLedger
    from fedretrain.privacy.dp_sgd import DPTrainResult

log = logging.getLogger(__name__)
SCORES_ARRAY = "model-scores"  # a ledgered release's per-model scores, beside its statistics
quiet_flower(level=None)  # a site's own Flower lines (a Ray actor's, a ClientApp process's) plain

# In simulation a node runs a cohort of sites per message (cohort_mod, outermost), each through
# the attack harness (a no-op unless the run config sets attack) and its handler on its own.
app = ClientApp(mods=[cohort_mod, attack_mod])


@lru_cache(maxsize=2)
def _federation(config_yaml: str, num_partitions: int) -> SimulatedFederation:
    cfg = from_yaml(config_yaml)
    torch.set_num_threads(cfg.runtime.torch_threads)
    return SimulatedFederation(cfg, num_partitions)


@cache  # a worker serves any of the run's sites, so keep them all
def _site(config_yaml: str, partition_id: int, num_partitions: int) -> tuple[RunConfig, Site]:
    federation = _federation(config_yaml, num_partitions)
    return federation.cfg, federation.site(partition_id)


@lru_cache(maxsize=2)
def _scenario(config_yaml: str, num_partitions: int) -> ScenarioFederation:
    cfg = from_yaml(config_yaml)
    torch.set_num_threads(cfg.runtime.torch_threads)
    return ScenarioFederation(cfg, num_partitions)


@lru_cache(maxsize=2)
def _deployed(
    config_yaml: str, allowed: tuple[str, ...]
) -> tuple[RunConfig, FolderStream, torch.nn.Module, torch.device]:
    from fedretrain.deploy.stream import FolderStream  # pandas: deployed sites only
    from fedretrain.deploy.trust import check_site_config

    cfg = from_yaml(config_yaml)
    check_site_config(cfg, allowed)  # before anything of the config is built
    torch.set_num_threads(cfg.runtime.torch_threads)
    stream = instantiate(cfg.scenario.stream)
    if not isinstance(stream, FolderStream):
        raise TypeError(
            f"this site reads its data from a folder ({DATA_DIR_KEY} in its node config) but "
            f"the run's scenario.stream is {cfg.scenario.stream._target_}: run a deployment "
            "scenario (scenario=deployed)"
        )
    device = select_device(cfg.runtime.device)
    model = model_for(cfg, stream.input_shape, stream.num_classes).to(device)
    return cfg, stream, model, device


def _folder_site(
    config_yaml: str, directory: Path, site_id: int, period: int, allowed: tuple[str, ...]
) -> tuple[RunConfig, Site, dict[str, Any]]:
    """A deployed site's window for ``period``: its folder's new files, split into train and
    holdout as a simulated window is; and the folder's report (quarantined files, bad rows).
    Only targets from the ``allowed`` packages are built."""
    cfg, stream, model, device = _deployed(config_yaml, allowed)
    taken = stream.folder(directory).take(period)
    data = stream.dataset(taken)
    train_data, holdout = _split(cfg, data, site_id, period)
    return cfg, Site(site_id, train_data, holdout, model, device), taken.report


def _split(
    cfg: RunConfig, data: ArrayDataset, site_id: int, period: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """A deployed window's (train, holdout), the same split every time it is read."""
    rng = np.random.default_rng([cfg.runtime.seed, 2, site_id, period])
    return data.split(cfg.data.holdout_fraction, rng)


def _earlier_window(
    instruction: Instruction, context: Context, site: Site, period: int, part: int = 0
) -> ArrayDataset | None:
    """The training part (``part=1``: the holdout) of an earlier ``period``'s window of
    ``site``, as it was read then; None for a deployed site that took no data in that period
    (it was offline)."""
    data_dir = context.node_config.get(DATA_DIR_KEY)
    if not data_dir:
        num_partitions = int(cast(int, context.node_config["num-partitions"]))
        scenario = _scenario(instruction.config_yaml, num_partitions)
        return scenario.window(site.partition_id, period)[part]
    from fedretrain.deploy.trust import parse_allowed

    allowed = parse_allowed(cast(str | None, context.node_config.get(ALLOWED_TARGETS_KEY)))
    cfg, stream, _, _ = _deployed(instruction.config_yaml, allowed)
    taken = stream.folder(Path(str(data_dir))).taken(period)
    if taken is None:
        return None
    data = stream.dataset(taken)
    return _split(cfg, data, site.partition_id, period)[part]


def _buffered(
    site: Site, instruction: Instruction, config: ConfigRecord, context: Context
) -> ArrayDataset:
    """The site's training data: its window of the period, after its earlier windows from the
    start of its buffer when the round names one (a cluster's model learns from its
    concept's data so far)."""
    period = instruction.period
    if period is None:
        return site.train_data
    start = buffer_start(config, site.partition_id, period)
    earlier = [_earlier_window(instruction, context, site, p) for p in range(start, period)]
    parts = [d for d in earlier if d is not None and len(d)] + [site.train_data]
    if len(parts) == 1:
        return site.train_data
    x = np.concatenate([d.x for d in parts])
    y = np.concatenate([d.y for d in parts])
    return ArrayDataset(x, y, site.train_data.num_classes)


def _load(msg: Message, context: Context) -> tuple[RunConfig, Site, Instruction]:
    """The run config, this site's data for the instruction, and the model loaded with the
    message's weights."""
    instruction = Instruction.from_record(msg.content.config_records["config"])
    cfg, site, _ = _site_for(instruction, context)
    _load_weights(site, msg.content.array_records["arrays"], instruction)
    return cfg, site, instruction


def torch_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` (keeping the record), decoded by
    :func:`fedretrain.flower.arrays.decode`."""
    return {k: torch.from_numpy(v) for k, v in to_numpy(record).items()}


def _load_weights(site: Site, record: ArrayRecord, instruction: Instruction) -> None:
    """The weights a message carries, into the site's model: under ``train.freeze`` all but
    the frozen arrays, which the site holds itself (and checks against the server's)."""
    load_travelling(site.model, torch_state(record), instruction.frozen_digest)


def _site_for(
    instruction: Instruction, context: Context
) -> tuple[RunConfig, Site, dict[str, Any] | None]:
    """This site for the instruction, and its folder's report when it is a deployed site."""
    data_dir = context.node_config.get(DATA_DIR_KEY)
    if data_dir:
        if instruction.period is None:
            raise ValueError(
                "a deployed site (data-dir in its node config) serves monitoring periods only: "
                "run a deployment scenario (scenario=deployed)"
            )
        from fedretrain.deploy.trust import parse_allowed

        site_id = int(cast(int, context.node_config.get(SITE_ID_KEY, 0)))
        allowed = parse_allowed(cast(str | None, context.node_config.get(ALLOWED_TARGETS_KEY)))
        return _folder_site(
            instruction.config_yaml, Path(str(data_dir)), site_id, instruction.period, allowed
        )
    partition_id = int(cast(int, context.node_config["partition-id"]))
    num_partitions = int(cast(int, context.node_config["num-partitions"]))
    if instruction.period is None:
        cfg, site = _site(instruction.config_yaml, partition_id, num_partitions)
    else:
        scenario = _scenario(instruction.config_yaml, num_partitions)
        train_data, holdout = scenario.window(partition_id, instruction.period)
        cfg = scenario.cfg
        site = Site(partition_id, train_data, holdout, scenario.model, scenario.device)
    return cfg, site, None


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    cfg, site, instruction = _load(msg, context)
    if not len(site.train_data):
        period = instruction.period
        declined = declined_reply(msg, f"no training data in period {period}", phase=NO_DATA_PHASE)
        if instruction.evaluate_incoming and len(site.holdout):  # it still scores the model
            for name, record in _incoming_eval(cfg, site).items():
                declined.content[name] = record
        return declined
    lr = lr_at(cfg.train, instruction.server_round, instruction.num_rounds)
    seed = np.random.SeedSequence([cfg.runtime.seed, site.partition_id, instruction.server_round])
    generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
    buffered = _buffered(site, instruction, msg.content.config_records["config"], context)
    data = _train_data(buffered, context)
    scored = _incoming_eval(cfg, site) if instruction.evaluate_incoming else {}
    mu, anchor = _proximal(msg, site, instruction)
    if not cfg.privacy.enabled:
        with training_only(site.model, instruction.train_only):
            result = train(site.model, data, cfg.train, lr, site.device, generator, mu, anchor)
        metrics = train_metrics(result, site.partition_id)
        arrays = to_record(travelling_state(site.model))
        content = RecordDict({"arrays": arrays, "metrics": metrics, **scored})
        return Message(content=content, reply_to=msg)
    # DP-SGD: a round asked for again (the server resumed after a crash) is answered with the
    # update already released, at no new ε (fedretrain.privacy.releases).
    folder = _ledger_folder(site, instruction, context)
    cache = ReleaseCache(folder, site.partition_id)
    incoming = digest(to_numpy(msg.content.array_records["arrays"]))
    key = release_key(
        instruction.config_yaml, instruction.server_round, instruction.period, incoming
    )
    released = cache.get(key)
    if released is None:
        with training_only(site.model, instruction.train_only):
            outcome = _dp_train(
                cfg, site, data, instruction, lr, generator, folder, key, mu, anchor
            )
        if isinstance(outcome, str):  # it still scored the model it was sent
            declined = declined_reply(msg, outcome)
            for name, record in scored.items():
                declined.content[name] = record
            return declined
        metrics = train_metrics(outcome.train, site.partition_id)
        spent, total = outcome.epsilon_spent, outcome.epsilon_total
        ran = outcome.entry.mechanism
        metrics.update(epsilon_metrics(site.partition_id, spent, total, ran))
        sent = {k: cast(float, v) for k, v in metrics.items()}
        released = Release(key, numpy_state(travelling_state(site.model)), sent)
        cache.put(released)  # after the ledger's entry, before the update leaves the site
    else:
        log.info(
            "site %d: round %d was released already; sending the same update (no new ε)",
            site.partition_id,
            instruction.server_round,
        )
    arrays = to_record(released.arrays)
    metrics = MetricRecord(released.metrics)  # type: ignore[arg-type]
    content = RecordDict({"arrays": arrays, "metrics": metrics, **scored})
    return Message(content=content, reply_to=msg)


def _incoming_eval(cfg: RunConfig, site: Site) -> dict[str, ConfigRecord]:
    """The model just loaded, scored on the site's holdout as the evaluate handler scores it:
    it travels in the train reply (a config record, so that the reply keeps the one metric
    record Flower's strategies aggregate)."""
    result = _holdout_eval(cfg, site)
    metrics = eval_metrics(result, site.partition_id)
    return {INCOMING_EVAL_KEY: ConfigRecord(dict(metrics))}  # type: ignore[arg-type]


def _dp_train(
    cfg: RunConfig,
    site: Site,
    data: ArrayDataset,
    instruction: Instruction,
    lr: float,
    generator: torch.Generator,
    folder: Path,
    request: str,
    proximal_mu: float,
    anchor: list[torch.Tensor] | None,
) -> DPTrainResult | str:
    """DP-SGD on ``data``, accounted in the site's ledger; the reason instead if the site's
    budget does not allow the round.

    ``request`` (:func:`~fedretrain.privacy.releases.release_key`) goes into the ledger's tag:
    a request trained twice (its release was not cached) is marked so in its second entry.
    """
    from fedretrain.privacy import PrivacyLedger, plan_training
    from fedretrain.privacy.dp_sgd import dp_train  # opacus: only when used

    pid = site.partition_id
    ledger = PrivacyLedger.open(folder / f"site-{pid}.json", pid)
    plan = plan_training(cfg.privacy, cfg.train, len(data), rounds_per_cycle=instruction.num_rounds)
    decision = ledger.would_exceed(plan.composition, cfg.privacy.epsilon_budget, cfg.privacy.delta)
    if not decision.allowed:
        return decision.reason
    tag = f"round {instruction.server_round}"
    if instruction.period is not None:
        tag += f" period {instruction.period}"
    tag += f" request {request[:12]}"
    if any(entry.tag.removesuffix(AGAIN) == tag for entry in ledger.entries):
        log.warning("site %d: %s trained again, with no cached release: ε counted twice", pid, tag)
        tag += AGAIN
    return dp_train(
        site.model,
        data,
        cfg.train,
        cfg.privacy,
        lr,
        site.device,
        generator,
        ledger,
        tag,
        plan=plan,
        proximal_mu=proximal_mu,
        anchor=anchor,
    )


def _proximal(
    msg: Message, site: Site, instruction: Instruction
) -> tuple[float, list[torch.Tensor] | None]:
    """The proximal term's mu and anchor: the serving model the message carries
    (``retrain.anchor_mu``), else FedProx's mu at the incoming weights (no anchor)."""
    if instruction.anchor_mu <= 0:
        return instruction.proximal_mu, None
    record = msg.content.array_records.get(ANCHOR_RECORD)
    if record is None:
        raise ValueError(f"the instruction sets {ANCHOR_MU_KEY} but carries no {ANCHOR_RECORD!r}")
    with training_only(site.model, instruction.train_only):
        anchor = anchor_tensors(site.model, torch_state(record))
    return instruction.anchor_mu, anchor


def _ledger_folder(site: Site, instruction: Instruction, context: Context) -> Path:
    """Where a site keeps its privacy ledger and its last release: a deployed site in the
    folder its node config names (``ledger-dir``), a simulated site in the folder the server's
    instruction names (the run folder)."""
    folder = context.node_config.get(LEDGER_DIR_KEY) or instruction.ledger_dir
    if not folder:
        raise ValueError(
            f"privacy is on but site {site.partition_id} has no ledger folder: start the "
            f"SuperNode with --node-config '{LEDGER_DIR_KEY}=\"/path\"'"
        )
    return Path(str(folder))


def _train_data(data: ArrayDataset, context: Context) -> ArrayDataset:
    """The site's training data, its labels read through the node config's ``label-map`` when
    that names one: ``reversed`` maps y -> K-1-y (the attack harness sets it on label-flipping
    sites)."""
    label_map = context.node_config.get(LABEL_MAP_KEY)
    if label_map is None:
        return data
    if label_map != REVERSED_LABELS:
        raise ValueError(
            f"node config {LABEL_MAP_KEY}={label_map!r}: the only label map is {REVERSED_LABELS!r}"
        )
    return ArrayDataset(data.x, data.num_classes - 1 - data.y, data.num_classes)


def _holdout_eval(cfg: RunConfig, site: Site) -> EvalResult:
    """The loaded model on the site's holdout, by group too when the task has groups."""
    groups = group_ids(site.holdout, cfg.task)
    return evaluate(site.model, site.holdout, site.device, groups=groups)


def _memory(site: Site, instruction: Instruction, context: Context, periods: list[int]) -> Site:
    """The site with the holdouts of earlier ``periods`` together as its holdout: what the
    gate asks a candidate to remember (``release.memory_periods``)."""
    parts = [_earlier_window(instruction, context, site, p, part=1) for p in periods]
    kept = [d for d in parts if d is not None and len(d)]
    if not kept:
        return replace(site, holdout=site.holdout.subset(np.arange(0)))
    x = np.concatenate([d.x for d in kept])
    y = np.concatenate([d.y for d in kept])
    return replace(site, holdout=ArrayDataset(x, y, site.holdout.num_classes))


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    cfg, site, instruction = _load(msg, context)
    memory = msg.content.config_records["config"].get(MEMORY_KEY)
    if memory:
        site = _memory(site, instruction, context, [int(p) for p in cast(list[int], memory)])
    result = _holdout_eval(cfg, site)
    metrics = eval_metrics(result, site.partition_id)
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("monitor")
def monitor_handler(msg: Message, context: Context) -> Message:
    """The window's summable statistics under the serving model: all that leaves the site.

    With ``privacy.stats_noise_multiplier`` the statistics are clipped and noised first
    (:mod:`fedretrain.monitor.private`), and so are the per-model scores of a clustered run
    (:mod:`fedretrain.monitor.private_scores`), the noise seeded from the operating system's
    entropy unless ``privacy.reproducible``. Under DP-SGD each release is recorded in the
    site's ledger before it leaves (:func:`_ledgered_stats`).
    """
    config = msg.content.config_records["config"]
    instruction = Instruction.from_record(config)
    cfg, site, folder_report = _site_for(instruction, context)
    cluster = serving_cluster(config, site.partition_id)
    scored = None
    if cluster is not None:  # adaptation=clustered; the fingerprint keys a ledgered release
        models_id = _models_id(msg) if ledgered(cfg.privacy) else ""
        scored = _Scored(cluster, _model_scores(msg, site, instruction), models_id)
    served = "arrays" if cluster is None else model_record_name(cluster)
    _load_weights(site, msg.content.array_records[served], instruction)
    canary = config.get(CANARY_KEY)
    if canary is not None and site.partition_id in cast(list[int], canary):
        candidate = msg.content.array_records["candidate"]  # this site serves the candidate
        _load_weights(site, candidate, instruction)
    edges = edges_from_record(msg.content.array_records["edges"])
    whom: dict[str, int | float] = {SITE_ID_KEY: site.partition_id}
    if ledgered(cfg.privacy):
        outcome = _ledgered_stats(cfg, site, instruction, context, edges, scored)
        if isinstance(outcome, str):
            return declined_reply(msg, outcome)
        arrays = dict(outcome.arrays)
        scores = arrays.pop(SCORES_ARRAY, None)
        record = to_record(arrays)
        whom = dict(outcome.metrics)
    else:
        stats, scores = _private_release(cfg, site, instruction, edges, scored)
        record = stats_record(stats)
    content = RecordDict({"stats": record, "site": MetricRecord(whom)})  # type: ignore[arg-type]
    if scores is not None:
        content[MODEL_SCORES_KEY] = to_record({"table": scores})
    if folder_report is not None:
        content[DATA_REPORT_KEY] = data_report_record(folder_report)
    return Message(content=content, reply_to=msg)


@dataclass(frozen=True)
class _Scored:
    """A clustered site's exact per-model scores: the cluster it serves, one row (cluster,
    correct, examples) per live model, and a fingerprint of the models scored (under DP-SGD;
    empty otherwise)."""

    cluster: int
    exact: np.ndarray
    models_id: str


def _model_scores(msg: Message, site: Site, instruction: Instruction) -> np.ndarray:
    """Every live model's (cluster, correct, examples) on the site's new window: summable
    counts, the only thing about the other models that leaves the site."""
    config = msg.content.config_records["config"]
    rows: list[tuple[int, int, int]] = []
    for cluster in cast(list[int], config[MODELS_KEY]):
        record = msg.content.array_records[model_record_name(int(cluster))]
        _load_weights(site, record, instruction)
        correct = examples = 0
        for data in (site.train_data, site.holdout):
            probs, _ = predict(site.model, data, site.device)
            correct += int((probs.argmax(axis=1) == data.y).sum()) if len(data) else 0
            examples += len(data)
        rows.append((int(cluster), correct, examples))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _models_id(msg: Message) -> str:
    """A fingerprint of every live model the query sent: part of a ledgered release's key."""
    config = msg.content.config_records["config"]
    weights: dict[str, np.ndarray] = {}
    for cluster in cast(list[int], config[MODELS_KEY]):
        record = msg.content.array_records[model_record_name(int(cluster))]
        weights |= {f"{int(cluster)}/{k}": v for k, v in to_numpy(record).items()}
    return digest(weights)


def _noise_rng(
    cfg: RunConfig, site: Site, instruction: Instruction, stream: int
) -> np.random.Generator:
    """The source of a release's noise: seeded from the run when ``privacy.reproducible``
    (``stream`` tells the releases of one period apart), else from the operating system."""
    if cfg.privacy.reproducible:
        period = -1 if instruction.period is None else instruction.period
        return np.random.default_rng([cfg.runtime.seed, site.partition_id, period + 1, stream])
    return np.random.default_rng(secrets.randbits(128))


def _private_release(
    cfg: RunConfig,
    site: Site,
    instruction: Instruction,
    edges: HistogramEdges,
    scored: _Scored | None,
) -> tuple[WindowStats, np.ndarray | None]:
    """The window's statistics and, in a clustered run, the per-model scores, as they leave
    the site: both noised when the config says so (the scores' served row and examples
    derived from the noisy statistics, :func:`~fedretrain.monitor.private_scores.
    privatize_scores`)."""
    stats = _private_stats(cfg, site, instruction, edges)
    if scored is None:
        return stats, None
    sigma = StatsMechanism.from_config(cfg.privacy).noise_multiplier
    rng = _noise_rng(cfg, site, instruction, stream=10)
    return stats, privatize_scores(scored.exact, scored.cluster, stats, sigma, rng)


def _private_stats(
    cfg: RunConfig, site: Site, instruction: Instruction, edges: HistogramEdges
) -> WindowStats:
    """The window's statistics under the loaded model, noised when the config says so."""
    mechanism = StatsMechanism.from_config(cfg.privacy)  # off: exact statistics
    parts = []
    for data in (site.train_data, site.holdout):
        probs, losses = predict(site.model, data, site.device)
        parts.append(mechanism.window_stats(data.x, data.y, probs, losses, edges))
    rng = _noise_rng(cfg, site, instruction, stream=9)
    return mechanism.privatize(parts[0] + parts[1], rng)


def _ledgered_stats(
    cfg: RunConfig,
    site: Site,
    instruction: Instruction,
    context: Context,
    edges: HistogramEdges,
    scored: _Scored | None = None,
) -> Release | str:
    """Noisy statistics recorded in the site's ledger, so that its one ε covers them; the
    reason instead when the release would take the site past its budget.

    A clustered site's noisy per-model scores travel in the same release (as
    :data:`SCORES_ARRAY`) and are an entry of the ledger of their own, recorded before the
    statistics' entry: the reply's metrics name the statistics' mechanism (what the server
    audits) and the cumulative ε after both. With one live model the scores say nothing
    beyond the statistics and cost nothing.

    Like a training round, a request asked for again (a resumed server) is answered with the
    release already made, at no new ε; where that release is lost, the second one is
    recorded too, and its tag says so.
    """
    from fedretrain.privacy import PrivacyLedger

    pid, privacy = site.partition_id, cfg.privacy
    folder = _ledger_folder(site, instruction, context)
    cache = ReleaseCache(folder, pid, name="statistics")
    served = digest(numpy_state(travelling_state(site.model)))
    models = "" if scored is None else scored.models_id
    key = release_key(
        instruction.config_yaml,
        instruction.server_round,
        instruction.period,
        served + digest({"edges": edges.interior}) + models,
    )
    released = cache.get(key)
    if released is not None:
        log.info("site %d: period %s's statistics were released already", pid, instruction.period)
        return released
    mechanism = StatsMechanism.from_config(privacy)
    ledger = PrivacyLedger.open(folder / f"site-{pid}.json", pid)
    release = mechanism.per_period()
    others = 0 if scored is None else int((scored.exact[:, 0] != scored.cluster).sum())
    releases = [release, mechanism.scores_release()] if others else [release]
    decision = ledger.would_exceed(releases, privacy.epsilon_budget, privacy.delta)
    if not decision.allowed:
        return (
            f"site {pid} declines to send period {instruction.period}'s statistics: they "
            f"would raise ε from {decision.epsilon_now:.2f} to {decision.epsilon_after:.2f} > "
            f"budget {decision.budget:.2f} at δ={privacy.delta:g}"
        )
    stats, scores = _private_release(cfg, site, instruction, edges, scored)
    before = ledger.epsilon(privacy.delta)
    if others:  # before the scores leave the site
        ledger.record(
            _release_tag(ledger, pid, "model scores", instruction, key),
            mechanism.scores_release(),
            privacy.delta,
        )
    tag = _release_tag(ledger, pid, "statistics", instruction, key)
    entry = ledger.record(tag, release, privacy.delta)  # before the statistics leave the site
    metrics = epsilon_metrics(pid, entry.epsilon - before, entry.epsilon, release)
    arrays = stats.to_arrays()
    if scores is not None:
        arrays[SCORES_ARRAY] = scores
    released = Release(key, arrays, metrics)
    cache.put(released)
    return released


def _release_tag(
    ledger: PrivacyLedger, pid: int, what: str, instruction: Instruction, key: str
) -> str:
    """A period's release's ledger tag, marked when the same request was recorded before
    (its cached release was lost: ε counted twice)."""
    tag = f"period {instruction.period} {what} request {key[:12]}"
    if any(entry.tag.removesuffix(RELEASED_AGAIN) == tag for entry in ledger.entries):
        log.warning("site %d: %s released again, with no cached release: ε counted twice", pid, tag)
        tag += RELEASED_AGAIN
    return tag
