"""Coalescing of gpucnn's CUDA kernels, counted without a GPU: 32-byte sectors per warp request.

    python -m benchmarks.coalescing [--out benchmarks/results/coalescing.md]

Every kernel of :data:`gpucnn.kernels.cuda_set.CUDA_SOURCES` runs once, in its float32
instance, through :class:`~gpucnn.kernels.cuda_set.CudaKernels` at the shapes of
SimpleConvNet's training step at batch 8 (input (8, 1, 28, 28), 30 filters 5x5, 2x2 pooling
of stride 2, affine layers 4320 -> 100 -> 10), on the emulator's instrumented launcher
(``EmuLauncher(instrument=True)``, see :mod:`gpucnn.kernels.emu`). The launcher records the
address of every global load and store and joins them into warp requests as a GPU would
issue them (the k-th time lane L of warp w reaches a site joins request (w, site, k)); per
request it counts the distinct 32-byte sectors touched and the ideal, ceil(active lanes x
element size / 32): the lanes' bytes packed contiguously, 4 sectors for 32 float32 lanes.

The report has one row per kernel and site (file:line and the subscript there): requests,
sectors per request, ideal sectors per request, their ratio, and a flag where the ratio
exceeds 2 (issue 12's bound). A gather whose taps are inherently strided (:data:`GATHERS`)
is reported once per tap, the k-th tap of each lane, with its justification. These are
counts from the kernels' addresses in the emulation, not measurements on a GPU: caches,
the L1's 128-byte lines and the hardware's own request splitting are not modelled.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPORT = RESULTS / "coalescing.md"
BOUND = 2.0  # issue 12: within 2x of the ideal sectors per request

# SimpleConvNet at batch 8: conv 30x5x5 on (1, 28, 28) -> (30, 24, 24), pool 2x2 s2 -> (30, 12, 12).
N, C, H, W = 8, 1, 28, 28
FN, FH, FW = 30, 5, 5
OH, OW = 24, 24
POOL, POOL_STRIDE = 2, 2
HIDDEN, CLASSES = 100, 10

# Gathers whose taps are strided by the layout they read, not by a choice of the kernel:
# (kernel, subscript) -> why. They are reported per tap.
GATHERS = {
    ("col2im", "col[(row * c + ch) * (kh * kw) + ky * kw + kx]"): (
        "one thread per input pixel gathers tap (ky, kx) of each window that covers it; the windows of adjacent "
        "pixels are adjacent rows of the column matrix, C*KH*KW elements apart, so each tap's 32 lanes read 32 "
        "rows. A shared-memory tile of the column rows would pack them."
    ),
}


@dataclass(frozen=True)
class Site:
    """The counted requests of one kernel's site, summed over its visits (or one visit)."""

    kernel: str
    file: str
    line: int
    expression: str
    access: str
    element_bytes: int
    requests: int
    sectors: int
    ideal: int
    visit: int | None = None  # the tap, for a gather's per-tap rows

    @property
    def per_request(self) -> float:
        return self.sectors / self.requests

    @property
    def ideal_per_request(self) -> float:
        return self.ideal / self.requests

    @property
    def ratio(self) -> float:
        return self.sectors / self.ideal


def _match(text: str, at: int, step: int) -> int:
    """The index of the bracket matching the one at ``at``, scanning by ``step`` (+1 or -1)."""
    pairs = {"[": "]", "(": ")", "<": ">"}
    opening = text[at] if step > 0 else {v: k for k, v in pairs.items()}[text[at]]
    closing = pairs[opening]
    depth = 0
    for k in range(at, len(text) if step > 0 else -1, step):
        depth += (text[k] == (opening if step > 0 else closing)) - (text[k] == (closing if step > 0 else opening))
        if depth == 0:
            return k
    return at


def subscript_bounds(text: str, column: int) -> tuple[int, int] | None:
    """The start and end (exclusive) in line ``text`` of the subscript expression, such as
    ``x[i]`` or ``tensor<T>(table, 0, k)[j]``, at 1-based ``column``. The compiler points at
    its ``[`` or its ``]``, or, for some expressions, at the operator next to it
    (``argmax[o] == tap``): the subscript nearest to the column is taken. None for a line
    without one, or a column of 0 (the compiler cannot tell)."""
    at = column - 1
    if not 0 <= at < len(text):
        return None
    if text[at] not in "[]":
        candidates = [_subscript(text, k) for k, char in enumerate(text) if char == "["]
        return min(candidates, key=lambda b: max(b[0] - at, at - b[1] + 1, 0), default=None)
    return _subscript(text, at)


def _subscript(text: str, at: int) -> tuple[int, int]:
    """The bounds of the subscript expression whose ``[`` or ``]`` is at index ``at``."""
    open_at, close_at = (at, _match(text, at, 1)) if text[at] == "[" else (_match(text, at, -1), at)
    start = open_at
    while start > 0 and text[start - 1] == " ":
        start -= 1
    if start > 0 and text[start - 1] == ")":  # a call that returns the pointer
        start = _match(text, start - 1, -1)
        if start > 0 and text[start - 1] == ">":  # its template arguments
            start = _match(text, start - 1, -1)
    name = re.search(r"[A-Za-z_]\w*$", text[:start])
    return (name.start() if name else start), close_at + 1


def subscript_at(text: str, column: int) -> str:
    """The subscript expression at 1-based ``column`` of line ``text`` (see
    :func:`subscript_bounds`); the stripped line when the column does not tell."""
    bounds = subscript_bounds(text, column)
    return text[bounds[0] : bounds[1]] if bounds else text.strip()


def access_kind(text: str, column: int, load: bool) -> str:
    """``load`` for a pointer to const; else what follows the subscript tells: ``store``
    (``= v``), ``load+store`` (``+=``, ``++``), or ``access`` (read through a writable
    pointer, or a reference handed to a function that may read and write it)."""
    if load:
        return "load"
    bounds = subscript_bounds(text, column)
    after = text[bounds[1] :] if bounds else ""
    if re.match(r"\s*=(?!=)", after):
        return "store"
    if re.match(r"\s*([-+*/%&|^]=|\+\+|--)", after):
        return "load+store"
    return "access"


def sites(kernel: str, counts: list, sources: dict[str, Path]) -> list[Site]:
    """One :class:`Site` per site of ``counts`` (SiteCount rows of one launch), visits summed;
    a site listed in :data:`GATHERS` also gets one row per visit (tap)."""
    lines: dict[str, list[str]] = {}
    grouped: dict[tuple, list] = {}
    for count in counts:
        grouped.setdefault((count.file, count.line, count.column, count.load, count.element_bytes), []).append(count)
    found = []
    for (file, line, column, load, element_bytes), rows in grouped.items():
        if file not in lines:
            lines[file] = sources[file].read_text().splitlines() if file in sources else []
        text = lines[file][line - 1] if 0 < line <= len(lines[file]) else ""
        expression = subscript_at(text, column)
        access = access_kind(text, column, load)
        base = (kernel, file, line, expression, access, element_bytes)
        totals = (sum(r.requests for r in rows), sum(r.sectors for r in rows), sum(r.ideal for r in rows))
        found.append(Site(*base, *totals))
        if (kernel, expression) in GATHERS:
            found += [Site(*base, r.requests, r.sectors, r.ideal, visit=r.visit) for r in rows]
    return found


def simple_convnet_cases(kernels, device: Callable) -> dict[str, Callable[[], object]]:
    """Kernel name -> a call of the kernel set that launches it, at SimpleConvNet's batch-8 shapes."""
    rng = np.random.default_rng(0)

    def array(*shape: int) -> object:
        return device(rng.standard_normal(shape, dtype=np.float32))

    x, w1, b1 = array(N, C, H, W), array(FN, C, FH, FW), array(FN)
    col = kernels.im2col(x, FH, FW, 1, 0)
    rows, y = array(N * OH * OW, FN), array(N, FN, OH, OW)
    pooled, argmax = kernels.maxpool_forward(y, POOL, POOL, POOL_STRIDE, 0)
    fused, fused_argmax = kernels.bias_relu_maxpool(rows, b1, N, OH, OW, POOL, POOL, POOL_STRIDE, 0)
    scores = array(N, CLASSES)
    labels = device(rng.integers(0, CLASSES, N).astype(np.int32))
    params = [w1, b1, array(FN * 12 * 12, HIDDEN), array(HIDDEN), array(HIDDEN, CLASSES), array(CLASSES)]
    grads = [array(*p.shape) for p in params]
    state = [[array(*p.shape) for p in params] for _ in range(2)]
    for h in state[1]:
        h *= h  # AdaGrad's, RMSprop's and Adam's second moments are not negative
    big, big_grad, m, v = params[2], grads[2], state[0][2], state[1][2]
    pool = (POOL, POOL, POOL_STRIDE, 0)
    direct = (w1, b1, 1, 0, *pool)
    direct_out, direct_argmax = kernels.conv_bias_relu_maxpool(x, *direct)
    return {
        "im2col": lambda: kernels.im2col(x, FH, FW, 1, 0),
        "col2im": lambda: kernels.col2im(col, x.shape, FH, FW, 1, 0),
        "maxpool_forward": lambda: kernels.maxpool_forward(y, *pool),
        "maxpool_backward": lambda: kernels.maxpool_backward(pooled, argmax, y.shape, *pool),
        "avgpool_forward": lambda: kernels.avgpool_forward(y, *pool),
        "avgpool_backward": lambda: kernels.avgpool_backward(pooled, y.shape, *pool),
        "bias_relu_maxpool": lambda: kernels.bias_relu_maxpool(rows, b1, N, OH, OW, *pool),
        "bias_relu_maxpool_infer": lambda: kernels.bias_relu_maxpool_infer(rows, b1, N, OH, OW, *pool),
        "maxpool_relu_backward": lambda: kernels.maxpool_relu_backward(fused, fused_argmax, fused, N, OH, OW, *pool),
        "rows_to_nchw": lambda: kernels.rows_to_nchw(rows, N, OH, OW),
        "nchw_to_rows": lambda: kernels.nchw_to_rows(y),
        "bias_relu": lambda: kernels.bias_relu(rows, b1),
        "relu_backward": lambda: kernels.relu_backward(y, y),
        "softmax_cross_entropy": lambda: kernels.softmax_cross_entropy(scores, labels),
        "softmax_cross_entropy_backward": lambda: kernels.softmax_cross_entropy_backward(scores, labels, 1 / N),
        "softmax_cross_entropy_count": lambda: kernels.softmax_cross_entropy_count(scores, labels),
        "softmax_cross_entropy_count_grad": lambda: kernels.softmax_cross_entropy_count_grad(scores, labels, 1 / N),
        "bias_softmax_cross_entropy_count_grad": lambda: kernels.bias_softmax_cross_entropy_count_grad(
            scores, params[5], labels, 1 / N
        ),
        "sgd_update": lambda: kernels.sgd_update(big, big_grad, 0.01),
        "momentum_update": lambda: kernels.momentum_update(big, big_grad, m, 0.01, 0.9),
        "adagrad_update": lambda: kernels.adagrad_update(big, big_grad, v, 0.01, 1e-7),
        "rmsprop_update": lambda: kernels.rmsprop_update(big, big_grad, v, 0.01, 0.99, 1e-7),
        "adam_update": lambda: kernels.adam_update(big, big_grad, m, v, 0.001, 0.9, 0.999, 1e-7),
        "sgd_update_many": lambda: kernels.sgd_update_many(params, grads, 0.01),
        "momentum_update_many": lambda: kernels.momentum_update_many(params, grads, state[0], 0.01, 0.9),
        "adagrad_update_many": lambda: kernels.adagrad_update_many(params, grads, state[1], 0.01, 1e-7),
        "rmsprop_update_many": lambda: kernels.rmsprop_update_many(params, grads, state[1], 0.01, 0.99, 1e-7),
        "adam_update_many": lambda: kernels.adam_update_many(params, grads, *state, 0.001, 0.9, 0.999, 1e-7),
        "conv_bias_relu_maxpool": lambda: kernels.conv_bias_relu_maxpool(x, *direct),
        "conv_bias_relu_maxpool_infer": lambda: kernels.conv_bias_relu_maxpool_infer(x, *direct),
        "conv_maxpool_relu_backward_params": lambda: kernels.conv_maxpool_relu_backward_params(
            direct_out, direct_argmax, direct_out, x, w1.shape, 1, 0, *pool
        ),
    }


def count_kernels(cases: dict[str, Callable] | None = None) -> tuple[list[Site], list[str]]:
    """Run every kernel of ``CUDA_SOURCES`` once on the instrumented emulator; its sites, and
    the kernels no case launched (their names: a new kernel needs a case here)."""
    from gpucnn.kernels import emu
    from gpucnn.kernels.cuda_set import CUDA_SOURCES, CudaKernels

    launcher = emu.EmuLauncher(instrument=True)
    kernels = CudaKernels(emu.namespace(), launcher)
    if cases is None:
        cases = simple_convnet_cases(kernels, emu.to_device)
    sources = {s.path.name: s.path for s in CUDA_SOURCES}
    sources.update({p.name: p for s in CUDA_SOURCES for p in s.path.parent.glob("*.cuh")})
    found: list[Site] = []
    missing = []
    for source in CUDA_SOURCES:
        for kernel in source.kernels:
            launcher.sector_counts.clear()
            if kernel in cases:
                cases[kernel]()
            launches = [counts for name, counts in launcher.sector_counts if name == f"{kernel}<float>"]
            if not launches:
                missing.append(kernel)
                continue
            # one launch per kernel, but for a two-stage kernel (stage 0, then 1): each its own sites
            for counts in launches:
                found += sites(kernel, counts, sources)
    return found, missing


def format_report(found: list[Site], missing: list[str], command: str) -> str:
    """The markdown report: a table of every site, the sites over the bound, and the gathers' taps."""
    over = [s for s in found if s.visit is None and s.ratio > BOUND]
    worst: dict[str, float] = {}
    for s in over:
        worst[s.kernel] = max(worst.get(s.kernel, 0.0), s.ratio)
    lines = [
        "# Coalescing of the CUDA kernels, counted in the emulator",
        "",
        f"Made by `{command}`: every kernel of `CUDA_SOURCES` (float32) at SimpleConvNet's batch-8 shapes,",
        "on the instrumented emulator (`EmuLauncher(instrument=True)`). Sectors are 32-byte sectors per warp",
        "request, counted from the addresses each kernel's lanes access, not measured on a GPU. Ideal:",
        "ceil(active lanes x element size / 32). Flag: over 2x the ideal (issue 12).",
        "",
        f"{len(found) - sum(s.visit is not None for s in found)} sites; {len(over)} over 2x, in "
        + (", ".join(f"{kernel} (up to {ratio:.2f}x)" for kernel, ratio in worst.items()) or "no kernel")
        + ".",
        "",
        "| kernel | site | expression | access | requests | sectors/request | ideal | ratio | flag |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for s in found:
        if s.visit is not None:
            continue
        flag = "> 2x" + (" (gather, per tap below)" if (s.kernel, s.expression) in GATHERS else "")
        lines.append(
            f"| {s.kernel} | {s.file}:{s.line} | `{s.expression}` | {s.access} | {s.requests} | "
            f"{s.per_request:.2f} | {s.ideal_per_request:.2f} | {s.ratio:.2f} | {flag if s.ratio > BOUND else ''} |"
        )
    taps = [s for s in found if s.visit is not None]
    if taps:
        lines += [
            "",
            "## Gathers with inherently strided taps, per tap",
            "",
            "Tap k: the k-th tap each lane gathers (lanes near an edge have fewer taps: later taps, fewer lanes).",
            "",
            "| kernel | site | tap | requests | sectors/request | ideal | ratio | justification |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for k, s in enumerate(taps):
            first = k == 0 or (taps[k - 1].kernel, taps[k - 1].expression) != (s.kernel, s.expression)
            lines.append(
                f"| {s.kernel} | {s.file}:{s.line} | {s.visit} | {s.requests} | {s.per_request:.2f} | "
                f"{s.ideal_per_request:.2f} | {s.ratio:.2f} | {GATHERS[s.kernel, s.expression] if first else '″'} |"
            )
    if missing:
        lines += ["", "Not run (no case in benchmarks/coalescing.py): " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPORT, help=f"the report to write (default {REPORT})")
    args = parser.parse_args(argv)
    from gpucnn.io import atomic_write

    found, missing = count_kernels()
    report = format_report(found, missing, "python -m benchmarks.coalescing")
    with atomic_write(args.out, "w") as out:
        out.write(report)
    print(report)
    if missing:
        print(f"not run: {', '.join(missing)} (add a case to benchmarks/coalescing.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
