"""Real datasets: MNIST-format (IDX) files such as MNIST and Fashion-MNIST, and CIFAR-10.

The loaders take the book's keywords and return ``(x_train, t_train), (x_test, t_test)``:

* ``normalize=True``: pixels as float32 in [0, 1]; ``False``: the raw uint8 values.
* ``flatten=True``: images as (N, H*W*C) rows; ``False``: (N, C, H, W).
* ``one_hot_label=True``: labels as (N, 10) float32 one-hot rows; ``False``: (N,) uint8.

Every reader checks magic numbers, types, dimensions, lengths and labels: a truncated or
damaged file, a header that promises more data than the file holds, images that are not
unsigned bytes, labels that are not whole numbers in 0-9, or images and labels of different
counts raise :class:`DatasetError` naming the file and the numbers, never a silently short
or wrong dataset. Memory is allocated for the data a file holds, never for what its header
claims. A missing folder or file raises :class:`FileNotFoundError`.

Where the data is: ``path=``, else ``$GPUCNN_DATA``, else (Fashion-MNIST only) Debian's
``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``.

Tables come from :mod:`gpucnn.tables` and are re-exported here: :func:`load_csv` (features
and labels from CSV files) and :func:`load_breast_cancer` (the Wisconsin breast-cancer
table, scikit-learn's bundled copy, split into training and test rows).
:data:`DATASETS` names every dataset :func:`load_dataset` loads, and :data:`CLASSES` the
number of classes of each.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .tables import load_breast_cancer, load_csv

__all__ = [
    "CLASSES",
    "DATASETS",
    "DatasetError",
    "load_breast_cancer",
    "load_cifar10",
    "load_csv",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]

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
IMAGE_CLASSES = 10  # every image dataset here: MNIST, Fashion-MNIST and CIFAR-10 label their images 0-9

# IDX type byte → big-endian NumPy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_MAX_DIMS = 32  # NumPy 1.x's limit; real IDX files have 1 to 4
_READ_CHUNK = 1 << 20  # bytes read at a time, so that a lying header never sizes a buffer
_MNIST_FILES = {
    "train_img": "train-images-idx3-ubyte",
    "train_label": "train-labels-idx1-ubyte",
    "test_img": "t10k-images-idx3-ubyte",
    "test_label": "t10k-labels-idx1-ubyte",
}
_MNIST_HINT = (
    "a folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
)
_CIFAR_HINT = "a folder holding data_batch_1.bin ... data_batch_5.bin and test_batch.bin (the CIFAR-10 binary version)"


class DatasetError(ValueError):
    """A dataset file is damaged, inconsistent, or not of the kind the loader reads."""


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """At most ``size`` bytes from ``stream``, fewer at its end; read in chunks, so that the
    memory used follows the data there is, not ``size``."""
    parts, left = [], size
    while left > 0:
        part = stream.read(min(left, _READ_CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _count_rest(stream: BinaryIO) -> int:
    """The number of bytes left in ``stream`` (read and dropped)."""
    total = 0
    while part := stream.read(_READ_CHUNK):
        total += len(part)
    return total


def _parse_idx(stream: BinaryIO, path: Path, ndim: int | None) -> np.ndarray:
    head = _read_up_to(stream, 4)
    if len(head) < 4:
        raise DatasetError(f"{path}: {len(head)} bytes, too short for an IDX header")
    zero, type_code, dims = struct.unpack(">HBB", head)
    if zero != 0 or type_code not in _IDX_TYPES:
        raise DatasetError(
            f"{path}: bad IDX magic number {head.hex()} (expected 0000 then a type byte "
            f"{', '.join(f'{t:02x}' for t in _IDX_TYPES)} and the number of dimensions)"
        )
    if ndim is not None and dims != ndim:
        raise DatasetError(f"{path}: {dims}-D data, expected {ndim}-D")
    if dims > _IDX_MAX_DIMS:
        raise DatasetError(f"{path}: {dims} dimensions, more than the {_IDX_MAX_DIMS} an IDX reader accepts")
    header = 4 + 4 * dims
    sizes = _read_up_to(stream, 4 * dims)
    if len(sizes) < 4 * dims:
        raise DatasetError(f"{path}: truncated header ({4 + len(sizes)} bytes, {header} needed)")
    shape = struct.unpack(f">{dims}I", sizes)
    dtype = np.dtype(_IDX_TYPES[type_code])
    # Python integers: a lying header cannot overflow them, as it would an int64.
    payload_size = math.prod(shape) * dtype.itemsize
    limit = np.iinfo(np.intp).max
    if math.prod(d for d in shape if d) * dtype.itemsize > limit:  # NumPy refuses such a shape, even empty
        raise DatasetError(
            f"{path}: the header's sizes {shape} of {dtype.name} are beyond what an array can hold "
            f"({limit:,} bytes): not an IDX file, or a damaged one"
        )
    expected = header + payload_size
    payload = _read_up_to(stream, payload_size + 1)
    if len(payload) != payload_size:
        if len(payload) < payload_size:
            what, total = "truncated", header + len(payload)
        else:
            what, total = "has trailing data", header + len(payload) + _count_rest(stream)
        raise DatasetError(
            f"{path}: {what}: {total} bytes, but the header {shape} of {dtype.name} needs exactly {expected}"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or raw), checking its header against its length.

    Returns an array of the file's type (uint8 for MNIST) and shape. Raises
    :class:`DatasetError` for anything but a well-formed IDX file (of ``ndim`` dimensions,
    when given), :class:`FileNotFoundError` when there is no file.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raw.seek(0)
            return _parse_idx(raw, path, ndim)
        raw.seek(0)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _parse_idx(stream, path, ndim)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DatasetError(f"{path}: damaged or truncated gzip data ({exc})") from exc


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


def _type_byte(dtype: np.dtype) -> str:
    code = next(c for c, name in _IDX_TYPES.items() if np.dtype(name).newbyteorder("=") == dtype)
    return f"{dtype.name} (IDX type 0x{code:02x})"


def _check_labels(t: np.ndarray, path: Path) -> np.ndarray:
    """Labels as uint8, after checking that they are whole numbers in 0-9."""
    if t.dtype.kind not in "iu":
        raise DatasetError(f"{path}: labels must be whole numbers, the file holds {_type_byte(t.dtype)}")
    bad = np.flatnonzero((t < 0) | (t >= IMAGE_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{path}: label {int(t[i])} at index {i} out of range 0-{IMAGE_CLASSES - 1} "
            f"({bad.size} labels out of range)"
        )
    return t.astype(np.uint8)


def _idx_split(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    img_path, lbl_path = _find(folder, images), _find(folder, labels)
    x = read_idx(img_path, ndim=3)
    if x.dtype != np.uint8:
        raise DatasetError(
            f"{img_path}: images must be unsigned bytes (IDX type 0x08, pixels 0-255), "
            f"the file holds {_type_byte(x.dtype)}"
        )
    if x.size == 0:
        raise DatasetError(f"{img_path}: no pixels: the header says {x.shape[0]} images of {x.shape[1]}x{x.shape[2]}")
    t = _check_labels(read_idx(lbl_path, ndim=1), lbl_path)
    if len(x) != len(t):
        raise DatasetError(f"{img_path} has {len(x)} images but {lbl_path} has {len(t)} labels")
    return x[:, None, :, :], t


def _resolve(path: str | os.PathLike | None, default: Path | None, what: str, holding: str) -> Path:
    """The dataset's folder; ``holding`` says what it must hold, for the hints."""
    folder = path or os.environ.get(ENV_VAR) or default
    hint = f"Pass it as path= (--data on the command line) or in ${ENV_VAR}: {holding}"
    if folder is None:
        raise FileNotFoundError(f"no {what} folder given. {hint}")
    folder = Path(folder)
    if not folder.is_dir():
        install = (
            " Install Fashion-MNIST with: apt-get install dataset-fashion-mnist (Debian)."
            if default == FASHION_MNIST_DIR
            else ""
        )
        raise FileNotFoundError(f"{what} not found: {folder} is not a folder.{install} {hint}")
    return folder


def load_mnist(
    path: str | os.PathLike | None = None, normalize: bool = True, flatten: bool = True, one_hot_label: bool = False
):
    """MNIST-format data from a folder of IDX files (the book's ``load_mnist``).

    ``path`` defaults to ``$GPUCNN_DATA``. Returns ``(x_train, t_train), (x_test, t_test)``:
    x (N, 784) or (N, 1, 28, 28); t (N,) uint8 or (N, 10) one-hot. Images must be unsigned
    bytes and labels whole numbers in 0-9.
    """
    folder = _resolve(path, None, "MNIST-format data", _MNIST_HINT)
    try:
        train = _idx_split(folder, _MNIST_FILES["train_img"], _MNIST_FILES["train_label"])
        test = _idx_split(folder, _MNIST_FILES["test_img"], _MNIST_FILES["test_label"])
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; expected the four MNIST-format files (IDX, optionally gzipped)") from exc
    return (
        _finish(*train, normalize, flatten, one_hot_label, IMAGE_CLASSES),
        _finish(*test, normalize, flatten, one_hot_label, IMAGE_CLASSES),
    )


def load_fashion_mnist(
    path: str | os.PathLike | None = None, normalize: bool = True, flatten: bool = True, one_hot_label: bool = False
):
    """Fashion-MNIST (60,000 + 10,000 images, 28x28, ten clothing classes), as :func:`load_mnist`.

    Default location: ``$GPUCNN_DATA`` or ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist``).
    """
    folder = _resolve(path, FASHION_MNIST_DIR, "Fashion-MNIST", _MNIST_HINT)
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
    bad = np.flatnonzero(t >= IMAGE_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{path}: label {int(t[i])} of record {i} out of range 0-{IMAGE_CLASSES - 1} (not a CIFAR-10 binary batch?)"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), t


def load_cifar10(
    path: str | os.PathLike | None = None, normalize: bool = True, flatten: bool = False, one_hot_label: bool = False
):
    """CIFAR-10 from its binary version (``data_batch_1.bin`` ... ``data_batch_5.bin``,
    ``test_batch.bin``). x (N, 3, 32, 32) or (N, 3072); t (N,) or (N, 10)."""
    folder = _resolve(path, None, "CIFAR-10", _CIFAR_HINT)
    train_files = sorted(folder.glob("data_batch_*.bin"))
    test_file = folder / "test_batch.bin"
    if not train_files or not test_file.is_file():
        raise FileNotFoundError(f"{folder} is not {_CIFAR_HINT}")
    parts = [_read_cifar_batch(f) for f in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    t_train = np.concatenate([p[1] for p in parts])
    x_test, t_test = _read_cifar_batch(test_file)
    return (
        _finish(x_train, t_train, normalize, flatten, one_hot_label, IMAGE_CLASSES),
        _finish(x_test, t_test, normalize, flatten, one_hot_label, IMAGE_CLASSES),
    )


DATASETS = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "breast-cancer": load_breast_cancer,
}
CLASSES = {"fashion-mnist": IMAGE_CLASSES, "mnist": IMAGE_CLASSES, "cifar10": IMAGE_CLASSES, "breast-cancer": 2}
TABLES = frozenset({"breast-cancer"})  # the datasets of rows of numbers, not images


def load_dataset(name: str, path: str | os.PathLike | None = None, **kwargs):
    """A dataset by name (``fashion-mnist``, ``mnist``, ``cifar10``, ``breast-cancer``):
    images as (N, C, H, W) by default, a table's rows as (N, F)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    kwargs.setdefault("flatten", False)
    return DATASETS[name](path, **kwargs)
