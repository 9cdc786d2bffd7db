"""Model files: safetensors (never pickle), written atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedretrain.atomic import atomic_replace


def save_state_dict(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same folder, are fsynced, renamed over ``path``,
    and the folder is fsynced so the rename itself survives a power loss.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_replace(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def numpy_state(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays, in its order."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
