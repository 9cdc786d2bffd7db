"""The fine-tuning example as a user runs it (issue 17, item 1): pretrain the digits CNN on
digits 0 to 4 with the shipped script, fine-tune it federated on digits 5 to 9 through a real
Flower simulation with its convolutions frozen, and check what came out against the pretrained
file itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedretrain.registry import Registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FROZEN = ("features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "digits_0to4.safetensors"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pretrain_digits.py"), str(out), "--epochs", "10"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(result.stdout.split("holdout accuracy ")[1].split(";")[0])
    assert accuracy > 0.9  # five classes of clean digits: an easy problem
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, pretrained: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run")
    result = subprocess.run(
        [
            sys.executable, "-m", "fedretrain", "task=digits_5to9",
            f"task.model.pretrained={pretrained}", "task.model.strict=false",
            "train.freeze=[features]", "runtime.num_clients=4", "runtime.num_rounds=2",
            f"hydra.run.dir={out}",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_the_run_reports_its_partial_load(run: tuple[Path, str]) -> None:
    out, stdout = run
    assert "loaded 6 arrays" in stdout
    assert "kept 2 at their initialisation (classifier.2.weight, classifier.2.bias)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pretrained"]["kept"] == ["classifier.2.weight", "classifier.2.bias"]
    assert sorted(summary["frozen_arrays"]) == sorted(FROZEN)
    assert summary["final_accuracy"] > 0.8  # pretrained features, a new head, two rounds


def test_the_frozen_arrays_are_the_pretrained_files_and_the_rest_trained(
    run: tuple[Path, str], pretrained: Path
) -> None:
    out, _ = run
    source = load_file(pretrained)
    final = load_file(out / "model.safetensors")
    assert sorted(final) == sorted(source)  # the served file is the whole model
    for name in FROZEN:
        assert np.array_equal(final[name], source[name]), name
    assert not np.allclose(final["classifier.0.weight"], source["classifier.0.weight"])
    with Registry(out) as registry:
        versions = registry.versions()
        assert versions and all(
            v.trained == ("classifier.0.weight", "classifier.0.bias", "classifier.2.weight",
                          "classifier.2.bias")
            for v in versions
        )  # fmt: skip
        for v in versions:
            stored = registry.load(v.version)
            assert all(np.array_equal(stored[n], source[n]) for n in FROZEN)


def test_models_show_names_the_arrays_a_version_trained(run: tuple[Path, str]) -> None:
    out, _ = run
    result = subprocess.run(
        [sys.executable, "-m", "fedretrain.cli", "models", "show", str(out), "champion"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("trained"))
    assert "classifier.0.weight" in line and "features" not in line


def test_a_pretrained_file_that_does_not_fit_stops_the_run_before_it_starts(
    tmp_path: Path, pretrained: Path
) -> None:
    out = tmp_path / "never"
    result = subprocess.run(
        [sys.executable, "-m", "fedretrain", f"task.model.pretrained={pretrained}",
         "train.freeze=[featurez]", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "shape differs, classifier.2.weight: file (5, 64), model (10, 64)" in result.stderr
    assert "task.model.strict=false" in result.stderr
    assert "'featurez' matches no parameter" in result.stderr
    assert not out.exists()
