"""DP-SGD of a site's local training: :func:`dp_train`, its engines, and the fused engine.

:func:`dp_train` mirrors :func:`fedretrain.training.train` (same optimizer, same loss, training
in place) with Poisson batches, per-sample clipping and Gaussian noise, and records what it ran
in the site's :class:`~fedretrain.privacy.ledger.PrivacyLedger`. Two engines compute the same
update (tests hold them to it, batch for batch and noise draw for noise draw):

``fused`` (:mod:`~fedretrain.privacy.per_sample`, plain PyTorch, here)
    Per-sample norms and clipped sums from one autograd pass over the layer outputs, noise
    drawn into one flat buffer; for models whose trainable parameters all sit in Linear and
    Conv layers (the built-in models). About 2.5x faster than Opacus on the default task.
``opacus`` (:class:`~fedretrain.privacy.opacus_adapter.OpacusStepper`)
    Opacus's per-sample gradient hooks and noisy optimizer; for everything else (GroupNorm,
    LayerNorm, Embedding...).

:class:`Engine` ``auto`` (what :func:`dp_train` uses) takes ``fused`` where it can. Whichever
engine runs, the model is validated by :mod:`~fedretrain.privacy.opacus_adapter` (the one
module that imports Opacus), so importing this module loads Opacus.

A site that trains with DP builds its model through
:func:`~fedretrain.privacy.opacus_adapter.make_compatible` (and so must the server, so that
both hold the same architecture), then per round::

    plan = plan_training(privacy, train_cfg, len(data), rounds_per_cycle=retrain.max_rounds)
    decision = ledger.would_exceed(plan.composition, privacy.epsilon_budget, privacy.delta)
    if decision.allowed:
        result = dp_train(model, data, train_cfg, privacy, lr, device, generator, ledger,
                          tag=f"v{version}/r{server_round}", plan=plan)
"""

from __future__ import annotations

import functools
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from fedretrain.augment import augment_batch
from fedretrain.finetune import lr_scales
from fedretrain.privacy.config import PrivacyConfig
from fedretrain.privacy.ledger import Decision, LedgerEntry, PrivacyLedger
from fedretrain.privacy.opacus_adapter import (
    HOOK_WARNING,
    IncompatibleModelError,
    OpacusStepper,
    check_compatible,
)
from fedretrain.privacy.per_sample import PerSampleClipping, flat_buffer, unsupported
from fedretrain.privacy.plan import TrainingPlan, plan_training
from fedretrain.privacy.rdp import SampledGaussian
from fedretrain.privacy.sampling import poisson_batches
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.train_config import TrainConfig
from fedretrain.training import TrainResult, make_optimizer, proximal_anchor


class BudgetExceededError(RuntimeError):
    """The planned training would take the site beyond ``privacy.epsilon_budget``."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.reason)


@dataclass(frozen=True)
class DPTrainResult:
    """What :func:`dp_train` ran and what it cost the site."""

    train: TrainResult
    plan: TrainingPlan
    entry: LedgerEntry  # the ledger record: tag, σ, q, steps, δ, cumulative ε, ε spent

    @property
    def epsilon_spent(self) -> float:
        """How much this call raised the site's cumulative ε at ``entry.delta``."""
        return self.entry.epsilon_spent

    @property
    def epsilon_total(self) -> float:
        """The site's cumulative ε at ``entry.delta`` after this call."""
        return self.entry.epsilon


# ----------------------------------------------------------------------------- training


class Engine(str, Enum):
    """Who computes the clipped, noised gradient; the update is the same."""

    auto = "auto"  # fused where the model allows it, else opacus
    fused = "fused"  # fedretrain.privacy.per_sample: one autograd pass, plain PyTorch
    opacus = "opacus"  # Opacus's per-sample gradient hooks and DP optimizer


def dp_train(
    model: nn.Module,
    data: ArrayDataset,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
    lr: float,
    device: torch.device,
    generator: torch.Generator,
    ledger: PrivacyLedger,
    tag: str,
    plan: TrainingPlan | None = None,
    proximal_mu: float = 0.0,
    engine: Engine = Engine.auto,
    anchor: Sequence[torch.Tensor] | None = None,
) -> DPTrainResult:
    """Train ``model`` in place with DP-SGD and record the cost in ``ledger``.

    Parameters
    ----------
    model : nn.Module
        Trained in place; must pass
        :func:`~fedretrain.privacy.opacus_adapter.compatibility_problems` (build it with
        :func:`~fedretrain.privacy.opacus_adapter.make_compatible`).
    data, train_cfg, lr, device
        As for :func:`fedretrain.training.train`: the optimizer is
        ``make_optimizer(train_cfg, ...)``, the loss cross-entropy. ``train_cfg.batch_size``
        is the *expected* batch size, ``train_cfg.local_epochs`` expected passes;
        ``train_cfg.max_grad_norm`` is not used (per-sample clipping at
        ``privacy.max_grad_norm`` replaces it).
    privacy : PrivacyConfig
        Must be enabled.
    generator : torch.Generator
        With ``privacy.reproducible``: the Poisson batches are drawn first from it
        (:func:`poisson_batches` with the same state gives the same batches), then a seed for
        the noise. Otherwise both come from the operating system's entropy.
    ledger : PrivacyLedger
        The site's ledger; the run is recorded under ``tag`` before this returns (and also if
        training fails after some noisy steps, with the steps done).
    plan : TrainingPlan or None
        From :func:`plan_training` (the one the budget was checked with); None plans here
        for one round per cycle.
    proximal_mu : float
        FedProx's μ: its gradient ``μ (w - w_global)`` depends on no record, so it is added
        after clipping and noise, unclipped.
    anchor : sequence of Tensor or None
        The proximal term's anchor, one tensor per trainable parameter (the serving model,
        ``retrain.anchor_mu``); None: the weights the model holds on entry (FedProx's).
    engine : Engine
        ``auto`` (sites): the fused engine for models it can hook, Opacus for the others;
        tests and benchmarks choose one to compare them.

    Raises
    ------
    IncompatibleModelError
        The model has layers DP-SGD cannot train (or ``Engine.fused`` cannot hook it).
    BudgetExceededError
        The plan would exceed ``privacy.epsilon_budget``; call ``ledger.would_exceed`` first
        and decline instead.
    """
    if not privacy.enabled:
        raise ValueError("privacy.enabled is false: use fedretrain.training.train")
    plan = plan if plan is not None else plan_training(privacy, train_cfg, len(data))
    if plan.num_samples != len(data):
        raise ValueError(f"the plan is for {plan.num_samples} samples but data has {len(data)}")
    check_compatible(model)
    decision = ledger.would_exceed(plan.composition, privacy.epsilon_budget, privacy.delta)
    if not decision.allowed:
        raise BudgetExceededError(decision)

    if not privacy.reproducible:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    batches = poisson_batches(len(data), plan.sample_rate, plan.steps, generator)
    noise = torch.Generator(device=device)
    noise.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused_problems = _fused_problems(model, params)
    if engine is Engine.fused and fused_problems:
        raise IncompatibleModelError(
            "the fused engine cannot train this model: " + "; ".join(fused_problems)
        )
    fused = engine is Engine.fused or (engine is Engine.auto and not fused_problems)
    stepper = _FusedStepper if fused else OpacusStepper
    scales = lr_scales(
        model, train_cfg.lr_multipliers
    )  # train.lr_groups: per-parameter multipliers
    step = stepper(
        model, params, functools.partial(make_optimizer, train_cfg, lr=lr), privacy, plan, noise,
        proximal_mu, scales, anchor,
    )  # fmt: skip
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    total_loss, losses, done = 0.0, 0, 0
    try:
        with warnings.catch_warnings():
            # The first layer's input needs no gradient; Opacus's backward hooks fire anyway,
            # as intended, and torch warns about it once per process.
            warnings.filterwarnings("ignore", HOOK_WARNING, UserWarning)
            for batch in batches:
                index = batch.to(device)
                inputs = x[index]
                if train_cfg.augment:  # a record's own transform: its privacy is unchanged
                    inputs = augment_batch(
                        inputs, train_cfg.augment_shift, train_cfg.augment_degrees, generator
                    )
                loss = step(inputs, y[index])
                if loss is not None:
                    total_loss += loss
                    losses += 1
                done += 1
    except BaseException:
        if done:  # noisy updates reached the model: they count even though training failed
            spent = SampledGaussian(plan.noise_multiplier, plan.sample_rate, done)
            ledger.record(f"{tag} (failed)", spent, privacy.delta)
        raise
    finally:
        step.close()
    entry = ledger.record(tag, plan.composition[0], privacy.delta)
    return DPTrainResult(TrainResult(len(data), total_loss / max(losses, 1), done), plan, entry)


def _runs(params: list[nn.Parameter], scales: list[float] | None) -> list[tuple[int, int, float]]:
    """(start, stop, multiplier) of each run of consecutive ``params`` with one learning-rate
    multiplier, as element offsets into their flat buffer."""
    runs: list[tuple[int, int, float]] = []
    offset = 0
    for p, scale in zip(params, scales or [1.0] * len(params), strict=True):
        stop = offset + p.numel()
        if runs and runs[-1][2] == scale:
            runs[-1] = (runs[-1][0], stop, scale)
        else:
            runs.append((offset, stop, scale))
        offset = stop
    return runs


def _fused_problems(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    """Why the fused engine cannot train ``model``; empty when it can."""
    problems = unsupported(model)
    if not params:
        problems.append("no trainable parameters")
    elif len({(p.dtype, p.device) for p in params}) > 1:
        problems.append("parameters of several dtypes or devices")
    return problems


class _FusedStepper:
    """One DP-SGD step of the fused engine; a noise-only step on an empty batch.

    For the whole training the parameters are views of one flat parameter, and their
    ``.grad`` views of one flat gradient buffer; the optimizer steps the flat parameter in one
    go, with torch's fused kernel on CPU and CUDA (elementwise optimizers: the update of a
    parameter is the same whichever tensor holds it), under a third of the time a step over
    eight tensors takes on the default CNN.

    Each step draws the noise straight into the gradient buffer, one parameter after another
    in the parameters' order with ``normal_(0, σC / B)`` on the noise generator (the draws
    Opacus's ``DPOptimizer`` makes, so both engines give the same update from the same seed);
    then :class:`PerSampleClipping` adds the clipped sum scaled by ``1 / B``. That is
    ``(sum + noise) / B`` for the expected batch size ``B``, as Opacus computes it, with no
    pass over the parameters for the sum and none for the division.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        make_opt: Callable[..., torch.optim.Optimizer],
        privacy: PrivacyConfig,
        plan: TrainingPlan,
        noise: torch.Generator,
        proximal_mu: float,
        scales: list[float] | None = None,
        anchor: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.params = params
        self.scale = 1.0 / plan.expected_batch_size
        self.std = plan.noise_multiplier * privacy.max_grad_norm * self.scale
        self.noise = noise
        self.clipping = PerSampleClipping(
            model,
            params,
            privacy.max_grad_norm,
            privacy.clipping,
            loss_sum=functools.partial(nn.functional.cross_entropy, reduction="sum"),
        )
        flat, views = flat_buffer(params)
        for p, view, grad in zip(params, views, self.clipping.views, strict=True):
            view.copy_(p.detach())
            p.data, p.grad = view, grad
        self.flat = flat
        self.grad = self.clipping.flat
        self.grad_views = self.clipping.views
        # One flat parameter per run of parameters sharing a learning rate (one without
        # train.lr_groups), each a slice of the flat buffer and its gradient one of the
        # gradient buffer's.
        runs = _runs(params, scales)
        self.weights: list[nn.Parameter] = []
        for start, stop, _ in runs:
            weight = nn.Parameter(flat[start:stop])
            weight.grad = self.grad[start:stop]
            self.weights.append(weight)
        self.optimizer = make_opt(
            self.weights,
            fused=flat.device.type in ("cpu", "cuda"),
            scales=[scale for _, _, scale in runs],
        )
        self.anchor = None
        if proximal_mu > 0:  # flat, in the parameters' order, as the flat buffer is
            self.anchor = torch.cat([a.reshape(-1) for a in proximal_anchor(params, anchor)])
        self.mu = proximal_mu

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """The batch's mean loss, or None for an empty batch."""
        if self.std > 0:
            for view in self.grad_views:
                view.normal_(0.0, self.std, generator=self.noise)
        else:
            self.grad.zero_()
        # On an empty batch the mechanism's output is the noise alone; skipping the step
        # would reveal that the batch was empty, which the analysis does not allow for.
        n, loss_sum = len(y), 0.0
        if n:
            loss_sum = float(self.clipping(x, y, self.scale))
        if self.anchor is not None:
            self.grad.add_(self.flat - self.anchor, alpha=self.mu)
        self.optimizer.step()
        return loss_sum / n if n else None

    def close(self) -> None:
        """Remove the hooks; each parameter owns its storage again and has no gradient."""
        self.clipping.close()
        for p in self.params:
            p.data, p.grad = p.data.clone(), None
