"""Checks on what one site sends before it is aggregated: plain numpy, no Flower.

One bad site must not break the federation: a NaN turns a mean into NaN, a wrongly shaped
array is silently broadcast, and a site claiming a billion samples takes over a weighted mean
(FACTS.md). Every check returns a reason naming the problem, so a rejection can be recorded.
:class:`ValidationConfig`, the ``validation`` config group, sets the bounds.

>>> import numpy as np
>>> rules = UpdateRules(max_num_examples=1000)
>>> ref = {"w": np.zeros(3, dtype=np.float32)}
>>> check_update(ref, {"w": np.ones(3, dtype=np.float32)}, 10, rules).reason is None
True
>>> check_update(ref, {"w": np.array([1, np.nan, 0], dtype=np.float32)}, 10, rules).reason
"array 'w' has 1 non-finite values"
>>> check_update(ref, {"w": np.ones(3, dtype=np.float32)}, 10**9, rules).reason
'num-examples=1000000000 exceeds the bound 1000 (validation.max_num_examples)'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import cast

import numpy as np

from fedretrain.errors import raise_failed


class NormPolicy(str, Enum):
    reject = "reject"  # drop an update whose norm is out of bounds
    clip = "clip"  # scale it back onto the bound


@dataclass(frozen=True)
class UpdateRules:
    """Bounds on one site's reply.

    Parameters
    ----------
    max_num_examples : int
        Largest credible ``num-examples``; the weight a site claims in a weighted mean.
    max_update_norm : float or None
        Bound on the L2 norm of ``update - global``; None for no absolute bound.
    max_norm_ratio : float or None
        Bound on an update's norm relative to the median norm of the round's replies: a robust
        bound that follows the norms shrinking as training converges.
    norm_policy : NormPolicy
        What to do with an update beyond a norm bound.
    """

    max_num_examples: int = 1_000_000
    max_update_norm: float | None = None
    max_norm_ratio: float | None = 5.0
    norm_policy: NormPolicy = NormPolicy.reject


@dataclass(frozen=True)
class Checked:
    """An update after checks: ``reason`` is None when accepted (``arrays`` may be clipped)."""

    arrays: dict[str, np.ndarray]
    reason: str | None


def structure_problem(
    reference: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]
) -> str | None:
    """Names, shapes, dtypes and finiteness against the global model; None when all match."""
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing or extra:
        return f"array names differ from the global model: missing {missing}, unexpected {extra}"
    for name, ref in reference.items():
        got = arrays[name]
        if got.shape != ref.shape:
            return f"array {name!r} has shape {got.shape}, the global model has {ref.shape}"
        if got.dtype != ref.dtype:
            return f"array {name!r} has dtype {got.dtype}, the global model has {ref.dtype}"
        if np.issubdtype(got.dtype, np.floating):
            bad = int(np.size(got) - np.count_nonzero(np.isfinite(got)))
            if bad:
                return f"array {name!r} has {bad} non-finite values"
    return None


def num_examples_problem(value: object, bound: int) -> str | None:
    """``num-examples`` must be a positive whole number no larger than ``bound``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return f"num-examples={value!r} is not a number"
    if not np.isfinite(value) or value != int(value) or value <= 0:
        return f"num-examples={value!r} is not a positive integer"
    if value > bound:
        return f"num-examples={int(value)} exceeds the bound {bound} (validation.max_num_examples)"
    return None


def update_norm(reference: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``arrays - reference`` over every floating-point array."""
    total = 0.0
    for name, ref in reference.items():
        if np.issubdtype(ref.dtype, np.floating):
            diff = arrays[name].astype(np.float64) - ref.astype(np.float64)
            total += float(np.dot(diff.ravel(), diff.ravel()))
    return float(np.sqrt(total))


def clip_update(
    reference: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray], max_norm: float
) -> dict[str, np.ndarray]:
    """Scale ``arrays - reference`` down to norm ``max_norm`` (unchanged when already within)."""
    norm = update_norm(reference, arrays)
    if norm <= max_norm:
        return dict(arrays)
    factor = max_norm / norm
    return {
        name: (ref + factor * (arrays[name] - ref)).astype(ref.dtype)
        if np.issubdtype(ref.dtype, np.floating)
        else arrays[name]
        for name, ref in reference.items()
    }


def check_update(
    reference: Mapping[str, np.ndarray],
    arrays: Mapping[str, np.ndarray],
    num_examples: object,
    rules: UpdateRules,
    norm_bound: float | None = None,
) -> Checked:
    """All checks on one reply. ``norm_bound`` overrides ``rules.max_update_norm``."""
    reason = structure_problem(reference, arrays) or num_examples_problem(
        num_examples, rules.max_num_examples
    )
    if reason is not None:
        return Checked(dict(arrays), reason)
    bound = norm_bound if norm_bound is not None else rules.max_update_norm
    if bound is None:
        return Checked(dict(arrays), None)
    norm = update_norm(reference, arrays)
    if norm <= bound:
        return Checked(dict(arrays), None)
    if rules.norm_policy is NormPolicy.clip:
        return Checked(clip_update(reference, arrays, bound), None)
    return Checked(dict(arrays), f"update norm {norm:.4g} exceeds the bound {bound:.4g}")


def round_norm_bound(norms: Sequence[float], rules: UpdateRules) -> float | None:
    """The tighter of the absolute bound and ``max_norm_ratio`` x the median norm."""
    bounds = [] if rules.max_update_norm is None else [rules.max_update_norm]
    finite = [n for n in norms if np.isfinite(n)]
    if rules.max_norm_ratio is not None and finite:
        bounds.append(rules.max_norm_ratio * float(np.median(finite)))
    return min(bounds) if bounds else None


def confusion_problem(
    confusion: object, num_classes: object, num_examples: object, loss_sum: object
) -> str | None:
    """Evaluation statistics must be counts that add up: they are summed across sites."""
    if not isinstance(num_classes, int) or num_classes < 2:
        return f"num-classes={num_classes!r} is not an integer >= 2"
    values = np.asarray(confusion)
    if values.shape != (num_classes * num_classes,):
        return f"confusion has {values.size} entries, expected {num_classes * num_classes}"
    if not np.issubdtype(values.dtype, np.integer) or (values < 0).any():
        return "confusion holds negative or non-integer counts"
    if num_examples != int(values.sum()):
        return f"num-examples={num_examples!r} differs from the confusion total {int(values.sum())}"
    if not isinstance(loss_sum, int | float) or not np.isfinite(loss_sum) or loss_sum < 0:
        return f"loss-sum={loss_sum!r} is not a finite non-negative number"
    return None


def eval_problem(metrics: Mapping[str, object]) -> str | None:
    """Why a site's evaluation metrics cannot be summed, or None: they must be fedretrain's
    counts (a confusion matrix, its size, the loss sum) and add up."""
    missing = [k for k in ("confusion", "num-classes", "loss-sum") if k not in metrics]
    if missing:  # e.g. a stock Flower ClientApp's {"eval_loss", "eval_acc"}: nothing to sum
        return (
            f"the reply lacks {', '.join(missing)}: fedretrain sums confusion matrices across "
            "sites, so a site must run fedretrain's ClientApp (clients.app)"
        )
    problem = confusion_problem(
        metrics["confusion"],
        metrics.get("num-classes"),
        metrics.get("num-examples"),
        metrics.get("loss-sum"),
    )
    return problem or group_problem(metrics)


def group_problem(metrics: Mapping[str, object]) -> str | None:
    """Per-group confusion matrices, when sent, must be counts that add up to the confusion."""
    if "group-confusion" not in metrics:
        return None
    groups, k = metrics.get("num-groups"), int(cast(int, metrics["num-classes"]))
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        return f"num-groups={groups!r} is not an integer >= 1"
    values = np.asarray(metrics["group-confusion"])
    if values.shape != (groups * k * k,):
        return f"group-confusion has {values.size} entries, expected {groups * k * k}"
    if not np.issubdtype(values.dtype, np.integer) or (values < 0).any():
        return "group-confusion holds negative or non-integer counts"
    total = values.reshape(groups, k * k).sum(axis=0)
    if not np.array_equal(total, np.asarray(metrics["confusion"])):
        return "the per-group confusion matrices do not add up to the confusion matrix"
    return None


@dataclass(frozen=True)
class Quorum:
    """How many of the sampled sites must reply validly for a round to count."""

    fraction: float = 0.5
    min_replies: int = 1

    def required(self, sampled: int) -> int:
        return max(self.min_replies, int(np.ceil(self.fraction * sampled)))


# The phases under which a site's decline to train is recorded: its privacy budget would not
# allow the round; a deployed site has no data for the period.
DECLINED_PHASE = "privacy"
NO_DATA_PHASE = "no data"
NO_REPLY_PHASE = "no reply"  # a site that did not answer within validation.reply_timeout_s
DECLINE_PHASES = (DECLINED_PHASE, NO_DATA_PHASE)
# A DP-SGD reply that disagrees with the server's own privacy account is rejected under this.
AUDIT_PHASE = "privacy audit"


@dataclass(frozen=True)
class Rejection:
    """One reply that did not reach aggregation, or one round that was skipped."""

    server_round: int
    phase: str  # "train" or "evaluate"
    node_id: int  # 0 for a decision about the whole round
    reason: str


@dataclass
class ValidationConfig:
    """The ``validation`` config group: checks on every reply before aggregation, quorum and
    deadlines."""

    enabled: bool = True  # false: Flower's strategy sees replies unchecked (for comparisons)
    max_num_examples: int = 1_000_000
    max_update_norm: float | None = None
    max_norm_ratio: float | None = 5.0  # x the median update norm of the round
    norm_policy: NormPolicy = NormPolicy.reject
    quorum_fraction: float = 0.5  # of the sampled sites must reply validly, else skip the round
    quorum_min_replies: int = 1
    reply_timeout_s: float = 600.0  # a round's deadline for replies
    node_wait_timeout_s: float = 120.0  # how long to wait for sites to connect

    def __post_init__(self) -> None:
        v = "validation."
        raise_failed(
            (self.max_num_examples >= 1, f"{v}max_num_examples={self.max_num_examples}: >= 1"),
            (
                self.max_update_norm is None or self.max_update_norm > 0,
                f"{v}max_update_norm={self.max_update_norm}: must be positive, or null",
            ),
            (
                self.max_norm_ratio is None or self.max_norm_ratio >= 1,
                f"{v}max_norm_ratio={self.max_norm_ratio}: must be >= 1, or null",
            ),
            (
                0 <= self.quorum_fraction <= 1,
                f"{v}quorum_fraction={self.quorum_fraction}: must lie in [0, 1]",
            ),
            (
                self.quorum_min_replies >= 1,
                f"{v}quorum_min_replies={self.quorum_min_replies}: must be >= 1",
            ),
            (self.reply_timeout_s > 0, f"{v}reply_timeout_s={self.reply_timeout_s}: must be > 0"),
            (
                self.node_wait_timeout_s > 0,
                f"{v}node_wait_timeout_s={self.node_wait_timeout_s}: must be > 0",
            ),
        )

    @property
    def rules(self) -> UpdateRules:
        return UpdateRules(
            self.max_num_examples, self.max_update_norm, self.max_norm_ratio, self.norm_policy
        )
