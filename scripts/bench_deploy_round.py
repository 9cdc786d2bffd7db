"""Deployment round cost (issue 15, item 5): where a round's time goes on loopback, 3 sites.

Each run is the deployment a user starts (``docs/deployment.md``), in real processes on this
machine: ``fedretrain certs``, ``fedretrain server`` (a SuperLink with TLS and SuperNode
authentication, and the retraining app) and three ``fedretrain agent`` processes (a SuperNode
each) serving folders of SEA CSV files (150 rows). Period 0 trains the first model for exactly
``--rounds`` rounds (``retrain.max_rounds``, with a patience longer than that); a round is a
train wave and an evaluate wave, each a message per site. The ``seconds`` of each round come
from the run's ``metrics.csv``; the first round is left out of the per-round figures (it also
pays the first FAB installation at each site).

Two arms, interleaved A B A B (``--pairs``), the same work on each side:

``flower``     Flower's intervals: the server pulls a wave's replies every 3 s (what
               ``send_and_receive`` of Flower's deployment grid sleeps), each site's SuperExec
               looks for a new task every 1 s (Flower's default)
``fedretrain`` this project's defaults: ``runtime.poll_interval_s`` (0.1 s) and
               ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` = 0.1 s, set by ``fedretrain agent``

Then one more run of the ``fedretrain`` arm with ``FLWR_LOG_LEVEL=DEBUG`` (Flower's timestamps
on every line; the debug logging costs a little) splits each message at each site, from the
SuperNode's log, into: waiting for the SuperExec and starting ``flwr-clientapp`` (Flower's own
imports) up to "Loading ClientApp"; loading fedretrain's ClientApp and handling the message up
to its reply ("PushMessages"); the SuperNode sending the reply; and the gap until the site's next
message arrives (the other sites, the server, and the SuperNode's fixed 3 s sleep between pulls
when it found nothing). What a message process imports is also timed on its own, one process at
a time: ``flwr-clientapp --help`` (Flower), ``import clients.app`` (fedretrain's ClientApp, torch
included) and ``import torch._dynamo`` after torch (what ``torch.optim`` imports at its first
step).

Results go to ``benchmarks/results/deploy_round.json`` (``--output``) after every run, with the
machine's load at each.

Usage
-----
    .venv/bin/python scripts/bench_deploy_round.py
    .venv/bin/python scripts/bench_deploy_round.py --pairs 1 --rounds 3 --output /tmp/deploy.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedretrain.deploy.launch import SUPEREXEC_POLL_ENV, Launched

REPO = Path(__file__).resolve().parent.parent
SITES = 3
ROWS = 150
ARMS: dict[str, tuple[list[str], dict[str, str]]] = {
    "flower": (["runtime.poll_interval_s=3"], {SUPEREXEC_POLL_ENV: "1.0"}),
    "fedretrain": ([], {}),
}
# Flower's DEBUG lines: "DEBUG 2026-12-07 06:04:57,229:     [flwr-clientapp] Start ..."
STAMP = re.compile(r"(?:INFO|DEBUG|WARNING)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\S*:\s+(.*)")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str | Path) -> None:
    command = [sys.executable, "-m", "fedretrain.cli", *map(str, args)]
    subprocess.run(command, check=True, capture_output=True, text=True)


def _site_file(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (ROWS, 3))
    y = (x[:, 0] + x[:, 1] > 8).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x0", "x1", "x2", "y"])
        writer.writerows([*row, label] for row, label in zip(x.tolist(), y.tolist(), strict=True))


def deployment(arm: str, rounds: int, folder: Path, debug: bool = False) -> dict[str, Any]:
    """One deployment run of ``arm`` in ``folder``: its rounds' seconds and wall time."""
    overrides, extra_env = ARMS[arm]
    creds, run_dir = folder / "creds", folder / "run"
    _cli("certs", "init", creds)
    _cli("certs", "site", creds, *[f"site-{i}" for i in range(SITES)])
    for i in range(SITES):
        _site_file(folder / f"site-{i}" / "day1.csv", seed=i)
    env = {**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"}
    if debug:
        env["FLWR_LOG_LEVEL"] = "DEBUG"
    port = _port()
    server_command = [
        sys.executable, "-m", "fedretrain.cli", "server", "--run-dir", str(run_dir),
        "--creds", str(creds), "--port", str(port), "scenario=deployed",
        "scenario.period_seconds=2", "scenario.num_periods=2", "scenario.stream.min_age_s=0",
        "monitor.reference_periods=1", f"retrain.max_rounds={rounds}",
        f"retrain.patience={rounds + 1}", *overrides,
    ]  # fmt: skip
    load = os.getloadavg()[0]
    began = time.monotonic()
    started = [Launched.start("server", server_command, env, folder / "server.log")]
    try:
        for i in range(SITES):
            agent = [
                sys.executable, "-m", "fedretrain.cli", "agent", "--superlink",
                f"127.0.0.1:{port}", "--data", str(folder / f"site-{i}"), "--site-id", str(i),
                "--ca", str(creds / "ca.crt"), "--key", str(creds / f"site-{i}.key"),
                "--runtime-port", str(_port()),
            ]  # fmt: skip
            started.append(Launched.start(f"site-{i}", agent, env, folder / f"site-{i}.log"))
        status = started[0].proc.wait(timeout=120 + 60 * rounds)
        wall = time.monotonic() - began
    finally:
        for process in started:
            process.stop()
    if status != 0:
        raise RuntimeError(f"{arm}: the server exited {status}:\n{started[0].tail(3000)}")
    with (run_dir / "metrics.csv").open() as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    if len(seconds) != rounds:
        raise RuntimeError(f"{arm}: {len(seconds)} rounds in metrics.csv, not {rounds}")
    return {
        "arm": arm,
        "round_seconds": seconds,
        "steady_round_s": statistics.median(seconds[1:]),
        "wall_s": wall,
        "load_at_start": load,
        "load_at_end": os.getloadavg()[0],
    }


def _stamped(log: Path) -> list[tuple[float, str]]:
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        match = STAMP.search(re.sub(r"\x1b\[[0-9;]*m", "", raw))
        if match:
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            lines.append((when, match.group(2)))
    return lines


def phases(log: Path) -> list[dict[str, Any]]:
    """Each message a SuperNode handled, from its DEBUG log, split into the phases above."""
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for when, text in _stamped(log):
        kind = re.match(r"Receiving: (\S+) message", text)
        if kind:
            if current is not None and "sent" in current:
                current["next"] = when
            current = {"kind": kind.group(1), "received": when}
            messages.append(current)
        elif current is None:
            continue
        elif text.startswith("Loading ClientApp"):
            current["loading"] = when
        elif text.startswith("Runtime.PushMessages"):
            current.setdefault("replied", when)
        elif text.startswith("Sent successfully"):
            current["sent"] = when
    out = []
    for m in messages:
        if not all(k in m for k in ("loading", "replied", "sent")):
            continue
        out.append(
            {
                "kind": m["kind"],
                "flower_start_s": m["loading"] - m["received"],
                "app_s": m["replied"] - m["loading"],
                "send_s": m["sent"] - m["replied"],
                "gap_s": m["next"] - m["sent"] if "next" in m else None,
            }
        )
    return out


def import_costs(repeats: int) -> dict[str, float]:
    """Median wall seconds of what a message process imports, one process at a time."""
    python = sys.executable
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "flwr-clientapp --help (Flower)": [str(Path(python).parent / "flwr-clientapp"), "--help"],
        "import clients.app (torch included)": [python, "-c", "import clients.app"],
        "import torch": [python, "-c", "import torch"],
        "import torch._dynamo after torch": [
            python,
            "-c",
            "import time, torch; t = time.perf_counter(); import torch._dynamo; "
            "print(time.perf_counter() - t)",
        ],
    }
    costs: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            began = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
            took = time.perf_counter() - began
            costs[name].append(float(done.stdout) if "after torch" in name else took)
    return {name: statistics.median(values) for name, values in costs.items()}


def table(rows: list[tuple[str, str, str, bool | None]]) -> str:
    width = max(len(r[0]) for r in rows)
    wide = max(len(r[1]) for r in rows)
    lines = []
    for name, measured, target, ok in rows:
        verdict = "" if ok is None else ("met" if ok else "NOT MET")
        lines.append(f"{name:<{width}}  {measured:<{wide}}  {target:<14} {verdict}".rstrip())
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--import-repeats", type=int, default=3)
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "deploy_round.json"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sites": SITES,
        "rounds": args.rounds,
        "runs": [],
        "failures": [],
    }

    def keep() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1) + "\n")

    for pair in range(args.pairs):
        for arm in ARMS:
            with tempfile.TemporaryDirectory(prefix=f"deploy-{arm}-") as tmp:
                try:
                    run = deployment(arm, args.rounds, Path(tmp))
                except (RuntimeError, subprocess.SubprocessError) as err:
                    results["failures"].append({"arm": arm, "pair": pair, "error": str(err)})
                    print(f"pair {pair} {arm}: FAILED: {str(err)[:300]}", flush=True)
                    keep()
                    continue
            run["pair"] = pair
            results["runs"].append(run)
            print(
                f"pair {pair} {arm:<10}  round {run['steady_round_s']:6.2f} s  "
                f"wall {run['wall_s']:6.1f} s  load {run['load_at_start']:.2f}",
                flush=True,
            )
            keep()

    with tempfile.TemporaryDirectory(prefix="deploy-debug-") as tmp:
        try:
            results["debug_run"] = deployment("fedretrain", args.rounds, Path(tmp), debug=True)
        except (RuntimeError, subprocess.SubprocessError) as err:
            results["failures"].append({"arm": "debug", "error": str(err)})
        split = []
        for i in range(SITES):
            log = Path(tmp) / f"site-{i}" / ".fedretrain-agent" / "supernode.log"
            if log.exists():
                split += [{"site": i, **p} for p in phases(log)]
        results["phases"] = split
    keep()
    results["imports"] = import_costs(args.import_repeats)
    keep()

    by_arm = {
        arm: [r["steady_round_s"] for r in results["runs"] if r["arm"] == arm] for arm in ARMS
    }
    rows: list[tuple[str, str, str, bool | None]] = []
    medians = {arm: statistics.median(v) for arm, v in by_arm.items() if v}
    for arm, median in medians.items():
        rows.append((f"steady round, {arm} intervals", f"{median:.2f} s", "", None))
    if len(medians) == 2:
        cut = medians["flower"] - medians["fedretrain"]
        rows.append(
            ("polling cut (flower - fedretrain)", f"{cut:+.2f} s per round", "> 0", cut > 0)
        )
    split = results.get("phases", [])
    for kind in ("train", "evaluate"):
        of_kind = [p for p in split if p["kind"] == kind]
        if not of_kind:
            continue
        for key, what in (
            ("flower_start_s", "SuperExec + flwr-clientapp start"),
            ("app_s", "our ClientApp: import + handle"),
            ("send_s", "SuperNode sends the reply"),
            ("gap_s", "until the next message"),
        ):
            values = [p[key] for p in of_kind if p[key] is not None]
            if values:
                rows.append(
                    (f"{kind} message: {what}", f"{statistics.median(values):.2f} s", "", None)
                )
    for name, seconds in results["imports"].items():
        rows.append((f"alone: {name}", f"{seconds:.2f} s", "", None))
    printed = table(rows)
    results["table"] = printed
    results["machine"]["load_at_end"] = os.getloadavg()
    keep()
    print(printed)
    return 0 if not results["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
