import numpy as np
import pytest

from fedretrain.validation import (
    NormPolicy,
    Quorum,
    UpdateRules,
    check_update,
    clip_update,
    confusion_problem,
    num_examples_problem,
    round_norm_bound,
    structure_problem,
    update_norm,
)

REF = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32), "n": np.zeros((), np.int64)}


def _honest(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (rng.normal(size=v.shape).astype(v.dtype) if k != "n" else v) for k, v in REF.items()
    }


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda a: a.pop("b"), "missing ['b']"),
        (lambda a: a.update(extra=np.zeros(1, np.float32)), "unexpected ['extra']"),
        (lambda a: a.update(b=np.zeros(1, np.float32)), "shape (1,)"),
        (lambda a: a.update(b=np.zeros(3, np.float64)), "dtype float64"),
        (lambda a: a["w"].__setitem__((0, 0), np.nan), "1 non-finite"),
        (lambda a: a["w"].__setitem__((1, 1), -np.inf), "1 non-finite"),
    ],
)
def test_structure_problems_are_named(mutate, expected: str) -> None:  # noqa: ANN001
    arrays = _honest()
    mutate(arrays)
    problem = structure_problem(REF, arrays)
    assert problem is not None and expected in problem
    assert structure_problem(REF, _honest()) is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [(10, True), (10.0, True), (np.int64(3), True), (0, False), (-4, False), (2.5, False),
     (float("nan"), False), (True, False), ("10", False), (None, False), (10**9, False)],
)  # fmt: skip
def test_num_examples_must_be_a_bounded_positive_integer(value: object, ok: bool) -> None:
    assert (num_examples_problem(value, bound=1000) is None) is ok


def test_norm_and_clipping_against_numpy() -> None:
    a = _honest(1)
    flat = np.concatenate([a["w"].ravel(), a["b"]]).astype(np.float64)
    assert update_norm(REF, a) == pytest.approx(np.linalg.norm(flat))
    clipped = clip_update(REF, a, 0.5)
    assert update_norm(REF, clipped) == pytest.approx(0.5, rel=1e-5)
    # Clipping scales, it does not turn: same direction as before.
    np.testing.assert_allclose(clipped["w"] / a["w"], 0.5 / np.linalg.norm(flat), rtol=1e-4)
    assert clipped["n"] is a["n"]
    assert clip_update(REF, a, 1e6)["w"] is a["w"]


def test_norm_policy_reject_or_clip() -> None:
    big = {k: v * 100 if v.dtype.kind == "f" else v for k, v in _honest(2).items()}
    reject = check_update(REF, big, 5, UpdateRules(max_update_norm=1.0))
    assert reject.reason is not None and "exceeds the bound 1" in reject.reason
    clip = check_update(REF, big, 5, UpdateRules(max_update_norm=1.0, norm_policy=NormPolicy.clip))
    assert clip.reason is None and update_norm(REF, clip.arrays) == pytest.approx(1.0, rel=1e-5)


def test_round_bound_is_the_tighter_of_absolute_and_relative() -> None:
    norms = [1.0, 2.0, 3.0, 100.0, float("inf")]  # median of the finite ones: 2.5
    assert round_norm_bound(norms, UpdateRules(max_norm_ratio=4.0)) == pytest.approx(10.0)
    rules = UpdateRules(max_update_norm=5.0, max_norm_ratio=4.0)
    assert round_norm_bound(norms, rules) == 5.0
    assert round_norm_bound(norms, UpdateRules(max_norm_ratio=None)) is None


def test_quorum() -> None:
    assert Quorum(0.5, 1).required(10) == 5
    assert Quorum(0.7, 1).required(3) == 3
    assert Quorum(0.0, 2).required(10) == 2


@pytest.mark.parametrize(
    ("confusion", "k", "n", "loss", "expected"),
    [
        ([3, 1, 0, 2], 2, 6, 1.0, None),
        ([3, 1, 0], 2, 4, 1.0, "3 entries"),
        ([3, -1, 0, 2], 2, 4, 1.0, "negative"),
        ([3.5, 1, 0, 2], 2, 6, 1.0, "non-integer"),
        ([3, 1, 0, 2], 2, 7, 1.0, "differs from the confusion total 6"),
        ([3, 1, 0, 2], 2, 6, float("nan"), "loss-sum"),
        ([3, 1, 0, 2], 1, 6, 1.0, "num-classes"),
    ],
)
def test_evaluation_statistics_must_add_up(confusion, k, n, loss, expected) -> None:  # noqa: ANN001
    problem = confusion_problem(confusion, k, n, loss)
    assert problem is None if expected is None else expected in problem
