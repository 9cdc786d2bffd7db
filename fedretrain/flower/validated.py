"""A strategy wrapper that checks every reply, enforces a quorum and bounds waiting.

It wraps any Flower strategy: sampling and aggregation stay the inner strategy's; what reaches
``aggregate_*`` is only what passed :mod:`fedretrain.validation`. Replies are rebuilt rather
than edited, so records handed to us are never mutated.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy

from fedretrain.errors import FederationError
from fedretrain.flower.arrays import decoded_record, to_numpy
from fedretrain.flower.records import SITE_ID_KEY, error_summary
from fedretrain.validation import (
    NormPolicy,
    Quorum,
    Rejection,
    UpdateRules,
    check_update,
    eval_problem,
    num_examples_problem,
    round_norm_bound,
    structure_problem,
    update_norm,
)

log = logging.getLogger(__name__)

TRAIN_KEYS = ("num-examples", "train-loss")  # what every train reply must say


@dataclass
class _Candidate:
    reply: Message
    arrays: dict[str, np.ndarray]
    metrics: MetricRecord
    norm: float


class ValidatedStrategy(Strategy):
    """``inner`` with reply validation, a quorum per training round and a wait deadline.

    ``drifted`` names the sites the monitor found drifted in the period being trained on
    (the federation sets it each round). Their data changed, so their updates are large for a
    reason: one beyond the round's norm bound is clipped to it, never rejected. Clipped, it
    weighs no more than an honest update at the bound, so a site that fakes drift gains
    nothing over one that does not, while a site that did drift is heard.
    """

    def __init__(
        self,
        inner: Strategy,
        rules: UpdateRules,
        quorum: Quorum,
        node_wait_timeout_s: float,
        record: Callable[[Rejection], None],
        user_level_dp: bool = False,
    ) -> None:
        self.inner = inner
        self.user_level_dp = user_level_dp
        self.rules = rules
        self.quorum = quorum
        self.node_wait_timeout_s = node_wait_timeout_s
        self._min_available = int(getattr(inner, "min_available_nodes", 1))
        self.roster = Roster(self._min_available, quorum, node_wait_timeout_s)
        self.record = record
        self._reference: dict[str, np.ndarray] = {}
        self._sampled = 0
        self.drifted: frozenset[int] = frozenset()
        self.only_nodes: frozenset[int] | None = None  # a cluster's round: these nodes alone
        self._clip = replace(rules, norm_policy=NormPolicy.clip)

    def summary(self) -> None:
        self.inner.summary()

    # ------------------------------------------------------------------ configure

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._wait_for_nodes(grid)
        self._reference = to_numpy(arrays)
        try:
            messages = list(self.inner.configure_train(server_round, arrays, config, grid))
            if self.only_nodes is not None:
                messages = [m for m in messages if m.metadata.dst_node_id in self.only_nodes]
        except PrivacyBudgetExhausted as err:
            self.record(Rejection(server_round, "train", 0, f"round skipped: {err}"))
            messages = []
        self._sampled = len(messages)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._wait_for_nodes(grid)
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def _wait_for_nodes(self, grid: Grid) -> None:
        """Flower's own sampling waits forever for ``min_available_nodes``; the roster gives
        it a limit, and once the federation is under way it asks whoever is connected (at
        least a quorum), so that a site that went away does not stall the round."""
        nodes = self.roster.wait(grid)
        if hasattr(self.inner, "min_available_nodes"):
            self.inner.min_available_nodes = min(self._min_available, len(nodes))

    # ------------------------------------------------------------------ aggregate

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._sampled == 0:
            return None, None  # nothing was sent (the user-level budget is spent; recorded)
        candidates = [
            c for r in replies if (c := self._train_candidate(server_round, r)) is not None
        ]
        if self.user_level_dp:
            candidates = self._nonzero(server_round, candidates)
        bound = round_norm_bound([c.norm for c in candidates], self.rules)
        accepted: list[Message] = []
        metric_keys = _common_keys(c.metrics for c in candidates)
        for c in candidates:
            n = c.metrics.get("num-examples")
            drifted = c.metrics.get(SITE_ID_KEY) in self.drifted
            rules = self._clip if drifted else self.rules
            checked = check_update(self._reference, c.arrays, n, rules, norm_bound=bound)
            if drifted and checked.reason is None and bound is not None and c.norm > bound:
                log.info(
                    "round %d: site %s drifted this period: its update norm %.4g is clipped "
                    "to the bound %.4g, not rejected",
                    server_round,
                    c.metrics[SITE_ID_KEY],
                    c.norm,
                    bound,
                )
            reason = checked.reason or _metric_problem(c.metrics, metric_keys)
            if reason is not None:
                self._reject(server_round, "train", c.reply, reason)
                continue
            if self.user_level_dp:  # user-level DP averages sites unweighted
                c.metrics = MetricRecord({**dict(c.metrics), "num-examples": 1})
            accepted.append(_rebuilt(c.reply, checked.arrays, c.metrics))
        if self.user_level_dp and len(accepted) < self._sampled:
            self.record(
                Rejection(
                    server_round,
                    "train",
                    0,
                    f"round skipped: user-level DP noise is calibrated to all {self._sampled} "
                    f"sampled sites and {len(accepted)} valid updates came; the model stays "
                    "as it was",
                )
            )
            return None, None
        required = self.quorum.required(self._sampled)
        if len(accepted) < required:
            self.record(
                Rejection(
                    server_round,
                    "train",
                    0,
                    f"round skipped: {len(accepted)} valid replies of {self._sampled} sampled, "
                    f"quorum {required}; the model stays as it was",
                )
            )
            return None, None
        return self.inner.aggregate_train(server_round, accepted)

    def _nonzero(self, server_round: int, candidates: list[_Candidate]) -> list[_Candidate]:
        """Reject unchanged models: server-side clipping divides by the update's norm."""
        kept = []
        for c in candidates:
            if c.norm != 0:  # a non-finite update is left to the checks that follow
                kept.append(c)
            else:
                reason = (
                    "unchanged model (zero update): user-level DP clipping cannot scale it; "
                    "a site with no new data should not be sampled"
                )
                self._reject(server_round, "train", c.reply, reason)
        return kept

    def _train_candidate(self, server_round: int, reply: Message) -> _Candidate | None:
        if reply.has_error():
            self._reject(
                server_round, "train", reply, f"site failed: {error_summary(reply.error.reason)}"
            )
            return None
        content = reply.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            shape = "a train reply must hold exactly one ArrayRecord and one MetricRecord"
            self._reject(server_round, "train", reply, shape)
            return None
        arrays = to_numpy(next(iter(content.array_records.values())))
        metrics = next(iter(content.metric_records.values()))
        missing = [k for k in TRAIN_KEYS if k not in metrics]
        reason = (
            (
                f"the reply lacks {', '.join(missing)}: a site must run fedretrain's ClientApp "
                "(clients.app), whose replies say what the server sums"
            )
            if missing
            else None
        )
        reason = (
            reason
            or structure_problem(self._reference, arrays)
            or num_examples_problem(metrics.get("num-examples"), self.rules.max_num_examples)
        )
        if reason is not None:
            self._reject(server_round, "train", reply, reason)
            return None
        return _Candidate(reply, arrays, metrics, update_norm(self._reference, arrays))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        accepted: list[Message] = []
        for reply in replies:
            reason: str | None
            if reply.has_error():
                reason = f"site failed: {error_summary(reply.error.reason)}"
            elif len(reply.content.metric_records) != 1:
                reason = "an evaluate reply must hold exactly one MetricRecord"
            else:
                metrics = next(iter(reply.content.metric_records.values()))
                reason = _metric_problem(metrics, set(metrics)) or eval_problem(metrics)
            if reason is None:
                accepted.append(reply)
            else:
                self._reject(server_round, "evaluate", reply, reason)
        return self.inner.aggregate_evaluate(server_round, accepted) if accepted else None

    def _reject(self, server_round: int, phase: str, reply: Message, reason: str) -> None:
        self.record(Rejection(server_round, phase, int(reply.metadata.src_node_id), reason))


def wait_for_nodes(
    grid: Grid, needed: int, timeout_s: float, enough: int | None = None
) -> list[int]:
    """The connected node ids once at least ``needed`` are connected. After ``timeout_s``
    (validation.node_wait_timeout_s), those connected if they are at least ``enough``, else a
    clear error."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < needed:
        if time.monotonic() > deadline:
            if enough is not None and len(nodes) >= enough:
                return nodes
            raise FederationError(
                f"only {len(nodes)} of {needed} sites connected within {timeout_s:.0f} s "
                "(validation.node_wait_timeout_s); start the missing SuperNodes or lower "
                "runtime.num_clients"
            )
        time.sleep(0.2)
    return nodes


class Roster:
    """How many sites the federation waits for before it asks any.

    At the start (and after a resume), while sites come online, every one of the ``sites``,
    for up to ``timeout_s``; if they do not all come, a quorum of them is enough to begin, with
    a warning. Once the federation is under way, a quorum: a site that goes away (killed,
    offline, restarting) does not stall the others, and it is asked again once it is back.
    Fewer than a quorum after ``timeout_s`` is a clear error.
    """

    def __init__(self, sites: int, quorum: Quorum, timeout_s: float) -> None:
        self.sites = sites
        self.quorum = quorum
        self.timeout_s = timeout_s
        self.started = False

    def wait(self, grid: Grid) -> list[int]:
        """The connected node ids, once as many as the federation needs now are connected."""
        enough = min(self.sites, self.quorum.required(self.sites))
        needed = enough if self.started else self.sites
        nodes = wait_for_nodes(grid, needed, self.timeout_s, enough=enough)
        if not self.started and len(nodes) < self.sites:
            log.warning(
                "only %d of %d sites connected within %.0f s (validation.node_wait_timeout_s); "
                "going on with them: the others are asked once they connect",
                len(nodes),
                self.sites,
                self.timeout_s,
            )
        self.started = True
        return nodes


def _common_keys(records: Iterable[MetricRecord]) -> set[str]:
    """The metric keys most replies of a round share (ties: the first in sorted order), the
    ones every reply must have: not whichever reply happened to come first.

    >>> sorted(_common_keys([MetricRecord({"a": 1}), MetricRecord({"a": 1, "b": 2}),
    ...                      MetricRecord({"b": 2, "a": 1})]))
    ['a', 'b']
    """
    counts = Counter(frozenset(r) for r in records)
    if not counts:
        return set()
    top = max(counts.values())
    return set(min((sorted(k) for k, n in counts.items() if n == top)))


def _metric_problem(metrics: MetricRecord, expected_keys: set[str]) -> str | None:
    if set(metrics) != expected_keys:
        expected = sorted(expected_keys)
        return f"metric keys {sorted(metrics)} differ from the other replies' {expected}"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(np.isfinite(v) for v in values):
            return f"metric {key!r} is not finite"
    return None


def _rebuilt(reply: Message, arrays: dict[str, np.ndarray], metrics: MetricRecord) -> Message:
    content = RecordDict(
        {
            "arrays": decoded_record(arrays),
            "metrics": MetricRecord(dict(metrics)),
        }
    )
    return Message(
        content=content, dst_node_id=reply.metadata.src_node_id, message_type=MessageType.TRAIN
    )
