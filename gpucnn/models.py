"""The networks people meet first, each a function returning a ready model.

Every builder takes ``input_shape`` (one sample), ``num_classes``, ``dtype`` and ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .layers import Affine, Convolution, Dropout, Flatten, MaxPooling, ReLU, SigmoidWithLoss, SoftmaxWithLoss
from .model import Sequential, SimpleConvNet

__all__ = [
    "MODELS",
    "binary_mlp",
    "build_model",
    "cifar_cnn",
    "cifar_vgg",
    "lenet5",
    "mnist_cnn",
    "simple_convnet",
    "two_layer_net",
]


def simple_convnet(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    dtype: Any = "float32",
    seed: int | None = None,
    weight_init_std: float = 0.01,
) -> SimpleConvNet:
    """The book's SimpleConvNet: conv 30 5x5 - relu - pool 2 - affine 100 - relu - affine."""
    return SimpleConvNet(
        tuple(input_shape), output_size=num_classes, weight_init_std=weight_init_std, dtype=dtype, seed=seed
    )


def _conv_block(filters: int, first_pad: int | str) -> list:
    """Conv 3x3 - ReLU - conv 3x3 - ReLU - max pool 2 - dropout .25, the Keras examples' block."""
    return [
        Convolution(filters, 3, pad=first_pad),
        ReLU(),
        Convolution(filters, 3),
        ReLU(),
        MaxPooling(2),
        Dropout(0.25),
    ]


def _dense_head(units: int, num_classes: int) -> list:
    """Flatten - dense - ReLU - dropout .5 - dense to the classes."""
    return [Flatten(), Affine(units), ReLU(), Dropout(0.5), Affine(num_classes)]


def mnist_cnn(
    input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, dtype: Any = "float32", seed: int | None = None
) -> Sequential:
    """The classic Keras MNIST example: conv 32 3x3 - conv 64 3x3 - pool - dropout - dense 128 - dense."""
    layers = [Convolution(32, 3), ReLU(), *_conv_block(64, 0)[2:], *_dense_head(128, num_classes)]
    return Sequential(layers, SoftmaxWithLoss(), input_shape=tuple(input_shape), dtype=dtype, seed=seed)


def cifar_cnn(
    input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, dtype: Any = "float32", seed: int | None = None
) -> Sequential:
    """The Keras CIFAR-10 example: two conv-conv-pool-dropout blocks (32 then 64 filters), dense 512."""
    layers = [*_conv_block(32, "same"), *_conv_block(64, "same"), *_dense_head(512, num_classes)]
    return Sequential(layers, SoftmaxWithLoss(), input_shape=tuple(input_shape), dtype=dtype, seed=seed)


def lenet5(
    input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, dtype: Any = "float32", seed: int | None = None
) -> Sequential:
    """LeNet-5 with ReLU and max pooling: conv 6 5x5 pad 2 - pool - conv 16 5x5 - pool - dense
    120 - dense 84 - dense."""
    layers = [Convolution(6, 5, pad="same"), ReLU(), MaxPooling(2), Convolution(16, 5), ReLU(), MaxPooling(2)]
    layers += [Flatten(), Affine(120), ReLU(), Affine(84), ReLU(), Affine(num_classes)]
    return Sequential(layers, SoftmaxWithLoss(), input_shape=tuple(input_shape), dtype=dtype, seed=seed)


def cifar_vgg(
    input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, dtype: Any = "float32", seed: int | None = None
) -> Sequential:
    """A small VGG: two blocks of two 3x3 "same" convolutions (64, then 128 filters), each
    block ending in max pooling and dropout .25, then dense 256 with dropout .5."""

    def block(filters: int) -> list:
        return [Convolution(filters, 3, pad="same"), ReLU(), Convolution(filters, 3, pad="same"), ReLU()]

    layers = [*block(64), MaxPooling(2), Dropout(0.25), *block(128), MaxPooling(2), Dropout(0.25)]
    layers += _dense_head(256, num_classes)
    return Sequential(layers, SoftmaxWithLoss(), input_shape=tuple(input_shape), dtype=dtype, seed=seed)


def two_layer_net(
    input_shape: Sequence[int] = (784,),
    num_classes: int = 10,
    dtype: Any = "float32",
    seed: int | None = None,
    hidden_size: int = 50,
    weight_init_std: float = 0.01,
) -> Sequential:
    """The book's TwoLayerNet: affine 50 - relu - affine, weights N(0, 0.01²)."""
    return Sequential(
        [Affine(hidden_size, weight_init=weight_init_std), ReLU(), Affine(num_classes, weight_init=weight_init_std)],
        SoftmaxWithLoss(),
        input_shape=tuple(input_shape),
        dtype=dtype,
        seed=seed,
    )


def binary_mlp(
    input_shape: Sequence[int] = (30,), num_classes: int = 1, dtype: Any = "float32", seed: int | None = None
) -> Sequential:
    """A 30-16-8-6-1 perceptron with a sigmoid output and binary cross-entropy."""
    if num_classes not in (1, 2):
        raise ValueError(f"binary_mlp is a two-class model, got num_classes={num_classes}")
    return Sequential(
        [Affine(16), ReLU(), Affine(8), ReLU(), Affine(6), ReLU(), Affine(1)],
        SigmoidWithLoss(),
        input_shape=tuple(input_shape),
        dtype=dtype,
        seed=seed,
    )


MODELS: dict[str, Callable[..., Sequential]] = {
    "simple_convnet": simple_convnet,
    "mnist_cnn": mnist_cnn,
    "cifar_cnn": cifar_cnn,
    "lenet5": lenet5,
    "cifar_vgg": cifar_vgg,
    "two_layer_net": two_layer_net,
    "binary_mlp": binary_mlp,
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int = 10, dtype: Any = "float32", seed: int | None = None
) -> Sequential:
    """A zoo model by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](input_shape=input_shape, num_classes=num_classes, dtype=dtype, seed=seed)
