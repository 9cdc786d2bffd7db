"""What a run leaves in its folder and shows in the terminal.

One row per server round goes to ``metrics.csv`` as soon as the round ends (so a killed run
keeps what it did), a progress line goes to the terminal, and at the end ``metrics.png`` and
``summary.json`` are written and a one-screen summary is printed.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import TextIO

import pandas as pd

from fedretrain.metrics import scores
from fedretrain.run_logs import append_row, cut_csv, restore_rows
from fedretrain.training import EvalResult
from fedretrain.validation import DECLINE_PHASES, Rejection


@dataclass(frozen=True)
class RoundRow:
    round: int
    train_loss: float
    eval_loss: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    train_clients: int
    eval_clients: int
    eval_examples: int
    seconds: float
    rejected: int = 0  # replies that failed validation or came back as errors
    skipped: bool = False  # below quorum: the model was left as it was
    declined: int = 0  # sites that declined to train: privacy budget, or no data this period

    @classmethod
    def from_eval(
        cls,
        server_round: int,
        evaluation: EvalResult | None,
        train_loss: float,
        train_clients: int,
        eval_clients: int,
        seconds: float,
    ) -> RoundRow:
        if evaluation is None or evaluation.num_examples == 0:
            nan = math.nan
            return cls(
                server_round, train_loss, nan, nan, nan, nan, nan, train_clients, 0, 0, seconds
            )
        s = scores(evaluation.confusion)
        return cls(
            round=server_round,
            train_loss=train_loss,
            eval_loss=evaluation.loss_sum / evaluation.num_examples,
            accuracy=s.accuracy,
            precision=s.precision,
            recall=s.recall,
            f1=s.f1,
            train_clients=train_clients,
            eval_clients=eval_clients,
            eval_examples=evaluation.num_examples,
            seconds=seconds,
        )


class RunReport:
    """Collects round rows for one run folder."""

    def __init__(self, run_dir: Path, num_rounds: int, out: TextIO = sys.stdout) -> None:
        self.run_dir = run_dir
        self.num_rounds = num_rounds
        self.out = out
        self._rows: list[RoundRow] = []
        self._rejections: list[Rejection] = []
        self._start = time.perf_counter()
        run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def rows(self) -> list[RoundRow]:
        return list(self._rows)

    def restore(self, server_round: int, keep: Callable[[Rejection], bool]) -> None:
        """Resume: keep the rows of rounds up to ``server_round`` and the rejections ``keep``
        accepts, in memory and on disk (a killed run may have written later ones)."""
        self._rows = restore_rows(
            self.run_dir / "metrics.csv", RoundRow, lambda r: int(r["round"]) <= server_round
        )

        def rejection(row: dict[str, str]) -> Rejection:
            return Rejection(int(row["round"]), row["phase"], int(row["node_id"]), row["reason"])

        kept = cut_csv(self.run_dir / "rejections.csv", lambda r: keep(rejection(r)))
        self._rejections = [rejection(r) for r in kept]

    @property
    def rejections(self) -> list[Rejection]:
        return list(self._rejections)

    def reject(self, rejection: Rejection) -> None:
        """Record a reply that did not reach aggregation, or a skipped round, in rejections.csv."""
        path = self.run_dir / "rejections.csv"
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["round", "phase", "node_id", "reason"])
            writer.writerow(
                [rejection.server_round, rejection.phase, rejection.node_id, rejection.reason]
            )
        self._rejections.append(rejection)

    def rejected(self, server_round: int, phase: str) -> int:
        """Replies of ``server_round`` and ``phase`` that were failed or rejected."""
        return sum(
            r.server_round == server_round and r.phase == phase and r.node_id != 0
            for r in self._rejections
        )

    def rejected_nodes(self, server_round: int, phase: str) -> set[int]:
        """The nodes whose replies of ``server_round`` and ``phase`` were failed or rejected."""
        return {
            r.node_id
            for r in self._rejections
            if r.server_round == server_round and r.phase == phase and r.node_id != 0
        }

    def add(self, row: RoundRow) -> None:
        this_round = [r for r in self._rejections if r.server_round == row.round]
        declined = sum(r.phase in DECLINE_PHASES for r in this_round)
        rejected = sum(r.node_id != 0 for r in this_round) - declined
        skipped = any(r.node_id == 0 for r in this_round)
        row = replace(row, rejected=rejected, skipped=skipped, declined=declined)
        self._rows.append(row)
        append_row(self.run_dir / "metrics.csv", row)
        of = f"/{self.num_rounds}" if self.num_rounds else ""  # 0: rounds run to a plateau
        label = "initial model" if row.round == 0 else f"round {row.round}{of}"
        train = "" if math.isnan(row.train_loss) else f"train loss {row.train_loss:.4f} | "
        flags = (
            (f" | {row.rejected} rejected" if row.rejected else "")
            + (f" | {row.declined} declined (rejections.csv says why)" if row.declined else "")
            + (" | SKIPPED: below quorum" if row.skipped else "")
        )
        print(
            f"[fedretrain] {label:>13} | {train}eval loss {row.eval_loss:.4f} | "
            f"acc {row.accuracy:.4f} | macro F1 {row.f1:.4f} | "
            f"{row.train_clients} trained, {row.eval_clients} evaluated | {row.seconds:.1f} s"
            f"{flags}",
            file=self.out,
            flush=True,
        )

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(r) for r in self._rows])

    def plot(self) -> None:
        """``metrics.png``, of the rounds so far (none: nothing to draw)."""
        table = self.table()
        if not table.empty:
            plot_metrics(table, self.run_dir / "metrics.png")

    def finish(self, extra: dict[str, object]) -> dict[str, object]:
        """Write the plot and ``summary.json``, print the summary, and return it."""
        table = self.table()
        summary: dict[str, object] = {
            **summarize_rounds(table),
            "wall_seconds": round(time.perf_counter() - self._start, 2),
            **extra,
        }
        self.plot()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        print_summary(summary, self.out)
        return summary


def summarize_rounds(table: pd.DataFrame) -> dict[str, object]:
    """The summary of a run from its round rows (:meth:`RunReport.table` or ``metrics.csv``).

    Timings and the run's settings are not in the rows; :meth:`RunReport.finish` adds them.
    """
    if table.empty:
        raise ValueError("no round rows to summarise")
    first, last = table.iloc[0], table.iloc[-1]
    best = table.loc[table["accuracy"].idxmax()] if table["accuracy"].notna().any() else None
    return {
        "rounds": int(last["round"]),
        "initial_accuracy": float(first["accuracy"]),
        "final_accuracy": float(last["accuracy"]),
        "final_precision": float(last["precision"]),
        "final_recall": float(last["recall"]),
        "final_f1": float(last["f1"]),
        "final_eval_loss": float(last["eval_loss"]),
        "best_accuracy": None if best is None else float(best["accuracy"]),
        "best_round": None if best is None else int(best["round"]),
        "rejected_replies": int(table["rejected"].sum()),
        "declined_trainings": int(table["declined"].sum()),
        "skipped_rounds": int(table["skipped"].sum()),
    }


def read_rounds(path: Path) -> pd.DataFrame:
    """The round rows of a ``metrics.csv`` as :meth:`RunReport.table` had them.

    Columns added to :class:`RoundRow` since the file was written take their defaults.
    """
    table = pd.read_csv(path)
    for field in fields(RoundRow):
        if field.name not in table.columns:
            if field.default is MISSING:
                raise ValueError(f"{path} has no column {field.name!r}")
            table[field.name] = field.default
    table["skipped"] = table["skipped"].astype(bool)
    return table


# Summary entries too long for one screen; summary.json has them.
NOT_PRINTED = frozenset({"site_detection_by_site"})


def print_summary(summary: dict[str, object], out: TextIO) -> None:
    """The one-screen summary at the end of a run; ``summary.json`` holds every value whole."""
    shown_items = [(k, v) for k, v in summary.items() if k not in NOT_PRINTED]
    width = max(len(k) for k, _ in shown_items)
    lines = ["", "fedretrain summary", "-" * 40]
    for key, value in shown_items:
        lines.append(f"{key:<{width}}  {shown(value)}")
    lines.append("-" * 40)
    print("\n".join(lines), file=out, flush=True)


def shown(value: object) -> str:
    """A summary value as a person reads it: floats to 4 places, a per-site map of numbers as
    its range when it is long, a nested record as ``key value`` pairs.

    >>> shown(0.123456), shown(None), shown([1, 2])
    ('0.1235', 'None', '[1, 2]')
    >>> shown({"0": 7.97, "1": 8.5})
    '0: 7.9700, 1: 8.5000'
    >>> shown({str(s): 7.0 + s / 10 for s in range(10)})
    '7.0000 (site 0) to 7.9000 (site 9), 10 sites'
    >>> shown({str(s): 43.06 for s in range(10)})
    '43.0600 at each of 10 sites'
    >>> shown({"delta": 1e-05, "epsilon_by_site": {"0": 7.97, "1": 8.5}, "max_epsilon": 8.5})
    'delta 1e-05 | epsilon_by_site 0: 7.9700, 1: 8.5000 | max_epsilon 8.5000'
    """
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if not isinstance(value, dict) or not value:
        return str(value)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in value.values())
    if numbers and len(value) > 4:
        low = min(value, key=lambda k: value[k])
        high = max(value, key=lambda k: value[k])
        if value[low] == value[high]:
            return f"{shown(float(value[low]))} at each of {len(value)} sites"
        return (
            f"{shown(float(value[low]))} (site {low}) to {shown(float(value[high]))} "
            f"(site {high}), {len(value)} sites"
        )
    if numbers:
        return ", ".join(f"{k}: {shown(v)}" for k, v in value.items())
    return " | ".join(f"{k} {shown(v)}" for k, v in value.items())


def plot_metrics(table: pd.DataFrame, path: Path) -> None:
    """Accuracy, macro F1 and losses per round, side by side."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state to touch
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(table["round"], table["accuracy"], marker="o", label="accuracy")
    left.plot(table["round"], table["f1"], marker="s", label="macro F1")
    left.set(xlabel="server round", ylabel="score", ylim=(0, 1.02), title="federated evaluation")
    left.legend()
    right.plot(table["round"], table["eval_loss"], marker="o", label="eval loss")
    right.plot(table["round"], table["train_loss"], marker="s", label="train loss")
    right.set(xlabel="server round", ylabel="cross-entropy", title="loss")
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds: no 0.5 ticks
    fig.tight_layout()
    fig.savefig(path, dpi=100)
