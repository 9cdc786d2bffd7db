import numpy as np
import pytest

from fedretrain.attacks import AttackKind, attackers, drops_out, poison

G = {"w": np.full(4, 1.0, np.float32), "step": np.array(3, np.int64)}
H = {"w": np.array([1.5, 0.5, 1.0, 2.0], np.float32), "step": np.array(3, np.int64)}
DELTA = H["w"] - G["w"]


@pytest.mark.parametrize(("fraction", "count"), [(0.0, 0), (0.1, 1), (0.2, 2), (0.3, 3), (1.0, 10)])
def test_attacker_share_and_repeatability(fraction: float, count: int) -> None:
    chosen = attackers(10, fraction, seed=3)
    assert len(chosen) == count and chosen <= set(range(10))
    assert attackers(10, fraction, seed=3) == chosen


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (AttackKind.scale, G["w"] + 100 * DELTA),
        (AttackKind.sign_flip, G["w"] - 100 * DELTA),
        (AttackKind.num_examples_lie, H["w"]),
        (AttackKind.label_flip, H["w"]),
    ],
)
def test_poison_formulas(kind: AttackKind, expected: np.ndarray) -> None:
    sent = poison(G, H, kind, np.random.default_rng(0), scale=100.0)
    np.testing.assert_allclose(sent["w"], expected, rtol=1e-6)
    assert sent["step"] is H["step"]  # integer buffers are left alone


def test_poison_nan_inf_and_gaussian() -> None:
    rng = np.random.default_rng(0)
    assert np.isnan(poison(G, H, AttackKind.nan, rng)["w"]).all()
    assert np.isposinf(poison(G, H, AttackKind.inf, rng)["w"]).all()
    big = {"w": np.zeros(20000, np.float32)}
    noise = poison(big, big, AttackKind.gaussian, rng, noise_std=2.0)["w"]
    assert noise.std() == pytest.approx(2.0, rel=0.03) and abs(noise.mean()) < 0.05


def test_dropout_rate_and_repeatability() -> None:
    draws = [drops_out(0, site, rnd, 0.3) for site in range(50) for rnd in range(40)]
    assert np.mean(draws) == pytest.approx(0.3, abs=0.03)
    assert draws == [drops_out(0, site, rnd, 0.3) for site in range(50) for rnd in range(40)]
    assert not any(drops_out(0, s, 1, 0.0) for s in range(100))
