"""DP-SGD, on both engines: with no noise and no clipping it is plain training, batch for batch."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fedretrain.config import Optimizer, TrainConfig
from fedretrain.models import MLP, DigitsCNN
from fedretrain.privacy.config import ClippingMode, PrivacyConfig
from fedretrain.privacy.dp_sgd import BudgetExceededError, Engine, dp_train
from fedretrain.privacy.ledger import PrivacyLedger
from fedretrain.privacy.plan import plan_training
from fedretrain.privacy.rdp import SampledGaussian, epsilon
from fedretrain.privacy.sampling import poisson_batches
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.tasks.digits import load_digits
from fedretrain.training import make_optimizer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


ENGINES = pytest.mark.parametrize("engine", [Engine.fused, Engine.opacus])
NO_CLIP = 1e6  # far above any per-sample gradient norm here: the clip factor is exactly 1


def digits(n: int) -> ArrayDataset:
    return load_digits().subset(np.arange(n))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return DigitsCNN((1, 8, 8), 10, channels=(4, 8), hidden=16)


def private(**kwargs: object) -> PrivacyConfig:
    args = {"enabled": True, "noise_multiplier": 0.0, "max_grad_norm": NO_CLIP}
    return PrivacyConfig(**{**args, "reproducible": True, **kwargs})  # type: ignore[arg-type]


def assert_same_weights(a: nn.Module, b: nn.Module, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=atol, msg=name)


def differ(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return any(not torch.equal(pa, pb) for pa, pb in pairs)


def plain_loop_over(
    model: nn.Module,
    data: ArrayDataset,
    cfg: TrainConfig,
    batches: list[torch.Tensor],
    expected_batch_size: float,
    proximal_mu: float = 0.0,
) -> float:
    """Plain (non-private) training over given batches: sum of losses / expected batch size.

    That normalisation is DP-SGD's (a Poisson batch's size is random and private); with the
    batch's own size this would be fedretrain.training.train's mean loss.
    """
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    optimizer = make_optimizer(cfg, list(model.parameters()), cfg.lr)
    anchor = [p.detach().clone() for p in model.parameters()]
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        if len(batch) == 0:  # DP-SGD still steps: noise only (zero here)
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
        else:
            logits = model(x[batch])
            loss = nn.functional.cross_entropy(logits, y[batch], reduction="sum")
            (loss / expected_batch_size).backward()
            losses.append(float(loss.detach()) / len(batch))
        with torch.no_grad():
            for p, a in zip(model.parameters(), anchor, strict=True):
                assert p.grad is not None
                p.grad.add_(p - a, alpha=proximal_mu)
        optimizer.step()
    return sum(losses) / len(losses)


@ENGINES
@pytest.mark.parametrize("optimizer", [Optimizer.sgd, Optimizer.adam])
@pytest.mark.parametrize("clipping", list(ClippingMode))
def test_full_batches_with_no_noise_and_no_clipping_equal_fedretrain_train(
    optimizer: Optimizer, clipping: ClippingMode, engine: Engine
) -> None:
    # batch_size >= n: q = 1, every record in every batch, one step per epoch, as in train().
    data = digits(40)
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, batch_size=64, local_epochs=4)
    plain, dp = cnn(), cnn()
    expected = train(plain, data, cfg, cfg.lr, CPU, torch.Generator().manual_seed(0))
    got = dp_train(
        dp, data, cfg, private(clipping=clipping), cfg.lr, CPU,
        torch.Generator().manual_seed(1), PrivacyLedger("0"), "v1", engine=engine,
    )  # fmt: skip
    assert got.train.steps == expected.steps == 4
    assert got.train.mean_loss == pytest.approx(expected.mean_loss, rel=1e-5)
    # Adam divides by sqrt(v): where a gradient is ~0 it amplifies summation-order rounding
    # (per-sample sums against a batch gradient) to ~1e-6 absolute; SGD stays below 1e-6.
    assert_same_weights(dp, plain, atol=1e-5 if optimizer is Optimizer.adam else 1e-6)
    assert differ(dp, cnn())  # it did train


@ENGINES
@pytest.mark.parametrize(
    ("clipping", "proximal_mu"),
    [(ClippingMode.flat, 0.0), (ClippingMode.ghost, 0.0), (ClippingMode.flat, 0.5)],
)
def test_poisson_batches_with_no_noise_and_no_clipping_equal_plain_training_on_them(
    clipping: ClippingMode, proximal_mu: float, engine: Engine
) -> None:
    data = digits(120)
    cfg = TrainConfig(lr=0.05, batch_size=8, local_epochs=2)
    privacy = private(clipping=clipping)
    plan = plan_training(privacy, cfg, len(data))
    assert plan.steps == 30 and plan.sample_rate == 8 / 120
    generator = torch.Generator().manual_seed(7)
    batches = poisson_batches(len(data), plan.sample_rate, plan.steps, generator)
    assert len({len(b) for b in batches}) > 3  # sizes vary, as Poisson sampling does
    plain, dp = cnn(), cnn()
    mean_loss = plain_loop_over(plain, data, cfg, batches, plan.expected_batch_size, proximal_mu)
    result = dp_train(
        dp, data, cfg, privacy, cfg.lr, CPU, torch.Generator().manual_seed(7),
        PrivacyLedger("0"), "v1", plan=plan, proximal_mu=proximal_mu, engine=engine,
    )  # fmt: skip
    assert result.train.steps == 30
    assert result.train.mean_loss == pytest.approx(mean_loss, rel=1e-5)
    assert_same_weights(dp, plain)
    # the comparison can fail: the same loop over other batches ends elsewhere
    other = cnn()
    generator = torch.Generator().manual_seed(8)
    elsewhere = poisson_batches(len(data), plan.sample_rate, plan.steps, generator)
    plain_loop_over(other, data, cfg, elsewhere, plan.expected_batch_size, proximal_mu)
    assert differ(other, dp)


@ENGINES
def test_empty_poisson_batches_still_step(engine: Engine) -> None:
    data = digits(6)
    cfg = TrainConfig(lr=0.1, batch_size=1, local_epochs=4)  # q = 1/6: many empty batches
    privacy = private()
    plan = plan_training(privacy, cfg, len(data))
    batches = poisson_batches(6, plan.sample_rate, plan.steps, torch.Generator().manual_seed(3))
    assert any(len(b) == 0 for b in batches) and any(len(b) > 0 for b in batches)
    plain, dp = cnn(), cnn()
    plain_loop_over(plain, data, cfg, batches, plan.expected_batch_size)
    dp_train(dp, data, cfg, privacy, cfg.lr, CPU, torch.Generator().manual_seed(3),
             PrivacyLedger("0"), "v1", engine=engine)  # fmt: skip
    assert_same_weights(dp, plain)


def clipped_sum_by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float) -> list:
    """Sum over samples of each per-sample gradient scaled to norm <= c, one sample at a time."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = float(torch.sqrt(torch.stack([(g**2).sum() for g in grads]).sum()))
        scale = min(1.0, c / (norm + 1e-6))
        total = [t + scale * g for t, g in zip(total, grads, strict=True)]
    return total


@ENGINES
@pytest.mark.parametrize("clipping", list(ClippingMode))
def test_clipping_matches_per_sample_clipping_by_hand(
    clipping: ClippingMode, engine: Engine
) -> None:
    data = digits(30)
    cfg = TrainConfig(optimizer=Optimizer.sgd, momentum=0.0, lr=1.0, batch_size=64, local_epochs=1)
    c = 0.05  # far below the per-sample norms: every sample is clipped
    start = cnn()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    by_hand = clipped_sum_by_hand(copy.deepcopy(start), x, y, c)
    dp = copy.deepcopy(start)
    dp_train(dp, data, cfg, private(max_grad_norm=c, clipping=clipping), cfg.lr,
             CPU, torch.Generator().manual_seed(0), PrivacyLedger("0"), "v1",
             engine=engine)  # fmt: skip
    # one SGD step with lr 1: w' = w - sum(clipped) / expected batch size (30)
    for p0, p1, g in zip(start.parameters(), dp.parameters(), by_hand, strict=True):
        torch.testing.assert_close(p1, p0 - g / 30, rtol=1e-4, atol=1e-6)
    assert max(float(g.abs().max()) for g in by_hand) <= 30 * c  # clipping did bind


@ENGINES
def test_ghost_and_flat_clipping_agree_when_clipping_binds(engine: Engine) -> None:
    data = digits(120)
    cfg = TrainConfig(lr=0.05, batch_size=8, local_epochs=1)
    runs = {}
    for mode in ClippingMode:
        model = cnn()
        dp_train(model, data, cfg, private(max_grad_norm=0.1, clipping=mode),
                 cfg.lr, CPU, torch.Generator().manual_seed(4), PrivacyLedger("0"),
                 "v1", engine=engine)  # fmt: skip
        runs[mode] = model
    assert_same_weights(runs[ClippingMode.ghost], runs[ClippingMode.flat], rtol=1e-4)


def test_noise_has_the_calibrated_scale() -> None:
    # One full-batch SGD step (lr 1, no momentum): the noisy run minus the noiseless one is the
    # noise divided by the expected batch size, N(0, (sigma C / n)^2) in every coordinate.
    data = digits(50)
    cfg = TrainConfig(optimizer=Optimizer.sgd, momentum=0.0, lr=1.0, batch_size=64, local_epochs=1)
    torch.manual_seed(0)
    start = MLP((1, 8, 8), 10, hidden=[256])  # 19k parameters
    sigma, c = 2.0, 0.5
    models = {}
    for s in (0.0, sigma):
        model = copy.deepcopy(start)
        dp_train(model, data, cfg, private(noise_multiplier=s, max_grad_norm=c), cfg.lr, CPU,
                 torch.Generator().manual_seed(0), PrivacyLedger("0"), "v1")  # fmt: skip
        models[s] = model
    pairs = zip(models[sigma].parameters(), models[0.0].parameters(), strict=True)
    diff = torch.cat([(a - b).detach().flatten() for a, b in pairs])
    assert float(diff.std()) == pytest.approx(sigma * c / 50, rel=0.03)
    assert abs(float(diff.mean())) < 0.05 * sigma * c / 50


def test_every_call_is_recorded_and_epsilon_accumulates(tmp_path: Path) -> None:
    data = digits(120)
    cfg = TrainConfig(batch_size=8, local_epochs=1)
    privacy = private(noise_multiplier=1.2, max_grad_norm=1.0)
    path = tmp_path / "privacy" / "site-0.json"
    model = cnn()
    results = []
    for r in (1, 2, 3):
        ledger = PrivacyLedger.open(path, site="0")  # a new process every round
        gen = torch.Generator().manual_seed(r)
        results.append(dp_train(model, data, cfg, privacy, cfg.lr, CPU, gen, ledger, f"v1/r{r}"))
    ledger = PrivacyLedger.open(path, site="0")
    assert [e.tag for e in ledger.entries] == ["v1/r1", "v1/r2", "v1/r3"]
    expected = epsilon([SampledGaussian(1.2, 8 / 120, 45)], 1e-5)
    assert ledger.epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
    assert results[-1].epsilon_total == pytest.approx(expected, rel=1e-12)
    totals = [r.epsilon_total for r in results]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    assert results[1].epsilon_spent == pytest.approx(totals[1] - totals[0])


def test_a_plan_beyond_the_budget_is_refused_before_training() -> None:
    data = digits(100)
    cfg = TrainConfig(batch_size=10, local_epochs=1)
    privacy = private(noise_multiplier=1.0, max_grad_norm=1.0, epsilon_budget=2.0)
    ledger = PrivacyLedger("4")
    ledger.record("v0", SampledGaussian(1.0, 0.1, 60), 1e-5)
    model, untouched = cnn(), cnn()
    with pytest.raises(BudgetExceededError, match="site 4 declines") as info:
        dp_train(model, data, cfg, privacy, cfg.lr, CPU, torch.Generator(), ledger, "v1")
    assert not info.value.decision.allowed
    assert len(ledger.entries) == 1
    assert_same_weights(model, untouched, rtol=0)


def test_noise_is_unpredictable_unless_reproducible() -> None:
    data = digits(120)
    cfg = TrainConfig(batch_size=8, local_epochs=1)
    for reproducible, same in ((True, True), (False, False)):
        privacy = private(noise_multiplier=1.0, max_grad_norm=1.0, reproducible=reproducible)
        a, b = cnn(), cnn()
        for model in (a, b):
            dp_train(model, data, cfg, privacy, cfg.lr, CPU, torch.Generator().manual_seed(0),
                     PrivacyLedger("0"), "v1")  # fmt: skip
        assert differ(a, b) is not same


class FailsOnCall(nn.Module):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.inner = MLP((1, 8, 8), 10, hidden=[8])
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the site lost its GPU")
        return self.inner(x)


def test_steps_taken_before_a_failure_are_recorded() -> None:
    data = digits(50)
    cfg = TrainConfig(batch_size=50, local_epochs=5)  # q = 1: no empty batch, 5 steps
    ledger = PrivacyLedger("0")
    with pytest.raises(RuntimeError, match="lost its GPU"):
        dp_train(FailsOnCall(fail_at=4), data, cfg, private(noise_multiplier=1.0), cfg.lr, CPU,
                 torch.Generator(), ledger, "v1")  # fmt: skip
    (entry,) = ledger.entries
    assert entry.tag == "v1 (failed)" and entry.steps == 3 and math.isfinite(entry.epsilon)


@ENGINES
def test_the_model_is_plain_again_afterwards(engine: Engine, tmp_path: Path) -> None:
    data = digits(120)
    cfg = TrainConfig(batch_size=8, local_epochs=1)
    for mode in ClippingMode:
        model = cnn()
        dp_train(model, data, cfg, private(clipping=mode, noise_multiplier=1.0),
                 cfg.lr, CPU, torch.Generator(), PrivacyLedger("0"), "v1",
                 engine=engine)  # fmt: skip
        for module in model.modules():
            assert not module._forward_hooks and not module._backward_hooks
            assert not hasattr(module, "activations")
        for p in model.parameters():
            assert p.grad is None
            assert not any(hasattr(p, a) for a in ("grad_sample", "_norm_sample", "summed_grad"))
        # The fused engine trains views of one flat parameter; afterwards each parameter owns
        # its storage again (safetensors refuses tensors that share memory).
        storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
        assert len(set(storages)) == len(storages)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.st")
        copy.deepcopy(model)  # and can be trained as usual
        train(model, data, cfg, cfg.lr, CPU, torch.Generator())


@ENGINES
def test_augmented_batches_train_under_dp_at_the_same_cost(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.augment (issue 17, item 6) under DP-SGD: every Poisson batch is augmented, its
    batches and the ε recorded are those of the same run without augmentation."""
    import fedretrain.privacy.dp_sgd as dp_sgd

    calls: list[int] = []
    original = dp_sgd.augment_batch
    monkeypatch.setattr(
        dp_sgd, "augment_batch", lambda x, *rest: calls.append(len(x)) or original(x, *rest)
    )
    data = digits(60)
    runs = {}
    for augment in (False, True):
        cfg = TrainConfig(lr=0.05, batch_size=10, local_epochs=1, augment=augment)
        model, ledger = cnn(), PrivacyLedger("0")
        privacy = private(noise_multiplier=1.0, max_grad_norm=1.0)
        result = dp_train(
            model, data, cfg, privacy, cfg.lr, CPU, torch.Generator().manual_seed(2), ledger,
            "v1", engine=engine,
        )  # fmt: skip
        runs[augment] = (model, result, ledger.entries[0].mechanism)
    assert len(calls) == runs[True][1].train.steps == runs[False][1].train.steps == 6
    assert runs[True][2] == runs[False][2]  # the same mechanism: σ, sample rate, steps
    assert runs[True][1].epsilon_spent == runs[False][1].epsilon_spent
    assert differ(runs[True][0], runs[False][0])
