"""Models: :class:`Sequential` (a list of layers and a loss) and the book's
:class:`SimpleConvNet`.

A model is bound to the backend that was current when it was built; its parameters
live there. ``model.to(name)`` moves it. The methods that take data (``predict``,
``loss``, ``gradient``, ``accuracy`` and the training methods of
:class:`gpucnn.training.TrainingMixin`) accept NumPy arrays whatever the backend, cast
them to the model's dtype and move them, one batch at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .backend import Backend, get_backend
from .initializers import normal
from .layers import (
    Affine,
    Convolution,
    ConvReluMaxPool,
    Dropout,
    Layer,
    LinearReLU,
    LossLayer,
    MaxPooling,
    ReLU,
    SigmoidWithLoss,
    SoftmaxWithLoss,
    dtype_name,
    xp_dtype,
)
from .training import TrainingMixin, check_batch_size

__all__ = ["Sequential", "SimpleConvNet", "get_loss"]

Array = Any

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

    def __init__(self, model: Sequential, store: str = "params") -> None:
        self._model = model
        self._store = store

    def _slot(self, key: str) -> tuple[Layer, str]:
        try:
            return self._model._param_slots()[key]
        except KeyError:
            raise KeyError(f"{key!r} is not a parameter; parameters: {', '.join(self._model._param_slots())}") from None

    def __getitem__(self, key: str) -> Array:
        layer, name = self._slot(key)
        return getattr(layer, self._store)[name]

    def __setitem__(self, key: str, value: Array) -> None:
        layer, name = self._slot(key)
        old = layer.params[name]
        new = layer.backend.asarray(value if layer.backend.is_array(value) else np.asarray(value), dtype=old.dtype)
        if tuple(new.shape) != tuple(old.shape):
            raise ValueError(f"parameter {key!r} has shape {tuple(old.shape)}, got {tuple(new.shape)}")
        layer.params[name] = new

    def __iter__(self) -> Iterator[str]:
        return iter(self._model._param_slots())

    @property
    def backend(self) -> Backend:
        """The model's backend: optimizers run its kernel set on these arrays (NumPy arrays
        alone cannot tell the ``numpy`` backend from ``numba``)."""
        return self._model.backend

    def __len__(self) -> int:
        return len(self._model._param_slots())

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: array{tuple(v.shape)}" for k, v in self.items()) + "}"


def _snake(name: str) -> str:
    """``MaxPooling`` → ``max_pooling``, ``ReLU`` → ``relu``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z][a-z])", "_", name).lower()


class Sequential(TrainingMixin):
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
            followed by a ReLU, as one fused step (same values; less memory traffic).
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
        self._init_rng = np.random.default_rng(seed)
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
        self.fuse = fuse
        self._plan: list | None = None
        self._seed_dropout(seed)
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

    @property
    def built(self) -> bool:
        return self.input_shape is not None

    def _seed_dropout(self, seed: int | None) -> None:
        seeds = np.random.SeedSequence(seed).spawn(len(self.layers))
        for layer, child in zip(self.layers, seeds):
            if isinstance(layer, Dropout):
                layer.reseed(int(child.generate_state(1)[0]) if seed is not None else None)

    def _param_key(self, layer: Layer, name: str) -> str:
        return f"{layer.name}.{name}"

    def _param_slots(self) -> dict[str, tuple[Layer, str]]:
        return {
            self._param_key(layer, name): (layer, name)
            for layer in self.layers
            for name in layer.param_names
            if name in layer.params
        }

    @property
    def params(self) -> ParamView:
        """``{key: array}`` of every trainable array (live: see :class:`ParamView`)."""
        return ParamView(self)

    @property
    def grads(self) -> dict[str, Array]:
        """Gradients from the last backward pass, keyed like ``params``."""
        return {key: layer.grads[name] for key, (layer, name) in self._param_slots().items() if name in layer.grads}

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    def to(self, backend: str | Backend) -> Sequential:
        """Move parameters (and optimizer state, if any) to ``backend``; returns the model."""
        target = get_backend(backend)
        for layer in [*self.layers, self.loss_layer]:
            layer.to(target)
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            for slots in optimizer.state.values():
                for key, value in slots.items():
                    slots[key] = target.asarray(self.backend.to_numpy(value))
        self.dtype = xp_dtype(target.xp, dtype_name(self.dtype))
        self.backend = target
        return self

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

    def _as_input(self, x: Any) -> Array:
        """``x`` as an array of the model's backend and dtype (NumPy arrays are moved)."""
        if self.backend.is_array(x):
            return x if x.dtype == self.dtype else self.backend.xp.astype(x, self.dtype)
        if isinstance(x, (np.ndarray, list, tuple, np.generic)):
            return self.backend.asarray(np.asarray(x), dtype=self.dtype)
        self.backend.check_array(x, f"{type(self).__name__} input")
        raise AssertionError  # check_array raised

    def _as_target(self, t: Any) -> Array:
        if self.backend.is_array(t):
            return t
        if isinstance(t, (np.ndarray, list, tuple)):
            t = np.asarray(t)
            return self.backend.asarray(t if t.dtype.kind in "iub" else t.astype(dtype_name(self.dtype)))
        self.backend.check_array(t, f"{type(self).__name__} targets")
        raise AssertionError

    def _ensure_built(self, x: Array) -> None:
        if not self.built:
            self.build(tuple(x.shape[1:]))

    # -- the book's methods ---------------------------------------------------------

    def _steps(self) -> list:
        """The layers as they run: Convolution → ReLU → MaxPooling and Affine/Convolution → ReLU
        fused into single steps."""
        if self._plan is None:
            steps, i = [], 0
            while i < len(self.layers):
                if self.fuse and ConvReluMaxPool.fits(self.layers, i):
                    steps.append(ConvReluMaxPool(*self.layers[i : i + 3]))
                    i += 3
                elif self.fuse and LinearReLU.fits(self.layers, i):
                    steps.append(LinearReLU(*self.layers[i : i + 2]))
                    i += 2
                else:
                    steps.append(self.layers[i])
                    i += 1
            self._plan = steps
        return self._plan

    def _forward(self, x: Array, train: bool) -> Array:
        for step in self._steps():
            x = step.forward(x, train)
        return x

    def predict(self, x: Any, batch_size: int | None = None, *, train: bool = False) -> Array:
        """Raw scores (before softmax/sigmoid) as an array of the model's backend.

        With ``batch_size``, the input is processed in chunks so that intermediate
        memory (im2col's columns above all) stays bounded whatever N is.
        """
        from .memory import translate_out_of_memory

        n = x.shape[0] if hasattr(x, "shape") else len(x)
        chunk = n if batch_size is None else min(check_batch_size(batch_size), n)
        with translate_out_of_memory(self, chunk, "predict", training=train):
            if batch_size is None:
                x = self._as_input(x)
                self._ensure_built(x)
                return self._forward(x, train)
            outs = [self.predict(x[i : i + batch_size], train=train) for i in range(0, n, batch_size)]
            return self.backend.xp.concat(outs, axis=0)

    def predict_proba(self, x: Any, batch_size: int | None = None) -> Array:
        """Class probabilities (softmax or sigmoid of the scores)."""
        return self.loss_layer.activation(self.predict(x, batch_size))

    def _loss_array(self, x: Array, t: Array, train: bool, check_labels: bool = True) -> Array:
        """Forward pass and loss as a 0-d backend array (no host synchronisation)."""
        scores = self._forward(x, train)
        return self.loss_layer.forward(scores, t, check_labels=check_labels)

    def loss(self, x: Any, t: Any, *, train: bool = True) -> float:
        """The loss on (x, t) as a Python float; raises FloatingPointError if it is not finite."""
        x, t = self._as_input(x), self._as_target(t)
        self._ensure_built(x)
        value = float(self._loss_array(x, t, train))
        if not math.isfinite(value):
            raise FloatingPointError(
                f"the loss is {value} on a batch of {x.shape[0]} samples "
                f"(non-finite inputs, exploding weights or too high a learning rate)"
            )
        return value

    def _backward(self) -> None:
        dout = self.loss_layer.backward(1.0)
        for step in reversed(self._steps()):
            dout = step.backward(dout)
            if dout is None:
                break

    def gradient(self, x: Any, t: Any) -> dict[str, Array]:
        """Backpropagation: ``{key: gradient}`` with the keys of ``params``."""
        x, t = self._as_input(x), self._as_target(t)
        self._ensure_built(x)
        self._loss_array(x, t, train=True)
        self._backward()
        return self.grads

    def accuracy(self, x: Any, t: Any, batch_size: int = 100) -> float:
        """Fraction of correct predictions, computed ``batch_size`` samples at a time."""
        check_batch_size(batch_size)
        correct = 0
        n = len(x)
        for i in range(0, n, batch_size):
            correct = correct + self._count_correct(
                self.predict(x[i : i + batch_size]), self._as_target(t[i : i + batch_size])
            )
        return float(correct) / n if n else float("nan")

    def _count_correct(self, scores: Array, t: Array) -> Array:
        """Number of right answers in a batch, as a 0-d backend array."""
        xp = self.backend.xp
        if isinstance(self.loss_layer, SigmoidWithLoss):
            predicted = xp.reshape(scores > 0, (-1,))
            truth = xp.reshape(t, (-1,)) > 0.5
        else:
            predicted = xp.argmax(scores, axis=1)
            truth = xp.argmax(t, axis=1) if t.ndim == 2 else t
            predicted = xp.astype(predicted, truth.dtype)
        return xp.sum(xp.astype(predicted == truth, xp.int64))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.layers)} layers, backend={self.backend.name!r}, "
            f"dtype={dtype_name(self.dtype)})"
        )

    # -- saving ---------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write the model, its optimizer state and training position to ``path`` (.npz), atomically."""
        from .io import save

        save(self, path)

    def architecture(self) -> dict:
        """A JSON-able description that :func:`gpucnn.load` rebuilds the model from."""
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
