"""Arrays to and from Flower's ``.npy`` bytes without numpy's header work per array (issue 15).

Flower's own ``Array(ndarray)`` and ``Array.numpy()`` are the oracle: the bytes written must be
theirs, and the values read must be what ``np.load`` reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedretrain.flower.arrays import (
    DecodedArray,
    decode,
    decoded_record,
    encode,
    to_numpy,
    to_record,
)

SAMPLES = [
    np.array(1.5, dtype=np.float32),  # 0-d
    np.arange(7, dtype=np.float64),
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.arange(12, dtype=np.int64).reshape(3, 4) - 6,
    np.array([True, False, True]),
    np.arange(10, dtype=np.uint8),
    np.linspace(-1, 1, 16, dtype=np.float16).reshape(4, 4),
    np.zeros((0, 5), dtype=np.float32),
    np.arange(6, dtype=">i4"),  # big-endian
    np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32),
]


@pytest.mark.parametrize("values", SAMPLES, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_encode_writes_flowers_bytes_and_decode_reads_as_np_load(values: np.ndarray) -> None:
    for _ in range(2):  # a header remembered reads and writes the same as a new one
        ours, flowers = encode(values), Array(values)
        assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
        assert ours.data == flowers.data
        read = decode(flowers)
        expected = flowers.numpy()
        assert read.dtype == expected.dtype and read.shape == expected.shape
        np.testing.assert_array_equal(read, expected)
        assert read.flags.writeable and read.flags.c_contiguous


def test_arrays_the_fast_path_does_not_cover_go_through_flowers_code() -> None:
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert encode(fortran).data == Array(fortran).data  # np.save's Fortran-order file
    np.testing.assert_array_equal(decode(Array(fortran)), fortran)
    strided = np.arange(20, dtype=np.float64)[::2]
    np.testing.assert_array_equal(decode(encode(strided)), strided)
    whole = Array(np.ones(4, np.float32))
    short = Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=whole.data[:-4])
    with pytest.raises(ValueError):  # np.load's own complaint about the truncated file
        decode(short)


def test_decoding_does_not_share_memory_with_the_message() -> None:
    array = Array(np.arange(4, dtype=np.float32))
    first = decode(array)
    first[:] = -1
    np.testing.assert_array_equal(decode(array), np.arange(4, dtype=np.float32))


def test_records_of_numpy_and_torch_round_trip_in_order() -> None:
    state = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 2, dtype=torch.float64)}
    record = to_record(state)
    assert list(record) == ["b", "a"]
    flowers = ArrayRecord(state)
    assert all(record[k].data == flowers[k].data for k in state)
    back = to_numpy(record)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v.numpy())


def test_a_decoded_record_hands_flowers_aggregation_copies_of_its_values() -> None:
    values = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    record = decoded_record(values)
    kept = record["w"]
    assert isinstance(kept, DecodedArray)
    assert kept.data == Array(values["w"]).data  # a whole Array, bytes and all
    copy = kept.numpy()
    copy += 100
    np.testing.assert_array_equal(kept.numpy(), values["w"])
    np.testing.assert_array_equal(decode(kept), values["w"])
    np.testing.assert_array_equal(Array.numpy(kept), values["w"])  # its bytes say the same
