// The direct convolution of a first layer, fused with its bias, ReLU and max pooling, and the
// gradients of its weights and bias: no column matrix. The convolution's output at
// (n, f, y, x) is the sum, from zero and in (c, fy, fx) order, of w[f, c, fy, fx] times the
// input pixel (y*stride - pad + fy, x*stride - pad + fx) (zero in the padding), plus b[f]
// after the sum, as the GEMM's rows plus the bias. The pooling follows gpucnn.kernels: KH x KW
// windows, pool_stride apart, shifted by pool_pad; argmax is the window-local index
// ky*KW + kx of the first maximum; pool pad cells are never picked; a NaN window gives NaN.
#include "common.cuh"

// The convolution's output, bias added, at (img, f, out_y, out_x): OH x OW outputs of image img.
template <typename T>
__device__ __forceinline__ T biased_conv(const T* __restrict__ x, const T* __restrict__ w, const T bias,
                                         const int img, const int f, const int c, const int h, const int wd,
                                         const int fh, const int fw, const int stride, const int pad,
                                         const int out_y, const int out_x) {
    T sum = T(0);
    for (int ch = 0; ch < c; ++ch) {
        const T* plane = x + (img * c + ch) * (h * wd);
        const T* filter = w + (f * c + ch) * (fh * fw);
        for (int fy = 0; fy < fh; ++fy) {
            const int in_y = out_y * stride - pad + fy;
            const bool row_inside = 0 <= in_y && in_y < h;
            for (int fx = 0; fx < fw; ++fx) {
                const int in_x = out_x * stride - pad + fx;
                // a pad cell is multiplied as a zero, as im2col's zero column entry is
                const T v = (row_inside && 0 <= in_x && in_x < wd) ? plane[in_y * wd + in_x] : T(0);
                sum += filter[fy * fw + fx] * v;
            }
        }
    }
    return sum + bias;
}

// The pooled window of pooled element i = ((n*FN + f)*PH + py)*PW + px over the biased
// convolution, each of its taps computed from the input: its maximum and its argmax.
template <typename T>
__device__ __forceinline__ void conv_window_max(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ b, const int i, const int fn, const int c,
                                                const int h, const int wd, const int fh, const int fw,
                                                const int stride, const int pad, const int oh, const int ow,
                                                const int kh, const int kw, const int pool_stride,
                                                const int pool_pad, const int ph, const int pw, T& best,
                                                int& best_tap) {
    const int pool_x = i % pw;
    const int pool_y = (i / pw) % ph;
    const int f = (i / (pw * ph)) % fn;
    const int img = i / (pw * ph * fn);
    const T bias = b[f];
    window_max(
        [x, w, bias, img, f, c, h, wd, fh, fw, stride, pad](int y, int xx) {
            return biased_conv(x, w, bias, img, f, c, h, wd, fh, fw, stride, pad, y, xx);
        },
        pool_y, pool_x, oh, ow, kh, kw, pool_stride, pool_pad, best, best_tap);
}

// conv_bias_relu_maxpool: one thread per pooled element. Thread i = ((n*FN + f)*PH + py)*PW + px
// computes the convolution at each real cell of its window from x and w, adds b[f], and
// writes out[i] = max(window maximum, 0) and argmax[i]. The convolution's output is never stored.
template <typename T>
__global__ void conv_bias_relu_maxpool(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                       T* __restrict__ out, int* __restrict__ argmax, const int total,
                                       const int fn, const int c, const int h, const int wd, const int fh,
                                       const int fw, const int stride, const int pad, const int oh, const int ow,
                                       const int kh, const int kw, const int pool_stride, const int pool_pad,
                                       const int ph, const int pw) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    T best;
    int best_tap;
    conv_window_max(x, w, b, i, fn, c, h, wd, fh, fw, stride, pad, oh, ow, kh, kw, pool_stride, pool_pad, ph, pw,
                    best, best_tap);
    out[i] = best < T(0) ? T(0) : best;  // not 'best > 0 ? best : 0', which would turn NaN into 0
    argmax[i] = best_tap;
}

// conv_bias_relu_maxpool_infer: one thread per pooled element, as conv_bias_relu_maxpool,
// writing out[i] only: inference keeps no argmax.
template <typename T>
__global__ void conv_bias_relu_maxpool_infer(const T* __restrict__ x, const T* __restrict__ w,
                                             const T* __restrict__ b, T* __restrict__ out, const int total,
                                             const int fn, const int c, const int h, const int wd, const int fh,
                                             const int fw, const int stride, const int pad, const int oh,
                                             const int ow, const int kh, const int kw, const int pool_stride,
                                             const int pool_pad, const int ph, const int pw) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    T best;
    int best_tap;
    conv_window_max(x, w, b, i, fn, c, h, wd, fh, fw, stride, pad, oh, ow, kh, kw, pool_stride, pool_pad, ph, pw,
                    best, best_tap);
    out[i] = best < T(0) ? T(0) : best;
}

// conv_maxpool_relu_backward_params: one thread per weight, then one per filter.
// Thread i < FN*C*FH*FW, i = ((f*C + c)*FH + fy)*FW + fx, writes dw[i]: the sum over the pooled
// elements (n, f, py, px) of filter f, in that order, whose output passed the ReLU (out > 0), of
// dout times the input pixel that tap (c, fy, fx) read for the convolution output their argmax
// names (zero in the padding). Thread FN*C*FH*FW + f writes db[f], the sum of those dout in the
// same order. A serial sum per thread: no atomics, the same sums on every run.
template <typename T>
__global__ void conv_maxpool_relu_backward_params(const T* __restrict__ dout, const int* __restrict__ argmax,
                                                  const T* __restrict__ out, const T* __restrict__ x,
                                                  T* __restrict__ dw, T* __restrict__ db, const int total,
                                                  const int n, const int fn, const int c, const int h,
                                                  const int wd, const int fh, const int fw, const int stride,
                                                  const int pad, const int kh, const int kw, const int pool_stride,
                                                  const int pool_pad, const int ph, const int pw) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int weights = fn * c * fh * fw;
    const bool is_bias = i >= weights;
    const int f = is_bias ? i - weights : i / (c * fh * fw);
    const int fx = i % fw;
    const int fy = (i / fw) % fh;
    const int ch = (i / (fw * fh)) % c;

    T sum = T(0);
    for (int img = 0; img < n; ++img) {
        const int pooled = (img * fn + f) * (ph * pw);  // offset of the (n, f) pooled plane
        const T* plane = x + (img * c + ch) * (h * wd);
        for (int o = pooled; o < pooled + ph * pw; ++o) {
            if (!(out[o] > T(0))) {  // a NaN output passes nothing
                continue;
            }
            if (is_bias) {
                sum += dout[o];
                continue;
            }
            const int tap = argmax[o];
            const int out_y = ((o - pooled) / pw) * pool_stride - pool_pad + tap / kw;
            const int out_x = ((o - pooled) % pw) * pool_stride - pool_pad + tap % kw;
            const int in_y = out_y * stride - pad + fy;
            const int in_x = out_x * stride - pad + fx;
            const T v = (0 <= in_y && in_y < h && 0 <= in_x && in_x < wd) ? plane[in_y * wd + in_x] : T(0);
            sum += dout[o] * v;
        }
    }
    if (is_bias) {
        db[f] = sum;
    } else {
        dw[i] = sum;
    }
}
