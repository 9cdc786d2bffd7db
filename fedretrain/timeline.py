"""What a drift-scenario run leaves in its folder: one row per monitoring period.

``timeline.csv`` gets a row as each period ends (a killed run keeps what it did),
``decisions.jsonl`` every trigger decision with its causes and the detectors' evidence, and at
the end ``timeline.png`` (prequential accuracy over time, true change points and retrains
marked) and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from fedretrain.monitor.scoring import score_detections, score_sites
from fedretrain.report import print_summary
from fedretrain.run_logs import append_row, cut_jsonl, restore_rows


@dataclass(frozen=True)
class PeriodRow:
    period: int
    accuracy: float  # prequential: the serving model on this period's data, before training
    mean_loss: float
    mean_confidence: float
    samples: int
    sites: int  # sites whose statistics were accepted
    rejected: int  # sites whose statistics were rejected or that failed
    change_point: bool  # a true change point of the scenario (simulation knowledge)
    alarms: str  # detectors that fired, ';'-separated
    alarm_sites: str  # sites they named
    retrain: bool
    reason: str
    action: str  # serve, initial, warm, reinit, reuse vN, kept
    rounds: int  # training rounds spent this period
    serving_version: int
    validation_accuracy: float  # of the model chosen this period (nan when no retrain)
    seconds: float
    max_epsilon: float = math.nan  # DP-SGD: the largest cumulative ε of any site so far
    # policy.windows: "wait" (the trigger fired and waits), "pending" (an earlier one still
    # waits), "waited" (a trigger that waited retrains now); "" otherwise.
    schedule: str = ""


class Timeline:
    """Collects the period rows and decisions of one run folder."""

    def __init__(self, run_dir: Path, num_periods: int, out: TextIO = sys.stdout) -> None:
        self.run_dir = run_dir
        self.num_periods = num_periods
        self.out = out
        self._rows: list[PeriodRow] = []
        self._start = time.perf_counter()
        run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def rows(self) -> list[PeriodRow]:
        return list(self._rows)

    def restore(self, completed_period: int) -> None:
        """Resume: keep the periods up to ``completed_period``, in memory and on disk."""
        self._rows = restore_rows(
            self.run_dir / "timeline.csv", PeriodRow, lambda r: int(r["period"]) <= completed_period
        )
        cut_jsonl(self.run_dir / "decisions.jsonl", lambda d: d["period"] <= completed_period)

    def decision(self, record: dict[str, Any]) -> None:
        with (self.run_dir / "decisions.jsonl").open("a") as handle:
            handle.write(json.dumps(record, default=_jsonable) + "\n")

    def add(self, row: PeriodRow) -> None:
        self._rows.append(row)
        append_row(self.run_dir / "timeline.csv", row)
        flag = " *change*" if row.change_point else ""
        alarm = f" | ALARM {row.alarms}" if row.alarms else ""
        what = f" | {row.action}, {row.rounds} rounds" if row.rounds or row.retrain else ""
        print(
            f"[fedretrain] period {row.period:>3}/{self.num_periods - 1}{flag} | "
            f"acc {row.accuracy:.4f} | {row.sites} sites{alarm}{what} | "
            f"serving v{row.serving_version} | {row.seconds:.1f} s",
            file=self.out,
            flush=True,
        )

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(r) for r in self._rows])

    def finish(
        self,
        change_points: list[int] | None,
        extra: dict[str, Any],
        site_changes: Mapping[int, Sequence[tuple[int, int]]] | None = None,
    ) -> dict[str, Any]:
        """Write the plot and ``summary.json``, print the summary, and return it.

        ``change_points`` None: the true change points are unknown (a deployment), so the
        summary scores no detections (every alarm would count as false). ``site_changes``:
        each site's ``(period, concept)`` changes, scored site by site.
        """
        table = self.table()
        summary: dict[str, Any] = {
            **summarize_timeline(
                table,
                change_points or [],
                self.num_periods,
                None if change_points is None else site_changes,
            ),
            "wall_seconds": round(time.perf_counter() - self._start, 2),
            **extra,
        }
        if change_points is None:
            for key in ("change_points", "detection_delays", "missed_changes", "false_alarms"):
                del summary[key]
        plot_timeline(table, change_points or [], self.run_dir / "timeline.png")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        print_summary(summary, self.out)
        return summary


def summarize_timeline(
    table: pd.DataFrame,
    change_points: list[int],
    num_periods: int,
    site_changes: Mapping[int, Sequence[tuple[int, int]]] | None = None,
) -> dict[str, Any]:
    """The summary of a scenario run from its period rows (``table()`` or ``timeline.csv``).

    ``change_points`` are the periods where any site changed, scored against the retrains.
    With ``site_changes`` (site -> its ``(period, concept)`` changes) the monitor's alarms are
    also scored site by site (``site_detection``): a change at one site is detected by an
    alarm that named that site, which on a staggered schedule is the honest count. Timings and
    the run's settings are not in the rows; :meth:`Timeline.finish` adds them.
    """
    if table.empty:
        raise ValueError("no period rows to summarise")
    served = table[table["period"] > 0]
    retrains = [int(p) for p in served.loc[served["retrain"], "period"]]
    score = score_detections(change_points, retrains, num_periods)
    final, final_of = final_accuracy(table)
    summary: dict[str, Any] = {
        "periods": num_periods,
        "mean_prequential_accuracy": float(served["accuracy"].mean()),
        "final_accuracy": final,
        "final_accuracy_of": final_of,
        "initial_rounds": int(table.loc[table["period"] == 0, "rounds"].sum()),
        "retrain_rounds": int(served["rounds"].sum()),
        "retrains": len(retrains),
        "retrain_periods": retrains,
        "change_points": list(change_points),
        "detection_delays": score.delays,
        "missed_changes": score.missed,
        "false_alarms": score.false_alarms,
        "alarm_periods": [int(p) for p in served.loc[served["alarms"] != "", "period"]],
        "rejected_statistics": int(table["rejected"].sum()),
    }
    if site_changes is not None:
        alarms: dict[int, list[int]] = {}
        for period, sites in zip(served["period"], served["alarm_sites"], strict=True):
            for site in str(sites).split(";") if isinstance(sites, str) and sites else ():
                alarms.setdefault(int(site), []).append(int(period))
        by_site = score_sites(site_changes, alarms, num_periods)
        summary["site_detection"] = by_site.to_dict()
        summary["site_detection_by_site"] = by_site.by_site_dict()
    return summary


def final_accuracy(table: pd.DataFrame) -> tuple[float, str]:
    """The accuracy of the model that serves at the end, and what it was measured on.

    The last period with data decides. If that period promoted a new model, the new model's
    validation on that period's holdouts (its prequential score was the old model's); otherwise
    the serving model's prequential accuracy on that period's new data. Periods without data
    (a deployed site with no new files) have no accuracy and are passed over.

    >>> rows = pd.DataFrame({"period": [0, 1, 2], "samples": [10, 10, 0],
    ...     "accuracy": [0.9, 0.04, float("nan")], "serving_version": [1, 2, 2],
    ...     "retrain": [True, True, False], "validation_accuracy": [0.9, 1.0, float("nan")],
    ...     "action": ["initial", "warm", "serve"]})
    >>> final_accuracy(rows)
    (1.0, 'v2 on the holdouts of period 1 (promoted in that period)')
    >>> rejected = ["initial", "warm, rejected", "serve"]
    >>> final_accuracy(rows.assign(serving_version=[1, 1, 1], action=rejected))
    (0.04, 'v1 on the new data of period 1 (prequential)')
    """
    with_data = table[table["samples"] > 0]
    if with_data.empty:
        return math.nan, "no period had data"
    last = with_data.iloc[-1]
    position = table.index.get_loc(last.name)
    before = table.iloc[position - 1]["serving_version"] if position else None
    version, period = int(last["serving_version"]), int(last["period"])
    promoted = (
        bool(last["retrain"])
        and version != before
        and not str(last["action"]).endswith(", rejected")
        and math.isfinite(float(last["validation_accuracy"]))
    )
    if promoted:
        where = f"the holdouts of period {period} (promoted in that period)"
        return float(last["validation_accuracy"]), f"v{version} on {where}"
    served = before if before is not None else version
    return float(
        last["accuracy"]
    ), f"v{int(served)} on the new data of period {period} (prequential)"


_TEXT_COLUMNS = ("alarms", "alarm_sites", "reason", "action")


def read_timeline(path: Path) -> pd.DataFrame:
    """The period rows of a ``timeline.csv`` as :meth:`Timeline.table` had them.

    Empty text cells come back as ``""`` (not NaN) and the flags as booleans; columns added to
    :class:`PeriodRow` since the file was written take their defaults.
    """
    table = pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS})
    for field in fields(PeriodRow):
        if field.name not in table.columns:
            if field.default is MISSING:
                raise ValueError(f"{path} has no column {field.name!r}")
            table[field.name] = field.default
    for column in _TEXT_COLUMNS:
        table[column] = table[column].fillna("")
    for column in ("change_point", "retrain"):
        table[column] = table[column].astype(bool)
    return table


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def plot_timeline(table: pd.DataFrame, change_points: list[int], path: Path) -> None:
    """Prequential accuracy per period; true change points dashed, retrains marked."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state to touch
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    axis = fig.subplots()
    axis.plot(table["period"], table["accuracy"], marker="o", label="prequential accuracy")
    for i, point in enumerate(change_points):
        label = "true change point" if i == 0 else None
        axis.axvline(point, color="grey", linestyle="--", alpha=0.7, label=label)
    retrained = table[table["retrain"] & (table["period"] > 0)]
    axis.scatter(
        retrained["period"],
        retrained["accuracy"],
        color="red",
        zorder=3,
        s=60,
        marker="^",
        label="retrain triggered",
    )
    axis.set(xlabel="monitoring period", ylabel="accuracy", ylim=(0, 1.02))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # periods: no 0.5 ticks
    axis.set_title("served model, scored on each period before training on it")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
