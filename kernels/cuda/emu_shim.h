// Host emulation of the CUDA C that gpucnn's kernels use: included before a .cu source so
// that g++ compiles it as plain C++ (see kernels/emu.py).
//
// __global__ and __device__ functions become ordinary functions; threadIdx, blockIdx,
// blockDim and gridDim are thread-local variables that gpucnn_emu::launch sets before it
// calls the kernel once per CUDA thread, one thread after the other. That is exact only for
// kernels whose threads never wait for or talk to one another. A source that shares memory
// between threads or synchronizes them is built with GPUCNN_EMU_COOPERATIVE defined and
// emu_cooperative.h after this header, which runs the threads of a block as fibers instead;
// here, without it, everything that synchronizes threads or shares memory is a compile error.
#ifndef GPUCNN_EMU_SHIM_H
#define GPUCNN_EMU_SHIM_H

#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

#ifndef GPUCNN_EMU_COOPERATIVE
#define GPUCNN_EMU_REFUSE(what) \
    static_assert(false, "cuda-emu cannot emulate " what ": it runs one CUDA thread at a time")
#define __shared__ GPUCNN_EMU_REFUSE("__shared__ memory");
#define __syncthreads() GPUCNN_EMU_REFUSE("__syncthreads()")
#define __syncthreads_count(...) GPUCNN_EMU_REFUSE("__syncthreads_count()")
#define __syncthreads_and(...) GPUCNN_EMU_REFUSE("__syncthreads_and()")
#define __syncthreads_or(...) GPUCNN_EMU_REFUSE("__syncthreads_or()")
#define __syncwarp(...) GPUCNN_EMU_REFUSE("__syncwarp()")
#define __shfl_sync(...) GPUCNN_EMU_REFUSE("warp shuffles")
#define __shfl_up_sync(...) GPUCNN_EMU_REFUSE("warp shuffles")
#define __shfl_down_sync(...) GPUCNN_EMU_REFUSE("warp shuffles")
#define __shfl_xor_sync(...) GPUCNN_EMU_REFUSE("warp shuffles")
#define __ballot_sync(...) GPUCNN_EMU_REFUSE("warp votes")
#define __any_sync(...) GPUCNN_EMU_REFUSE("warp votes")
#define __all_sync(...) GPUCNN_EMU_REFUSE("warp votes")
#endif

using std::exp;
using std::fmax;
using std::fmin;
using std::log;
using std::sqrt;

struct uint3 {
    unsigned int x, y, z;
};
using dim3 = uint3;

constexpr int warpSize = 32;

namespace gpucnn_emu {

inline thread_local uint3 threadIdx, blockIdx, blockDim, gridDim;

// Why the last launch on this OS thread failed (gpucnn_emu_error()); empty after a success.
inline std::string& error_message() {
    static thread_local std::string message;
    return message;
}

// One character per kernel parameter type, so that Python can check its arguments:
// i/f/d for int/float/double values, I/F/D for pointers to them, S for a struct passed by
// value (its size in param_sizes), '?' for anything else.
template <typename T> struct value_code { static constexpr char value = std::is_class_v<T> ? 'S' : '?'; };
template <> struct value_code<int> { static constexpr char value = 'i'; };
template <> struct value_code<float> { static constexpr char value = 'f'; };
template <> struct value_code<double> { static constexpr char value = 'd'; };

template <typename T> struct type_code { static constexpr char value = value_code<T>::value; };
template <typename T> struct type_code<T*> {
    static constexpr char code = value_code<std::remove_cv_t<T>>::value;
    static constexpr char value = code == '?' ? '?' : static_cast<char>(code - 'a' + 'A');
};

template <typename... Args>
const char* signature(void (*)(Args...)) {
    static const char codes[] = {type_code<Args>::value..., '\0'};
    return codes;
}

// How a kernel parameter of type A is passed: `bytes` bytes at args[k], read by `read`.
// emu_coalescing.h passes its recording pointers as the plain pointers they stand for.
template <typename A> struct kernel_argument {
    static constexpr unsigned bytes = sizeof(A);
    static A read(void* value) { return *static_cast<A*>(value); }
};

// The size in bytes of each kernel parameter, in order.
template <typename... Args>
const unsigned* param_sizes(void (*)(Args...)) {
    static const unsigned sizes[] = {kernel_argument<Args>::bytes..., 0u};
    return sizes;
}

// args[k] points at the value of parameter k, as in cuLaunchKernel's kernelParams.
template <typename... Args, std::size_t... K>
void call(void (*kernel)(Args...), void** args, std::index_sequence<K...>) {
    kernel(kernel_argument<Args>::read(args[K])...);
}

// The launcher of kernels that do not cooperate: each thread runs to its end in turn.
// Returns 0 (nothing it runs can fault), as launch_cooperative returns its fault code.
template <typename... Args>
int launch(const char*, void (*kernel)(Args...), const unsigned int* grid, const unsigned int* block,
           void** args) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned int bz = 0; bz < grid[2]; ++bz)
        for (unsigned int by = 0; by < grid[1]; ++by)
            for (unsigned int bx = 0; bx < grid[0]; ++bx) {
                blockIdx = {bx, by, bz};
                for (unsigned int tz = 0; tz < block[2]; ++tz)
                    for (unsigned int ty = 0; ty < block[1]; ++ty)
                        for (unsigned int tx = 0; tx < block[0]; ++tx) {
                            threadIdx = {tx, ty, tz};
                            call(kernel, args, std::index_sequence_for<Args...>{});
                        }
            }
    return 0;
}

}  // namespace gpucnn_emu

using gpucnn_emu::blockDim;
using gpucnn_emu::blockIdx;
using gpucnn_emu::gridDim;
using gpucnn_emu::threadIdx;

extern "C" const char* gpucnn_emu_error() { return gpucnn_emu::error_message().c_str(); }

#ifdef GPUCNN_EMU_COOPERATIVE
#define GPUCNN_EMU_LAUNCH gpucnn_emu::launch_cooperative
#else
#define GPUCNN_EMU_LAUNCH gpucnn_emu::launch
#endif

// Exports kernel instance `...` (a name expression such as im2col<float>) as the C functions
// gpucnn_emu_launch_<id>(grid, block, args), which returns 0 or a fault code (the message in
// gpucnn_emu_error()), gpucnn_emu_signature_<id>() and gpucnn_emu_param_sizes_<id>().
#define GPUCNN_EMU_EXPORT(id, ...)                                                                 \
    extern "C" int gpucnn_emu_launch_##id(const unsigned int* grid, const unsigned int* block,    \
                                          void** args) {                                           \
        return GPUCNN_EMU_LAUNCH(#__VA_ARGS__, &__VA_ARGS__, grid, block, args);                   \
    }                                                                                              \
    extern "C" const char* gpucnn_emu_signature_##id() { return gpucnn_emu::signature(&__VA_ARGS__); } \
    extern "C" const unsigned* gpucnn_emu_param_sizes_##id() { return gpucnn_emu::param_sizes(&__VA_ARGS__); }

#endif  // GPUCNN_EMU_SHIM_H
