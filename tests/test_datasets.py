"""Dataset readers: the book's keywords, IDX and CIFAR-10 binary files, validation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from gpucnn.datasets import DatasetError, load_cifar10, load_dataset, load_fashion_mnist, load_mnist, read_idx

from .idx_files import cifar_bytes, idx_bytes, write_cifar10, write_mnist


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_with_the_books_keywords(tmp_path, gz):
    (train_x, train_t), (test_x, test_t) = write_mnist(tmp_path, gz=gz)
    (x, t), (xt, tt) = load_mnist(tmp_path)
    assert x.shape == (40, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x[0], train_x[0].reshape(-1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(t, train_t)
    assert xt.shape == (20, 784) and tt.shape == (20,)
    (x, t), _ = load_mnist(tmp_path, normalize=False, flatten=False, one_hot_label=True)
    assert x.shape == (40, 1, 28, 28) and x.dtype == np.uint8
    assert t.shape == (40, 10) and (t.argmax(axis=1) == train_t).all() and (t.sum(axis=1) == 1).all()


def test_data_location_from_env_and_errors(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path))
    assert load_fashion_mnist()[0][0].shape == (40, 784)
    assert load_dataset("mnist")[0][0].shape == (40, 1, 28, 28)
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()
    monkeypatch.delenv("GPUCNN_DATA")
    with pytest.raises(
        FileNotFoundError,
        match=r"no MNIST-format data folder given. Pass it as path= \(--data on the command line\) or in \$GPUCNN_DATA",
    ):
        load_mnist()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no train-images-idx3-ubyte"):
        load_mnist(empty)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_truncated_and_corrupted_files(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    cases = {
        "truncated": (good[:-5], r"truncated: 59 bytes, but the header \(3, 4, 4\) of uint8 needs exactly 64"),
        "trailing": (good + b"\x00", "has trailing data"),
        "magic": (b"\x01\x02" + good[2:], "bad IDX magic number"),
        "short": (b"\x00\x00", "too short for an IDX header"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DatasetError, match=message):
            read_idx(path)
    (tmp_path / "gz").write_bytes(gzip.compress(good)[:-8])
    with pytest.raises(DatasetError, match="damaged or truncated gzip"):
        read_idx(tmp_path / "gz")
    (tmp_path / "dims").write_bytes(good)
    with pytest.raises(DatasetError, match="3-D data, expected 1-D"):
        read_idx(tmp_path / "dims", ndim=1)


def test_images_and_labels_of_different_counts(tmp_path):
    write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(39, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="has 40 images but .* has 39 labels"):
        load_mnist(tmp_path)


def test_cifar10_binary_reader(tmp_path):
    written = write_cifar10(tmp_path, n_train=(4, 4), n_test=3)
    (x, t), (xt, tt) = load_cifar10(tmp_path)
    assert x.shape == (8, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(t, np.concatenate([written[f"data_batch_{i}.bin"][0] for i in (1, 2)]))
    test_pixels = written["test_batch.bin"][1]
    np.testing.assert_allclose(xt[1, 2, 0, :4], test_pixels[1, 2048:2052] / 255.0, rtol=1e-6)  # channel-major
    (tmp_path / "test_batch.bin").write_bytes((tmp_path / "test_batch.bin").read_bytes()[:-10])
    with pytest.raises(DatasetError, match="not a whole number of CIFAR-10 records"):
        load_cifar10(tmp_path)


def test_cifar10_labels_out_of_range(tmp_path):
    labels, pixels = np.array([3, 12, 5], dtype=np.uint8), np.zeros((3, 3072), dtype=np.uint8)
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_2.bin").write_bytes(cifar_bytes(labels, pixels))
    with pytest.raises(DatasetError, match="data_batch_2.bin: label 12 of record 1 out of range 0-9"):
        load_cifar10(tmp_path)


def test_cifar10_missing_files_hint_names_cifar_files(tmp_path, monkeypatch):
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    for folder in (None, tmp_path / "absent", tmp_path):
        with pytest.raises(FileNotFoundError) as info:
            load_cifar10(folder)
        message = str(info.value)
        assert "data_batch_1.bin" in message and "test_batch.bin" in message
        assert "idx" not in message and "ubyte" not in message


def _mnist_with(tmp_path, name: str, data: bytes):
    write_mnist(tmp_path, gz=False, size=4)
    (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(
    "labels,dtype,message",
    [
        ([1, -1, 2], np.int8, "label -1 at index 1 out of range 0-9"),
        ([1, 2, 300], np.int16, "label 300 at index 2 out of range 0-9"),
        ([10, 2, 3], np.uint8, "label 10 at index 0 out of range 0-9"),
        ([1.0, 2.0, 3.0], np.float32, r"labels must be whole numbers, the file holds float32 \(IDX type 0x0d\)"),
        ([1.5, 2.0, 3.0], np.float64, r"labels must be whole numbers, the file holds float64 \(IDX type 0x0e\)"),
    ],
)
def test_labels_must_be_whole_numbers_in_range(tmp_path, labels, dtype, message):
    write_mnist(tmp_path, n_test=3, gz=False, size=4)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array(labels), dtype))
    with pytest.raises(DatasetError, match=message):
        load_mnist(tmp_path)


def test_labels_of_a_wider_integer_type_come_back_as_uint8(tmp_path):
    (_, train_t), _ = write_mnist(tmp_path, gz=False, size=4)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(train_t, np.int32))
    (_, t), _ = load_mnist(tmp_path)
    assert t.dtype == np.uint8
    np.testing.assert_array_equal(t, train_t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int16])
def test_images_must_be_unsigned_bytes(tmp_path, dtype):
    images = np.full((40, 4, 4), 0.5 if np.dtype(dtype).kind == "f" else 7)
    _mnist_with(tmp_path, "train-images-idx3-ubyte", idx_bytes(images, dtype))
    with pytest.raises(DatasetError, match=r"images must be unsigned bytes \(IDX type 0x08, pixels 0-255\)"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("shape", [(0, 4, 4), (40, 0, 4)])
def test_files_without_pixels_are_refused(tmp_path, shape):
    _mnist_with(tmp_path, "train-images-idx3-ubyte", idx_bytes(np.zeros(shape, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="no pixels"):
        load_mnist(tmp_path)


def test_header_sizes_beyond_int64(tmp_path):
    """Sizes whose product overflows an int64, with data or without (a zero size)."""
    big = 2**32 - 1
    header = struct.pack(">HBB", 0, 0x0E, 3) + struct.pack(">3I", big, big, big)
    (tmp_path / "huge").write_bytes(header + bytes(64))
    with pytest.raises(DatasetError, match=r"sizes \(4294967295, 4294967295, 4294967295\) of float64 are beyond"):
        read_idx(tmp_path / "huge")
    header = struct.pack(">HBB", 0, 0x08, 4) + struct.pack(">4I", *[2**16] * 4)  # 2**64 elements: 0 in int64
    (tmp_path / "wraps").write_bytes(header)
    with pytest.raises(DatasetError, match="are beyond what an array can hold"):
        read_idx(tmp_path / "wraps")
    header = struct.pack(">HBB", 0, 0x08, 4) + struct.pack(">4I", 0, big, big, big)
    (tmp_path / "empty-but-huge").write_bytes(header)
    with pytest.raises(DatasetError, match="are beyond what an array can hold"):
        read_idx(tmp_path / "empty-but-huge")


def test_too_many_dimensions(tmp_path):
    (tmp_path / "dims").write_bytes(struct.pack(">HBB", 0, 0x08, 200) + struct.pack(">200I", *([1] * 200)) + b"\x00")
    with pytest.raises(DatasetError, match="200 dimensions, more than the 32"):
        read_idx(tmp_path / "dims")


def test_trailing_data_in_a_gzipped_file_is_counted(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    (tmp_path / "x.gz").write_bytes(gzip.compress(good + bytes(100)))
    with pytest.raises(DatasetError, match="has trailing data: 164 bytes, but the header .* needs exactly 64"):
        read_idx(tmp_path / "x.gz")
