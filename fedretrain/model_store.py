"""Earlier models of a run, kept for reuse when their concept recurs.

A stand-in for the model registry: every model that served is written to the run folder as
safetensors with a line of lineage in ``models/index.json``, and kept in memory so that the
server can offer it to the sites again without reading it back.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fedretrain.atomic import atomic_replace
from fedretrain.model_io import save_state_dict


@dataclass(frozen=True)
class StoredModel:
    version: int
    parent: int | None
    period: int  # the period whose data it was trained on (or reused at)
    action: str  # initial, warm, reinit, kept
    rounds: int
    validation_accuracy: float
    reason: str
    epsilon_by_site: dict[int, float] | None = None  # DP-SGD: what training it cost each site


class ModelStore:
    """Versions 1, 2, ... of a run's served models; at most ``max_kept`` kept for reuse."""

    def __init__(self, folder: Path, max_kept: int) -> None:
        self.folder = folder
        self.max_kept = max_kept
        self.entries: list[StoredModel] = []
        self._arrays: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, arrays: dict[str, np.ndarray], **lineage: object) -> StoredModel:
        """Store a new version; returns its entry."""
        entry = StoredModel(version=len(self.entries) + 1, **lineage)  # type: ignore[arg-type]
        save_state_dict(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
            self.folder / f"v{entry.version}.safetensors",
            metadata={"version": str(entry.version), "period": str(entry.period)},
        )
        self.entries.append(entry)
        self._arrays[entry.version] = {k: np.array(v, copy=True) for k, v in arrays.items()}
        while len(self._arrays) > self.max_kept:
            self._arrays.popitem(last=False)
        text = json.dumps([asdict(e) for e in self.entries], indent=1)
        atomic_replace(self.folder / "index.json", lambda tmp: tmp.write_text(text))
        return entry

    def reusable(self, exclude: int) -> list[tuple[StoredModel, dict[str, np.ndarray]]]:
        """Kept versions other than ``exclude`` (the serving one), newest first."""
        return [
            (self.entries[v - 1], arrays)
            for v, arrays in reversed(self._arrays.items())
            if v != exclude
        ]
