"""``fedretrain-compare``: one drift scenario under several retraining policies, side by side.

Each policy runs as its own simulation (``python -m fedretrain ... policy=P``, a fresh process
and Ray) in ``OUT/P``; the table reads their ``summary.json``.

Examples
--------
    fedretrain-compare scenario=sine_flip
    fedretrain-compare scenario=sea_thresholds --policies periodic,triggered --out runs/sea
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

POLICIES = ("never", "periodic", "triggered", "oracle")
COLUMNS = (
    ("policy", "policy", "{}"),
    ("mean prequential acc", "mean_prequential_accuracy", "{:.4f}"),
    ("retrain rounds", "retrain_rounds", "{}"),
    ("retrains", "retrains", "{}"),
    ("detection delays", "detection_delays", "{}"),
    ("missed", "missed_changes", "{}"),
    ("false alarms", "false_alarms", "{}"),
    ("wall s", "wall_seconds", "{:.1f}"),
)


def run_policy(policy: str, overrides: Sequence[str], out: Path) -> dict[str, Any]:
    """Run one simulation with ``policy``; return its summary (raise with its log tail)."""
    run_dir = out / policy
    command = [
        sys.executable,
        "-m",
        "fedretrain",
        *overrides,
        f"policy={policy}",
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    summary = run_dir / "summary.json"
    if done.returncode != 0 or not summary.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"policy {policy} failed (exit {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(summary.read_text())
    return result


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the policies' summaries."""
    header = [title for title, _, _ in COLUMNS]
    body = [[fmt.format(row.get(key)) for _, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "fedretrain-compare") -> None:
    """The command; ``prog`` names it in usage and errors (``fedretrain compare`` too)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a drift scenario under several retraining policies and compare them.",
        epilog="Other arguments are Hydra overrides for every run, e.g. scenario=sine_flip.",
    )
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: outputs/...)")
    args, overrides = parser.parse_known_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    if not any(o.startswith("scenario=") for o in overrides):
        parser.error("name a drift scenario, e.g. scenario=sine_flip (see conf/scenario/)")
    out = args.out or Path(time.strftime("outputs/compare-%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for policy in policies:
        print(f"[fedretrain-compare] running policy={policy} ...", flush=True)
        summary = run_policy(policy, overrides, out)
        rows.append({**summary, "policy": policy})
    table = format_table(rows)
    print(table)
    (out / "comparison.json").write_text(
        json.dumps({"overrides": list(overrides), "rows": rows, "table": table}, indent=2)
    )
    print(f"[fedretrain-compare] runs and comparison.json in {out}")


if __name__ == "__main__":
    main()
