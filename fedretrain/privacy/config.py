"""The ``privacy`` config group: sample-level DP-SGD at each site and its lifetime budget, and
the Gaussian noise on the monitoring statistics a site sends (independent of DP-SGD).

>>> PrivacyConfig(enabled=True, target_epsilon=2.0).noise_multiplier is None
True
>>> from fedretrain.errors import ConfigError
>>> try:
...     PrivacyConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=-1)
... except ConfigError as err:
...     print(err.problems)
['privacy.max_grad_norm=-1: must be a positive number, e.g. 1.0']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from fedretrain.errors import ConfigError


class ClippingMode(str, Enum):
    """How per-sample gradient norms are computed (all give the same update; cost differs)."""

    auto = "auto"  # the fused engine: per layer, the cheaper of the two; Opacus: flat
    flat = "flat"  # per-sample gradients materialised, then clipped (Opacus "hooks")
    ghost = "ghost"  # per-sample norms without materialising Linear gradients (Opacus "ghost")


class AccountantKind(str, Enum):
    """How privacy loss composes; RDP is the only one the ledger implements."""

    rdp = "rdp"


@dataclass
class PrivacyConfig:
    """Sample-level differential privacy of each site's local training (DP-SGD).

    Parameters
    ----------
    enabled : bool
        Train with DP-SGD (Poisson sampling, per-sample clipping, Gaussian noise).
    noise_multiplier : float or None
        σ: noise standard deviation over ``max_grad_norm``. 0 adds no noise and gives no
        privacy (ε = ∞); only for checks.
    target_epsilon : float or None
        Instead of σ: the ε one retraining cycle may cost at ``delta``. σ is then computed for
        the cycle's planned steps (:func:`fedretrain.privacy.plan.plan_training`).
    delta : float
        δ of every reported (ε, δ); well below 1 / (records at a site).
    max_grad_norm : float
        C: each sample's gradient is clipped to this L2 norm.
    clipping : ClippingMode
        ``auto``, ``flat`` or ``ghost``: how per-sample gradient norms are computed; the same
        update, different speed and memory. ``auto``: on the fused engine each Linear layer
        takes the cheaper way (ghost norms unless a long sequence makes their Gram matrices
        cost more than the per-sample gradients), on Opacus ``flat``.
    epsilon_budget : float or None
        Lifetime ε per site at ``delta``: a site declines training that would exceed it.
        null for no cap (ε is still accounted).
    accountant : AccountantKind
        ``rdp``.
    fix_model : bool
        Replace layers DP-SGD cannot train (BatchNorm → GroupNorm) when the model is built;
        false refuses such a model with a message instead.
    ledger_dir : str or None
        Simulation only: the folder of the sites' ledgers (``site-<id>.json``); null puts them
        in ``<run_dir>/privacy``. Point several runs at one folder to account each simulated
        site's lifetime across runs. A deployed site keeps its ledger in its own state folder.
    user_level : bool
        Also user-level DP on the server: Flower's server-side fixed clipping wrapper clips
        each site's update to ``user_clipping_norm``, adds Gaussian noise to the unweighted
        mean, and Flower's RDP accountant composes every release (no amplification by
        sampling: every site is assumed sampled). Needs validation on and FedAvg.
    user_noise_multiplier : float
        σ of the user-level mechanism (noise std over ``user_clipping_norm`` / sites).
    user_clipping_norm : float
        Bound on the L2 norm of each site's update.
    user_epsilon_budget : float or None
        Lifetime user-level ε at ``delta``: once the next release would exceed it, training
        rounds are skipped (recorded) and the model stays as it is.
    reproducible : bool
        Draw the Poisson batches and the noise from the generator the caller passes
        (simulations, tests). False (the default, and what a real site needs) seeds them from
        the operating system's entropy: whoever knows the seed can subtract the noise. The same
        holds for the noise on the monitoring statistics.
    stats_noise_multiplier : float or None
        σ of the private monitoring statistics (:mod:`fedretrain.monitor.private`): each
        statistic a site sends every period gets Gaussian noise of σ times its L2 sensitivity
        to one record. null sends exact statistics, which are then not private. ``privacy=
        dpsgd`` sets it: with ``enabled`` each period's release is recorded in the site's
        ledger, so the site's one ε covers its training and its statistics. Without
        ``enabled`` (``privacy=none``, null by default) its ε is reported apart, at ``delta``.
    stats_feature_bound : float or None
        B: each feature is clipped to [-B, B] before it enters the sums of x and x², which
        bounds their sensitivity (the histograms use the raw values). null takes the task's
        ``task.feature_bound``; a drift scenario with noisy statistics needs one of the two.
    stats_loss_bound : float
        L: each record's loss is clipped to [0, L] before it enters the loss sum.
    """

    enabled: bool = False
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    clipping: ClippingMode = ClippingMode.auto
    epsilon_budget: float | None = None
    accountant: AccountantKind = AccountantKind.rdp
    fix_model: bool = True
    ledger_dir: str | None = None
    user_level: bool = False
    user_noise_multiplier: float = 1.0
    user_clipping_norm: float = 1.0
    user_epsilon_budget: float | None = None
    reproducible: bool = False
    stats_noise_multiplier: float | None = None
    stats_feature_bound: float | None = None
    stats_loss_bound: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        p = "privacy."
        sigma, target, budget = self.noise_multiplier, self.target_epsilon, self.epsilon_budget
        if self.enabled and (sigma is None) == (target is None):
            both = "both are null" if sigma is None else f"got {sigma} and {target}"
            problems.append(
                f"privacy: enabled=true needs exactly one of {p}noise_multiplier (e.g. 1.1) or "
                f"{p}target_epsilon (e.g. 3.0, per retraining cycle); {both}"
            )
        if sigma is not None and not (sigma >= 0 and math.isfinite(sigma)):
            problems.append(
                f"{p}noise_multiplier={sigma}: must be a finite number >= 0 (e.g. 1.1); "
                "0 means no privacy"
            )
        if target is not None and not (target > 0 and math.isfinite(target)):
            problems.append(f"{p}target_epsilon={target}: must be a positive number, e.g. 3.0")
        if not 0 < self.delta < 1:
            problems.append(f"{p}delta={self.delta}: must lie in (0, 1), e.g. 1e-5")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            problems.append(
                f"{p}max_grad_norm={self.max_grad_norm}: must be a positive number, e.g. 1.0"
            )
        if budget is not None and not budget > 0:
            problems.append(
                f"{p}epsilon_budget={budget}: must be positive (e.g. 8.0), or null for no cap"
            )
        if budget is not None and target is not None and target > budget:
            problems.append(
                f"{p}target_epsilon={target}: exceeds {p}epsilon_budget={budget}, so no cycle "
                "could ever run; lower the target or raise the budget"
            )
        if self.user_level:
            sigma_u, clip_u = self.user_noise_multiplier, self.user_clipping_norm
            if not (sigma_u > 0 and math.isfinite(sigma_u)):
                problems.append(
                    f"{p}user_noise_multiplier={sigma_u}: must be a positive number (e.g. 1.0) "
                    "when privacy.user_level=true"
                )
            if not (clip_u > 0 and math.isfinite(clip_u)):
                problems.append(f"{p}user_clipping_norm={clip_u}: must be a positive number")
            user_budget = self.user_epsilon_budget
            if user_budget is not None and not user_budget > 0:
                problems.append(
                    f"{p}user_epsilon_budget={user_budget}: must be positive, or null for no cap"
                )
        problems += self._stats_problems()
        for name, enum in (("clipping", ClippingMode), ("accountant", AccountantKind)):
            value = getattr(self, name)
            if not isinstance(value, enum):
                try:
                    object.__setattr__(self, name, enum(value))
                except ValueError:
                    valid = [m.value for m in enum]
                    problems.append(f"{p}{name}={value!r}: must be one of {valid}")
        if problems:
            raise ConfigError(problems)

    def _stats_problems(self) -> list[str]:
        p = "privacy."
        problems = []
        sigma, bound = self.stats_noise_multiplier, self.stats_feature_bound
        if sigma is not None and not (sigma > 0 and math.isfinite(sigma)):
            problems.append(
                f"{p}stats_noise_multiplier={sigma}: must be a positive number (e.g. 2.0), or "
                "null to send exact statistics"
            )
        if bound is not None and not (bound > 0 and math.isfinite(bound)):
            problems.append(
                f"{p}stats_feature_bound={bound}: must be a positive number, the largest "
                "feature magnitude (e.g. 10.0 for features in [0, 10])"
            )
        loss = self.stats_loss_bound
        if not (loss > 0 and math.isfinite(loss)):
            problems.append(
                f"{p}stats_loss_bound={loss}: must be a positive number (e.g. 10.0), the "
                "largest per-record loss counted"
            )
        return problems
