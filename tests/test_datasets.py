"""Dataset readers: the book's keywords, IDX and CIFAR-10 binary files, validation."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from gpucnn.datasets import DatasetError, load_cifar10, load_dataset, load_fashion_mnist, load_mnist, read_idx

from .idx_files import idx_bytes, write_mnist


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
    with pytest.raises(FileNotFoundError, match="point path= or \\$GPUCNN_DATA"):
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


def _cifar_file(path, n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    path.write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
    return labels, pixels


def test_cifar10_binary_reader(tmp_path):
    parts = [_cifar_file(tmp_path / f"data_batch_{i}.bin", 4, i) for i in range(1, 3)]
    test_labels, test_pixels = _cifar_file(tmp_path / "test_batch.bin", 3, 9)
    (x, t), (xt, tt) = load_cifar10(tmp_path)
    assert x.shape == (8, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(t, np.concatenate([p[0] for p in parts]))
    np.testing.assert_allclose(xt[1, 2, 0, :4], test_pixels[1, 2048:2052] / 255.0, rtol=1e-6)  # channel-major
    (tmp_path / "test_batch.bin").write_bytes((tmp_path / "test_batch.bin").read_bytes()[:-10])
    with pytest.raises(DatasetError, match="not a whole number of CIFAR-10 records"):
        load_cifar10(tmp_path)
