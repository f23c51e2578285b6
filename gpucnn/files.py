"""Atomic file writes and the model file format: writing a model to one ``.npz`` file and
reading one back.

A model file holds:

* ``gpucnn_format`` (the string ``"gpucnn-model"``) and ``format_version``;
* ``architecture``: JSON that rebuilds the model (layer types and hyperparameters);
* ``param/KEY``: every parameter as a host array, whatever the backend;
* ``state/LAYER/NAME``: non-trainable arrays (BatchNormalization's running statistics);
* ``optimizer``: JSON (class, hyperparameters, step count) and ``optimizer_state/KEY/SLOT``;
* ``training``: JSON with the epochs done and the training seed, which with the
  epoch-keyed random streams of :mod:`gpucnn.training` is all the RNG state a resumed
  run needs;
* ``preprocessing`` (only when the model has one): JSON of ``model.preprocessing.to_dict()``,
  the transform its inputs go through (a fitted :class:`gpucnn.tables.Standardizer`).

A file with ``preprocessing`` has format version 2, any other file version 1, which
release 0.1.0 reads too: a release that knows nothing of the transform refuses the file
instead of predicting on inputs that skipped it.

Files are written atomically: to a temporary file in the same folder, flushed to disk,
then renamed over the target, so a crash or a full disk leaves either the old file or
the new one, never half of one; a read-only file is not replaced.

Reading trusts nothing in the file. Every failure to read one is a :class:`ModelFileError`
naming the file and the entry (a missing file is a ``FileNotFoundError``): the archive is
checked before any array is read, so that an array header claiming more bytes than its
entry holds is refused instead of allocated, object arrays are never unpickled, and
every JSON entry and field is checked for its type.

This module sits below the models: it writes a model through its public methods
(:func:`write_model_file`) and reads a file into plain arrays (:func:`read_model_file`);
:mod:`gpucnn.io` rebuilds the model from them (``gpucnn.load``).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import reprlib
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .optimizers import OPTIMIZERS, Optimizer

__all__ = [
    "FORMAT_VERSION",
    "ModelFileError",
    "SavedModel",
    "atomic_write",
    "check_writable",
    "read_model_file",
    "temporary_files",
    "write_model_file",
]

FORMAT_NAME = "gpucnn-model"
FORMAT_VERSION = 2  # the newest version this module reads and writes
_PLAIN_VERSION = 1  # a file without preprocessing


class ModelFileError(ValueError):
    """A file is not a gpucnn model, is damaged, is too new, or does not fit the architecture."""


def _file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give: the existing file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _read_only(path: Path) -> bool:
    """Whether ``path`` is an existing file that its mode or the OS says not to write (the
    mode bit counts even for root, whom ``os.access`` always lets write)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False
    return not mode & stat.S_IWUSR or not os.access(path, os.W_OK)


def check_writable(path: str | os.PathLike) -> None:
    """Raise the ``PermissionError`` that :func:`atomic_write` raises for a read-only
    ``path``, before anything is written; nothing for a writable or a missing file."""
    path = Path(path)
    if _read_only(path):
        raise PermissionError(
            errno.EACCES,
            f"the file is read-only (mode {path.stat().st_mode & 0o777:o}); make it writable to replace it",
            str(path),
        )


def temporary_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files :func:`atomic_write` makes for ``path`` (``.NAME.*.tmp`` beside
    it), which a process killed during the write leaves behind; sorted."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` (one of :func:`temporary_files`); on success,
    fsync it and rename it to ``path``.

    On any exception (a full disk included) the temporary file is removed and ``path`` is
    left untouched; an ``OSError`` that names no file is raised again naming ``path``. A
    read-only ``path`` raises ``PermissionError`` before anything is written.
    """
    path = Path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600 files; keep the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # the write names no file
        raise


def _json(obj: Any) -> np.ndarray:
    return np.array(json.dumps(obj))


def write_model_file(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` (architecture, parameters, state, optimizer state, epoch, seed,
    preprocessing) to ``path``.

    ``model`` needs ``architecture()``, ``state_dict()`` (arrays keyed ``param/KEY`` and
    ``state/LAYER/NAME``, the file's own keys), ``backend``, ``optimizer``, ``epoch``,
    ``train_seed`` and ``preprocessing``: :class:`gpucnn.Sequential` has them all.
    """
    backend = model.backend
    arrays: dict[str, np.ndarray] = {
        "gpucnn_format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION if model.preprocessing is not None else _PLAIN_VERSION),
        "architecture": _json(model.architecture()),
        "training": _json({"epoch": int(model.epoch), "seed": model.train_seed}),
    }
    if model.preprocessing is not None:
        arrays["preprocessing"] = _json(model.preprocessing.to_dict())
    for key, value in model.state_dict().items():
        arrays[key] = backend.to_numpy(value)
    optimizer = model.optimizer
    if optimizer is not None:
        arrays["optimizer"] = _json(
            {"class": type(optimizer).__name__, "config": optimizer.config(), "iterations": optimizer.iterations}
        )
        for key, slots in optimizer.state.items():
            for slot, value in slots.items():
                arrays[f"optimizer_state/{key}/{slot}"] = backend.to_numpy(value)
    with atomic_write(path) as f:
        np.savez(f, **arrays)


# Deflate expands at most about 1032 times; a stored entry is its own size.
_MAX_DEFLATE_RATIO = 1032
# What a damaged archive makes zipfile, zlib and NumPy's .npy reader raise.
_DAMAGED = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    NotImplementedError,  # zipfile: a zip version, a compression or an encryption it lacks
    RuntimeError,  # zipfile: an encrypted entry
)
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _entry_problem(archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int) -> str | None:
    """What is wrong with one ``.npy`` entry, judged from its sizes and array header
    before its data is read; None when its data may be read."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"is compressed with zip method {info.compress_type}, which model files do not use"
    if info.compress_size > archive_size:
        return f"claims {info.compress_size} bytes in an archive of {archive_size}"
    stored = info.compress_type == zipfile.ZIP_STORED
    limit = info.compress_size if stored else _MAX_DEFLATE_RATIO * info.compress_size + 64
    if info.file_size > limit:
        return f"claims {info.file_size} bytes uncompressed, from {info.compress_size} compressed"
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in _HEADER_READERS:
            return f"is a .npy array of format version {version[0]}.{version[1]}, which model files do not use"
        shape, _, dtype = _HEADER_READERS[version](f)
        header_size = f.tell()
    if any(d < 0 or d >= 2**63 for d in shape):
        return f"claims the impossible shape {shape}"
    if dtype.kind not in "biufU" or dtype.hasobject:
        return f"holds {dtype} values, which model files do not use"
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != info.file_size - header_size:
        return (
            f"claims a {dtype} array of shape {shape} ({claimed} bytes) "
            f"but holds {info.file_size - header_size} bytes of data"
        )
    return None


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every ``.npy`` entry of the archive at ``path``, keyed by its name without ``.npy``,
    each checked by :func:`_entry_problem` before it is read. Other entries are skipped."""
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:  # a file that cannot be opened is an OSError, not a damaged model
        size = os.fstat(f.fileno()).st_size
        key = None
        try:
            with zipfile.ZipFile(f) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    key = info.filename[: -len(".npy")]
                    problem = _entry_problem(archive, info, size)
                    if problem is not None:
                        raise ModelFileError(f"{path} is damaged: entry {key!r} {problem}")
                    with archive.open(info) as member:
                        arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
        except ModelFileError:
            raise
        except _DAMAGED as exc:
            where = "" if key is None else f" (entry {key!r})"
            raise ModelFileError(f"{path} is not a readable gpucnn model file (.npz){where}: {exc}") from exc
    return arrays


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _json_entry(path: Path, arrays: dict[str, np.ndarray], key: str) -> dict:
    """The JSON object stored in entry ``key``."""
    if key not in arrays:
        raise ModelFileError(f"{path} is damaged: it has no {key!r} entry")
    value = arrays[key]
    if value.shape != () or value.dtype.kind != "U":
        raise ModelFileError(
            f"{path} is damaged: entry {key!r} should be JSON text, "
            f"but it is a {value.dtype} array of shape {value.shape}"
        )
    try:
        data = json.loads(str(value))
    except (ValueError, RecursionError) as exc:  # RecursionError: lists nested thousands deep
        raise ModelFileError(f"{path} is damaged: entry {key!r} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is damaged: entry {key!r} holds {_json_type(data)}, not a JSON object")
    return data


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _field(path: Path, data: dict, entry: str, name: str, check: Any, wanted: str) -> Any:
    """``data[name]`` of JSON entry ``entry``, if ``check`` accepts it."""
    if name not in data:
        raise ModelFileError(f"{path} is damaged: entry {entry!r} has no {name!r}")
    value = data[name]
    if not check(value):
        raise ModelFileError(f"{path} is damaged: {entry}.{name} is {reprlib.repr(value)}, not {wanted}")
    return value


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    arrays = _read_arrays(path)
    name = arrays.get("gpucnn_format")
    if name is None or name.shape != () or name.dtype.kind != "U" or str(name) != FORMAT_NAME:
        what = "no 'gpucnn_format' entry" if name is None else f"its 'gpucnn_format' entry is not {FORMAT_NAME!r}"
        raise ModelFileError(f"{path} is not a gpucnn model file ({what})")
    version = arrays.get("format_version")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        what = "missing" if version is None else f"a {version.dtype} array of shape {version.shape}"
        raise ModelFileError(f"{path} is damaged: its format version is {what}, not an integer")
    version = int(version)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {version}, newer than this gpucnn reads "
            f"(up to {FORMAT_VERSION}): upgrade gpucnn"
        )
    if version < 1:
        raise ModelFileError(f"{path} is damaged: format version {version} (gpucnn writes versions from 1)")
    for key, value in arrays.items():
        if key.startswith(("param/", "state/", "optimizer_state/")) and value.dtype.kind != "f":
            raise ModelFileError(f"{path} is damaged: entry {key!r} holds {value.dtype} values, not floating point")
    return arrays


@dataclass
class SavedModel:
    """The contents of a model file, as :func:`read_model_file` returns them.

    Attributes:
        path: the file.
        architecture: what ``model.architecture()`` returned when it was saved.
        arrays: host arrays keyed as ``model.state_dict()`` keys them (``param/KEY``,
            ``state/LAYER/NAME``), for ``model.load_state_dict``.
        optimizer: the optimizer with its step count and its state as host arrays, or None.
        epoch: the epochs trained.
        seed: the training seed.
        preprocessing: what ``model.preprocessing.to_dict()`` returned, or None.
    """

    path: Path
    architecture: dict
    arrays: dict[str, np.ndarray]
    optimizer: Optimizer | None
    epoch: int
    seed: int | None
    preprocessing: dict | None = None


def _read_optimizer(path: Path, arrays: dict[str, np.ndarray]) -> Optimizer | None:
    """The optimizer of entry ``optimizer`` with its step count and its state (host arrays)."""
    prefix = "optimizer_state/"
    if "optimizer" not in arrays:
        orphans = sorted(key for key in arrays if key.startswith(prefix))
        if orphans:
            raise ModelFileError(
                f"{path} is damaged: it has optimizer state (entries such as {orphans[0]!r}) but no 'optimizer' entry"
            )
        return None
    spec = _json_entry(path, arrays, "optimizer")
    classes = {c.__name__: c for c in OPTIMIZERS.values()}
    name = _field(path, spec, "optimizer", "class", lambda v: isinstance(v, str), "a class name")
    if name not in classes:
        raise ModelFileError(f"{path}: unknown optimizer {name!r}; known: {', '.join(classes)}")
    config = _field(path, spec, "optimizer", "config", lambda v: isinstance(v, dict), "a JSON object")
    iterations = _field(path, spec, "optimizer", "iterations", _is_count, "a count")
    try:
        optimizer = classes[name](**config)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(
            f"{path} is damaged: optimizer.config {reprlib.repr(config)} does not make a {name}: {exc}"
        ) from None
    optimizer.iterations = iterations
    for key, value in arrays.items():
        if key.startswith(prefix):
            param, _, slot = key[len(prefix) :].rpartition("/")  # a layer's name may hold a "/", a slot's not
            if not param:
                raise ModelFileError(f"{path} is damaged: entry {key!r} is not {prefix}PARAMETER/SLOT")
            optimizer.state.setdefault(param, {})[slot] = value
    return optimizer


def read_model_file(path: str | os.PathLike) -> SavedModel:
    """Read and check a file written by :func:`write_model_file`; :func:`gpucnn.load`
    rebuilds the model from it.

    Raises:
        FileNotFoundError: no file at ``path``.
        OSError: the file cannot be opened (permissions).
        ModelFileError: anything else: not a model file, damaged, too new.
    """
    path = Path(path)
    arrays = _read(path)
    if int(arrays["format_version"]) > _PLAIN_VERSION and "preprocessing" not in arrays:
        raise ModelFileError(
            f"{path} is damaged: format version {int(arrays['format_version'])} without a 'preprocessing' entry"
        )
    architecture = _json_entry(path, arrays, "architecture")
    training = _json_entry(path, arrays, "training")
    epoch = _field(path, training, "training", "epoch", _is_count, "a count of epochs")
    seed = _field(path, training, "training", "seed", lambda v: v is None or _is_count(v), "a seed (an integer >= 0)")
    return SavedModel(
        path=path,
        architecture=architecture,
        arrays={key: value for key, value in arrays.items() if key.startswith(("param/", "state/"))},
        optimizer=_read_optimizer(path, arrays),
        epoch=epoch,
        seed=seed,
        preprocessing=_json_entry(path, arrays, "preprocessing") if "preprocessing" in arrays else None,
    )
