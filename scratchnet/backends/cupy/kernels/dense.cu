// Small dense products (the tutorial's linear layers), bias rows and column sums.
#include "common.cuh"

// c[r, j] = sum over k < inner of a[r*a_row + k*a_col] * b[k*b_row + j*b_col] (+ bias[j]), c row-major
// (rows, cols): one thread per output summing in k order. The strides (in elements) let either operand
// be read transposed.
template <typename real>
__global__ void matmul_direct(
    const real* __restrict__ a, const real* __restrict__ b, const real* __restrict__ bias, real* __restrict__ c,
    int rows, int cols, int inner, long long a_row, long long a_col, long long b_row, long long b_col, int has_bias)
{
    const long long total = (long long)rows * cols;
    FOR_EACH_INDEX(i, total) {
        const long long r = i / cols;
        const long long j = i % cols;
        const real* a_r = a + r * a_row;
        const real* b_j = b + j * b_col;
        real acc = 0;
        for (int k = 0; k < inner; ++k) acc += a_r[k * a_col] * b_j[k * b_row];
        c[i] = has_bias ? acc + bias[j] : acc;
    }
}

// y[r, j] += bias[j] for a row-major (rows, features) matrix.
template <typename real>
__global__ void add_bias_rows(real* __restrict__ y, const real* __restrict__ bias, long long total, int features)
{
    FOR_EACH_INDEX(i, total) {
        y[i] += bias[i % features];
    }
}

// out[e] = sum over r < count of src[e*element_stride + r*step]; one block of REDUCE_THREADS per e.
template <typename real>
__global__ void reduce_sum(
    const real* __restrict__ src, real* __restrict__ out, long long count, long long step, long long element_stride)
{
    __shared__ real partial[REDUCE_THREADS];
    const real* first = src + (long long)blockIdx.x * element_stride;
    real acc = 0;
    for (long long r = threadIdx.x; r < count; r += REDUCE_THREADS) acc += first[r * step];
    const real total = block_sum(acc, partial);
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}
