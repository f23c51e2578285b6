// The direct convolution of a first layer, fused with its bias, ReLU and max pooling, and the
// gradients of its weights and bias: no column matrix. The convolution's output at
// (n, f, y, x) is the sum, from zero and in (c, fy, fx) order, of w[f, c, fy, fx] times the
// input pixel (y*stride - pad + fy, x*stride - pad + fx) (zero in the padding), plus b[f]
// after the sum, as the GEMM's rows plus the bias. The pooling follows gpucnn.kernels: KH x KW
// windows, pool_stride apart, shifted by pool_pad; argmax is the window-local index
// ky*KW + kx of the first maximum; pool pad cells are never picked; a NaN window gives NaN.
//
// Tiles. Both kernels work on tiles of TILE_PH x TILE_PW pooled pixels of one image, and read
// the input through a shared-memory copy of the pixels a tile's windows read: the block's
// threads copy them lane after lane along input rows (a warp reads consecutive addresses),
// and every tap is then read from the copy. Pooled rows py0 .. py0 + R - 1 (R of them, the
// tile's rows clipped to PH) pool the convolution rows from oy0 = py0*pool_stride - pool_pad
// (pool pad cells included), which read ((R - 1)*pool_stride + KH - 1)*stride + FH input rows
// from oy0*stride - pad; columns likewise. The copy holds those rows and columns of every
// channel, zero outside the image: C x rows x cols elements, at most DIRECT_TILE.
//
// Geometry (CudaKernels sets it): blocks of DIRECT_THREADS threads, a 1-D grid; TILE_PH and
// TILE_PW are chosen so that TILE_PH*TILE_PW <= DIRECT_THREADS and a full tile's copy fits
// DIRECT_TILE elements; C*FH*FW <= DIRECT_MAX_TAPS. Thread t of a block takes the tile's
// pooled pixel (py0 + t / TILE_PW, px0 + t % TILE_PW) when t < TILE_PH*TILE_PW and the pixel
// lies inside the PH x PW output. Shared memory per block: DIRECT_TILE elements for the input
// (16 KiB for float, 32 KiB for double), and the forward's DIRECT_FILTERS x (DIRECT_MAX_TAPS + 1)
// filter elements or the backward's (DIRECT_THREADS / 32) x (DIRECT_MAX_TAPS + 1) warp sums.
#include "common.cuh"

constexpr int DIRECT_THREADS = 256;  // threads per block: whole warps
constexpr int DIRECT_TILE = 4096;  // elements of the input copy
constexpr int DIRECT_FILTERS = 8;  // filters per forward block
constexpr int DIRECT_MAX_TAPS = 32;  // C*FH*FW at most (CudaKernels.direct_conv_max_taps)
constexpr int DIRECT_WARPS = DIRECT_THREADS / WARP_SIZE;

// The input a tile of pooled pixels reads (see Tiles above).
struct InputTile {
    int oy0, ox0;  // the first convolution row and column the tile's windows cover
    int rows, cols;  // input rows and columns of the copy, from (oy0*stride - pad, ox0*stride - pad)
};

// The input of the tile whose first pooled pixel is (py0, px0), its rows and columns clipped
// to the PH x PW output.
__device__ __forceinline__ InputTile input_tile(const int py0, const int px0, const int tile_ph, const int tile_pw,
                                                const int ph, const int pw, const int fh, const int fw,
                                                const int stride, const int kh, const int kw, const int pool_stride,
                                                const int pool_pad) {
    const int pooled_rows = ph - py0 < tile_ph ? ph - py0 : tile_ph;
    const int pooled_cols = pw - px0 < tile_pw ? pw - px0 : tile_pw;
    return {py0 * pool_stride - pool_pad, px0 * pool_stride - pool_pad,
            ((pooled_rows - 1) * pool_stride + kh - 1) * stride + fh,
            ((pooled_cols - 1) * pool_stride + kw - 1) * stride + fw};
}

// Copies the input of image img that tile t reads into copy[(ch*rows + r)*cols + q] =
// x[img, ch, oy0*stride - pad + r, ox0*stride - pad + q] (zero outside the image), element k by
// thread k, k + blockDim.x, ...: a warp copies consecutive pixels of input rows. Called by
// every thread of the block, between barriers.
template <typename T, typename Copy>
__device__ __forceinline__ void copy_input(Copy& copy, const T* __restrict__ x, const int img, const int c,
                                           const int h, const int wd, const int stride, const int pad,
                                           const InputTile& t) {
    const int y0 = t.oy0 * stride - pad;
    const int x0 = t.ox0 * stride - pad;
    const int size = c * t.rows * t.cols;
    for (int k = static_cast<int>(threadIdx.x); k < size; k += static_cast<int>(blockDim.x)) {
        const int in_y = y0 + (k / t.cols) % t.rows;
        const int in_x = x0 + k % t.cols;
        const int ch = k / (t.cols * t.rows);
        const bool inside = 0 <= in_y && in_y < h && 0 <= in_x && in_x < wd;
        // a pad cell is a zero, as im2col's zero column entry is
        copy[k] = inside ? x[((img * c + ch) * h + in_y) * wd + in_x] : T(0);
    }
}

// The convolution's output at (out_y, out_x) of the tile t, from the input copy and filter j of
// the block (filters[j][0 .. C*FH*FW) its taps in (c, fy, fx) order, filters[j][DIRECT_MAX_TAPS]
// its bias): the taps summed from zero in (c, fy, fx) order, then the bias added.
template <typename T, typename Copy, typename Filters>
__device__ __forceinline__ T tile_conv(Copy& copy, Filters& filters, const int j, const InputTile& t, const int c,
                                       const int fh, const int fw, const int stride, const int out_y,
                                       const int out_x) {
    const int r0 = (out_y - t.oy0) * stride;  // the copy's row and column of tap (0, 0)
    const int q0 = (out_x - t.ox0) * stride;
    T sum = T(0);
    for (int ch = 0; ch < c; ++ch) {
        for (int fy = 0; fy < fh; ++fy) {
            const int row = (ch * t.rows + r0 + fy) * t.cols + q0;
            for (int fx = 0; fx < fw; ++fx) {
                const T v = copy[row + fx];
                sum += filters[j][(ch * fh + fy) * fw + fx] * v;
            }
        }
    }
    return sum + filters[j][DIRECT_MAX_TAPS];
}

// The forward block b of a 1-D grid of N * ceil(PH / TILE_PH) * ceil(PW / TILE_PW) *
// ceil(FN / DIRECT_FILTERS) blocks: image, tile row, tile column and filter group, the group
// fastest. It copies its tile's input and filters f0 .. f0 + DIRECT_FILTERS - 1 (clipped to FN)
// with their biases; after the barrier thread t, for each of those filters f in order,
// computes the convolution at each real cell of its pooled pixel's window from the copy and
// calls write(i, maximum, argmax) for pooled element i = ((n*FN + f)*PH + py)*PW + px.
template <typename T, typename Copy, typename Filters, typename Write>
__device__ __forceinline__ void conv_pool_tile(Copy& copy, Filters& filters, const T* __restrict__ x,
                                               const T* __restrict__ w, const T* __restrict__ b, const int fn,
                                               const int c, const int h, const int wd, const int fh, const int fw,
                                               const int stride, const int pad, const int oh, const int ow,
                                               const int kh, const int kw, const int pool_stride,
                                               const int pool_pad, const int ph, const int pw, const int tile_ph,
                                               const int tile_pw, const Write& write) {
    const int groups = (fn + DIRECT_FILTERS - 1) / DIRECT_FILTERS;
    const int tiles_x = (pw + tile_pw - 1) / tile_pw;
    const int tiles_y = (ph + tile_ph - 1) / tile_ph;
    const int block = static_cast<int>(blockIdx.x);
    const int f0 = (block % groups) * DIRECT_FILTERS;
    const int px0 = (block / groups % tiles_x) * tile_pw;
    const int py0 = (block / (groups * tiles_x) % tiles_y) * tile_ph;
    const int img = block / (groups * tiles_x * tiles_y);
    const InputTile t = input_tile(py0, px0, tile_ph, tile_pw, ph, pw, fh, fw, stride, kh, kw, pool_stride, pool_pad);
    const int filter_count = fn - f0 < DIRECT_FILTERS ? fn - f0 : DIRECT_FILTERS;
    const int taps = c * fh * fw;

    copy_input(copy, x, img, c, h, wd, stride, pad, t);
    for (int k = static_cast<int>(threadIdx.x); k < filter_count * taps; k += static_cast<int>(blockDim.x)) {
        filters[k / taps][k % taps] = w[f0 * taps + k];  // the group's filters are consecutive in w
    }
    for (int k = static_cast<int>(threadIdx.x); k < filter_count; k += static_cast<int>(blockDim.x)) {
        filters[k][DIRECT_MAX_TAPS] = b[f0 + k];
    }
    __syncthreads();

    const int tid = static_cast<int>(threadIdx.x);
    const int py = py0 + tid / tile_pw;
    const int px = px0 + tid % tile_pw;
    if (tid >= tile_ph * tile_pw || py >= ph || px >= pw) {
        return;
    }
    for (int j = 0; j < filter_count; ++j) {
        T best;
        int best_tap;
        const auto conv = [&](int out_y, int out_x) {
            return tile_conv<T>(copy, filters, j, t, c, fh, fw, stride, out_y, out_x);
        };
        window_max(conv, py, px, oh, ow, kh, kw, pool_stride, pool_pad, best, best_tap);
        write(((img * fn + f0 + j) * ph + py) * pw + px, best, best_tap);
    }
}

// conv_bias_relu_maxpool: blocks of input tiles (see conv_pool_tile). Thread t of the block
// of tile (n, py0, px0) and filters f0 .. writes, for each filter f, out[i] = max(window
// maximum, 0) and argmax[i] of its pooled element i = ((n*FN + f)*PH + py)*PW + px. The
// convolution's output is never stored.
template <typename T>
__global__ void conv_bias_relu_maxpool(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                       T* __restrict__ out, int* __restrict__ argmax, const int fn, const int c,
                                       const int h, const int wd, const int fh, const int fw, const int stride,
                                       const int pad, const int oh, const int ow, const int kh, const int kw,
                                       const int pool_stride, const int pool_pad, const int ph, const int pw,
                                       const int tile_ph, const int tile_pw) {
    __shared__ T copy[DIRECT_TILE];
    __shared__ T filters[DIRECT_FILTERS][DIRECT_MAX_TAPS + 1];
    conv_pool_tile(copy, filters, x, w, b, fn, c, h, wd, fh, fw, stride, pad, oh, ow, kh, kw, pool_stride, pool_pad,
                   ph, pw, tile_ph, tile_pw, [out, argmax](int i, T best, int best_tap) {
                       out[i] = best < T(0) ? T(0) : best;  // not 'best > 0 ? best : 0', which would turn NaN into 0
                       argmax[i] = best_tap;
                   });
}

// conv_bias_relu_maxpool_infer: as conv_bias_relu_maxpool, writing out[i] only: inference
// keeps no argmax.
template <typename T>
__global__ void conv_bias_relu_maxpool_infer(const T* __restrict__ x, const T* __restrict__ w,
                                             const T* __restrict__ b, T* __restrict__ out, const int fn,
                                             const int c, const int h, const int wd, const int fh, const int fw,
                                             const int stride, const int pad, const int oh, const int ow,
                                             const int kh, const int kw, const int pool_stride, const int pool_pad,
                                             const int ph, const int pw, const int tile_ph, const int tile_pw) {
    __shared__ T copy[DIRECT_TILE];
    __shared__ T filters[DIRECT_FILTERS][DIRECT_MAX_TAPS + 1];
    conv_pool_tile(copy, filters, x, w, b, fn, c, h, wd, fh, fw, stride, pad, oh, ow, kh, kw, pool_stride, pool_pad,
                   ph, pw, tile_ph, tile_pw,
                   [out](int i, T best, int) { out[i] = best < T(0) ? T(0) : best; });
}

// conv_maxpool_relu_backward_params: one block per filter f, a 1-D grid of FN blocks. The
// block walks images n = 0 .. N-1 and, in each, its tiles row by row; per tile it copies the
// input (after a barrier, so that the previous tile is read out), and after the barrier
// thread t takes its pooled element o = ((n*FN + f)*PH + py)*PW + px (neighbouring threads,
// neighbouring elements of one plane). If its output passed the ReLU (out[o] > 0), the
// thread adds dout[o] to its bias sum and dout[o] times the input pixel each tap (c, fy, fx)
// read for the convolution output that argmax[o] names (zero in the padding) to that tap's
// sum (an argmax outside the window adds to no tap). Then, for each tap and the bias in
// order, a butterfly of warp shuffles sums the lanes, and after the barrier thread k sums
// the DIRECT_THREADS / 32 warps' sums, in warp order, into dw[f, k] (k < C*FH*FW, in
// (c, fy, fx) order) or db[f] (k = C*FH*FW). No atomics: the same sums on every run.
template <typename T>
__global__ void conv_maxpool_relu_backward_params(const T* __restrict__ dout, const int* __restrict__ argmax,
                                                  const T* __restrict__ out, const T* __restrict__ x,
                                                  T* __restrict__ dw, T* __restrict__ db, const int n,
                                                  const int fn, const int c, const int h, const int wd,
                                                  const int fh, const int fw, const int stride, const int pad,
                                                  const int kh, const int kw, const int pool_stride,
                                                  const int pool_pad, const int ph, const int pw, const int tile_ph,
                                                  const int tile_pw) {
    __shared__ T copy[DIRECT_TILE];
    __shared__ T warp_sums[DIRECT_WARPS][DIRECT_MAX_TAPS + 1];
    const int f = static_cast<int>(blockIdx.x);
    const int tid = static_cast<int>(threadIdx.x);
    const int taps = c * fh * fw;
    const int tiles_x = (pw + tile_pw - 1) / tile_pw;
    const int tiles_y = (ph + tile_ph - 1) / tile_ph;

    T sums[DIRECT_MAX_TAPS + 1];  // the taps' sums in (c, fy, fx) order, then the bias's
    for (int k = 0; k <= taps; ++k) {
        sums[k] = T(0);
    }
    for (int step = 0; step < n * tiles_y * tiles_x; ++step) {
        const int img = step / (tiles_y * tiles_x);
        const int py0 = (step / tiles_x % tiles_y) * tile_ph;
        const int px0 = (step % tiles_x) * tile_pw;
        const InputTile t =
            input_tile(py0, px0, tile_ph, tile_pw, ph, pw, fh, fw, stride, kh, kw, pool_stride, pool_pad);
        __syncthreads();
        copy_input(copy, x, img, c, h, wd, stride, pad, t);
        __syncthreads();

        const int py = py0 + tid / tile_pw;
        const int px = px0 + tid % tile_pw;
        if (tid >= tile_ph * tile_pw || py >= ph || px >= pw) {
            continue;
        }
        // Every lane reads its three elements, so that a warp's reads stay neighbours of one
        // plane; only an output that passed the ReLU adds (a NaN output passes nothing).
        const int o = ((img * fn + f) * ph + py) * pw + px;
        const T pooled = out[o];
        const T grad = dout[o];
        const int tap = argmax[o];
        if (!(pooled > T(0))) {
            continue;
        }
        sums[taps] += grad;
        if (tap < 0 || tap >= kh * kw) {
            continue;
        }
        const int r0 = ((py - py0) * pool_stride + tap / kw) * stride;  // the copy's row and column of tap (0, 0)
        const int q0 = ((px - px0) * pool_stride + tap % kw) * stride;
        for (int ch = 0; ch < c; ++ch) {
            for (int fy = 0; fy < fh; ++fy) {
                const int row = (ch * t.rows + r0 + fy) * t.cols + q0;
                for (int fx = 0; fx < fw; ++fx) {
                    const T v = copy[row + fx];
                    sums[(ch * fh + fy) * fw + fx] += grad * v;
                }
            }
        }
    }

    const int lane = tid % WARP_SIZE;
    const int warp = tid / WARP_SIZE;
    for (int k = 0; k <= taps; ++k) {
        const T total = warp_sum(sums[k]);
        if (lane == 0) {
            warp_sums[warp][k] = total;
        }
    }
    __syncthreads();
    if (tid <= taps) {
        T sum = T(0);
        for (int k = 0; k < DIRECT_WARPS; ++k) {
            sum += warp_sums[k][tid];
        }
        if (tid < taps) {
            dw[f * taps + tid] = sum;
        } else {
            db[f] = sum;
        }
    }
}
