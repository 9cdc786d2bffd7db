"""adaptation=clustered on Flower's simulation engine (issue 14, item 2): a SINE label flip
that reaches the sites at different periods and reverts at some is served one model per
concept, found from the sites' per-model scores alone, while a site sending impossible scores
is rejected every period and the run goes on. The true concepts come from the scenario's own
schedule; the clusters are compared with them by scikit-learn's adjusted Rand index."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_rand_score

from fedretrain.attacks import attackers

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).parents[2] / "conf" / "scenario" / "sine_staggered.yaml"


@pytest.fixture(scope="module")
def staggered_run(tmp_path_factory: pytest.TempPathFactory, simulate) -> Path:
    return simulate(
        tmp_path_factory.mktemp("clustered"),
        "scenario=sine_staggered",
        "adaptation=clustered",
        "attack=bad_scores",
        "attack.fraction=0.1",
    )


def test_each_concept_gets_its_model_and_each_site_its_concepts(staggered_run: Path) -> None:
    truth = np.array(OmegaConf.load(SCENARIO).scenario.schedule.matrix)
    clusters = pd.read_csv(staggered_run / "clusters.csv")
    summary = json.loads((staggered_run / "summary.json").read_text())
    (liar,) = attackers(truth.shape[0], 0.1, seed=0)  # left out from period 1 on
    scored = 0
    for period in range(1, truth.shape[1]):
        if period in (2, 4, 6, 8):  # a change is scored before the sites move
            continue
        found = clusters[clusters["period"] == period].set_index("site")["cluster"]
        sites = [s for s in found.index if s != liar]
        assert len(sites) == 9
        ari = adjusted_rand_score(truth[sites, period], found[sites])
        assert ari == 1.0 or len(set(truth[sites, period])) == 1, (period, ari)
        scored += 1
    assert scored == 6
    timeline = pd.read_csv(staggered_run / "timeline.csv").set_index("period")
    steady = [p for p in range(1, truth.shape[1]) if p not in (2, 4, 6, 8)]
    assert (timeline.loc[steady, "accuracy"] > 0.85).all()
    assert summary["clusters_serving"] == 2
    # Period 8: sites 0-2 return to the first concept, served again with no training.
    assert timeline.loc[8, "rounds"] == 0
    assert "recurring concept" in timeline.loc[8, "reason"]
    assert summary["site_detection"]["false_alarms"] == 0
    assert (staggered_run / "clusters.png").read_bytes()[:4] == b"\x89PNG"


def test_impossible_scores_are_rejected_and_recorded(staggered_run: Path) -> None:
    rejected = pd.read_csv(staggered_run / "rejections.csv")
    monitor = rejected[rejected["phase"].str.startswith("monitor")]
    assert len(monitor) == 10  # periods 1-10: the query carries several models from period 1
    assert monitor["reason"].str.contains("0 <= correct <= examples").all()
    timeline = pd.read_csv(staggered_run / "timeline.csv")
    assert (timeline.loc[timeline["period"] > 0, "rejected"] == 1).all()
