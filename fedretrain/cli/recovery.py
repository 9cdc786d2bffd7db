"""What a run folder still holds when its registry cannot be opened: for ``fedretrain models
check``, which reads and never writes.

Three sources survive a damaged ``registry.sqlite``: the rows SQLite can still read from it
(opened read-only and immutable, so not even a write-ahead log is created), the model files
(whole safetensors files whose metadata name their version and key), and the run's checkpoint
and timeline (where the run was, and which version served each period).
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

from safetensors import SafetensorError, safe_open

from fedretrain.checkpoint import STATE_FILE, CheckpointError, read_checkpoint
from fedretrain.registry import model_file
from fedretrain.registry.registry import MODELS_DIR, REGISTRY_FILE


def salvage(run_dir: Path) -> list[str]:
    """What can be recovered from ``run_dir``, one line each, most useful first."""
    lines = _rows(run_dir / REGISTRY_FILE)
    files = sorted((run_dir / MODELS_DIR).glob("v*.safetensors"), key=lambda p: _number(p.stem[1:]))
    lines.append(f"{len(files)} model files in {MODELS_DIR}/ (safetensors; metadata name each):")
    lines += [f"  {_describe(path)}" for path in files]
    lines += _where_the_run_was(run_dir)
    return lines


def _rows(path: Path) -> list[str]:
    """What SQLite can still read of the versions and events, without writing anything."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as err:
        return [f"registry rows: none readable ({err})"]
    lines = []
    try:
        for table, columns in (
            ("versions", "version, status, trigger, period, sha256"),
            ("events", "id, kind, period, version"),
        ):
            try:
                rows = conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall()
            except sqlite3.Error as err:
                lines.append(f"registry {table}: none readable ({err})")
                continue
            lines.append(f"registry {table}: {len(rows)} rows readable")
            if table == "versions":
                lines += [
                    f"  v{v} {status} ({trigger}, period {period}) sha256 {str(sha)[:12]}"
                    for v, status, trigger, period, sha in rows
                ]
    finally:
        conn.close()
    return lines


def _describe(path: Path) -> str:
    try:
        data = path.read_bytes()
        with safe_open(str(path), framework="np") as handle:
            meta = json.loads((handle.metadata() or {}).get("fedretrain", "{}"))
            arrays = len(list(handle.keys()))
    except (OSError, SafetensorError, ValueError) as err:
        return f"{path.name}: unreadable ({err})"
    key = meta.get("fedretrain.key", "?")
    return f"{path.name}: key {key}, {arrays} arrays, sha256 {model_file.sha256(data)[:12]}"


def _where_the_run_was(run_dir: Path) -> list[str]:
    lines = []
    if not (run_dir / "checkpoint" / STATE_FILE).exists():
        lines.append("checkpoint: none")
    else:
        try:
            state, _ = read_checkpoint(run_dir / "checkpoint")
            where = f"after period {state.completed_period}, round {state.server_round}"
            lines.append(f"checkpoint: {where}")
        except CheckpointError as err:
            lines.append(f"checkpoint: unreadable ({err})")
    try:
        with (run_dir / "timeline.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        rows = []
    if rows and "serving_version" in rows[-1]:
        served = ", ".join(f"p{r['period']}: v{r['serving_version']}" for r in rows[-5:])
        lines.append(f"timeline.csv: {len(rows)} periods; served last {served}")
    return lines


def _number(text: str) -> int:
    return int(text) if text.isdigit() else 0
