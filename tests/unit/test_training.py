import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion

from fedretrain.config import LrSchedule, Optimizer, TrainConfig
from fedretrain.models import MLP, DigitsCNN
from fedretrain.tasks.synthetic import sea
from fedretrain.training import evaluate, lr_at, train

CPU = torch.device("cpu")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MLP((3,), 2)


def test_lr_schedules() -> None:
    exp = TrainConfig(lr=0.1, lr_schedule=LrSchedule.exponential, lr_gamma=0.5)
    assert [lr_at(exp, r, 4) for r in (1, 2, 3)] == pytest.approx([0.1, 0.05, 0.025])
    cos = TrainConfig(lr=0.1, lr_schedule=LrSchedule.cosine, lr_min=0.01)
    assert lr_at(cos, 1, 5) == pytest.approx(0.1)
    assert lr_at(cos, 3, 5) == pytest.approx(0.055)
    assert lr_at(cos, 5, 5) == pytest.approx(0.01)
    assert lr_at(TrainConfig(lr=0.3), 7, 10) == 0.3


@pytest.mark.parametrize("optimizer", list(Optimizer))
def test_training_lowers_the_loss(optimizer: Optimizer) -> None:
    data = sea(n_samples=600, seed=0)
    cfg = TrainConfig(
        optimizer=optimizer, lr=0.05 if optimizer is Optimizer.sgd else 0.01, local_epochs=5
    )
    model = _model()
    before = evaluate(model, data, CPU)
    train(model, data, cfg, cfg.lr, CPU, torch.Generator().manual_seed(0))
    after = evaluate(model, data, CPU)
    assert after.loss_sum < 0.8 * before.loss_sum


def test_training_is_deterministic_under_a_seeded_generator() -> None:
    data, cfg = sea(n_samples=200, seed=1), TrainConfig()
    a, b = _model(), _model()
    train(a, data, cfg, cfg.lr, CPU, torch.Generator().manual_seed(5))
    train(b, data, cfg, cfg.lr, CPU, torch.Generator().manual_seed(5))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_proximal_term_with_zero_mu_equals_plain_training_and_positive_mu_stays_closer() -> None:
    data, cfg = sea(n_samples=300, seed=2), TrainConfig(lr=0.1, local_epochs=3)
    start = _model()
    runs = {}
    for mu in (0.0, 0.0, 10.0):
        model = copy.deepcopy(start)
        train(model, data, cfg, cfg.lr, CPU, torch.Generator().manual_seed(0), proximal_mu=mu)
        runs.setdefault(mu, []).append(model)
    plain, again = runs[0.0]
    for pa, pb in zip(plain.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)

    def drift(m: torch.nn.Module) -> float:
        pairs = zip(m.parameters(), start.parameters(), strict=True)
        return sum(float(((p - q) ** 2).sum().detach()) for p, q in pairs)

    assert drift(runs[10.0][0]) < 0.5 * drift(plain)


def test_gradient_clipping_bounds_each_step() -> None:
    data = sea(n_samples=64, seed=3)
    cfg = TrainConfig(
        optimizer=Optimizer.sgd,
        momentum=0.0,
        lr=1.0,
        batch_size=64,
        local_epochs=1,
        max_grad_norm=1e-3,
    )
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    train(model, data, cfg, cfg.lr, CPU, torch.Generator().manual_seed(0))
    pairs = zip(model.parameters(), before, strict=True)
    step = sum(float(((p - q) ** 2).sum()) for p, q in pairs) ** 0.5
    assert step <= 1e-3 * 1.0001  # one SGD step of lr 1 with a gradient of norm <= 1e-3


def test_evaluate_matches_sklearn() -> None:
    data = sea(n_samples=500, seed=4)
    model = _model()
    result = evaluate(model, data, CPU, batch_size=64)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x))
    predicted = logits.argmax(1).numpy()
    np.testing.assert_array_equal(result.confusion, sk_confusion(data.y, predicted, labels=[0, 1]))
    expected_loss = torch.nn.functional.cross_entropy(
        logits, torch.from_numpy(data.y), reduction="sum"
    )
    assert result.loss_sum == pytest.approx(float(expected_loss), rel=1e-5)


def test_models_produce_logits_of_the_task() -> None:
    assert DigitsCNN((1, 8, 8), 10)(torch.zeros(4, 1, 8, 8)).shape == (4, 10)
    assert MLP((5,), 3, hidden=[7, 6])(torch.zeros(2, 5)).shape == (2, 3)
    assert MLP((5,), 2).net[1].out_features == 10  # FedDrift's d -> 2d
    with pytest.raises(ValueError, match="use fedretrain.models.MLP"):
        DigitsCNN((64,), 10)


def test_mlp_standardises_inputs_with_constants_outside_the_state_dict() -> None:
    torch.manual_seed(0)
    plain = MLP((3,), 2)
    torch.manual_seed(0)
    scaled = MLP((3,), 2, input_mean=[5.0, 5.0, 0.0], input_std=2.0)
    x = torch.rand(8, 3) * 10
    torch.testing.assert_close(scaled(x), plain((x - torch.tensor([5.0, 5.0, 0.0])) / 2.0))
    assert scaled.state_dict().keys() == plain.state_dict().keys()  # sites exchange the same
    torch.manual_seed(0)
    torch.testing.assert_close(MLP((3,), 2, input_mean=None, input_std=None)(x), plain(x))
    with pytest.raises(ValueError, match="input_std must be positive"):
        MLP((3,), 2, input_std=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="one value per feature"):
        MLP((3,), 2, input_mean=[1.0, 2.0])
