"""gpucnn: a small, readable CNN engine that runs the same layers on NumPy, Numba and CuPy.

>>> import gpucnn
>>> net = gpucnn.SimpleConvNet(seed=0)                 # the book's network, float32
>>> with gpucnn.use_backend("numpy"):
...     mlp = gpucnn.Sequential([gpucnn.layers.Affine(50), gpucnn.layers.ReLU(),
...                              gpucnn.layers.Affine(10)], input_shape=(784,))
"""

from . import (
    datasets,
    distributed,
    fused,
    initializers,
    kernels,
    layers,
    memory,
    metrics,
    models,
    optimizers,
    schedules,
    tables,
)
from .backend import (
    Backend,
    BackendUnavailable,
    available_backends,
    get_backend,
    known_backends,
    set_backend,
    use_backend,
)
from .io import load
from .kernels import conv_output_size
from .memory import OutOfMemoryError, max_batch_size
from .model import Sequential, SimpleConvNet
from .training import History, NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailable",
    "History",
    "NonFiniteLossError",
    "OutOfMemoryError",
    "Sequential",
    "SimpleConvNet",
    "available_backends",
    "conv_output_size",
    "datasets",
    "distributed",
    "fused",
    "get_backend",
    "initializers",
    "kernels",
    "known_backends",
    "layers",
    "load",
    "max_batch_size",
    "memory",
    "metrics",
    "models",
    "optimizers",
    "schedules",
    "set_backend",
    "tables",
    "use_backend",
]
