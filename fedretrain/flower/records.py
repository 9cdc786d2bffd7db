"""Our types as Flower records, and back."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedretrain.flower.arrays import decode, to_numpy, to_record
from fedretrain.metrics import sum_confusion
from fedretrain.monitor.stats import HistogramEdges, WindowStats
from fedretrain.privacy.rdp import SampledGaussian
from fedretrain.privacy.tracking import EpsilonReport
from fedretrain.training import EvalResult, TrainResult
from fedretrain.validation import DECLINED_PHASE

CONFIG_KEY = "fedretrain-config"  # the composed run config, as YAML, in every instruction
NUM_ROUNDS_KEY = "num-rounds"
NUM_EXAMPLES_KEY = "num-examples"  # the weighting key of Flower's strategies
SERVER_ROUND_KEY = "server-round"  # the request's round, as Flower's strategies write it
PERIOD_KEY = "period"  # the monitoring period whose window a site uses; absent in static runs
MONITOR_QUERY = "query.monitor"  # message type of the per-period statistics query
EVALUATE_INCOMING_KEY = "evaluate-incoming"  # a train instruction: score the model sent, first
INCOMING_EVAL_KEY = "incoming-eval"  # a train reply: that score (eval_metrics, as a ConfigRecord)
LEDGER_DIR_KEY = "ledger-dir"  # simulation: the folder of the sites' privacy ledgers
MEMORY_KEY = "memory-periods"  # an evaluation on these earlier periods' holdouts instead
FROZEN_DIGEST_KEY = "frozen-digest"  # train.freeze: the frozen arrays every site must hold
TRAIN_ONLY_KEY = "train-only"  # a train instruction: only these arrays train (transfer's head)
# A train instruction's proximal term anchored at the serving model (retrain.anchor_mu): its
# mu here, the anchor's arrays as the ArrayRecord ANCHOR_RECORD.
ANCHOR_MU_KEY = "anchor-mu"
ANCHOR_RECORD = "anchor"
CANARY_KEY = "canary-sites"  # the sites that serve the candidate sent along in a monitor query
# adaptation=clustered: a monitor query carries every live model as ArrayRecord "model-<k>";
# its config lists the clusters, the assigned sites with their clusters, and the default one.
MODELS_KEY = "models"
SERVE_SITES_KEY = "serve-sites"
SERVE_CLUSTERS_KEY = "serve-clusters"
DEFAULT_CLUSTER_KEY = "default-cluster"
# A cluster's training round: each listed site trains on its windows from its period on.
BUFFER_SITES_KEY = "buffer-sites"
BUFFER_FROM_KEY = "buffer-from"
MODEL_SCORES_KEY = "model-scores"  # the reply's (clusters, 3) array: cluster, correct, examples
SITE_ID_KEY = "site-id"  # which site a reply is from: node ids change, site ids do not
DECLINED_KEY = "declined"  # a train reply that trained nothing: {"reason": why, "phase": ...}
# Deployment: a site's node config names its data folder (and its site id, SITE_ID_KEY); its
# monitor reply carries the folder's report (quarantined files, dropped rows) under this key.
DATA_DIR_KEY = "data-dir"
DATA_REPORT_KEY = "data-report"
# The packages whose _target_s a deployed site builds (fedretrain.deploy.trust), comma-separated.
ALLOWED_TARGETS_KEY = "allowed-targets"


def error_summary(reason: str | None) -> str:
    """The site's own words from a failed reply's error reason, without Flower's wrapping.

    Flower reports a ClientApp exception as ``<class '...'>:<'... Message: TEXT'>``, where TEXT
    may itself span lines; other reasons come through as their last line.

    >>> error_summary("<class 'flwr.clientapp.exception.ClientAppException'>:<'\\n"
    ...               "Exception ClientAppException occurred. Message: site 3 dropped out'>")
    'site 3 dropped out'
    >>> error_summary("Traceback (most recent call last):\\n  ...\\nValueError: bad shape")
    'ValueError: bad shape'
    >>> error_summary(None)
    'no reason given'
    """
    text = (reason or "").strip()
    if text.endswith("'>"):
        text = text[:-2]
    wrapped = _FLOWER_MESSAGE.search(text)
    if wrapped:
        text = wrapped.group(1)
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else "no reason given"


_FLOWER_MESSAGE = re.compile(r"occurred\. Message: (.*)\Z", re.DOTALL)


def instruction_config(
    config_yaml: str,
    num_rounds: int,
    period: int | None = None,
    ledger_dir: str | None = None,
    evaluate_incoming: bool = False,
    frozen_digest: str | None = None,
) -> ConfigRecord:
    """A fresh ConfigRecord for one round's instructions (Flower's strategies write into it).

    ``evaluate_incoming``: a train instruction also asks each site to evaluate the model it
    is sent on its holdout before training, and to send that with its update (one message
    wave where there would be two). ``frozen_digest``: the run freezes parameters, which do
    not travel; a site checks that its own frozen arrays have this fingerprint."""
    record = ConfigRecord({CONFIG_KEY: config_yaml, NUM_ROUNDS_KEY: num_rounds})
    if frozen_digest is not None:
        record[FROZEN_DIGEST_KEY] = frozen_digest
    if evaluate_incoming:
        record[EVALUATE_INCOMING_KEY] = True
    if period is not None:
        record[PERIOD_KEY] = period
    if ledger_dir is not None:
        record[LEDGER_DIR_KEY] = ledger_dir
    return record


@dataclass(frozen=True)
class Instruction:
    """What a site reads from an instruction's ConfigRecord."""

    config_yaml: str
    server_round: int
    num_rounds: int
    proximal_mu: float  # set by Flower's FedProx, 0 otherwise
    period: int | None = None  # the window to use in a drift scenario
    ledger_dir: str | None = None  # simulation: where sites keep their privacy ledgers
    evaluate_incoming: bool = False  # train: also evaluate the model sent, before training
    frozen_digest: str | None = None  # the server's frozen arrays (train.freeze), by digest
    train_only: tuple[str, ...] | None = None  # train these arrays alone (the transfer strategy)
    anchor_mu: float = 0.0  # the proximal term at the anchor the message carries, if any

    @classmethod
    def from_record(cls, config: ConfigRecord) -> Instruction:
        period = config.get(PERIOD_KEY)
        ledger_dir = config.get(LEDGER_DIR_KEY)
        frozen = config.get(FROZEN_DIGEST_KEY)
        only = config.get(TRAIN_ONLY_KEY)
        return cls(
            config_yaml=str(config[CONFIG_KEY]),
            server_round=int(cast(int, config.get(SERVER_ROUND_KEY, 0))),
            num_rounds=int(cast(int, config[NUM_ROUNDS_KEY])),
            proximal_mu=float(cast(float, config.get("proximal-mu", 0.0))),
            period=None if period is None else int(cast(int, period)),
            ledger_dir=None if ledger_dir is None else str(ledger_dir),
            evaluate_incoming=bool(config.get(EVALUATE_INCOMING_KEY, False)),
            frozen_digest=None if frozen is None else str(frozen),
            train_only=None if only is None else tuple(str(n) for n in cast(list[str], only)),
            anchor_mu=float(cast(float, config.get(ANCHOR_MU_KEY, 0.0))),
        )


def declined_reply(msg: Message, reason: str, phase: str = DECLINED_PHASE) -> Message:
    """A site's answer to a train instruction it will not carry out, recorded under ``phase``
    (its privacy budget; :data:`~fedretrain.validation.NO_DATA_PHASE`: no data this period)."""
    record = ConfigRecord({"reason": reason, "phase": phase})
    return Message(content=RecordDict({DECLINED_KEY: record}), reply_to=msg)


def decline_reason(reply: Message) -> tuple[str, str] | None:
    """(phase, reason) of a :func:`declined_reply`; None for any other reply."""
    if reply.has_error() or DECLINED_KEY not in reply.content.config_records:
        return None
    record = reply.content.config_records[DECLINED_KEY]
    return str(record.get("phase", DECLINED_PHASE)), str(record.get("reason", "no reason given"))


def data_report_record(report: dict[str, Any]) -> ConfigRecord:
    """A site folder's report (:meth:`fedretrain.deploy.folder.SiteFolder.take`) as a record."""
    return ConfigRecord({k: v for k, v in report.items() if isinstance(v, (int, str, list))})


def data_report(reply: Message) -> dict[str, Any] | None:
    """The folder report a deployed site sent with its statistics; None if it sent none."""
    if reply.has_error() or DATA_REPORT_KEY not in reply.content.config_records:
        return None
    return dict(reply.content.config_records[DATA_REPORT_KEY])


def epsilon_metrics(
    site: int, spent: float, total: float, mechanism: SampledGaussian
) -> dict[str, float | int]:
    """What a DP-SGD site adds to its train metrics: who it is, what it ran (σ, sample rate,
    steps: the server checks them against what it asked) and what the round cost it.

    ε may be infinite (σ = 0); a MetricRecord carries it as a float.
    """
    return {
        SITE_ID_KEY: site,
        "epsilon-spent": float(spent),
        "epsilon": float(total),
        "dp-noise-multiplier": float(mechanism.noise_multiplier),
        "dp-sample-rate": float(mechanism.sample_rate),
        "dp-steps": int(mechanism.steps),
    }


def epsilon_from_reply(reply: Message) -> EpsilonReport | None:
    """What a DP-SGD site's train reply says it ran and spent; None for a reply without it."""
    if reply.has_error() or len(reply.content.metric_records) != 1:
        return None
    metrics = next(iter(reply.content.metric_records.values()))
    try:
        site = int(cast(int, metrics[SITE_ID_KEY]))
        spent = float(cast(float, metrics["epsilon-spent"]))
        total = float(cast(float, metrics["epsilon"]))
    except (KeyError, TypeError, ValueError):
        return None
    try:
        ran: SampledGaussian | None = SampledGaussian(
            float(cast(float, metrics["dp-noise-multiplier"])),
            float(cast(float, metrics["dp-sample-rate"])),
            int(cast(int, metrics["dp-steps"])),
        )
    except (KeyError, TypeError, ValueError):
        ran = None
    examples = metrics.get(NUM_EXAMPLES_KEY)
    n = int(cast(int, examples)) if isinstance(examples, int | float) else None
    return EpsilonReport(site, spent, total, ran, n)


def stats_record(stats: WindowStats) -> ArrayRecord:
    return to_record(stats.to_arrays())


def stats_from_record(record: ArrayRecord) -> WindowStats:
    return WindowStats.from_arrays(to_numpy(record))


def edges_record(edges: HistogramEdges) -> ArrayRecord:
    return to_record({"interior": edges.interior})


def edges_from_record(record: ArrayRecord) -> HistogramEdges:
    return HistogramEdges(decode(record["interior"]))


def train_metrics(result: TrainResult, site: int) -> MetricRecord:
    """A site's training: the examples it trained on, its mean loss, and which site it is (the
    registry's lineage counts each site's training examples)."""
    return MetricRecord(
        {NUM_EXAMPLES_KEY: result.num_examples, "train-loss": result.mean_loss, SITE_ID_KEY: site}
    )


def trained_examples(replies: Iterable[Message], left_out: set[int]) -> dict[int, int]:
    """Training examples per site from train replies that name their site, except those of
    the nodes in ``left_out`` (failed or rejected: their updates were not aggregated)."""
    examples: dict[int, int] = {}
    for reply in replies:
        if reply.has_error() or int(reply.metadata.src_node_id) in left_out:
            continue
        for metrics in reply.content.metric_records.values():
            if SITE_ID_KEY in metrics and NUM_EXAMPLES_KEY in metrics:
                site = int(cast(int, metrics[SITE_ID_KEY]))
                examples[site] = int(cast(int, metrics[NUM_EXAMPLES_KEY]))
    return examples


def eval_metrics(result: EvalResult, site: int | None = None) -> MetricRecord:
    """A site's evaluation as counts that add up; ``site`` names it for per-site decisions."""
    record = MetricRecord(
        {
            NUM_EXAMPLES_KEY: result.num_examples,
            "loss-sum": result.loss_sum,
            "num-classes": int(result.confusion.shape[0]),
            "confusion": [int(v) for v in result.confusion.ravel()],
        }
    )
    if result.groups is not None:  # one confusion per group of users, summed like the rest
        record["num-groups"] = int(result.groups.shape[0])
        record["group-confusion"] = [int(v) for v in result.groups.ravel()]
    if site is not None:
        record[SITE_ID_KEY] = site
    return record


def reply_site(reply: Message) -> int | None:
    """The site an evaluate reply names, if it is readable and names one."""
    if reply.has_error() or len(reply.content.metric_records) != 1:
        return None
    site = next(iter(reply.content.metric_records.values())).get(SITE_ID_KEY)
    if isinstance(site, bool) or not isinstance(site, int | float) or site != int(site):
        return None
    return int(site)


def site_scores(replies: list[Message]) -> dict[int, tuple[int, int]]:
    """(correct, examples) per site from evaluate replies that name their site and add up."""
    from fedretrain.validation import confusion_problem

    scores: dict[int, tuple[int, int]] = {}
    for reply in replies:
        if reply.has_error() or len(reply.content.metric_records) != 1:
            continue
        metrics = next(iter(reply.content.metric_records.values()))
        if SITE_ID_KEY not in metrics:
            continue
        problem = confusion_problem(
            metrics.get("confusion"),
            metrics.get("num-classes"),
            metrics.get(NUM_EXAMPLES_KEY),
            metrics.get("loss-sum"),
        )
        if problem is None:
            result = eval_result(metrics)
            correct = int(np.trace(result.confusion))
            scores[int(cast(int, metrics[SITE_ID_KEY]))] = (correct, result.num_examples)
    return scores


def eval_result(record: MetricRecord) -> EvalResult:
    k = int(cast(int, record["num-classes"]))
    confusion = np.asarray(record["confusion"], dtype=np.int64).reshape(k, k)
    groups = None
    if "group-confusion" in record:
        g = int(cast(int, record["num-groups"]))
        groups = np.asarray(record["group-confusion"], dtype=np.int64).reshape(g, k, k)
    return EvalResult(
        int(cast(int, record[NUM_EXAMPLES_KEY])),
        float(cast(float, record["loss-sum"])),
        confusion,
        groups,
    )


def sum_eval_metrics(replies: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower ``evaluate_metrics_aggr_fn``: add the sites' statistics instead of averaging.

    Confusion matrices, loss sums and counts add up exactly, so the global scores computed from
    the result are those of one model evaluated on the union of the holdouts.
    """
    results = [eval_result(r) for reply in replies for r in reply.metric_records.values()]
    # Per-group matrices add up when every site sent them, with the same groups.
    per_group = [r.groups for r in results if r.groups is not None]
    shapes = {g.shape for g in per_group}
    groups = None
    if len(per_group) == len(results) and len(shapes) == 1:
        groups = np.sum(per_group, axis=0)
    total = EvalResult(
        num_examples=sum(r.num_examples for r in results),
        loss_sum=sum(r.loss_sum for r in results),
        confusion=sum_confusion(r.confusion for r in results),
        groups=groups,
    )
    return eval_metrics(total)


def model_record_name(cluster: int) -> str:
    return f"model-{cluster}"


def serving_cluster(config: ConfigRecord, site: int) -> int | None:
    """The cluster whose model ``site`` serves, from a monitor query's config; None when the
    query carries one model (adaptation=single)."""
    if config.get(MODELS_KEY) is None:
        return None
    sites = cast(list[int], config.get(SERVE_SITES_KEY, []))
    assigned = cast(list[int], config.get(SERVE_CLUSTERS_KEY, []))
    default = int(cast(int, config[DEFAULT_CLUSTER_KEY]))
    return int(dict(zip(sites, assigned, strict=True)).get(site, default))


def buffer_start(config: ConfigRecord, site: int, period: int) -> int:
    """The first period whose window ``site`` trains on in ``period``, from a train
    instruction's config: ``period`` itself unless the round names the site's buffer.

    >>> buffer_start(ConfigRecord({BUFFER_SITES_KEY: [1, 4], BUFFER_FROM_KEY: [2, 5]}), 4, 7)
    5
    >>> buffer_start(ConfigRecord({}), 4, 7)
    7
    """
    sites = cast(list[int], config.get(BUFFER_SITES_KEY, []))
    starts = cast(list[int], config.get(BUFFER_FROM_KEY, []))
    start = int(dict(zip(sites, starts, strict=True)).get(site, period))
    if not 0 <= start <= period:
        raise ValueError(
            f"site {site}: the round asks for windows from period {start} through {period}: "
            "a buffer starts at or before its period, and at 0 or later"
        )
    return start


def model_scores_problem(
    table: np.ndarray, clusters: list[int], window: int, served: tuple[int, int] | None
) -> str | None:
    """Why a site's per-model scores cannot be used, or None.

    ``table`` must hold one row (cluster, correct, examples) per model sent, whole numbers with
    ``0 <= correct <= examples == window``; ``served``: the served model's (cluster, correct)
    from the site's statistics, which its row must match (clipped to ``[0, window]``: a
    private site's noisy statistics may count beyond it, and its scores are clipped,
    :mod:`fedretrain.monitor.private_scores`; exact statistics never do).

    >>> model_scores_problem(np.array([[0, 7, 10], [1, 3, 10]]), [0, 1], 10, (0, 7))
    >>> model_scores_problem(np.array([[0, 7, 10]]), [0, 1], 10, None)
    'per-model scores name clusters [0], not the models sent [0, 1]'
    >>> model_scores_problem(np.array([[0, 11, 10], [1, 3, 10]]), [0, 1], 10, None)
    'per-model scores must be whole numbers with 0 <= correct <= examples = 10 (the window)'
    >>> model_scores_problem(np.array([[0, 9, 10], [1, 3, 10]]), [0, 1], 10, (0, 7))
    "per-model scores give the served cluster 0's model 9 correct, its statistics 7"
    >>> model_scores_problem(np.array([[0, 10, 10], [1, 3, 10]]), [0, 1], 10, (0, 11))
    """
    counts = "per-model scores must be whole numbers with 0 <= correct <= examples = "
    if table.ndim != 2 or table.shape[1] != 3:
        return f"per-model scores have shape {table.shape}, not (models, 3)"
    if not np.all(np.isfinite(table)) or not np.array_equal(table, np.round(table)):
        return f"{counts}{window} (the window)"
    named = sorted(int(c) for c in table[:, 0])
    if named != sorted(clusters):
        return f"per-model scores name clusters {named}, not the models sent {sorted(clusters)}"
    correct, examples = table[:, 1], table[:, 2]
    if np.any(correct < 0) or np.any(correct > examples) or np.any(examples != window):
        return f"{counts}{window} (the window)"
    if served is not None:
        cluster, exact = served
        exact = min(max(exact, 0), max(window, 0))
        row = table[table[:, 0] == cluster][0]
        if int(row[1]) != exact:
            return (
                f"per-model scores give the served cluster {cluster}'s model {int(row[1])} "
                f"correct, its statistics {exact}"
            )
    return None
