// Layout changes between a convolution GEMM's rows (N*OH*OW, FN), in (n, oh, ow) order,
// and the NCHW tensor (N, FN, OH, OW).
#include "common.cuh"

// rows_to_nchw: one thread per NCHW element. Thread i = ((n*FN + f)*OH + oh)*OW + ow writes
// out[i] = y[(n*OH + oh)*OW + ow, f].
template <typename T>
__global__ void rows_to_nchw(const T* __restrict__ y, T* __restrict__ out, const int total,
                             const int fn, const int oh, const int ow) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int pixel = i % (oh * ow);  // oh*OW + ow
    const int f = (i / (oh * ow)) % fn;
    const int img = i / (oh * ow * fn);
    out[i] = y[(img * oh * ow + pixel) * fn + f];
}

// nchw_to_rows: one thread per row element. Thread i = ((n*OH + oh)*OW + ow)*FN + f writes
// rows[i] = dout[n, f, oh, ow].
template <typename T>
__global__ void nchw_to_rows(const T* __restrict__ dout, T* __restrict__ rows, const int total,
                             const int fn, const int oh, const int ow) {
    const int i = thread_index();
    if (i >= total) {
        return;
    }
    const int f = i % fn;
    const int pixel = (i / fn) % (oh * ow);
    const int img = i / (fn * oh * ow);
    rows[i] = dout[(img * fn + f) * (oh * ow) + pixel];
}
