// Cooperative kernels of the tests (tests/test_emu_cooperative.py): shared memory, block
// barriers, warp shuffles and votes, as a GPU runs them; and kernels that miss a barrier, skip
// one in some threads or leave lanes out of a shuffle, for the emulation to report. Each is a
// template over the element type, as CudaSource instantiates it (<float> and <double>).

constexpr int TILE = 32;
constexpr int TILE_ROWS = 8;  // a block is TILE x TILE_ROWS threads; each moves TILE / TILE_ROWS elements

// transpose: out (cols, rows) = in (rows, cols)^T through a TILE x (TILE + 1) shared tile (the
// extra column keeps a column's reads off one bank). Block (bx, by) moves the tile of rows
// by*TILE .. +TILE and columns bx*TILE .. +TILE; thread (tx, ty) reads in[by*TILE + ty + k][bx*TILE + tx]
// and writes out[bx*TILE + ty + k][by*TILE + tx], for k = 0, TILE_ROWS, ...
template <typename T>
__global__ void transpose(const T* __restrict__ in, T* __restrict__ out, const int rows, const int cols) {
    __shared__ T tile[TILE][TILE + 1];
    const int x = blockIdx.x * TILE + threadIdx.x;
    const int y = blockIdx.y * TILE + threadIdx.y;
    for (int k = 0; k < TILE; k += TILE_ROWS) {
        if (x < cols && y + k < rows) {
            tile[threadIdx.y + k][threadIdx.x] = in[(y + k) * cols + x];
        }
    }
    __syncthreads();
    const int out_x = blockIdx.y * TILE + threadIdx.x;
    const int out_y = blockIdx.x * TILE + threadIdx.y;
    for (int k = 0; k < TILE; k += TILE_ROWS) {
        if (out_x < rows && out_y + k < cols) {
            out[(out_y + k) * rows + out_x] = tile[threadIdx.x][threadIdx.y + k];
        }
    }
}

// transpose_without_barrier: transpose with its __syncthreads() left out, so that a thread
// may read a tile element before the thread that writes it has written it.
template <typename T>
__global__ void transpose_without_barrier(const T* __restrict__ in, T* __restrict__ out, const int rows,
                                          const int cols) {
    __shared__ T tile[TILE][TILE + 1];
    const int x = blockIdx.x * TILE + threadIdx.x;
    const int y = blockIdx.y * TILE + threadIdx.y;
    for (int k = 0; k < TILE; k += TILE_ROWS) {
        if (x < cols && y + k < rows) {
            tile[threadIdx.y + k][threadIdx.x] = in[(y + k) * cols + x];
        }
    }
    const int out_x = blockIdx.y * TILE + threadIdx.x;
    const int out_y = blockIdx.x * TILE + threadIdx.y;
    for (int k = 0; k < TILE; k += TILE_ROWS) {
        if (out_x < rows && out_y + k < cols) {
            out[(out_y + k) * rows + out_x] = tile[threadIdx.x][threadIdx.y + k];
        }
    }
}

// block_sum: one sum per block, out[b] = the sum of x[i] over i = b*blockDim.x*items + j for
// j in 0 .. blockDim.x*items - 1 (and i < n). Thread t adds its items, strided by blockDim.x;
// each warp sums its lanes by __shfl_down_sync into lane 0, which leaves the warp's sum in
// partial[warp]; after the barrier the first warp sums the partials by __shfl_xor_sync.
// blockDim.x is a multiple of 32, at most 1024.
template <typename T>
__global__ void block_sum(const T* __restrict__ x, T* __restrict__ out, const int n, const int items) {
    __shared__ T partial[32];
    const int lane = threadIdx.x % warpSize;
    const int warp = threadIdx.x / warpSize;
    const int start = blockIdx.x * blockDim.x * items + threadIdx.x;
    T sum = T(0);
    for (int k = 0; k < items; ++k) {
        const int i = start + k * blockDim.x;
        if (i < n) {
            sum += x[i];
        }
    }
    for (int offset = warpSize / 2; offset > 0; offset /= 2) {
        sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
        partial[warp] = sum;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x / warpSize;
        T total = lane < warps ? partial[lane] : T(0);
        for (int mask = warpSize / 2; mask > 0; mask /= 2) {
            total += __shfl_xor_sync(0xffffffffu, total, mask);
        }
        if (lane == 0) {
            out[blockIdx.x] = total;
        }
    }
}

// warp_votes: thread i (one block) writes 7 ints to out[7*i ..]: its warp's ballot of
// x[i] > 0, __any_sync and __all_sync of it, the block's __syncthreads_count, _and and _or
// of it, and the inclusive prefix sum over its warp of (x[i] > 0) by __shfl_up_sync, taken
// in segments of 8 lanes (width 8).
template <typename T>
__global__ void warp_votes(const T* __restrict__ x, int* __restrict__ out) {
    const int i = threadIdx.x;
    const int positive = x[i] > T(0);
    const unsigned ballot = __ballot_sync(0xffffffffu, positive);
    const int any = __any_sync(0xffffffffu, positive);
    const int all = __all_sync(0xffffffffu, positive);
    const int count = __syncthreads_count(positive);
    const int block_all = __syncthreads_and(positive);
    const int block_any = __syncthreads_or(positive);
    int scan = positive;
    for (int delta = 1; delta < 8; delta *= 2) {
        const int before = __shfl_up_sync(0xffffffffu, scan, delta, 8);
        if (i % 8 >= delta) {
            scan += before;
        }
    }
    out[7 * i + 0] = static_cast<int>(ballot);
    out[7 * i + 1] = any;
    out[7 * i + 2] = all;
    out[7 * i + 3] = count;
    out[7 * i + 4] = block_all;
    out[7 * i + 5] = block_any;
    out[7 * i + 6] = scan;
}

// reverse_early_exit: reverses x[0 .. n-1] in place through shared memory, one element per
// thread, but the threads at i >= n return before the barrier that the others wait at.
template <typename T>
__global__ void reverse_early_exit(T* __restrict__ x, const int n) {
    __shared__ T buffer[1024];
    const int i = threadIdx.x;
    if (i >= n) {
        return;
    }
    buffer[i] = x[i];
    __syncthreads();
    x[i] = buffer[n - 1 - i];
}

// half_warp_shuffle: the lanes below 16 shuffle with a full-warp mask that lanes 16..31,
// having returned, never join.
template <typename T>
__global__ void half_warp_shuffle(T* __restrict__ x) {
    const int lane = threadIdx.x % warpSize;
    if (lane >= 16) {
        return;
    }
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
}

// warp_rotate: x[i] = x[i - i%32 + (i + 1)%32], each warp rotated by one lane through shared
// memory. With sync != 0 a __syncwarp() orders the lanes' writes before their reads; with
// sync == 0 nothing does, and a lane may read its neighbour's element before it is written.
template <typename T>
__global__ void warp_rotate(T* __restrict__ x, const int sync) {
    __shared__ T staging[1024];
    const int i = threadIdx.x;
    const int lane = i % warpSize;
    staging[i] = x[i];
    if (sync) {
        __syncwarp();
    }
    x[i] = staging[i - lane + (lane + 1) % warpSize];
}
