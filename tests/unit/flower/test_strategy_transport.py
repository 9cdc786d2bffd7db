"""What the retrain strategies ask of real sites (issue 17, items 2 and 3), through the real
ClientApp handlers on a grid (no Ray): a transfer round trains the head alone and every other
array comes back as sent; an anchored round carries the serving model and each site's update
is the torch training anchored there; the aggregate is the FedAvg of trainings made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from test_frozen_transport import SITES, SiteGrid

from clients import app
from fedretrain.config import compose, to_yaml
from fedretrain.finetune import anchor_tensors, training_only
from fedretrain.flower.federation import FlowerFederation
from fedretrain.flower.records import ANCHOR_MU_KEY, ANCHOR_RECORD, TRAIN_ONLY_KEY
from fedretrain.flower.strategies import build_strategy
from fedretrain.preflight import to_typed
from fedretrain.report import RunReport
from fedretrain.site import ScenarioFederation, TaskModels
from fedretrain.training import lr_at, train

OVERRIDES = [
    "scenario=sine_flip",
    "scenario.num_periods=3",
    "scenario.schedule.at=[1]",
    f"runtime.num_clients={SITES}",
    "retrain.anchor_mu=0.5",
]
HEAD = ("net.3.weight", "net.3.bias")  # sine_mlp's last layer


def _federation(tmp_path: Path, grid: SiteGrid) -> tuple[FlowerFederation, RunReport, TaskModels]:
    node = compose(OVERRIDES)
    cfg = to_typed(node, build_targets=False)
    models = TaskModels(cfg, (2,), 2)
    report = RunReport(tmp_path, SITES)
    federation = FlowerFederation(
        grid, build_strategy(cfg, report.reject), cfg, to_yaml(node), report,
        num_features=2, num_classes=2, num_rounds=3,
    )  # fmt: skip
    return federation, report, models


def _oracle(federation: FlowerFederation, weights, mu: float = 0.0, anchor=None, only=None):
    """Each site's torch training of ``weights`` on period 1, FedAvg'd by examples."""
    cfg = federation.cfg
    scenario = ScenarioFederation(cfg, SITES)
    updates, counts = [], []
    for site in range(SITES):
        data = scenario.window(site, 1)[0]
        model = scenario.model
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        seed = np.random.SeedSequence([cfg.runtime.seed, site, 1]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        with training_only(model, only):
            a = (
                None
                if anchor is None
                else anchor_tensors(model, {k: torch.from_numpy(v) for k, v in anchor.items()})
            )
            train(
                model,
                data,
                cfg.train,
                lr_at(cfg.train, 1, 3),
                torch.device("cpu"),
                generator,
                mu,
                a,
            )
        updates.append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
        counts.append(len(data))
    return {k: np.average([u[k] for u in updates], axis=0, weights=counts) for k in weights}


def test_the_models_head_is_its_last_layer(tmp_path: Path) -> None:
    _, _, models = _federation(tmp_path, SiteGrid())
    assert models.head == HEAD


def test_a_transfer_round_trains_the_head_alone(tmp_path: Path) -> None:
    grid = SiteGrid()
    federation, report, models = _federation(tmp_path, grid)
    weights = models.fresh(seed=0)
    trained = federation.train_round(1, weights, 1, trainable=frozenset(HEAD))
    assert all(
        list(m.content.config_records["config"][TRAIN_ONLY_KEY]) == sorted(HEAD)
        for m in grid.messages
    )
    assert not report.rejections and trained.sites == SITES
    for reply in grid.replies:  # every array travels back; only the head's changed
        arrays = reply.content.array_records["arrays"].to_numpy_ndarrays()
        for name, array in zip(reply.content.array_records["arrays"], arrays, strict=True):
            assert np.array_equal(array, weights[name]) is (name not in HEAD), name
    expected = _oracle(federation, weights, only=HEAD)
    for name in weights:
        np.testing.assert_allclose(trained.weights[name], expected[name], rtol=1e-5, atol=1e-6)
    # The site's model trains every array again after the round.
    cached = app._scenario(federation.config_yaml, SITES).model
    assert all(p.requires_grad for p in cached.parameters())


def test_an_anchored_round_carries_the_serving_model(tmp_path: Path) -> None:
    grid = SiteGrid()
    federation, report, models = _federation(tmp_path, grid)
    weights, champion = models.fresh(seed=0), models.fresh(seed=1)
    trained = federation.train_round(1, weights, 1, anchor=champion)
    for message in grid.messages:
        assert message.content.config_records["config"][ANCHOR_MU_KEY] == 0.5
        record = message.content.array_records[ANCHOR_RECORD]
        sent = dict(zip(record, record.to_numpy_ndarrays(), strict=True))
        assert all(np.array_equal(sent[k], champion[k]) for k in champion)
    assert not report.rejections
    expected = _oracle(federation, weights, mu=0.5, anchor=champion)
    unanchored = _oracle(federation, weights)
    for name in weights:
        np.testing.assert_allclose(trained.weights[name], expected[name], rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(expected[k], unanchored[k]) for k in weights)
