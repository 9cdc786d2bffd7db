"""A version's model file: safetensors bytes, hashed as written and verified as read.

The bytes are built in memory, hashed, and written with :func:`fedretrain.atomic.atomic_replace`,
so the recorded sha256 is that of exactly the bytes on disk. Reading verifies the hash of the
bytes it then decodes: a file changed between the check and the read cannot slip through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from fedretrain.atomic import atomic_replace
from fedretrain.registry.errors import ModelFileError


def encode(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes for ``arrays`` (contiguous copies; names must be text).

    The bytes are canonical: the same arrays and metadata give the same bytes, and so the
    same sha256, whatever order the mappings hold them in. (safetensors writes the metadata of
    a file in hash-map order, which varies between processes, so it is stored as one entry:
    ``{"fedretrain": <the metadata as JSON with sorted keys>}``.)
    """
    if not arrays:
        raise ValueError("a model needs at least one array")
    tensors = {}
    for name, value in sorted(arrays.items(), key=lambda item: str(item[0])):
        if not isinstance(name, str):
            raise ValueError(f"array name {name!r} is not text")
        array = np.ascontiguousarray(value)
        if array.dtype == object:
            raise ValueError(f"array {name!r} has dtype object")
        tensors[name] = array
    return save(tensors, metadata={"fedretrain": json.dumps(dict(metadata), sort_keys=True)})


def decode(data: bytes) -> dict[str, np.ndarray]:
    """The arrays in safetensors ``data``, as writable numpy arrays."""
    return {name: np.array(value, copy=True) for name, value in load(data).items()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a crash leaves the old file or the new one, never half."""
    atomic_replace(path, lambda tmp: tmp.write_bytes(data))


def read_verified(path: Path, expected: str, version: int) -> bytes:
    """The bytes of ``path`` if their sha256 is ``expected``; a :class:`ModelFileError` if not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"model file {path} of v{version} is missing (expected sha256 {expected})"
        ) from None
    except OSError as err:
        raise ModelFileError(
            f"model file {path} of v{version} cannot be read: {err.strerror} "
            f"(expected sha256 {expected})"
        ) from None
    actual = sha256(data)
    if actual != expected:
        raise ModelFileError(
            f"model file {path} of v{version} is corrupt: sha256 {actual}, expected {expected}"
        )
    return data
