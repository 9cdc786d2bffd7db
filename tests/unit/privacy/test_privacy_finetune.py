"""DP-SGD under fine-tuning (issue 17, item 1): frozen parameters are neither clipped nor noised
(each sample's norm is its trainable gradient's, by hand here), and ``train.lr_groups`` give the
fused engine the same updates as Opacus's optimizer with parameter groups."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedretrain.finetune import freeze
from fedretrain.models import DigitsCNN
from fedretrain.privacy.config import ClippingMode, PrivacyConfig
from fedretrain.privacy.dp_sgd import Engine, dp_train
from fedretrain.privacy.ledger import PrivacyLedger
from fedretrain.tasks.digits import load_digits
from fedretrain.train_config import Optimizer, TrainConfig

CPU = torch.device("cpu")
ENGINES = pytest.mark.parametrize("engine", [Engine.fused, Engine.opacus])


def frozen_cnn(patterns: list[str]) -> nn.Module:
    torch.manual_seed(0)
    model = DigitsCNN((1, 8, 8), 10)
    freeze(model, patterns)
    return model


def privacy(sigma: float, c: float = 0.05) -> PrivacyConfig:
    return PrivacyConfig(
        enabled=True,
        noise_multiplier=sigma,
        max_grad_norm=c,
        clipping=ClippingMode.flat,
        reproducible=True,
    )


def run(engine: Engine, model: nn.Module, cfg: TrainConfig, p: PrivacyConfig, n: int,
        seed: int = 5) -> nn.Module:  # fmt: skip
    model = copy.deepcopy(model)
    data = load_digits().subset(np.arange(n))
    dp_train(model, data, cfg, p, cfg.lr, CPU, torch.Generator().manual_seed(seed),
             PrivacyLedger("0"), "v1", engine=engine)  # fmt: skip
    return model


@ENGINES
def test_frozen_parameters_are_neither_clipped_nor_noised(engine: Engine) -> None:
    """q = 1, lr 1, no momentum, no noise: w' = w - sum_i clip(g_i) / n, where g_i is sample
    i's gradient of the trainable parameters alone (clipping at c on their norm)."""
    n, c = 24, 0.05
    start = frozen_cnn(["features"])
    cfg = TrainConfig(optimizer=Optimizer.sgd, momentum=0.0, lr=1.0, batch_size=64, local_epochs=1)
    trained = run(engine, start, cfg, privacy(0.0, c), n)
    data = load_digits().subset(np.arange(n))
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model = copy.deepcopy(start)
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(n):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        total = [t + min(1.0, c / (norm + 1e-6)) * g for t, g in zip(total, grads, strict=True)]
    expected = iter(total)
    for (name, p), before in zip(trained.named_parameters(), start.parameters(), strict=True):
        if name.startswith("features"):
            assert torch.equal(p, before), name  # not clipped, not noised: not touched
        else:
            torch.testing.assert_close(p, before - next(expected) / n, rtol=1e-4, atol=1e-7)
    noisy = run(engine, start, cfg, privacy(1.3, c), n)
    for (name, p), before in zip(noisy.named_parameters(), start.parameters(), strict=True):
        assert torch.equal(p, before) is name.startswith("features"), name


@pytest.mark.parametrize("optimizer", [Optimizer.sgd, Optimizer.adam])
def test_learning_rate_groups_give_both_engines_the_same_updates(optimizer: Optimizer) -> None:
    # Same generator: the same Poisson batches (some empty at q = 2/60) and noise draws.
    cfg = TrainConfig(
        optimizer=optimizer, lr=0.05, batch_size=2, local_epochs=2,
        lr_groups=["features.2:0.1", "classifier.0:3"],
    )  # fmt: skip
    start = frozen_cnn(["features.0"])
    fused = run(Engine.fused, start, cfg, privacy(1.0), 60)
    opacus = run(Engine.opacus, start, cfg, privacy(1.0), 60)
    for (name, a), b in zip(fused.named_parameters(), opacus.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    plain = TrainConfig(optimizer=optimizer, lr=0.05, batch_size=2, local_epochs=2)
    ungrouped = run(Engine.fused, start, plain, privacy(1.0), 60)
    moved = {
        name: not torch.allclose(a, b)
        for (name, a), b in zip(fused.named_parameters(), ungrouped.parameters(), strict=True)
    }
    assert moved["classifier.0.weight"] and moved["features.2.weight"]
    assert not moved["features.0.weight"]  # frozen in both
