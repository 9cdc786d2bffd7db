"""How well is the drift monitor calibrated, and how fast does it see drift?

In process, no Flower: the script plays the controller's monitoring loop (``server/controller.py``)
against simulated sites that compute their statistics as ``clients/app.py``'s
``monitor_handler`` does, with the real pieces: ``window_stats``, ``HistogramEdges.from_moments``
on the pooled period-0 statistics, the detectors that ``conf/monitor/default.yaml`` configures
(built by ``build_detectors``, so they share the false-alarm budget), the ``Monitor`` and the
default ``triggered`` ``TriggerPolicy`` (retrain on any drift alarm, then ``policy.trained`` and
``monitor.reset``, as the controller does).

Data: ``SeaStream`` (``x ~ U[0, 10]^3``, ``y = x0 + x1 > theta``), 10 sites x 100 samples per
period. The serving model is fixed, independent of training: the Bayes classifier of concept 0
(theta 8) whose every prediction is flipped with probability ``--model-error`` (0.10), with
probabilities 0.9 / 0.1 on its prediction and log loss. Period 0 fixes the histogram edges; the
monitor is reset after it, so the first statistics it sees are period 1's, and its reference is
periods ``1 .. reference_periods``.

Scenarios (each trial its own seed; change at period 10; the wait is capped at 20 periods)
    ``stationary``  concept 0 everywhere for ``--stationary-periods`` periods; every alarm is a
                    false retrain trigger (the monitor is reset and goes on). Target: at most 1
                    in the first run of 1,000 periods; further runs give the mean rate.
    ``abrupt``      every site switches to theta 9: the fixed model's global error rises by
                    about 6.8 points (measured and printed). Target: median delay 0, p90 <= 1.
    ``local``       sites 0-2 of 10 switch to theta 10.75: their error rises by about 20
                    points, the global error by about 6. Target: delay <= 1 (median and p90).
    ``covariate``   sites 0-2 draw x through ``power: 2.0`` (mass pushed to the low end),
                    labels by the same rule: the error does not move, only P(x) does.
                    Target: median <= 1, p90 <= 5.

Delay = first alarm period - change period; an alarm before the change is a false alarm (the
monitor is reset and the trial goes on, as the controller would); no alarm within the cap is a
miss, counted as an infinite delay in the percentiles. ``--variant ARL:RP`` (repeatable) reruns
every scenario with other ``arl`` / ``reference_periods`` values, as extra, labelled rows.

Usage
-----
    .venv/bin/python scripts/bench_monitor.py            # default config, ~5 minutes on 2 cores
    .venv/bin/python scripts/bench_monitor.py --quick    # fewer trials, ~1 minute
    .venv/bin/python scripts/bench_monitor.py --variant 5000:3 --variant 1000:2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from fedretrain.drift.streams import SeaStream
from fedretrain.monitor.monitor import Monitor, build_detectors
from fedretrain.monitor.stats import HistogramEdges, PeriodStats, WindowStats, window_stats
from fedretrain.monitor.trigger import TriggerConfig, TriggerPolicy
from fedretrain.retraining.drift_watch import DriftWatch

ROOT = Path(__file__).resolve().parents[1]
MONITOR_YAML = ROOT / "conf" / "monitor" / "default.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "monitor.json"

NUM_SITES = 10
WINDOW = 100
CHANGE_AT = 10
MAX_WAIT = 20
AFFECTED = (0, 1, 2)  # the 30% of sites that drift in the local scenarios
# Concept ids of the stream below.
BASE, ABRUPT, LOCAL, COVARIATE = 0, 1, 2, 3
CONCEPTS = [{"theta": 8.0}, {"theta": 9.0}, {"theta": 10.75}, {"theta": 8.0, "power": 2.0}]
SCENARIO_SEED = {"abrupt": 1, "local": 2, "covariate": 3}


@dataclass(frozen=True)
class Setting:
    """One monitor configuration under test."""

    label: str
    arl: float
    reference_periods: int
    bins: int
    nodes: Any  # the Hydra nodes of the detectors


@dataclass
class Tally:
    """Errors and feature sums of one scenario, before and after the change."""

    errors: Counter[str] = field(default_factory=Counter)
    labelled: Counter[str] = field(default_factory=Counter)
    x0_sum: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, key: str, stats: WindowStats) -> None:
        self.errors[key] += stats.errors
        self.labelled[key] += stats.labelled
        self.x0_sum[key] += float(stats.x_sum[0])

    def error(self, key: str) -> float:
        return self.errors[key] / self.labelled[key] if self.labelled[key] else math.nan

    def x0_mean(self, key: str) -> float:
        return self.x0_sum[key] / self.labelled[key] if self.labelled[key] else math.nan


def site_stats(
    stream: SeaStream,
    concept: int,
    rng: np.random.Generator,
    edges: HistogramEdges,
    model_error: float,
) -> WindowStats:
    """One site's window under the fixed model: concept-0 Bayes rule, predictions flipped."""
    data = stream.sample(concept, WINDOW, rng)
    bayes = (data.x[:, 0] + data.x[:, 1] > 8.0).astype(np.int64)
    pred = bayes ^ (rng.random(WINDOW) < model_error)
    probs = np.where(pred[:, None] == np.arange(2)[None, :], 0.9, 0.1)
    losses = -np.log(probs[np.arange(WINDOW), data.y])
    return window_stats(data.x, data.y, probs, losses, edges)


def period_stats(
    stream: SeaStream,
    concepts: list[int],
    period: int,
    rng: np.random.Generator,
    edges: HistogramEdges,
    model_error: float,
) -> PeriodStats:
    sites = {s: site_stats(stream, c, rng, edges, model_error) for s, c in enumerate(concepts)}
    return PeriodStats(period, sites)


def first_period(
    stream: SeaStream, setting: Setting, rng: np.random.Generator, model_error: float
) -> tuple[HistogramEdges, DriftWatch]:
    """Period 0 as the controller plays it: edges from the pooled moments, then a training."""
    no_edges = HistogramEdges(np.zeros((stream.input_shape[0], 0)))
    total = period_stats(stream, [BASE] * NUM_SITES, 0, rng, no_edges, model_error).total
    edges = HistogramEdges.from_moments(total.n, total.x_sum, total.x_sq_sum, setting.bins)
    monitor = Monitor(build_detectors(setting.nodes, setting.arl, setting.reference_periods))
    drift = DriftWatch(monitor, TriggerPolicy(TriggerConfig()))
    drift.trained(0, initial=True)
    return edges, drift


def step(drift: DriftWatch, stats: PeriodStats) -> list[str] | None:
    """Feed one period; on a retrain return the detectors that fired (and reset, as trained)."""
    if not drift.observe(stats).retrain:
        return None
    fired = [type(d).__name__ for d in drift.monitor.detectors if d.drift_detected]
    drift.trained(stats.period)
    return fired


def fired_label(fired: list[str]) -> str:
    names = {"HistogramDrift": "histogram", "BinomialErrorTest": "binomial"}
    return "+".join(names.get(f, f) for f in fired)


def stationary_run(
    stream: SeaStream, setting: Setting, seed: int, periods: int, model_error: float
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 0])
    edges, drift = first_period(stream, setting, rng, model_error)
    alarms = []
    for t in range(1, periods + 1):
        stats = period_stats(stream, [BASE] * NUM_SITES, t, rng, edges, model_error)
        fired = step(drift, stats)
        if fired is not None:
            alarms.append({"period": t, "fired": fired_label(fired)})
    return {"seed": seed, "periods": periods, "false_triggers": len(alarms), "alarms": alarms}


def drift_trial(
    stream: SeaStream,
    setting: Setting,
    scenario: str,
    seed: int,
    model_error: float,
    tally: Tally,
) -> dict[str, Any]:
    """One trial: stationary until CHANGE_AT, then the scenario's drift until the first alarm."""
    rng = np.random.default_rng([seed, SCENARIO_SEED[scenario]])
    drifted = {"abrupt": ABRUPT, "local": LOCAL, "covariate": COVARIATE}[scenario]
    changed = range(NUM_SITES) if scenario == "abrupt" else AFFECTED
    edges, drift = first_period(stream, setting, rng, model_error)
    false_alarms = 0
    for t in range(1, CHANGE_AT + MAX_WAIT + 1):
        after = t >= CHANGE_AT
        concepts = [drifted if after and s in changed else BASE for s in range(NUM_SITES)]
        stats = period_stats(stream, concepts, t, rng, edges, model_error)
        phase = "post" if after else "pre"
        if t > setting.reference_periods:  # what the monitor compares, not its reference
            tally.add(phase, stats.total)
            for s in AFFECTED:
                tally.add(f"{phase}_affected", stats.sites[s])
        fired = step(drift, stats)
        if fired is None:
            continue
        if not after:
            false_alarms += 1
            continue
        return {
            "seed": seed,
            "delay": t - CHANGE_AT,
            "fired": fired_label(fired),
            "false_alarms": false_alarms,
        }
    return {"seed": seed, "delay": None, "fired": "", "false_alarms": false_alarms}


def quantile(delays: list[float], q: float) -> float:
    """An observed delay (no interpolation); misses count as infinite."""
    return float(np.quantile(np.asarray(delays, dtype=float), q, method="inverted_cdf"))


def shift_text(scenario: str, tally: Tally) -> tuple[str, dict[str, float]]:
    pre, post = tally.error("pre"), tally.error("post")
    pre_a, post_a = tally.error("pre_affected"), tally.error("post_affected")
    numbers = {
        "global_error_pre": pre,
        "global_error_post": post,
        "affected_error_pre": pre_a,
        "affected_error_post": post_a,
        "affected_x0_mean_pre": tally.x0_mean("pre_affected"),
        "affected_x0_mean_post": tally.x0_mean("post_affected"),
    }
    if scenario == "abrupt":
        text = f"global err {100 * pre:.1f}->{100 * post:.1f}% ({100 * (post - pre):+.1f} pt)"
    elif scenario == "local":
        text = (
            f"global {100 * (post - pre):+.1f} pt, "
            f"3 sites {100 * pre_a:.1f}->{100 * post_a:.1f}% ({100 * (post_a - pre_a):+.1f} pt)"
        )
    else:
        text = (
            f"3 sites mean x0 {numbers['affected_x0_mean_pre']:.2f}->"
            f"{numbers['affected_x0_mean_post']:.2f}, global err {100 * (post - pre):+.1f} pt"
        )
    return text, numbers


TARGETS = {
    "abrupt": ("median 0, p90 <= 1", lambda med, p90: med <= 0 and p90 <= 1),
    "local": ("delay <= 1 (median, p90)", lambda med, p90: med <= 1 and p90 <= 1),
    "covariate": ("median <= 1, p90 <= 5", lambda med, p90: med <= 1 and p90 <= 5),
}


def run_setting(
    stream: SeaStream, setting: Setting, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    detail: dict[str, Any] = {}
    start = time.perf_counter()
    runs = [
        stationary_run(stream, setting, seed, args.stationary_periods, args.model_error)
        for seed in range(args.stationary_runs)
    ]
    first, counts = runs[0]["false_triggers"], [r["false_triggers"] for r in runs]
    total_periods = sum(r["periods"] for r in runs)
    rate = 1000 * sum(counts) / total_periods
    fired = Counter(a["fired"] for r in runs for a in r["alarms"])
    rows.append(
        {
            "setting": setting.label,
            "scenario": "stationary",
            "trials": f"{len(runs)}x{args.stationary_periods}",
            "shift": f"none; {rate:.2f} false/1000 periods (all runs)",
            "median": "-",
            "p90": "-",
            "missed": "-",
            "false_alarms": f"{first} (run 0); {sum(counts)} in all",
            "target": "<= 1 false trigger in 1000 periods (run 0)",
            "result": "PASS" if first <= 1 else "FAIL",
            "fired_first": dict(fired),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    detail["stationary"] = {"runs": runs, "false_per_1000": rate}
    for scenario in ("abrupt", "local", "covariate"):
        start = time.perf_counter()
        tally = Tally()
        trials = [
            drift_trial(stream, setting, scenario, seed, args.model_error, tally)
            for seed in range(args.trials)
        ]
        delays = [math.inf if t["delay"] is None else float(t["delay"]) for t in trials]
        med, p90 = quantile(delays, 0.5), quantile(delays, 0.9)
        text, numbers = shift_text(scenario, tally)
        target, check = TARGETS[scenario]
        within_1 = sum(d <= 1 for d in delays) / len(delays)
        finite = [d for d in delays if math.isfinite(d)]
        rows.append(
            {
                "setting": setting.label,
                "scenario": scenario,
                "trials": str(len(trials)),
                "shift": text,
                "median": f"{med:g}",
                "p90": f"{p90:g}",
                "max": f"{max(finite):g}" if finite else "-",
                "share_delay_le_1": round(within_1, 3),
                "missed": str(sum(t["delay"] is None for t in trials)),
                "false_alarms": str(sum(t["false_alarms"] for t in trials)),
                "target": target,
                "result": "PASS" if check(med, p90) else "FAIL",
                "fired_first": dict(Counter(t["fired"] for t in trials if t["fired"])),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        detail[scenario] = {"shift": numbers, "trials": trials}
        print(f"  [{setting.label}] {scenario}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows, detail


COLUMNS = [
    ("scenario", "scenario"),
    ("trials", "trials"),
    ("shift", "measured shift"),
    ("median", "median"),
    ("p90", "p90"),
    ("max", "max"),
    ("share_delay_le_1", "share <= 1"),
    ("missed", "missed"),
    ("false_alarms", "false alarms before change"),
    ("target", "target"),
    ("result", "result"),
]


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[h for _, h in COLUMNS] + ["fired first"]]
    for row in rows:
        fired = ", ".join(f"{k} {v}" for k, v in sorted(row["fired_first"].items())) or "-"
        cells.append([str(row.get(k, "-")) for k, _ in COLUMNS] + [fired])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def settings(args: argparse.Namespace) -> list[Setting]:
    cfg = OmegaConf.load(MONITOR_YAML)
    nodes = cfg.detectors
    arl = float(args.arl if args.arl is not None else cfg.arl)
    rp = int(
        args.reference_periods if args.reference_periods is not None else cfg.reference_periods
    )
    default = arl == float(cfg.arl) and rp == int(cfg.reference_periods)
    label = "default" if default else f"NON-DEFAULT arl={arl:g} rp={rp}"
    out = [Setting(label, arl, rp, int(cfg.histogram_bins), nodes)]
    for variant in args.variant:
        a, r = variant.split(":")
        out.append(
            Setting(
                f"variant arl={float(a):g} rp={int(r)}", float(a), int(r), cfg.histogram_bins, nodes
            )
        )
    return out


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per drift scenario")
    parser.add_argument("--stationary-runs", type=int, default=6, help="runs (seeds 0..N-1)")
    parser.add_argument("--stationary-periods", type=int, default=1000)
    parser.add_argument("--model-error", type=float, default=0.10)
    parser.add_argument("--arl", type=float, default=None, help="override the YAML's arl")
    parser.add_argument("--reference-periods", type=int, default=None, help="override the YAML's")
    parser.add_argument("--variant", action="append", default=[], metavar="ARL:RP")
    parser.add_argument("--quick", action="store_true", help="40 trials, 1 stationary run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.trials, args.stationary_runs = 40, 1
    machine = machine_info()
    stream = SeaStream(concepts=CONCEPTS)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for setting in settings(args):
        print(
            f"setting {setting.label}: arl {setting.arl:g}, reference_periods "
            f"{setting.reference_periods}, bins {setting.bins}",
            flush=True,
        )
        got, detail = run_setting(stream, setting, args)
        rows += got
        details[setting.label] = detail
    elapsed = time.perf_counter() - start
    for label in details:
        print(f"\n[{label}]")
        print(table([r for r in rows if r["setting"] == label]))
    print(f"\ntotal {elapsed:.0f} s")
    result = {
        "benchmark": "drift monitor calibration and detection delay (scripts/bench_monitor.py)",
        "settings": {
            "monitor_yaml": OmegaConf.to_container(OmegaConf.load(MONITOR_YAML)),
            "runs": [
                {"label": s.label, "arl": s.arl, "reference_periods": s.reference_periods}
                for s in settings(args)
            ],
            "sites": NUM_SITES,
            "window": WINDOW,
            "change_at": CHANGE_AT,
            "max_wait": MAX_WAIT,
            "affected_sites": list(AFFECTED),
            "concepts": CONCEPTS,
            "model_error": args.model_error,
            "trials": args.trials,
            "stationary_runs": args.stationary_runs,
            "stationary_periods": args.stationary_periods,
            "seeds": "trial i uses default_rng([i, tag]); tag 0 stationary, 1 abrupt, "
            "2 local, 3 covariate",
            "quick": args.quick,
        },
        "machine": machine,
        "seconds": round(elapsed, 1),
        "table": rows,
        "details": details,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
