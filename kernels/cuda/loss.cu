// Softmax cross-entropy with integer labels t (N,) over scores x (N, K). The arithmetic
// follows the generic kernel set term by term: z = x - max(row), log p = z - log(sum(exp(z))),
// probs = exp(log p), and the row's loss term -log p[t]. A label outside [0, K) matches no
// class (an all-zero one-hot row), as in the generic set: its row adds 0 to the loss and its
// gradient is probs * scale. No index is ever read outside the arrays.
//
// The row kernels give each row one warp: lane L reads and writes columns L, L + 32, ... of
// it (a warp request touches adjacent columns), and the row's maximum and its sum of
// exponentials are reduced across the lanes with __shfl_xor_sync. The butterfly leaves the
// same bits in every lane (a + b and b + a round alike), so each row's sum is the same on
// every run; it adds the terms in another order than a serial loop, within rounding.
#include "common.cuh"

// The row of a one-warp-per-row launch (1-D grid, blocks of whole warps), computed per
// block so that it stays exact for any row count that fits in an int. Every lane of a warp
// has the same row, so a warp returns or stays whole and its shuffles see all 32 lanes.
__device__ __forceinline__ int warp_row() {
    return static_cast<int>(blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE);
}

__device__ __forceinline__ int lane_index() {
    return static_cast<int>(threadIdx.x % WARP_SIZE);
}

// softmax_cross_entropy: one warp per row (see above). The warp of row i writes probs[i, :]
// (the softmax of x[i, :]) and row_loss[i] = -log probs[i, t[i]]; the wrapper takes the
// mean of row_loss.
template <typename T>
__global__ void softmax_cross_entropy(const T* __restrict__ x, const int* __restrict__ t,
                                      T* __restrict__ probs, T* __restrict__ row_loss,
                                      const int n, const int k) {
    const int i = warp_row();
    if (i >= n) {
        return;
    }
    const int lane = lane_index();
    const T* scores = x + i * k;
    T* p = probs + i * k;

    // Every lane starts from scores[0] (k >= 1), so a lane without columns holds a score of
    // the row. A NaN score never wins, but it makes every z, so the whole row, NaN anyway.
    T top = scores[0];
    for (int j = lane; j < k; j += WARP_SIZE) {
        if (scores[j] > top) {
            top = scores[j];
        }
    }
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        const T other = __shfl_xor_sync(FULL_MASK, top, offset);
        if (other > top) {
            top = other;
        }
    }
    T sum = T(0);
    for (int j = lane; j < k; j += WARP_SIZE) {
        sum += exp(scores[j] - top);
    }
    const T log_sum = log(warp_sum(sum));  // at least log(1): the maximum's term is exp(0)

    const int label = t[i];
    T loss = T(0);
    for (int j = lane; j < k; j += WARP_SIZE) {
        const T log_p = (scores[j] - top) - log_sum;
        p[j] = exp(log_p);
        if (j == label) {
            loss = -log_p;
        }
    }
    // label is the same in every lane: the branch keeps the warp whole.
    const T row = (label >= 0 && label < k) ? __shfl_sync(FULL_MASK, loss, label % WARP_SIZE) : T(0);
    if (lane == 0) {
        row_loss[i] = row;
    }
}

// softmax_cross_entropy_backward: one thread per element. Thread i = row*K + j writes
// dx[i] = (probs[i] - (j == t[row])) * scale.
template <typename T>
__global__ void softmax_cross_entropy_backward(const T* __restrict__ probs, const int* __restrict__ t,
                                               T* __restrict__ dx, const int total, const int k,
                                               const T scale) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const T target = (i % k == t[i / k]) ? T(1) : T(0);
    dx[i] = (probs[i] - target) * scale;
}

// Stage 1 of the counting kernels, two threads, each a serial sum in row order (the same sums
// on every run): thread 0 writes loss[0] = sum(row_loss) / n, thread 1 right[0] = sum(row_right).
// A tree sum across threads needs shared memory; N serial adds suit a batch of up to thousands
// of rows.
template <typename T>
__device__ __forceinline__ void count_sums(const T* __restrict__ row_loss, const int* __restrict__ row_right,
                                           T* __restrict__ loss, int* __restrict__ right, const int n,
                                           const int i) {
    if (i == 0) {
        T sum = T(0);
        for (int r = 0; r < n; ++r) {
            sum += row_loss[r];
        }
        loss[0] = sum / T(n);
    } else if (i == 1) {
        int count = 0;
        for (int r = 0; r < n; ++r) {
            count += row_right[r];
        }
        right[0] = count;
    }
}

// Score j of a row: scores[j], plus b[j] when a bias b (K,) is given (the same one float add
// as the scores' rows + b).
template <typename T>
__device__ __forceinline__ T score(const T* __restrict__ scores, const T* __restrict__ b, const int j) {
    return b != nullptr ? scores[j] + b[j] : scores[j];
}

// Stage 0 of the counting kernels for row i, run by the row's warp (lane L on columns
// L, L + 32, ..., as softmax_cross_entropy, with the same sums), whose scores are x[i, :]
// (+ b when b is not null): softmax_cross_entropy's work (probs[i, :],
// row_loss[i] = -log probs[i, t[i]]), row_right[i] = 1 when every score of the row is finite
// and its first maximum is at column t[i], else 0 (a row with a NaN or infinite score is
// wrong, whatever its maximum), and, when dx is not null, softmax_cross_entropy_backward's
// dx[i, :] = (probs[i, :] - onehot(t[i])) * scale from the probabilities just stored.
template <typename T>
__device__ __forceinline__ void count_row(const T* __restrict__ x, const T* __restrict__ b,
                                          const int* __restrict__ t, T* __restrict__ probs,
                                          T* __restrict__ row_loss, int* __restrict__ row_right,
                                          T* __restrict__ dx, const T scale, const int k, const int i) {
    const int lane = lane_index();
    const T* scores = x + i * k;
    T* p = probs + i * k;

    T top = score(scores, b, 0);
    int top_class = 0;
    bool finite = true;
    for (int j = lane; j < k; j += WARP_SIZE) {
        const T s = score(scores, b, j);
        finite = finite && s - s == T(0);  // false for NaN and for +-inf (inf - inf is NaN)
        if (s > top) {  // strict '>': the first maximum wins, as argmax's does
            top = s;
            top_class = j;
        }
    }
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        const T other = __shfl_xor_sync(FULL_MASK, top, offset);
        const int other_class = __shfl_xor_sync(FULL_MASK, top_class, offset);
        // of two equal maxima the lower column wins: the row's first maximum
        if (other > top || (other == top && other_class < top_class)) {
            top = other;
            top_class = other_class;
        }
    }
    finite = __all_sync(FULL_MASK, finite);
    T sum = T(0);
    for (int j = lane; j < k; j += WARP_SIZE) {
        sum += exp(score(scores, b, j) - top);
    }
    const T log_sum = log(warp_sum(sum));

    const int label = t[i];
    T* d = dx != nullptr ? dx + i * k : nullptr;
    T loss = T(0);
    for (int j = lane; j < k; j += WARP_SIZE) {
        const T log_p = (score(scores, b, j) - top) - log_sum;
        const T prob = exp(log_p);
        p[j] = prob;
        if (j == label) {
            loss = -log_p;
        }
        if (d != nullptr) {
            d[j] = (prob - (j == label ? T(1) : T(0))) * scale;
        }
    }
    // label is the same in every lane: the branch keeps the warp whole.
    const T row = (label >= 0 && label < k) ? __shfl_sync(FULL_MASK, loss, label % WARP_SIZE) : T(0);
    if (lane == 0) {
        row_loss[i] = row;
        row_right[i] = (finite && top_class == label) ? 1 : 0;
    }
}

// softmax_cross_entropy_count, launched twice (one operation, two passes; stage = 0, then 1).
// Stage 0, one warp per row: the warp of row i does count_row's work for it, without dx.
// Stage 1, two threads: count_sums (thread 0 the mean loss, thread 1 the right answers).
template <typename T>
__global__ void softmax_cross_entropy_count(const T* __restrict__ x, const int* __restrict__ t,
                                            T* __restrict__ probs, T* __restrict__ row_loss,
                                            int* __restrict__ row_right, T* __restrict__ loss,
                                            int* __restrict__ right, const int n, const int k,
                                            const int stage) {
    if (stage == 1) {
        count_sums(row_loss, row_right, loss, right, n, thread_index());
    } else if (warp_row() < n) {
        count_row(x, static_cast<const T*>(nullptr), t, probs, row_loss, row_right, static_cast<T*>(nullptr), T(0),
                  k, warp_row());
    }
}

// softmax_cross_entropy_count_grad, launched twice as softmax_cross_entropy_count (stage = 0,
// then 1). Stage 0, one warp per row: the warp of row i does count_row's work for it, dx[i, :]
// included (the gradient of the scores at scale `scale`). Stage 1, two threads: count_sums.
template <typename T>
__global__ void softmax_cross_entropy_count_grad(const T* __restrict__ x, const int* __restrict__ t,
                                                 T* __restrict__ probs, T* __restrict__ row_loss,
                                                 int* __restrict__ row_right, T* __restrict__ loss,
                                                 int* __restrict__ right, T* __restrict__ dx, const int n,
                                                 const int k, const T scale, const int stage) {
    if (stage == 1) {
        count_sums(row_loss, row_right, loss, right, n, thread_index());
    } else if (warp_row() < n) {
        count_row(x, static_cast<const T*>(nullptr), t, probs, row_loss, row_right, dx, scale, k, warp_row());
    }
}

// bias_softmax_cross_entropy_count_grad: softmax_cross_entropy_count_grad of the scores
// x + b (GEMM rows x (N, K) and the bias b (K,) of the layer that made them), with the bias's
// gradient, launched twice (stage = 0, then 1). Stage 0, one warp per row: the warp of row i
// does count_row's work for it with the bias added to each score, dx[i, :] included. Stage 1,
// 2 + K threads: threads 0 and 1 count_sums; thread 2 + j writes db[j], the sum of column j
// of dx, serially in row order (the same sum on every run; a warp reads 32 adjacent columns
// of one row at a time).
template <typename T>
__global__ void bias_softmax_cross_entropy_count_grad(const T* __restrict__ x, const T* __restrict__ b,
                                                      const int* __restrict__ t, T* __restrict__ probs,
                                                      T* __restrict__ row_loss, int* __restrict__ row_right,
                                                      T* __restrict__ loss, int* __restrict__ right,
                                                      T* __restrict__ dx, T* __restrict__ db, const int n,
                                                      const int k, const T scale, const int stage) {
    if (stage == 1) {
        const int i = thread_index();
        if (i < 2) {
            count_sums(row_loss, row_right, loss, right, n, i);
        } else if (i < 2 + k) {
            const int j = i - 2;
            T sum = T(0);
            for (int r = 0; r < n; ++r) {
                sum += dx[r * k + j];
            }
            db[j] = sum;
        }
    } else if (warp_row() < n) {
        count_row(x, b, t, probs, row_loss, row_right, dx, scale, k, warp_row());
    }
}
