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

// The fused forward kernels below read GEMM rows (N*OH*OW, FN) and write NCHW pooled
// tensors (N, FN, PH, PW) through a shared-memory tile, as layout.cu's rows_to_nchw does, so
// that a warp reads 32 consecutive filters of one GEMM row per tap and writes 32 consecutive
// pooled pixels of one (n, f) plane (both coalesced).
//
// Geometry (CudaKernels sets it): blocks of POOL_TILE x POOL_TILE_ROWS threads, a 1-D grid of
// N * ceil(FN / POOL_TILE) * ceil(PH*PW / POOL_TILE) blocks. Block b pools image
// n = b / (f_tiles * p_tiles), filters f0 = ((b / p_tiles) % f_tiles) * POOL_TILE .. f0 + 31,
// pooled pixels p0 = (b % p_tiles) * POOL_TILE .. p0 + 31 (clipped to FN and PH*PW), where
// pooled pixel p = py*PW + px. Shared memory per block: POOL_TILE x (POOL_TILE + 1) elements
// for the values (4224 bytes for float, 8448 for double) and as many ints for the argmax.
constexpr int POOL_TILE = 32;
constexpr int POOL_TILE_ROWS = 8;  // each thread pools POOL_TILE / POOL_TILE_ROWS elements

// The tile a block pools: image, first filter, first pooled pixel (see the geometry above).
struct PoolTile {
    int img, f0, p0;
};

__device__ __forceinline__ PoolTile pool_tile(const int fn, const int pooled) {
    const int p_tiles = (pooled + POOL_TILE - 1) / POOL_TILE;
    const int f_tiles = (fn + POOL_TILE - 1) / POOL_TILE;
    const int b = static_cast<int>(blockIdx.x);
    return {b / (f_tiles * p_tiles), ((b / p_tiles) % f_tiles) * POOL_TILE, (b % p_tiles) * POOL_TILE};
}

// The pooled window (pool_y, pool_x) of filter f of image img over y = rows + b, read straight
// from the GEMM rows (N*OH*OW, FN): max(its maximum, 0) and its argmax.
template <typename T>
__device__ __forceinline__ void biased_window_relu_max(const T* __restrict__ rows, const T* __restrict__ b,
                                                       const int img, const int f, const int pool_y,
                                                       const int pool_x, const int fn, const int oh, const int ow,
                                                       const int kh, const int kw, const int stride, const int pad,
                                                       T& best, int& best_tap) {
    const T bias = b[f];
    window_max([rows, bias, img, oh, ow, fn, f](int y, int x) { return rows[((img * oh + y) * ow + x) * fn + f] + bias; },
               pool_y, pool_x, oh, ow, kh, kw, stride, pad, best, best_tap);
    best = best < T(0) ? T(0) : best;  // not 'best > 0 ? best : 0', which would turn NaN into 0
}

// bias_relu_maxpool: one thread per POOL_TILE / POOL_TILE_ROWS pooled elements of its block's
// tile (n, f0, p0). Thread (tx, ty) pools filter f0 + tx at pooled pixels p0 + ty + k from
// y = rows + b, read straight from the GEMM rows (N*OH*OW, FN), into tile[ty + k][tx]; after
// the barrier it writes out[n, f0 + ty + k, p0 + tx] = max(window maximum, 0) and argmax
// there from tile[tx][ty + k], for k = 0, POOL_TILE_ROWS, ... < POOL_TILE. Neither y nor
// its ReLU is ever stored.
template <typename T>
__global__ void bias_relu_maxpool(const T* __restrict__ rows, const T* __restrict__ b, T* __restrict__ out,
                                  int* __restrict__ argmax, const int fn, const int oh, const int ow,
                                  const int kh, const int kw, const int stride, const int pad, const int ph,
                                  const int pw) {
    __shared__ T best_tile[POOL_TILE][POOL_TILE + 1];
    __shared__ int tap_tile[POOL_TILE][POOL_TILE + 1];
    const int pooled = ph * pw;
    const PoolTile t = pool_tile(fn, pooled);
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    for (int k = 0; k < POOL_TILE; k += POOL_TILE_ROWS) {
        const int p = t.p0 + ty + k;
        const int f = t.f0 + tx;
        if (p < pooled && f < fn) {
            T best;
            int best_tap;
            biased_window_relu_max(rows, b, t.img, f, p / pw, p % pw, fn, oh, ow, kh, kw, stride, pad, best,
                                   best_tap);
            best_tile[ty + k][tx] = best;
            tap_tile[ty + k][tx] = best_tap;
        }
    }
    __syncthreads();
    for (int k = 0; k < POOL_TILE; k += POOL_TILE_ROWS) {
        const int f = t.f0 + ty + k;
        const int p = t.p0 + tx;
        if (f < fn && p < pooled) {
            out[(t.img * fn + f) * pooled + p] = best_tile[tx][ty + k];
            argmax[(t.img * fn + f) * pooled + p] = tap_tile[tx][ty + k];
        }
    }
}

// bias_relu_maxpool_infer: as bias_relu_maxpool, writing out only: inference keeps no argmax.
template <typename T>
__global__ void bias_relu_maxpool_infer(const T* __restrict__ rows, const T* __restrict__ b, T* __restrict__ out,
                                        const int fn, const int oh, const int ow, const int kh, const int kw,
                                        const int stride, const int pad, const int ph, const int pw) {
    __shared__ T best_tile[POOL_TILE][POOL_TILE + 1];
    const int pooled = ph * pw;
    const PoolTile t = pool_tile(fn, pooled);
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    for (int k = 0; k < POOL_TILE; k += POOL_TILE_ROWS) {
        const int p = t.p0 + ty + k;
        const int f = t.f0 + tx;
        if (p < pooled && f < fn) {
            T best;
            int best_tap;
            biased_window_relu_max(rows, b, t.img, f, p / pw, p % pw, fn, oh, ow, kh, kw, stride, pad, best,
                                   best_tap);
            best_tile[ty + k][tx] = best;
        }
    }
    __syncthreads();
    for (int k = 0; k < POOL_TILE; k += POOL_TILE_ROWS) {
        const int f = t.f0 + ty + k;
        const int p = t.p0 + tx;
        if (f < fn && p < pooled) {
            out[(t.img * fn + f) * pooled + p] = best_tile[tx][ty + k];
        }
    }
}

// maxpool_relu_backward: the mirror image of bias_relu_maxpool's tiles, over GEMM rows
// (N*OH*OW, FN) with p = y*OW + x: blocks of POOL_TILE x POOL_TILE_ROWS threads, a 1-D grid of
// N * ceil(FN / POOL_TILE) * ceil(OH*OW / POOL_TILE) blocks, block b taking image
// n = b / (f_tiles * p_tiles), filters f0 = ((b / p_tiles) % f_tiles) * POOL_TILE .. f0 + 31
// and pixels p0 = (b % p_tiles) * POOL_TILE .. p0 + 31 (clipped to FN and OH*OW); shared
// memory as bias_relu_maxpool's values. Thread (tx, ty) sums, for filter f0 + ty + k at pixel
// p0 + tx, dout over the pooled windows whose argmax names that pixel and whose output
// passed the ReLU (out > 0) (a gather, see common.cuh; a warp reads neighbouring pooled
// elements of one (n, f) plane) into tile[ty + k][tx]; after the barrier it writes
// drows[n*OH*OW + p0 + ty + k, f0 + tx] from tile[tx][ty + k] (32 consecutive filters of one
// row), for k = 0, POOL_TILE_ROWS, ... < POOL_TILE.
template <typename T>
__global__ void maxpool_relu_backward(const T* __restrict__ dout, const int* __restrict__ argmax,
                                      const T* __restrict__ out, T* __restrict__ drows, const int fn,
                                      const int oh, const int ow, const int kh, const int kw, const int stride,
                                      const int pad, const int ph, const int pw) {
    __shared__ T sum_tile[POOL_TILE][POOL_TILE + 1];
    const int pixels = oh * ow;
    const PoolTile t = pool_tile(fn, pixels);
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    for (int k = 0; k < POOL_TILE; k += POOL_TILE_ROWS) {
        const int f = t.f0 + ty + k;
        const int p = t.p0 + tx;
        if (f >= fn || p >= pixels) {
            continue;
        }
        const int plane = (t.img * fn + f) * (ph * pw);  // offset of the (n, f) pooled plane
        const int py = p / ow + pad;  // this pixel's padded row and column
        const int px = p % ow + pad;
        T sum = T(0);
        for (int ky = py % stride, pool_y = py / stride; ky < kh && pool_y >= 0; ky += stride, --pool_y) {
            if (pool_y >= ph) {
                continue;
            }
            for (int kx = px % stride, pool_x = px / stride; kx < kw && pool_x >= 0; kx += stride, --pool_x) {
                if (pool_x >= pw) {
                    continue;
                }
                // Every lane reads its three elements, so that a warp's reads stay neighbours
                // of one plane row; the sum takes dout only where the window's argmax names
                // this pixel and its output passed the ReLU.
                const int o = plane + pool_y * pw + pool_x;
                const bool hit = argmax[o] == ky * kw + kx;
                const T pooled = out[o];
                const T grad = dout[o];
                if (hit && pooled > T(0)) {
                    sum += grad;
                }
            }
        }
        sum_tile[ty + k][tx] = sum;
    }
    __syncthreads();
    for (int k = 0; k < POOL_TILE; k += POOL_TILE_ROWS) {
        const int p = t.p0 + ty + k;
        const int f = t.f0 + tx;
        if (p < pixels && f < fn) {
            drows[(t.img * pixels + p) * fn + f] = sum_tile[tx][ty + k];
        }
    }
}
