// Access patterns whose sector counts are known, for tests/test_coalescing.py.

// copy: one thread per element. Thread i writes out[i] = x[i]: each warp request of 32
// float lanes reads and writes 128 contiguous bytes, 4 sectors (the ideal).
template <typename T>
__global__ void copy(const T* __restrict__ x, T* __restrict__ out, const int total) {
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < total) {
        out[i] = x[i];
    }
}

// strided_read: one thread per output element. Thread i writes out[i] = x[i * 32]: each
// lane of a warp reads a float from its own 128-byte row, so a request touches 32 sectors.
template <typename T>
__global__ void strided_read(const T* __restrict__ x, T* __restrict__ out, const int total) {
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < total) {
        out[i] = x[i * 32];
    }
}

// row_sums: one thread per row of x (rows, 4). Thread i walks its row with a pointer,
// out[i] = sum of row[0 .. 3]; each of the 4 visits to the read is its own request.
template <typename T>
__global__ void row_sums(const T* __restrict__ x, T* __restrict__ out, const int rows) {
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= rows) {
        return;
    }
    const T* row = x + i * 4;
    T sum = T(0);
    for (int j = 0; j < 4; ++j) {
        sum += row[j];
    }
    out[i] = sum;
}
