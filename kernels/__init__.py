"""Hot-path kernels of gpucnn: one kernel set per backend, all with the same interface.

Installed as ``gpucnn.kernels``. A *kernel set* is an object whose methods are the
operations below (:class:`KernelSet`). Every set produces the same values and the same
layouts; the NumPy set is the oracle the others are tested against.

Notation
--------
N        batch size
C        input channels
H, W     input height and width
FN       number of filters (output channels of a convolution)
KH, KW   window (filter or pooling) height and width
OH, OW   output height and width
stride   step between two windows, the same along both axes
pad      zero rows/columns added on every side (pooling: see below)

All image tensors are NCHW: C-contiguous arrays or strided views, such as the NCHW view of a
channels-last array that the NumPy set's inference operations (``*_infer``) answer. A set
that needs contiguous inputs copies them.

Output size
-----------
``OH = (H + 2*pad - KH) // stride + 1`` and likewise ``OW`` (the formula of PyTorch and
Keras). When ``stride`` does not divide ``H + 2*pad - KH``, the last rows (columns) that
no window reaches are ignored: they get no output and a zero gradient.
:func:`conv_output_size` computes it and raises when it is below 1.

The interface
-------------
``im2col(x, kh, kw, stride, pad) -> col``
    ``x`` (N, C, H, W) → ``col`` (N*OH*OW, C*KH*KW). Row ``(n*OH + oh)*OW + ow``
    holds the window whose top-left corner is input pixel
    ``(oh*stride - pad, ow*stride - pad)``; column ``(c*KH + ky)*KW + kx`` holds
    ``x[n, c, oh*stride - pad + ky, ow*stride - pad + kx]``, zero outside the image.
    Equivalently: the (N, OH, OW, C, KH, KW) array, C-order, reshaped to 2-D. Those are
    its values; its memory order is the set's (the NumPy set returns a transposed view).
``col2im(col, x_shape, kh, kw, stride, pad) -> dx``
    The adjoint of ``im2col``: every column entry is added to the pixel it was read
    from; entries that fall in the padding are dropped. ``dx`` has ``x_shape``.
``conv_input_grad(drows, w, x_shape, stride, pad) -> dx``
    The input gradient of a convolution through im2col and a GEMM: ``col2im(drows @ W2,
    x_shape, FH, FW, stride, pad)`` of its rows' gradient (N*OH*OW, FN) and its weights w
    (FN, C, FH, FW), ``W2`` their (FN, C*FH*FW) matrix; a set may lay the product out as
    its own ``col2im`` reads it best.
``maxpool_forward(x, kh, kw, stride, pad) -> (out, argmax)``
    ``out`` (N, C, OH, OW) is the window maximum; ``argmax`` (same shape, int32) is the
    window-local index ``ky*KW + kx`` of the first maximum in row-major order. Pad cells
    act as -inf: they are never picked (``pad <= KH//2`` and ``pad <= KW//2`` ensure
    every window holds a real pixel). A window holding a NaN gives NaN (as in PyTorch);
    its argmax is then unspecified.
``maxpool_backward(dout, argmax, x_shape, kh, kw, stride, pad) -> dx``
    Routes each ``dout`` entry to the input pixel its ``argmax`` names; overlapping
    windows add up.
``avgpool_forward(x, kh, kw, stride, pad) -> out``
    Window mean; pad cells count as zeros in the divisor ``KH*KW`` (PyTorch's default,
    ``count_include_pad=True``).
``avgpool_backward(dout, x_shape, kh, kw, stride, pad) -> dx``
    Spreads ``dout / (KH*KW)`` over each window.

Fused operations (a kernel set may override them; the generic set composes them):

``bias_relu_maxpool(rows, b, n, oh, ow, kh, kw, stride, pad) -> (out, argmax)``
    Convolution bias, ReLU and max pooling in one pass over a convolution's GEMM output
    ``rows`` (N*OH*OW, FN) (rows in (n, oh, ow) order, no bias yet). With
    ``y = rows + b`` seen as (N, FN, OH, OW): ``argmax`` is ``maxpool_forward(y)``'s
    argmax and ``out = maximum(maxpool_forward(y)[0], 0)``, both (N, FN, PH, PW).
    Equal to ReLU followed by max pooling wherever a gradient can flow.
``bias_relu_maxpool_infer(rows, b, n, oh, ow, kh, kw, stride, pad) -> out``
    ``bias_relu_maxpool``'s ``out`` alone, for inference: no argmax is kept, since no
    gradient will flow back (tracking it costs about a third of the pooling's time).
``maxpool_relu_backward(dout, argmax, out, n, oh, ow, kh, kw, stride, pad) -> drows``
    The gradient with respect to ``rows``, (N*OH*OW, FN): ``dout`` where ``out > 0``,
    routed through ``argmax`` and laid out as GEMM rows, ready for ``dW = drows.T @ col``.
``conv_bias_relu_maxpool(x, w, b, stride, pad, kh, kw, pool_stride, pool_pad) -> (out, argmax)``
    The same from the convolution's input x (N, C, H, W) and weights w (FN, C, FH, FW):
    ``bias_relu_maxpool`` of the convolution's GEMM rows (``stride``, ``pad``), with a
    KH x KW pooling window, ``pool_stride`` and ``pool_pad``. A set may compute the
    convolution directly, without a column matrix; its values then equal the composed
    ones to float rounding (the sums run in another order), and so may the argmax of a
    window whose two largest values are within rounding of each other.
``conv_bias_relu_maxpool_infer(...) -> out``
    Its ``out`` alone (same arguments).
``conv_maxpool_relu_backward_params(dout, argmax, out, x, w_shape, stride, pad, kh, kw,``
``pool_stride, pool_pad) -> (dw, db)``
    The gradients of ``conv_bias_relu_maxpool``'s weights (``w_shape``) and bias (FN,), and
    no input gradient: the backward of a first layer. Composed, it builds the column
    matrix of ``x`` again; a direct set needs none.
``prefers_direct_conv(c, fh, fw, stride) -> bool``
    Whether the set computes such a convolution directly and faster than im2col and a
    GEMM; layers then train through the three ``conv_*`` operations above (the generic
    set says no: its ``conv_*`` operations are the composition).
``prefers_winograd(c, fn, fh, fw, stride) -> bool``
    Whether the set runs a convolution with C input channels, FN filters, an FH x FW
    filter and this stride faster through the six ``winograd_*`` operations below than
    through ``im2col`` and one GEMM (only 3x3 at stride 1 can). Layers then use them for
    the forward and both gradients. The generic and CUDA sets say no.
Winograd F(2x2, 3x3) (Lavin and Gray, 2016): the convolution of a 3x3 filter at stride 1
as 16 GEMMs over 4x4 input tiles taken every 2 pixels, 2.25 times fewer multiplications
than im2col's GEMM. ``TH = (OH + 1) // 2`` and ``TW = (OW + 1) // 2`` tiles cover the
output; ``T = N*TH*TW`` tiles in (n, ty, tx) order; index ``4*i + j`` is entry (i, j) of a
4x4 transform. With B^T, G and A^T the matrices of that paper:
``winograd_filter(w) -> u``
    w (FN, C, 3, 3) → U (16, C, FN), ``G w G^T`` of each filter.
``winograd_input(x, pad) -> v``
    x (N, C, H, W) → V (16, T, C), ``B^T d B`` of each input tile d, whose top-left
    corner is padded pixel (2*ty, 2*tx) (``pad`` zeros on every side, and more below and
    right where the last tile reaches past the image).
``winograd_output(m, n, oh, ow) -> rows``
    M = V @ U (16, T, FN) → the GEMM rows (N*OH*OW, FN) of ``im2col`` and one GEMM, in
    (n, oh, ow) order: ``A^T M A`` of each tile, cropped to OH x OW.
``winograd_output_grad(drows, n, oh, ow) -> dm``, ``winograd_input_grad(dv, x_shape, pad) -> dx``,
``winograd_filter_grad(du) -> dw``
    The adjoints of the three above: dM = ``A dY A^T`` (16, T, FN); dx of ``x_shape``,
    each tile's ``B dV B^T`` added to the pixels it was read from; dW = ``G^T dU G``
    (FN, C, 3, 3). So ``dW = winograd_filter_grad(V^T @ dM)`` and
    ``dx = winograd_input_grad(dM @ U^T, ...)`` are the gradients of the Winograd
    forward exactly; they equal im2col's to float rounding (another order of sums).
``winograd_bias_relu_maxpool(m, b, n, oh, ow) -> (out, argmax)``
    ``bias_relu_maxpool(winograd_output(m, n, oh, ow), b, n, oh, ow, 2, 2, 2, 0)``: the
    products of a Winograd convolution straight to the 2x2, stride-2 max pooling (no pad)
    of its biased ReLU, (N, FN, OH//2, OW//2) each. Each pooling window is one output tile
    (an odd OH or OW's last, partial tiles are not pooled), so a set need not make the GEMM
    rows; the values are the composition's.
``winograd_bias_relu_maxpool_infer(m, b, n, oh, ow) -> out``
    Its ``out`` alone.
``winograd_maxpool_relu_backward(dout, argmax, out, n, oh, ow) -> (dm, db)``
    ``winograd_output_grad`` and ``bias_grad`` of ``maxpool_relu_backward(dout, argmax,
    out, n, oh, ow, 2, 2, 2, 0)``: dM (16, T, FN) and the bias gradient (FN,), equal to the
    composition's (``db`` to float rounding: its sum may run in another order).
``winograd_bias_relu(m, b, n, oh, ow) -> out``
    ``rows_to_nchw(bias_relu(winograd_output(m, n, oh, ow), b), n, oh, ow)``: the biased
    ReLU of a Winograd convolution straight from its products, (N, FN, OH, OW), equal to
    the composition.
``winograd_relu_backward(dout, out, n, oh, ow) -> (dm, db)``
    ``winograd_output_grad`` and ``bias_grad`` of ``drows = relu_backward(nchw_to_rows(dout),
    nchw_to_rows(out))``, dout and out (N, FN, OH, OW): dM (16, T, FN), equal to the
    composition's, and db (FN,), equal to float rounding.
``winograd_conv_bias_relu_maxpool(x, w, b, pad) -> (out, argmax)``
    A whole Winograd convolution → bias → ReLU → 2x2, stride-2 max pooling from the input
    x (N, C, H, W) and the filters w (FN, C, 3, 3): ``winograd_bias_relu_maxpool(V @ U, b,
    n, oh, ow)`` with ``V = winograd_input(x, pad)`` and ``U = winograd_filter(w)``. A set
    may take it a band of tiles at a time, without the whole batch's V and M; the values
    equal the composition's to float rounding (a GEMM over part of the tiles may round
    otherwise). ``winograd_conv_bias_relu_maxpool_infer(x, w, b, pad) -> out``: its
    ``out`` alone.
``winograd_conv_maxpool_relu_backward(dout, argmax, out, x, w, pad, input_grad=True) -> (dx, dw, db)``
    Its backward, from the forward's input, filters, out and argmax: dx (None unless
    ``input_grad``), dW = ``winograd_filter_grad(V^T @ dM)`` and db, dM being
    ``winograd_maxpool_relu_backward``'s; equal to the composition's to float rounding
    (dW's sum over the tiles may run in parts, in a fixed order).
``winograd_conv_bias_relu(x, w, b, pad) -> out``,
``winograd_conv_relu_backward(dout, out, x, w, pad, input_grad=True) -> (dx, dw, db)``
    The same without the pooling, through ``winograd_bias_relu`` and
    ``winograd_relu_backward``: out (N, FN, OH, OW).
``winograd_whole_layer``, ``winograd_group``
    Whether a layer runs a Winograd Convolution → ReLU (→ 2x2 pooling) through the four
    ``winograd_conv_*`` operations above rather than in blocks through the ``winograd_*``
    passes (the Numba set, with SciPy installed: each of its tasks keeps a band's V and M
    in the caches; the other sets compose them and say no); and the images per partial
    sum of dU in such a backward, whose parts are then added in order (a memory-model term).
``bias_relu(rows, b) -> out``
    ``maximum(rows + b, 0)`` for GEMM rows (M, F) and a bias (F,): the bias and ReLU of an
    Affine or Convolution layer in one pass. Its backward is ``relu_backward``.
``relu_backward(dout, out) -> dx``
    ``where(out > 0, dout, 0)``: the gradient through a ReLU whose output was ``out``
    (``dout`` of the same shape); no boolean mask and no zero scalar are made on the way.
``softmax_cross_entropy(x, t) -> (loss, probs)``
    ``x`` (N, K) scores; ``t`` (N,) integer labels in [0, K) or (N, K) targets of ``x``'s
    dtype (one-hot or soft). ``probs`` (N, K) is the softmax of each row (computed after
    subtracting the row maximum) and ``loss`` the 0-d mean over rows of
    ``-sum(t * log probs)``, with ``log probs`` from the log-sum-exp (no ``log(0)``).
``softmax_cross_entropy_count(x, t) -> (loss, probs, right)``
    ``softmax_cross_entropy`` and the batch's number of right answers, a 0-d integer
    array: the rows whose scores are all finite and whose first maximum is the label (for
    (N, K) targets, the target's first maximum). A training step's loss and count in one
    pass over the scores, with no host sync.
``softmax_cross_entropy_backward(probs, t, scale) -> dx``
    ``(probs - onehot(t)) * scale`` (or ``probs - t`` for (N, K) targets), (N, K);
    ``scale`` is ``dout / N`` for a mean loss.
``softmax_cross_entropy_count_grad(x, t, scale) -> (loss, probs, right, dx)``
    ``softmax_cross_entropy_count`` and ``softmax_cross_entropy_backward(probs, t, scale)``
    in one operation: a training step's loss, count and gradient of the scores, so that its
    backward launches nothing for the loss (the CUDA set: the same two passes as the count).
``bias_softmax_cross_entropy_count_grad(rows, b, t, scale) -> (loss, probs, right, dx, db)``
    ``softmax_cross_entropy_count_grad(rows + b, t, scale)`` and ``bias_grad(dx)``: the
    training step of a last Affine layer's bias and its softmax loss, for GEMM rows (N, K)
    without the bias and the bias (K,). Neither the scores ``rows + b`` nor a product for
    the bias gradient is made (the CUDA set: the same two passes as the count, the bias added
    to each score inside the kernel, ``db`` column sums in row order in the second pass).
``bias_grad(drows) -> db``
    The gradient of a bias added to every row: the column sums of (M, F) → (F,).
``weight_grad(drows, col) -> dw``
    The gradient of a GEMM's weights, ``drows^T @ col``: the rows' gradient (M, FN) and
    the column matrix (M, K) that ``im2col`` made → (FN, K), C-order.
``rows_to_nchw(y, n, oh, ow) -> out``  and  ``nchw_to_rows(dout) -> rows``
    The layout changes between a GEMM's (N*OH*OW, FN) rows and NCHW.
``sgd_update``, ``momentum_update``, ``adagrad_update``, ``rmsprop_update``,
``adam_update``
    In-place optimizer steps on one parameter (see :mod:`gpucnn.optimizers`).
``sgd_update_many``, ``momentum_update_many``, ``adagrad_update_many``,
``rmsprop_update_many``, ``adam_update_many``
    The same steps on many parameters at once: sequences of parameters, gradients and
    state arrays (one state sequence per state array of the rule), in the same order, and
    the same scalars. Each parameter ends as the one-parameter step leaves it, bit for
    bit; a set may update them all in one pass (the CUDA set: one kernel launch for up to
    32 parameters). The generic set calls the one-parameter step on each.

Every method keeps the floating dtype it is given (float32 stays float32).

Attributes:

``max_array_elements``
    The largest array, in elements, the set's kernels accept; None for no limit. The
    NumPy and Numba sets index with 64-bit integers (None); the CUDA set indexes with
    32-bit ones (2**31 - 1). :func:`gpucnn.memory.kernel_batch_limit` caps a model's
    batch size by it.
``inference_block``
    The most images one ``conv_bias_relu_maxpool_infer`` call takes: a fused first layer
    runs a larger inference batch in blocks of this many and concatenates the results
    (the same values). The CPU sets say 128, so that a block's column matrix and GEMM
    output stay in the caches; the CUDA set says None, the whole batch in one launch.
``winograd_block_bytes``
    The most bytes of one block's Winograd GEMM products (16, T, FN): a convolution runs
    its ``winograd_*`` passes over blocks of images that fit (the CPU sets: so that a
    block's transforms and products stay in the caches and the whole batch's products,
    four times the output, never exist); None (the CUDA set): the whole batch at once.
    The values are the same, but for dW, whose transform is summed block by block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "KERNEL_OPERATIONS",
    "IDENTITY_POOL",
    "KernelSet",
    "conv_output_size",
    "check_pool_pad",
    "output_hw",
    "winograd_tiles",
]

Array = Any  # an array of the set's namespace (NumPy, CuPy, array_api_strict, ...)


@runtime_checkable
class KernelSet(Protocol):
    """The interface every kernel set implements: one method per operation of "The
    interface" above, which states shapes, layouts and conventions. ``isinstance`` checks
    only that the methods and the attribute exist; the tests also compare the methods'
    signatures."""

    max_array_elements: int | None
    """The largest array, in elements, the set's kernels accept; None for no limit."""

    conv_block_bytes: int | None
    """The most bytes of one column matrix in a convolution's training passes: the layer
    runs im2col, its GEMMs and col2im over blocks of images that fit, keeping the input
    instead of the whole batch's columns. None: the whole batch in one call of each."""

    winograd_block_bytes: int | None
    """The most bytes of one block's Winograd GEMM products (16, T, FN): a layer runs the
    ``winograd_*`` passes over blocks of images that fit. None: the whole batch at once."""
    winograd_whole_layer: bool
    """Whether layers run a Winograd Convolution → ReLU (→ pooling) through the ``winograd_conv_*`` operations."""
    winograd_group: int
    """Images per partial sum of dU in a ``winograd_conv_*`` backward."""
    inference_block: int | None
    """The most images of one ``conv_bias_relu_maxpool_infer`` call: a fused step runs a
    larger inference batch in blocks of this many. None: the whole batch in one call."""

    def im2col(self, x: Array, kh: int, kw: int, stride: int = 1, pad: int = 0) -> Array:
        """x (N, C, H, W) → col (N*OH*OW, C*KH*KW), in the column layout above."""

    def col2im(
        self, col: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int = 1, pad: int = 0
    ) -> Array:
        """The adjoint of :meth:`im2col`: col (N*OH*OW, C*KH*KW) → dx of ``x_shape``."""

    def maxpool_forward(self, x: Array, kh: int, kw: int, stride: int, pad: int = 0) -> tuple[Array, Array]:
        """x (N, C, H, W) → (out, argmax), both (N, C, OH, OW); argmax int32 ``ky*KW + kx``."""

    def maxpool_backward(
        self,
        dout: Array,
        argmax: Array,
        x_shape: tuple[int, int, int, int],
        kh: int,
        kw: int,
        stride: int,
        pad: int = 0,
    ) -> Array:
        """dout (N, C, OH, OW) routed through ``argmax`` → dx of ``x_shape``."""

    def avgpool_forward(self, x: Array, kh: int, kw: int, stride: int, pad: int = 0) -> Array:
        """x (N, C, H, W) → window means (N, C, OH, OW), pad cells counted as zeros."""

    def avgpool_backward(
        self, dout: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int, pad: int = 0
    ) -> Array:
        """dout (N, C, OH, OW) → dx of ``x_shape``, ``dout / (KH*KW)`` spread over each window."""

    def bias_relu_maxpool(
        self, rows: Array, b: Array, n: int, oh: int, ow: int, kh: int, kw: int, stride: int, pad: int = 0
    ) -> tuple[Array, Array]:
        """GEMM rows (N*OH*OW, FN) and bias (FN,) → (out, argmax), both (N, FN, PH, PW)."""

    def bias_relu_maxpool_infer(
        self, rows: Array, b: Array, n: int, oh: int, ow: int, kh: int, kw: int, stride: int, pad: int = 0
    ) -> Array:
        """:meth:`bias_relu_maxpool`'s ``out`` alone."""

    def maxpool_relu_backward(
        self,
        dout: Array,
        argmax: Array,
        out: Array,
        n: int,
        oh: int,
        ow: int,
        kh: int,
        kw: int,
        stride: int,
        pad: int = 0,
    ) -> Array:
        """dout (N, FN, PH, PW) → the gradient of :meth:`bias_relu_maxpool`'s rows, (N*OH*OW, FN)."""

    def prefers_direct_conv(self, c: int, fh: int, fw: int, stride: int) -> bool:
        """Whether the ``conv_*`` operations compute such a convolution directly, faster than im2col and a GEMM."""

    def conv_bias_relu_maxpool(
        self, x: Array, w: Array, b: Array, stride: int, pad: int, kh: int, kw: int, pool_stride: int, pool_pad: int = 0
    ) -> tuple[Array, Array]:
        """x (N, C, H, W), w (FN, C, FH, FW), b (FN,) → (out, argmax), both (N, FN, PH, PW)."""

    def conv_bias_relu_maxpool_infer(
        self, x: Array, w: Array, b: Array, stride: int, pad: int, kh: int, kw: int, pool_stride: int, pool_pad: int = 0
    ) -> Array:
        """:meth:`conv_bias_relu_maxpool`'s ``out`` alone."""

    def conv_maxpool_relu_backward_params(
        self,
        dout: Array,
        argmax: Array,
        out: Array,
        x: Array,
        w_shape: tuple[int, int, int, int],
        stride: int,
        pad: int,
        kh: int,
        kw: int,
        pool_stride: int,
        pool_pad: int = 0,
    ) -> tuple[Array, Array]:
        """dout (N, FN, PH, PW) → (dw of ``w_shape``, db (FN,)) of :meth:`conv_bias_relu_maxpool`."""

    def prefers_winograd(self, c: int, fn: int, fh: int, fw: int, stride: int) -> bool:
        """Whether such a convolution runs faster through the ``winograd_*`` operations than im2col and a GEMM."""

    def winograd_filter(self, w: Array) -> Array:
        """w (FN, C, 3, 3) → U (16, C, FN)."""

    def winograd_filter_grad(self, du: Array) -> Array:
        """The adjoint of :meth:`winograd_filter`: dU (16, C, FN) → dW (FN, C, 3, 3)."""

    def winograd_input(self, x: Array, pad: int) -> Array:
        """x (N, C, H, W) → V (16, T, C)."""

    def winograd_input_grad(self, dv: Array, x_shape: tuple[int, int, int, int], pad: int) -> Array:
        """The adjoint of :meth:`winograd_input`: dV (16, T, C) → dx of ``x_shape``."""

    def winograd_output(self, m: Array, n: int, oh: int, ow: int) -> Array:
        """M (16, T, FN) → GEMM rows (N*OH*OW, FN)."""

    def winograd_output_grad(self, drows: Array, n: int, oh: int, ow: int) -> Array:
        """The adjoint of :meth:`winograd_output`: rows (N*OH*OW, FN) → dM (16, T, FN)."""

    def winograd_bias_relu_maxpool(self, m: Array, b: Array, n: int, oh: int, ow: int) -> tuple[Array, Array]:
        """Winograd products M (16, T, FN) and bias (FN,) → (out, argmax), both (N, FN, OH//2, OW//2)."""

    def winograd_bias_relu_maxpool_infer(self, m: Array, b: Array, n: int, oh: int, ow: int) -> Array:
        """:meth:`winograd_bias_relu_maxpool`'s ``out`` alone."""

    def winograd_maxpool_relu_backward(
        self, dout: Array, argmax: Array, out: Array, n: int, oh: int, ow: int
    ) -> tuple[Array, Array]:
        """dout (N, FN, OH//2, OW//2) → (dM (16, T, FN), db (FN,)) of :meth:`winograd_bias_relu_maxpool`."""

    def winograd_bias_relu(self, m: Array, b: Array, n: int, oh: int, ow: int) -> Array:
        """Winograd products M (16, T, FN) and bias (FN,) → the biased ReLU (N, FN, OH, OW)."""

    def winograd_relu_backward(self, dout: Array, out: Array, n: int, oh: int, ow: int) -> tuple[Array, Array]:
        """dout and out (N, FN, OH, OW) → (dM (16, T, FN), db (FN,)) of :meth:`winograd_bias_relu`."""

    def winograd_conv_bias_relu_maxpool(self, x: Array, w: Array, b: Array, pad: int) -> tuple[Array, Array]:
        """x (N, C, H, W), w (FN, C, 3, 3), b (FN,) → (out, argmax), both (N, FN, OH//2, OW//2)."""

    def winograd_conv_bias_relu_maxpool_infer(self, x: Array, w: Array, b: Array, pad: int) -> Array:
        """:meth:`winograd_conv_bias_relu_maxpool`'s ``out`` alone."""

    def winograd_conv_maxpool_relu_backward(
        self, dout: Array, argmax: Array, out: Array, x: Array, w: Array, pad: int, input_grad: bool = True
    ) -> tuple[Array | None, Array, Array]:
        """(dx or None, dW, db) of :meth:`winograd_conv_bias_relu_maxpool`."""

    def winograd_conv_bias_relu(self, x: Array, w: Array, b: Array, pad: int) -> Array:
        """x (N, C, H, W), w (FN, C, 3, 3), b (FN,) → the biased ReLU (N, FN, OH, OW)."""

    def winograd_conv_relu_backward(
        self, dout: Array, out: Array, x: Array, w: Array, pad: int, input_grad: bool = True
    ) -> tuple[Array | None, Array, Array]:
        """(dx or None, dW, db) of :meth:`winograd_conv_bias_relu`."""

    def bias_relu(self, rows: Array, b: Array) -> Array:
        """``maximum(rows + b, 0)``: rows (M, F), b (F,) → (M, F)."""

    def softmax_cross_entropy(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Scores x (N, K), labels (N,) or targets (N, K) → (0-d mean loss, probs (N, K))."""

    def relu_backward(self, dout: Array, out: Array) -> Array:
        """``where(out > 0, dout, 0)``: dout and out of one shape → dx of that shape."""

    def softmax_cross_entropy_count(self, x: Array, t: Array) -> tuple[Array, Array, Array]:
        """Scores x (N, K), labels (N,) or targets (N, K) → (0-d mean loss, probs (N, K), 0-d right answers)."""

    def softmax_cross_entropy_count_grad(self, x: Array, t: Array, scale: float) -> tuple[Array, Array, Array, Array]:
        """:meth:`softmax_cross_entropy_count` and :meth:`softmax_cross_entropy_backward` at ``scale``:
        (0-d loss, probs (N, K), 0-d right answers, dx (N, K))."""

    def bias_softmax_cross_entropy_count_grad(
        self, rows: Array, b: Array, t: Array, scale: float
    ) -> tuple[Array, Array, Array, Array, Array]:
        """:meth:`softmax_cross_entropy_count_grad` of ``rows + b`` and :meth:`bias_grad` of its dx:
        rows (N, K), b (K,) → (0-d loss, probs (N, K), 0-d right answers, dx (N, K), db (K,))."""

    def softmax_cross_entropy_backward(self, probs: Array, t: Array, scale: float) -> Array:
        """``(probs - targets) * scale``, (N, K)."""

    def bias_grad(self, drows: Array) -> Array:
        """Column sums: drows (M, F) → (F,)."""

    def conv_input_grad(
        self, drows: Array, w: Array, x_shape: tuple[int, int, int, int], stride: int, pad: int
    ) -> Array:
        """``col2im(drows @ reshape(w, (FN, C*FH*FW)), x_shape, FH, FW, stride, pad)``."""

    def weight_grad(self, drows: Array, col: Array) -> Array:
        """``drows^T @ col``: drows (M, FN) and a column matrix (M, K) → (FN, K), C-order."""

    def rows_to_nchw(self, y: Array, n: int, oh: int, ow: int) -> Array:
        """GEMM rows (N*OH*OW, FN) → (N, FN, OH, OW)."""

    def nchw_to_rows(self, dout: Array) -> Array:
        """(N, FN, OH, OW) → GEMM rows (N*OH*OW, FN)."""

    def sgd_update(self, param: Array, grad: Array, lr: float) -> None:
        """``param -= lr * grad``, in place."""

    def momentum_update(self, param: Array, grad: Array, velocity: Array, lr: float, momentum: float) -> None:
        """``v = momentum*v - lr*grad; param += v``, in place."""

    def adagrad_update(self, param: Array, grad: Array, h: Array, lr: float, eps: float) -> None:
        """``h += grad*grad; param -= lr*grad / (sqrt(h) + eps)``, in place."""

    def rmsprop_update(self, param: Array, grad: Array, h: Array, lr: float, decay: float, eps: float) -> None:
        """``h = decay*h + (1 - decay)*grad*grad; param -= lr*grad / (sqrt(h) + eps)``, in place."""

    def adam_update(
        self, param: Array, grad: Array, m: Array, v: Array, lr_t: float, beta1: float, beta2: float, eps: float
    ) -> None:
        """``m += (1 - beta1)*(grad - m); v += (1 - beta2)*(grad*grad - v); param -= lr_t*m / (sqrt(v) + eps)``,
        in place."""

    def sgd_update_many(self, params: Sequence[Array], grads: Sequence[Array], lr: float) -> None:
        """:meth:`sgd_update` on each ``(param, grad)`` pair."""

    def momentum_update_many(
        self, params: Sequence[Array], grads: Sequence[Array], velocities: Sequence[Array], lr: float, momentum: float
    ) -> None:
        """:meth:`momentum_update` on each ``(param, grad, velocity)``."""

    def adagrad_update_many(
        self, params: Sequence[Array], grads: Sequence[Array], hs: Sequence[Array], lr: float, eps: float
    ) -> None:
        """:meth:`adagrad_update` on each ``(param, grad, h)``."""

    def rmsprop_update_many(
        self, params: Sequence[Array], grads: Sequence[Array], hs: Sequence[Array], lr: float, decay: float, eps: float
    ) -> None:
        """:meth:`rmsprop_update` on each ``(param, grad, h)``."""

    def adam_update_many(
        self,
        params: Sequence[Array],
        grads: Sequence[Array],
        ms: Sequence[Array],
        vs: Sequence[Array],
        lr_t: float,
        beta1: float,
        beta2: float,
        eps: float,
    ) -> None:
        """:meth:`adam_update` on each ``(param, grad, m, v)``."""


# The operations every kernel set answers to, in the order above (the methods of KernelSet;
# its attribute, annotated without a value, is not among them). Tests iterate over this tuple.
KERNEL_OPERATIONS: tuple[str, ...] = tuple(name for name in vars(KernelSet) if not name.startswith("_"))


def conv_output_size(in_size: int, kernel_size: int, stride: int = 1, pad: int = 0) -> int:
    """Output length along one axis: ``(in_size + 2*pad - kernel_size) // stride + 1``.

    Raises ``ValueError`` naming the numbers when the result is below 1 or an argument
    is out of range.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if kernel_size < 1:
        raise ValueError(f"window size must be >= 1, got {kernel_size}")
    out = (in_size + 2 * pad - kernel_size) // stride + 1
    if out < 1:
        raise ValueError(
            f"window {kernel_size} does not fit in input {in_size} with pad {pad} "
            f"(output size (in + 2*pad - window) // stride + 1 = {out}, below 1)"
        )
    return out


def output_hw(h: int, w: int, kh: int, kw: int, stride: int = 1, pad: int = 0) -> tuple[int, int]:
    """``(OH, OW)`` of a KH x KW window over an H x W image: :func:`conv_output_size` on each axis."""
    return conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)


def winograd_tiles(oh: int, ow: int) -> tuple[int, int]:
    """(TH, TW): the 2x2 output tiles of Winograd F(2x2, 3x3) that cover an OH x OW output."""
    return (oh + 1) // 2, (ow + 1) // 2


# A max pooling over 1x1 windows at stride 1 (KH, KW, stride, pad): the identity, so that the
# fused convolution -> ReLU -> pooling operations compute a convolution -> ReLU.
IDENTITY_POOL = (1, 1, 1, 0)


def check_pool_pad(kh: int, kw: int, pad: int) -> None:
    """Pooling pad may be at most half the window, so that no window is all padding."""
    if pad > kh // 2 or pad > kw // 2:
        raise ValueError(f"pooling pad {pad} is more than half the window {kh}x{kw} (at most {min(kh, kw) // 2})")
