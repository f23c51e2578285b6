// Pooling, plain and fused with a convolution's bias and ReLU. Windows are KH x KW, `stride`
// apart, shifted by `pad`; argmax is the window-local index ky*KW + kx of the first maximum
// in row-major order, and pad cells are never picked (see gpucnn.kernels).
#include "common.cuh"

// maxpool_forward: one thread per output element. Thread i = ((n*C + c)*OH + oh)*OW + ow
// writes out[i], the maximum of the real pixels of its window, and argmax[i].
template <typename T>
__global__ void maxpool_forward(const T* __restrict__ x, T* __restrict__ out, int* __restrict__ argmax,
                                const int total, const int h, const int w, const int kh, const int kw,
                                const int stride, const int pad, const int oh, const int ow) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int out_x = i % ow;
    const int out_y = (i / ow) % oh;
    const T* plane = x + (i / (ow * oh)) * (h * w);  // the (n, c) image plane

    T best;
    int best_tap;
    window_max([plane, w](int y, int x) { return plane[y * w + x]; }, out_y, out_x, h, w, kh, kw, stride, pad,
               best, best_tap);
    out[i] = best;
    argmax[i] = best_tap;
}

// maxpool_backward: one thread per input pixel. Thread i = ((n*C + c)*H + y)*W + x writes
// dx[i], the sum of dout over the windows whose argmax names this pixel (a gather, see
// common.cuh).
template <typename T>
__global__ void maxpool_backward(const T* __restrict__ dout, const int* __restrict__ argmax,
                                 T* __restrict__ dx, const int total, const int h, const int w,
                                 const int kh, const int kw, const int stride, const int pad,
                                 const int oh, const int ow) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int py = (i / w) % h + pad;  // this pixel's padded row and column
    const int px = i % w + pad;
    const int plane = (i / (w * h)) * (oh * ow);  // offset of the (n, c) output plane

    T sum = T(0);
    for (int ky = py % stride, out_y = py / stride; ky < kh && out_y >= 0; ky += stride, --out_y) {
        if (out_y >= oh) {
            continue;
        }
        for (int kx = px % stride, out_x = px / stride; kx < kw && out_x >= 0; kx += stride, --out_x) {
            const int o = plane + out_y * ow + out_x;
            if (out_x < ow && argmax[o] == ky * kw + kx) {
                sum += dout[o];
            }
        }
    }
    dx[i] = sum;
}

// avgpool_forward: one thread per output element. Thread i = ((n*C + c)*OH + oh)*OW + ow
// writes out[i], the sum of its window's real pixels divided by KH*KW (pad cells count as 0).
template <typename T>
__global__ void avgpool_forward(const T* __restrict__ x, T* __restrict__ out, const int total,
                                const int h, const int w, const int kh, const int kw,
                                const int stride, const int pad, const int oh, const int ow) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int out_x = i % ow;
    const int out_y = (i / ow) % oh;
    const T* plane = x + (i / (ow * oh)) * (h * w);

    T sum = T(0);
    for (int ky = 0; ky < kh; ++ky) {
        const int in_y = out_y * stride - pad + ky;
        if (in_y < 0 || in_y >= h) {
            continue;
        }
        for (int kx = 0; kx < kw; ++kx) {
            const int in_x = out_x * stride - pad + kx;
            if (in_x >= 0 && in_x < w) {
                sum += plane[in_y * w + in_x];
            }
        }
    }
    out[i] = sum / T(kh * kw);
}

// avgpool_backward: one thread per input pixel. Thread i = ((n*C + c)*H + y)*W + x writes
// dx[i], the sum of dout / (KH*KW) over the windows that hold this pixel (a gather).
template <typename T>
__global__ void avgpool_backward(const T* __restrict__ dout, T* __restrict__ dx, const int total,
                                 const int h, const int w, const int kh, const int kw,
                                 const int stride, const int pad, const int oh, const int ow) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int py = (i / w) % h + pad;  // this pixel's padded row and column
    const int px = i % w + pad;
    const int plane = (i / (w * h)) * (oh * ow);
    const T area = T(kh * kw);

    T sum = T(0);
    for (int ky = py % stride, out_y = py / stride; ky < kh && out_y >= 0; ky += stride, --out_y) {
        if (out_y >= oh) {
            continue;
        }
        for (int kx = px % stride, out_x = px / stride; kx < kw && out_x >= 0; kx += stride, --out_x) {
            if (out_x < ow) {
                sum += dout[plane + out_y * ow + out_x] / area;
            }
        }
    }
    dx[i] = sum;
}

// The pooled window of pooled element i = ((n*FN + f)*PH + py)*PW + px over y = rows + b,
// read straight from the GEMM rows (N*OH*OW, FN): its maximum and its argmax.
template <typename T>
__device__ __forceinline__ void biased_window_max(const T* __restrict__ rows, const T* __restrict__ b,
                                                  const int i, const int fn, const int oh, const int ow,
                                                  const int kh, const int kw, const int stride, const int pad,
                                                  const int ph, const int pw, T& best, int& best_tap) {
    const int pool_x = i % pw;
    const int pool_y = (i / pw) % ph;
    const int f = (i / (pw * ph)) % fn;
    const int img = i / (pw * ph * fn);
    const T bias = b[f];
    window_max([rows, bias, img, oh, ow, fn, f](int y, int x) { return rows[((img * oh + y) * ow + x) * fn + f] + bias; },
               pool_y, pool_x, oh, ow, kh, kw, stride, pad, best, best_tap);
}

// bias_relu_maxpool: one thread per pooled element. Thread i = ((n*FN + f)*PH + py)*PW + px
// reads its window of y = rows + b straight from the GEMM rows (N*OH*OW, FN), then writes
// out[i] = max(window maximum, 0) and argmax[i]. Neither y nor its ReLU is ever stored.
template <typename T>
__global__ void bias_relu_maxpool(const T* __restrict__ rows, const T* __restrict__ b, T* __restrict__ out,
                                  int* __restrict__ argmax, const int total, const int fn,
                                  const int oh, const int ow, const int kh, const int kw,
                                  const int stride, const int pad, const int ph, const int pw) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    T best;
    int best_tap;
    biased_window_max(rows, b, i, fn, oh, ow, kh, kw, stride, pad, ph, pw, best, best_tap);
    out[i] = best < T(0) ? T(0) : best;  // not 'best > 0 ? best : 0', which would turn NaN into 0
    argmax[i] = best_tap;
}

// bias_relu_maxpool_infer: one thread per pooled element, as bias_relu_maxpool, writing out[i]
// only: inference keeps no argmax.
template <typename T>
__global__ void bias_relu_maxpool_infer(const T* __restrict__ rows, const T* __restrict__ b, T* __restrict__ out,
                                        const int total, const int fn, const int oh, const int ow, const int kh,
                                        const int kw, const int stride, const int pad, const int ph,
                                        const int pw) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    T best;
    int best_tap;
    biased_window_max(rows, b, i, fn, oh, ow, kh, kw, stride, pad, ph, pw, best, best_tap);
    out[i] = best < T(0) ? T(0) : best;
}

// maxpool_relu_backward: one thread per GEMM-row element. Thread i = ((n*OH + y)*OW + x)*FN + f
// writes drows[i], the sum of dout over the pooled windows whose argmax names (y, x) and
// whose output passed the ReLU (out > 0): a gather, see common.cuh.
template <typename T>
__global__ void maxpool_relu_backward(const T* __restrict__ dout, const int* __restrict__ argmax,
                                      const T* __restrict__ out, T* __restrict__ drows, const int total,
                                      const int fn, const int oh, const int ow, const int kh, const int kw,
                                      const int stride, const int pad, const int ph, const int pw) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int f = i % fn;
    const int x = (i / fn) % ow;
    const int y = (i / (fn * ow)) % oh;
    const int img = i / (fn * ow * oh);
    const int plane = (img * fn + f) * (ph * pw);  // offset of the (n, f) pooled plane
    const int py = y + pad;
    const int px = x + pad;

    T sum = T(0);
    for (int ky = py % stride, pool_y = py / stride; ky < kh && pool_y >= 0; ky += stride, --pool_y) {
        if (pool_y >= ph) {
            continue;
        }
        for (int kx = px % stride, pool_x = px / stride; kx < kw && pool_x >= 0; kx += stride, --pool_x) {
            const int o = plane + pool_y * pw + pool_x;
            if (pool_x < pw && argmax[o] == ky * kw + kx && out[o] > T(0)) {
                sum += dout[o];
            }
        }
    }
    drows[i] = sum;
}
