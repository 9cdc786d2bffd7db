from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedretrain.tasks import as_dataset
from fedretrain.tasks.digits import load_digits
from fedretrain.tasks.synthetic import circle, sea, sine
from fedretrain.tasks.tabular_file import load_table


def test_sea_labels_threshold_the_first_two_features() -> None:
    ds = sea(n_samples=2000, theta=9.5, seed=1)
    assert ds.x.shape == (2000, 3) and ds.x.min() >= 0 and ds.x.max() <= 10
    np.testing.assert_array_equal(ds.y, (ds.x[:, 0] + ds.x[:, 1] > 9.5).astype(np.int64))


def test_sine_labels_and_flip() -> None:
    plain = sine(n_samples=2000, seed=2)
    flipped = sine(n_samples=2000, flip=True, seed=2)
    np.testing.assert_array_equal(plain.y, (plain.x[:, 1] <= np.sin(plain.x[:, 0])).astype(int))
    np.testing.assert_array_equal(flipped.x, plain.x)
    np.testing.assert_array_equal(flipped.y, 1 - plain.y)


def test_circle_labels_points_outside_the_circle() -> None:
    ds = circle(n_samples=3000, center=(0.6, 0.5), radius=0.25, seed=3)
    inside = (ds.x[:, 0] - 0.6) ** 2 + (ds.x[:, 1] - 0.5) ** 2 <= 0.25**2
    np.testing.assert_array_equal(ds.y, (~inside).astype(int))
    # The area inside is pi r^2 ~ 0.196 of the unit square.
    assert abs(inside.mean() - np.pi * 0.25**2) < 0.03


def test_label_noise_flips_about_that_fraction() -> None:
    clean, noisy = sea(n_samples=20000, seed=4), sea(n_samples=20000, noise=0.1, seed=4)
    assert abs((clean.y != noisy.y).mean() - 0.1) < 0.01


def test_digits_are_bundled_images_in_unit_range() -> None:
    ds = load_digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.num_classes == 10
    assert ds.x.dtype == np.float32 and ds.x.min() >= 0 and ds.x.max() <= 1


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_round_trip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "f1": rng.normal(5, 2, 100),
            "f2": rng.integers(0, 9, 100),
            "y": rng.choice(["b", "a", "c"], 100),
        }
    )
    path = tmp_path / f"t{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    ds = load_table(str(path), label_column="y")
    assert ds.num_classes == 3 and ds.x.shape == (100, 2)
    np.testing.assert_array_equal(
        ds.y, pd.Categorical(frame["y"], categories=["a", "b", "c"]).codes
    )
    np.testing.assert_allclose(ds.x.mean(axis=0), 0, atol=1e-5)
    raw = load_table(str(path), label_column="y", feature_columns=["f1"], standardize=False)
    np.testing.assert_allclose(raw.x[:, 0], frame["f1"], rtol=1e-6)


def test_bad_tables_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"f": [1.0, None, 3.0], "s": ["x", "y", "z"], "label": [0, 1, 0]}).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match="not numeric"):
        load_table(str(path))
    with pytest.raises(ValueError, match="no label column 'y'"):
        load_table(str(path), label_column="y")
    with pytest.raises(ValueError, match="missing or non-finite"):
        load_table(str(path), feature_columns=["f"])
    with pytest.raises(FileNotFoundError, match="task.dataset.path"):
        load_table(str(tmp_path / "absent.csv"))
    with pytest.raises(ValueError, match="unsupported file type"):
        load_table(str(tmp_path / "t.xlsx"))


def test_a_bad_row_is_named_by_its_line_in_the_file(tmp_path: Path) -> None:
    """Issue 16, item 6: NaN rows were named by their 0-based data row, not the line a user
    opens in an editor. Here the header is line 1, a blank line 3 and a quoted field spans
    lines 4-5, so the empty value on line 7 is data row 3."""
    path = tmp_path / "t.csv"
    path.write_text('f,note,label\n1.0,a,0\n\n2.0,"two\nlines",1\n3.0,b,0\n,c,1\n4.0,d,0\n')
    with pytest.raises(ValueError, match=r"1 rows have missing .* \(first at line 7\)"):
        load_table(str(path), feature_columns=["f"])
    parquet = tmp_path / "t.parquet"
    pd.DataFrame({"f": [1.0, 2.0, None], "label": [0, 1, 0]}).to_parquet(parquet)
    with pytest.raises(ValueError, match=r"\(first at row 3\)"):
        load_table(str(parquet))


def test_dataset_checks_labels_and_shapes() -> None:
    with pytest.raises(ValueError, match="must match"):
        as_dataset(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="labels must lie in"):
        as_dataset(np.zeros((2, 2)), np.array([0, 5]), num_classes=3)
