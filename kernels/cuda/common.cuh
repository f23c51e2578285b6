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

// The linear index of this thread in a 1-D launch. The wrappers check that element
// counts fit in an int, so 32-bit index math is exact.
__device__ __forceinline__ int thread_index() {
    return static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
}

#endif  // GPUCNN_COMMON_CUH
