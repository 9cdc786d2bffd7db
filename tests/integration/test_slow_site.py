"""A site slower than the reply timeout (issue 18, item 7), in a real Flower simulation: each
round goes on without it, records it (phase ``no reply``, naming the timeout), and a reply that
comes late is never counted in a later round. Before, a missing reply left no trace at all.

The timeout must leave honest sites their start-up (Ray workers importing torch in round 1), so
the round waits it out for the slow site: a drill of about a minute, not in the default run
(``pytest -m faults``). One round only: in simulation a slow site's train message holds a Ray
worker while it sleeps, and with as few workers as cores its next messages would hold the
others too, so later waves would time out for every site (a property of the simulation, not
of a deployment, where each site is its own process).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from fedretrain.attacks import attackers

pytestmark = [pytest.mark.integration, pytest.mark.faults]

Simulate = Callable[..., Path]
SITES, ROUNDS, SEED = 3, 1, 0


def test_a_site_slower_than_the_timeout_is_recorded_and_the_rounds_go_on(
    tmp_path: Path, simulate: Simulate
) -> None:
    out = simulate(
        tmp_path / "run",
        "task=sea_mlp",
        f"runtime.num_clients={SITES}",
        f"runtime.workers={SITES}",  # a node per site: the slow one holds up no cohort
        f"runtime.num_rounds={ROUNDS}",
        f"runtime.seed={SEED}",
        "attack=slow",
        "attack.fraction=0.34",
        "attack.delay_s=60",
        "validation.reply_timeout_s=40",
    )
    [slow] = attackers(SITES, 0.34, SEED)
    metrics = pd.read_csv(out / "metrics.csv").set_index("round")
    assert metrics.loc[1:, "train_clients"].tolist() == [SITES - 1] * ROUNDS
    assert metrics.loc[ROUNDS, "accuracy"] > metrics.loc[0, "accuracy"]
    rejections = pd.read_csv(out / "rejections.csv")
    [missing] = rejections[rejections["phase"] == "no reply"].itertuples()
    assert missing.round == 1 and missing.reason.startswith(
        "no train reply within validation.reply_timeout_s=40 s"
    )
    assert (rejections["phase"] != "train").all()  # its late reply was never read
    # Its evaluation (not delayed) came in the last wave: the site was kept, not dropped.
    assert metrics.loc[ROUNDS, "eval_clients"] == SITES
    assert slow in range(SITES)
