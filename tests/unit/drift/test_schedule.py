"""Drift schedules: the Schedule container and every generator."""

from typing import Any

import numpy as np
import pytest

from fedretrain.drift.schedule import (
    Schedule,
    abrupt,
    from_matrix,
    gradual,
    random_change_points,
    recurring,
    staggered,
    stationary,
)

SIZE: dict[str, Any] = {"num_sites": 10, "num_periods": 12, "seed": 0}


# ------------------------------------------------------------------------------- Schedule


def test_schedule_copies_and_freezes_its_arrays() -> None:
    matrix = np.array([[0, 1], [0, 0]])
    s = Schedule(matrix)
    matrix[0, 0] = 5
    assert s.concepts[0, 0] == 0 and s.concepts.dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        s.concepts[0, 0] = 3
    assert (s.num_sites, s.num_periods) == (2, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concepts": np.array([0, 1])}, "num_sites, num_periods"),
        ({"concepts": np.array([[0, -1]])}, "start at 0"),
        ({"concepts": np.array([[0.5, 1]])}, "whole numbers"),
        ({"concepts": np.zeros((2, 3), int), "mix_to": np.ones((2, 3), int)}, "together"),
        (
            {
                "concepts": np.zeros((2, 3), int),
                "mix_to": np.ones((3, 2), int),
                "mix": np.zeros((2, 3)),
            },
            "mix_to has shape",
        ),
        (
            {
                "concepts": np.zeros((1, 2), int),
                "mix_to": np.ones((1, 2), int),
                "mix": np.array([[0, 1.5]]),
            },
            r"\[0, 1\]; got 1.5",
        ),
    ],
)
def test_schedule_rejects_bad_arrays(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)


def test_change_points_compare_mixtures_not_raw_entries() -> None:
    # Period 1: mix 0 towards concept 2 is still pure concept 0; period 2: mix 1 towards 1 is
    # pure concept 1, as is period 3 written directly; period 4 blends 0 and 1 half and half,
    # and period 5 writes the same blend the other way round.
    concepts = np.array([[0, 0, 0, 1, 0, 1]])
    mix_to = np.array([[0, 2, 1, 1, 1, 0]])
    mix = np.array([[0.0, 0.0, 1.0, 0.0, 0.5, 0.5]])
    s = Schedule(concepts, mix_to, mix)
    assert s.change_points() == [2, 4]
    assert s.mixture(0, 1) == {0: 1.0} and s.mixture(0, 5) == {0: 0.5, 1: 0.5}
    assert s.used_concepts == [0, 1]  # concept 2 only ever has share 0


def test_affected_sites_and_bounds() -> None:
    s = Schedule(np.array([[0, 1, 1], [0, 0, 1], [0, 1, 2]]))
    assert s.affected_sites(0) == []
    assert s.affected_sites(1) == [0, 2] and s.affected_sites(2) == [1, 2]
    assert s.change_points(site=0) == [1] and s.change_points(site=2) == [1, 2]
    with pytest.raises(ValueError, match="period 3 outside"):
        s.affected_sites(3)
    with pytest.raises(ValueError, match="site 3 outside"):
        s.change_points(site=3)


# ------------------------------------------------------------------------------ generators


def test_stationary_and_from_matrix() -> None:
    s = stationary(**SIZE, concept=2)
    assert s.concepts.shape == (10, 12) and (s.concepts == 2).all() and s.change_points() == []
    matrix = [[0, 1, 1], [0, 0, 2]]
    m = from_matrix(num_sites=2, num_periods=3, seed=0, matrix=matrix)
    np.testing.assert_array_equal(m.concepts, matrix)
    assert m.change_points() == [1, 2] and m.affected_sites(2) == [1]


def test_from_matrix_names_the_run_size_when_the_shape_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"3 rows .* num_sites=2 .* num_periods=3"):
        from_matrix(num_sites=2, num_periods=3, matrix=[[0, 0, 0]] * 3)
    with pytest.raises(ValueError, match=r"\[2, 3\] columns"):
        from_matrix(num_sites=2, num_periods=3, matrix=[[0, 0, 0], [0, 0]])


def test_abrupt_switches_the_first_fraction_of_sites() -> None:
    s = abrupt(**SIZE, at=5, sites=0.3)
    assert s.change_points() == [5] and s.affected_sites(5) == [0, 1, 2]
    np.testing.assert_array_equal(s.concepts[:3], np.repeat([[0] * 5 + [1] * 7], 3, axis=0))
    assert (s.concepts[3:] == 0).all()
    assert abrupt(**SIZE, at=5, sites=[7, 2]).affected_sites(5) == [2, 7]
    assert abrupt(**SIZE, at=5, sites=0.01).affected_sites(5) == [0]  # at least one site
    assert abrupt(**SIZE, at=5, sites=0.0).change_points() == []


def test_abrupt_walks_through_successive_concepts() -> None:
    s = abrupt(**SIZE, at=[3, 6, 9], concepts=[0, 1, 2, 3])
    np.testing.assert_array_equal(s.concepts[4], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert s.change_points() == [3, 6, 9] and s.affected_sites(6) == list(range(10))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"at": 0}, r"must lie in \[1, 11\]"),
        ({"at": 12}, r"must lie in \[1, 11\]"),
        ({"at": [6, 3], "concepts": [0, 1, 2]}, "strictly increasing"),
        ({"at": [3, 6]}, "2 switches .* need 3 concepts"),
        ({"at": 3, "concepts": [0, -1]}, "concepts are ids"),
        ({"at": 3, "sites": 3}, r"fraction of sites in \[0, 1\]"),
        ({"at": 3, "sites": [0, 10]}, r"indices in \[0, 10\)"),
        ({"at": 3, "sites": [1, 1]}, "twice"),
        ({"at": "3"}, "a period or a list"),
    ],
)
def test_abrupt_rejects_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        abrupt(**SIZE, **params)


def test_recurring_returns_to_an_earlier_concept() -> None:
    s = recurring(**SIZE, at=[4, 8], concepts=[0, 1, 0])
    np.testing.assert_array_equal(s.concepts[0], [0] * 4 + [1] * 4 + [0] * 4)
    assert s.change_points() == [4, 8]
    with pytest.raises(ValueError, match="no concept recurs"):
        recurring(**SIZE, at=[4, 8], concepts=[0, 1, 2])


def test_staggered_site_i_switches_at_first_plus_i_spacing() -> None:
    s = staggered(**SIZE, first=2, spacing=3, concepts=[1, 4])
    for i in range(10):
        expected = [2 + 3 * i] if 2 + 3 * i < 12 else []
        assert s.change_points(site=i) == expected
    assert (s.concepts[:, 0] == 1).all() and s.concepts[0, -1] == 4
    assert (s.concepts[4:] == 1).all()  # their turn comes after the last period
    picked = staggered(**SIZE, first=1, spacing=1, sites=[5, 2])
    assert picked.change_points(site=5) == [1] and picked.change_points(site=2) == [2]
    with pytest.raises(ValueError, match="spacing"):
        staggered(**SIZE, first=1, spacing=-1)
    with pytest.raises(ValueError, match="exactly 2 concepts"):
        staggered(**SIZE, first=1, spacing=1, concepts=[0, 1, 2])


def test_random_change_points_are_seeded_per_site() -> None:
    params: dict[str, Any] = {"rate": 0.3, "num_concepts": 4}
    a = random_change_points(num_sites=6, num_periods=40, seed=7, **params)
    b = random_change_points(num_sites=6, num_periods=40, seed=7, **params)
    c = random_change_points(num_sites=6, num_periods=40, seed=8, **params)
    np.testing.assert_array_equal(a.concepts, b.concepts)
    assert (a.concepts != c.concepts).any()
    # A site's path does not depend on how many sites the run has, nor on which others drift.
    wider = random_change_points(num_sites=9, num_periods=40, seed=7, **params)
    np.testing.assert_array_equal(wider.concepts[:6], a.concepts)
    only = random_change_points(num_sites=6, num_periods=40, seed=7, sites=[4], **params)
    np.testing.assert_array_equal(only.concepts[4], a.concepts[4])
    assert (np.delete(only.concepts, 4, axis=0) == 0).all()
    assert (a.concepts[:, 0] == 0).all() and a.concepts.max() <= 3


def test_random_change_points_rate() -> None:
    s = random_change_points(num_sites=50, num_periods=101, seed=0, rate=0.2, num_concepts=3)
    changes = np.diff(s.concepts, axis=1) != 0  # every change moves to another concept
    # 5,000 Bernoulli(0.2) trials: standard deviation 0.0057.
    assert abs(changes.mean() - 0.2) < 0.025
    assert random_change_points(**SIZE, rate=0.0, num_concepts=2).change_points() == []
    always = random_change_points(**SIZE, rate=1.0, num_concepts=2)
    np.testing.assert_array_equal(always.concepts[3], np.arange(12) % 2)
    with pytest.raises(ValueError, match="probability"):
        random_change_points(**SIZE, rate=1.5, num_concepts=2)
    with pytest.raises(ValueError, match="num_concepts"):
        random_change_points(**SIZE, rate=0.1, num_concepts=1)


def test_gradual_mix_is_a_sigmoid_with_snapped_tails() -> None:
    s = gradual(**SIZE, center=5, width=1.0, concepts=[2, 5], sites=0.5)
    assert s.mix is not None and s.mix_to is not None
    t = np.arange(12)
    sigmoid = 1 / (1 + np.exp(-(t - 5) / 1.0))
    for site in range(5):
        mixtures = [s.mixture(site, int(p)) for p in t]
        share = np.array([m.get(5, 0.0) for m in mixtures])
        expected = np.where(sigmoid < 0.01, 0, np.where(sigmoid > 0.99, 1, sigmoid))
        np.testing.assert_allclose(share, expected)
        assert all(abs(sum(m.values()) - 1) < 1e-12 for m in mixtures)
    assert (s.mix[5:] == 0).all() and (s.concepts[5:] == 2).all()
    assert s.concepts[0, -1] == 5  # share 1: the new concept is the site's concept
    assert s.mixture(0, 0) == {2: 1.0} and s.mixture(0, 10) == {5: 1.0}  # snapped tails
    assert s.change_points() == list(range(1, 11)) and s.affected_sites(3) == [0, 1, 2, 3, 4]
    assert s.used_concepts == [2, 5]
    with pytest.raises(ValueError, match="width"):
        gradual(**SIZE, center=6, width=0)


def test_generators_reject_an_empty_run() -> None:
    with pytest.raises(ValueError, match="num_sites >= 1"):
        abrupt(num_sites=0, num_periods=5, at=2)
