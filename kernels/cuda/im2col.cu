// Convolution lowering: im2col and its adjoint col2im, in the column layout of
// gpucnn.kernels: row (n*OH + oh)*OW + ow, column (c*KH + ky)*KW + kx.
#include "common.cuh"

// im2col: one thread per column element, on a 1-D grid. Thread i = row*columns + j writes
// col[row, j], where row = (n*OH + oh)*OW + ow and j = (c*KH + ky)*KW + kx: the input pixel
// (oh*stride - pad + ky, ow*stride - pad + kx) of image n, channel c, or zero when that pixel
// lies in the padding (no padded copy of x is made). Consecutive threads write consecutive
// elements, so every warp is full whatever the number of columns (a first layer has few).
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ col, const int total, const int columns,
                       const int c, const int h, const int w, const int kh, const int kw,
                       const int stride, const int pad, const int oh, const int ow) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int j = i % columns;
    const int row = i / columns;
    const int out_x = row % ow;
    const int out_y = (row / ow) % oh;
    const int img = row / (ow * oh);
    const int kx = j % kw;
    const int ky = (j / kw) % kh;
    const int ch = j / (kw * kh);

    const int in_y = out_y * stride - pad + ky;
    const int in_x = out_x * stride - pad + kx;
    const bool inside = 0 <= in_y && in_y < h && 0 <= in_x && in_x < w;
    col[i] = inside ? x[((img * c + ch) * h + in_y) * w + in_x] : T(0);
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
