"""The fused engine: per-sample clipping by hand, and the same DP-SGD update as Opacus's."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedretrain.config import Optimizer, TrainConfig
from fedretrain.models import MLP, DigitsCNN
from fedretrain.privacy.config import ClippingMode, PrivacyConfig
from fedretrain.privacy.dp_sgd import Engine, dp_train
from fedretrain.privacy.ledger import PrivacyLedger
from fedretrain.privacy.opacus_adapter import IncompatibleModelError
from fedretrain.privacy.per_sample import PerSampleClipping, unsupported
from fedretrain.tasks.digits import load_digits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


class Mixed(nn.Module):
    """Every layer form the fused engine handles, on (n, 1, 8, 8) digits.

    A Linear on a sequence (the image's 8 rows) called twice (shared weights), a Conv1d with
    reflect padding, a strided Conv2d (unfold path), a grouped Conv2d and a Conv3d (grouped
    convolution backward path), a Linear without bias.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Linear(8, 8)
        self.seq = nn.Conv1d(8, 6, 3, padding=1, padding_mode="reflect")
        self.strided = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.volume = nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))
        self.head = nn.Linear(6 * 8 + 4 * 16 + 2 * 64, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.rows(torch.relu(self.rows(x[:, 0]))))  # (n, 8, 8): 8 positions
        h = torch.relu(self.seq(h)).flatten(1)
        s = self.grouped(torch.relu(self.strided(x))).flatten(1)
        v = self.volume(x[:, None]).flatten(1)
        return self.head(torch.cat([h, s, v], 1))


class Sequence(nn.Module):
    """A Linear over positions (ghost norms from Gram matrices), called once."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Linear(8, 5)
        self.head = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.rows(x[:, 0])).flatten(1))


MODELS = {
    "cnn": lambda: DigitsCNN((1, 8, 8), 10, channels=(4, 8), hidden=16),
    "mlp": lambda: MLP((1, 8, 8), 10, hidden=[32]),
    "sequence": Sequence,
    "mixed": Mixed,
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name]()


def clipped_sum_by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float) -> list:
    """Sum over samples of each per-sample gradient scaled by min(1, c / (norm + 1e-6))."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad for p in model.parameters()]
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))  # type: ignore[misc]
        scale = min(1.0, c / (norm + 1e-6))
        total = [t + scale * g for t, g in zip(total, grads, strict=True)]
    return total


@pytest.mark.parametrize("mode", list(ClippingMode))
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("c", [0.05, 1e6], ids=["binding", "loose"])
def test_clipped_sum_equals_per_sample_clipping_by_hand(
    name: str, mode: ClippingMode, c: float
) -> None:
    data = load_digits().subset(np.arange(12))
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model = build(name)
    expected = clipped_sum_by_hand(copy.deepcopy(model), x, y, c)
    params = list(model.parameters())
    clipping = PerSampleClipping(model, params, c, mode, nn.CrossEntropyLoss(reduction="sum"))
    loss = clipping(x, y)
    clipping.close()
    with torch.no_grad():
        mean_loss = float(nn.functional.cross_entropy(model(x), y))
    assert float(loss) == pytest.approx(mean_loss * 12)
    for (pname, _), got, want in zip(
        model.named_parameters(), clipping.views, expected, strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=pname)


@pytest.mark.parametrize(
    ("features", "positions", "ghost"),
    [((512, 64), None, True), ((8, 5), 8, False), ((64, 64), 8, True), ((64, 64), 33, False)],
)
def test_auto_takes_ghost_norms_where_they_cost_less(
    features: tuple[int, int], positions: int | None, ghost: bool
) -> None:
    # Ghost norms of a Linear over T positions cost T^2 (in + out) a sample, its per-sample
    # gradient T in out: auto takes ghost iff T (in + out) <= in out (always for T = 1).
    layer = nn.Linear(*features)
    shape = (3, features[0]) if positions is None else (3, positions, features[0])
    clipping = PerSampleClipping(
        layer, list(layer.parameters()), 1.0, ClippingMode.auto, nn.MSELoss(reduction="sum")
    )
    layer(torch.randn(shape))  # the hook keeps the call; the rule decides on its shape
    assert clipping._rules[0]._ghost_norms() is ghost
    clipping.close()


def privacy(clipping: ClippingMode, sigma: float = 1.3, c: float = 0.05) -> PrivacyConfig:
    return PrivacyConfig(
        enabled=True, noise_multiplier=sigma, max_grad_norm=c, clipping=clipping, reproducible=True
    )


def run(engine: Engine, model: nn.Module, cfg: TrainConfig, p: PrivacyConfig, n: int,
        seed: int = 5, mu: float = 0.0) -> nn.Module:  # fmt: skip
    model = copy.deepcopy(model)
    data = load_digits().subset(np.arange(n))
    dp_train(model, data, cfg, p, cfg.lr, CPU, torch.Generator().manual_seed(seed),
             PrivacyLedger("0"), "v1", proximal_mu=mu, engine=engine)  # fmt: skip
    return model


def assert_same(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=atol, msg=name)


@pytest.mark.parametrize("clipping", list(ClippingMode))
@pytest.mark.parametrize("name", ["cnn", "mlp", "sequence"])
def test_one_noisy_step_equals_opacus_on_the_same_batch_and_noise_seed(
    name: str, clipping: ClippingMode
) -> None:
    # q = 1: the one batch is the whole data; lr 1, no momentum: w' = w - (sum + noise) / n,
    # so the weights' change is the clipped and noised update itself.
    cfg = TrainConfig(optimizer=Optimizer.sgd, momentum=0.0, lr=1.0, batch_size=64, local_epochs=1)
    start = build(name)
    fused = run(Engine.fused, start, cfg, privacy(clipping), 30)
    opacus = run(Engine.opacus, start, cfg, privacy(clipping), 30)
    assert_same(fused, opacus)
    noiseless = run(Engine.fused, start, cfg, privacy(clipping, sigma=0.0), 30)
    change = torch.cat(
        [(a - b).flatten() for a, b in zip(fused.parameters(), noiseless.parameters(), strict=True)]
    )
    assert float(change.detach().std()) == pytest.approx(1.3 * 0.05 / 30, rel=0.2)  # noise is there


@pytest.mark.parametrize(
    ("clipping", "optimizer", "mu"),
    [
        (ClippingMode.flat, Optimizer.sgd, 0.0),
        (ClippingMode.ghost, Optimizer.sgd, 0.0),
        (ClippingMode.ghost, Optimizer.adam, 0.0),
        (ClippingMode.flat, Optimizer.sgd, 0.5),
    ],
)
def test_poisson_training_equals_opacus_step_for_step(
    clipping: ClippingMode, optimizer: Optimizer, mu: float
) -> None:
    # Same generator: the same Poisson batches (empty ones too, at q = 2/60) and noise draws.
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, batch_size=2, local_epochs=2)
    start = build("cnn")
    fused = run(Engine.fused, start, cfg, privacy(clipping), 60, mu=mu)
    opacus = run(Engine.opacus, start, cfg, privacy(clipping), 60, mu=mu)
    assert_same(fused, opacus, atol=1e-5 if optimizer is Optimizer.adam else 1e-6)
    other_seed = run(Engine.fused, start, cfg, privacy(clipping), 60, seed=6, mu=mu)
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(fused.parameters(), other_seed.parameters(), strict=True)
    )


def test_shared_layers_and_every_layer_form_match_opacus_hooks() -> None:
    # Opacus's ghost clipping refuses shared weights; its hooks (flat) take them.
    cfg = TrainConfig(lr=0.05, batch_size=8, local_epochs=1)
    start = build("mixed")
    opacus = run(Engine.opacus, start, cfg, privacy(ClippingMode.flat), 40)
    for clipping in ClippingMode:
        assert_same(run(Engine.fused, start, cfg, privacy(clipping), 40), opacus, atol=1e-5)


def test_auto_uses_the_fused_engine_where_it_can() -> None:
    cfg = TrainConfig(lr=0.05, batch_size=8, local_epochs=1)
    start = build("cnn")
    auto = run(Engine.auto, start, cfg, privacy(ClippingMode.ghost), 40)
    fused = run(Engine.fused, start, cfg, privacy(ClippingMode.ghost), 40)
    for a, b in zip(auto.parameters(), fused.parameters(), strict=True):
        assert torch.equal(a, b)


def test_what_the_fused_engine_cannot_hook() -> None:
    assert unsupported(DigitsCNN((1, 8, 8), 10)) == []
    assert unsupported(MLP((4,), 2)) == []
    problems = unsupported(
        nn.Sequential(
            nn.Conv2d(1, 2, 3, padding="same"),
            nn.GroupNorm(1, 2),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(128, 2),
        )
    )
    assert problems == [
        "0 (Conv2d): padding='same' (needs numbers)",
        "1 (GroupNorm): trainable parameters outside Linear/Conv layers",
        "2 (ReLU): inplace=True",
    ]
    frozen = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    frozen[1].requires_grad_(False)
    assert unsupported(frozen) == []
    with pytest.raises(ValueError, match="GroupNorm"):
        model = nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(1, 4))
        PerSampleClipping(model, list(model.parameters()), 1.0, True, nn.CrossEntropyLoss())


def test_the_fused_engine_refuses_what_it_cannot_hook_and_auto_falls_back() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    cfg = TrainConfig(lr=0.05, batch_size=8, local_epochs=1)
    p = privacy(ClippingMode.flat)
    with pytest.raises(IncompatibleModelError, match="LayerNorm"):
        run(Engine.fused, model, cfg, p, 40)
    assert_same(run(Engine.auto, model, cfg, p, 40), run(Engine.opacus, model, cfg, p, 40), 0)


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(nn.functional.relu(self.a(x.flatten(1)), inplace=True))


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.spare = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x.flatten(1))


@pytest.mark.parametrize(
    ("model", "message"), [(InPlace, "modified in place"), (Unused, "was not called")]
)
def test_what_would_give_wrong_gradients_fails_loudly(model: type[nn.Module], message: str) -> None:
    data = load_digits().subset(np.arange(8))
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    m = model()
    clipping = PerSampleClipping(m, list(m.parameters()), 1.0, True, nn.CrossEntropyLoss())
    with pytest.raises(RuntimeError, match=message):
        clipping(x, y)
    clipping.close()
    assert not any(module._forward_hooks for module in m.modules())
