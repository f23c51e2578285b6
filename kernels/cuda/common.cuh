// Helpers shared by gpucnn's CUDA kernels. The .cu files include this header; the kernel
// sources are compiled by NVRTC (CuPy), by nvcc (the compile check) and as plain C++ by
// the host emulation, so it uses nothing but CUDA C that all three accept.
//
// Gathers. A backward kernel gives each thread one input pixel and sums the window taps
// that read it. Along one axis, window o covers padded positions o*stride .. o*stride + K-1,
// so padded position p is read by tap k of window (p - k) / stride whenever stride divides
// p - k: the taps k = p % stride, p % stride + stride, ... of the windows p / stride,
// p / stride - 1, ... Each gather walks that sequence, ky outer and kx inner, ascending, so
// it adds the taps in the same order as the NumPy kernels.
#ifndef GPUCNN_COMMON_CUH
#define GPUCNN_COMMON_CUH

constexpr int WARP_SIZE = 32;
constexpr unsigned FULL_MASK = 0xffffffffu;

// The sum of every lane's v over a whole warp, in every lane (the same bits in each: a + b
// and b + a round alike, so every lane adds the same pairs).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(FULL_MASK, v, offset);
    }
    return v;
}

// The linear index of this thread in a 1-D launch. The wrappers check that element
// counts fit in an int, so 32-bit index math is exact.
__device__ __forceinline__ int thread_index() {
    return static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
}

// The first maximum of one pooling window: the KH x KW cells (out_y*stride - pad + ky,
// out_x*stride - pad + kx) of an H x W plane whose values read(y, x) returns. Cells outside
// the plane (the padding) are never picked. A NaN always wins, so that a window holding one
// gives NaN as in the NumPy kernels. best_tap is the window-local index ky*KW + kx.
template <typename T, typename Read>
__device__ __forceinline__ void window_max(const Read& read, const int out_y, const int out_x, const int h,
                                           const int w, const int kh, const int kw, const int stride,
                                           const int pad, T& best, int& best_tap) {
    best = T(0);
    best_tap = -1;
    for (int ky = 0; ky < kh; ++ky) {
        const int y = out_y * stride - pad + ky;
        if (y < 0 || y >= h) {
            continue;
        }
        for (int kx = 0; kx < kw; ++kx) {
            const int x = out_x * stride - pad + kx;
            if (x < 0 || x >= w) {
                continue;
            }
            const T v = read(y, x);
            if (best_tap < 0 || v > best || v != v) {  // strict '>': the first maximum wins
                best = v;
                best_tap = ky * kw + kx;
            }
        }
    }
}

#endif  // GPUCNN_COMMON_CUH
