"""Small dataset files in the real formats, written by the tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# IDX type byte of each element type.
IDX_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array: np.ndarray, dtype=np.uint8) -> bytes:
    """An IDX file: 0x0000, the type byte of ``dtype`` (unsigned bytes by default), ndim,
    big-endian dims, then the big-endian data."""
    dtype = np.dtype(dtype)
    header = struct.pack(">HBB", 0, IDX_TYPE_CODES[dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.asarray(array).astype(dtype.newbyteorder(">")).tobytes()


def write_mnist(
    folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True, seed: int = 0, size: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """Four MNIST-format files of learnable 'images' (each class brightens its own rows)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 3, :] = 250
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[split] = (images, labels)
    return out["train"], out["t10k"]


def cifar_bytes(labels: np.ndarray, pixels: np.ndarray) -> bytes:
    """A CIFAR-10 binary batch: per record, one label byte then 3072 pixel bytes (R, G, B planes)."""
    return np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8).tobytes()


def write_cifar10(folder: Path, n_train: tuple[int, ...] = (4, 4), n_test: int = 3, seed: int = 0) -> dict:
    """``data_batch_1.bin`` ... (one per entry of ``n_train``) and ``test_batch.bin`` of random
    records; returns ``{file name: (labels, pixels)}``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, len(n_train) + 1)] + ["test_batch.bin"]
    written = {}
    for name, n in zip(names, (*n_train, n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        (folder / name).write_bytes(cifar_bytes(labels, pixels))
        written[name] = (labels, pixels)
    return written
