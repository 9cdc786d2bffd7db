"""Knowledge preservation on recurring concepts (issue 17, item 3).

Each run is ``python -m fedretrain scenario=S <arm> runtime.seed=K`` in its own process, 10
simulated sites, the default triggered policy (which also offers stored models when a concept
returns, ``retrain.reuse_stored``). Arms:

- ``base``: no knowledge preservation;
- ``rehearsal``: ``retrain.rehearsal_periods=3``, each retrain's sites train on their last
  three earlier windows too (a bounded replay buffer);
- ``memory``: ``release.memory_periods=3 release.forgetting_margin=0.05``, the gate refuses a
  candidate that does worse than the champion on the three earlier periods' holdouts;
- ``both``: the two together;
- ``anchor``: ``retrain.anchor_mu=0.5``, a proximal term anchored at the serving model in
  each retrain's local loss (FedProx's term, with the champion for the anchor).

From the scenario's own schedule it finds each period where a concept returns (a concept seen
before, and not in the period before), and from ``timeline.csv`` reads the prequential
accuracy in that period (the model that served when the concept came back) and in the next
one (after the period's decision), and the training rounds spent in the return period and the
two after it. It also reports the mean prequential accuracy over periods 1.. and all rounds.
The arms run interleaved (seed by seed, every arm), ``--jobs`` at a time.

    .venv/bin/python scripts/bench_forgetting.py                # 2 scenarios x 2 seeds, ~4 min
    .venv/bin/python scripts/bench_forgetting.py --scenarios sea_recurring --seeds 0

Writes ``benchmarks/results/forgetting.json`` (``--output``): settings, machine, every run's
figures and the printed table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "forgetting.json"
SCENARIOS = ("sea_recurring", "circle_recurring")
ARMS = {
    "base": [],
    "rehearsal": ["retrain.rehearsal_periods=3"],
    "memory": ["release.memory_periods=3", "release.forgetting_margin=0.05"],
    "both": [
        "retrain.rehearsal_periods=3",
        "release.memory_periods=3",
        "release.forgetting_margin=0.05",
    ],
    "anchor": ["retrain.anchor_mu=0.5"],
}
SITES = 10


@dataclass
class Run:
    scenario: str
    arm: str
    seed: int
    ok: bool = False
    error: str = ""
    returns: list[int] = field(default_factory=list)
    at_return: list[float] = field(default_factory=list)  # prequential accuracy, return period
    after_return: list[float] = field(default_factory=list)  # ... and the period after it
    return_rounds: list[int] = field(default_factory=list)  # rounds in the return period + 2
    mean_accuracy: float = float("nan")
    rounds: int = 0
    seconds: float = float("nan")


def returns_of(scenario: str, seed: int) -> tuple[list[int], int]:
    """The periods where a concept comes back (at any site), and the number of periods."""
    node = OmegaConf.load(ROOT / "conf" / "scenario" / f"{scenario}.yaml")
    periods = int(node.scenario.num_periods)
    concepts = instantiate(node.scenario.schedule)(
        num_sites=SITES, num_periods=periods, seed=seed
    ).concepts
    found = []
    for t in range(1, periods):
        for s in range(SITES):
            now, before = concepts[s, t], concepts[s, t - 1]
            if now != before and now in concepts[s, :t]:
                found.append(t)
                break
    return found, periods


def simulate(scenario: str, arm: str, seed: int) -> Run:
    run = Run(scenario, arm, seed)
    run.returns, periods = returns_of(scenario, seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"forgetting-{arm}-") as tmp:
        out = Path(tmp) / "run"
        command = [
            sys.executable, "-m", "fedretrain", f"scenario={scenario}", *ARMS[arm],
            f"runtime.seed={seed}", f"runtime.num_clients={SITES}", f"hydra.run.dir={out}",
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        except subprocess.TimeoutExpired:
            run.error = "timed out after 1200 s"
            return run
        run.seconds = round(time.perf_counter() - started, 1)
        if result.returncode != 0:
            run.error = (result.stderr or result.stdout)[-1500:]
            return run
        with (out / "timeline.csv").open() as handle:
            rows = {int(r["period"]): r for r in csv.DictReader(handle)}
        accuracy = {p: float(r["accuracy"]) for p, r in rows.items()}
        rounds = {p: int(r["rounds"]) for p, r in rows.items()}
        for t in run.returns:
            run.at_return.append(accuracy[t])
            run.after_return.append(accuracy.get(t + 1, float("nan")))
            run.return_rounds.append(sum(rounds.get(p, 0) for p in (t, t + 1, t + 2)))
        run.mean_accuracy = float(np.mean([accuracy[p] for p in range(1, periods)]))
        run.rounds = sum(rounds.values())
        run.ok = True
    return run


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.fmean(values) if values else float("nan")


def summarise(runs: list[Run]) -> list[dict[str, object]]:
    rows = []
    for scenario in dict.fromkeys(r.scenario for r in runs):
        for arm in ARMS:
            done = [r for r in runs if r.scenario == scenario and r.arm == arm and r.ok]
            rows.append(
                {
                    "scenario": scenario,
                    "arm": arm,
                    "runs": len(done),
                    "at_return": mean([a for r in done for a in r.at_return]),
                    "after_return": mean([a for r in done for a in r.after_return]),
                    "return_rounds": mean([float(n) for r in done for n in r.return_rounds]),
                    "mean_accuracy": mean([r.mean_accuracy for r in done]),
                    "rounds": mean([float(r.rounds) for r in done]),
                }
            )
    return rows


def table(rows: list[dict[str, object]]) -> str:
    head = (
        f"{'scenario':<18}{'arm':<11}{'runs':>5}{'acc at return':>15}{'acc after':>11}"
        f"{'return rounds':>15}{'mean acc':>10}{'rounds':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['scenario']:<18}{r['arm']:<11}{r['runs']:>5}{r['at_return']:>15.4f}"
            f"{r['after_return']:>11.4f}{r['return_rounds']:>15.1f}{r['mean_accuracy']:>10.4f}"
            f"{r['rounds']:>8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_start = os.getloadavg()
    jobs = [(s, a, k) for k in args.seeds for s in args.scenarios for a in ARMS]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: simulate(*job), jobs))
    for run in runs:
        if not run.ok:
            print(f"{run.scenario} {run.arm} seed {run.seed} failed: {run.error}", file=sys.stderr)
    rows = summarise(runs)
    printed = table(rows)
    print(printed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "settings": {"scenarios": args.scenarios, "seeds": args.seeds, "jobs": args.jobs},
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load_start": load_start,
                    "load_end": os.getloadavg(),
                    "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                },
                "arms": rows,
                "runs": [asdict(r) for r in runs],
                "table": printed,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
