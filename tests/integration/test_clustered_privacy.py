"""adaptation=clustered under DP-SGD on Flower's simulation engine (issue 14, item 6): the sites
whose concept changes get a model of their own, trained by them alone, so only their ledgers
hold its rounds; every site's ledger holds each period's statistics, and the per-model scores
of every period in which more than one model is live."""

import json
from pathlib import Path

import pandas as pd
import pytest

from fedretrain.privacy import PrivacyLedger

pytestmark = pytest.mark.integration

# Sites 0-1 flip at period 2; sites 2-3 never.
MATRIX = "[[0,0,1,1],[0,0,1,1],[0,0,0,0],[0,0,0,0]]"


def test_a_clusters_rounds_are_in_its_own_sites_ledgers_only(tmp_path: Path, simulate) -> None:
    run = simulate(
        tmp_path / "run",
        "scenario=sine_staggered",
        "adaptation=clustered",
        "privacy=dpsgd",
        "runtime.num_clients=4",
        "scenario.num_periods=4",
        f"scenario.schedule.matrix={MATRIX}",
    )
    ledgers = {s: PrivacyLedger.load(run / "privacy" / f"site-{s}.json") for s in range(4)}
    trained = {
        s: {e.tag.split(" request ")[0] for e in ledger.entries if e.tag.startswith("round")}
        for s, ledger in ledgers.items()
    }
    clusters = pd.read_csv(run / "clusters.csv")
    last = clusters[clusters["period"] == 3].set_index("site")["cluster"]
    assert last[0] == last[1] != last[2] == last[3], last  # the flipped sites' own model
    # Rounds of the new concept's model: at sites 0 and 1 only, never at 2 and 3.
    theirs = (trained[0] & trained[1]) - (trained[2] | trained[3])
    assert theirs and trained[0] == trained[1] and trained[2] == trained[3]
    assert not (trained[2] | trained[3]) - (trained[0] & trained[1])
    for s, ledger in ledgers.items():
        tags = [e.tag.split(" request ")[0] for e in ledger.entries]
        assert [f"period {p} statistics" for p in range(4)] == [
            t for t in tags if t.endswith("statistics")
        ]
        assert "period 3 model scores" in tags, (s, tags)  # two models live in period 3
    # The server's view agrees with each site's: sites 0-1 spent more.
    eps = json.loads((run / "summary.json").read_text())["privacy"]["epsilon_by_site"]
    for s, ledger in ledgers.items():
        assert eps[str(s)] == pytest.approx(ledger.epsilon(1e-5), rel=1e-6)
    assert min(eps["0"], eps["1"]) > max(eps["2"], eps["3"])
