// Optimizer steps (gpucnn.optimizers), in place on parameters and their state: one pass
// over memory per step. The arithmetic follows the generic kernel set term by term. A
// complement such as 1 - beta2 comes from the host, computed in double and rounded once to T,
// as the generic set's Python (1 - beta2) is: T(1) - beta2 in float would round beta2 first
// (1 - 0.999f is 0.0009999871, not 0.001).
//
// Each rule is one __device__ function on one element, called by two kernels: <rule>_update
// on one parameter, and <rule>_update_many on up to MULTI_TENSOR_MAX parameters at once
// (every parameter of a model in one launch), so both give the same values bit for bit.
#include "common.cuh"

// The parameters of one multi-tensor launch, passed by value as a kernel argument (no copy
// to the device; CUDA allows 4 KiB of arguments). address[0][k] is parameter k, address[1][k]
// its gradient, address[2][k] and address[3][k] its state arrays (0 where the rule has
// fewer), all C-contiguous arrays of T. The parameters lie end to end in a virtual array:
// parameter k holds elements start[k] .. start[k + 1] - 1, start[count] is the total.
// The layout is gpucnn.kernels.cuda_set.TENSOR_TABLE's, checked by its size.
#define MULTI_TENSOR_MAX 32
struct TensorTable {
    unsigned long long address[4][MULTI_TENSOR_MAX];
    int start[MULTI_TENSOR_MAX + 1];
    int count;
};
static_assert(sizeof(TensorTable) == 1160, "TensorTable must match cuda_set.TENSOR_TABLE");

// Which parameter holds element i of the virtual array: false when i is past its end.
__device__ __forceinline__ bool locate(const TensorTable& table, const int i, int& k, int& j) {
    if (i >= table.start[table.count]) {
        return false;
    }
    k = 0;
    while (table.start[k + 1] <= i) {
        ++k;
    }
    j = i - table.start[k];
    return true;
}

// Array `which` (0 parameter, 1 gradient, 2 and 3 state) of parameter k.
template <typename T>
__device__ __forceinline__ T* tensor(const TensorTable& table, const int which, const int k) {
    return reinterpret_cast<T*>(table.address[which][k]);
}

template <typename T>
__device__ __forceinline__ void sgd_element(T& param, const T g, const T lr) {
    param -= lr * g;
}

template <typename T>
__device__ __forceinline__ void momentum_element(T& param, const T g, T& velocity, const T lr, const T momentum) {
    T v = velocity * momentum;
    v -= lr * g;
    velocity = v;
    param += v;
}

template <typename T>
__device__ __forceinline__ void adagrad_element(T& param, const T g, T& h, const T lr, const T eps) {
    const T hi = h + g * g;
    h = hi;
    param -= lr * g / (sqrt(hi) + eps);
}

template <typename T>
__device__ __forceinline__ void rmsprop_element(T& param, const T g, T& h, const T lr, const T decay,
                                                const T one_minus_decay, const T eps) {
    T hi = h * decay;
    hi += one_minus_decay * g * g;
    h = hi;
    param -= lr * g / (sqrt(hi) + eps);
}

template <typename T>
__device__ __forceinline__ void adam_element(T& param, const T g, T& m, T& v, const T lr_t, const T one_minus_beta1,
                                             const T one_minus_beta2, const T eps) {
    const T mi = m + one_minus_beta1 * (g - m);
    const T vi = v + one_minus_beta2 * (g * g - v);
    m = mi;
    v = vi;
    param -= lr_t * mi / (sqrt(vi) + eps);
}

// sgd_update: one thread per parameter element i: param[i] -= lr * grad[i].
template <typename T>
__global__ void sgd_update(T* __restrict__ param, const T* __restrict__ grad, const int total, const T lr) {
    const int i = thread_index();
    if (i < total) {
        sgd_element(param[i], grad[i], lr);
    }
}

// momentum_update: one thread per parameter element i: velocity[i] = momentum*velocity[i] - lr*grad[i];
// param[i] += velocity[i].
template <typename T>
__global__ void momentum_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ velocity,
                                const int total, const T lr, const T momentum) {
    const int i = thread_index();
    if (i < total) {
        momentum_element(param[i], grad[i], velocity[i], lr, momentum);
    }
}

// adagrad_update: one thread per parameter element i: h[i] += grad[i]^2;
// param[i] -= lr * grad[i] / (sqrt(h[i]) + eps).
template <typename T>
__global__ void adagrad_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ h,
                               const int total, const T lr, const T eps) {
    const int i = thread_index();
    if (i < total) {
        adagrad_element(param[i], grad[i], h[i], lr, eps);
    }
}

// rmsprop_update: one thread per parameter element i: h[i] = decay*h[i] + one_minus_decay*grad[i]^2;
// param[i] -= lr * grad[i] / (sqrt(h[i]) + eps).
template <typename T>
__global__ void rmsprop_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ h,
                               const int total, const T lr, const T decay, const T one_minus_decay,
                               const T eps) {
    const int i = thread_index();
    if (i < total) {
        rmsprop_element(param[i], grad[i], h[i], lr, decay, one_minus_decay, eps);
    }
}

// adam_update: one thread per parameter element i: m[i] += one_minus_beta1*(grad[i] - m[i]);
// v[i] += one_minus_beta2*(grad[i]^2 - v[i]); param[i] -= lr_t * m[i] / (sqrt(v[i]) + eps).
template <typename T>
__global__ void adam_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ m,
                            T* __restrict__ v, const int total, const T lr_t, const T one_minus_beta1,
                            const T one_minus_beta2, const T eps) {
    const int i = thread_index();
    if (i < total) {
        adam_element(param[i], grad[i], m[i], v[i], lr_t, one_minus_beta1, one_minus_beta2, eps);
    }
}

// sgd_update_many: one thread per element i of the table's virtual array: element j of
// parameter k (locate), sgd_update's step on it. Likewise the four kernels below.
template <typename T>
__global__ void sgd_update_many(const TensorTable table, const T lr) {
    int k, j;
    if (locate(table, thread_index(), k, j)) {
        sgd_element(tensor<T>(table, 0, k)[j], tensor<T>(table, 1, k)[j], lr);
    }
}

// momentum_update_many: one thread per element i of the virtual array, as sgd_update_many.
template <typename T>
__global__ void momentum_update_many(const TensorTable table, const T lr, const T momentum) {
    int k, j;
    if (locate(table, thread_index(), k, j)) {
        momentum_element(tensor<T>(table, 0, k)[j], tensor<T>(table, 1, k)[j], tensor<T>(table, 2, k)[j], lr,
                         momentum);
    }
}

// adagrad_update_many: one thread per element i of the virtual array, as sgd_update_many.
template <typename T>
__global__ void adagrad_update_many(const TensorTable table, const T lr, const T eps) {
    int k, j;
    if (locate(table, thread_index(), k, j)) {
        adagrad_element(tensor<T>(table, 0, k)[j], tensor<T>(table, 1, k)[j], tensor<T>(table, 2, k)[j], lr, eps);
    }
}

// rmsprop_update_many: one thread per element i of the virtual array, as sgd_update_many.
template <typename T>
__global__ void rmsprop_update_many(const TensorTable table, const T lr, const T decay, const T one_minus_decay,
                                     const T eps) {
    int k, j;
    if (locate(table, thread_index(), k, j)) {
        rmsprop_element(tensor<T>(table, 0, k)[j], tensor<T>(table, 1, k)[j], tensor<T>(table, 2, k)[j], lr, decay,
                        one_minus_decay, eps);
    }
}

// adam_update_many: one thread per element i of the virtual array, as sgd_update_many.
template <typename T>
__global__ void adam_update_many(const TensorTable table, const T lr_t, const T one_minus_beta1,
                                  const T one_minus_beta2, const T eps) {
    int k, j;
    if (locate(table, thread_index(), k, j)) {
        adam_element(tensor<T>(table, 0, k)[j], tensor<T>(table, 1, k)[j], tensor<T>(table, 2, k)[j],
                     tensor<T>(table, 3, k)[j], lr_t, one_minus_beta1, one_minus_beta2, eps);
    }
}
