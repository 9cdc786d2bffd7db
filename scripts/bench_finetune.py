"""Fine-tuning a pretrained model against training from scratch (issue 17, item 1).

The shipped example: ``scripts/pretrain_digits.py`` pretrains the digits CNN centrally on
digits 0 to 4 (a 5-way head), then each arm is ``python -m fedretrain task=digits_5to9 ...``
in its own process (a fresh Ray), 10 simulated sites on digits 5 to 9, for ``--rounds`` rounds:

- ``scratch``: random weights, every array trains;
- ``finetune``: the pretrained file (``task.model.strict=false``: a new 10-way head), every
  array trains;
- ``frozen``: the same with the convolutions frozen (``train.freeze=[features]``);
- ``head``: feature extraction, all but the last layer frozen
  (``train.freeze=[features,classifier.0]``).

Per arm and seed it reads ``metrics.csv`` (the federated accuracy after every round) and the
saved model: the final accuracy, the rounds to reach 95% of it, the rounds to reach 95% of the
``scratch`` arm's final accuracy (one yardstick for every arm), and the bytes a round moves
(the arrays that travel, down to each sampled site and back). Then the medians over seeds and
a verdict per claim. Arms run interleaved (seed by seed, every arm), ``--jobs`` at a time.

    .venv/bin/python scripts/bench_finetune.py                # 3 seeds, about 5 minutes
    .venv/bin/python scripts/bench_finetune.py --seeds 0 --rounds 10

Writes ``benchmarks/results/finetune.json`` (``--output``): settings, machine, every run's
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
from typing import Any

from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "finetune.json"
ARMS = {
    "scratch": [],
    "finetune": ["task.model.pretrained={pre}", "task.model.strict=false"],
    "frozen": ["task.model.pretrained={pre}", "task.model.strict=false", "train.freeze=[features]"],
    "head": [
        "task.model.pretrained={pre}",
        "task.model.strict=false",
        "train.freeze=[features,classifier.0]",
    ],
}


@dataclass
class Run:
    arm: str
    seed: int
    ok: bool = False
    error: str = ""
    accuracy: list[float] = field(default_factory=list)  # after round 0 (initial), 1, 2, ...
    final: float = float("nan")
    to_95_own: int | None = None
    bytes_per_round: float = float("nan")
    trained_arrays: int = 0
    seconds: float = float("nan")


def rounds_to(accuracy: list[float], target: float) -> int | None:
    """The first round (from 1) whose accuracy reaches ``target``; None if none does."""
    return next((r for r, a in enumerate(accuracy) if r >= 1 and a >= target), None)


def simulate(arm: str, seed: int, pretrained: Path, rounds: int) -> Run:
    run = Run(arm, seed)
    overrides = [o.format(pre=pretrained) for o in ARMS[arm]]
    with tempfile.TemporaryDirectory(prefix=f"finetune-{arm}-") as tmp:
        out = Path(tmp) / "run"
        command = [
            sys.executable, "-m", "fedretrain", "task=digits_5to9", *overrides,
            f"runtime.num_rounds={rounds}", f"runtime.seed={seed}", f"hydra.run.dir={out}",
        ]  # fmt: skip
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            run.error = "timed out after 900 s"
            return run
        run.seconds = time.perf_counter() - start
        if result.returncode != 0:
            run.error = (result.stderr or result.stdout)[-2000:]
            return run
        with (out / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        run.accuracy = [float(r["accuracy"]) for r in rows]
        run.final = run.accuracy[-1]
        run.to_95_own = rounds_to(run.accuracy, 0.95 * run.final)
        summary = json.loads((out / "summary.json").read_text())
        model = load_file(out / "model.safetensors")
        trained = summary.get("trained_arrays") or list(model)
        run.trained_arrays = len(trained)
        payload = sum(model[name].nbytes for name in trained)
        sampled = statistics.mean(int(r["train_clients"]) for r in rows[1:])
        run.bytes_per_round = 2 * payload * sampled  # down to each sampled site and back
        run.ok = True
    return run


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per arm, the medians over seeds; rounds to the scratch arm's 95% per seed first."""
    scratch = {r.seed: r.final for r in runs if r.arm == "scratch" and r.ok}
    rows: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        done = [r for r in runs if r.arm == arm and r.ok]
        if not done:
            rows[arm] = {"runs": 0}
            continue
        to_scratch = [
            rounds_to(r.accuracy, 0.95 * scratch[r.seed]) for r in done if r.seed in scratch
        ]
        never = len(done[0].accuracy)  # a run that never got there counts as one round past its end
        rows[arm] = {
            "runs": len(done),
            "final_accuracy": median([r.final for r in done]),
            "rounds_to_95_own": median([float(r.to_95_own or never) for r in done]),
            "rounds_to_95_scratch": median([float(x or never) for x in to_scratch]),
            "megabytes_per_round": median([r.bytes_per_round / 1e6 for r in done]),
            "trained_arrays": done[0].trained_arrays,
        }
    return rows


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'arm':<10}{'runs':>5}{'final acc':>11}{'rounds to 95% own':>19}"
        f"{'rounds to 95% scratch':>23}{'MB/round':>10}{'arrays':>8}"
    )
    lines = [head, "-" * len(head)]
    for arm, row in rows.items():
        if not row["runs"]:
            lines.append(f"{arm:<10}{0:>5}  (every run failed)")
            continue
        lines.append(
            f"{arm:<10}{row['runs']:>5}{row['final_accuracy']:>11.3f}"
            f"{row['rounds_to_95_own']:>19.1f}{row['rounds_to_95_scratch']:>23.1f}"
            f"{row['megabytes_per_round']:>10.3f}{row['trained_arrays']:>8}"
        )
    return "\n".join(lines)


def verdicts(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def get(arm: str, key: str) -> float:
        return float(rows.get(arm, {}).get(key, float("nan")))

    claims = [
        (
            "a full fine-tune reaches scratch's 95% in fewer rounds than scratch",
            get("finetune", "rounds_to_95_scratch"),
            get("scratch", "rounds_to_95_scratch"),
            get("finetune", "rounds_to_95_scratch") < get("scratch", "rounds_to_95_scratch"),
        ),
        (
            "a frozen backbone moves fewer bytes per round than a full fine-tune",
            get("frozen", "megabytes_per_round"),
            get("finetune", "megabytes_per_round"),
            get("frozen", "megabytes_per_round") < get("finetune", "megabytes_per_round"),
        ),
        (
            "a frozen backbone ends within 2 points of a full fine-tune",
            get("frozen", "final_accuracy"),
            get("finetune", "final_accuracy"),
            get("frozen", "final_accuracy") >= get("finetune", "final_accuracy") - 0.02,
        ),
    ]
    return [
        {"claim": c, "value": v, "against": a, "verdict": "MET" if ok else "NOT MET"}
        for c, v, a, ok in claims
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pretrained-") as tmp:
        pretrained = Path(tmp) / "digits_0to4.safetensors"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "pretrain_digits.py"), str(pretrained)],
            check=True,
        )
        jobs = [(arm, seed) for seed in args.seeds for arm in ARMS]  # interleaved, seed by seed
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(
                pool.map(lambda job: simulate(job[0], job[1], pretrained, args.rounds), jobs)
            )
    for run in runs:
        if not run.ok:
            print(f"{run.arm} seed {run.seed} failed: {run.error}", file=sys.stderr)
    rows = summarise(runs)
    printed = table(rows)
    checks = verdicts(rows)
    print(printed)
    print()
    for check in checks:
        print(
            f"{check['verdict']:<8} {check['claim']}: "
            f"{check['value']:.3f} vs {check['against']:.3f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "settings": {"seeds": args.seeds, "rounds": args.rounds, "jobs": args.jobs},
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load_start": load_start,
                    "load_end": os.getloadavg(),
                    "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                },
                "arms": rows,
                "verdicts": checks,
                "runs": [asdict(r) for r in runs],
                "table": printed,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
