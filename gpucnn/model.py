"""Models: :class:`Sequential` (a list of layers and a loss) and the book's
:class:`SimpleConvNet`, with their training (``fit``, ``evaluate``, ``train_on_batch``,
``train_step``).

A model is bound to the backend that was current when it was built; its parameters
live there. ``model.to(name)`` moves it. The methods that take data (``predict``,
``loss``, ``gradient``, ``accuracy``, ``fit``, ``evaluate``, ``train_on_batch``) accept
NumPy arrays whatever the backend, cast them to the model's dtype and move them, one
batch at a time (``as_input``, ``as_target``). ``forward``, ``backward`` and
``train_step`` work on arrays already on the backend.

A model may carry a ``preprocessing`` transform (a fitted
:class:`gpucnn.tables.Standardizer`), saved with it: the methods that take data apply it
once to every sample, after the cast to the model's dtype; ``forward`` and ``train_step``
take inputs that have been through it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .backend import Backend, get_backend
from .distributed import Communicator, DataParallel, shard_bounds
from .files import write_model_file
from .fused import AffineSoftmaxLoss, plan_loss_head, plan_steps
from .initializers import normal
from .layers import (
    LAYERS,
    Affine,
    Convolution,
    Layer,
    LossLayer,
    MaxPooling,
    ReLU,
    SigmoidWithLoss,
    SoftmaxWithLoss,
    Step,
    dtype_name,
    xp_dtype,
)
from .memory import translate_out_of_memory
from .metrics import roc_auc_or_nan
from .optimizers import SGD, Optimizer, get_optimizer
from .schedules import LinearScaling
from .training import BatchSource, History, check_batch_size, epoch_batches, epoch_rng, format_logs, run_epoch

__all__ = ["Sequential", "SimpleConvNet", "get_loss"]

Array = Any
GradientHook = Callable[[str, Array], None]

LOSSES = {
    "softmax_cross_entropy": SoftmaxWithLoss,
    "categorical_crossentropy": SoftmaxWithLoss,
    "sparse_categorical_crossentropy": SoftmaxWithLoss,
    "softmax": SoftmaxWithLoss,
    "sigmoid_cross_entropy": SigmoidWithLoss,
    "binary_crossentropy": SigmoidWithLoss,
    "sigmoid": SigmoidWithLoss,
}


def get_loss(spec: str | LossLayer) -> LossLayer:
    """A loss layer, or one made from its name (``"softmax_cross_entropy"``, ``"binary_crossentropy"``...)."""
    if isinstance(spec, LossLayer):
        return spec
    if isinstance(spec, str) and spec.lower() in LOSSES:
        return LOSSES[spec.lower()]()
    raise ValueError(f"unknown loss {spec!r}; use a loss layer or one of {', '.join(LOSSES)}")


class ParamView(Mapping):
    """Live ``{key: array}`` view of a model's parameters.

    Reading gives the very arrays the layers compute with (editing one in place changes
    the network); assigning replaces the layer's array after checking its shape.
    """

    def __init__(self, model: Sequential) -> None:
        self._model = model

    def _slot(self, key: str) -> tuple[Layer, str]:
        slots = self._model.param_slots()
        try:
            return slots[key]
        except KeyError:
            raise KeyError(f"{key!r} is not a parameter; parameters: {', '.join(slots)}") from None

    def __getitem__(self, key: str) -> Array:
        layer, name = self._slot(key)
        return layer.params[name]

    def __setitem__(self, key: str, value: Array) -> None:
        layer, name = self._slot(key)
        old = layer.params[name]
        new = layer.backend.asarray(value if layer.backend.is_array(value) else np.asarray(value), dtype=old.dtype)
        if tuple(new.shape) != tuple(old.shape):
            raise ValueError(f"parameter {key!r} has shape {tuple(old.shape)}, got {tuple(new.shape)}")
        layer.params[name] = new

    def __iter__(self) -> Iterator[str]:
        return iter(self._model.param_slots())

    @property
    def backend(self) -> Backend:
        """The model's backend: optimizers run its kernel set on these arrays (NumPy arrays
        alone cannot tell the ``numpy`` backend from ``numba``)."""
        return self._model.backend

    def __len__(self) -> int:
        return len(self._model.param_slots())

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: array{tuple(v.shape)}" for k, v in self.items()) + "}"


def _numeric(a: Any, what: str) -> Any:
    """``a`` unless it is a NumPy array of strings, objects or complex numbers (TypeError);
    the other backends' arrays hold numbers only."""
    if isinstance(a, np.ndarray) and a.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be numbers, got an array of {a.dtype}")
    return a


def _require_samples(x: Array) -> None:
    """ValueError for a batch of no samples, whose mean loss and gradients are 0/0."""
    if x.shape[0] == 0:
        raise ValueError("no samples: x is empty")


def _snake(name: str) -> str:
    """``MaxPooling`` → ``max_pooling``, ``ReLU`` → ``relu``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z][a-z])", "_", name).lower()


class Sequential:
    """A stack of layers followed by a loss layer.

    Args:
        layers: the layers, first to last (a loss layer at the end is taken as ``loss``).
        loss: a loss layer or a name (``"softmax_cross_entropy"``, ``"binary_crossentropy"``).
        input_shape: one sample's shape, e.g. ``(1, 28, 28)``; without it the model is
            built at the first batch it sees.
        dtype: floating dtype of parameters and inputs (float32 unless explicit layer
            weights say otherwise).
        seed: seed of the initial weights (and of dropout masks).
        fuse: run each Convolution → ReLU → MaxPooling triple, and each Affine or Convolution
            followed by a ReLU, as one fused step (same values; less memory traffic; see
            :mod:`gpucnn.fused`).

    Training state, saved with the model: ``optimizer`` (set by ``fit`` or by hand),
    ``epoch`` (epochs trained so far), ``train_seed``; ``history`` is the :class:`History`
    of the running (or last) ``fit``.

    ``preprocessing``, saved with the model too: None (the samples are the network's
    inputs), or an object whose ``transform(x)`` maps samples (N, ...) to inputs in ``x``'s
    namespace and dtype and whose ``to_dict()`` describes it, a fitted
    :class:`gpucnn.tables.Standardizer` (see the module docstring).
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        loss: str | LossLayer = "softmax_cross_entropy",
        input_shape: Sequence[int] | None = None,
        *,
        dtype: Any = None,
        seed: int | None = None,
        name: str | None = None,
        fuse: bool = True,
    ) -> None:
        layers = list(layers)
        if layers and isinstance(layers[-1], LossLayer):
            loss = layers.pop()
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for layer in layers:
            if not isinstance(layer, Layer) or isinstance(layer, LossLayer):
                raise TypeError(f"Sequential takes layers followed by one loss, got {layer!r} among the layers")
        self.backend: Backend = get_backend()
        self.layers: list[Layer] = layers
        self.loss_layer: LossLayer = get_loss(loss)
        self.name = name
        self.seed = seed
        if dtype is None:
            explicit = {dtype_name(layer.dtype) for layer in layers if layer.params}
            dtype = explicit.pop() if len(explicit) == 1 else "float32"
        self.dtype = xp_dtype(self.backend.xp, dtype)
        self.input_shape: tuple[int, ...] | None = None
        self.optimizer: Optimizer | None = None
        self.epoch = 0
        self.train_seed: int | None = None
        self.history: History | None = None
        self.preprocessing: Any = None
        self._init_rng = np.random.default_rng(seed)
        self._slots: dict[str, tuple[Layer, str]] | None = None
        counts: dict[str, int] = {}
        for layer in [*layers, self.loss_layer]:
            if layer.backend is not self.backend:
                layer.to(self.backend)
            if layer.name is None:
                base = _snake(type(layer).__name__)
                counts[base] = counts.get(base, 0) + 1
                layer.name = f"{base}{counts[base]}"
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        # Nothing upstream of the first layer uses its input gradient.
        layers[0].needs_input_grad = False
        self._fuse = fuse
        self._plan: list[Step] | None = None
        self._head: AffineSoftmaxLoss | None = None  # planned with _plan
        self._head_ran = False  # whether the last forward pass ended in _head (train_step's)
        self._stepped_on: Backend | None = None  # where the last training computation ran
        self._seed_layers(seed)
        if input_shape is not None:
            self.build(input_shape)

    # -- structure ---------------------------------------------------------------

    def build(self, input_shape: Sequence[int]) -> None:
        """Infer every layer's shapes from one sample's shape and create the parameters."""
        shape = tuple(int(d) for d in input_shape)
        self.input_shape = shape
        for layer in self.layers:
            if layer.built and layer.input_shape != shape:
                raise ValueError(f"layer {layer.name} was built for input {layer.input_shape}, got {shape}")
            shape = layer.output_shape if layer.built else layer.build(shape, self._init_rng, self.dtype)
            if layer.params and layer.dtype != self.dtype:
                raise TypeError(
                    f"layer {layer.name} has {dtype_name(layer.dtype)} parameters in a {dtype_name(self.dtype)} model"
                )
        if not self.loss_layer.built:
            self.loss_layer.build(shape, dtype=self.dtype)
        self._slots = None

    @property
    def built(self) -> bool:
        return self.input_shape is not None

    @property
    def num_classes(self) -> int | None:
        """The classes the model tells apart: its number of outputs, or 2 for one sigmoid
        output (a binary classifier); None before it is built."""
        if not self.built:
            return None
        return 2 if self._is_binary() else math.prod(self.layers[-1].output_shape)

    def _is_binary(self) -> bool:
        """One sigmoid output: a binary classifier, whose evaluation ranks its scores (ROC AUC)."""
        return isinstance(self.loss_layer, SigmoidWithLoss) and math.prod(self.layers[-1].output_shape) == 1

    @property
    def np_dtype(self) -> np.dtype:
        """The model's dtype as a NumPy dtype (host arrays are cast to it)."""
        return np.dtype(dtype_name(self.dtype))

    @property
    def fuse(self) -> bool:
        """Whether runs of layers execute as fused steps (see :attr:`steps`)."""
        return self._fuse

    @fuse.setter
    def fuse(self, value: bool) -> None:
        self._fuse = bool(value)
        self._plan = None
        self._head_ran = False

    @property
    def steps(self) -> list[Step]:
        """The layers as they run: each Convolution → ReLU → MaxPooling and each Affine or
        Convolution → ReLU as one fused step when ``fuse`` (:func:`gpucnn.fused.plan_steps`)."""
        return self._plan if self._plan is not None else self._plan_steps()

    @property
    def loss_head(self) -> AffineSoftmaxLoss | None:
        """The last step and the loss as one training step, when ``fuse`` and they fit
        (:func:`gpucnn.fused.plan_loss_head`): ``train_step`` runs it in place of the last
        step and the loss. None otherwise."""
        if self._plan is None:
            self._plan_steps()
        return self._head

    def _plan_steps(self) -> list[Step]:
        """Plan the steps and the loss head; return the steps."""
        self._plan = plan_steps(self.layers, self._fuse)
        self._head = plan_loss_head(self._plan, self.loss_layer, self._fuse)
        self._head_ran = False
        return self._plan

    def _seed_layers(self, seed: int | None) -> None:
        """Give each layer that draws random numbers (dropout) its own stream of ``seed``."""
        seeds = np.random.SeedSequence(seed).spawn(len(self.layers))
        for layer, child in zip(self.layers, seeds):
            layer.reseed(int(child.generate_state(1)[0]) if seed is not None else None)

    def _seed_layers_for_epoch(self, epoch: int, rank: int = 0) -> None:
        """Dropout masks keyed by ``(train_seed, epoch, layer index)``, as the shuffle is, and
        by the rank under data-parallel training (rank 0's are those of one process)."""
        for i, layer in enumerate(self.layers):
            key = [self.train_seed, epoch, i] if rank == 0 else [self.train_seed, epoch, i, rank]
            layer.reseed(int(np.random.SeedSequence(key).generate_state(1)[0]))

    def _param_key(self, layer: Layer, name: str) -> str:
        return f"{layer.name}.{name}"

    def param_slots(self) -> dict[str, tuple[Layer, str]]:
        """``{key: (layer, name)}``: where each parameter of ``params`` lives."""
        if self._slots is not None:
            return self._slots
        slots = {self._param_key(layer, name): (layer, name) for layer in self.layers for name in layer.params}
        if self.built:  # the parameters are all there: keep the map
            self._slots = slots
        return slots

    @property
    def params(self) -> ParamView:
        """``{key: array}`` of every trainable array (live: see :class:`ParamView`)."""
        return ParamView(self)

    @property
    def grads(self) -> dict[str, Array]:
        """Gradients from the last backward pass, keyed like ``params``."""
        return {key: layer.grads[name] for key, (layer, name) in self.param_slots().items() if name in layer.grads}

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    def state_dict(self) -> dict[str, Array]:
        """Every array that defines the model, keyed as in a model file: ``param/KEY`` for
        each parameter (``KEY`` as in ``params``), then ``state/LAYER/NAME`` for each
        non-trainable array (BatchNormalization's running statistics). The values are the
        model's own arrays, not copies."""
        arrays = {f"param/{key}": layer.params[name] for key, (layer, name) in self.param_slots().items()}
        for layer in self.layers:
            for name, value in layer.state.items():
                arrays[f"state/{layer.name}/{name}"] = value
        return arrays

    def _state_keys(self, layer: Layer) -> dict[str, str]:
        """``{name: key}``: the :meth:`state_dict` key of each array the layer registered."""
        keys = {name: f"param/{self._param_key(layer, name)}" for name in layer.params}
        keys.update({name: f"state/{layer.name}/{name}" for name in layer.state})
        return keys

    def load_state_dict(self, arrays: Mapping[str, Any]) -> None:
        """Set every parameter and state array from ``arrays`` (keyed as :meth:`state_dict`
        keys them; host arrays or arrays of the model's backend), copied into the model's
        backend and dtype. Nothing changes unless every key and shape matches."""
        own = self.state_dict()
        for kind, prefix in (("parameters", "param/"), ("state arrays", "state/")):
            given = sorted(k[len(prefix) :] for k in arrays if k.startswith(prefix))
            needed = sorted(k[len(prefix) :] for k in own if k.startswith(prefix))
            if given != needed:
                raise ValueError(f"{kind} {given} do not match the architecture's {needed}")
        unknown = sorted(k for k in arrays if k not in own)
        if unknown:
            raise ValueError(f"keys {unknown} are neither parameters nor state")
        for key, current in own.items():
            shape = tuple(np.shape(arrays[key]))
            if shape != tuple(current.shape):
                what = "parameter" if key.startswith("param/") else "state"
                raise ValueError(
                    f"{what} {key.split('/', 1)[1]!r} has shape {shape}, the architecture needs {tuple(current.shape)}"
                )
        for layer in self.layers:
            layer.load_state_dict({name: arrays[key] for name, key in self._state_keys(layer).items()})

    def to(self, backend: str | Backend) -> Sequential:
        """Move parameters, state and optimizer state to ``backend``; returns the model."""
        target = get_backend(backend)
        for layer in [*self.layers, self.loss_layer]:
            layer.to(target)
        self.clear_cache()  # fused steps keep arrays of the old backend
        if self.optimizer is not None:
            self.optimizer.to(target, source=self.backend)
        self.dtype = xp_dtype(target.xp, dtype_name(self.dtype))
        self.backend = target
        return self

    def clear_cache(self) -> None:
        """Drop every array kept from the last forward pass (layers, fused steps, loss)."""
        for step in self.steps:
            step.clear_cache()
        if self._head is not None:
            self._head.clear_cache()
        self._head_ran = False
        self.loss_layer.clear_cache()

    def summary(self) -> str:
        """A table of layers, output shapes and parameter counts."""
        rows = [("layer", "output shape", "params")]
        shape = self.input_shape
        for layer in self.layers:
            out = layer.output_shape if layer.built else None
            rows.append(
                (
                    f"{layer.name} ({type(layer).__name__})",
                    "?" if out is None else str((None, *out)),
                    f"{layer.count_params():,}",
                )
            )
        rows.append((f"{self.loss_layer.name} ({type(self.loss_layer).__name__})", "()", "0"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "-" * (sum(widths) + 4)
        text = [
            f"{type(self).__name__} on backend {self.backend.name!r}, {dtype_name(self.dtype)}, "
            f"input {None if shape is None else (None, *shape)}",
            line,
        ]
        for i, row in enumerate(rows):
            text.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
            if i == 0:
                text.append(line)
        text += [line, f"trainable parameters: {self.count_params():,}"]
        return "\n".join(text)

    # -- data at the boundary ---------------------------------------------------------

    def as_input(self, x: Any) -> Array:
        """``x`` as an array of the model's backend and dtype (NumPy arrays are moved)."""
        if self.backend.is_array(x):
            return x if x.dtype == self.dtype else self.backend.xp.astype(_numeric(x, "samples"), self.dtype)
        if isinstance(x, (np.ndarray, list, tuple, np.generic)):
            return self.backend.asarray(_numeric(np.asarray(x), "samples"), dtype=self.dtype)
        self.backend.check_array(x, f"{type(self).__name__} input")
        raise AssertionError  # check_array raised

    def _preprocess(self, x: Any) -> Any:
        """``x`` (host or backend array, already in the model's dtype) through ``preprocessing``."""
        return x if self.preprocessing is None else self.preprocessing.transform(x)

    def _input(self, x: Any) -> Array:
        """Samples from a caller as the network's input: moved, cast, then preprocessed."""
        return self._preprocess(self.as_input(x))

    def as_target(self, t: Any) -> Array:
        """Labels or one-hot targets as an array of the model's backend (integers stay
        integers, other values take the model's dtype)."""
        if self.backend.is_array(t):
            return _numeric(t, "targets")
        if isinstance(t, (np.ndarray, list, tuple)):
            t = _numeric(np.asarray(t), "targets")
            return self.backend.asarray(t if t.dtype.kind in "iub" else t.astype(dtype_name(self.dtype)))
        self.backend.check_array(t, f"{type(self).__name__} targets")
        raise AssertionError

    def _ensure_built(self, x: Array) -> None:
        if not self.built:
            self.build(tuple(x.shape[1:]))

    # -- forward and backward ---------------------------------------------------------

    def forward(self, x: Array, train: bool = True) -> Array:
        """Scores for a batch already on the backend (``predict`` takes any array)."""
        self._head_ran = False
        for step in self.steps:
            x = step.forward(x, train)
        return x

    def backward(self, on_gradient: GradientHook | None = None) -> None:
        """Backpropagate from the loss of the last forward pass (``forward`` then the loss
        layer's, or ``train_step``'s); the gradients land in ``grads``.

        ``on_gradient(key, grad)``, if given, is called once per parameter as soon as its
        gradient is computed: right after the backward of the step that owns it, before
        the steps upstream run, so the last layer's parameters come first (within a
        layer, in the order of ``params``). ``grad`` is the array ``grads[key]`` will
        hold; the hook must not change it in place unless that change is meant to reach
        the update (an all-reduce, say).
        """
        steps: list[Any] = self.steps
        if self._head_ran:  # the last step and the loss ran as the loss head
            steps, dout = [*steps[:-1], self._head], 1.0
        else:
            dout = self.loss_layer.backward(1.0)
        for step in reversed(steps):
            dout = step.backward(dout)
            if on_gradient is not None:
                for layer in reversed(step.layers):
                    for name in layer.params:
                        on_gradient(self._param_key(layer, name), layer.grads[name])
            if dout is None:
                break

    def _count_correct(self, scores: Array, t: Array) -> Array:
        """Number of right answers in a batch, as a 0-d backend array (the loss layer's count)."""
        return self.loss_layer.count_correct(scores, t)

    # -- the book's methods ---------------------------------------------------------

    def predict(self, x: Any, batch_size: int | None = None, *, train: bool = False) -> Array:
        """Raw scores (before softmax/sigmoid) as an array of the model's backend.

        With ``batch_size``, the input is processed in chunks so that intermediate
        memory (im2col's columns above all) stays bounded whatever N is. No samples give
        an empty (0, K) array.
        """
        n = x.shape[0] if hasattr(x, "shape") else len(x)
        if n == 0:
            return self._scores_of_no_samples(x)
        chunk = n if batch_size is None else min(check_batch_size(batch_size), n)
        with translate_out_of_memory(self, chunk, "predict", training=train):
            if batch_size is None:
                x = self._input(x)
                self._ensure_built(x)
                return self.forward(x, train)
            if not hasattr(x, "shape"):  # a list of samples: slice it as an array
                x = np.asarray(x)
            # A stop within the array and a trailing ellipsis: what strict array-API indexing accepts.
            outs = [self.predict(x[i : min(i + batch_size, n), ...], train=train) for i in range(0, n, batch_size)]
            return self.backend.xp.concat(outs, axis=0)

    def _scores_of_no_samples(self, x: Any) -> Array:
        """What ``predict`` returns for no samples: an empty (0, K) array of the backend."""
        shape = tuple(x.shape[1:]) if hasattr(x, "shape") else None  # an empty list has no sample shape
        if shape is not None and not self.built:
            self.build(shape)
        if not self.built:
            raise ValueError("no samples, and the model has no input shape yet: give samples or input_shape")
        if shape is not None and shape != tuple(self.input_shape):
            raise ValueError(f"samples have shape {shape} but the model expects {tuple(self.input_shape)}")
        return self.backend.xp.zeros((0, *self.layers[-1].output_shape), dtype=self.dtype)

    def predict_proba(self, x: Any, batch_size: int | None = None) -> Array:
        """Class probabilities (softmax or sigmoid of the scores)."""
        return self.loss_layer.activation(self.predict(x, batch_size))

    def _loss_array(self, x: Array, t: Array, train: bool) -> Array:
        """Forward pass and loss as a 0-d backend array (no host synchronisation)."""
        return self.loss_layer.forward(self.forward(x, train), t, check_labels=True)

    def loss(self, x: Any, t: Any, *, train: bool = True) -> float:
        """The loss on (x, t) as a Python float; raises FloatingPointError if it is not finite."""
        x, t = self._input(x), self.as_target(t)
        _require_samples(x)
        self._ensure_built(x)
        value = float(self._loss_array(x, t, train))
        if not math.isfinite(value):
            raise FloatingPointError(
                f"the loss is {value} on a batch of {x.shape[0]} samples "
                f"(non-finite inputs, exploding weights or too high a learning rate)"
            )
        return value

    def gradient(self, x: Any, t: Any) -> dict[str, Array]:
        """Backpropagation: ``{key: gradient}`` with the keys of ``params``."""
        x, t = self._input(x), self.as_target(t)
        _require_samples(x)
        self._ensure_built(x)

        def step() -> dict[str, Array]:
            self._loss_array(x, t, train=True)
            self.backward()
            return self.grads

        return self._first_steps_compiled_ahead(step)

    def _first_steps_compiled_ahead(self, step: Callable[[], Any]) -> Any:
        """``step()``, a training computation. The first on a backend compiles the
        backend's kernels (numba), shared with a second process that walks the same step
        (``Backend.compile_ahead``)."""
        if self._stepped_on is self.backend:
            return step()
        self._stepped_on = self.backend
        with self.backend.compile_ahead(step):
            return step()

    def accuracy(self, x: Any, t: Any, batch_size: int = 100) -> float:
        """Fraction of correct predictions, computed ``batch_size`` samples at a time (a
        row with a non-finite score counts as wrong); ValueError for no samples."""
        check_batch_size(batch_size)
        x, t = self.prepare(x, t)  # checked, cast and preprocessed once
        correct = 0
        n = x.shape[0]
        with translate_out_of_memory(self, min(batch_size, n), "evaluate", training=False):
            for i in range(0, n, batch_size):
                stop = min(i + batch_size, n)
                scores = self.forward(self.as_input(x[i:stop, ...]), False)
                correct = correct + self._count_correct(scores, self.as_target(t[i:stop, ...]))
        return float(correct) / n

    # -- training ---------------------------------------------------------------------

    def train_step(
        self, x: Array, t: Array, *, check_labels: bool = False, on_gradient: GradientHook | None = None
    ) -> tuple[Array, Array]:
        """One training step on a batch already on the backend: forward, loss, backward
        (``on_gradient`` as in :meth:`backward`) and one update of ``optimizer``.

        ``fit`` runs one per batch. Returns ``(loss, correct)``, the batch's mean loss
        before the update and its number of right answers, as 0-d backend arrays (no
        host synchronisation). ``check_labels`` checks the labels' range on the device
        (``fit`` checks them once, on the host).
        """
        if self.optimizer is None:
            raise ValueError("train_step needs an optimizer: set model.optimizer, or pass one to fit or train_on_batch")
        if on_gradient is None:  # a hook may talk to other processes: not walked twice
            return self._first_steps_compiled_ahead(functools.partial(self._train_step, x, t, check_labels, None))
        return self._train_step(x, t, check_labels, on_gradient)

    def _train_step(
        self, x: Array, t: Array, check_labels: bool, on_gradient: GradientHook | None
    ) -> tuple[Array, Array]:
        head = self.loss_head
        if head is None:
            loss, correct = self.loss_layer.forward_counting(self.forward(x, True), t, check_labels=check_labels)
        else:
            for step in self.steps[:-1]:
                x = step.forward(x, True)
            loss, correct = head.forward_counting(x, t, check_labels=check_labels)
            self._head_ran = True
        self.backward(on_gradient)
        self.optimizer.update(self.params, self.grads, backend=self.backend)
        return loss, correct

    def train_on_batch(self, x: Any, t: Any, optimizer: Any = None) -> float:
        """One optimizer step on one batch; returns its loss (before the update)."""
        if optimizer is not None:
            self.optimizer = get_optimizer(optimizer)
        elif self.optimizer is None:
            raise ValueError("train_on_batch needs an optimizer the first time")
        xb, tb = self._input(x), self.as_target(t)
        _require_samples(xb)
        self._ensure_built(xb)
        loss, _ = self.train_step(xb, tb, check_labels=True)
        return float(loss)

    def _validate_targets(self, t: np.ndarray, n: int) -> np.ndarray:
        """Host-side check of the whole label array, once, so batches need no device sync."""
        t = _numeric(np.asarray(t), "targets")
        if t.shape[0] != n:
            raise ValueError(f"{t.shape[0]} targets for {n} samples")
        classes = self.layers[-1].output_shape[-1] if self.layers[-1].output_shape else None
        if t.ndim == 1 and t.dtype.kind in "iu" and classes and classes > 1 and n:
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= classes:
                raise ValueError(
                    f"labels must lie in [0, {classes - 1}] for {classes} classes, got values from {lo} to {hi}"
                )
        elif t.ndim == 2 and classes and t.shape[1] != classes and classes > 1:
            raise ValueError(f"one-hot targets have {t.shape[1]} columns but the model has {classes} outputs")
        if t.ndim == 1 and classes and classes > 1 and t.dtype.kind not in "iu":
            raise TypeError(f"labels (N,) must be integers, got {t.dtype} (or give one-hot targets (N, {classes}))")
        if t.ndim == 1 and classes and classes > 1 and t.dtype != np.int32:
            t = t.astype(np.int32)  # in range, checked above: once here, not in every step's kernels
        if isinstance(self.loss_layer, SigmoidWithLoss) and n:
            lo, hi = float(t.min()), float(t.max())
            if not 0 <= lo <= hi <= 1:  # NaN fails too
                raise ValueError(f"targets of a sigmoid output must lie in [0, 1], got values from {lo} to {hi}")
        return t

    def prepare(self, x: Any, t: Any) -> tuple[Array, Array]:
        """``(x, t)`` as ``fit`` and ``evaluate`` use them: checked, host samples cast to the
        model's dtype and preprocessed, 1-D labels as int32; each stays where the caller put it
        (host, or the model's backend)."""
        x = _numeric(x if self.backend.is_array(x) else np.asarray(x), "samples")
        if x.ndim == 0:
            raise ValueError("samples must be an array (N, ...), got a 0-d array")
        if x.shape[0] == 0:
            raise ValueError("no samples: x is empty")
        if not self.built:
            self.build(tuple(x.shape[1:]))
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"samples have shape {tuple(x.shape[1:])} but the model expects {tuple(self.input_shape)}")
        if isinstance(x, np.ndarray) and x.dtype != self.np_dtype:
            x = x.astype(self.np_dtype)  # cast once, not once per batch
        x = self._preprocess(x)  # once for the whole set, so the batches need no more
        if self.backend.is_array(t):  # checked on a host copy; the batches come from t where it lives
            self._validate_targets(self.backend.to_numpy(t), x.shape[0])
        else:
            t = self._validate_targets(np.asarray(t), x.shape[0])
        return x, t

    def _check_validation_data(self, data: Any) -> None:
        """Refuse ``fit``'s ``validation_data`` before the first epoch, not after it."""
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(f"validation_data must be a pair (x_val, t_val), got a {type(data).__name__}")
        try:
            self.prepare(*data)
        except (TypeError, ValueError) as exc:
            raise (ValueError if isinstance(exc, ValueError) else TypeError)(f"validation_data: {exc}") from None

    def fit(
        self,
        x: Any,
        t: Any,
        batch_size: int = 32,
        epochs: int = 1,
        optimizer: Any = None,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        verbose: int = 1,
        *,
        sampling: str = "epoch",
        drop_last: bool = False,
        initial_epoch: int | None = None,
        loss_every: int | None = None,
        on_nonfinite: str = "raise",
        checkpoint: str | os.PathLike | None = None,
        eval_batch_size: int = 500,
        data_on_device: bool = False,
        prefetch: bool = False,
        callbacks: list | None = None,
        communicator: Communicator | None = None,
        lr_schedule: LinearScaling | None = None,
    ) -> History:
        """Train for ``epochs`` epochs; returns a :class:`History`.

        Args:
            x, t: training samples (N, ...) and labels (N,) or one-hot (N, K); NumPy arrays
                on any backend (moved one batch at a time).
            batch_size: samples per iteration (see :mod:`gpucnn.training` for the rules).
            epochs: the epoch to stop at (as in Keras, counted from 0 with ``initial_epoch``).
            optimizer: an optimizer object or name; default: the model's current one, else SGD(0.01).
            validation_data: ``(x_val, t_val)`` evaluated after every epoch (and checked
                before the first).
            shuffle, sampling, drop_last: batching (:mod:`gpucnn.training`).
            seed: seed of shuffling and dropout; the same seed repeats a CPU run exactly.
            verbose: 0 silent, 1 progress bar and a line per epoch, 2 the line only.
            initial_epoch: epoch to start from when resuming (default: ``model.epoch``).
            loss_every: fetch the loss to the host every k iterations (default 1 on a CPU
                backend, 20 on a GPU, where each fetch is a synchronisation).
            on_nonfinite: what a non-finite or exploding loss does (see
                :func:`gpucnn.training.run_epoch`): ``"raise"`` (stop with
                NonFiniteLossError naming the epoch and iteration), ``"warn"`` or
                ``"ignore"`` to keep going.
            checkpoint: a path: ``save`` the model there after every epoch.
            eval_batch_size: batch size of the validation pass.
            data_on_device: copy the whole training set to the device once and index
                batches there (no per-batch host→device copy; a no-op on CPU backends).
            prefetch: copy batch i+1 to the device while batch i computes (GPU backends;
                a no-op on CPU backends).
            callbacks: callables ``f(model, epoch, logs)`` run after each epoch.
            communicator: train data-parallel over its ranks
                (:class:`gpucnn.distributed.MPICommunicator`, under ``mpiexec``): each rank
                takes its share of every global batch of ``batch_size`` and steps on the
                gradient summed over the ranks (:mod:`gpucnn.distributed`). The ranks must
                be given the same arguments, model and data; rank 0 alone shows progress and
                writes ``checkpoint``; callbacks run on every rank (``communicator.rank``
                tells them apart).
            lr_schedule: the optimizer's rate at each iteration, for large batches
                (:class:`gpucnn.schedules.LinearScaling`: linear scaling from a reference
                batch size, after a warm-up); the optimizer keeps its own rate.
        """
        parallel = None if communicator is None else DataParallel(self, communicator)
        if parallel is not None:
            arguments = {"batch_size": batch_size, "epochs": epochs, "optimizer": repr(optimizer), "seed": seed}
            arguments.update(shuffle=shuffle, sampling=sampling, drop_last=drop_last, initial_epoch=initial_epoch)
            arguments.update(loss_every=loss_every, on_nonfinite=on_nonfinite, eval_batch_size=eval_batch_size)
            arguments.update(data_on_device=data_on_device, prefetch=prefetch, **parallel.data_settings(x, t))
            arguments["validation_data"] = validation_data and parallel.data_settings(*validation_data)
            arguments["lr_schedule"] = repr(lr_schedule)
            parallel.check_launch(arguments)
            verbose = verbose if parallel.rank == 0 else 0
        if on_nonfinite not in ("raise", "warn", "ignore"):
            raise ValueError(f"on_nonfinite must be 'raise', 'warn' or 'ignore', got {on_nonfinite!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        x, t = self.prepare(x, t)
        if validation_data is not None:
            self._check_validation_data(validation_data)
        n = x.shape[0]
        batch_size = check_batch_size(batch_size, n)
        if optimizer is not None:
            self.optimizer = get_optimizer(optimizer)
        elif self.optimizer is None:
            self.optimizer = SGD(lr=0.01)
        start = self.epoch if initial_epoch is None else int(initial_epoch)
        if seed is None:
            seed = self.train_seed if self.train_seed is not None else int(np.random.SeedSequence().entropy % 2**63)
            seed = seed if parallel is None else parallel.from_root(seed)
        self.train_seed = int(seed)
        if parallel is not None:
            parallel.check_launch(parallel.model_settings())
        loss_every = loss_every or (20 if self.backend.is_gpu else 1)
        source = BatchSource(self, x, t, data_on_device=data_on_device, prefetch=prefetch)
        history = self.history = History()
        history.params = {
            "batch_size": batch_size,
            "epochs": epochs,
            "initial_epoch": start,
            "samples": n,
            "seed": self.train_seed,
            "sampling": sampling,
            "optimizer": repr(self.optimizer),
            "backend": self.backend.name,
            "ranks": 1 if parallel is None else parallel.size,
            "lr_schedule": None if lr_schedule is None else repr(lr_schedule),
        }

        with contextlib.nullcontext() if parallel is None else parallel.guard():
            for epoch in range(start, epochs):
                rng = epoch_rng(self.train_seed, epoch)
                self._seed_layers_for_epoch(epoch, 0 if parallel is None else parallel.rank)
                batches = epoch_batches(n, batch_size, rng, shuffle=shuffle, sampling=sampling, drop_last=drop_last)
                history.params["iterations_per_epoch"] = len(batches)
                step, sizes = self.train_step, None
                if parallel is not None:  # this rank's share of each batch; the logs count whole batches
                    step, sizes = parallel.train_step, [len(idx) for idx in batches]
                    batches = parallel.shard(batches)
                if lr_schedule is not None:  # iterations counted from the first epoch, so a resumed run goes on alike
                    first, count = epoch * len(batches), len(batches)
                    step = lr_schedule.scheduled(
                        step, self.optimizer, first_iteration=first, batch_size=batch_size, iterations_per_epoch=count
                    )
                with translate_out_of_memory(self, batch_size, "fit"):
                    logs = run_epoch(
                        step,
                        source,
                        batches,
                        backend=self.backend,
                        history=history,
                        epoch=epoch,
                        epochs=epochs,
                        loss_every=loss_every,
                        on_nonfinite=on_nonfinite,
                        verbose=verbose,
                        sizes=sizes,
                    )
                if parallel is not None:
                    parallel.average_state()
                if validation_data is not None:
                    t0 = time.perf_counter()
                    scores = self.evaluate(
                        *validation_data, batch_size=eval_batch_size, return_dict=True, communicator=communicator
                    )
                    logs.update({f"val_{name}": value for name, value in scores.items()})
                    logs["val_time"] = time.perf_counter() - t0
                history.append(epoch, logs)
                self.epoch = epoch + 1
                if verbose:
                    print(f"Epoch {epoch + 1}/{epochs} - {format_logs(logs)}", flush=True)
                if checkpoint is not None and (parallel is None or parallel.rank == 0):
                    self.save(checkpoint)
                for callback in callbacks or ():
                    callback(self, epoch, logs)
        return history

    def evaluate(
        self,
        x: Any,
        t: Any,
        batch_size: int = 100,
        *,
        return_dict: bool = False,
        communicator: Communicator | None = None,
    ) -> tuple[float, float] | dict[str, float]:
        """Mean loss and accuracy over (x, t), ``batch_size`` samples at a time: ``(loss, accuracy)``.

        With ``return_dict=True``: ``{"loss", "accuracy"}``, and for a binary classifier
        (one sigmoid output, whose accuracy counts a logit above 0, a probability above
        0.5, as positive) ``"roc_auc"`` too: the exact area under the ROC curve of the
        logits (:func:`gpucnn.metrics.roc_auc`, ties counting one half), NaN where it is
        undefined (labels of one class, soft labels, NaN outputs). The logits stay on the
        device until the pass ends, then come to the host at once.

        With a ``communicator`` (:mod:`gpucnn.distributed`), each rank evaluates its
        contiguous share of the samples and the sums are taken over the ranks; every rank
        returns the same numbers.
        """
        batch_size = check_batch_size(batch_size)
        x, t = self.prepare(x, t)
        ranked = return_dict and self._is_binary()
        total_loss, total_correct = None, None
        logits = []  # a binary classifier's scores, kept for the ROC AUC
        n = x.shape[0]
        first, last = (0, n) if communicator is None else shard_bounds(n, communicator.size, communicator.rank)
        with translate_out_of_memory(self, min(batch_size, n), "evaluate", training=False):
            for i in range(first, last, batch_size):
                stop = min(i + batch_size, last)
                xb, tb = self.as_input(x[i:stop, ...]), self.as_target(t[i:stop, ...])
                scores = self.forward(xb, False)
                loss = self.loss_layer.forward(scores, tb, check_labels=False) * xb.shape[0]
                correct = self._count_correct(scores, tb)
                total_loss = loss if total_loss is None else total_loss + loss
                total_correct = correct if total_correct is None else total_correct + correct
                if ranked:
                    logits.append(self.backend.xp.reshape(scores, (-1,)))
        self.loss_layer.clear_cache()
        totals = [0.0 if total is None else float(total) for total in (total_loss, total_correct)]
        if communicator is not None:
            totals = communicator.sum_floats(totals)
        loss, accuracy = totals[0] / n, totals[1] / n
        if not return_dict:
            return loss, accuracy
        results = {"loss": loss, "accuracy": accuracy}
        if ranked:
            all_logits = self.backend.to_numpy(self.backend.xp.concat(logits)) if logits else np.zeros(0)
            if communicator is not None:  # the shards are contiguous, in rank order
                all_logits = np.concatenate(communicator.allgather_object(all_logits))
            results["roc_auc"] = roc_auc_or_nan(all_logits, self.backend.to_numpy(t))
        return results

    # -- saving ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the model, its optimizer state and training position to ``path`` (.npz), atomically."""
        write_model_file(self, path)

    def architecture(self) -> dict:
        """A JSON-able description that :meth:`from_architecture` (and so :func:`gpucnn.load`)
        rebuilds the model from."""
        return {
            "class": "Sequential",
            "layers": [
                {"type": type(layer).__name__, "name": layer.name, "config": layer.config()} for layer in self.layers
            ],
            "loss": type(self.loss_layer).__name__,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "dtype": dtype_name(self.dtype),
            "seed": self.seed,
        }

    @classmethod
    def from_architecture(cls, arch: Mapping[str, Any]) -> Sequential:
        """A new model, on the current backend, from what :meth:`architecture` returned."""
        layers = []
        for spec in arch["layers"]:
            if spec["type"] not in LAYERS:
                raise ValueError(f"unknown layer type {spec['type']!r}")
            config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()}
            layers.append(LAYERS[spec["type"]](**config, name=spec["name"]))
        loss = LAYERS[arch["loss"]]()
        return cls(layers, loss, input_shape=arch["input_shape"], dtype=arch["dtype"], seed=arch.get("seed"))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.layers)} layers, backend={self.backend.name!r}, "
            f"dtype={dtype_name(self.dtype)})"
        )


class SimpleConvNet(Sequential):
    """The book's SimpleConvNet: conv - relu - pool - affine - relu - affine - softmax.

    The constructor is the book's; ``params`` has the keys ``W1 b1 W2 b2 W3 b3`` and holds
    the very arrays the layers use. Non-square inputs work.

    Args:
        input_dim: (C, H, W) of one sample.
        conv_param: ``filter_num``, ``filter_size``, ``pad``, ``stride`` of the convolution.
        hidden_size: units of the hidden affine layer.
        output_size: number of classes.
        weight_init_std: std of the normal initial weights (biases start at zero).
    """

    _KEYS = {
        ("convolution1", "W"): "W1",
        ("convolution1", "b"): "b1",
        ("affine1", "W"): "W2",
        ("affine1", "b"): "b2",
        ("affine2", "W"): "W3",
        ("affine2", "b"): "b3",
    }

    def __init__(
        self,
        input_dim: Sequence[int] = (1, 28, 28),
        conv_param: Mapping[str, int] | None = None,
        hidden_size: int = 100,
        output_size: int = 10,
        weight_init_std: float = 0.01,
        *,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        conv_param = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1, **(conv_param or {})}
        init = normal(weight_init_std)
        self.hyperparameters = {
            "input_dim": list(input_dim),
            "conv_param": dict(conv_param),
            "hidden_size": hidden_size,
            "output_size": output_size,
            "weight_init_std": weight_init_std,
        }
        layers = [
            Convolution(
                conv_param["filter_num"],
                conv_param["filter_size"],
                conv_param["stride"],
                conv_param["pad"],
                weight_init=init,
                name="convolution1",
            ),
            ReLU(name="relu1"),
            MaxPooling(2, 2, name="max_pooling1"),
            Affine(hidden_size, weight_init=init, name="affine1"),
            ReLU(name="relu2"),
            Affine(output_size, weight_init=init, name="affine2"),
        ]
        super().__init__(
            layers, SoftmaxWithLoss(name="softmax_with_loss1"), input_shape=tuple(input_dim), dtype=dtype, seed=seed
        )

    def _param_key(self, layer, name):
        return self._KEYS[(layer.name, name)]

    def architecture(self):
        return {**super().architecture(), "class": "SimpleConvNet", "hyperparameters": self.hyperparameters}

    @classmethod
    def from_architecture(cls, arch):
        hp = arch["hyperparameters"]
        return cls(
            tuple(hp["input_dim"]),
            hp["conv_param"],
            hp["hidden_size"],
            hp["output_size"],
            hp["weight_init_std"],
            dtype=arch["dtype"],
            seed=arch.get("seed"),
        )


MODEL_CLASSES: dict[str, type[Sequential]] = {"Sequential": Sequential, "SimpleConvNet": SimpleConvNet}
