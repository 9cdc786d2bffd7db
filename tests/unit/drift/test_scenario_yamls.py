"""Every conf/scenario YAML: its stream and schedule build, produce windows, and fit its task."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedretrain.drift.schedule import Schedule
from fedretrain.drift.streams import DriftStream, sample_window
from fedretrain.site import factory_node

CONF = Path(__file__).resolve().parents[3] / "conf"
# deployed.yaml reads site folders: tests/unit/deploy and tests/integration/test_deploy_e2e.py
SCENARIOS = sorted(
    p for p in (CONF / "scenario").glob("*.yaml") if p.stem not in ("none", "deployed")
)
KEYS = {"name", "stream", "schedule", "num_periods", "samples_per_period"}
NUM_SITES = 10

# What each scenario should do with 10 sites: (change points, sites affected at the first one).
EXPECTED = {
    "circle_recurring": ([4, 7, 10], list(range(10))),
    "circle_shift": ([5], list(range(10))),
    "digits_rotation_partial": ([5], [0, 1, 2]),
    "digits_swap": ([5], list(range(10))),
    "sea_covariate_partial": ([5], [0, 1, 2]),
    "sea_prior_shift": ([5], list(range(10))),
    "sea_recurring": ([4, 8], list(range(10))),
    "sea_staggered": (list(range(2, 12)), [0]),
    "sea_thresholds": ([3, 6, 9], list(range(10))),
    "sine_flip": ([5], list(range(10))),
    "sine_gradual": (list(range(1, 10)), list(range(10))),
    "stationary": ([], []),
}


def test_every_scenario_is_found() -> None:
    assert len(SCENARIOS) >= 12, [p.name for p in SCENARIOS]


def build(path: Path) -> tuple[Any, DriftStream, Schedule]:
    node: Any = OmegaConf.load(path)
    scenario = node.scenario
    stream = instantiate(scenario.stream)
    schedule = instantiate(scenario.schedule)(
        num_sites=NUM_SITES, num_periods=scenario.num_periods, seed=0
    )
    return node, stream, schedule


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_builds_and_draws_windows(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# @package _global_\n# ")  # then one line on what drifts, when
    node, stream, schedule = build(path)
    # A scenario may also pick the optimizer its task learns with (circle_shift: Adam).
    assert {"defaults", "scenario"} <= set(node) <= {"defaults", "scenario", "train"}
    assert set(node.scenario) == KEYS
    assert node.scenario.name == path.stem
    assert isinstance(stream, DriftStream) and isinstance(schedule, Schedule)
    assert schedule.concepts.shape == (NUM_SITES, node.scenario.num_periods)
    assert max(schedule.used_concepts) < stream.num_concepts
    assert len(schedule.used_concepts) >= (1 if path.stem == "stationary" else 2)
    n = node.scenario.samples_per_period
    last = schedule.num_periods - 1
    for site in (0, NUM_SITES - 1):
        for period in (0, last):
            window = sample_window(stream, schedule, site, period, n, seed=0)
            assert len(window) == n and window.input_shape == stream.input_shape
    if path.stem in EXPECTED:
        points, sites = EXPECTED[path.stem]
        assert schedule.change_points() == points
        assert not points or schedule.affected_sites(points[0]) == sites


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_task_model_fits_the_stream(path: Path) -> None:
    node, stream, schedule = build(path)
    task = next(d["override /task"] for d in node.defaults if "override /task" in d)
    task_node = OmegaConf.load(CONF / "task" / f"{task}.yaml")
    torch.manual_seed(0)
    model = instantiate(factory_node(task_node.model))(
        input_shape=stream.input_shape, num_classes=stream.num_classes
    )
    window = sample_window(stream, schedule, 0, 0, 8, seed=0)
    logits = model(torch.from_numpy(window.x))
    assert logits.shape == (8, stream.num_classes)


def test_random_scenario_is_seeded_by_the_run_seed() -> None:
    path = CONF / "scenario" / "sea_random.yaml"
    scenario: Any = OmegaConf.load(path)
    scenario = scenario.scenario
    make = instantiate(scenario.schedule)
    a, b = (make(num_sites=10, num_periods=12, seed=s).concepts for s in (0, 1))
    np.testing.assert_array_equal(a, make(num_sites=10, num_periods=12, seed=0).concepts)
    assert (a != b).any()
