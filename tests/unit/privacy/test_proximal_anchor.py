"""The proximal term anchored at the serving model (issue 17, item 3: ``retrain.anchor_mu``).

One SGD step with an anchor ``a`` moves ``w`` to ``w - lr (grad + mu (w - a))``: checked
against autograd's gradient for plain training, and for both DP-SGD engines against the same
run anchored at its own start (whose proximal gradient is zero at the first step: with the
same noise, the two differ by ``lr mu (w - a)`` exactly)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedretrain.finetune import anchor_tensors, freeze
from fedretrain.models import DigitsCNN
from fedretrain.privacy.config import ClippingMode, PrivacyConfig
from fedretrain.privacy.dp_sgd import Engine, dp_train
from fedretrain.privacy.ledger import PrivacyLedger
from fedretrain.tasks.digits import load_digits
from fedretrain.train_config import Optimizer, TrainConfig
from fedretrain.training import train

CPU = torch.device("cpu")
N, LR, MU = 24, 0.5, 2.0
CFG = TrainConfig(optimizer=Optimizer.sgd, momentum=0.0, lr=LR, batch_size=64, local_epochs=1)


def models(freeze_features: bool = False) -> tuple[nn.Module, nn.Module]:
    """A start model and an anchor (another initialisation, as a serving model would be)."""
    torch.manual_seed(0)
    start = DigitsCNN((1, 8, 8), 10)
    torch.manual_seed(1)
    anchor = DigitsCNN((1, 8, 8), 10)
    if freeze_features:
        freeze(start, ["features"])
        anchor.load_state_dict(
            {
                **anchor.state_dict(),
                **{k: v for k, v in start.state_dict().items() if "features" in k},
            }
        )
        freeze(anchor, ["features"])
    return start, anchor


@pytest.mark.parametrize("frozen", [False, True])
def test_one_anchored_sgd_step_is_the_closed_form(frozen: bool) -> None:
    start, anchor = models(frozen)
    data = load_digits().subset(np.arange(N))
    model = copy.deepcopy(start)
    a = anchor_tensors(anchor, anchor.state_dict())
    train(model, data, CFG, LR, CPU, torch.Generator().manual_seed(0), MU, a)
    oracle = copy.deepcopy(start)
    params = [p for p in oracle.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(oracle(torch.from_numpy(data.x)), torch.from_numpy(data.y))
    grads = torch.autograd.grad(loss, params)
    expected = iter(
        p.detach() - LR * (g + MU * (p.detach() - w))
        for p, g, w in zip(params, grads, a, strict=True)
    )
    for (name, p), before in zip(model.named_parameters(), start.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), next(expected), rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(p, before), name


def test_without_an_anchor_the_term_pulls_towards_the_incoming_weights() -> None:
    """FedProx's own anchor: the weights on entry, so the first step has no proximal pull."""
    start, _ = models()
    data = load_digits().subset(np.arange(N))
    plain, prox = copy.deepcopy(start), copy.deepcopy(start)
    train(plain, data, CFG, LR, CPU, torch.Generator().manual_seed(0))
    train(prox, data, CFG, LR, CPU, torch.Generator().manual_seed(0), MU)
    for p, q in zip(plain.parameters(), prox.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_an_anchor_of_the_wrong_shape_is_refused() -> None:
    start, anchor = models()
    data = load_digits().subset(np.arange(N))
    wrong = [t.T if t.ndim == 2 else t for t in anchor_tensors(anchor, anchor.state_dict())]
    with pytest.raises(ValueError, match="anchor tensor of shape"):
        train(copy.deepcopy(start), data, CFG, LR, CPU, torch.Generator(), MU, wrong)
    with pytest.raises(ValueError, match="lacks classifier.2.bias"):
        anchor_tensors(
            anchor, {k: v for k, v in anchor.state_dict().items() if k != "classifier.2.bias"}
        )


@pytest.mark.parametrize("engine", [Engine.fused, Engine.opacus])
@pytest.mark.parametrize("frozen", [False, True])
def test_dp_sgd_adds_the_anchored_gradient_after_clipping_and_noise(
    engine: Engine, frozen: bool
) -> None:
    start, anchor = models(frozen)
    data = load_digits().subset(np.arange(N))
    p = PrivacyConfig(
        enabled=True,
        noise_multiplier=1.1,
        max_grad_norm=0.05,
        clipping=ClippingMode.flat,
        reproducible=True,
    )
    a = anchor_tensors(anchor, anchor.state_dict())
    own = anchor_tensors(start, start.state_dict())  # the start itself: no pull at step one

    def run(to: list[torch.Tensor]) -> nn.Module:
        model = copy.deepcopy(start)
        dp_train(model, data, CFG, p, LR, CPU, torch.Generator().manual_seed(5),
                 PrivacyLedger("0"), "v1", proximal_mu=MU, engine=engine, anchor=to)  # fmt: skip
        return model

    anchored, unanchored = run(a), run(own)
    trainable = [q for q in start.parameters() if q.requires_grad]
    pull = iter(LR * MU * (q.detach() - w) for q, w in zip(trainable, a, strict=True))
    for (name, x), y, before in zip(
        anchored.named_parameters(), unanchored.parameters(), start.parameters(), strict=True
    ):
        if before.requires_grad:
            torch.testing.assert_close(y.detach() - x.detach(), next(pull), rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(x, before) and torch.equal(y, before), name
