"""The validation gate with numbers checkable by hand: a federation of two or three sites."""

from __future__ import annotations

import json
import math

import pytest

from fedretrain.registry import SiteScore, gate, pooled, summed

CHAMPION = {1: (80, 100), 2: (80, 100)}  # 0.80 at both sites, 0.80 overall


def test_a_candidate_better_everywhere_is_promoted() -> None:
    decision = gate({1: (90, 100), 2: (85, 100)}, CHAMPION, global_margin=0.0, site_margin=0.0)
    assert decision.promote
    assert decision.candidate_accuracy == pytest.approx(0.875)
    assert decision.champion_accuracy == pytest.approx(0.80)
    assert [row.delta for row in decision.rows] == pytest.approx([0.10, 0.05])
    assert decision.reason.startswith("candidate 0.8750 >= champion 0.8000")


def test_the_global_metric_sums_counts_rather_than_averaging_accuracies() -> None:
    # Site 1: 10/10 = 1.0 and site 2: 45/90 = 0.5; mean of accuracies 0.75, summed 55/100.
    decision = gate(
        {1: (10, 10), 2: (45, 90)}, {1: (10, 10), 2: (60, 90)}, global_margin=0.2, site_margin=1
    )
    assert decision.candidate_accuracy == pytest.approx(0.55)
    assert decision.champion_accuracy == pytest.approx(0.70)
    assert decision.promote  # 0.55 >= 0.70 - 0.2
    strict = gate(
        {1: (10, 10), 2: (45, 90)}, {1: (10, 10), 2: (60, 90)}, global_margin=0.1, site_margin=1
    )
    assert not strict.promote
    assert strict.reason == ("candidate 0.5500 < champion 0.7000 - global_margin 0.1 on 2 sites")


def test_one_site_regressing_beyond_its_margin_blocks_a_better_average() -> None:
    decision = gate({1: (99, 100), 2: (65, 100)}, CHAMPION, global_margin=0.0, site_margin=0.1)
    assert decision.candidate_accuracy == pytest.approx(0.82)  # better overall...
    assert not decision.promote  # ...but site 2 lost 15 points
    assert decision.regressed_sites == (2,)
    assert decision.reason == (
        "site 2 regresses by 0.1500 (0.6500 vs 0.8000), more than site_margin 0.1"
    )


def test_a_tie_at_either_margin_passes_and_one_example_less_fails() -> None:
    at_margin = gate({1: (75, 100), 2: (75, 100)}, CHAMPION, global_margin=0.05, site_margin=0.05)
    assert at_margin.promote  # 0.75 == 0.80 - 0.05
    # In floating point 0.55 - 0.1 is 0.45000000000000007 > 0.45: still a tie.
    rounded = gate({1: (45, 100)}, {1: (55, 100)}, global_margin=0.1, site_margin=0.1)
    assert rounded.promote, rounded.reason
    below = gate({1: (75, 100), 2: (74, 100)}, CHAMPION, global_margin=0.05, site_margin=0.05)
    assert not below.promote
    assert below.regressed_sites == (2,)
    assert "candidate 0.7450 < champion 0.8000" in below.reason


def test_no_champion_passes_and_an_unevaluated_champion_does_not() -> None:
    assert gate({1: (1, 10)}, None, 0.0, 0.0).promote
    assert gate({1: (1, 10)}, None, 0.0, 0.0).reason == "no champion to compare against"
    empty = gate({1: (1, 10)}, {}, 0.0, 0.0)
    assert not empty.promote
    assert empty.reason == "no site evaluated both the candidate and the champion"
    nothing = gate({1: (0, 0)}, CHAMPION, 0.0, 0.0)
    assert not nothing.promote and nothing.reason == "the candidate was evaluated on no site"


def test_sites_missing_a_side_are_shown_but_left_out_of_the_global_metric() -> None:
    decision = gate({1: (90, 100), 3: (0, 100)}, {1: (80, 100), 2: (10, 100)}, 0.0, 0.0)
    assert decision.promote  # only site 1 was evaluated on both sides
    assert (decision.candidate_accuracy, decision.champion_accuracy) == (0.9, 0.8)
    rows = {row.site: row for row in decision.rows}
    assert [row.site for row in decision.rows] == [1, 2, 3]
    assert not rows[2].counted and rows[2].candidate is None and math.isnan(rows[2].delta)
    assert not rows[3].counted and rows[3].champion is None


def test_a_site_below_min_site_total_cannot_block() -> None:
    candidate = {1: (80, 100), 2: (1, 3)}  # site 2: 0.33 vs 1.0 on three examples
    champion = {1: (80, 100), 2: (3, 3)}
    assert not gate(candidate, champion, 0.1, 0.1).promote
    lenient = gate(candidate, champion, 0.1, 0.1, min_site_total=10)
    assert lenient.promote and lenient.regressed_sites == ()
    assert lenient.candidate_accuracy == pytest.approx(81 / 103)  # still in the global metric


def test_accuracy_and_count_inputs_equal_counts() -> None:
    as_counts = gate({1: (72, 80)}, {1: (60, 80)}, 0.0, 0.0)
    as_accuracy = gate(
        {1: SiteScore.from_accuracy(0.9, 80)}, {1: SiteScore.from_accuracy(0.75, 80)}, 0.0, 0.0
    )
    assert as_accuracy.candidate_accuracy == pytest.approx(as_counts.candidate_accuracy)
    assert as_accuracy.promote == as_counts.promote
    assert as_accuracy.rows[0].delta == pytest.approx(0.15)


def test_to_dict_is_strict_json_with_every_row() -> None:
    decision = gate({1: (90, 100), 2: (50, 100)}, {1: (80, 100)}, 0.0, 0.1)
    record = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert record["promote"] is True and record["candidate_accuracy"] == 0.9
    assert record["rows"][1] == {
        "site": 2,
        "candidate_correct": 50.0,
        "candidate_total": 100,
        "champion_correct": None,
        "champion_total": None,
        "delta": None,
        "counted": False,
        "regressed": False,
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_margin": -0.1, "site_margin": 0.1}, "global_margin=-0.1"),
        ({"global_margin": 0.1, "site_margin": math.nan}, "site_margin=nan"),
        ({"global_margin": 0.1, "site_margin": 0.1, "min_site_total": 0}, "min_site_total=0"),
    ],
)
def test_bad_margins_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gate({1: (1, 2)}, {1: (1, 2)}, **kwargs)  # type: ignore[arg-type]


def test_scores_validate_and_add_up() -> None:
    with pytest.raises(ValueError, match="correct=11"):
        SiteScore(11, 10)
    with pytest.raises(ValueError, match="total=-1"):
        SiteScore(0, -1)
    with pytest.raises(ValueError, match="accuracy=1.5"):
        SiteScore.from_accuracy(1.5, 10)
    assert math.isnan(SiteScore(0, 0).accuracy)
    assert pooled([SiteScore(9, 10), SiteScore(1, 10)]) == SiteScore(10, 20)
    assert summed({1: (8, 10)}, {1: (9, 10), 2: (5, 10)}) == {
        1: SiteScore(17, 20),
        2: SiteScore(5, 10),
    }
