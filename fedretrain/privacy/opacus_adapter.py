"""Opacus behind our types: the one module of fedretrain that imports Opacus.

It supplies what :mod:`fedretrain.privacy.dp_sgd` takes from Opacus, and nothing else:

* model validation for every engine (:func:`compatibility_problems`, :func:`make_compatible`,
  :func:`check_compatible`: Opacus's ``ModuleValidator`` and its grad-sample checks);
* the ``opacus`` engine, :class:`OpacusStepper`: Opacus's per-sample gradient hooks (``flat``,
  and ``auto``: per-sample gradients; ``ghost``: per-sample norms without materialising Linear
  gradients, in a second backward pass) and noisy optimizer, for models the fused engine
  cannot hook (GroupNorm, LayerNorm, Embedding...).

Opacus supplies neither batches (:func:`~fedretrain.privacy.sampling.poisson_batches` does) nor
accounting (the ledger does), so no ``PrivacyEngine`` and no Opacus accountant that could be
reset is ever built.

Importing Opacus calls ``logging.basicConfig``, which would install a handler on the root
logger of whatever process imports us; the import below undoes that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fedretrain.privacy.config import ClippingMode, PrivacyConfig
from fedretrain.privacy.plan import TrainingPlan
from fedretrain.training import proximal_anchor


@contextmanager
def _root_logging_kept() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


with _root_logging_kept():
    from opacus.grad_sample.grad_sample_module import GradSampleHooks
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
        GradSampleHooksFastGradientClipping,
    )
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
    from opacus.validators import ModuleValidator

# The warning torch gives once per process when Opacus's full backward hooks fire on a layer
# whose input needs no gradient (the first layer), as intended; filtered while training.
HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module"
# Attributes Opacus's hooks and optimizers set on parameters, removed after training.
_OPACUS_PARAM_ATTRS = (
    "grad_sample",
    "_forward_counter",
    "_current_grad_sample",
    "_norm_sample",
    "summed_grad",
)


class IncompatibleModelError(ValueError):
    """A model DP-SGD cannot train as it is (BatchNorm, buffers in trainable layers...)."""


# ----------------------------------------------------------------------------- models


def compatibility_problems(model: nn.Module) -> list[str]:
    """Why DP-SGD cannot train ``model`` as it is; empty when it can.

    >>> compatibility_problems(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))[0][:40]
    'BatchNorm cannot support training with d'
    """
    was_training = model.training
    model.train()
    try:
        errors = [str(e) for e in ModuleValidator.validate(model, strict=False)]
        errors += [str(e) for e in GradSampleHooks.validate(model, strict=False)]
    finally:
        model.train(was_training)
    return list(dict.fromkeys(errors))  # both checks flag BatchNorm; say it once


def make_compatible(model: nn.Module, fix: bool = True) -> nn.Module:
    """``model`` itself if DP-SGD can train it, else a fixed copy (BatchNorm → GroupNorm).

    Call it where the model is built, on the server and at every site alike: the fixed model
    has different layers and state-dict keys from the original. With ``fix=False`` an
    incompatible model is refused with what to change.

    >>> plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    >>> make_compatible(plain) is plain
    True
    >>> type(make_compatible(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))[1])
    <class 'torch.nn.modules.normalization.GroupNorm'>
    """
    problems = compatibility_problems(model)
    if not problems:
        return model
    if not fix:
        raise IncompatibleModelError(_refusal(problems, "set privacy.fix_model=true"))
    with _root_logging_kept():
        fixed: nn.Module = ModuleValidator.fix(model)
    remaining = compatibility_problems(fixed)
    if remaining:
        raise IncompatibleModelError(_refusal(remaining, "Opacus cannot fix these automatically"))
    return fixed


def check_compatible(model: nn.Module) -> None:
    """Refuse ``model`` with what to change if DP-SGD cannot train it as it is.

    Raises
    ------
    IncompatibleModelError
        Naming each problem and :func:`make_compatible`, which fixes them.
    """
    problems = compatibility_problems(model)
    if problems:
        raise IncompatibleModelError(_refusal(problems, "privacy.fix_model=true does that"))


def _refusal(problems: list[str], hint: str) -> str:
    listed = "\n".join(f"  - {p}" for p in problems)
    return (
        f"this model cannot be trained with DP-SGD as it is:\n{listed}\n"
        f"Build it through fedretrain.privacy.opacus_adapter.make_compatible (BatchNorm becomes "
        f"GroupNorm; {hint}), or use GroupNorm/LayerNorm/no normalisation in the model. "
        "Server and sites must build the same, fixed architecture."
    )


# ----------------------------------------------------------------------------- training
class OpacusStepper:
    """One DP-SGD step through Opacus, flat or ghost; a noise-only step on an empty batch.

    The ``opacus`` engine of :func:`~fedretrain.privacy.dp_sgd.dp_train`: called on each batch,
    it returns the batch's mean loss (None for an empty batch); :meth:`close` leaves the model
    plain again.
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
        self.optimizer = optimizer = make_opt(params, scales=scales)
        self.std = plan.noise_multiplier * privacy.max_grad_norm
        self.expected_batch_size = plan.expected_batch_size
        self.noise = noise
        self.ghost = privacy.clipping is ClippingMode.ghost
        dp_args = {
            "noise_multiplier": plan.noise_multiplier,
            "max_grad_norm": privacy.max_grad_norm,
            "expected_batch_size": plan.expected_batch_size,
            "loss_reduction": "mean",
            "generator": noise,
        }
        criterion = nn.CrossEntropyLoss(reduction="mean")
        self.hooks: GradSampleHooks
        self.dp_optimizer: DPOptimizer
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], Any]
        if self.ghost:
            self.hooks = GradSampleHooksFastGradientClipping(
                model, loss_reduction="mean", max_grad_norm=privacy.max_grad_norm
            )
            self.dp_optimizer = DPOptimizerFastGradientClipping(optimizer, **dp_args)
            self.loss_fn = DPLossFastGradientClipping(
                self.hooks, self.dp_optimizer, criterion, loss_reduction="mean"
            )
        else:
            self.hooks = GradSampleHooks(model, loss_reduction="mean")
            self.dp_optimizer = DPOptimizer(optimizer, **dp_args)
            self.loss_fn = criterion
        self.model = model
        self.layout_hooks = [
            m.register_forward_pre_hook(_standard_layout)
            for m in model.modules()
            if isinstance(m, nn.modules.conv._ConvNd)
        ]
        self.anchor = proximal_anchor(params, anchor) if proximal_mu > 0 else []
        self.mu = proximal_mu
        if self.anchor:
            self.dp_optimizer.attach_step_hook(lambda _: self._add_proximal_gradient())

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """The batch's mean loss, or None for an empty batch."""
        if len(y) == 0:
            self._noise_only_step()
            return None
        self.dp_optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.dp_optimizer.step()
        return float(loss.detach())

    def _noise_only_step(self) -> None:
        # The mechanism's output on an empty batch is noise alone; skipping the step would
        # reveal that the batch was empty, which the analysis does not allow for.
        self.dp_optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            sample = torch.normal(0.0, 1.0, p.shape, generator=self.noise, device=p.device)
            p.grad = sample.to(p.dtype) * (self.std / self.expected_batch_size)
        if self.anchor:
            self._add_proximal_gradient()
        self.optimizer.step()

    def _add_proximal_gradient(self) -> None:
        with torch.no_grad():
            for p, a in zip(self.params, self.anchor, strict=True):
                assert p.grad is not None
                p.grad.add_(p - a, alpha=self.mu)

    def close(self) -> None:
        """Remove Opacus's hooks and per-parameter attributes; the model is plain again."""
        self.hooks.remove_hooks()
        for handle in self.layout_hooks:
            handle.remove()
        for p in self.model.parameters():
            p.grad = None
            for attr in _OPACUS_PARAM_ATTRS:
                if hasattr(p, attr):
                    delattr(p, attr)
        for module in self.model.modules():
            for attr in ("activations", "max_batch_len"):
                if hasattr(module, attr):
                    delattr(module, attr)


def _standard_layout(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # Opacus 1.6 computes a convolution's per-sample gradients with an unfold
    # (opacus.utils.tensor_utils.unfold2d) that assumes row-major (NCHW) strides. A
    # channels-last input gives wrong per-sample gradients, hence wrong norms and clipping,
    # silently. Digits from a numpy subset are such an input: their (n, 1, 8, 8) strides make
    # the first convolution return channels-last activations. Copy such inputs to NCHW.
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
