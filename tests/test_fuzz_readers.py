"""The dataset readers under random bytes, truncations, bit flips and lying headers.

Whatever the bytes, a reader returns data that matches its header or raises its documented
error (:class:`gpucnn.datasets.DatasetError`), never a NumPy, gzip or struct error, and it
allocates memory for the bytes a file holds, never for the sizes its header claims.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucnn.datasets import DatasetError, load_cifar10, load_mnist, read_idx

from .idx_files import IDX_TYPE_CODES, cifar_bytes, idx_bytes, write_cifar10, write_mnist

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
GOOD_IDX = idx_bytes(np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5))
IDX_TYPES = [np.dtype(t) for t in IDX_TYPE_CODES]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _read(path, data: bytes, **kwargs) -> None:
    """``read_idx`` of ``data``: DatasetError, or an array that is what its header says."""
    try:
        array = read_idx(_write(path, data), **kwargs)
    except DatasetError:
        return
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    dims = raw[3]
    assert array.shape == struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    assert array.nbytes == len(raw) - 4 - 4 * dims


def _flip(data: bytes, bits: list[int]) -> bytes:
    out = bytearray(data)
    for bit in bits:
        out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@FUZZ
@given(data=st.binary(max_size=300), gz=st.booleans())
def test_idx_random_bytes(tmp_path, data, gz):
    _read(tmp_path / "f", gzip.compress(data, mtime=0) if gz else data)


@FUZZ
@given(
    cut=st.integers(0, len(GOOD_IDX) - 1), gz=st.booleans(), ndim=st.sampled_from([None, 1, 3]), gz_cut=st.booleans()
)
def test_idx_truncations(tmp_path, cut, gz, ndim, gz_cut):
    """Truncated data, or (``gz_cut``) a truncated gzip stream of the whole file."""
    if gz and gz_cut:
        packed = gzip.compress(GOOD_IDX, mtime=0)
        data = packed[: cut * len(packed) // len(GOOD_IDX)]
    else:
        data = gzip.compress(GOOD_IDX[:cut], mtime=0) if gz else GOOD_IDX[:cut]
    with pytest.raises(DatasetError):
        read_idx(_write(tmp_path / "f", data), ndim=ndim)


@FUZZ
@given(
    bits=st.lists(st.integers(0, 8 * 400), min_size=1, max_size=4), gz=st.booleans(), ndim=st.sampled_from([None, 3])
)
def test_idx_bit_flips(tmp_path, bits, gz, ndim):
    """Flips in the header or the data of a raw file, or anywhere in a gzip stream."""
    data = _flip(gzip.compress(GOOD_IDX, mtime=0) if gz else GOOD_IDX, bits)
    _read(tmp_path / "f", data, ndim=ndim)


@FUZZ
@given(
    type_code=st.sampled_from([*IDX_TYPE_CODES.values(), 0x00, 0x0A, 0xFF]),
    shape=st.lists(st.sampled_from([0, 1, 2, 3, 255, 2**16, 2**31, 2**32 - 1]), max_size=6),
    extra_dims=st.integers(0, 2),
    payload=st.binary(max_size=64),
    gz=st.booleans(),
)
def test_idx_absurd_headers(tmp_path, type_code, shape, extra_dims, payload, gz):
    """Headers of any type and sizes, with a dimension count that may disagree with them."""
    header = struct.pack(">HBB", 0, type_code, len(shape) + extra_dims) + struct.pack(f">{len(shape)}I", *shape)
    data = header + payload
    _read(tmp_path / "f", gzip.compress(data, mtime=0) if gz else data)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((2**31, 2**31), np.uint8),
        ((2**32 - 1,) * 3, np.float64),
        ((60000, 28, 2**20), np.uint8),
        ((0, 2**31), np.int32),
    ],
)
def test_a_lying_header_allocates_nothing_for_its_claim(tmp_path, gz, shape, dtype):
    """Memory follows the bytes the file holds (here 1 KiB), never the sizes its header gives."""
    header = struct.pack(">HBB", 0, IDX_TYPE_CODES[np.dtype(dtype)], len(shape)) + struct.pack(
        f">{len(shape)}I", *shape
    )
    data = header + bytes(1024)
    path = _write(tmp_path / "f", gzip.compress(data, mtime=0) if gz else data)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # the read chunk (1 MiB) and the gzip buffers; the claims are GiB to ZiB


@FUZZ
@given(
    which=st.sampled_from(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    ),
    bits=st.lists(st.integers(0, 8 * 120), min_size=1, max_size=3),
    dtype=st.sampled_from(IDX_TYPES),
)
def test_mnist_loader_with_one_damaged_file(tmp_path, which, bits, dtype):
    """One of the four files stored as another IDX type, with bits flipped: the loader returns
    a dataset that passes its checks (bytes for pixels, labels 0-9), or raises DatasetError."""
    write_mnist(tmp_path, n_train=6, n_test=4, gz=False, size=4)
    path = tmp_path / which
    path.write_bytes(_flip(idx_bytes(read_idx(path), dtype), bits))
    try:
        (x, t), (xt, tt) = load_mnist(tmp_path, flatten=False)
    except DatasetError:
        return
    for images, labels in ((x, t), (xt, tt)):
        assert images.dtype == np.float32 and images.ndim == 4 and images.shape[1] == 1
        assert 0 <= images.min() and images.max() <= 1
        assert labels.dtype == np.uint8 and len(labels) == len(images) and labels.max() <= 9


def _cifar_records(labels: list[int]) -> bytes:
    return cifar_bytes(np.array(labels, dtype=np.uint8), np.full((len(labels), 3072), 7, dtype=np.uint8))


CIFAR_LABELS = st.lists(st.integers(0, 9), min_size=1, max_size=3)
CIFAR_DATA = st.one_of(
    st.binary(max_size=400),
    st.lists(st.integers(0, 9), max_size=3).map(_cifar_records),  # whole records, or none
    st.tuples(CIFAR_LABELS, st.integers(1, 3072)).map(lambda case: _cifar_records(case[0])[: -case[1]]),
    st.lists(st.integers(0, 255), min_size=1, max_size=3).map(_cifar_records),  # any label byte
)


@FUZZ
@given(data=CIFAR_DATA)
def test_cifar_reader(tmp_path, data):
    """Random bytes, whole records, truncated records and records of any label byte."""
    write_cifar10(tmp_path, n_train=(2,), n_test=2)
    (tmp_path / "data_batch_1.bin").write_bytes(data)
    try:
        (x, t), _ = load_cifar10(tmp_path)
    except DatasetError:
        return
    assert len(data) % 3073 == 0 and x.shape == (len(data) // 3073, 3, 32, 32)
    assert t.dtype == np.uint8 and t.max() <= 9 and 0 <= x.min() and x.max() <= 1
