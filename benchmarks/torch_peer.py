"""gpucnn's networks in PyTorch, the CPU baseline of :mod:`benchmarks.bench_cpu_vs_torch`.

:func:`mirror` builds the twin of any gpucnn ``Sequential`` made of Convolution, ReLU,
MaxPooling, AvgPooling, Dropout, Flatten, Affine and Sigmoid layers: the same layers in the
same order, with the gpucnn model's initial weights copied, and the matching loss (mean
softmax cross-entropy, or binary cross-entropy on a sigmoid). :func:`simple_convnet` is
SimpleConvNet's twin drawn by torch itself: conv 30 filters 5x5 (stride 1, no pad) → ReLU
→ max pooling 2x2 → linear 4320 → 100 → ReLU → linear 100 → 10. :class:`TorchTrainer`
trains either with Adagrad or with Adam in gpucnn's form. Torch is an optional benchmark
dependency: this module imports it when called, never at import time.
"""

from __future__ import annotations

from typing import Any


def simple_convnet(
    input_dim: tuple[int, int, int] = (1, 28, 28),
    filter_num: int = 30,
    filter_size: int = 5,
    hidden_size: int = 100,
    output_size: int = 10,
    weight_init_std: float = 0.01,
    seed: int = 0,
) -> Any:
    """A ``torch.nn.Sequential`` with SimpleConvNet's layers and its N(0, std²) initial weights."""
    import torch
    from torch import nn

    c, h, w = input_dim
    pooled = filter_num * ((h - filter_size + 1) // 2) * ((w - filter_size + 1) // 2)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(c, filter_num, filter_size),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(pooled, hidden_size),
        nn.ReLU(),
        nn.Linear(hidden_size, output_size),
    )
    with torch.no_grad():
        for module in net:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0.0, weight_init_std)
                module.bias.zero_()
    return net


def mirror(model: Any) -> tuple[Any, Any]:
    """``(net, loss)``: a ``torch.nn.Sequential`` with the layers and current weights of the
    built gpucnn ``Sequential`` ``model`` (float32), and its loss module.

    Raises ``ValueError`` naming a layer that has no twin here."""
    import numpy as np
    import torch
    from torch import nn

    from gpucnn import layers as g

    modules = []
    for layer in model.layers:
        kind = type(layer)
        if kind is g.Convolution:
            fn, c, fh, fw = layer.W.shape
            module = nn.Conv2d(c, fn, (fh, fw), stride=layer.stride, padding=layer.pad)
            weights = (layer.W, layer.b)
        elif kind is g.Affine:
            d, units = layer.W.shape
            if len(layer.input_shape) > 1:  # gpucnn's Affine flattens its input itself
                modules.append(nn.Flatten())
            module = nn.Linear(d, units)
            weights = (layer.W.T, layer.b)  # gpucnn's W is (D, units), torch's (units, D)
        elif kind is g.ReLU:
            module, weights = nn.ReLU(), ()
        elif kind is g.Sigmoid:
            module, weights = nn.Sigmoid(), ()
        elif kind is g.Flatten:
            module, weights = nn.Flatten(), ()
        elif kind is g.Dropout:
            module, weights = nn.Dropout(layer.rate), ()
        elif kind in (g.MaxPooling, g.AvgPooling):
            pool = nn.MaxPool2d if kind is g.MaxPooling else nn.AvgPool2d
            module, weights = pool(layer.pool_size, stride=layer.stride, padding=layer.pad), ()
        else:
            raise ValueError(f"layer {layer.name} ({kind.__name__}) has no PyTorch twin in benchmarks.torch_peer")
        with torch.no_grad():
            for param, value in zip(module.parameters(), weights):
                param.copy_(torch.from_numpy(np.array(model.backend.to_numpy(value), dtype=np.float32)))
        modules.append(module)
    if isinstance(model.loss_layer, g.SigmoidWithLoss):
        loss = nn.BCEWithLogitsLoss()
    elif isinstance(model.loss_layer, g.SoftmaxWithLoss):
        loss = nn.CrossEntropyLoss()
    else:
        raise ValueError(f"loss {type(model.loss_layer).__name__} has no PyTorch twin in benchmarks.torch_peer")
    return nn.Sequential(*modules), loss


class TorchTrainer:
    """One training step (forward, backward, optimizer update) and inference on a torch model.

    ``optimizer`` is ``"adagrad"`` or ``"adam"``; Adam takes gpucnn's epsilon (1e-7)."""

    def __init__(self, net: Any, lr: float = 0.06, *, optimizer: str = "adagrad", loss: Any = None) -> None:
        import torch

        self.torch = torch
        self.net = net
        self.loss = torch.nn.CrossEntropyLoss() if loss is None else loss
        if optimizer == "adagrad":
            self.optimizer = torch.optim.Adagrad(net.parameters(), lr=lr)
        elif optimizer == "adam":
            self.optimizer = torch.optim.Adam(net.parameters(), lr=lr, eps=1e-7)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}: adagrad or adam")

    def train_step(self, x: Any, t: Any) -> None:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.net(x), t).backward()
        self.optimizer.step()

    def predict(self, x: Any) -> Any:
        self.net.eval()
        with self.torch.inference_mode():
            return self.net(x)
