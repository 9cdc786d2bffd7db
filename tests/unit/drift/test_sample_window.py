"""One site's window for one period: seeding, concepts from the schedule, gradual mixing."""

import numpy as np
import pytest

from fedretrain.drift.schedule import Schedule, abrupt, gradual
from fedretrain.drift.streams import DigitsStream, SeaStream, SineStream, sample_window
from fedretrain.tasks.dataset import ArrayDataset

SINE = SineStream([{"flip": False}, {"flip": True}])


def flipped(window: ArrayDataset) -> np.ndarray:
    """Which samples carry the flipped SINE label (the other concept's rule)."""
    x = window.x.astype(np.float64)
    return window.y != (x[:, 1] <= np.sin(x[:, 0]))


def test_a_window_is_a_function_of_seed_site_and_period() -> None:
    stream = SeaStream([{"theta": 8}])
    schedule = abrupt(num_sites=3, num_periods=4, seed=0, at=2, concepts=[0, 0])
    a = sample_window(stream, schedule, 1, 2, 50, seed=3)
    b = sample_window(stream, schedule, 1, 2, 50, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    others = [(1, 3, 3), (1, 1, 3), (0, 2, 3), (2, 2, 3), (1, 2, 4), (1, 0, 3)]
    for site, period, seed in others:
        other = sample_window(stream, schedule, site, period, 50, seed)
        assert not np.array_equal(other.x, a.x), (site, period, seed)


def test_the_window_follows_the_schedule() -> None:
    schedule = abrupt(num_sites=4, num_periods=6, seed=0, at=3, sites=0.5)
    for site in range(4):
        for period in range(6):
            window = sample_window(SINE, schedule, site, period, 200, seed=1)
            should_flip = site < 2 and period >= 3
            assert flipped(window).all() if should_flip else not flipped(window).any()


@pytest.mark.parametrize("n", [1, 7, 100, 101])
def test_gradual_windows_draw_round_mix_n_from_the_new_concept(n: int) -> None:
    schedule = gradual(num_sites=2, num_periods=10, seed=0, center=5, width=1.5)
    assert schedule.mix is not None
    for period in range(10):
        window = sample_window(SINE, schedule, 0, period, n, seed=2)
        assert len(window) == n
        mixture = schedule.mixture(0, period)
        assert flipped(window).sum() == round(mixture.get(1, 0.0) * n)


def test_a_blended_window_is_shuffled() -> None:
    schedule = Schedule(np.zeros((1, 1), int), mix_to=np.ones((1, 1), int), mix=np.array([[0.5]]))
    window = sample_window(SINE, schedule, 0, 0, 400, seed=0)
    share_first_half = flipped(window)[:200].mean()
    assert 0.35 < share_first_half < 0.65


def test_digits_windows_blend_too() -> None:
    stream = DigitsStream([{}, {"rotation": 90}])
    schedule = Schedule(np.zeros((1, 1), int), mix_to=np.ones((1, 1), int), mix=np.array([[0.25]]))
    window = sample_window(stream, schedule, 0, 0, 40, seed=0)
    assert window.x.shape == (40, 1, 8, 8) and window.num_classes == 10


def test_bad_requests_fail_clearly() -> None:
    schedule = abrupt(num_sites=2, num_periods=3, seed=0, at=1, concepts=[0, 2])
    with pytest.raises(ValueError, match="site 2 outside"):
        sample_window(SINE, schedule, 2, 0, 10, 0)
    with pytest.raises(ValueError, match="period 3 outside"):
        sample_window(SINE, schedule, 0, 3, 10, 0)
    with pytest.raises(ValueError, match="n >= 1"):
        sample_window(SINE, schedule, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="SineStream has 2 concepts .* got concept 2"):
        sample_window(SINE, schedule, 0, 1, 10, 0)
