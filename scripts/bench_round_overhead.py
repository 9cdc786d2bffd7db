"""How much does a simulated federated round cost beyond the local training it contains?

For each client count the script times one server round three ways and prints them side by
side:

``local``
    The same clients' work back-to-back in one process, no Flower: every site of
    :class:`fedretrain.site.Site` loads the global weights, runs
    :func:`fedretrain.training.train` with the run's train config, then
    :func:`fedretrain.training.evaluate` on its holdout. ``torch.set_num_threads(1)``. It
    runs twice, before and after the two simulations (``--local-rounds`` rounds each), and
    the steady rounds of both are pooled: the machine may be shared, and a burst of other
    work during one short baseline would otherwise skew every ratio.
``fedretrain``
    The default config (``runtime.num_clients=N runtime.num_rounds=R``) through Flower's
    simulation engine exactly as ``fedretrain-simulate`` runs it (``build_server_app`` +
    ``clients.app.app`` + ``fedretrain.flower.simulation.simulate``); round times are the
    ``seconds`` column of the run's ``metrics.csv`` (train + federated evaluation).
``flower``
    The same workload written as a plain Flower app with Flower's defaults, in the style of
    Flower's ``quickstart-pytorch``: ``FedAvg(...).start(...)`` in the ServerApp, a ClientApp
    whose ``@app.train`` / ``@app.evaluate`` build the data and the model inside every call (no
    caching), and ``run_simulation`` with no ``backend_config`` (2 CPUs per client; Ray sets
    ``OMP_NUM_THREADS=2`` and torch follows it). The data (``load_digits``, the same IID split
    and holdout), the model (``DigitsCNN``, same initial weights), the hyperparameters and the
    training loop itself (``fedretrain.training.train``) are those of the other two, so the
    compute is identical and only the Flower plumbing differs. Its ``FedAvg`` waits for all N
    nodes (``min_available_nodes=N``) so that every round trains all of them. A round is
    timed between successive calls of ``Strategy.start``'s ``evaluate_fn`` (which does no
    work): that interval is train + federated evaluation, as in ``metrics.csv``.

Each measurement runs in its own subprocess (this script re-invoked with ``--one``) so that
every simulation gets a fresh Ray and no torch thread setting leaks between them. The first
round of each run is warm-up (Ray actors start, torch allocates) and is reported on its own;
the per-round figure is the median of rounds 2..R. ``ratio`` is that median divided by the
local median for the same clients. On a machine with C cores and one CPU per client, ideal
parallelism would give a ratio near 1/C; above 1 the framework costs more than it saves.

Results go to ``benchmarks/results/round_overhead.json`` with the machine's description.
Flower's telemetry is switched off in the children (``FLWR_TELEMETRY_ENABLED=0``) unless the
environment sets it: nothing is sent or downloaded.

Usage
-----
    .venv/bin/python scripts/bench_round_overhead.py         # 8 and 32 clients, 5 rounds
    .venv/bin/python scripts/bench_round_overhead.py --clients 4,16 --rounds 3

About two and a half minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "round_overhead.json"
KINDS = ("local", "fedretrain", "flower")
CHILD_TIMEOUT_S = 900

# ----------------------------------------------------------------------------- shared


def compose_run(num_clients: int, num_rounds: int) -> tuple[Any, Any]:
    """The default config for ``num_clients`` sites and ``num_rounds`` rounds.

    Returns
    -------
    (DictConfig, RunConfig)
        The composed config and its validated, typed form.
    """
    from fedretrain.config import compose
    from fedretrain.preflight import to_typed

    cfg = compose([f"runtime.num_clients={num_clients}", f"runtime.num_rounds={num_rounds}"])
    return cfg, to_typed(cfg)


def train_generator(seed: int, partition_id: int, server_round: int) -> Any:
    """The batch-order generator ``clients.app`` uses, so all three runs train alike."""
    import numpy as np
    import torch

    state = np.random.SeedSequence([seed, partition_id, server_round]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def round_stats(seconds: list[float]) -> dict[str, Any]:
    """Per-round times with round 1 split off as warm-up; the median of the rest."""
    steady = seconds[1:]
    return {
        "round_seconds": seconds,
        "warmup_round_s": seconds[0],
        "median_round_s": statistics.median(steady),
    }


# ----------------------------------------------------------------------------- local


def run_local(num_clients: int, num_rounds: int) -> dict[str, Any]:
    """Every site's train + evaluate back-to-back in this process, ``num_rounds`` times.

    The global weights reloaded each round are the initial model's: the compute per round
    does not depend on their values.
    """
    import torch

    from fedretrain.site import Site
    from fedretrain.training import evaluate, lr_at, train

    torch.set_num_threads(1)
    _, run = compose_run(num_clients, num_rounds)
    start = time.perf_counter()
    sites = [Site.build(run, pid, num_clients) for pid in range(num_clients)]
    build_s = time.perf_counter() - start
    state = {k: v.clone() for k, v in sites[0].model.state_dict().items()}
    seconds = []
    for server_round in range(1, num_rounds + 1):
        lr = lr_at(run.train, server_round, num_rounds)
        start = time.perf_counter()
        for site in sites:
            site.model.load_state_dict(state)
            generator = train_generator(run.runtime.seed, site.partition_id, server_round)
            train(site.model, site.train_data, run.train, lr, site.device, generator)
            evaluate(site.model, site.holdout, site.device)
        seconds.append(time.perf_counter() - start)
    return {**round_stats(seconds), "site_build_s": build_s / num_clients, "torch_threads": 1}


# ----------------------------------------------------------------------------- fedretrain


def run_fedretrain(num_clients: int, num_rounds: int) -> dict[str, Any]:
    """One federation as ``fedretrain-simulate`` runs it; round times from ``metrics.csv``."""
    import pandas as pd

    from clients.app import app as client_app
    from fedretrain.config import to_yaml
    from fedretrain.flower.simulation import simulate
    from server.app import build_server_app

    cfg, run = compose_run(num_clients, num_rounds)
    with tempfile.TemporaryDirectory(prefix="bench-fedretrain-") as tmp:
        run_dir = Path(tmp) / "run"
        server_app = build_server_app(to_yaml(cfg), run_dir)
        start = time.perf_counter()
        simulate(server_app, client_app, run.runtime)
        wall = time.perf_counter() - start
        table = pd.read_csv(run_dir / "metrics.csv")
    if table["round"].tolist() != list(range(num_rounds + 1)):
        raise RuntimeError(f"metrics.csv holds rounds {table['round'].tolist()}")
    if table["train_clients"].iloc[1:].min() != num_clients:
        raise RuntimeError(f"some rounds trained fewer than {num_clients} sites:\n{table}")
    seconds = [float(s) for s in table["seconds"]]
    return {
        **round_stats(seconds[1:]),
        "initial_eval_s": seconds[0],
        "simulation_wall_s": wall,
        "outside_rounds_s": wall - sum(seconds),
        "final_accuracy": float(table["accuracy"].iloc[-1]),
        "torch_threads": run.runtime.torch_threads,
        "cpus_per_client": run.runtime.cpus_per_client,
    }


# ----------------------------------------------------------------------------- plain Flower


def plain_partition(partition_id: int, num_partitions: int, seed: int, holdout: float) -> Any:
    """Load the digits and cut out one site's (train, holdout), as ``Site.build`` does."""
    import numpy as np

    from fedretrain.partition import IidPartitioner
    from fedretrain.tasks.digits import load_digits

    pool = load_digits()
    parts = IidPartitioner().partition(pool.y, num_partitions, np.random.default_rng([seed, 0]))
    local = pool.subset(parts[partition_id])
    return local.split(holdout, np.random.default_rng([seed, 1, partition_id]))


def plain_model(seed: int | None = None) -> Any:
    """The default task's ``DigitsCNN`` (channels 16, 32; hidden 64) for 8x8 digits."""
    import torch

    from fedretrain.models import DigitsCNN

    if seed is not None:
        torch.manual_seed(seed)
    return DigitsCNN((1, 8, 8), 10, channels=(16, 32), hidden=64)


def plain_setup(msg: Any, context: Any, seed: int, holdout: float) -> tuple[Any, ...]:
    """What quickstart-pytorch does on every message: build data and model, load the weights.

    Returns
    -------
    tuple
        ``(model, train_data, holdout_data, device, partition_id)``.
    """
    import torch

    pid = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    train_data, holdout_data = plain_partition(pid, num_partitions, seed, holdout)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model = plain_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return model.to(device), train_data, holdout_data, device, pid


def plain_client_app(train_cfg: Any, seed: int, holdout: float) -> Any:
    """A quickstart-style ClientApp: data and model are rebuilt inside every call."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from fedretrain.training import evaluate, train

    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        model, train_data, _, device, pid = plain_setup(msg, context, seed, holdout)
        config = msg.content.config_records["config"]
        generator = train_generator(seed, pid, int(cast(int, config["server-round"])))
        lr = float(cast(float, config["lr"]))
        result = train(model, train_data, train_cfg, lr, device, generator)
        metrics = MetricRecord(
            {
                "train-loss": result.mean_loss,
                "num-examples": result.num_examples,
                "torch-threads": torch.get_num_threads(),
            }
        )
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        model, _, holdout_data, device, _ = plain_setup(msg, context, seed, holdout)
        result = evaluate(model, holdout_data, device)
        correct = float(result.confusion.trace())
        metrics = MetricRecord(
            {
                "eval-loss": result.loss_sum / max(result.num_examples, 1),
                "eval-acc": correct / max(result.num_examples, 1),
                "num-examples": result.num_examples,
            }
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def plain_server_app(num_clients: int, num_rounds: int, lr: float, seed: int, log: dict) -> Any:
    """A quickstart-style ServerApp; ``log`` receives round time stamps and the result."""
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    app = ServerApp()

    def stamp(server_round: int, arrays: ArrayRecord) -> None:
        log["stamps"].append(time.perf_counter())

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, min_available_nodes=num_clients)
        arrays = ArrayRecord(plain_model(seed).state_dict())
        log["result"] = strategy.start(
            grid=grid,
            initial_arrays=arrays,
            num_rounds=num_rounds,
            train_config=ConfigRecord({"lr": lr}),
            evaluate_fn=stamp,
        )

    return app


def run_flower(num_clients: int, num_rounds: int) -> dict[str, Any]:
    """The plain Flower app through ``run_simulation`` with Flower's default resources."""
    from flwr.simulation import run_simulation

    _, run = compose_run(num_clients, num_rounds)
    check_same_model(run)
    log: dict[str, Any] = {"stamps": []}
    server_app = plain_server_app(num_clients, num_rounds, run.train.lr, run.runtime.seed, log)
    client_app = plain_client_app(run.train, run.runtime.seed, run.data.holdout_fraction)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients)
    wall = time.perf_counter() - start
    stamps = log["stamps"]
    if len(stamps) != num_rounds + 1 or "result" not in log:
        raise RuntimeError(f"the plain Flower run stopped early ({len(stamps) - 1} rounds)")
    seconds = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    result = log["result"]
    return {
        **round_stats(seconds),
        "simulation_wall_s": wall,
        "outside_rounds_s": wall - (stamps[-1] - stamps[0]),
        "final_accuracy": float(result.evaluate_metrics_clientapp[num_rounds]["eval-acc"]),
        "torch_threads": float(result.train_metrics_clientapp[num_rounds]["torch-threads"]),
        "cpus_per_client": 2.0,
    }


def check_same_model(run: Any) -> None:
    """Fail unless the plain app's initial model equals fedretrain's, weight for weight."""
    import torch

    from fedretrain.site import build_model, build_pool

    ours = build_model(run, build_pool(run.task.dataset)).state_dict()
    plain = plain_model(run.runtime.seed).state_dict()
    same = ours.keys() == plain.keys() and all(torch.equal(ours[k], plain[k]) for k in ours)
    if not same:
        raise RuntimeError("the plain Flower model differs from the configured task model")


# ----------------------------------------------------------------------------- orchestration


def run_one(kind: str, num_clients: int, num_rounds: int, out: Path) -> None:
    """Child process: run one measurement and write its JSON to ``out``."""
    logging.getLogger("flwr").setLevel(logging.ERROR)  # as fedretrain-simulate does
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    runner = {"local": run_local, "fedretrain": run_fedretrain, "flower": run_flower}[kind]
    out.write_text(json.dumps(runner(num_clients, num_rounds), indent=2))


def spawn(kind: str, num_clients: int, num_rounds: int, work: Path, tag: str = "") -> dict:
    """Run one measurement in a fresh interpreter; add its process wall time."""
    name = f"{kind}{tag}-{num_clients}"
    out, log_file = work / f"{name}.json", work / f"{name}.log"
    command = [sys.executable, __file__, "--one", kind, "--clients", str(num_clients)]
    command += ["--rounds", str(num_rounds), "--out", str(out)]
    env = {"FLWR_TELEMETRY_ENABLED": "0", **os.environ}
    print(f"  {kind + tag:<12} {num_clients:>3} clients ...", end=" ", flush=True)
    start = time.perf_counter()
    with log_file.open("w") as sink:
        done = subprocess.run(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
            timeout=CHILD_TIMEOUT_S, check=False,
        )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0 or not out.exists():
        tail = log_file.read_text()[-4000:]
        raise RuntimeError(f"{kind} with {num_clients} clients failed:\n{tail}")
    print(f"{wall:.1f} s", flush=True)
    return {**json.loads(out.read_text()), "process_wall_s": wall}


def measure(num_clients: int, rounds: int, local_rounds: int, work: Path) -> dict[str, Any]:
    """All three measurements for one client count.

    The local baseline runs before and after the two simulations and its steady rounds are
    pooled, so that a burst of other work on the machine skews the denominator less.
    """
    before = spawn("local", num_clients, local_rounds, work, "-before")
    runs = {kind: spawn(kind, num_clients, rounds, work) for kind in ("fedretrain", "flower")}
    after = spawn("local", num_clients, local_rounds, work, "-after")
    steady = before["round_seconds"][1:] + after["round_seconds"][1:]
    runs["local"] = {
        "median_round_s": statistics.median(steady),
        "warmup_round_s": before["warmup_round_s"],
        "before": before,
        "after": after,
    }
    return runs


def machine_info(load_start: tuple[float, ...]) -> dict[str, Any]:
    """What the numbers depend on: cores, versions, time, and how busy the machine was."""
    from importlib.metadata import version

    import torch

    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": version("flwr"),
        "ray": version("ray"),
        "cuda_available": torch.cuda.is_available(),
        "loadavg_1_5_15_at_start": list(load_start),
        "loadavg_1_5_15_at_end": list(os.getloadavg()),
    }


# ----------------------------------------------------------------------------- report


def summary_row(num_clients: int, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One table row: median round times and their ratios to the local baseline."""
    local = runs["local"]["median_round_s"]
    row: dict[str, Any] = {"clients": num_clients, "local_round_s": local}
    row["fedretrain_initial_eval_s"] = runs["fedretrain"]["initial_eval_s"]
    for kind in ("fedretrain", "flower"):
        run = runs[kind]
        row[f"{kind}_round_s"] = run["median_round_s"]
        row[f"{kind}_ratio"] = run["median_round_s"] / local
        row[f"{kind}_warmup_round_s"] = run["warmup_round_s"]
        row[f"{kind}_outside_rounds_s"] = run["outside_rounds_s"]
        row[f"{kind}_process_wall_s"] = run["process_wall_s"]
        row[f"{kind}_final_accuracy"] = run["final_accuracy"]
    return row


MAIN_COLUMNS = [
    ("clients", "clients", "{:d}"),
    ("local_round_s", "local round s", "{:.3f}"),
    ("fedretrain_round_s", "fedretrain round s", "{:.3f}"),
    ("fedretrain_ratio", "fedretrain ratio", "{:.2f}"),
    ("flower_round_s", "plain Flower round s", "{:.3f}"),
    ("flower_ratio", "plain Flower ratio", "{:.2f}"),
]
STARTUP_COLUMNS = [
    ("clients", "clients", "{:d}"),
    ("fedretrain_initial_eval_s", "fedretrain round 0 s", "{:.2f}"),
    ("fedretrain_warmup_round_s", "fedretrain round 1 s", "{:.2f}"),
    ("flower_warmup_round_s", "plain Flower round 1 s", "{:.2f}"),
    ("fedretrain_outside_rounds_s", "fedretrain outside s", "{:.1f}"),
    ("flower_outside_rounds_s", "plain Flower outside s", "{:.1f}"),
    ("fedretrain_process_wall_s", "fedretrain total s", "{:.1f}"),
    ("flower_process_wall_s", "plain Flower total s", "{:.1f}"),
]
ACCURACY_COLUMNS = [
    ("clients", "clients", "{:d}"),
    ("fedretrain_final_accuracy", "fedretrain final acc", "{:.4f}"),
    ("flower_final_accuracy", "plain Flower final acc", "{:.4f}"),
]


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A right-aligned plain-text table."""
    cells = [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]
    widths = [max(len(head), *(len(c[i]) for c in cells)) for i, (_, head, _) in enumerate(columns)]
    lines = [" | ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], num_rounds: int) -> str:
    """The three tables with the notes a reader needs to interpret them."""
    cores = os.cpu_count() or 1
    return "\n".join(
        [
            f"Median round time over rounds 2..{num_rounds} (round 1 is warm-up, shown below;",
            "local: rounds 2.. of two runs, before and after the simulations, pooled).",
            "A round = train + federated evaluation of every client; ratio = round / local.",
            f"This machine has {cores} cores: perfect parallelism would give a ratio near "
            f"{1 / cores:.2f}.",
            "",
            format_table(rows, MAIN_COLUMNS),
            "",
            "Start-up. Ray actors start during fedretrain's round 0 (its initial federated",
            "evaluation) and during plain Flower's round 1 (its round 0 involves no client).",
            "'outside' = simulation wall time minus every timed round (Ray start and shutdown,",
            "server set-up, fedretrain's final plot); 'total' = the whole child process.",
            "",
            format_table(rows, STARTUP_COLUMNS),
            "",
            "Sanity check: both federations train the same model on the same data and seeds.",
            "",
            format_table(rows, ACCURACY_COLUMNS),
        ]
    )


# ----------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="8,32", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=5, help="server rounds per run (>= 2)")
    parser.add_argument(
        "--local-rounds",
        type=int,
        default=10,
        help="rounds of each of the two local baseline runs (before and after the simulations)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.rounds, args.local_rounds) < 2:
        parser.error("--rounds and --local-rounds must be at least 2: round 1 is warm-up")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        run_one(args.one, int(args.clients), args.rounds, args.out)
        return
    counts = [int(c) for c in args.clients.split(",")]
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"note: 1-minute load average is {load_start[0]:.2f}; other work inflates timings")
    with tempfile.TemporaryDirectory(prefix="bench-round-overhead-") as tmp:
        runs = {n: measure(n, args.rounds, args.local_rounds, Path(tmp)) for n in counts}
    rows = [summary_row(n, runs[n]) for n in counts]
    text = report(rows, args.rounds)
    print("\n" + text)
    result = {
        "benchmark": "round_overhead",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "clients": counts,
            "rounds": args.rounds,
            "local_rounds": args.local_rounds,
            "warmup_rounds": 1,
        },
        "machine": machine_info(load_start),
        "summary": rows,
        "runs": {str(n): runs[n] for n in counts},
        "table": text,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nsaved {args.output}")


if __name__ == "__main__":
    main()
