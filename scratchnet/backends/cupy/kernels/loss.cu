// Cross-entropy with torch's options: one thread per row, one block to reduce, one thread per gradient.
// Row r's loss is -sum_k coefficients[r, k] * log_softmax[r, k] (see the NumPy reference).
#include "common.cuh"

template <typename real>
__global__ void cross_entropy_rows(
    const real* __restrict__ logits, const long long* __restrict__ labels, const real* __restrict__ target,
    const real* __restrict__ class_weight, real* __restrict__ probs, real* __restrict__ coefficients,
    real* __restrict__ row_loss, real* __restrict__ row_denominator, int rows, int classes,
    long long ignore_index, real smoothing, int has_target)
{
    FOR_EACH_INDEX(r, (long long)rows) {
        const real* z = logits + r * classes;
        real peak = z[0];
        for (int k = 1; k < classes; ++k) if (z[k] > peak || isnan(z[k])) peak = z[k];
        real exp_sum = 0;
        for (int k = 0; k < classes; ++k) exp_sum += exp(z[k] - peak);
        const real log_sum_exp = log(exp_sum);
        const real spread = smoothing / classes;
        real* a = coefficients + r * classes;
        real denominator = 1;
        if (has_target) {
            for (int k = 0; k < classes; ++k) a[k] = (target[r * classes + k] * (1 - smoothing) + spread) * class_weight[k];
        } else {
            const long long label = labels[r];
            const bool counted = label != ignore_index;
            for (int k = 0; k < classes; ++k) a[k] = counted ? spread * class_weight[k] : (real)0;
            if (counted) a[label] += (1 - smoothing) * class_weight[label];
            denominator = counted ? class_weight[label] : (real)0;
        }
        real loss = 0;
        for (int k = 0; k < classes; ++k) {
            const real log_prob = z[k] - peak - log_sum_exp;
            probs[r * classes + k] = exp(log_prob);
            if (a[k] != (real)0) loss -= a[k] * log_prob;  // 0 * -inf counts 0, as in torch
        }
        row_loss[r] = loss;
        row_denominator[r] = denominator;
    }
}

// One block of REDUCE_THREADS: the summed row losses over ``divisor``, the summed row denominators for
// 'mean' (torch's weighted mean; 0 / 0 = NaN when every row is ignored, as in torch) or 1 for 'sum'.
template <typename real>
__global__ void cross_entropy_reduce(
    const real* __restrict__ row_loss, const real* __restrict__ row_denominator, real* __restrict__ loss,
    real* __restrict__ divisor, int rows, int mean)
{
    __shared__ real partial[REDUCE_THREADS];
    real loss_part = 0, denominator_part = 0;
    for (int r = threadIdx.x; r < rows; r += REDUCE_THREADS) {
        loss_part += row_loss[r];
        denominator_part += row_denominator[r];
    }
    const real total = block_sum(loss_part, partial);
    __syncthreads();  // every thread has read the first sum before the second overwrites it
    const real denominator = block_sum(denominator_part, partial);
    if (threadIdx.x == 0) {
        divisor[0] = mean ? denominator : (real)1;
        loss[0] = total / divisor[0];
    }
}

// grad = (probs * sum_k coefficients - coefficients) * scale[row]; softmax * 0 on a row without weight
// (ignored: 0, NaN where the softmax is), even where the scale is infinite because every row is ignored,
// as in torch.
template <typename real>
__global__ void cross_entropy_rows_backward(
    const real* __restrict__ probs, const real* __restrict__ coefficients, const real* __restrict__ scale,
    real* __restrict__ grad, int rows, int classes)
{
    FOR_EACH_INDEX(i, (long long)rows * classes) {
        const long long r = i / classes;
        real total = 0;
        for (int k = 0; k < classes; ++k) total += coefficients[r * classes + k];
        grad[i] = total != (real)0 ? (probs[i] * total - coefficients[i]) * scale[r] : probs[i] * (real)0;
    }
}
