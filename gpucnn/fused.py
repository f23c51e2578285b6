"""Fused steps: runs of consecutive layers computed as one step through fused kernel operations.

A model runs its layers as a plan of steps (:func:`plan_steps`): each Convolution →
ReLU → MaxPooling triple becomes a :class:`ConvReluMaxPool`, each Affine or Convolution
followed by a ReLU a :class:`LinearReLU`, and every other layer runs as itself. The
values are the same as the layers' own; what changes is the memory traffic: the
intermediate activations are never stored.

A fused step has the contract of :class:`gpucnn.layers.Step` (``forward``, ``backward``,
``clear_cache``, ``memory``, ``layers``). The layers keep their parameters and
gradients (``conv.params``, ``conv.grads``): optimizers, saving and loading never see
the fusion. The steps reach the layers through their public methods only: a GEMM
layer's ``gemm_rows`` / ``rows_to_output`` / ``output_to_rows`` / ``backward_rows``,
a convolution's ``check_input`` and ``output_nhw``.

Training alone has one more: a last Affine layer and a SoftmaxWithLoss run as one
:class:`AffineSoftmaxLoss` (:func:`plan_loss_head`), whose forward ends in the loss, so the
scores are never stored; inference runs the Affine as itself.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Any

from .kernels import IDENTITY_POOL
from .layers import (
    ARGMAX_BYTES,
    Affine,
    Convolution,
    Layer,
    LossLayer,
    MaxPooling,
    MemoryTerms,
    ReLU,
    SoftmaxWithLoss,
    Step,
)

__all__ = ["AffineSoftmaxLoss", "ConvReluMaxPool", "LinearReLU", "plan_loss_head", "plan_steps"]

Array = Any


class ConvReluMaxPool(Step):
    """Convolution → ReLU → MaxPooling run as one step.

    The ReLU output and the unpooled activation are never stored. Four ways through the
    kernels:

    - from the input (``conv_bias_relu_maxpool`` and its backward
      ``conv_maxpool_relu_backward_params``), when the input needs no gradient (a first
      layer) and the kernel set computes such a convolution directly
      (``prefers_direct_conv``): no column matrix at all;
    - from the input through Winograd in one operation per pass
      (``winograd_conv_bias_relu_maxpool`` and ``winograd_conv_maxpool_relu_backward``),
      when the convolution runs through Winograd, the pooling is 2x2 at stride 2 without
      pad and the kernel set takes a whole layer (``Convolution.winograd_whole``): the
      step keeps its input and output only;
    - from a Winograd convolution's products (``Convolution.winograd_forward``,
      ``winograd_bias_relu_maxpool`` and ``winograd_maxpool_relu_backward``), when the
      convolution runs through Winograd and the pooling is 2x2 at stride 2 without pad:
      each pooling window is one output tile, so no GEMM rows are made;
    - from the GEMM rows (``Convolution.gemm_rows``: im2col and a GEMM, or Winograd;
      ``bias_relu_maxpool`` and ``maxpool_relu_backward``) otherwise.

    Inference asks for ``conv_bias_relu_maxpool_infer`` (or, on the Winograd paths,
    ``winograd_conv_bias_relu_maxpool_infer`` or ``winograd_bias_relu_maxpool_infer``; no
    argmax is tracked);
    a batch larger than the kernel set's ``inference_block`` runs that many images at a
    time (the CPU sets: so that a column matrix and its GEMM output stay in the caches),
    a set whose ``inference_block`` is None (CUDA) takes the whole batch in one call. The
    results are the same.
    """

    size = 3
    # _conv_shape: (N, OH, OW) of the convolution (rows and Winograd paths); _x: the input
    # (direct path); _pooled_winograd: True when forward pooled straight from the products
    # _winograd_x: the input, when forward ran the kernel set's whole-layer Winograd operation
    cache_names = ("_conv_shape", "_x", "_argmax", "_out", "_pooled_winograd", "_winograd_x")

    def __init__(self, conv: Convolution, relu: ReLU, pool: MaxPooling) -> None:
        self.conv, self.relu, self.pool = conv, relu, pool
        super().__init__()

    @staticmethod
    def fits(layers: Sequence[Layer], i: int) -> bool:
        """Whether ``layers[i:i+3]`` is a Convolution, a ReLU and a MaxPooling."""
        return (
            i + 2 < len(layers)
            and type(layers[i]) is Convolution
            and type(layers[i + 1]) is ReLU
            and type(layers[i + 2]) is MaxPooling
        )

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (self.conv, self.relu, self.pool)

    def _direct(self) -> bool:
        """Whether training takes the direct way (see the class docstring)."""
        conv = self.conv
        _, c, fh, fw = conv.W.shape
        return not conv.needs_input_grad and conv.backend.kernels.prefers_direct_conv(c, fh, fw, conv.stride)

    def _pool_args(self) -> tuple[int, int, int, int]:
        """The pooling's (KH, KW, stride, pad), as the kernel operations take them."""
        return (*self.pool.pool_size, self.pool.stride, self.pool.pad)

    def _winograd_pool(self) -> bool:
        """Whether the step pools straight from a Winograd convolution's products: a 2x2
        pooling at stride 2 without pad, whose windows are the output tiles."""
        return self.conv.winograd() and self._pool_args() == (2, 2, 2, 0)

    def _pooled_from_products(self, x, train: bool):
        """(out, argmax or None) through ``Convolution.winograd_forward`` and the
        ``winograd_bias_relu_maxpool`` operations, block by block; the GEMM rows are never made."""
        conv, kernels = self.conv, self.conv.backend.kernels
        n, oh, ow = conv.output_nhw(x.shape)
        outs, argmaxes = [], []

        def pool(m, i, j):
            if train:
                out, argmax = kernels.winograd_bias_relu_maxpool(m, conv.b, j - i, oh, ow)
                argmaxes.append(argmax)
            else:
                out = kernels.winograd_bias_relu_maxpool_infer(m, conv.b, j - i, oh, ow)
            outs.append(out)

        conv.winograd_forward(x, pool, keep=train)
        self._conv_shape = (n, oh, ow)
        return _joined(conv.xp, outs), _joined(conv.xp, argmaxes) if train else None

    def forward(self, x, train=True):
        block, n = self.conv.backend.kernels.inference_block, x.shape[0]
        if not train and block is not None and n > block:
            self.conv.check_input(x)  # before slicing, so that an error names the caller's shape
            parts = [self.forward(x[i : min(i + block, n), ...], train=False) for i in range(0, n, block)]
            return self.conv.xp.concat(parts, axis=0)
        conv, kernels = self.conv, self.conv.backend.kernels
        pool = self._pool_args()
        super().clear_cache()  # the step's own arrays; the layers replace theirs as they compute
        whole = not self._direct() and self._winograd_pool() and conv.winograd_whole()
        if whole:
            conv.check_input(x)
        if not train:  # no gradient will flow back: no argmax, nothing kept
            if whole:
                return kernels.winograd_conv_bias_relu_maxpool_infer(x, conv.W, conv.b, conv.pad)
            if not self._direct() and self._winograd_pool():
                return self._pooled_from_products(x, train=False)[0]
            conv.check_input(x)
            return kernels.conv_bias_relu_maxpool_infer(x, conv.W, conv.b, conv.stride, conv.pad, *pool)
        if self._direct():
            conv.check_input(x)
            self._x = x
            self._out, self._argmax = kernels.conv_bias_relu_maxpool(x, conv.W, conv.b, conv.stride, conv.pad, *pool)
            return self._out
        if whole:
            self._winograd_x = x
            self._out, self._argmax = kernels.winograd_conv_bias_relu_maxpool(x, conv.W, conv.b, conv.pad)
            return self._out
        if self._winograd_pool():
            self._out, self._argmax = self._pooled_from_products(x, train=True)
            self._pooled_winograd = True
            return self._out
        rows = conv.gemm_rows(x)
        self._conv_shape = conv.output_nhw(x.shape)
        self._out, self._argmax = kernels.bias_relu_maxpool(rows, conv.b, *self._conv_shape, *pool)
        return self._out

    def backward(self, dout):
        conv, kernels = self.conv, self.conv.backend.kernels
        pool = self._pool_args()
        if self._x is not None:  # the direct path: the input needs no gradient
            conv.grads["W"], conv.grads["b"] = kernels.conv_maxpool_relu_backward_params(
                dout, self._argmax, self._out, self._x, tuple(conv.W.shape), conv.stride, conv.pad, *pool
            )
            return None
        if self._winograd_x is not None:
            dx, conv.grads["W"], conv.grads["b"] = kernels.winograd_conv_maxpool_relu_backward(
                dout, self._argmax, self._out, self._winograd_x, conv.W, conv.pad, conv.needs_input_grad
            )
            return dx
        if self._pooled_winograd:
            _, oh, ow = self._conv_shape
            db = []

            def products_grad(i, j):
                dm, db_part = kernels.winograd_maxpool_relu_backward(
                    dout[i:j, ...], self._argmax[i:j, ...], self._out[i:j, ...], j - i, oh, ow
                )
                db.append(db_part)
                return dm

            dx = conv.winograd_backward(products_grad)
            conv.grads["b"] = functools.reduce(operator.add, db)  # block by block, in order
            return dx
        drows = kernels.maxpool_relu_backward(dout, self._argmax, self._out, *self._conv_shape, *pool)
        return conv.backward_rows(drows)

    def clear_cache(self) -> None:
        super().clear_cache()
        for layer in self.layers:
            layer.clear_cache()

    def memory(self, batch_size, itemsize, training):
        """Columns (or the input, in blocks of images), the pooled output and its argmax
        kept (the NumPy set's rows path, the most generous); forward: the GEMM rows, the
        biased rows, one more in the pooling, beside one block's columns."""
        gemm = self.conv.gemm_memory(batch_size, itemsize)
        out_size = batch_size * math.prod(self.pool.output_shape)
        pooled = out_size * (itemsize + ARGMAX_BYTES)  # the output and its argmax
        if not self._direct() and self._winograd_pool() and self.conv.winograd_whole():
            return MemoryTerms(
                output=out_size * itemsize,
                kept=pooled,
                forward=pooled,
                backward=self.conv.winograd_whole_backward_bytes(batch_size, itemsize),
                output_in_cache=True,
                keeps_input=True,
            )
        if not self._direct() and self._winograd_pool():
            return MemoryTerms(
                output=out_size * itemsize,
                kept=gemm.columns + pooled,
                columns=gemm.columns,
                # a block's products, the blocks' pooled parts and their concatenation
                forward=gemm.products + 2 * pooled,
                backward=gemm.products + gemm.input_grad,
                output_in_cache=True,
                dropped=gemm.dropped_columns,
                released=gemm.released_columns,
            )
        return MemoryTerms(
            output=out_size * itemsize,
            kept=gemm.columns + out_size * (itemsize + ARGMAX_BYTES),
            columns=gemm.columns,
            forward=3 * gemm.rows + gemm.block_columns + gemm.products,
            backward=gemm.rows + gemm.block_columns + gemm.products + gemm.input_grad,
            output_in_cache=True,
            keeps_input=gemm.keeps_input,
            dropped=gemm.dropped_columns,
            released=gemm.released_columns,
        )


class LinearReLU(Step):
    """Affine → ReLU or Convolution → ReLU run as one step: the bias and the ReLU in one
    pass over the GEMM output (the kernel operation ``bias_relu``).

    A convolution through Winograd makes its output straight from the products
    (``Convolution.winograd_forward`` with ``winograd_bias_relu``, and
    ``winograd_relu_backward``): no GEMM rows and no layout changes; or, when the kernel
    set takes a whole layer (``Convolution.winograd_whole``), from the input in one
    operation per pass (``winograd_conv_bias_relu``, ``winograd_conv_relu_backward``),
    keeping its input and output only.

    A convolution whose input needs no gradient (a first layer) and that the kernel set
    computes directly (``prefers_direct_conv``) runs instead through the direct fused
    operations of :class:`ConvReluMaxPool` with a 1x1 pooling at stride 1, the identity
    (``conv_bias_relu_maxpool`` and ``conv_maxpool_relu_backward_params``): no column
    matrix, no GEMM rows, no layout changes. Its values equal the GEMM path's to float
    rounding, as that operation says.

    Inference of any other convolution asks for ``conv_bias_relu_maxpool_infer`` with the
    identity pooling too, as :class:`ConvReluMaxPool`'s inference does: one operation that
    keeps nothing, in whatever layout and blocks of images the kernel set chooses.
    """

    size = 2
    # _out: the ReLU output (GEMM rows, or NCHW on the direct and Winograd paths): its sign
    # is the mask; _x and _argmax: the direct path's input and its (all-zero) pooling argmax;
    # _winograd_out: True when forward made the output straight from Winograd products;
    # _winograd_x: the input, when forward ran the kernel set's whole-layer Winograd operation
    cache_names = ("_out", "_x", "_argmax", "_winograd_out", "_winograd_x")

    def __init__(self, linear: Affine | Convolution, relu: ReLU) -> None:
        self.linear, self.relu = linear, relu
        super().__init__()

    @staticmethod
    def fits(layers: Sequence[Layer], i: int) -> bool:
        """Whether ``layers[i:i+2]`` is an Affine or a Convolution followed by a ReLU."""
        return i + 1 < len(layers) and type(layers[i]) in (Affine, Convolution) and type(layers[i + 1]) is ReLU

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (self.linear, self.relu)

    def _direct(self) -> bool:
        """Whether the step takes the direct way (see the class docstring)."""
        conv = self.linear
        if type(conv) is not Convolution or conv.needs_input_grad:
            return False
        _, c, fh, fw = conv.W.shape
        return conv.backend.kernels.prefers_direct_conv(c, fh, fw, conv.stride)

    def forward(self, x, train=True):
        linear = self.linear
        kernels = linear.backend.kernels
        direct = self._direct()
        conv = type(linear) is Convolution
        if direct or (conv and not train and not linear.winograd_whole()):
            # the direct way, or any inference that is not the whole-layer Winograd one:
            # one operation that keeps nothing
            super().clear_cache()
            linear.check_input(x)
            args = (x, linear.W, linear.b, linear.stride, linear.pad, *IDENTITY_POOL)
            if not train:
                return kernels.conv_bias_relu_maxpool_infer(*args)
            self._x = x
            self._out, self._argmax = kernels.conv_bias_relu_maxpool(*args)
            return self._out
        if conv and linear.winograd_whole():
            super().clear_cache()
            linear.check_input(x)
            out = kernels.winograd_conv_bias_relu(x, linear.W, linear.b, linear.pad)
            if train:
                self._out, self._winograd_x = out, x
            return out
        if type(linear) is Convolution and linear.winograd():
            super().clear_cache()
            _, oh, ow = linear.output_nhw(x.shape)
            outs = []
            linear.winograd_forward(
                x, lambda m, i, j: outs.append(kernels.winograd_bias_relu(m, linear.b, j - i, oh, ow)), keep=train
            )
            out = _joined(linear.xp, outs)
            if train:
                self._out, self._winograd_out = out, True
            return out
        rows = linear.gemm_rows(x)
        self._out = kernels.bias_relu(rows, linear.b)
        return linear.rows_to_output(self._out)

    def backward(self, dout):
        linear = self.linear
        kernels = linear.backend.kernels
        if self._x is not None:  # the direct path: the input needs no gradient
            w_shape = tuple(linear.W.shape)
            linear.grads["W"], linear.grads["b"] = kernels.conv_maxpool_relu_backward_params(
                dout, self._argmax, self._out, self._x, w_shape, linear.stride, linear.pad, *IDENTITY_POOL
            )
            return None
        if self._winograd_x is not None:
            dx, linear.grads["W"], linear.grads["b"] = kernels.winograd_conv_relu_backward(
                dout, self._out, self._winograd_x, linear.W, linear.pad, linear.needs_input_grad
            )
            return dx
        if self._winograd_out:
            oh, ow = self._out.shape[2], self._out.shape[3]
            db = []

            def products_grad(i, j):
                dm, db_part = kernels.winograd_relu_backward(dout[i:j, ...], self._out[i:j, ...], j - i, oh, ow)
                db.append(db_part)
                return dm

            dx = linear.winograd_backward(products_grad)
            linear.grads["b"] = functools.reduce(operator.add, db)  # block by block, in order
            return dx
        drows = linear.output_to_rows(dout)
        return linear.backward_rows(kernels.relu_backward(drows, self._out))

    def clear_cache(self) -> None:
        super().clear_cache()
        for layer in self.layers:
            layer.clear_cache()

    def memory(self, batch_size, itemsize, training):
        """Columns and the ReLU output as rows kept; backward: the rows' gradient, masked.
        The direct path: the output and its argmax kept, nothing else made."""
        out_size = batch_size * math.prod(self.relu.output_shape)
        out = out_size * itemsize
        if self._direct():
            return MemoryTerms(
                output=out,
                kept=out_size * (itemsize + ARGMAX_BYTES),
                forward=out_size * (itemsize + ARGMAX_BYTES),
                output_in_cache=True,
                keeps_input=True,
            )
        if type(self.linear) is Convolution and self.linear.winograd_whole():
            return MemoryTerms(
                output=out,
                kept=out,
                forward=out,
                backward=self.linear.winograd_whole_backward_bytes(batch_size, itemsize),
                output_in_cache=True,
                keeps_input=True,
            )
        gemm = self.linear.gemm_memory(batch_size, itemsize)
        if type(self.linear) is Convolution and self.linear.winograd():
            return MemoryTerms(
                output=out,
                kept=gemm.columns + out,
                columns=gemm.columns,
                forward=gemm.products + 2 * out,  # a block's products, the blocks' outputs and their concatenation
                backward=gemm.products + gemm.input_grad,
                output_in_cache=True,
                dropped=gemm.dropped_columns,
                released=gemm.released_columns,
            )
        return MemoryTerms(
            output=out,
            kept=gemm.columns + gemm.rows,
            columns=gemm.columns,
            # the GEMM rows (beside one block's columns), then the NCHW copy
            forward=gemm.rows + gemm.block_columns + gemm.products + (0 if gemm.output_is_rows else out),
            backward=2 * gemm.rows + gemm.block_columns + gemm.products + gemm.input_grad,
            output_in_cache=gemm.output_is_rows,
            keeps_input=gemm.keeps_input,
            dropped=gemm.dropped_columns,
            released=gemm.released_columns,
        )


def _joined(xp: Any, parts: list) -> Array:
    """The blocks' arrays joined along the batch axis (the one array itself when one)."""
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


FUSED_STEPS = (ConvReluMaxPool, LinearReLU)  # tried in this order at each layer


def plan_steps(layers: Sequence[Layer], fuse: bool = True) -> list[Step]:
    """The steps that run ``layers``: each run that a fused step fits becomes that step
    (when ``fuse``), every other layer runs as itself."""
    steps: list[Step] = []
    i = 0
    while i < len(layers):
        step: Step = layers[i]
        for fused in FUSED_STEPS if fuse else ():
            if fused.fits(layers, i):
                step = fused(*layers[i : i + fused.size])
                break
        steps.append(step)
        i += len(step.layers)
    return steps


class AffineSoftmaxLoss:
    """A model's last step, an Affine layer, and its SoftmaxWithLoss run as one training step.

    Not a :class:`~gpucnn.layers.Step`: its forward takes the targets and ends in the loss.
    ``forward_counting`` computes the GEMM rows ``x @ W`` and hands them with the bias to the
    loss (``SoftmaxWithLoss.forward_counting_biased``: one kernel operation adds the bias,
    takes the loss, the right answers and the scores' gradient, and sums that gradient's
    columns); ``backward`` hands the gradient and the bias's to ``Affine.backward_rows``. The
    scores ``rows + b`` and the bias-gradient product of the plain path are never made; the
    values are the same (see ``bias_softmax_cross_entropy_count_grad`` in
    :mod:`gpucnn.kernels`).
    """

    cache_names = ("_db",)  # the bias's gradient at dout = 1, from forward_counting

    def __init__(self, affine: Affine, loss: SoftmaxWithLoss) -> None:
        self.affine, self.loss = affine, loss
        self.clear_cache()

    @staticmethod
    def fits(steps: Sequence[Step], loss: LossLayer) -> bool:
        """Whether the last of ``steps`` is an Affine layer running as itself and ``loss`` a SoftmaxWithLoss."""
        return bool(steps) and type(steps[-1]) is Affine and type(loss) is SoftmaxWithLoss

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers whose parameters the step's backward sets (the loss has none)."""
        return (self.affine,)

    def forward_counting(self, x: Array, t: Array, *, check_labels: bool = True) -> tuple[Array, Array]:
        """The batch's mean loss and number of right answers (0-d arrays) for the Affine's
        input ``x`` and targets ``t``, as ``loss.forward_counting(affine.forward(x), t)``."""
        rows = self.affine.gemm_rows(x)
        loss, right, self._db = self.loss.forward_counting_biased(rows, self.affine.b, t, check_labels=check_labels)
        return loss, right

    def backward(self, dout: float = 1.0) -> Array | None:
        """Backpropagate ``dout`` (the loss's gradient) through the loss and the Affine; set the
        Affine's ``grads`` and return its input gradient (None when the input needs none)."""
        db = self._db if isinstance(dout, (int, float)) and dout == 1 else None  # db is at dout = 1
        return self.affine.backward_rows(self.loss.backward(dout), db=db)

    def clear_cache(self) -> None:
        for name in self.cache_names:
            setattr(self, name, None)


def plan_loss_head(steps: Sequence[Step], loss: LossLayer, fuse: bool = True) -> AffineSoftmaxLoss | None:
    """The fused training step of the last of ``steps`` and ``loss`` (when ``fuse`` and it
    fits), or None: training then runs the steps, then the loss."""
    if fuse and AffineSoftmaxLoss.fits(steps, loss):
        return AffineSoftmaxLoss(steps[-1], loss)  # type: ignore[arg-type]
    return None
