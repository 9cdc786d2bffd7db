"""Flower's :class:`~flwr.app.Array` to numpy and back, without numpy's header work per array.

An ``Array`` holds its values as a ``.npy`` file in memory. ``Array.numpy()`` reads it with
``np.load``, which parses the file's header (a Python literal, through ``ast``) every time,
and ``Array(ndarray)`` writes one with ``np.save``. For a small model that header work is most
of the cost: a round of 32 sites decodes and encodes a few hundred arrays at the server and at
the sites. Here each distinct header is parsed or written once, by numpy, and remembered; the
bytes are the same as Flower's, and an array this fast path does not cover (not
C-contiguous, structured or object dtypes, a header numpy writes in a later version) goes
through Flower's own code.

>>> import numpy as np
>>> from flwr.app import Array
>>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> encode(a).data == Array(a).data
True
>>> decode(Array(a)).tolist()
[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

_MAGIC = b"\x93NUMPY"
_CACHE_LIMIT = 4096  # distinct (dtype, shape) headers remembered; cleared when full

# the header's bytes (magic, version, length and the literal) -> (dtype, shape)
_READ: dict[bytes, tuple[np.dtype[Any], tuple[int, ...]]] = {}
# (dtype, shape) -> the header's bytes np.save writes for a C-contiguous array
_WRITTEN: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _header_end(data: bytes) -> int | None:
    """Where the values start in a ``.npy`` file of version 1, 2 or 3; None if it is not one."""
    if data[:6] != _MAGIC or len(data) < 12:
        return None
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    if data[6] in (2, 3):
        return 12 + int.from_bytes(data[8:12], "little")
    return None


class DecodedArray(Array):
    """An Array that keeps the values it was encoded from: :meth:`numpy` copies them instead
    of reading the bytes again. The server's validation decodes each update once and hands
    Flower's aggregation these (:func:`decoded_record`)."""

    def numpy(self) -> np.ndarray:
        values: np.ndarray = self.__dict__["_values"]
        return values.copy()


def decoded_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """:func:`to_record` of ``arrays`` as :class:`DecodedArray` s."""
    record = ArrayRecord()
    for name, values in arrays.items():
        contiguous = np.ascontiguousarray(values)
        plain = encode(contiguous)
        kept = DecodedArray(
            dtype=plain.dtype, shape=plain.shape, stype=plain.stype, data=plain.data
        )
        kept.__dict__["_values"] = contiguous
        record[name] = kept
    return record


def decode(array: Array) -> np.ndarray:
    """``array.numpy()``: a new, writable array with the values and the dtype and shape its
    header names."""
    if isinstance(array, DecodedArray):
        return array.numpy()
    data = array.data
    end = _header_end(data) if array.stype == "numpy.ndarray" else None
    if end is None:
        return array.numpy()
    header = data[:end]
    known = _READ.get(header)
    if known is None:
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        if fortran or dtype.hasobject or dtype.names is not None:
            return array.numpy()  # Flower's path: its own errors for what it refuses
        known = (dtype, tuple(shape))
        _remember(_READ, header, known)
    dtype, shape = known
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - end != count * dtype.itemsize:
        return array.numpy()  # a short or long file: np.load says what is wrong
    return np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape).copy()


def encode(ndarray: np.ndarray) -> Array:
    """``Array(ndarray)``: the same ``.npy`` bytes, dtype and shape."""
    if (
        not isinstance(ndarray, np.ndarray)
        or not ndarray.flags.c_contiguous
        or ndarray.dtype.hasobject
        or ndarray.dtype.names is not None
    ):
        return Array(ndarray)
    key = (ndarray.dtype, ndarray.shape)
    header = _WRITTEN.get(key)
    if header is None:
        stream = io.BytesIO()
        try:
            np.lib.format.write_array_header_1_0(
                stream, np.lib.format.header_data_from_array_1_0(ndarray)
            )
        except ValueError:  # a header too long for version 1: np.save picks the version
            return Array(ndarray)
        header = stream.getvalue()
        _remember(_WRITTEN, key, header)
    return Array(
        dtype=str(ndarray.dtype),
        shape=tuple(int(n) for n in ndarray.shape),
        stype="numpy.ndarray",
        data=header + ndarray.tobytes(),
    )


def to_record(weights: Mapping[str, Any]) -> ArrayRecord:
    """Numpy arrays (or torch tensors, copied to the CPU) as an ArrayRecord, in their order."""
    return ArrayRecord({k: encode(_as_numpy(v)) for k, v in weights.items()})


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord's arrays, in its order."""
    return {k: decode(v) for k, v in record.items()}


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    detach = getattr(value, "detach", None)  # a torch tensor, without importing torch here
    if detach is not None:
        return np.ascontiguousarray(detach().cpu().numpy())
    return np.ascontiguousarray(value)
