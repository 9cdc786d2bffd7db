"""Canary site choice and verdicts, with hand-checkable scores."""

from __future__ import annotations

import json
import math

import pytest

from fedretrain.registry import CanaryAction, canary_size, canary_verdict, choose_canary_sites

SITES = list(range(10))


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(10, 0.2, 2), (10, 0.25, 3), (10, 0.7, 7), (10, 0.01, 1), (10, 1.0, 9), (2, 0.5, 1),
     (1, 0.3, 1), (3, 0.5, 2)],
)  # fmt: skip
def test_canary_size(n: int, fraction: float, expected: int) -> None:
    assert canary_size(n, fraction) == expected


def test_canary_size_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one site"):
        canary_size(0, 0.5)
    with pytest.raises(ValueError, match=r"fraction=0 must lie in \(0, 1\]"):
        canary_size(5, 0)


def test_the_draw_is_deterministic_sorted_and_independent_of_input_order() -> None:
    first = choose_canary_sites(SITES, 0.3, seed=[42, 5])
    assert first == choose_canary_sites(SITES[::-1], 0.3, seed=[42, 5])
    assert len(first) == 3 and list(first) == sorted(first) and set(first) <= set(SITES)
    draws = {choose_canary_sites(SITES, 0.3, seed=[42, period]) for period in range(20)}
    assert len(draws) > 5  # another seed, another draw


def test_every_site_is_drawn_about_equally_often() -> None:
    counts = dict.fromkeys(SITES, 0)
    for seed in range(2000):
        for site in choose_canary_sites(SITES, 0.2, seed):
            counts[site] += 1
    assert all(abs(c / 2000 - 0.2) < 0.04 for c in counts.values()), counts


def test_sites_of_any_id_type_and_duplicates() -> None:
    assert choose_canary_sites(["b", "a"], 0.5, 0) in {("a",), ("b",)}
    assert choose_canary_sites([7], 0.5, 0) == (7,)
    with pytest.raises(ValueError, match="duplicates"):
        choose_canary_sites([1, 1, 2], 0.5, 0)


BEFORE = {s: (80, 100) for s in SITES}  # the champion everywhere: 0.80


def test_a_candidate_that_fixes_the_drift_is_promoted() -> None:
    during = {s: (90, 100) if s < 2 else (75, 100) for s in SITES}
    verdict = canary_verdict((0, 1), BEFORE, during, margin=0.02, min_samples=200)
    assert verdict.action is CanaryAction.promote
    assert verdict.effect == pytest.approx((0.90 - 0.80) - (0.75 - 0.80))
    assert verdict.canary_during.total == 200 and verdict.control_during.total == 800
    assert verdict.reason == (
        "canary 0.8000 -> 0.9000, control 0.8000 -> 0.7500, effect +0.1500 >= -margin 0.02 "
        "over 200 examples"
    )


def test_a_candidate_worse_than_the_champion_is_rolled_back() -> None:
    during = {s: (60, 100) if s < 2 else (80, 100) for s in SITES}
    verdict = canary_verdict((0, 1), BEFORE, during, margin=0.05, min_samples=100)
    assert verdict.action is CanaryAction.rollback
    assert verdict.effect == pytest.approx(-0.20)
    assert verdict.reason.endswith("effect -0.2000 < -margin 0.05")


def test_drift_that_hits_every_site_is_not_blamed_on_the_candidate() -> None:
    """Everyone drops by the drift; the canary drops less. Before/after alone would roll back."""
    before = {s: (90, 100) for s in SITES}
    during = {s: (70, 100) if s < 2 else (60, 100) for s in SITES}
    verdict = canary_verdict((0, 1), before, during, margin=0.05, min_samples=100)
    assert verdict.effect == pytest.approx(-0.20 - -0.30)
    assert verdict.action is CanaryAction.promote


def test_harder_canary_sites_are_not_blamed_on_the_candidate() -> None:
    """The canary sites were always harder. Comparing with the control alone would roll back."""
    before = {s: (60, 100) if s < 2 else (90, 100) for s in SITES}
    during = {s: (65, 100) if s < 2 else (90, 100) for s in SITES}
    verdict = canary_verdict((0, 1), before, during, margin=0.05, min_samples=100)
    assert verdict.effect == pytest.approx(0.05)
    assert verdict.action is CanaryAction.promote


def test_the_verdict_waits_for_enough_canary_examples() -> None:
    during = {s: (30, 50) if s < 2 else (80, 100) for s in SITES}  # 100 canary examples
    verdict = canary_verdict((0, 1), BEFORE, during, margin=0.05, min_samples=150)
    assert verdict.action is CanaryAction.continue_ and verdict.action.value == "continue"
    assert math.isnan(verdict.effect)
    assert verdict.reason == (
        "the canary sites scored 100 of the 150 examples needed under the candidate"
    )


def test_a_tie_at_the_margin_promotes() -> None:
    during = {s: (75, 100) if s < 2 else (80, 100) for s in SITES}
    assert canary_verdict((0, 1), BEFORE, during, margin=0.05, min_samples=1).action == "promote"
    during[1] = (74, 100)
    assert canary_verdict((0, 1), BEFORE, during, margin=0.05, min_samples=1).action == "rollback"


def test_without_a_control_group_the_canary_is_judged_against_its_baseline() -> None:
    verdict = canary_verdict([0], {0: (80, 100)}, {0: (70, 100)}, margin=0.05, min_samples=1)
    assert verdict.action is CanaryAction.rollback
    assert verdict.effect == pytest.approx(-0.10)
    assert verdict.reason.startswith("no control site: canary 0.8000 -> 0.7000")


def test_sites_without_a_baseline_are_excluded_and_named() -> None:
    before = {s: (80, 100) for s in (0, 2, 3)}
    during = {0: (90, 100), 1: (0, 100), 2: (80, 100), 3: (80, 100), 4: (10, 100)}
    verdict = canary_verdict((0, 1), before, during, margin=0.0, min_samples=1)
    assert verdict.excluded == (1, 4)  # a terrible score at 1 does not count: no baseline
    assert verdict.canary_during.total == 100 and verdict.control_during.total == 200
    assert verdict.effect == pytest.approx(0.10)
    record = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert record["action"] == "promote" and record["excluded"] == [1, 4]
    assert record["canary_during"] == {"correct": 90.0, "total": 100}


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="margin=-1"):
        canary_verdict([0], BEFORE, BEFORE, margin=-1, min_samples=1)
    with pytest.raises(ValueError, match="min_samples=0"):
        canary_verdict([0], BEFORE, BEFORE, margin=0, min_samples=0)
    with pytest.raises(ValueError, match="canary_sites is empty"):
        canary_verdict([], BEFORE, BEFORE, margin=0, min_samples=1)
