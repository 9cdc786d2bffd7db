"""The Flower side of the retraining port: :class:`FlowerFederation` on a Flower grid.

This is where the controller's numpy weights become ArrayRecords and Flower's replies become
plain values. The configured Flower strategy (wrapped in the validation of
:mod:`fedretrain.flower.validated`) samples the sites and aggregates; every reply that cannot be
used is recorded in the run's ``rejections.csv`` and left out.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedretrain.config import RunConfig
from fedretrain.errors import FederationError
from fedretrain.finetune import Frozen
from fedretrain.flower.arrays import decode, to_numpy, to_record
from fedretrain.flower.records import (
    ANCHOR_MU_KEY,
    ANCHOR_RECORD,
    BUFFER_FROM_KEY,
    BUFFER_SITES_KEY,
    CANARY_KEY,
    DEFAULT_CLUSTER_KEY,
    INCOMING_EVAL_KEY,
    MEMORY_KEY,
    MODEL_SCORES_KEY,
    MODELS_KEY,
    MONITOR_QUERY,
    SERVE_CLUSTERS_KEY,
    SERVE_SITES_KEY,
    SERVER_ROUND_KEY,
    SITE_ID_KEY,
    TRAIN_ONLY_KEY,
    data_report,
    decline_reason,
    edges_record,
    epsilon_from_reply,
    error_summary,
    eval_result,
    instruction_config,
    model_record_name,
    model_scores_problem,
    reply_site,
    site_scores,
    stats_from_record,
    trained_examples,
)
from fedretrain.flower.strategies import user_level_epsilon
from fedretrain.flower.validated import Roster, ValidatedStrategy
from fedretrain.monitor.private import StatsMechanism, check_stats, ledgered
from fedretrain.monitor.stats import HistogramEdges, PeriodStats, WindowStats
from fedretrain.privacy.plan import plan_training
from fedretrain.privacy.rdp import SampledGaussian
from fedretrain.privacy.tracking import STATISTICS, EpsilonReport, EpsilonTracker
from fedretrain.report import RunReport
from fedretrain.retraining.port import (
    CanaryRequest,
    CollectedStats,
    Evaluation,
    Serving,
    TrainedRound,
    Weights,
)
from fedretrain.validation import AUDIT_PHASE, NO_REPLY_PHASE, Quorum, Rejection, eval_problem

log = logging.getLogger(__name__)

NO_INCOMING_EVAL = (
    "the train reply holds no evaluation of the model sent: a static run evaluates in its "
    "train replies, which needs fedretrain's ClientApp (clients.app) at every site"
)
NO_MONITOR = "No query function registered with name 'monitor'"  # Flower's error, verbatim


class FlowerFederation:
    """The :class:`~fedretrain.retraining.port.Federation` of the sites on ``grid``.

    Parameters
    ----------
    grid : Grid
        The simulation's or the deployment's grid.
    strategy : Strategy
        Samples and aggregates (built by :func:`fedretrain.flower.strategies.build_strategy`).
    cfg : RunConfig
        The run's config; ``config_yaml`` is the same config as it travels to the sites.
    report : RunReport
        Where rejected and failed replies are recorded.
    num_features, num_classes : int
        What a site's statistics must describe to be accepted.
    num_rounds : int
        The rounds a site is told a run has (its learning-rate schedule spans them).
    periods : bool
        False for a static run: instructions name no period and sites train and evaluate on
        their fixed partition.
    epsilon : EpsilonTracker or None
        Fed with what each DP-SGD training cost the site.
    ledger_dir : str or None
        Simulation under DP-SGD: the folder of the sites' privacy ledgers.
    frozen : Frozen or None
        The run's frozen parameters (``train.freeze``): they never travel, so every message
        carries the other arrays only and each instruction their digest, which a site checks
        against its own.
    """

    def __init__(
        self,
        grid: Grid,
        strategy: Strategy,
        cfg: RunConfig,
        config_yaml: str,
        report: RunReport,
        *,
        num_features: int,
        num_classes: int,
        num_rounds: int,
        periods: bool = True,
        epsilon: EpsilonTracker | None = None,
        ledger_dir: str | None = None,
        frozen: Frozen | None = None,
    ) -> None:
        self.grid = grid
        self.strategy = strategy
        self.cfg = cfg
        self.config_yaml = config_yaml
        self.report = report
        self.num_features = num_features
        self.num_classes = num_classes
        self.num_rounds = num_rounds
        self.periods = periods
        self.epsilon = epsilon
        self.ledger_dir = ledger_dir
        self.frozen = frozen if frozen is not None and frozen.names else None
        # The strategy's roster when it validates, so that the query and the rounds agree on
        # when the federation is under way.
        v = cfg.validation
        self.roster: Roster = getattr(strategy, "roster", None) or Roster(
            cfg.runtime.num_clients,
            Quorum(v.quorum_fraction, v.quorum_min_replies),
            v.node_wait_timeout_s,
        )
        self._site_of_node: dict[int, int] = {}  # learnt from statistics and evaluate replies

    def train_round(
        self,
        server_round: int,
        weights: Weights,
        period: int,
        drifted: frozenset[int] = frozenset(),
        sites: frozenset[int] | None = None,
        evaluate_incoming: bool = False,
        since: Mapping[int, int] | None = None,
        trainable: frozenset[str] | None = None,
        anchor: Weights | None = None,
    ) -> TrainedRound:
        if sites is not None and not self._site_of_node:
            # A resumed run that kept the period's statistics has not heard from the sites
            # yet: one evaluation wave says which node is which site.
            self.evaluate(server_round, weights, period)
        nodes = None if sites is None else self._nodes_of(sites)
        if isinstance(self.strategy, ValidatedStrategy):
            self.strategy.drifted = drifted
            self.strategy.only_nodes = nodes
        config = instruction_config(
            self.config_yaml,
            self.num_rounds,
            self._period(period),
            self.ledger_dir,
            evaluate_incoming=evaluate_incoming,
            frozen_digest=self._frozen_digest,
        )
        if since:  # the buffer of each site that trains on more than the period's window
            config[BUFFER_SITES_KEY] = sorted(since)
            config[BUFFER_FROM_KEY] = [since[s] for s in sorted(since)]
        if trainable is not None:  # the transfer strategy: the head trains, the rest is kept
            config[TRAIN_ONLY_KEY] = sorted(trainable)
        if anchor is not None:
            config[ANCHOR_MU_KEY] = self.cfg.retrain.anchor_mu
        arrays = self._record(weights)
        messages = self.strategy.configure_train(server_round, arrays, config, self.grid)
        if anchor is not None:  # every site's instruction carries the anchor beside the model
            anchored = self._record(anchor)
            for message in messages:
                message.content[ANCHOR_RECORD] = anchored
        if nodes is not None:  # a cluster's round (ValidatedStrategy already left the rest out)
            messages = [m for m in messages if m.metadata.dst_node_id in nodes]
        received = self._send(messages, server_round, "train")
        # The weights sent are the previous round's model: its evaluation counts there.
        incoming = self._incoming(server_round - 1, received) if evaluate_incoming else None
        replies = trained_replies(
            received,
            self.report,
            server_round,
            self.epsilon,
            self._period(period),
            self._asked if self.cfg.privacy.enabled else None,
        )
        new_arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        trained = accepted_count(replies, self.report, server_round, "train")
        # A stock Flower ClientApp names its loss otherwise: the round trains, its loss is NaN.
        has_loss = metrics is not None and "train-loss" in metrics
        loss = float(metrics["train-loss"]) if has_loss else math.nan  # type: ignore[arg-type,index]
        if new_arrays is None:  # skipped: nothing was aggregated
            return TrainedRound(weights, loss, 0, incoming=incoming)
        left_out = self.report.rejected_nodes(server_round, "train")
        examples = trained_examples(replies, left_out)
        aggregated = to_numpy(new_arrays)
        if self.frozen is not None:  # the frozen arrays did not travel: they are as sent
            aggregated = self.frozen.merged(weights, aggregated)
        return TrainedRound(aggregated, loss, trained, examples, incoming)

    @property
    def _frozen_digest(self) -> str | None:
        return None if self.frozen is None else self.frozen.digest

    def _record(self, weights: Weights) -> ArrayRecord:
        """``weights`` as they travel: without the frozen arrays, when the run has some."""
        return to_record(weights if self.frozen is None else self.frozen.outgoing(weights))

    def _incoming(self, server_round: int, replies: list[Message]) -> Evaluation:
        """The evaluations of the weights sent that came with a round's train replies, as
        :meth:`evaluate` would have had them: each as its site's evaluate reply, validated,
        summed and recorded under ``server_round``. A failed train reply, or one without an
        evaluation (a stock ClientApp), is an evaluate reply that failed; a site that declined
        to train (its privacy budget) still sent its evaluation."""
        evaluations = []
        for reply in replies:
            if reply.has_error():
                evaluations.append(_like(reply, error=reply.error))
                continue
            record = reply.content.config_records.get(INCOMING_EVAL_KEY)
            if record is None and decline_reason(reply) is not None:
                continue  # it declined before it evaluated (no data this period)
            if record is None:
                error = Error(ErrorCode.UNKNOWN, NO_INCOMING_EVAL)
                evaluations.append(_like(reply, error=error))
                continue
            metrics = MetricRecord(dict(record))  # type: ignore[arg-type]
            content = RecordDict({"metrics": metrics})
            evaluations.append(_like(reply, content=content))
        return self._evaluation(server_round, evaluations)

    def _send(self, messages: Iterable[Message], server_round: int, what: str) -> list[Message]:
        """The replies to ``messages`` within ``validation.reply_timeout_s``; each site that
        sent none in time (too slow, or gone) is recorded, and the round goes on without it.
        A reply that comes later is never read: the next round asks afresh."""
        sent = list(messages)
        timeout = self.cfg.validation.reply_timeout_s
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        answered = {int(r.metadata.src_node_id) for r in replies}
        for message in sent:
            node = int(message.metadata.dst_node_id)
            if node not in answered:
                reason = (
                    f"no {what} reply within validation.reply_timeout_s={timeout:g} s: the site "
                    "is too slow or went away; the round went on without it"
                )
                log.warning("round %d: node %d: %s", server_round, node, reason)
                self.report.reject(Rejection(server_round, NO_REPLY_PHASE, node, reason))
        return replies

    def _nodes_of(self, sites: frozenset[int]) -> frozenset[int]:
        """The nodes of ``sites``, as their latest statistics or evaluate replies named
        them."""
        return frozenset(n for n, s in self._site_of_node.items() if s in sites)

    def evaluate(
        self,
        server_round: int,
        weights: Weights,
        period: int,
        memory: tuple[int, ...] = (),
    ) -> Evaluation:
        config = instruction_config(
            self.config_yaml,
            self.num_rounds,
            self._period(period),
            frozen_digest=self._frozen_digest,
        )
        if memory:  # the holdouts of these earlier periods, together, instead of period's
            config[MEMORY_KEY] = list(memory)
        messages = self.strategy.configure_evaluate(
            server_round, self._record(weights), config, self.grid
        )
        replies = checked_replies(self._send(messages, server_round, "evaluate"), "evaluate")
        for reply in replies:
            site = reply_site(reply)
            if site is not None:
                self._site_of_node[int(reply.metadata.src_node_id)] = site
        return self._evaluation(server_round, replies)

    def _evaluation(self, server_round: int, replies: list[Message]) -> Evaluation:
        """Evaluate replies summed into one :class:`Evaluation`; the unusable ones recorded."""
        if self.cfg.validation.enabled:  # the validation wrapper rejects and records them
            metrics = self.strategy.aggregate_evaluate(server_round, replies)
            evaluated = accepted_count(replies, self.report, server_round, "evaluate")
        else:
            replies = self._summable(server_round, replies)
            metrics = self.strategy.aggregate_evaluate(server_round, replies)
            evaluated = sum(not r.has_error() for r in replies)
        result = eval_result(metrics) if metrics is not None else None
        return Evaluation(result, evaluated, site_scores(replies))

    def _summable(self, server_round: int, replies: list[Message]) -> list[Message]:
        """With validation off, still leave out (and record) evaluations that cannot be
        summed, such as a stock Flower ClientApp's: summing them would crash the run."""
        kept = []
        for reply in replies:
            if not reply.has_error():
                records = list(reply.content.metric_records.values())
                problem = (
                    eval_problem(records[0]) if len(records) == 1 else "no single metric record"
                )
                if problem is not None:
                    node = int(reply.metadata.src_node_id)
                    log.warning("round %d: node %d's evaluation: %s", server_round, node, problem)
                    self.report.reject(Rejection(server_round, "evaluate", node, problem))
                    continue
            kept.append(reply)
        return kept

    def collect_stats(
        self,
        server_round: int,
        weights: Weights,
        period: int,
        edges: HistogramEdges,
        canary: CanaryRequest | None = None,
        serving: Serving | None = None,
    ) -> CollectedStats:
        """Every site's statistics for ``period``; malformed ones are rejected and recorded.

        With ``serving`` every live model travels with the query and each site's reply also
        scores each of them; a site whose scores are malformed is rejected as a whole."""
        cfg = self.cfg
        nodes = self.roster.wait(self.grid)
        config = instruction_config(
            self.config_yaml,
            self.num_rounds,
            period,
            self.ledger_dir,
            frozen_digest=self._frozen_digest,
        )
        config[SERVER_ROUND_KEY] = server_round  # a DP site's release is keyed by its request
        content = RecordDict(
            {"arrays": self._record(weights), "config": config, "edges": edges_record(edges)}
        )
        if canary is not None:
            content["candidate"] = self._record(canary.weights)
            config[CANARY_KEY] = list(canary.sites)
        if serving is not None:
            for cluster, model in serving.models.items():
                content[model_record_name(cluster)] = self._record(model)
            config[MODELS_KEY] = sorted(serving.models)
            config[SERVE_SITES_KEY] = sorted(serving.assignment)
            config[SERVE_CLUSTERS_KEY] = [serving.assignment[s] for s in sorted(serving.assignment)]
            config[DEFAULT_CLUSTER_KEY] = serving.default
        model_scores: dict[int, dict[int, tuple[int, int]]] = {}
        messages = [
            Message(content=content, message_type=MONITOR_QUERY, dst_node_id=n) for n in nodes
        ]
        replies = self._send(messages, server_round, "statistics")
        sites: dict[int, WindowStats] = {}
        rejected, reasons, costs = len(messages) - len(replies), set(), []
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            declined = decline_reason(reply)
            if declined is not None:  # its privacy budget would not allow the release
                phase, why = declined
                log.info("period %d: node %d declined: %s", period, node, why)
                self.report.reject(Rejection(server_round, phase, node, why))
                reasons.add(why)
                continue
            reason, cost, phase = None, None, f"monitor p{period}"
            if reply.has_error():
                reason = f"site failed: {error_summary(reply.error.reason)}"
                if NO_MONITOR in (reply.error.reason or ""):  # an older or foreign ClientApp
                    reason = (
                        "the site's ClientApp has no monitor handler (an older or foreign app): "
                        "it still trains and evaluates, and is left out of drift detection"
                    )
            else:
                try:
                    stats = stats_from_record(reply.content.array_records["stats"])
                    site = int(reply.content.metric_records["site"][SITE_ID_KEY])  # type: ignore[arg-type]
                    reason = check_stats(
                        stats, self.num_features, edges.bins, self.num_classes, cfg.privacy
                    )
                    if reason is None and serving is not None:
                        scored = _model_scores(reply, serving, site, stats)
                        if isinstance(scored, str):
                            reason = scored
                        else:
                            model_scores[site] = scored
                    if reason is None and self.epsilon is not None and ledgered(cfg.privacy):
                        reason, cost = self._audit_stats(reply, period)
                        phase = AUDIT_PHASE
                except (KeyError, ValueError, TypeError) as err:
                    reason = f"unreadable statistics: {err}"
            if reason is not None:
                self.report.reject(Rejection(server_round, phase, node, reason))
                rejected += 1
                reasons.add(reason)
                continue
            sites[site] = stats
            self._site_of_node[node] = site
            if cost is not None:
                costs.append(cost)
            self._record_data_report(server_round, period, node, site, data_report(reply))
        if self.epsilon is not None:
            self.epsilon.observe(server_round, period, costs, release=STATISTICS)
        if not sites:
            raise FederationError(
                f"no site sent valid statistics for period {period} "
                f"({'; '.join(sorted(reasons))}); a drift scenario needs fedretrain's ClientApp "
                "(clients.app) at every site"
            )
        # A deployed site with no new files this period has nothing to report; a period with
        # no data anywhere keeps the empty reports (the controller skips it).
        with_data = {s: w for s, w in sites.items() if w.n > 0}
        kept = dict(sorted((with_data or sites).items()))
        scores = {s: model_scores[s] for s in kept if s in model_scores}
        return CollectedStats(PeriodStats(period, kept), rejected, scores)

    def _audit_stats(self, reply: Message, period: int) -> tuple[str | None, EpsilonReport | None]:
        """Under DP-SGD a site's noisy statistics say what their release cost it; checked as a
        training round's are (:meth:`EpsilonTracker.audit`): (why to reject, or None; what
        to track)."""
        assert self.epsilon is not None
        claim = epsilon_from_reply(reply)
        if claim is None:
            missing = "the statistics do not say what their release cost (σ, ε); DP-SGD sites must"
            return missing, None
        asked = StatsMechanism.from_config(self.cfg.privacy).per_period()
        again = self.epsilon.released(claim.site, period)  # a resumed server's second query
        problem = self.epsilon.audit(claim, asked, adds=not again)
        return (problem, None) if problem is not None else (None, claim)

    def _asked(self, examples: int) -> SampledGaussian:
        """What this run's instructions make a DP-SGD site with ``examples`` records run."""
        plan = plan_training(
            self.cfg.privacy, self.cfg.train, examples, rounds_per_cycle=self.num_rounds
        )
        return plan.composition[0]

    def _period(self, period: int) -> int | None:
        return period if self.periods else None

    def summary(self) -> dict[str, object]:
        """What the strategy adds to the run's summary: the user-level ε of a DP strategy."""
        user = user_level_epsilon(self.strategy)
        return {} if user is None else {"user_level_epsilon": user}

    def _record_data_report(
        self, server_round: int, period: int, node: int, site: int, report: dict[str, Any] | None
    ) -> None:
        """A deployed site's files quarantined and rows dropped this period, in
        rejections.csv (phase ``data pN``): the site goes on with the rest of its data."""
        if not report:
            return
        problems = [f"site {site}: quarantined {entry}" for entry in report.get("quarantined", [])]
        if report.get("dropped_rows"):
            counts = ", ".join(
                f"{k.removeprefix('dropped.')}={v}"
                for k, v in sorted(report.items())
                if k.startswith("dropped.")
            )
            problems.append(f"site {site}: dropped {report['dropped_rows']} rows ({counts})")
        for problem in problems:
            log.warning("period %d: %s", period, problem)
            self.report.reject(Rejection(server_round, f"data p{period}", node, problem))


def _model_scores(
    reply: Message, serving: Serving, site: int, stats: WindowStats
) -> dict[int, tuple[int, int]] | str:
    """A site's (correct, examples) under every live model, or why they cannot be used."""
    record = reply.content.array_records.get(MODEL_SCORES_KEY)
    if record is None or "table" not in record:
        return (
            "the reply has no per-model scores (adaptation=clustered needs fedretrain's "
            "ClientApp at every site)"
        )
    table = decode(record["table"])
    cluster = serving.assignment.get(site, serving.default)
    served = (cluster, int(round(float(np.trace(stats.confusion)))))
    problem = model_scores_problem(table, list(serving.models), stats.n, served)
    if problem is not None:
        return problem
    return {int(c): (int(k), int(n)) for c, k, n in table}


def _like(reply: Message, **content_or_error: Any) -> Message:
    """A message from the same site, with the same metadata, and other content (or error)."""
    return Message(metadata=reply.metadata, **content_or_error)  # type: ignore[call-overload,no-any-return]


def seed_sampling(seed: int) -> None:
    """Flower's strategies sample nodes with the global :mod:`random` module: seed it."""
    random.seed(seed)


def privacy_accounting(cfg: RunConfig, run_dir: Path) -> tuple[str | None, EpsilonTracker | None]:
    """Under DP-SGD: the simulated sites' ledger folder and a tracker writing privacy.csv."""
    if not cfg.privacy.enabled:
        return None, None
    ledger_dir = str(Path(cfg.privacy.ledger_dir or run_dir / "privacy").resolve())
    return ledger_dir, EpsilonTracker(run_dir / "privacy.csv", cfg.privacy.delta)


def trained_replies(
    replies: Iterable[Message],
    report: RunReport,
    server_round: int,
    epsilon: EpsilonTracker | None,
    period: int | None = None,
    asked: Callable[[int], SampledGaussian] | None = None,
) -> list[Message]:
    """A train round's replies, ready to aggregate.

    Sites that declined (their privacy budget would not allow the round) are recorded and
    left out; DP-SGD replies are then :func:`audited` (``asked``: what a site with ``n``
    training examples is asked to run); then as :func:`checked_replies` and
    :func:`canonical_order`.
    """
    kept = []
    for reply in replies:
        declined = decline_reason(reply)
        if declined is None:
            kept.append(reply)
            continue
        phase, reason = declined
        node = int(reply.metadata.src_node_id)
        log.info("round %d: node %d declined: %s", server_round, node, reason)
        report.reject(Rejection(server_round, phase, node, reason))
    if epsilon is not None:
        kept = audited(kept, report, server_round, epsilon, asked, period)
    return canonical_order(checked_replies(kept, "train"))


def audited(
    replies: list[Message],
    report: RunReport,
    server_round: int,
    epsilon: EpsilonTracker,
    asked: Callable[[int], SampledGaussian] | None,
    period: int | None,
) -> list[Message]:
    """DP-SGD replies checked against the server's own account (:meth:`EpsilonTracker.audit`):
    one whose site ran something else than asked, or reports less ε than this run alone cost
    it, is rejected and recorded (phase ``privacy audit``) and left out; what the others
    report is tracked, whether or not their update is accepted later (the privacy is spent
    either way)."""
    kept, reports = [], []
    for reply in replies:
        claim = epsilon_from_reply(reply)
        if claim is None:
            kept.append(reply)  # an error reply, or one the validation wrapper will refuse
            continue
        expected = asked(claim.examples) if asked is not None and claim.examples else None
        problem = epsilon.audit(claim, expected)
        if problem is not None:
            node = int(reply.metadata.src_node_id)
            log.warning("round %d: node %d: %s", server_round, node, problem)
            report.reject(Rejection(server_round, AUDIT_PHASE, node, problem))
            continue
        kept.append(reply)
        reports.append(claim)
    epsilon.observe(server_round, period, reports)
    return kept


def checked_replies(replies: Iterable[Message], what: str) -> list[Message]:
    """Log failed replies; stop the run when every site failed, with their reasons."""
    replies = list(replies)
    errors = [r for r in replies if r.has_error()]
    for reply in errors:
        log.warning(
            "%s failed at node %s: %s", what, reply.metadata.src_node_id, reply.error.reason
        )
    if replies and len(errors) == len(replies):
        # A site's reason is often a whole traceback: its last line names the exception.
        reasons = sorted({error_summary(r.error.reason) for r in errors})
        raise FederationError(f"every site failed to {what}: " + "; ".join(reasons))
    return replies


def canonical_order(replies: list[Message]) -> list[Message]:
    """Replies sorted by the site they name (by the hash of their arrays where none is named,
    or two name the same site) rather than by arrival.

    Aggregation adds floats in reply order, and arrival order varies with scheduling; a fixed
    order makes a run repeat itself bit for bit under the same seed.
    """
    sites = [reply_site(r) for r in replies]
    named = Counter(s for s in sites if s is not None)

    def key(pair: tuple[Message, int | None]) -> tuple[bool, bool, int, str]:
        reply, site = pair
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return (True, True, 0, "")
        if site is not None and named[site] == 1:
            return (False, False, site, "")
        return (False, True, 0, reply.content.array_records["arrays"].object_id)

    return [reply for reply, _ in sorted(zip(replies, sites, strict=True), key=key)]


def accepted_count(replies: list[Message], report: RunReport, server_round: int, phase: str) -> int:
    """Replies that reached aggregation: the validation wrapper records every failed or
    rejected one; without it, only error replies are left out."""
    recorded = report.rejected(server_round, phase)
    return len(replies) - recorded if recorded else sum(not r.has_error() for r in replies)
