"""SimpleConvNet's twin in PyTorch, the CPU baseline of :mod:`benchmarks.bench_cpu_vs_torch`.

The same network, loss and optimizer as ``gpucnn.SimpleConvNet()`` trained with
``AdaGrad``: conv 30 filters 5x5 (stride 1, no pad) → ReLU → max pooling 2x2 → linear
4320 → 100 → ReLU → linear 100 → 10, mean cross-entropy, Adagrad. Torch is an optional
benchmark dependency: this module imports it when called, never at import time.
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


class TorchTrainer:
    """One training step (forward, backward, Adagrad update) and inference on a torch model."""

    def __init__(self, net: Any, lr: float = 0.06) -> None:
        import torch

        self.torch = torch
        self.net = net
        self.loss = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adagrad(net.parameters(), lr=lr)

    def train_step(self, x: Any, t: Any) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.net(x), t).backward()
        self.optimizer.step()

    def predict(self, x: Any) -> Any:
        with self.torch.inference_mode():
            return self.net(x)
