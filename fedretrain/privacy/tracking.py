"""The server's view of the sites' privacy spending, from what their train replies report.

Each site's ledger is the record (it lives at the site); a DP-SGD site's train reply says what
it ran (σ, sample rate, steps), what the round cost it and its cumulative ε, and so does its
reply with a period's noisy monitoring statistics (one Gaussian release, recorded in the same
ledger). The server keeps
the latest ε per site, writes every report to ``privacy.csv`` in the run folder (ε over time)
and, for each model version, what it cost each site: the rise of the site's cumulative ε since
the previous version.

The server also keeps its own account (:meth:`EpsilonTracker.audit`): what it asked each site
to run in this run, composed. A site must have run what it was asked, and its cumulative ε can
never be below what this run alone cost it; a reply that breaks either (a ledger reset, edited
or lost mid-run, a site running a smaller σ) is rejected. A site's operator can still lie
consistently about a site's own history before the run: the server cannot see that far.

>>> tracker = EpsilonTracker(path=None, delta=1e-5)
>>> mark = tracker.mark()
>>> tracker.observe(1, None, [EpsilonReport(0, 0.4, 0.4), EpsilonReport(1, 0.5, 0.5)])
>>> tracker.observe(2, None, [EpsilonReport(0, 0.2, 0.6)])
>>> tracker.latest
{0: 0.6, 1: 0.5}
>>> tracker.spent_since(mark)
{0: 0.6, 1: 0.5}
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import asdict, astuple, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fedretrain.privacy.rdp import SampledGaussian, epsilon
from fedretrain.run_logs import restore_rows

if TYPE_CHECKING:  # pandas only to plot: a site's worker imports this module for its types
    import pandas as pd

TRAINING, STATISTICS = "training", "statistics"  # what a site released, in privacy.csv


@dataclass(frozen=True)
class EpsilonReport:
    """What a DP-SGD site's train reply says: who it is, what the round cost it, its
    cumulative ε, and (from sites that say) what it ran and on how many examples."""

    site: int
    spent: float
    epsilon: float
    ran: SampledGaussian | None = None
    examples: int | None = None


@dataclass(frozen=True)
class EpsilonRow:
    """One site's report in one training round."""

    server_round: int
    period: int | None
    site: int
    epsilon_spent: float
    epsilon: float  # the site's cumulative ε at the run's δ after this round
    # What the site ran that round (checked against what the server asked); NaN/0 in files
    # written before the server kept its own account.
    noise_multiplier: float = math.nan
    sample_rate: float = math.nan
    steps: int = 0
    release: str = TRAINING  # or STATISTICS: a period's monitoring statistics

    @property
    def mechanism(self) -> SampledGaussian | None:
        if not self.steps or math.isnan(self.sample_rate):
            return None
        return SampledGaussian(self.noise_multiplier, self.sample_rate, self.steps)


class EpsilonTracker:
    """Latest cumulative ε per site, appended to ``path`` (CSV) as replies come in."""

    def __init__(self, path: Path | None, delta: float) -> None:
        self.path = path
        self.delta = delta
        self.latest: dict[int, float] = {}
        self.rows: list[EpsilonRow] = []
        self._released: set[tuple[int, int | None]] = set()  # (site, period) of statistics
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow([f.name for f in fields(EpsilonRow)])

    def observe(
        self,
        server_round: int,
        period: int | None,
        reports: Iterable[EpsilonReport],
        release: str = TRAINING,
    ) -> None:
        """Record the reports of one round (or one period's statistics) that passed
        :meth:`audit`.

        A period's statistics are released once: a resumed server that asks for them again
        gets the same release, at no new cost, so a second report of them adds no row (the
        site's latest ε is still taken).
        """
        new = []
        for r in reports:
            if release == STATISTICS and self.released(r.site, period):
                self.latest[r.site] = r.epsilon
                continue
            row = EpsilonRow(server_round, period, r.site, r.spent, r.epsilon, release=release)
            if r.ran is not None:
                ran = r.ran
                row = replace(
                    row,
                    noise_multiplier=ran.noise_multiplier,
                    sample_rate=ran.sample_rate,
                    steps=ran.steps,
                )
            new.append(row)
        for row in new:
            self.latest[row.site] = row.epsilon
            if row.release == STATISTICS:
                self._released.add((row.site, row.period))
        self.rows += new
        if self.path is not None and new:
            with self.path.open("a", newline="") as handle:
                csv.writer(handle).writerows(astuple(r) for r in new)

    def restore(self, server_round: int) -> None:
        """Resume: keep the reports of rounds up to ``server_round``, in memory and on disk."""
        if self.path is None:
            return
        # A file begun before the mechanism columns is rewritten with them.
        self.rows = restore_rows(
            self.path, EpsilonRow, lambda r: int(r["server_round"]) <= server_round
        )
        self.latest = {}
        for row in self.rows:
            self.latest[row.site] = row.epsilon
        self._released = {(r.site, r.period) for r in self.rows if r.release == STATISTICS}

    def account(self, site: int, then: SampledGaussian | None = None) -> float:
        """ε at the run's δ of what ``site`` ran in this run (and ``then``, a round not yet
        recorded), by the server's own account."""
        ran = [m for r in self.rows if r.site == site and (m := r.mechanism)]
        return epsilon([*ran, then] if then is not None else ran, self.delta)

    def audit(
        self, report: EpsilonReport, asked: SampledGaussian | None, adds: bool = True
    ) -> str | None:
        """Why a site's report must be rejected, or None.

        ``asked`` is what the server's instruction makes a site with ``report.examples``
        training examples run (:func:`fedretrain.privacy.plan_training`); None: not checked.
        ``adds``: false for a release the server already holds (:meth:`released`), which
        the site sends again at no new cost.
        """
        if asked is not None:
            if report.ran is None:
                return "the reply does not say what DP-SGD ran (σ, sample rate, steps)"
            same = (
                math.isclose(report.ran.noise_multiplier, asked.noise_multiplier, rel_tol=1e-6)
                and math.isclose(report.ran.sample_rate, asked.sample_rate, rel_tol=1e-6)
                and report.ran.steps == asked.steps
            )
            if not same:
                return (
                    f"site {report.site} ran σ={report.ran.noise_multiplier:g}, sample rate "
                    f"{report.ran.sample_rate:.6g}, {report.ran.steps} steps; it was asked for "
                    f"σ={asked.noise_multiplier:g}, {asked.sample_rate:.6g}, {asked.steps} steps"
                )
        floor = self.account(report.site, report.ran if adds else None)
        if report.epsilon < floor * (1 - 1e-9) - 1e-12:
            return (
                f"site {report.site} reports a cumulative ε of {report.epsilon:.6g}, below the "
                f"{floor:.6g} this run alone cost it: its ledger was reset, edited or lost"
            )
        return None

    def released(self, site: int, period: int | None) -> bool:
        """Whether ``site``'s statistics of ``period`` are in the account already."""
        return (site, period) in self._released

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
            import pandas as pd

            plot_epsilon(pd.DataFrame([asdict(r) for r in self.rows]), path)

    def summary(self) -> dict[str, object]:
        """For ``summary.json``: δ and each site's cumulative ε (JSON has no infinity)."""
        return {
            "delta": self.delta,
            "epsilon_by_site": {str(s): _json(e) for s, e in sorted(self.latest.items())},
            "max_epsilon": _json(max(self.latest.values(), default=0.0)),
        }


def plot_epsilon(table: pd.DataFrame, path: Path) -> None:
    """Each site's cumulative ε over server rounds, from the rows of ``privacy.csv``.

    Sites whose curves are the same (sites of equal size spend the same) share one line
    labelled with all of them, instead of hiding each other.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state to touch
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4))
    axis = fig.subplots()
    for sites, (rounds, eps) in same_curves(table).items():
        axis.step(rounds, eps, where="post", marker=".", label=sites)
    axis.set(xlabel="server round", ylabel="cumulative ε", title="privacy spent per site")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(title="sites", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def same_curves(table: pd.DataFrame) -> dict[str, tuple[list[int], list[float]]]:
    """The sites' ε curves, sites with identical curves together, labelled by their ids.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"site": [0, 1, 2, 0, 1, 2], "server_round": [1, 1, 1, 2, 2, 2],
    ...                      "epsilon": [0.5, 0.5, 0.7, 1.0, 1.0, 1.4]})
    >>> same_curves(rows)
    {'0, 1': ([1, 2], [0.5, 1.0]), '2': ([1, 2], [0.7, 1.4])}
    """
    groups: dict[tuple[tuple[int, ...], tuple[float, ...]], list[int]] = {}
    for site, rows in table.groupby("site"):
        key = (
            tuple(int(r) for r in rows["server_round"]),
            tuple(float(e) for e in rows["epsilon"]),
        )
        groups.setdefault(key, []).append(int(site))
    return {_label(sites): (list(rounds), list(eps)) for (rounds, eps), sites in groups.items()}


def _label(sites: list[int]) -> str:
    """``0, 1`` for a few sites, ``0-9 (10)`` for a run of many."""
    if len(sites) > 3 and sites == list(range(sites[0], sites[-1] + 1)):
        return f"{sites[0]}-{sites[-1]} ({len(sites)})"
    return ", ".join(str(s) for s in sites) if len(sites) <= 6 else f"{len(sites)} sites"


def _rise(now: float, before: float) -> float:
    return math.inf if math.isinf(now) else now - before


def _json(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"
