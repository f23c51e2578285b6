// Optimizer steps (gpucnn.optimizers), in place on one parameter and its state: one pass
// over memory per step. The arithmetic follows the generic kernel set term by term. A
// complement such as 1 - beta2 comes from the host, computed in double and rounded once to T,
// as the generic set's Python (1 - beta2) is: T(1) - beta2 in float would round beta2 first
// (1 - 0.999f is 0.0009999871, not 0.001).
#include "common.cuh"

// sgd_update: one thread per parameter element i: param[i] -= lr * grad[i].
template <typename T>
__global__ void sgd_update(T* __restrict__ param, const T* __restrict__ grad, const int total, const T lr) {
    const int i = thread_index();
    if (i < total) {
        param[i] -= lr * grad[i];
    }
}

// momentum_update: one thread per parameter element i: velocity[i] = momentum*velocity[i] - lr*grad[i];
// param[i] += velocity[i].
template <typename T>
__global__ void momentum_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ velocity,
                                const int total, const T lr, const T momentum) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    T v = velocity[i] * momentum;
    v -= lr * grad[i];
    velocity[i] = v;
    param[i] += v;
}

// adagrad_update: one thread per parameter element i: h[i] += grad[i]^2;
// param[i] -= lr * grad[i] / (sqrt(h[i]) + eps).
template <typename T>
__global__ void adagrad_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ h,
                               const int total, const T lr, const T eps) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const T g = grad[i];
    const T hi = h[i] + g * g;
    h[i] = hi;
    param[i] -= lr * g / (sqrt(hi) + eps);
}

// rmsprop_update: one thread per parameter element i: h[i] = decay*h[i] + one_minus_decay*grad[i]^2;
// param[i] -= lr * grad[i] / (sqrt(h[i]) + eps).
template <typename T>
__global__ void rmsprop_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ h,
                               const int total, const T lr, const T decay, const T one_minus_decay,
                               const T eps) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const T g = grad[i];
    T hi = h[i] * decay;
    hi += one_minus_decay * g * g;
    h[i] = hi;
    param[i] -= lr * g / (sqrt(hi) + eps);
}

// adam_update: one thread per parameter element i: m[i] += one_minus_beta1*(grad[i] - m[i]);
// v[i] += one_minus_beta2*(grad[i]^2 - v[i]); param[i] -= lr_t * m[i] / (sqrt(v[i]) + eps).
template <typename T>
__global__ void adam_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ m,
                            T* __restrict__ v, const int total, const T lr_t, const T one_minus_beta1,
                            const T one_minus_beta2, const T eps) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const T g = grad[i];
    const T mi = m[i] + one_minus_beta1 * (g - m[i]);
    const T vi = v[i] + one_minus_beta2 * (g * g - v[i]);
    m[i] = mi;
    v[i] = vi;
    param[i] -= lr_t * mi / (sqrt(vi) + eps);
}
