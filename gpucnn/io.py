"""Saving and loading models as one ``.npz`` file, and atomic file writes.

A model file holds:

* ``gpucnn_format`` (the string ``"gpucnn-model"``) and ``format_version``;
* ``architecture``: JSON that rebuilds the model (layer types and hyperparameters);
* ``param/KEY``: every parameter as a host array, whatever the backend;
* ``state/LAYER/NAME``: non-trainable arrays (BatchNormalization's running statistics);
* ``optimizer``: JSON (class, hyperparameters, step count) and ``optimizer_state/KEY/SLOT``;
* ``training``: JSON with the epochs done and the training seed, which with the
  epoch-keyed random streams of :mod:`gpucnn.training` is all the RNG state a resumed
  run needs.

Files are read with ``allow_pickle=False`` and written atomically: to a temporary file
in the same folder, flushed to disk, then renamed over the target, so a crash leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["FORMAT_VERSION", "ModelFileError", "atomic_write", "load", "save"]

FORMAT_NAME = "gpucnn-model"
FORMAT_VERSION = 1


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


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success, fsync it and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600 files; keep the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json(obj: Any) -> np.ndarray:
    return np.array(json.dumps(obj))


def save(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` (architecture, parameters, optimizer state, epoch, seed) to ``path``."""
    backend = model.backend
    arrays: dict[str, np.ndarray] = {
        "gpucnn_format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION),
        "architecture": _json(model.architecture()),
        "training": _json({"epoch": int(model.epoch), "seed": model.train_seed}),
    }
    for key, value in model.params.items():
        arrays[f"param/{key}"] = backend.to_numpy(value)
    for layer in model.layers:
        for store in layer._state_dicts():
            for name, value in store.items():
                arrays[f"state/{layer.name}/{name}"] = backend.to_numpy(value)
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


def _read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable gpucnn model file (.npz): {exc}") from exc
    if not isinstance(arrays, dict) or str(arrays.get("gpucnn_format", "")) != FORMAT_NAME:
        raise ModelFileError(f"{path} is not a gpucnn model file (no 'gpucnn_format' entry)")
    version = int(arrays["format_version"])
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {version}, newer than this gpucnn reads "
            f"(up to {FORMAT_VERSION}): upgrade gpucnn"
        )
    return arrays


def _build(arch: dict) -> Any:
    from .layers import LAYERS
    from .model import Sequential, SimpleConvNet

    if arch.get("class") == "SimpleConvNet":
        hp = arch["hyperparameters"]
        return SimpleConvNet(
            tuple(hp["input_dim"]),
            hp["conv_param"],
            hp["hidden_size"],
            hp["output_size"],
            hp["weight_init_std"],
            dtype=arch["dtype"],
            seed=arch.get("seed"),
        )
    if arch.get("class") != "Sequential":
        raise ModelFileError(f"unknown model class {arch.get('class')!r}")
    layers = []
    for spec in arch["layers"]:
        if spec["type"] not in LAYERS:
            raise ModelFileError(f"unknown layer type {spec['type']!r}")
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()}
        layers.append(LAYERS[spec["type"]](**config, name=spec["name"]))
    loss = LAYERS[arch["loss"]]()
    return Sequential(layers, loss, input_shape=arch["input_shape"], dtype=arch["dtype"], seed=arch.get("seed"))


def load(path: str | os.PathLike) -> Any:
    """Rebuild a model saved by ``model.save(path)`` on the current backend.

    The optimizer (with its state), the number of epochs done and the training seed come
    back too, so ``model.fit(..., epochs=E)`` resumes where the saved run stopped.
    """
    from .optimizers import OPTIMIZERS

    arrays = _read(path)
    arch = json.loads(str(arrays["architecture"]))
    model = _build(arch)
    if not model.built:
        raise ModelFileError(f"{path}: the saved model has no input shape")
    params = model.params
    saved = {key[len("param/") :] for key in arrays if key.startswith("param/")}
    if saved != set(params):
        raise ModelFileError(f"{path}: parameters {sorted(saved)} do not match the architecture's {sorted(params)}")
    for key in params:
        value = arrays[f"param/{key}"]
        if tuple(value.shape) != tuple(params[key].shape):
            raise ModelFileError(
                f"{path}: parameter {key!r} has shape {tuple(value.shape)}, "
                f"the architecture needs {tuple(params[key].shape)}"
            )
        params[key] = value
    for layer in model.layers:
        for store in layer._state_dicts():
            for name in store:
                store[name] = model.backend.asarray(arrays[f"state/{layer.name}/{name}"], dtype=layer.dtype)
    if "optimizer" in arrays:
        spec = json.loads(str(arrays["optimizer"]))
        cls = {c.__name__: c for c in OPTIMIZERS.values()}.get(spec["class"])
        if cls is None:
            raise ModelFileError(f"{path}: unknown optimizer {spec['class']!r}")
        optimizer = cls(**spec["config"])
        optimizer.iterations = int(spec["iterations"])
        for key in arrays:
            if key.startswith("optimizer_state/"):
                _, pkey, slot = key.split("/", 2)
                optimizer.state.setdefault(pkey, {})[slot] = model.backend.asarray(arrays[key])
        model.optimizer = optimizer
    training = json.loads(str(arrays["training"]))
    model.epoch = int(training["epoch"])
    model.train_seed = training["seed"]
    return model
