"""The server's view of the sites' privacy spending, from what their train replies report.

Each site's ledger is the record (it lives at the site); a DP-SGD site's train reply says what
the round cost it and its cumulative ε. The server keeps the latest ε per site, writes every
report to ``privacy.csv`` in the run folder (ε over time) and, for each model version, what
it cost each site: the rise of the site's cumulative ε since the previous version.

>>> tracker = EpsilonTracker(path=None, delta=1e-5)
>>> mark = tracker.mark()
>>> tracker.observe(1, None, [(0, 0.4, 0.4), (1, 0.5, 0.5)])
>>> tracker.observe(2, None, [(0, 0.2, 0.6)])
>>> tracker.latest
{0: 0.6, 1: 0.5}
>>> tracker.spent_since(mark)
{0: 0.6, 1: 0.5}
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path

import pandas as pd

from fedretrain.run_logs import cut_csv, from_row


@dataclass(frozen=True)
class EpsilonRow:
    """One site's report in one training round."""

    server_round: int
    period: int | None
    site: int
    epsilon_spent: float
    epsilon: float  # the site's cumulative ε at the run's δ after this round


class EpsilonTracker:
    """Latest cumulative ε per site, appended to ``path`` (CSV) as replies come in."""

    def __init__(self, path: Path | None, delta: float) -> None:
        self.path = path
        self.delta = delta
        self.latest: dict[int, float] = {}
        self.rows: list[EpsilonRow] = []
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow([f.name for f in fields(EpsilonRow)])

    def observe(
        self, server_round: int, period: int | None, reports: Iterable[tuple[int, float, float]]
    ) -> None:
        """Record (site, ε spent, cumulative ε) reports of one round."""
        new = [EpsilonRow(server_round, period, s, spent, eps) for s, spent, eps in reports]
        for row in new:
            self.latest[row.site] = row.epsilon
        self.rows += new
        if self.path is not None and new:
            with self.path.open("a", newline="") as handle:
                csv.writer(handle).writerows(astuple(r) for r in new)

    def restore(self, server_round: int) -> None:
        """Resume: keep the reports of rounds up to ``server_round``, in memory and on disk."""
        if self.path is None:
            return
        kept = cut_csv(self.path, lambda r: int(r["server_round"]) <= server_round)
        self.rows = [from_row(EpsilonRow, r) for r in kept]
        self.latest = {}
        for row in self.rows:
            self.latest[row.site] = row.epsilon

    def mark(self) -> dict[int, float]:
        """The sites' cumulative ε now, to measure a later version's cost against."""
        return dict(self.latest)

    def spent_since(self, mark: dict[int, float]) -> dict[int, float]:
        """How much each site's cumulative ε rose since ``mark`` (sites that trained since)."""
        return {
            site: _rise(eps, mark.get(site, 0.0))
            for site, eps in sorted(self.latest.items())
            if eps != mark.get(site)
        }

    def plot(self, path: Path) -> None:
        """Write each site's ε over rounds to ``path`` (PNG); nothing if no site trained."""
        if self.rows:
            plot_epsilon(pd.DataFrame([asdict(r) for r in self.rows]), path)

    def summary(self) -> dict[str, object]:
        """For ``summary.json``: δ and each site's cumulative ε (JSON has no infinity)."""
        return {
            "delta": self.delta,
            "epsilon_by_site": {str(s): _json(e) for s, e in sorted(self.latest.items())},
            "max_epsilon": _json(max(self.latest.values(), default=0.0)),
        }


def plot_epsilon(table: pd.DataFrame, path: Path) -> None:
    """Each site's cumulative ε over server rounds, from the rows of ``privacy.csv``."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state to touch

    fig = Figure(figsize=(7, 4))
    axis = fig.subplots()
    for site, rows in table.groupby("site"):
        axis.step(rows["server_round"], rows["epsilon"], where="post", marker=".", label=site)
    axis.set(xlabel="server round", ylabel="cumulative ε", title="privacy spent per site")
    axis.grid(alpha=0.3)
    if table["site"].nunique() <= 12:
        axis.legend(title="site", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _rise(now: float, before: float) -> float:
    return math.inf if math.isinf(now) else now - before


def _json(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"
