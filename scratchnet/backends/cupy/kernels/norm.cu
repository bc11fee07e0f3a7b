// Batch norm over every axis but the channels of (N, C, spatial) arrays: per-channel statistics by one
// block of REDUCE_THREADS each (a fixed tree order: runs repeat bit for bit), element-wise transforms.
#include "common.cuh"

// Channel blockIdx.x's batch mean and 1 / sqrt(biased variance + eps); with update, the running mean and
// (unbiased) variance move by momentum toward them.
template <typename real>
__global__ void batch_norm_stats(
    const real* __restrict__ x, real* __restrict__ mean, real* __restrict__ invstd, real* __restrict__ running_mean,
    real* __restrict__ running_var, int n, int c, long long spatial, real eps, real momentum,
    real one_minus_momentum, int update)
{
    __shared__ real partial[REDUCE_THREADS];
    const int ch = blockIdx.x;
    const long long count = (long long)n * spatial;
    real acc = 0;
    for (long long k = threadIdx.x; k < count; k += REDUCE_THREADS) acc += x[((k / spatial) * c + ch) * spatial + k % spatial];
    const real channel_mean = block_sum(acc, partial) / (real)count;
    __syncthreads();  // every thread has read the sum before the next one overwrites it
    acc = 0;
    for (long long k = threadIdx.x; k < count; k += REDUCE_THREADS) {
        const real centered = x[((k / spatial) * c + ch) * spatial + k % spatial] - channel_mean;
        acc += centered * centered;
    }
    const real squares = block_sum(acc, partial);
    if (threadIdx.x == 0) {
        mean[ch] = channel_mean;
        invstd[ch] = (real)1 / sqrt(squares / (real)count + eps);
        if (update) {
            running_mean[ch] = running_mean[ch] * one_minus_momentum + momentum * channel_mean;
            running_var[ch] = running_var[ch] * one_minus_momentum + momentum * (squares / (real)(count - 1));
        }
    }
}

// Evaluation: 1 / sqrt(running variance + eps) per channel.
template <typename real>
__global__ void batch_norm_invstd(const real* __restrict__ var, real* __restrict__ invstd, int c, real eps)
{
    FOR_EACH_INDEX(ch, (long long)c) {
        invstd[ch] = (real)1 / sqrt(var[ch] + eps);
    }
}

// y = x * alpha + beta with alpha = invstd * weight, beta = bias - mean * alpha, as torch.
template <typename real>
__global__ void batch_norm_transform(
    const real* __restrict__ x, real* __restrict__ y, const real* __restrict__ mean, const real* __restrict__ invstd,
    const real* __restrict__ weight, const real* __restrict__ bias, int c, long long spatial, long long total,
    int has_weight, int has_bias)
{
    FOR_EACH_INDEX(i, total) {
        const int ch = (int)((i / spatial) % c);
        const real alpha = has_weight ? invstd[ch] * weight[ch] : invstd[ch];
        const real beta = has_bias ? bias[ch] - mean[ch] * alpha : -mean[ch] * alpha;
        y[i] = x[i] * alpha + beta;
    }
}

// Channel blockIdx.x's sum of grad_y and of (x - mean) * grad_y; adds dot * invstd into grad_weight and the
// sum into grad_bias (when given), and keeps both for the input gradient.
template <typename real>
__global__ void batch_norm_backward_reduce(
    const real* __restrict__ x, const real* __restrict__ grad_y, const real* __restrict__ mean,
    const real* __restrict__ invstd, real* __restrict__ grad_sum, real* __restrict__ dot, real* __restrict__ grad_weight,
    real* __restrict__ grad_bias, int n, int c, long long spatial, int has_weight, int has_bias)
{
    __shared__ real partial[REDUCE_THREADS];
    const int ch = blockIdx.x;
    const long long count = (long long)n * spatial;
    real sum_part = 0, dot_part = 0;
    for (long long k = threadIdx.x; k < count; k += REDUCE_THREADS) {
        const long long at = ((k / spatial) * c + ch) * spatial + k % spatial;
        sum_part += grad_y[at];
        dot_part += (x[at] - mean[ch]) * grad_y[at];
    }
    const real sum = block_sum(sum_part, partial);
    __syncthreads();  // every thread has read the first sum before the second overwrites it
    const real product = block_sum(dot_part, partial);
    if (threadIdx.x == 0) {
        grad_sum[ch] = sum;
        dot[ch] = product;
        if (has_weight) grad_weight[ch] += product * invstd[ch];
        if (has_bias) grad_bias[ch] += sum;
    }
}

// grad_x: through the batch statistics (batch_stats) or with the running ones fixed.
template <typename real>
__global__ void batch_norm_backward_input(
    const real* __restrict__ x, const real* __restrict__ grad_y, const real* __restrict__ mean,
    const real* __restrict__ invstd, const real* __restrict__ weight, const real* __restrict__ grad_sum,
    const real* __restrict__ dot, real* __restrict__ grad_x, int c, long long spatial, long long total, real count,
    int has_weight, int batch_stats)
{
    FOR_EACH_INDEX(i, total) {
        const int ch = (int)((i / spatial) % c);
        const real scale = has_weight ? invstd[ch] * weight[ch] : invstd[ch];
        if (!batch_stats) { grad_x[i] = grad_y[i] * scale; continue; }
        const real projection = (x[i] - mean[ch]) * (dot[ch] * invstd[ch] * invstd[ch] / count);
        grad_x[i] = (grad_y[i] - grad_sum[ch] / count - projection) * scale;
    }
}
