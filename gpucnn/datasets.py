"""Real datasets: MNIST-format (IDX) files such as MNIST and Fashion-MNIST, and CIFAR-10.

The loaders take the book's keywords and return ``(x_train, t_train), (x_test, t_test)``:

* ``normalize=True``: pixels as float32 in [0, 1]; ``False``: the raw uint8 values.
* ``flatten=True``: images as (N, H*W*C) rows; ``False``: (N, C, H, W).
* ``one_hot_label=True``: labels as (N, 10) float32 one-hot rows; ``False``: (N,) uint8.

Every reader checks magic numbers, dimensions and lengths: a truncated or damaged file,
or images and labels of different counts, raise :class:`DatasetError` naming the file
and the numbers, never a silently short dataset.

Where the data is: ``path=``, else ``$GPUCNN_DATA``, else (Fashion-MNIST only) Debian's
``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DatasetError", "load_cifar10", "load_dataset", "load_fashion_mnist", "load_mnist", "read_idx"]

ENV_VAR = "GPUCNN_DATA"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# IDX type byte → big-endian NumPy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_FILES = {
    "train_img": "train-images-idx3-ubyte",
    "train_label": "train-labels-idx1-ubyte",
    "test_img": "t10k-images-idx3-ubyte",
    "test_label": "t10k-labels-idx1-ubyte",
}


class DatasetError(ValueError):
    """A dataset file is missing, damaged or inconsistent."""


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DatasetError(f"{path}: damaged or truncated gzip data ({exc})") from exc
    return raw


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or raw), checking its header against its length.

    Returns an array of the file's type (uint8 for MNIST) and shape.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, type_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_TYPES:
        raise DatasetError(
            f"{path}: bad IDX magic number {data[:4].hex()} (expected 0000 then a type byte "
            f"{', '.join(f'{t:02x}' for t in _IDX_TYPES)} and the number of dimensions)"
        )
    if ndim is not None and dims != ndim:
        raise DatasetError(f"{path}: {dims}-D data, expected {ndim}-D")
    header = 4 + 4 * dims
    if len(data) < header:
        raise DatasetError(f"{path}: truncated header ({len(data)} bytes, {header} needed)")
    shape = struct.unpack(f">{dims}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing data"
        raise DatasetError(
            f"{path}: {what}: {len(data)} bytes, but the header {shape} of {dtype.name} needs exactly {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} has no {stem}[.gz]")


def _one_hot(t: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((t.size, classes), dtype=np.float32)
    out[np.arange(t.size), t] = 1.0
    return out


def _finish(x: np.ndarray, t: np.ndarray, normalize: bool, flatten: bool, one_hot_label: bool, classes: int):
    if normalize:
        x = x.astype(np.float32) / np.float32(255.0)
    x = x.reshape(len(x), -1) if flatten else x
    return x, (_one_hot(t, classes) if one_hot_label else t)


def _idx_split(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    img_path, lbl_path = _find(folder, images), _find(folder, labels)
    x = read_idx(img_path, ndim=3)
    t = read_idx(lbl_path, ndim=1)
    if len(x) != len(t):
        raise DatasetError(f"{img_path} has {len(x)} images but {lbl_path} has {len(t)} labels")
    if t.size and t.max() > 9:
        raise DatasetError(f"{lbl_path}: label {int(t.max())} out of range 0-9")
    return x[:, None, :, :], t


def _resolve(path: str | os.PathLike | None, default: Path | None, what: str) -> Path:
    folder = path or os.environ.get(ENV_VAR) or default
    hint = (
        f"point path= or ${ENV_VAR} at a folder holding train-images-idx3-ubyte.gz, "
        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
    )
    if folder is None:
        raise FileNotFoundError(f"no {what} folder given: {hint}")
    folder = Path(folder)
    if not folder.is_dir():
        install = (
            " Install Fashion-MNIST with: apt-get install dataset-fashion-mnist (Debian)."
            if default == FASHION_MNIST_DIR
            else ""
        )
        raise FileNotFoundError(f"{what} not found: {folder} is not a folder.{install} Or {hint}")
    return folder


def load_mnist(
    path: str | os.PathLike | None = None, normalize: bool = True, flatten: bool = True, one_hot_label: bool = False
):
    """MNIST-format data from a folder of IDX files (the book's ``load_mnist``).

    ``path`` defaults to ``$GPUCNN_DATA``. Returns ``(x_train, t_train), (x_test, t_test)``:
    x (N, 784) or (N, 1, 28, 28); t (N,) uint8 or (N, 10) one-hot.
    """
    folder = _resolve(path, None, "MNIST-format data")
    try:
        train = _idx_split(folder, _MNIST_FILES["train_img"], _MNIST_FILES["train_label"])
        test = _idx_split(folder, _MNIST_FILES["test_img"], _MNIST_FILES["test_label"])
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; expected the four MNIST-format files (IDX, optionally gzipped)") from exc
    return (
        _finish(*train, normalize, flatten, one_hot_label, 10),
        _finish(*test, normalize, flatten, one_hot_label, 10),
    )


def load_fashion_mnist(
    path: str | os.PathLike | None = None, normalize: bool = True, flatten: bool = True, one_hot_label: bool = False
):
    """Fashion-MNIST (60,000 + 10,000 images, 28x28, ten clothing classes), as :func:`load_mnist`.

    Default location: ``$GPUCNN_DATA`` or ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist``).
    """
    folder = _resolve(path, FASHION_MNIST_DIR, "Fashion-MNIST")
    return load_mnist(folder, normalize, flatten, one_hot_label)


_CIFAR_RECORD = 1 + 3 * 32 * 32


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DatasetError(
            f"{path}: {len(raw)} bytes is not a whole number of CIFAR-10 records "
            f"({_CIFAR_RECORD} bytes each): truncated or not a CIFAR-10 binary batch"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    t = records[:, 0].copy()
    if t.max() > 9:
        raise DatasetError(f"{path}: label {int(t.max())} out of range 0-9 (not a CIFAR-10 binary batch?)")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), t


def load_cifar10(
    path: str | os.PathLike | None = None, normalize: bool = True, flatten: bool = False, one_hot_label: bool = False
):
    """CIFAR-10 from its binary version (``data_batch_1.bin`` ... ``data_batch_5.bin``,
    ``test_batch.bin``). x (N, 3, 32, 32) or (N, 3072); t (N,) or (N, 10)."""
    folder = _resolve(path, None, "CIFAR-10")
    train_files = sorted(folder.glob("data_batch_*.bin"))
    test_file = folder / "test_batch.bin"
    if not train_files or not test_file.is_file():
        raise FileNotFoundError(
            f"{folder} needs data_batch_1.bin ... data_batch_5.bin and test_batch.bin (the CIFAR-10 binary version)"
        )
    parts = [_read_cifar_batch(f) for f in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    t_train = np.concatenate([p[1] for p in parts])
    x_test, t_test = _read_cifar_batch(test_file)
    return (
        _finish(x_train, t_train, normalize, flatten, one_hot_label, 10),
        _finish(x_test, t_test, normalize, flatten, one_hot_label, 10),
    )


DATASETS = {"fashion-mnist": load_fashion_mnist, "mnist": load_mnist, "cifar10": load_cifar10}


def load_dataset(name: str, path: str | os.PathLike | None = None, **kwargs):
    """A dataset by name (``fashion-mnist``, ``mnist``, ``cifar10``), as (N, C, H, W) images by default."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    kwargs.setdefault("flatten", False)
    return DATASETS[name](path, **kwargs)
