"""Drifting streams: each concept's labels against an independent numpy re-computation."""

from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedretrain.drift.digits import rotate_images, swap_permutation
from fedretrain.drift.streams import (
    CircleStream,
    DigitsStream,
    DriftStream,
    SeaStream,
    SineStream,
)
from fedretrain.drift.tabular import power_transform
from fedretrain.tasks.digits import load_digits
from fedretrain.tasks.synthetic import circle, sea, sine

SEA4: list[dict[str, Any]] = [{"theta": 8}, {"theta": 9}, {"theta": 7}, {"theta": 9.5}]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def binomial_tolerance(p: float, n: int) -> float:
    """Five standard deviations of a sample proportion: fails by chance about once in 2e6."""
    return 5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(
    "stream",
    [SeaStream(SEA4), SineStream([{}]), CircleStream([{}]), DigitsStream([{}])],
    ids=["sea", "sine", "circle", "digits"],
)
def test_streams_meet_the_protocol(stream: DriftStream) -> None:
    assert isinstance(stream, DriftStream)
    ds = stream.sample(0, 50, rng())
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.input_shape == stream.input_shape and ds.num_classes == stream.num_classes
    assert len(stream.sample(0, 0, rng())) == 0
    with pytest.raises(ValueError, match=f"has {stream.num_concepts} concepts"):
        stream.sample(stream.num_concepts, 5, rng())


# --------------------------------------------------------------------------------- tabular


@pytest.mark.parametrize("concept", range(4))
def test_sea_labels_threshold_the_first_two_features(concept: int) -> None:
    ds = SeaStream(SEA4).sample(concept, 2000, rng(concept))
    theta = SEA4[concept]["theta"]
    x = ds.x.astype(np.float64)
    assert x.min() >= 0 and x.max() <= 10
    np.testing.assert_array_equal(ds.y, (x[:, 0] + x[:, 1] > theta).astype(np.int64))


def test_sine_flip_inverts_the_labels() -> None:
    stream = SineStream([{"flip": False}, {"flip": True}])
    plain, flipped = stream.sample(0, 2000, rng(1)), stream.sample(1, 2000, rng(1))
    under = plain.x[:, 1] <= np.sin(plain.x[:, 0].astype(np.float64))
    np.testing.assert_array_equal(plain.y, under.astype(np.int64))
    np.testing.assert_array_equal(flipped.x, plain.x)
    np.testing.assert_array_equal(flipped.y, 1 - plain.y)


def test_circle_labels_points_outside_each_circle() -> None:
    stream = CircleStream(
        [{"center": [0.2, 0.5], "radius": 0.15}, {"center": [0.6, 0.5], "radius": 0.25}]
    )
    for concept, (cx, cy, r) in enumerate([(0.2, 0.5, 0.15), (0.6, 0.5, 0.25)]):
        ds = stream.sample(concept, 3000, rng(concept))
        x = ds.x.astype(np.float64)
        outside = (x[:, 0] - cx) ** 2 + (x[:, 1] - cy) ** 2 > r**2
        np.testing.assert_array_equal(ds.y, outside.astype(np.int64))


def test_a_plain_concept_draws_exactly_what_the_static_task_draws() -> None:
    """The streams reuse the task generators' box and rule, down to the random draws."""
    pairs = [
        (SeaStream([{"theta": 9.5}], noise=0.1), sea(n_samples=300, theta=9.5, noise=0.1, seed=4)),
        (SineStream([{"flip": True}]), sine(n_samples=300, flip=True, seed=4)),
        (
            CircleStream([{"center": [0.6, 0.5], "radius": 0.25}]),
            circle(300, (0.6, 0.5), 0.25, seed=4),
        ),
    ]
    for stream, static in pairs:
        ds = stream.sample(0, 300, rng(4))
        np.testing.assert_array_equal(ds.x, static.x)
        np.testing.assert_array_equal(ds.y, static.y)


def test_noise_flips_about_that_share_of_labels() -> None:
    ds = SeaStream([{}], noise=0.1).sample(0, 20000, rng(2))
    x = ds.x.astype(np.float64)
    wrong = ds.y != (x[:, 0] + x[:, 1] > 8)
    assert abs(wrong.mean() - 0.1) < binomial_tolerance(0.1, 20000)


@pytest.mark.parametrize(("power", "direction"), [(2.0, -1), (0.5, 1)])
def test_power_moves_the_features_but_keeps_the_labelling_rule(
    power: float, direction: int
) -> None:
    stream = SeaStream([{"theta": 8}, {"theta": 8, "power": power}])
    base, shifted = stream.sample(0, 4000, rng(3)), stream.sample(1, 4000, rng(3))
    x = shifted.x.astype(np.float64)
    np.testing.assert_array_equal(shifted.y, (x[:, 0] + x[:, 1] > 8).astype(np.int64))
    # Same uniform draws, mapped through the transform: E[10 U^p] = 10 / (p + 1).
    np.testing.assert_allclose(x, power_transform(base.x.astype(np.float64), 0, 10, power), 1e-5)
    assert np.sign(x.mean() - base.x.mean()) == direction
    assert abs(x.mean() - 10 / (power + 1)) < 0.1
    assert x.min() >= 0 and x.max() <= 10


def test_power_transform_is_a_monotone_bijection_of_the_range() -> None:
    grid = np.linspace(-1, 1, 101)
    out = power_transform(grid, -1, 1, 3.0)
    assert out[0] == -1 and out[-1] == 1 and (np.diff(out) > 0).all()
    np.testing.assert_allclose(power_transform(grid, -1, 1, 1.0), grid)


@pytest.mark.parametrize(
    ("stream", "weights"),
    [
        (SeaStream([{}, {"class_weights": [0.8, 0.2]}], noise=0.05), [0.8, 0.2]),
        (CircleStream([{}, {"class_weights": [1, 1]}]), [0.5, 0.5]),
        (SineStream([{}, {"class_weights": [0.1, 0.9], "power": 2}]), [0.1, 0.9]),
    ],
    ids=["sea", "circle", "sine+power"],
)
def test_class_weights_set_the_label_proportions(stream: DriftStream, weights: list) -> None:
    n = 4000
    ds = stream.sample(1, n, rng(5))
    share = np.bincount(ds.y, minlength=2) / n
    assert np.all(np.abs(share - weights) < binomial_tolerance(max(weights), n))
    # Without weights the concept keeps its own proportions, e.g. SEA theta 8: 68% positive.
    if isinstance(stream, SeaStream):
        own = stream.sample(0, n, rng(5)).y.mean()
        assert abs(own - 0.68) < binomial_tolerance(0.68, n)


def test_class_weights_keep_the_labelling_rule() -> None:
    ds = SeaStream([{"theta": 7, "class_weights": [0.9, 0.1]}]).sample(0, 2000, rng(6))
    x = ds.x.astype(np.float64)
    np.testing.assert_array_equal(ds.y, (x[:, 0] + x[:, 1] > 7).astype(np.int64))
    assert 0.05 < ds.y[:1000].mean() < 0.15  # shuffled: no run of one class


def test_a_weighted_class_the_concept_never_produces_fails_clearly() -> None:
    stream = CircleStream([{"center": [0.5, 0.5], "radius": 2.0, "class_weights": [1, 1]}])
    with pytest.raises(ValueError, match="class 1 has weight 0.5 but almost no point"):
        stream.sample(0, 10, rng())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: SeaStream([{"thetta": 8}]),
            r"concept 0: unknown key\(s\) \['thetta'\]; valid keys",
        ),
        (lambda: SeaStream([{}, {"theta": "9"}]), "concept 1: theta='9': must be a finite number"),
        (lambda: SeaStream([{"power": 0}]), "power=0: must be > 0"),
        (lambda: SeaStream([{"class_weights": [1, 1, 1]}]), "list of 2 weights"),
        (lambda: SeaStream([{"class_weights": [-1, 2]}]), "positive sum"),
        (lambda: SeaStream([]), "non-empty list"),
        (lambda: SeaStream({"theta": 8}), "non-empty list"),  # type: ignore[arg-type]
        (lambda: SeaStream([8]), "concept 0: must be a mapping"),  # type: ignore[list-item]
        (lambda: SeaStream([{}], noise=0.5), "noise"),
        (lambda: SineStream([{"flip": "yes"}]), "true or false"),
        (lambda: CircleStream([{"radius": -1}]), "radius must be positive"),
        (lambda: CircleStream([{"center": [0.5]}]), "two coordinates"),
        (lambda: DigitsStream([{"swaps": [[1, 2], [2, 3]]}]), "class 2 appears in two swaps"),
        (lambda: DigitsStream([{"swaps": [[1, 10]]}]), r"classes in \[0, 10\)"),
        (lambda: DigitsStream([{"rotate": 90}]), "valid keys: .*'rotation'"),
    ],
)
def test_bad_concepts_name_the_concept_and_key(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        make()


def test_streams_accept_omegaconf_containers_and_keep_plain_attributes() -> None:
    concepts = OmegaConf.create([{"center": [0.6, 0.5], "radius": 0.25}])
    stream = CircleStream(concepts)  # type: ignore[arg-type]
    assert stream.concepts == [{"center": [0.6, 0.5], "radius": 0.25}]
    assert type(stream.concepts[0]["center"]) is list and stream.noise == 0.0


# ---------------------------------------------------------------------------------- digits


def test_swaps_permute_labels_exactly_and_keep_the_images() -> None:
    stream = DigitsStream([{}, {"swaps": [[1, 2], [3, 4], [5, 6]]}])
    base, swapped = stream.sample(0, 1000, rng(7)), stream.sample(1, 1000, rng(7))
    np.testing.assert_array_equal(swapped.x, base.x)
    mapping = {1: 2, 2: 1, 3: 4, 4: 3, 5: 6, 6: 5}
    np.testing.assert_array_equal(swapped.y, [mapping.get(int(c), int(c)) for c in base.y])
    assert set(np.unique(base.y)) == set(range(10))


def test_digits_images_come_from_the_bundled_set() -> None:
    pool = load_digits()
    ds = DigitsStream([{}]).sample(0, 200, rng(8))
    assert ds.x.shape == (200, 1, 8, 8) and ds.x.min() >= 0 and ds.x.max() <= 1
    matches = (ds.x[:, None] == pool.x[None]).all(axis=(2, 3, 4))  # (200, 1797)
    assert matches.any(axis=1).all()
    # Each image carries one of the labels its bundled copies carry.
    for i in range(200):
        assert ds.y[i] in pool.y[matches[i]]


@pytest.mark.parametrize("degrees", [90, 180, 270, -90, 450])
def test_right_angle_rotations_equal_rot90(degrees: int) -> None:
    stream = DigitsStream([{}, {"rotation": degrees}])
    base, turned = stream.sample(0, 300, rng(9)), stream.sample(1, 300, rng(9))
    np.testing.assert_array_equal(turned.x, np.rot90(base.x, k=degrees // 90, axes=(2, 3)))
    np.testing.assert_array_equal(turned.y, base.y)  # covariate shift: labels unchanged


def test_other_angles_interpolate_in_the_same_direction() -> None:
    x = load_digits().x[:50]
    near = rotate_images(x, 89.999)
    np.testing.assert_allclose(near, np.rot90(x, axes=(2, 3)), atol=1e-3)
    tilted = rotate_images(x, 30)
    assert tilted.shape == x.shape and tilted.dtype == np.float32
    assert tilted.min() >= 0 and tilted.max() <= 1 and np.abs(tilted - x).mean() > 0.05


def test_digits_class_weights_follow_the_labels_seen_after_swaps() -> None:
    weights = np.array([0, 0.5, 0, 0, 0, 0, 0, 0, 0, 0.5])
    stream = DigitsStream([{"swaps": [[1, 7]], "class_weights": weights.tolist()}])
    n = 4000
    ds = stream.sample(0, n, rng(10))
    share = np.bincount(ds.y, minlength=10) / n
    assert set(np.unique(ds.y)) == {1, 9}
    assert abs(share[1] - 0.5) < binomial_tolerance(0.5, n)
    # Label 1 is carried by images of 7s: every such image is a bundled 7.
    pool = load_digits()
    sevens = pool.x[pool.y == 7]
    ones = ds.x[ds.y == 1][:50]
    assert (ones[:, None] == sevens[None]).all(axis=(2, 3, 4)).any(axis=1).all()


def test_swap_permutation_is_an_involution() -> None:
    perm = swap_permutation([[0, 9], [4, 5]])
    np.testing.assert_array_equal(perm[perm], np.arange(10))
    assert perm[0] == 9 and perm[5] == 4 and perm[3] == 3


def test_digits_pool_is_loaded_once_per_instance() -> None:
    stream = DigitsStream([{}])
    assert stream.pool() is stream.pool()
