// Layout changes between a convolution GEMM's rows (N*OH*OW, FN), in (n, oh, ow) order,
// and the NCHW tensor (N, FN, OH, OW). Image n's rows are a (P, FN) matrix, P = OH*OW, whose
// transpose is image n's (FN, P) block of the NCHW tensor; both kernels transpose it through
// a shared-memory tile, so that a warp reads and writes 32 consecutive elements of one row of
// either side (coalesced), where a one-thread-per-element copy strides one of the two by FN
// or by P. Values are copied, unchanged.
//
// Geometry (CudaKernels sets it): blocks of TILE x TILE_ROWS threads, a 1-D grid of
// N * ceil(FN / TILE) * ceil(P / TILE) blocks. Block b moves the tile of image
// n = b / (f_tiles * p_tiles), filters f0 = ((b / p_tiles) % f_tiles) * TILE .. f0 + TILE - 1,
// pixels p0 = (b % p_tiles) * TILE .. p0 + TILE - 1 (clipped to FN and P). Shared memory per
// block: TILE x (TILE + 1) elements, 4224 bytes for float and 8448 for double (the extra
// column keeps a tile column's 32 elements in 32 banks).
#include "common.cuh"

constexpr int TILE = 32;
constexpr int TILE_ROWS = 8;  // each thread moves TILE / TILE_ROWS elements

// The tile a block moves: image, first filter, first pixel (see the geometry above).
struct TransposeTile {
    int img, f0, p0;
};

__device__ __forceinline__ TransposeTile transpose_tile(const int fn, const int pixels) {
    const int p_tiles = (pixels + TILE - 1) / TILE;
    const int f_tiles = (fn + TILE - 1) / TILE;
    const int b = static_cast<int>(blockIdx.x);
    return {b / (f_tiles * p_tiles), ((b / p_tiles) % f_tiles) * TILE, (b % p_tiles) * TILE};
}

// rows_to_nchw: out[n, f, oh, ow] = y[(n*OH + oh)*OW + ow, f]. With p = oh*OW + ow, thread
// (tx, ty) of the block of tile (n, f0, p0) reads y[n*P + p0 + ty + k, f0 + tx] into
// tile[ty + k][tx], then, after the barrier, writes out[n, f0 + ty + k, p0 + tx] from
// tile[tx][ty + k], for k = 0, TILE_ROWS, ... < TILE.
template <typename T>
__global__ void rows_to_nchw(const T* __restrict__ y, T* __restrict__ out, const int fn, const int oh,
                             const int ow) {
    __shared__ T tile[TILE][TILE + 1];
    const int pixels = oh * ow;
    const TransposeTile t = transpose_tile(fn, pixels);
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    for (int k = 0; k < TILE; k += TILE_ROWS) {
        const int p = t.p0 + ty + k;
        const int f = t.f0 + tx;
        if (p < pixels && f < fn) {
            tile[ty + k][tx] = y[(t.img * pixels + p) * fn + f];
        }
    }
    __syncthreads();
    for (int k = 0; k < TILE; k += TILE_ROWS) {
        const int f = t.f0 + ty + k;
        const int p = t.p0 + tx;
        if (f < fn && p < pixels) {
            out[(t.img * fn + f) * pixels + p] = tile[tx][ty + k];
        }
    }
}

// nchw_to_rows: rows[(n*OH + oh)*OW + ow, f] = dout[n, f, oh, ow]. With p = oh*OW + ow, thread
// (tx, ty) of the block of tile (n, f0, p0) reads dout[n, f0 + ty + k, p0 + tx] into
// tile[ty + k][tx], then, after the barrier, writes rows[n*P + p0 + ty + k, f0 + tx] from
// tile[tx][ty + k], for k = 0, TILE_ROWS, ... < TILE.
template <typename T>
__global__ void nchw_to_rows(const T* __restrict__ dout, T* __restrict__ rows, const int fn, const int oh,
                             const int ow) {
    __shared__ T tile[TILE][TILE + 1];
    const int pixels = oh * ow;
    const TransposeTile t = transpose_tile(fn, pixels);
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    for (int k = 0; k < TILE; k += TILE_ROWS) {
        const int f = t.f0 + ty + k;
        const int p = t.p0 + tx;
        if (f < fn && p < pixels) {
            tile[ty + k][tx] = dout[(t.img * fn + f) * pixels + p];
        }
    }
    __syncthreads();
    for (int k = 0; k < TILE; k += TILE_ROWS) {
        const int p = t.p0 + ty + k;
        const int f = t.f0 + tx;
        if (p < pixels && f < fn) {
            rows[(t.img * pixels + p) * fn + f] = tile[tx][ty + k];
        }
    }
}
