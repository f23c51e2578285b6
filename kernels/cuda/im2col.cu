// Convolution lowering: im2col and its adjoint col2im, in the column layout of
// gpucnn.kernels: row (n*OH + oh)*OW + ow, column (c*KH + ky)*KW + kx.
#include "common.cuh"

// im2col: one thread per column element, on a 2-D grid. Block row blockIdx.x is the column
// row (n*OH + oh)*OW + ow; thread column j = blockIdx.y*blockDim.x + threadIdx.x is
// (c*KH + ky)*KW + kx. The thread writes col[row, j]: the input pixel
// (oh*stride - pad + ky, ow*stride - pad + kx) of image n, channel c, or zero when that
// pixel lies in the padding (no padded copy of x is made). The row is the same for a
// whole block, so only the column costs each thread its own divisions.
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ col, const int columns,
                       const int c, const int h, const int w, const int kh, const int kw,
                       const int stride, const int pad, const int oh, const int ow) {
    const int j = static_cast<int>(blockIdx.y * blockDim.x + threadIdx.x);
    if (j >= columns) {
        return;
    }
    const int row = static_cast<int>(blockIdx.x);
    const int out_x = row % ow;
    const int out_y = (row / ow) % oh;
    const int img = row / (ow * oh);
    const int kx = j % kw;
    const int ky = (j / kw) % kh;
    const int ch = j / (kw * kh);

    const int in_y = out_y * stride - pad + ky;
    const int in_x = out_x * stride - pad + kx;
    const bool inside = 0 <= in_y && in_y < h && 0 <= in_x && in_x < w;
    col[row * columns + j] = inside ? x[((img * c + ch) * h + in_y) * w + in_x] : T(0);
}

// col2im: one thread per input pixel. Thread i = ((n*C + c)*H + y)*W + x writes dx[i], the
// sum of the column entries that im2col read from that pixel (a gather, see common.cuh):
// no atomics, and the same sum on every run.
template <typename T>
__global__ void col2im(const T* __restrict__ col, T* __restrict__ dx, const int total,
                       const int c, const int h, const int w, const int kh, const int kw,
                       const int stride, const int pad, const int oh, const int ow) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int in_x = i % w;
    const int in_y = (i / w) % h;
    const int ch = (i / (w * h)) % c;
    const int img = i / (w * h * c);
    const int py = in_y + pad;
    const int px = in_x + pad;

    T sum = T(0);
    for (int ky = py % stride, out_y = py / stride; ky < kh && out_y >= 0; ky += stride, --out_y) {
        if (out_y >= oh) {
            continue;  // a bottom row that no window reaches
        }
        for (int kx = px % stride, out_x = px / stride; kx < kw && out_x >= 0; kx += stride, --out_x) {
            if (out_x < ow) {
                const int row = (img * oh + out_y) * ow + out_x;
                sum += col[(row * c + ch) * (kh * kw) + ky * kw + kx];
            }
        }
    }
    dx[i] = sum;
}
