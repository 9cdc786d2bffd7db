"""Does the robust configuration hold up under attack, and does the harness bite?

On the default digits task (10 simulated sites, default config otherwise) the script runs
``fedretrain-simulate`` (as ``python -m fedretrain``) once per scenario and configuration, each
in its own subprocess with a fresh Ray and its own run folder (``hydra.run.dir``), and reads
``summary.json`` and ``metrics.csv`` back. Nothing is tuned here: every run is the default
config plus the overrides shown in the JSON.

Configurations (``--configs``)
    ``trimmed``     ``strategy=fedtrimmedavg`` with validation (``conf/validation/default.yaml``:
                    updates beyond 5x the round's median norm are rejected)
    ``median``      ``strategy=fedmedian`` with validation
    ``fedavg-val``  ``strategy=fedavg`` with validation
    ``plain``       ``strategy=fedavg validation=off``: plain Flower, the control

Scenarios (``--scenarios``; every configuration also gets a clean run, its own baseline)
    ``attack``   ``attack=K attack.fraction=F`` for K in ``--attacks`` (gaussian, sign_flip,
                 scale, with the group's defaults: noise_std 10, -10x, 100x) and F in
                 ``--fractions``. Target for a validated configuration: final accuracy at most
                 2 points (F = 0.1) or 5 points (F = 0.2) below its own clean run. Target for
                 ``plain``: more than 30 points below its clean run, which shows that the
                 attacks are strong enough to matter.
    ``dropout``  ``attack=dropout attack.dropout=0.3`` (every site skips each round with
                 probability 0.3), validated configurations only. Target: at most 1 point
                 below the configuration's clean run, and no round skipped.
    ``quorum``   the same dropout with ``validation.quorum_fraction=0.9``, on the first
                 validated configuration. Target: a round is skipped exactly when fewer than
                 the quorum of sites replied (which sites drop out is recomputed here from
                 ``fedretrain.attacks.drops_out``), at least one round is skipped, and on every
                 skipped round the global evaluation equals the previous round's (same
                 accuracy and macro F1, eval loss within 1e-9): the model was left unchanged.

"Drop" is clean accuracy minus attacked accuracy, in percentage points, so positive means
worse; the accuracy targets are one-sided (an attacked run that ends higher than its clean run
passes). With several ``--seeds`` the accuracies are means over seeds and the drop is the mean
of the per-seed drops; the quorum checks must hold for every seed.

Two simulations run at a time by default (``--jobs``): with fixed seeds, and replies aggregated
in content order, a run's accuracies do not depend on scheduling, only its wall time does.
Flower's telemetry is switched off in the children (``FLWR_TELEMETRY_ENABLED=0``) unless the
environment sets it. Results go to ``benchmarks/results/robustness.json`` with the machine's
description.

Usage
-----
    .venv/bin/python scripts/bench_robustness.py                    # everything, ~10 minutes
    .venv/bin/python scripts/bench_robustness.py --configs trimmed,plain --attacks scale
    .venv/bin/python scripts/bench_robustness.py --scenarios dropout,quorum --configs trimmed
    .venv/bin/python scripts/bench_robustness.py --seeds 0,1,2      # average over seeds
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "robustness.json"
CHILD_TIMEOUT_S = 600

# key: (label, overrides, validated)
CONFIGS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "trimmed": ("fedtrimmedavg+val", ("strategy=fedtrimmedavg",), True),
    "median": ("fedmedian+val", ("strategy=fedmedian",), True),
    "fedavg-val": ("fedavg+val", ("strategy=fedavg",), True),
    "plain": ("fedavg, no val", ("strategy=fedavg", "validation=off"), False),
}
ATTACKS = ("gaussian", "sign_flip", "scale")
SCENARIOS = ("attack", "dropout", "quorum")
ROBUST_MAX_DROP = {0.1: 2.0, 0.2: 5.0}  # attacker share -> largest allowed drop, points
PLAIN_MIN_DROP = 30.0  # plain FedAvg must fall by more than this, points
DROPOUT_MAX_DROP = 1.0
LOSS_TOLERANCE = 1e-9  # eval loss on a skipped round vs the round before
NUMBER = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?")


# ----------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Spec:
    """One scenario for one configuration; run once per seed."""

    scenario: str  # clean, attack, dropout, quorum
    config: str
    attack: str = "none"
    fraction: float = 0.0  # attacker share, or dropout probability
    quorum: float | None = None

    @property
    def name(self) -> str:
        parts = [self.scenario, self.config, self.attack, f"{self.fraction:g}"]
        return "-".join(parts)

    def overrides(self, rounds: int, seed: int, extra: list[str]) -> list[str]:
        out = [*CONFIGS[self.config][1], f"runtime.num_rounds={rounds}", f"runtime.seed={seed}"]
        if self.scenario == "attack":
            out += [f"attack={self.attack}", f"attack.fraction={self.fraction:g}"]
        elif self.scenario in ("dropout", "quorum"):
            out += ["attack=dropout", f"attack.dropout={self.fraction:g}"]
        if self.quorum is not None:
            out.append(f"validation.quorum_fraction={self.quorum:g}")
        return out + extra


@dataclass
class Result:
    """What one simulation left in its run folder."""

    spec: Spec
    seed: int
    overrides: list[str]
    final_accuracy: float
    rejected_replies: int
    skipped_rounds: int
    rows: list[dict[str, Any]]
    rejections: list[dict[str, str]]
    process_wall_s: float
    summary: dict[str, Any] = field(default_factory=dict)


_print_lock = threading.Lock()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """``metrics.csv`` as dicts of numbers (``skipped`` as bool)."""
    rows = []
    with path.open() as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key == "skipped":
                    row[key] = value == "True"
                elif key in ("round", "train_clients", "eval_clients", "eval_examples", "rejected"):
                    row[key] = int(value)
                else:
                    row[key] = float(value) if value != "" else math.nan
            rows.append(row)
    return rows


def simulate(
    spec: Spec, seed: int, rounds: int, extra: list[str], work: Path, index: str
) -> Result:
    """Run ``python -m fedretrain`` with the spec's overrides in a fresh interpreter."""
    run_dir = work / f"{spec.name}-s{seed}"
    overrides = spec.overrides(rounds, seed, extra)
    command = [sys.executable, "-m", "fedretrain", *overrides, f"hydra.run.dir={run_dir}"]
    env = {"FLWR_TELEMETRY_ENABLED": "0", **os.environ}
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = run_dir / "stdout.log"
    start = time.perf_counter()
    with log_file.open("w") as sink:
        done = subprocess.run(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
            timeout=CHILD_TIMEOUT_S, check=False,
        )  # fmt: skip
    wall = time.perf_counter() - start
    summary_file = run_dir / "summary.json"
    if done.returncode != 0 or not summary_file.exists():
        tail = log_file.read_text()[-4000:]
        raise RuntimeError(f"{' '.join(overrides)} failed (rc {done.returncode}):\n{tail}")
    summary = json.loads(summary_file.read_text())
    rejections_file = run_dir / "rejections.csv"
    rejections = []
    if rejections_file.exists():
        with rejections_file.open() as handle:
            rejections = list(csv.DictReader(handle))
    result = Result(
        spec=spec,
        seed=seed,
        overrides=overrides,
        final_accuracy=float(summary["final_accuracy"]),
        rejected_replies=int(summary["rejected_replies"]),
        skipped_rounds=int(summary["skipped_rounds"]),
        rows=read_rows(run_dir / "metrics.csv"),
        rejections=rejections,
        process_wall_s=wall,
        summary=summary,
    )
    with _print_lock:
        print(
            f"  {index:>7} {spec.scenario:<7} {CONFIGS[spec.config][0]:<17} "
            f"{spec.attack:<9} {spec.fraction:<4g} seed {seed}: "
            f"acc {result.final_accuracy:.4f}, {result.rejected_replies:>3} rejected, "
            f"{result.skipped_rounds} skipped, {wall:.1f} s",
            flush=True,
        )
    return result


def run_all(
    specs: list[Spec], seeds: list[int], rounds: int, extra: list[str], jobs: int, work: Path
) -> dict[tuple[Spec, int], Result]:
    """Every spec for every seed, ``jobs`` simulations at a time."""
    tasks = [(spec, seed) for spec in specs for seed in seeds]
    total = len(tasks)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            task: pool.submit(simulate, *task, rounds, extra, work, f"{i + 1}/{total}")
            for i, task in enumerate(tasks)
        }
        return {task: future.result() for task, future in futures.items()}


# ----------------------------------------------------------------------------- checks


def expected_replies(seed: int, num_clients: int, rounds: int, probability: float) -> list[int]:
    """Per round 1..R, how many sites do not drop out (``clients.app`` uses the same draw)."""
    from fedretrain.attacks import drops_out

    return [
        sum(not drops_out(seed, pid, r, probability) for pid in range(num_clients))
        for r in range(1, rounds + 1)
    ]


def quorum_check(result: Result, num_clients: int, quorum: float) -> dict[str, Any]:
    """Skipped exactly below quorum, and the global evaluation unchanged on skipped rounds."""
    from fedretrain.validation import Quorum

    rows = result.rows
    rounds = len(rows) - 1
    replies = expected_replies(result.seed, num_clients, rounds, result.spec.fraction)
    required = Quorum(quorum, 1).required(num_clients)
    expected_skips = [r for r, n in enumerate(replies, start=1) if n < required]
    skipped = [row["round"] for row in rows if row["skipped"]]
    counted = [row["train_clients"] for row in rows[1:]]
    unchanged, max_loss_diff = True, 0.0
    for prev, row in zip(rows, rows[1:], strict=False):
        if not row["skipped"]:
            continue
        diff = abs(row["eval_loss"] - prev["eval_loss"])
        max_loss_diff = max(max_loss_diff, diff)
        same = row["accuracy"] == prev["accuracy"] and row["f1"] == prev["f1"]
        unchanged = unchanged and same and diff <= LOSS_TOLERANCE
    return {
        "quorum_fraction": quorum,
        "required_replies": required,
        "replies_expected_per_round": replies,
        "valid_replies_per_round": counted,
        "skipped_expected": expected_skips,
        "skipped": skipped,
        "skips_match_quorum": skipped == expected_skips and counted == replies,
        "unchanged_on_skipped_rounds": unchanged,
        "max_eval_loss_diff_on_skipped_rounds": max_loss_diff,
        "summary_skipped_rounds": result.skipped_rounds,
    }


# ----------------------------------------------------------------------------- report


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def target_for(spec: Spec) -> tuple[str, float | None]:
    """The target's text and the drop bound it implies (None: not an accuracy target)."""
    validated = CONFIGS[spec.config][2]
    if spec.scenario == "clean":
        return "baseline", None
    if spec.scenario == "quorum":
        return "skip below quorum, model unchanged", None
    if spec.scenario == "dropout":
        return f"drop <= {DROPOUT_MAX_DROP:g}, none skipped", DROPOUT_MAX_DROP
    if not validated:
        return f"drop > {PLAIN_MIN_DROP:g}", PLAIN_MIN_DROP
    bound = ROBUST_MAX_DROP.get(round(spec.fraction, 6))
    return (f"drop <= {bound:g}", bound) if bound is not None else ("none set", None)


def summarise(
    specs: list[Spec],
    seeds: list[int],
    results: dict[tuple[Spec, int], Result],
    num_clients: int,
) -> list[dict[str, Any]]:
    """One row per spec: mean accuracy over seeds, drop vs own clean run, verdict."""
    rows = []
    for spec in specs:
        runs = [results[spec, s] for s in seeds]
        clean = Spec("clean", spec.config)
        drops = [
            100 * (results[clean, s].final_accuracy - results[spec, s].final_accuracy)
            for s in seeds
        ]
        target, bound = target_for(spec)
        row: dict[str, Any] = {
            "scenario": spec.scenario,
            "attack": spec.attack,
            "fraction": spec.fraction,
            "config": spec.config,
            "config_label": CONFIGS[spec.config][0],
            "validated": CONFIGS[spec.config][2],
            "seeds": seeds,
            "final_accuracy": mean([r.final_accuracy for r in runs]),
            "final_accuracy_per_seed": [r.final_accuracy for r in runs],
            "drop_points": None if spec.scenario == "clean" else mean(drops),
            "drop_points_per_seed": None if spec.scenario == "clean" else drops,
            "rejected_replies": mean([r.rejected_replies for r in runs]),
            "skipped_rounds": mean([r.skipped_rounds for r in runs]),
            "target": target,
            "passed": None,
        }
        drop = row["drop_points"]
        if spec.scenario == "attack" and bound is not None:
            row["passed"] = drop <= bound if row["validated"] else drop > bound
        elif spec.scenario == "dropout":
            row["passed"] = drop <= DROPOUT_MAX_DROP and row["skipped_rounds"] == 0
        elif spec.scenario == "quorum":
            checks = [quorum_check(r, num_clients, spec.quorum or 0.0) for r in runs]
            row["quorum_checks"] = checks
            row["passed"] = all(
                c["skips_match_quorum"] and c["unchanged_on_skipped_rounds"] and c["skipped"]
                for c in checks
            )
        rows.append(row)
    return rows


COLUMNS = [  # key, header, format, left-aligned
    ("scenario", "scenario", "{}", True),
    ("attack", "attack", "{}", True),
    ("fraction", "fraction", "{:g}", False),
    ("config_label", "config", "{}", True),
    ("final_accuracy", "final acc", "{:.4f}", False),
    ("drop_points", "drop vs clean (pts)", "{:+.2f}", False),
    ("rejected_replies", "rejected", "{:g}", False),
    ("skipped_rounds", "skipped rounds", "{:g}", False),
    ("target", "target", "{}", True),
    ("passed", "result", "{}", True),
]


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row[key]
    if key == "passed":
        return "-" if value is None else ("PASS" if value else "FAIL")
    if key == "fraction" and row["scenario"] == "clean":
        return "-"
    return "-" if value is None else fmt.format(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """An aligned plain-text table: text left, numbers right."""
    cells = [[cell(row, key, fmt) for key, _, fmt, _ in COLUMNS] for row in rows]
    widths = [
        max(len(head), *(len(c[i]) for c in cells)) for i, (_, head, _, _) in enumerate(COLUMNS)
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.ljust(w) if left else v.rjust(w)
            for v, w, (_, _, _, left) in zip(values, widths, COLUMNS, strict=True)
        ]
        return " | ".join(parts).rstrip()

    out = [line([head for _, head, _, _ in COLUMNS]), "-+-".join("-" * w for w in widths)]
    return "\n".join(out + [line(c) for c in cells])


def verdicts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: how many of its targets it met, and which it missed."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["passed"] is None:
            continue
        entry = out.setdefault(
            row["config"], {"label": row["config_label"], "met": 0, "missed": []}
        )
        if row["passed"]:
            entry["met"] += 1
        else:
            entry["missed"].append(f"{row['scenario']} {row['attack']} {row['fraction']:g}")
    return out


def report(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [
        f"Digits task, {settings['clients']} sites, {settings['rounds']} rounds, "
        f"seeds {settings['seeds']}; final accuracy from summary.json"
        + (" (mean over seeds)." if len(settings["seeds"]) > 1 else "."),
        "drop = own clean run's accuracy minus this run's, in points (positive: worse).",
        "'+val' = conf/validation/default.yaml: updates beyond 5x the round's median norm "
        "are rejected.",
        "rejected = replies rejected or failed (dropped-out sites count as failed).",
    ]
    if settings["extra_overrides"]:
        lines.append(f"extra overrides on every run: {' '.join(settings['extra_overrides'])}")
    lines += [
        "",
        format_table(rows),
        "",
    ]
    for entry in verdicts(rows).values():
        total = entry["met"] + len(entry["missed"])
        missed = "; missed: " + ", ".join(entry["missed"]) if entry["missed"] else ""
        lines.append(f"{entry['label']}: {entry['met']}/{total} targets met{missed}")
    for row in rows:
        for check in row.get("quorum_checks", []):
            lines.append(
                f"quorum {check['quorum_fraction']:g} ({row['config_label']}): needs "
                f"{check['required_replies']} replies; valid replies per round "
                f"{check['valid_replies_per_round']}; skipped rounds {check['skipped']} "
                f"(expected {check['skipped_expected']}); evaluation unchanged on skipped "
                f"rounds: {check['unchanged_on_skipped_rounds']} (max eval-loss diff "
                f"{check['max_eval_loss_diff_on_skipped_rounds']:.1e})"
            )
    return "\n".join(lines)


def reason_counts(rejections: list[dict[str, str]]) -> dict[str, int]:
    """How often each kind of rejection occurred, numbers masked ("update norm # exceeds ...")."""
    kinds = [f"{x['phase']}: " + NUMBER.sub("#", x["reason"]) for x in rejections]
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def machine_info(load_start: tuple[float, ...]) -> dict[str, Any]:
    """What the numbers depend on: cores, versions, time, and how busy the machine was."""
    from importlib.metadata import version

    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "flwr": version("flwr"),
        "ray": version("ray"),
        "loadavg_1_5_15_at_start": list(load_start),
        "loadavg_1_5_15_at_end": list(os.getloadavg()),
    }


# ----------------------------------------------------------------------------- entry point


def build_specs(args: argparse.Namespace) -> list[Spec]:
    """Clean baselines first, then attacks, dropout and the quorum run."""
    configs, scenarios = args.configs, args.scenarios
    validated = [c for c in configs if CONFIGS[c][2]]
    specs = [Spec("clean", c) for c in configs]
    if "attack" in scenarios:
        specs += [
            Spec("attack", c, a, f) for a in args.attacks for f in args.fractions for c in configs
        ]
    if "dropout" in scenarios:
        specs += [Spec("dropout", c, "dropout", args.dropout) for c in validated]
    if "quorum" in scenarios and validated:
        specs.append(Spec("quorum", validated[0], "dropout", args.dropout, args.quorum))
    return specs


def csv_list(choices: tuple[str, ...] | None = None, kind: type = str) -> Any:
    def parse(text: str) -> list[Any]:
        items = [kind(t.strip()) for t in text.split(",") if t.strip()]
        bad = [i for i in items if choices is not None and i not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{bad or text!r}: pick from {choices}")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        type=csv_list(tuple(CONFIGS)),
        default=list(CONFIGS),
        help=f"comma-separated, from {list(CONFIGS)}; the first validated one runs 'quorum'",
    )
    parser.add_argument(
        "--scenarios",
        type=csv_list(SCENARIOS),
        default=list(SCENARIOS),
        help=f"comma-separated, from {list(SCENARIOS)} (clean baselines always run)",
    )
    parser.add_argument(
        "--attacks", type=csv_list(ATTACKS), default=list(ATTACKS), help=f"from {list(ATTACKS)}"
    )
    parser.add_argument(
        "--fractions", type=csv_list(kind=float), default=[0.1, 0.2], help="attacker shares"
    )
    parser.add_argument("--seeds", type=csv_list(kind=int), default=[0], help="e.g. 0,1,2")
    parser.add_argument("--rounds", type=int, default=10, help="server rounds per run")
    parser.add_argument("--dropout", type=float, default=0.3, help="dropout probability")
    parser.add_argument("--quorum", type=float, default=0.9, help="quorum of the quorum run")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra Hydra override for every run, after the scenario's (repeatable), e.g. "
        "attack.noise_std=10; the defaults are what the targets are about",
    )
    parser.add_argument("--jobs", type=int, default=2, help="simulations at a time (1 or 2)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--keep-runs", type=Path, help="keep every run folder under this path")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.jobs < 1:
        parser.error("--rounds and --jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from fedretrain.config import RuntimeConfig

    clients = RuntimeConfig().num_clients
    extra = list(args.override)
    specs = build_specs(args)
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"note: 1-minute load average is {load_start[0]:.2f}")
    print(f"{len(specs) * len(args.seeds)} simulations, {args.jobs} at a time:")
    start = time.perf_counter()
    if args.keep_runs:
        args.keep_runs.mkdir(parents=True, exist_ok=True)
        results = run_all(specs, args.seeds, args.rounds, extra, args.jobs, args.keep_runs)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-robustness-") as tmp:
            results = run_all(specs, args.seeds, args.rounds, extra, args.jobs, Path(tmp))
    wall = time.perf_counter() - start
    settings = {
        "clients": clients,
        "rounds": args.rounds,
        "seeds": args.seeds,
        "configs": {c: {"label": CONFIGS[c][0], "overrides": CONFIGS[c][1]} for c in args.configs},
        "scenarios": args.scenarios,
        "attacks": args.attacks,
        "fractions": args.fractions,
        "dropout": args.dropout,
        "quorum": args.quorum,
        "jobs": args.jobs,
        "extra_overrides": extra,
        "targets": {
            "validated_attack_max_drop_points": {f"{k:g}": v for k, v in ROBUST_MAX_DROP.items()},
            "plain_attack_min_drop_points": PLAIN_MIN_DROP,
            "dropout_max_drop_points": DROPOUT_MAX_DROP,
            "skipped_round_eval_loss_tolerance": LOSS_TOLERANCE,
        },
    }
    rows = summarise(specs, args.seeds, results, clients)
    text = report(rows, settings)
    print("\n" + text + f"\n\n{len(results)} simulations in {wall / 60:.1f} minutes")
    runs = [
        {
            "name": f"{r.spec.name}-s{r.seed}",
            "scenario": r.spec.scenario,
            "config": r.spec.config,
            "seed": r.seed,
            "overrides": r.overrides,
            "final_accuracy": r.final_accuracy,
            "rejected_replies": r.rejected_replies,
            "skipped_rounds": r.skipped_rounds,
            "accuracy_per_round": [row["accuracy"] for row in r.rows],
            "rejected_per_round": [row["rejected"] for row in r.rows],
            "train_clients_per_round": [row["train_clients"] for row in r.rows],
            "skipped_per_round": [row["skipped"] for row in r.rows],
            "rejection_reasons": reason_counts(r.rejections),
            "process_wall_s": round(r.process_wall_s, 2),
        }
        for r in results.values()
    ]
    result = {
        "benchmark": "robustness",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": settings,
        "machine": machine_info(load_start),
        "wall_s": round(wall, 1),
        "summary": rows,
        "verdicts": verdicts(rows),
        "runs": runs,
        "table": text,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nsaved {args.output}")


if __name__ == "__main__":
    main()
