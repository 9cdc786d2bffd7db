"""What one DP-SGD call at a site will run: its sample rate, steps and noise multiplier.

A site plans before it trains, so it can ask its ledger whether the plan fits the budget
(:meth:`fedretrain.privacy.ledger.PrivacyLedger.would_exceed`) and decline if not. The plan is
pure arithmetic on the configs and the number of local samples.

``train.local_epochs`` keeps its meaning under Poisson sampling as *expected* passes over the
data: with sample rate ``q = batch_size / n`` a pass is ``round(1 / q)`` steps.

>>> from types import SimpleNamespace
>>> from fedretrain.privacy.config import PrivacyConfig
>>> train_cfg = SimpleNamespace(batch_size=16, local_epochs=3)  # a TrainConfig in practice
>>> plan = plan_training(PrivacyConfig(enabled=True, noise_multiplier=1.1), train_cfg, 1400)
>>> plan.sample_rate, plan.steps, plan.expected_batch_size
(0.011428571428571429, 264, 16.0)
>>> plan = plan_training(
...     PrivacyConfig(enabled=True, target_epsilon=3.0), train_cfg, 1400, rounds_per_cycle=5
... )
>>> from fedretrain.privacy.rdp import epsilon
>>> 2.9 <= epsilon(plan.cycle_composition, 1e-5) <= 3.0
True
"""

from __future__ import annotations

from dataclasses import dataclass

from fedretrain.privacy.config import PrivacyConfig
from fedretrain.privacy.rdp import SampledGaussian, noise_multiplier_for
from fedretrain.train_config import TrainConfig


@dataclass(frozen=True)
class TrainingPlan:
    """One call of :func:`fedretrain.privacy.dp_sgd.dp_train`, planned.

    ``noise_multiplier`` is calibrated so that ``rounds_per_cycle`` such calls (one
    retraining cycle) cost at most ``privacy.target_epsilon``, or is ``privacy.noise_multiplier``
    as given.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    num_samples: int
    rounds_per_cycle: int

    @property
    def expected_batch_size(self) -> float:
        """``q * n``: DP-SGD divides the noisy gradient sum by this, never by a batch's size."""
        return self.sample_rate * self.num_samples

    @property
    def composition(self) -> tuple[SampledGaussian, ...]:
        """What this one call adds to the site's ledger."""
        return (SampledGaussian(self.noise_multiplier, self.sample_rate, self.steps),)

    @property
    def cycle_composition(self) -> tuple[SampledGaussian, ...]:
        """What a whole retraining cycle of ``rounds_per_cycle`` calls adds."""
        steps = self.steps * self.rounds_per_cycle
        return (SampledGaussian(self.noise_multiplier, self.sample_rate, steps),)


def plan_training(
    privacy: PrivacyConfig,
    train_cfg: TrainConfig,
    num_samples: int,
    rounds_per_cycle: int = 1,
) -> TrainingPlan:
    """Plan one DP-SGD call on ``num_samples`` local records.

    Parameters
    ----------
    privacy : PrivacyConfig
        Must be enabled.
    train_cfg : TrainConfig
        ``batch_size`` (the expected batch) and ``local_epochs`` (expected passes).
    num_samples : int
        Records at the site; at least 1.
    rounds_per_cycle : int
        Calls one retraining cycle makes (e.g. ``retrain.max_rounds``), over which
        ``privacy.target_epsilon`` is spread. Ignored when σ is given.
    """
    if not privacy.enabled:
        raise ValueError("privacy.enabled is false: plain training needs no DP plan")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: DP-SGD needs at least one record")
    if rounds_per_cycle < 1:
        raise ValueError(f"rounds_per_cycle={rounds_per_cycle}: must be >= 1")
    sample_rate = min(1.0, train_cfg.batch_size / num_samples)
    steps = train_cfg.local_epochs * max(1, round(1 / sample_rate))
    if privacy.noise_multiplier is not None:
        sigma = float(privacy.noise_multiplier)
    else:
        assert privacy.target_epsilon is not None  # PrivacyConfig guarantees one of the two
        sigma = noise_multiplier_for(
            privacy.target_epsilon, privacy.delta, sample_rate, steps * rounds_per_cycle
        )
    return TrainingPlan(sigma, sample_rate, steps, num_samples, rounds_per_cycle)
