"""CUDA C++ for the general convolution, max-pool and cross-entropy of the cupy backend
(the tutorial's geometry keeps the kernels of ``cuda_sources``; every cross-entropy runs here).

The kernels extend ``cuda_sources`` (whose ``real`` typedef and ``FOR_EACH_INDEX`` they use)
to any stride, padding, dilation and groups, pool padding, dilation and ceil mode, and
torch's cross-entropy options. Like the rest they gather: one thread per output element,
no atomics, so runs repeat bit for bit.
"""

from scratchnet.backends.cupy import cuda_sources

_BODY = r"""
// ---- general convolution and max-pool: any stride, padding, dilation, groups ----------
// One thread per output element, so no atomics; the padding is given as the top and left
// offsets (the bottom and right padding only decide the output size).

extern "C" __global__ void conv2d_forward_general(
    const real* __restrict__ x, const real* __restrict__ weight, const real* __restrict__ bias,
    real* __restrict__ y, int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow,
    int stride_h, int stride_w, int pad_top, int pad_left, int dilation_h, int dilation_w, int groups, int has_bias)
{
    const int group_c = c / groups, group_o = o / groups;
    const long long total = (long long)n * o * oh * ow;
    FOR_EACH_INDEX(i, total) {
        const int col = (int)(i % ow);
        const int row = (int)((i / ow) % oh);
        const int out_ch = (int)((i / ((long long)ow * oh)) % o);
        const int img = (int)(i / ((long long)ow * oh * o));
        const int first_c = (out_ch / group_o) * group_c;
        real acc = 0;
        for (int ch = 0; ch < group_c; ++ch) {
            const real* plane = x + ((long long)img * c + first_c + ch) * h * w;
            const real* taps = weight + ((long long)out_ch * group_c + ch) * kh * kw;
            for (int ki = 0; ki < kh; ++ki) {
                const int iy = row * stride_h - pad_top + ki * dilation_h;
                if (iy < 0 || iy >= h) continue;
                for (int kj = 0; kj < kw; ++kj) {
                    const int ix = col * stride_w - pad_left + kj * dilation_w;
                    if (ix < 0 || ix >= w) continue;
                    acc += plane[(long long)iy * w + ix] * taps[ki * kw + kj];
                }
            }
        }
        y[i] = has_bias ? acc + bias[out_ch] : acc;
    }
}

// grad_x[img, ch, iy, ix]: the outputs of ch's group whose taps read that pixel.
extern "C" __global__ void conv2d_grad_input_general(
    const real* __restrict__ grad_y, const real* __restrict__ weight, real* __restrict__ grad_x,
    int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow,
    int stride_h, int stride_w, int pad_top, int pad_left, int dilation_h, int dilation_w, int groups)
{
    const int group_c = c / groups, group_o = o / groups;
    const long long total = (long long)n * c * h * w;
    FOR_EACH_INDEX(i, total) {
        const int ix = (int)(i % w);
        const int iy = (int)((i / w) % h);
        const int ch = (int)((i / ((long long)w * h)) % c);
        const int img = (int)(i / ((long long)w * h * c));
        const int group = ch / group_c;
        real acc = 0;
        for (int ki = 0; ki < kh; ++ki) {
            const int row_step = iy + pad_top - ki * dilation_h;  // = row * stride_h
            if (row_step < 0 || row_step % stride_h) continue;
            const int row = row_step / stride_h;
            if (row >= oh) continue;
            for (int kj = 0; kj < kw; ++kj) {
                const int col_step = ix + pad_left - kj * dilation_w;
                if (col_step < 0 || col_step % stride_w) continue;
                const int col = col_step / stride_w;
                if (col >= ow) continue;
                for (int out_ch = group * group_o; out_ch < (group + 1) * group_o; ++out_ch) {
                    const real tap = weight[(((long long)out_ch * group_c + ch - group * group_c) * kh + ki) * kw + kj];
                    acc += tap * grad_y[(((long long)img * o + out_ch) * oh + row) * ow + col];
                }
            }
        }
        grad_x[i] = acc;
    }
}

// One thread per weight element (and per bias element, after them), summing over images and outputs;
// the sums are added into grad_weight and grad_bias.
extern "C" __global__ void conv2d_grad_params_general(
    const real* __restrict__ x, const real* __restrict__ grad_y, real* __restrict__ grad_weight,
    real* __restrict__ grad_bias, int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow,
    int stride_h, int stride_w, int pad_top, int pad_left, int dilation_h, int dilation_w, int groups, int has_bias)
{
    const int group_c = c / groups, group_o = o / groups;
    const long long weights = (long long)o * group_c * kh * kw;
    const long long total = weights + (has_bias ? o : 0);
    FOR_EACH_INDEX(i, total) {
        real acc = 0;
        if (i >= weights) {
            const int out_ch = (int)(i - weights);
            for (int img = 0; img < n; ++img) {
                const real* plane = grad_y + ((long long)img * o + out_ch) * oh * ow;
                for (long long k = 0; k < (long long)oh * ow; ++k) acc += plane[k];
            }
            grad_bias[out_ch] += acc;
            continue;
        }
        const int kj = (int)(i % kw);
        const int ki = (int)((i / kw) % kh);
        const int ch = (int)((i / ((long long)kw * kh)) % group_c);
        const int out_ch = (int)(i / ((long long)kw * kh * group_c));
        const int in_ch = (out_ch / group_o) * group_c + ch;
        for (int img = 0; img < n; ++img) {
            const real* plane = x + ((long long)img * c + in_ch) * h * w;
            const real* grads = grad_y + ((long long)img * o + out_ch) * oh * ow;
            for (int row = 0; row < oh; ++row) {
                const int iy = row * stride_h - pad_top + ki * dilation_h;
                if (iy < 0 || iy >= h) continue;
                for (int col = 0; col < ow; ++col) {
                    const int ix = col * stride_w - pad_left + kj * dilation_w;
                    if (ix < 0 || ix >= w) continue;
                    acc += grads[row * ow + col] * plane[(long long)iy * w + ix];
                }
            }
        }
        grad_weight[i] += acc;
    }
}

// torch's scan: a strictly greater value or a NaN takes over; the window starts on its first tap inside the input.
extern "C" __global__ void max_pool2d_forward_general(
    const real* __restrict__ x, real* __restrict__ y, long long* __restrict__ indices,
    long long planes, int h, int w, int oh, int ow, int kernel_h, int kernel_w, int stride_h, int stride_w,
    int pad_h, int pad_w, int dilation_h, int dilation_w)
{
    const long long total = planes * oh * ow;
    FOR_EACH_INDEX(i, total) {
        const int col = (int)(i % ow);
        const int row = (int)((i / ow) % oh);
        const real* plane = x + (i / ((long long)ow * oh)) * h * w;
        int y0 = row * stride_h - pad_h, x0 = col * stride_w - pad_w;
        while (y0 < 0) y0 += dilation_h;
        while (x0 < 0) x0 += dilation_w;
        const int y1 = min(row * stride_h - pad_h + (kernel_h - 1) * dilation_h + 1, h);
        const int x1 = min(col * stride_w - pad_w + (kernel_w - 1) * dilation_w + 1, w);
        int best_index = y0 * w + x0;
        real best = -INFINITY;
        for (int iy = y0; iy < y1; iy += dilation_h) {
            for (int ix = x0; ix < x1; ix += dilation_w) {
                const real value = plane[iy * w + ix];
                if (value > best || isnan(value)) { best = value; best_index = iy * w + ix; }
            }
        }
        y[i] = best;
        indices[i] = best_index;
    }
}

// Each input pixel sums the gradients of the windows that contain it and chose it.
extern "C" __global__ void max_pool2d_backward_general(
    const real* __restrict__ grad_y, const long long* __restrict__ indices, real* __restrict__ grad_x,
    long long planes, int h, int w, int oh, int ow, int kernel_h, int kernel_w, int stride_h, int stride_w,
    int pad_h, int pad_w, int dilation_h, int dilation_w)
{
    const long long total = planes * h * w;
    FOR_EACH_INDEX(i, total) {
        const int ix = (int)(i % w);
        const int iy = (int)((i / w) % h);
        const long long first = (i / ((long long)w * h)) * oh * ow;
        const int self = iy * w + ix;
        real acc = 0;
        for (int ki = 0; ki < kernel_h; ++ki) {
            const int row_step = iy + pad_h - ki * dilation_h;
            if (row_step < 0 || row_step % stride_h || row_step / stride_h >= oh) continue;
            for (int kj = 0; kj < kernel_w; ++kj) {
                const int col_step = ix + pad_w - kj * dilation_w;
                if (col_step < 0 || col_step % stride_w || col_step / stride_w >= ow) continue;
                const long long out = first + (long long)(row_step / stride_h) * ow + col_step / stride_w;
                if (indices[out] == self) acc += grad_y[out];
            }
        }
        grad_x[i] = acc;
    }
}

// ---- cross-entropy with torch's options: one thread per row ------------------------------
// Row r's loss is -sum_k coefficients[r, k] * log_softmax[r, k] (see the NumPy reference); the
// caller reduces row_loss and row_denominator.

extern "C" __global__ void cross_entropy_rows(
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
extern "C" __global__ void cross_entropy_reduce(
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

// grad = (probs * sum_k coefficients - coefficients) * scale[row]; 0 on a row without weight (ignored),
// even where the scale is infinite because every row is ignored, as in torch.
extern "C" __global__ void cross_entropy_rows_backward(
    const real* __restrict__ probs, const real* __restrict__ coefficients, const real* __restrict__ scale,
    real* __restrict__ grad, int rows, int classes)
{
    FOR_EACH_INDEX(i, (long long)rows * classes) {
        const long long r = i / classes;
        real total = 0;
        for (int k = 0; k < classes; ++k) total += coefficients[r * classes + k];
        grad[i] = total != (real)0 ? (probs[i] * total - coefficients[i]) * scale[r] : (real)0;
    }
}
"""

KERNEL_NAMES = (
    "conv2d_forward_general", "conv2d_grad_input_general", "conv2d_grad_params_general",
    "max_pool2d_forward_general", "max_pool2d_backward_general",
    "cross_entropy_rows", "cross_entropy_reduce", "cross_entropy_rows_backward",
)


# Every kernel the cupy backend launches.
ALL_KERNEL_NAMES = cuda_sources.KERNEL_NAMES + KERNEL_NAMES


def source_for(dtype):
    """The cupy backend's complete source for ``dtype`` with these kernels appended."""
    return cuda_sources.source_for(dtype) + _BODY
