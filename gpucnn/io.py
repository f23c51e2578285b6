"""Saving and loading models: ``model.save(path)`` (or :func:`save`) and :func:`load`.

A model is one ``.npz`` file, written atomically; :mod:`gpucnn.files` describes what it
holds. Files are read with ``allow_pickle=False``. A file written by an earlier release
of the same format version loads unchanged. :func:`load` raises :class:`ModelFileError`
for every file it cannot use, whatever is wrong with it.
"""

from __future__ import annotations

import os
from typing import Any

from .files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ModelFileError,
    SavedModel,
    atomic_write,
    read_model_file,
    temporary_files,
    write_model_file,
)
from .model import MODEL_CLASSES, Sequential
from .tables import Standardizer

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "ModelFileError", "atomic_write", "load", "save", "temporary_files"]

# What building a model from the architecture raises when the architecture's JSON has the
# wrong shape (a list for an object, a string for a number) or asks for absurd sizes.
_BAD_ARCHITECTURE = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, MemoryError)


def save(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` (architecture, parameters, state, optimizer state, epoch, seed) to
    ``path``, atomically; the same as ``model.save(path)``."""
    write_model_file(model, path)


def load(path: str | os.PathLike) -> Sequential:
    """Rebuild a model saved by ``model.save(path)`` on the current backend.

    The optimizer (with its state), the number of epochs done and the training seed come
    back too, so ``model.fit(..., epochs=E)`` resumes where the saved run stopped; so does
    the model's ``preprocessing`` (a :class:`gpucnn.tables.Standardizer`), which its
    ``predict`` and ``evaluate`` then apply.

    Raises:
        FileNotFoundError: no file at ``path``.
        OSError: the file cannot be opened (permissions).
        ModelFileError: anything else: not a model file, damaged, too new, or arrays that
            do not fit the architecture.
    """
    saved = read_model_file(path)
    arch = saved.architecture
    name = arch.get("class")
    cls = MODEL_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ModelFileError(f"{saved.path}: unknown model class {name!r}; known: {', '.join(MODEL_CLASSES)}")
    try:
        model = cls.from_architecture(arch)
    except _BAD_ARCHITECTURE as exc:
        raise ModelFileError(
            f"{saved.path}: the architecture does not build a model: {type(exc).__name__}: {exc}"
        ) from exc
    if not model.built:
        raise ModelFileError(f"{saved.path}: the saved model has no input shape")
    try:
        model.load_state_dict(saved.arrays)
    except ValueError as exc:
        raise ModelFileError(f"{saved.path}: {exc}") from None
    if saved.optimizer is not None:
        _check_optimizer_state(saved, model)
        model.optimizer = saved.optimizer.to(model.backend)
    model.epoch = saved.epoch
    model.train_seed = saved.seed
    if saved.preprocessing is not None:
        try:
            model.preprocessing = Standardizer.from_dict(saved.preprocessing)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{saved.path}: its preprocessing entry is not usable: {exc}") from None
        if model.preprocessing.mean.shape != tuple(model.input_shape):
            raise ModelFileError(
                f"{saved.path}: its preprocessing takes samples of shape {model.preprocessing.mean.shape}, "
                f"the model inputs of {tuple(model.input_shape)}"
            )
    return model


def _check_optimizer_state(saved: SavedModel, model: Sequential) -> None:
    """The saved optimizer state has a slot of the parameter's shape for the parameters it
    names; each slot is cast to its parameter's dtype."""
    optimizer, params = saved.optimizer, model.params
    for key, slots in optimizer.state.items():
        if key not in params:
            raise ModelFileError(
                f"{saved.path}: the optimizer has state for {key!r}, which is not a parameter; "
                f"parameters: {', '.join(params)}"
            )
        if sorted(slots) != sorted(optimizer.state_names):
            raise ModelFileError(
                f"{saved.path}: the {type(optimizer).__name__} state of {key!r} has slots {sorted(slots)}, "
                f"not {sorted(optimizer.state_names)}"
            )
        shape = tuple(params[key].shape)
        for slot, value in slots.items():
            if value.shape != shape:
                raise ModelFileError(
                    f"{saved.path}: optimizer state {key}/{slot} has shape {value.shape}, its parameter {shape}"
                )
            slots[slot] = value.astype(model.np_dtype, copy=False)
