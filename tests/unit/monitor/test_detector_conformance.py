"""One battery for every detector: reference phase, reset, resume from JSON, and detection."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from fedretrain.monitor.base import Detection, Detector, Seed
from fedretrain.monitor.baselines import NoDrift, Periodic
from fedretrain.monitor.binomial_error import BinomialErrorTest
from fedretrain.monitor.cusum import ErrorCusum
from fedretrain.monitor.histogram import HistogramDrift, LabelShift, PredictionShift
from fedretrain.monitor.page_hinkley import ErrorPageHinkley
from fedretrain.monitor.stats import PeriodStats

REF = 3
ARL = 5000.0

# name -> factory; every detector of the package, baselines included.
FACTORIES: dict[str, Callable[[], Detector]] = {
    "histogram_chi2": lambda: HistogramDrift(ARL, REF),
    "histogram_g": lambda: HistogramDrift(ARL, REF, test="g"),
    "label_shift": lambda: LabelShift(ARL, REF),
    "prediction_shift": lambda: PredictionShift(ARL, REF),
    "binomial": lambda: BinomialErrorTest(ARL, REF),
    "binomial_confirm1": lambda: BinomialErrorTest(ARL, REF, confirm=1),
    "cusum": lambda: ErrorCusum(ARL, REF),
    "page_hinkley": lambda: ErrorPageHinkley(ARL, REF),
    # Built for private statistics (noise sd 1 per unit-sensitivity count): exact data is
    # the zero-noise case, on which they must behave as well.
    "histogram_noisy": lambda: HistogramDrift(ARL, REF, stats_noise_std=1.0),
    "label_shift_noisy": lambda: LabelShift(ARL, REF, stats_noise_std=1.0),
    "prediction_shift_noisy": lambda: PredictionShift(ARL, REF, stats_noise_std=1.0),
    "binomial_noisy": lambda: BinomialErrorTest(ARL, REF, stats_noise_std=1.0),
    "cusum_noisy": lambda: ErrorCusum(ARL, REF, stats_noise_std=1.0),
    "page_hinkley_noisy": lambda: ErrorPageHinkley(ARL, REF, stats_noise_std=1.0),
    "no_drift": NoDrift,
    "periodic": lambda: Periodic(every=4),
}
ERROR_DETECTORS = [
    "binomial",
    "binomial_confirm1",
    "cusum",
    "page_hinkley",
    "binomial_noisy",
    "cusum_noisy",
    "page_hinkley_noisy",
]
FEATURE_DETECTORS = ["histogram_chi2", "histogram_g", "histogram_noisy"]
BASELINES = ["no_drift", "periodic"]
# What a retrain's seed cannot start: the previous model's predictions, and the baselines.
UNSEEDED = ["prediction_shift", "prediction_shift_noisy", *BASELINES]
# Changes that touch errors and features at once, so that every detector has something to see.
MIXED = {"errors": {s: 0.4 for s in range(10)}, "shifted": range(10)}


def decisions(detector: Detector, periods: list) -> list[Detection]:
    out = []
    for stats in periods:
        detector.update(stats)
        assert detector.drift_detected == detector.last.drifted
        out.append(detector.last)
    return out


@pytest.mark.parametrize("name", FACTORIES)
def test_no_alarm_while_the_reference_builds_even_on_drifted_data(name, stream) -> None:
    # Drift from the first period: the reference *is* the drifted data, so nothing may fire.
    periods = stream(1, REF, change_at=0, **MIXED)
    for d in decisions(FACTORIES[name](), periods):
        assert not d.drifted, d.reason
        assert d.reason and d.sites == ()


@pytest.mark.parametrize("name", [n for n in FACTORIES if n != "periodic"])
def test_quiet_on_a_stationary_stream(name, stream) -> None:
    fired = [d.reason for d in decisions(FACTORIES[name](), stream(2, 25)) if d.drifted]
    assert fired == []


@pytest.mark.parametrize("name", FACTORIES)
def test_reset_forgets_the_reference(name, stream) -> None:
    detector = FACTORIES[name]()
    before = stream(3, 6)
    after = stream(4, 12, change_at=0, **MIXED)  # a new serving model: the new normal
    decisions(detector, before)
    detector.reset()
    assert not detector.drift_detected
    got = decisions(detector, after)
    if name == "periodic":
        assert [d.drifted for d in got] == [(t + 1) % 4 == 0 for t in range(12)]
    else:
        assert not any(d.drifted for d in got), [d.reason for d in got if d.drifted]


def seed_of(stats: PeriodStats) -> Seed:
    """A retrain's seed as the controller builds it: the period, and each site's scores."""
    scores = {s: (w.labelled - w.errors, w.labelled) for s, w in stats.sites.items()}
    return Seed(stats, scores)


@pytest.mark.parametrize("name", FACTORIES)
def test_a_seeded_detector_tests_the_first_period_after_a_reset(name, stream) -> None:
    detector = FACTORIES[name]()
    decisions(detector, stream(14, 4))
    before, *after = stream(15, 12)
    detector.reset()
    detector.seed(seed_of(before))
    got = decisions(detector, after)
    assert not any(d.drifted for d in got if name != "periodic"), [d.reason for d in got]
    if name in UNSEEDED:
        assert "sites_tested" not in got[0].detail  # built from the next periods, as before
    else:
        assert got[0].detail["sites_tested"] == 10, got[0].reason


# Page-Hinkley measures change against the running mean of its own scores: a level that is off
# from its first score on is its normal. The exact test beside it catches that.
@pytest.mark.parametrize("name", [n for n in ERROR_DETECTORS if "page_hinkley" not in n])
def test_a_seeded_error_detector_catches_a_rise_in_the_first_period(name, stream) -> None:
    before, *after = stream(16, 6, change_at=1, errors={s: 0.4 for s in range(10)})
    detector = FACTORIES[name]()
    detector.seed(seed_of(before))
    delay, d = first_alarm(detector, after, 0)
    assert delay <= 1, d.reason  # a sequential test may need its second score
    assert d.detail["reference_error"] < 0.2 < d.detail["error"]


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_a_seeded_histogram_catches_a_shift_in_the_first_period(name, stream) -> None:
    before, *after = stream(17, 4, change_at=1, shifted=range(10))
    detector = FACTORIES[name]()
    detector.seed(seed_of(before))
    assert decisions(detector, after)[0].drifted


@pytest.mark.parametrize("name", ["binomial", "histogram_chi2", "cusum", "binomial_noisy"])
def test_a_seeded_reference_grows_to_its_full_size(name, stream) -> None:
    # Seeded, then REF tested periods join it; afterwards it is fixed (or, for a
    # self-starting detector, keeps growing): the same decisions as a detector that built
    # its reference from the seed's period and the REF periods after it, one period on.
    periods = stream(18, 12)
    seeded, built = FACTORIES[name](), FACTORIES[name]()
    seeded.seed(seed_of(periods[0]))
    got = decisions(seeded, periods[1:])
    expected = decisions(built, periods)
    if name == "histogram_chi2":  # built: a reference of REF periods; seeded: REF + 1
        assert all(d.detail["sites_tested"] == 10 for d in got)
    else:
        assert got[REF:][-1].to_dict()["detail"]["sites_tested"] == 10
    assert len(got) == len(expected) - 1
    # Site 0's reference, from the raw counts: the seed plus the tested periods that joined it
    # (REF of them, or every one for the self-starting CUSUM).
    joined = len(periods) - 1 if name == "cusum" else REF
    window = periods[0].sites[0]
    if name == "histogram_chi2":
        expected_ref = sum(p.sites[0].hist for p in periods[: joined + 1])
    else:
        seed_counts = np.array([window.errors, window.labelled])
        later = [np.array([p.sites[0].errors, p.sites[0].labelled]) for p in periods[1:]]
        expected_ref = seed_counts + sum(later[:joined])
    [site0] = [s for s in seeded.state_dict()["references"]["sites"] if s[0] == 0]
    pending = dict(seeded.state_dict()["references"]["pending"])
    reference = np.asarray(site0[2]) + (np.asarray(pending[0]) if 0 in pending else 0)
    assert site0[1] + (0 in pending) == joined
    np.testing.assert_array_equal(reference, expected_ref)


@pytest.mark.parametrize("split", [0, 1, 2, 5])
@pytest.mark.parametrize("name", ["binomial", "histogram_chi2", "cusum", "binomial_noisy"])
def test_a_seeded_state_through_strict_json_resumes_with_identical_decisions(
    name, split, stream
) -> None:
    first, *periods = stream(19, 10, change_at=6, errors={0: 0.4, 1: 0.5}, shifted=(0, 1))
    original = FACTORIES[name]()
    original.seed(seed_of(first))
    decisions(original, periods[:split])
    resumed = FACTORIES[name]()
    resumed.load_state_dict(json.loads(json.dumps(original.state_dict(), allow_nan=False)))
    rest_a = decisions(original, periods[split:])
    rest_b = decisions(resumed, periods[split:])
    assert [d.to_dict() for d in rest_a] == [d.to_dict() for d in rest_b]


@pytest.mark.parametrize("split", [2, 5, 9])
@pytest.mark.parametrize("name", FACTORIES)
def test_state_through_strict_json_resumes_with_identical_decisions(name, split, stream) -> None:
    periods = stream(5, 14, change_at=8, errors={0: 0.4, 1: 0.4, 2: 0.5}, shifted=(0, 1, 2))
    original = FACTORIES[name]()
    decisions(original, periods[:split])
    saved = json.dumps(original.state_dict(), allow_nan=False)
    resumed = FACTORIES[name]()
    resumed.load_state_dict(json.loads(saved))
    assert resumed.last.to_dict() == original.last.to_dict()
    rest_a = decisions(original, periods[split:])
    rest_b = decisions(resumed, periods[split:])
    assert [d.to_dict() for d in rest_a] == [d.to_dict() for d in rest_b]
    json.dumps([d.to_dict() for d in rest_a], allow_nan=False)


@pytest.mark.parametrize("name", FACTORIES)
def test_state_of_another_detector_or_version_is_refused(name) -> None:
    detector = FACTORIES[name]()
    other = NoDrift() if name != "no_drift" else Periodic(every=2)
    with pytest.raises(ValueError, match="written by"):
        detector.load_state_dict(other.state_dict())
    state = detector.state_dict()
    state["version"] = 999
    with pytest.raises(ValueError, match="version"):
        detector.load_state_dict(state)


def test_no_drift_never_fires(stream) -> None:
    periods = stream(6, 12, change_at=4, **MIXED)
    assert not any(d.drifted for d in decisions(NoDrift(), periods))


@pytest.mark.parametrize("every", [1, 3])
def test_periodic_fires_every_n_periods_since_reset(every, stream) -> None:
    periods = stream(7, 7)
    detector = Periodic(every)
    assert [d.drifted for d in decisions(detector, periods)] == [
        (t + 1) % every == 0 for t in range(7)
    ]
    detector.reset()
    assert [d.drifted for d in decisions(detector, periods[:3])] == [
        (t + 1) % every == 0 for t in range(3)
    ]


def first_alarm(detector: Detector, periods: list, change_at: int) -> tuple[int, Detection]:
    for t, d in enumerate(decisions(detector, periods)):
        if d.drifted:
            assert t >= change_at, f"false alarm at {t}: {d.reason}"
            return t - change_at, d
    raise AssertionError("never fired")


@pytest.mark.parametrize("name", ERROR_DETECTORS)
def test_error_detectors_catch_an_abrupt_rise_at_all_sites(name, stream) -> None:
    periods = stream(8, 12, change_at=6, errors={s: 0.4 for s in range(10)})
    delay, d = first_alarm(FACTORIES[name](), periods, 6)
    assert delay <= 2, d.reason
    assert d.detail["error"] > 0.25


@pytest.mark.parametrize("name", ERROR_DETECTORS)
def test_error_detectors_catch_a_rise_at_3_of_10_sites_and_name_them(name, stream) -> None:
    periods = stream(9, 14, change_at=6, errors={0: 0.4, 1: 0.4, 2: 0.4})
    detector = FACTORIES[name]()
    delay, _ = first_alarm(detector, periods[:], 6)
    assert delay <= 3
    detector = FACTORIES[name]()
    named = set()
    for d in decisions(detector, periods):
        named |= set(d.sites)
    assert named and named <= {0, 1, 2}


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
@pytest.mark.parametrize("shifted", [range(10), (0, 1, 2)])
def test_histogram_catches_a_covariate_shift(name, shifted, stream) -> None:
    periods = stream(10, 12, change_at=6, shifted=shifted)
    detector = FACTORIES[name]()
    delay, d = first_alarm(detector, periods, 6)
    assert delay <= 2, d.reason
    assert d.detail["feature"] == 0  # x0 moved; x1 and the constant x2 did not
    assert d.detail["psi"] > 0 and d.detail["js"] > 0
    assert d.sites and set(d.sites) <= set(shifted)


def test_histogram_ignores_a_pure_concept_change(stream) -> None:
    periods = stream(11, 12, change_at=4, errors={s: 0.4 for s in range(10)})
    assert not any(d.drifted for d in decisions(FACTORIES["histogram_chi2"](), periods))


def test_a_late_site_is_tested_once_it_has_its_own_reference(stream) -> None:
    periods = stream(12, 9, change_at=6, errors={9: 0.6})
    late = [type(p)(p.period, {s: w for s, w in p.sites.items() if s != 9}) for p in periods[:3]]
    got = decisions(BinomialErrorTest(ARL, REF, confirm=1), late + periods[3:])
    # Sites 0-8 are tested from period 3; site 9 reports from period 3, so its reference is
    # periods 3-5 and its first test is period 6, when its error jumps.
    assert [d.drifted for d in got[:6]] == [False] * 6
    assert [d.detail["sites_tested"] for d in got[3:7]] == [9, 9, 9, 10]
    assert got[6].drifted and 9 in got[6].sites


def test_detection_reason_names_site_test_and_numbers(stream) -> None:
    periods = stream(13, 5, change_at=4, errors={3: 0.6})
    detector = BinomialErrorTest(ARL, REF)
    d = decisions(detector, periods)[-1]
    assert d.drifted and d.sites == (3,)
    assert d.reason.startswith("binomial error test: site 3 error 0.")
    assert "vs reference 0." in d.reason and "p=" in d.reason
    assert d.p_value is not None and d.p_value < d.detail["level"]
    assert d.statistic >= d.threshold  # the error rate reached the critical rate
