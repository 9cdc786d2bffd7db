"""What does sample-level DP-SGD cost a site, in time and memory, over plain local training?

One site's local training on the default task (``fedretrain.models.DigitsCNN`` with the
arguments of ``conf/task/digits_cnn.yaml`` on scikit-learn's digits, the default holdout of
0.2 taken out: 1,438 training images), the default train config (SGD, lr 0.05, momentum 0.9,
batch 16, 3 local epochs), on one CPU thread (``torch.set_num_threads(1)``), these ways:

``plain``
    :func:`fedretrain.training.train`: shuffled minibatches of 16, 3 epochs (270 steps).
``dp``, ``dp-flat``, ``dp-ghost``
    :func:`fedretrain.privacy.dp_sgd.dp_train` as a site runs it (its default engine,
    ``auto``, which is the fused engine of :mod:`fedretrain.privacy.per_sample` for this
    model) with ``clipping=auto`` (the default; on this model it takes ghost norms for both
    Linear layers, so it computes what ``ghost`` does) / ``flat`` / ``ghost``: Poisson
    batches of expected size 16 (q = 16/1438, 3 x 90 = 270 steps), every sample's gradient
    clipped to norm 1, Gaussian noise with σ = 1 (given, so no calibration), the run checked
    against and recorded in an in-memory ledger.
``dp-flat-opacus``, ``dp-ghost-opacus``
    The same DP-SGD through Opacus's per-sample gradient hooks and DP optimizer
    (``dp_train(..., engine=Engine.opacus)``): the engine ``dp_train`` used before, and still
    uses for models the fused engine cannot hook. Same batches, same update.
``plain-poisson``
    Reference only, not a target row: plain training (no clipping, no noise) stepping over
    the same Poisson batches (270 steps, loss summed and divided by 16 as DP-SGD does),
    which separates the cost of Poisson sampling (batch sizes vary from step to step) from
    that of privacy.

Every DP arm processes the same expected number of samples (270 steps of expected size 16)
as ``plain`` (270 steps of 16, the last of each epoch 14).

Every measurement runs in a fresh subprocess (this script re-invoked with ``--one MODE``) so
that no allocator state, peak or thread setting leaks between modes; the modes take turns
within each of ``--repeats`` rounds (the order rotates), so a burst of load on a shared
machine hits all of them alike. A child imports what its mode needs (the plain children never
import Opacus), builds data and model, trains once as warm-up, then times ``--runs`` full
local trainings, each from the same initial weights.

Time is the wall time (and the CPU time) of one local training (the call of ``train`` /
``dp_train``), with the minor page faults per step; the table shows the median over all runs
of all rounds, and the ratio to plain's median. ``paired ratio`` is the median, over rounds,
of a mode's median over plain's median *in the same round*: the modes of a round run within
seconds of each other, so it is the less load-sensitive of the two on a shared machine.

Memory is resident set size from ``/proc/self/status``:

``train peak MiB``
    The increase of RSS during a local training: the peak RSS (VmHWM, reset right before
    the run through ``/proc/self/clear_refs``) minus RSS just before it; the largest over a
    child's runs, median over children. This is what training itself allocates (activations,
    gradients, per-sample gradients, optimizer state, batches).
``process peak MiB``
    The child's peak RSS over its whole life (imports, data, warm-up and runs): what a site
    must provision. The DP modes include importing Opacus (``dp_train``'s module imports it
    whatever the engine).

``--sampler`` adds a micro-benchmark of drawing one local training's Poisson batches and
indexing them (``poisson_batches`` + tensor indexing) against iterating Opacus's
``DPDataLoader`` over a ``TensorDataset`` (what ``PrivacyEngine.make_private`` builds).

``--profile`` (on by default) runs cProfile over one more training per mode and splits its
time into sampling, accounting, forward, backward, per-sample work, noise and optimizer
(cProfile inflates Python-heavy parts: read proportions, not seconds).

Usage
-----
    .venv/bin/python scripts/bench_dp.py                  # 5 rounds x 3 runs, profile, sampler
    .venv/bin/python scripts/bench_dp.py --repeats 3 --runs 2 --no-profile --no-sampler
    .venv/bin/python scripts/bench_dp.py --variants default,top-pad   # allocator lever too

About five minutes on 2 cores with the defaults. Writes ``benchmarks/results/dp.json``
(``--output`` to change): settings, targets, machine, every child's raw numbers, the summary
rows, the profiles and the printed tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "dp.json"
MODES = (
    "plain", "dp", "dp-flat", "dp-ghost", "dp-flat-opacus", "dp-ghost-opacus", "plain-poisson",
)  # fmt: skip
TARGET_MODES = ("dp",)  # what a site runs by default; the others are references
# Environment of the children. "top-pad" (a lever tried, off by default) keeps 64 MiB at the
# top of glibc's heap, so that the per-sample gradients of the 512x64 Linear layer (2 MiB a
# step) are not handed back to the kernel and faulted in again every step. In a bare
# fixed-batch loop that removed ~870 page faults a step; inside dp_train the faults/step column
# shows only a few, and the variant changed nothing measurable.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "top-pad": {"MALLOC_TOP_PAD_": str(64 << 20)},
}
TARGET_TIME_RATIO = 1.5
TARGET_MEMORY_RATIO = 1.3
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
SEED = 0


# ----------------------------------------------------------------------------- child


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _trainer(mode: str) -> Callable[[int], int]:
    """A function running one local training of ``mode`` from fixed initial weights."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from fedretrain.config import TrainConfig
    from fedretrain.models import DigitsCNN
    from fedretrain.tasks.digits import load_digits
    from fedretrain.training import train

    data, _ = load_digits().split(0.2, np.random.default_rng(SEED))
    cfg = TrainConfig()
    torch.manual_seed(SEED)
    initial = DigitsCNN(data.input_shape, data.num_classes, channels=(16, 32), hidden=64)
    device = torch.device("cpu")

    if mode == "plain":

        def plain_training(seed: int) -> int:
            model = copy.deepcopy(initial)
            generator = torch.Generator().manual_seed(seed)
            return train(model, data, cfg, cfg.lr, device, generator).steps

        return plain_training

    from fedretrain.privacy.config import ClippingMode, PrivacyConfig
    from fedretrain.privacy.plan import plan_training

    privacy = PrivacyConfig(
        enabled=True,
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        clipping=next((c for c in ClippingMode if c.value in mode.split("-")), ClippingMode.auto),
        reproducible=True,
    )
    plan = plan_training(privacy, cfg, len(data))

    if mode == "plain-poisson":
        from fedretrain.privacy.sampling import poisson_batches
        from fedretrain.training import make_optimizer

        x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)

        def plain_on_poisson_batches(seed: int) -> int:
            model = copy.deepcopy(initial)
            model.train()
            generator = torch.Generator().manual_seed(seed)
            batches = poisson_batches(len(data), plan.sample_rate, plan.steps, generator)
            optimizer = make_optimizer(cfg, list(model.parameters()), cfg.lr)
            loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                if len(batch):
                    loss = loss_fn(model(x[batch]), y[batch]) / plan.expected_batch_size
                    loss.backward()
                    float(loss.detach())
                optimizer.step()
            return len(batches)

        return plain_on_poisson_batches

    from fedretrain.privacy.dp_sgd import Engine, dp_train
    from fedretrain.privacy.ledger import PrivacyLedger

    def dp_training(seed: int) -> int:
        model = copy.deepcopy(initial)
        generator = torch.Generator().manual_seed(seed)
        ledger = PrivacyLedger(site="bench")
        args = (model, data, cfg, privacy, cfg.lr, device, generator, ledger, "b")
        if mode.endswith("-opacus"):
            return dp_train(*args, engine=Engine.opacus).train.steps
        return dp_train(*args).train.steps

    return dp_training


def run_child(mode: str, runs: int) -> dict[str, Any]:
    """Time and measure ``runs`` local trainings of ``mode`` in this (fresh) process."""
    import torch

    one_training = _trainer(mode)
    one_training(SEED)  # warm-up: lazy initialisation, allocator growth
    peak_before_runs = _status_kib("VmHWM")
    seconds, cpu_seconds, train_peaks, faults, steps = [], [], [], [], 0
    can_reset = True
    for run in range(runs):
        can_reset = _reset_peak() and can_reset
        rss_before = _status_kib("VmRSS")
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start, cpu_start = time.perf_counter(), time.process_time()
        steps = one_training(SEED + 1 + run)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        train_peaks.append(_status_kib("VmHWM") - rss_before)
    process_peak = max(peak_before_runs, _status_kib("VmHWM"))
    return {
        "mode": mode,
        "steps": steps,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "page_faults_per_step": [f / max(steps, 1) for f in faults],
        "train_peak_kib": max(train_peaks) if can_reset else None,
        "process_peak_kib": process_peak,
        "torch_threads": torch.get_num_threads(),
    }


# Where a local training's time goes: (label, [(file part, function)], outermost only). A
# label's seconds are the cumulative time of the functions named; indented labels are
# subsets of the one above them. C functions have file "~" in cProfile.
PROFILE_PARTS: tuple[tuple[str, tuple[tuple[str, str], ...], bool], ...] = (
    ("poisson sampling", (("sampling.py", "poisson_batches"),), False),
    (
        "accounting (ledger check + record)",
        (("ledger.py", "would_exceed"), ("ledger.py", "record")),
        False,
    ),
    ("forward (incl. hooks)", (("module.py", "_call_impl"),), True),
    (
        "backward (autograd; Opacus ghost: 2 passes)",
        (("autograd/__init__.py", "backward"), ("autograd/__init__.py", "grad")),
        False,
    ),
    ("  Opacus per-sample grads/norms", (("grad_sample_module", "capture_backprops_hook"),), False),
    ("fused: per-sample grads/norms", (("per_sample.py", "norms"),), False),
    ("fused: clipped sums", (("per_sample.py", "add_sum"),), False),
    (
        "noise draws (normal_ / torch.normal)",
        (("~", "<method 'normal_' "), ("~", "<built-in method torch.normal>")),
        False,
    ),
    ("optimizer step (Opacus: clip, noise, SGD)", (("", "step"),), True),
    (
        "  Opacus clip + accumulate",
        (
            ("optimizer", "clip_and_accumulate"),
            ("optimizer_fast_gradient_clipping.py", "accumulate"),
        ),
        False,
    ),
)


def _matches(file: str, name: str, part: str, function: str) -> bool:
    if part == "~":  # a C function: cProfile names it "<built-in method normal of ...>"
        return file == "~" and name.startswith(function)
    return name == function and part in file


def run_profile_child(mode: str) -> dict[str, Any]:
    """cProfile one local training (after a warm-up) and split its time into PROFILE_PARTS."""
    import cProfile
    import pstats

    one_training = _trainer(mode)
    one_training(SEED)
    profiler = cProfile.Profile()
    profiler.enable()
    one_training(SEED + 1)
    profiler.disable()
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())  # every function's own time
    parts = {}
    for label, functions, outermost in PROFILE_PARTS:
        matches = [
            v[3]
            for (file, _, name), v in stats.items()
            if any(_matches(file, name, part, function) for part, function in functions)
        ]
        if outermost:  # the model's own call; the outermost step(): the (DP) optimizer's
            matches = [max(matches)] if matches else []
        parts[label] = sum(matches)
    return {"mode": mode, "total_s": total, "parts_s": parts}


def run_sampler_child(repeats: int) -> dict[str, Any]:
    """Seconds to draw and index one training's Poisson batches: ours against Opacus's."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from fedretrain.config import TrainConfig
    from fedretrain.privacy.config import PrivacyConfig
    from fedretrain.privacy.plan import plan_training
    from fedretrain.privacy.sampling import poisson_batches
    from fedretrain.tasks.digits import load_digits

    with _quiet_root_logger():
        from opacus.data_loader import DPDataLoader

    data, _ = load_digits().split(0.2, np.random.default_rng(SEED))
    privacy = PrivacyConfig(enabled=True, noise_multiplier=NOISE_MULTIPLIER)
    plan = plan_training(privacy, TrainConfig(), len(data))
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)

    def ours() -> int:
        total = 0
        generator = torch.Generator().manual_seed(SEED)
        for batch in poisson_batches(len(data), plan.sample_rate, plan.steps, generator):
            total += len(x[batch]) + len(y[batch])
        return total

    loader = DPDataLoader(
        torch.utils.data.TensorDataset(x, y),
        sample_rate=plan.sample_rate,
        generator=torch.Generator().manual_seed(SEED),
    )

    def opacus_loader() -> int:
        total = 0
        for _ in range(plan.steps // len(loader)):  # the loader's "epoch" is round(1/q) steps
            for xb, yb in loader:
                total += len(xb) + len(yb)
        return total

    times: dict[str, list[float]] = {"ours": [], "opacus": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("opacus", opacus_loader)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {"steps": plan.steps, "seconds": times}


class _quiet_root_logger:  # noqa: N801  (a context manager used like a function)
    """Undo the root-logger handler that importing Opacus installs."""

    def __enter__(self) -> None:
        import logging

        self.handlers = list(logging.getLogger().handlers)

    def __exit__(self, *exc: object) -> None:
        import logging

        root = logging.getLogger()
        for handler in root.handlers[:]:
            if handler not in self.handlers:
                root.removeHandler(handler)


# ----------------------------------------------------------------------------- parent


def spawn(args: list[str], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra_env or {})}
    out = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def summarise(children: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """One row per mode of ``variant``: medians of time and memory, and ratios to plain."""
    rows = []
    for mode in [m for m in MODES if any(c["mode"] == m for c in children)]:  # plain first
        mine = [c for c in children if c["mode"] == mode and c["variant"] == variant]
        seconds = [s for c in mine for s in c["seconds"]]
        cpu = [s for c in mine for s in c["cpu_seconds"]]
        train_peaks = [c["train_peak_kib"] for c in mine if c["train_peak_kib"] is not None]
        rows.append(
            {
                "variant": variant,
                "mode": mode,
                "steps": mine[0]["steps"],
                "runs": len(seconds),
                "median_s": statistics.median(seconds),
                "min_s": min(seconds),
                "max_s": max(seconds),
                "median_cpu_s": statistics.median(cpu),
                "page_faults_per_step": statistics.median(
                    f for c in mine for f in c["page_faults_per_step"]
                ),
                "train_peak_mib": statistics.median(train_peaks) / 1024 if train_peaks else None,
                "process_peak_mib": statistics.median(c["process_peak_kib"] for c in mine) / 1024,
            }
        )
    plain = rows[0]
    rounds = sorted({c["round"] for c in children if c["variant"] == variant})

    def round_median(mode: str, round_: int) -> float:
        return statistics.median(
            s
            for c in children
            if c["mode"] == mode and c["variant"] == variant and c["round"] == round_
            for s in c["seconds"]
        )

    for row in rows:
        row["paired_ratio"] = statistics.median(
            round_median(row["mode"], r) / round_median("plain", r) for r in rounds
        )
        row["time_ratio"] = row["median_s"] / plain["median_s"]
        row["cpu_ratio"] = row["median_cpu_s"] / plain["median_cpu_s"]
        row["process_peak_ratio"] = row["process_peak_mib"] / plain["process_peak_mib"]
        row["train_peak_ratio"] = (
            row["train_peak_mib"] / plain["train_peak_mib"]
            if row["train_peak_mib"] is not None and plain["train_peak_mib"]
            else None
        )
        row["time_target_met"] = row["time_ratio"] <= TARGET_TIME_RATIO
        row["memory_target_met"] = row["process_peak_ratio"] <= TARGET_MEMORY_RATIO
    return rows


COLUMNS = (
    ("variant", "variant", "{:<8}"),
    ("mode", "mode", "{:<15}"),
    ("steps", "steps", "{:5d}"),
    ("median s", "median_s", "{:8.3f}"),
    ("time ratio", "time_ratio", "{:10.2f}"),
    ("paired ratio", "paired_ratio", "{:12.2f}"),
    ("cpu ratio", "cpu_ratio", "{:9.2f}"),
    ("faults/step", "page_faults_per_step", "{:11.1f}"),
    ("train peak MiB", "train_peak_mib", "{:14.1f}"),
    ("process peak MiB", "process_peak_mib", "{:16.1f}"),
    ("process peak ratio", "process_peak_ratio", "{:18.2f}"),
)


def table(rows: list[dict[str, Any]]) -> str:
    cells = [
        [fmt.format(row[key]) if row[key] is not None else "n/a" for _, key, fmt in COLUMNS]
        for row in rows
    ]
    widths = [
        max(len(title), *(len(line[i]) for line in cells))
        for i, (title, _, _) in enumerate(COLUMNS)
    ]
    head = " | ".join(title.ljust(w) for (title, _, _), w in zip(COLUMNS, widths, strict=True))
    lines = [head, "".join("+" if ch == "|" else "-" for ch in head)]
    for line in cells:
        lines.append(" | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    return "\n".join(lines)


def profile_table(profiles: list[dict[str, Any]]) -> str:
    """Seconds per part of one profiled local training, one column per mode."""
    widths = [max(8, len(p["mode"])) for p in profiles]
    head = f"{'part (cProfile, one training)':<44} | " + " | ".join(
        f"{p['mode']:>{w}}" for p, w in zip(profiles, widths, strict=True)
    )
    lines = [head, "".join("+" if ch == "|" else "-" for ch in head)]

    def row(label: str, values: list[float]) -> str:
        cells = " | ".join(f"{v:{w}.3f}" for v, w in zip(values, widths, strict=True))
        return f"{label:<44} | {cells}"

    lines.append(row("total s", [p["total_s"] for p in profiles]))
    for label, _, _ in PROFILE_PARTS:
        lines.append(row(label, [p["parts_s"][label] for p in profiles]))
    return "\n".join(lines)


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
        "opacus": version("opacus"),
        "loadavg_1_5_15_at_start": list(load_start),
        "loadavg_1_5_15_at_end": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds of one child per mode")
    parser.add_argument("--runs", type=int, default=3, help="timed trainings per child")
    parser.add_argument(
        "--variants", default="default", help=f"comma-separated of {list(VARIANTS)}"
    )
    parser.add_argument("--sampler", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated subset of the modes to run"
    )
    parser.add_argument(
        "--one",
        choices=(*MODES, "sampler", *(f"profile-{m}" for m in MODES)),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)

    if args.one and args.one.startswith("profile-"):
        print(json.dumps(run_profile_child(args.one.removeprefix("profile-"))))
        return
    if args.one == "sampler":
        print(json.dumps(run_sampler_child(args.runs)))
        return
    if args.one:
        print(json.dumps(run_child(args.one, args.runs)))
        return

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = sorted(set(modes) - set(MODES))
    if unknown or "plain" not in modes:
        parser.error(f"--modes: {unknown or 'plain'} missing or unknown; choose from {MODES}")
    load_start = os.getloadavg()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    children = []
    for round_ in range(args.repeats):
        order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
        for variant in variants:
            for mode in order:
                child = spawn(["--one", mode, "--runs", str(args.runs)], VARIANTS[variant])
                child["round"], child["variant"] = round_, variant
                children.append(child)
                times = " ".join(f"{s:.3f}" for s in child["seconds"])
                print(f"round {round_} {variant:<8} {mode:<8} {times}", flush=True)
    rows = [row for variant in variants for row in summarise(children, variant)]
    text = table(rows)
    verdicts = [
        f"{r['mode']} ({r['variant']}): time {r['time_ratio']:.2f}x (paired "
        f"{r['paired_ratio']:.2f}x, cpu {r['cpu_ratio']:.2f}x; target <= {TARGET_TIME_RATIO}x) "
        f"{'met' if r['time_target_met'] else 'MISSED'}; process peak memory "
        f"{r['process_peak_ratio']:.2f}x (target <= {TARGET_MEMORY_RATIO}x) "
        f"{'met' if r['memory_target_met'] else 'MISSED'}"
        for r in rows
        if r["mode"] in TARGET_MODES
    ] + [
        f"reference {r['mode']} ({r['variant']}): time {r['time_ratio']:.2f}x (paired "
        f"{r['paired_ratio']:.2f}x), process peak memory {r['process_peak_ratio']:.2f}x"
        for r in rows
        if r["mode"] not in (*TARGET_MODES, "plain")
    ]
    sampler = None
    if args.sampler:
        sampler = spawn(["--one", "sampler", "--runs", "20"])
        med = {k: statistics.median(v) for k, v in sampler["seconds"].items()}
        verdicts.append(
            f"sampler, one training's {sampler['steps']} Poisson batches drawn and indexed: "
            f"ours {med['ours'] * 1e3:.1f} ms, Opacus DPDataLoader {med['opacus'] * 1e3:.1f} ms"
        )
        sampler["median_s"] = med
    profiles = [spawn(["--one", f"profile-{mode}"]) for mode in modes] if args.profile else []
    profile_text = profile_table(profiles) if profiles else ""
    print()
    print(text)
    print()
    print("\n".join(verdicts))
    if profile_text:
        print()
        print(profile_text)

    report = {
        "settings": {
            "task": "digits_cnn (DigitsCNN channels=(16, 32), hidden=64), holdout 0.2",
            "train": "TrainConfig() defaults: sgd lr=0.05 momentum=0.9 batch_size=16 epochs=3",
            "modes": {
                "plain": "fedretrain.training.train",
                "dp/dp-flat/dp-ghost": "dp_train (engine auto = fused for this model), "
                "clipping auto (the default) / flat / ghost",
                "dp-*-opacus": "dp_train(engine=Engine.opacus): the previous engine",
                "plain-poisson": "reference: plain steps over the same Poisson batches",
            },
            "target_modes": list(TARGET_MODES),
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": MAX_GRAD_NORM,
            "torch_threads": 1,
            "repeats": args.repeats,
            "runs_per_child": args.runs,
            "seed": SEED,
            "variants": {v: VARIANTS[v] for v in variants},
            "time": "wall (and CPU) time of one local training; median over all runs; "
            "paired ratio: median over rounds of (mode median / plain median in that round)",
            "memory": "train peak: VmHWM (reset before the run) - VmRSS before; process peak: "
            "the child's VmHWM over its life; medians over children",
        },
        "targets": {"time_ratio": TARGET_TIME_RATIO, "process_peak_ratio": TARGET_MEMORY_RATIO},
        "machine": machine_info(load_start),
        "rows": rows,
        "children": children,
        "sampler": sampler,
        "table": text,
        "verdicts": verdicts,
        "profiles": profiles,
        "profile_table": profile_text,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
