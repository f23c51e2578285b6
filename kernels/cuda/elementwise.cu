// Elementwise steps on GEMM rows (M, F), C order: the bias and ReLU that follow an Affine or
// a Convolution GEMM, in one pass over its output.
#include "common.cuh"

// bias_relu: one thread per row element. Thread i = m*F + f writes
// out[i] = max(rows[i] + b[f], 0); a NaN stays NaN, as with maximum() in the other kernel sets.
template <typename T>
__global__ void bias_relu(const T* __restrict__ rows, const T* __restrict__ b, T* __restrict__ out,
                          const int total, const int columns) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const T v = rows[i] + b[i % columns];
    out[i] = v < T(0) ? T(0) : v;  // not `v > 0 ? v : 0`, which would turn a NaN into 0
}

// relu_backward: one thread per element. Thread i writes dx[i] = dout[i] where out[i] > 0,
// else 0: the gradient through a ReLU whose output was out (a NaN output passes nothing).
template <typename T>
__global__ void relu_backward(const T* __restrict__ dout, const T* __restrict__ out, T* __restrict__ dx,
                              const int total) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    dx[i] = out[i] > T(0) ? dout[i] : T(0);
}
