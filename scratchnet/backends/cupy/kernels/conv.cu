// 2-D convolution: direct kernels for small problems (one launch each), the im2col + GEMM helpers for
// large ones, and general kernels for any stride, padding, dilation and groups.
//
// "cols" is the im2col matrix of shape (C*KH*KW + 1, N*OH*OW); its last row is all ones so that one
// GEMM also yields the bias gradient.
#include "common.cuh"

// One output's sum over its window: `channels` input planes from `plane` against their taps from `taps`,
// the window's first row and column at (row0, col0), taps `dilation` apart; positions outside are zeros.
template <typename real>
__device__ real window_sum(const real* plane, const real* taps, int channels, int h, int w, int kh, int kw,
                           int row0, int col0, int dilation_h, int dilation_w)
{
    real acc = 0;
    for (int ch = 0; ch < channels; ++ch, plane += (long long)h * w, taps += kh * kw) {
        for (int ki = 0; ki < kh; ++ki) {
            const int iy = row0 + ki * dilation_h;
            if (iy < 0 || iy >= h) continue;
            for (int kj = 0; kj < kw; ++kj) {
                const int ix = col0 + kj * dilation_w;
                if (ix < 0 || ix >= w) continue;
                acc += plane[(long long)iy * w + ix] * taps[ki * kw + kj];
            }
        }
    }
    return acc;
}

// ---- direct kernels: square stride, the same padding on every side, no dilation, one group ----

template <typename real>
__global__ void conv2d_forward_direct(
    const real* __restrict__ x, const real* __restrict__ weight, const real* __restrict__ bias,
    real* __restrict__ y, int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow,
    int stride, int pad, int has_bias)
{
    const long long total = (long long)n * o * oh * ow;
    FOR_EACH_INDEX(i, total) {
        const NchwIndex out(i, o, oh, ow);
        const real acc = window_sum(x + (long long)out.img * c * h * w, weight + (long long)out.ch * c * kh * kw,
                                    c, h, w, kh, kw, out.row * stride - pad, out.col * stride - pad, 1, 1);
        y[i] = has_bias ? acc + bias[out.ch] : acc;
    }
}

// grad_x[n, c, y, x] = sum over (kh, kw, o) of the outputs whose window read that pixel.
template <typename real>
__global__ void conv2d_grad_input_direct(
    const real* __restrict__ grad_y, const real* __restrict__ weight, real* __restrict__ grad_x,
    int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow, int stride, int pad)
{
    const long long total = (long long)n * c * h * w;
    FOR_EACH_INDEX(i, total) {
        const NchwIndex in(i, c, h, w);
        real acc = 0;
        for (int ki = 0; ki < kh; ++ki) {
            const int ty = in.row + pad - ki;
            if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
            const int row = ty / stride;
            for (int kj = 0; kj < kw; ++kj) {
                const int tx = in.col + pad - kj;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                const int col = tx / stride;
                for (int out_ch = 0; out_ch < o; ++out_ch) {
                    acc += grad_y[(((long long)in.img * o + out_ch) * oh + row) * ow + col]
                         * weight[(((long long)out_ch * c + in.ch) * kh + ki) * kw + kj];
                }
            }
        }
        grad_x[i] = acc;
    }
}

// One block per weight element, then one per bias element; launch with REDUCE_THREADS threads.
template <typename real>
__global__ void conv2d_grad_params_direct(
    const real* __restrict__ x, const real* __restrict__ grad_y, real* __restrict__ grad_weight,
    real* __restrict__ grad_bias, int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow,
    int stride, int pad)
{
    __shared__ real partial[REDUCE_THREADS];
    const long long weights = (long long)o * c * kh * kw;
    const long long element = blockIdx.x;
    const int spots = oh * ow;
    const long long count = (long long)n * spots;
    real acc = 0;
    if (element < weights) {
        const NchwIndex tap(element, c, kh, kw);  // img is the output channel, row/col the tap
        for (long long s = threadIdx.x; s < count; s += REDUCE_THREADS) {
            const int img = (int)(s / spots);
            const int spot = (int)(s % spots);
            const int iy = (spot / ow) * stride - pad + tap.row;
            const int ix = (spot % ow) * stride - pad + tap.col;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
            acc += x[(((long long)img * c + tap.ch) * h + iy) * w + ix]
                 * grad_y[((long long)img * o + tap.img) * spots + spot];
        }
    } else {
        const int out_ch = (int)(element - weights);
        for (long long s = threadIdx.x; s < count; s += REDUCE_THREADS) {
            acc += grad_y[((long long)(s / spots) * o + out_ch) * spots + s % spots];
        }
    }
    const real total = block_sum(acc, partial);
    if (threadIdx.x == 0) {
        if (element < weights) grad_weight[element] = total;
        else grad_bias[element - weights] = total;
    }
}

// ---- im2col + GEMM helpers (large problems) ----

// cols[(c*kh + ki)*kw + kj, (img*oh + row)*ow + col]; the extra last row is all ones.
template <typename real>
__global__ void im2col(
    const real* __restrict__ x, real* __restrict__ cols, int n, int c, int h, int w, int kh, int kw,
    int oh, int ow, int stride, int pad)
{
    const long long spots = (long long)n * oh * ow;
    const long long taps = (long long)c * kh * kw;
    const long long total = (taps + 1) * spots;
    FOR_EACH_INDEX(i, total) {
        const long long tap = i / spots;
        if (tap == taps) { cols[i] = 1; continue; }
        const NchwIndex out(i % spots, 1, oh, ow);
        const NchwIndex in_tap(tap, c, kh, kw);  // ch, then the tap's row and column
        const int iy = out.row * stride - pad + in_tap.row;
        const int ix = out.col * stride - pad + in_tap.col;
        cols[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w)
                ? x[(((long long)out.img * c + in_tap.ch) * h + iy) * w + ix] : (real)0;
    }
}

// y[img, o, spot] = rows[o, img*spots + spot] (+ bias[o]): the GEMM's (O, N*L) back to NCHW.
template <typename real>
__global__ void rows_to_nchw(
    const real* __restrict__ rows, const real* __restrict__ bias, real* __restrict__ y,
    int n, int o, int spots, int has_bias)
{
    const long long total = (long long)n * o * spots;
    FOR_EACH_INDEX(i, total) {
        const NchwIndex out(i, o, 1, spots);
        const real value = rows[((long long)out.ch * n + out.img) * spots + out.col];
        y[i] = has_bias ? value + bias[out.ch] : value;
    }
}

// rows[o, img*spots + spot] = y[img, o, spot]: NCHW gradients into the GEMM's layout.
template <typename real>
__global__ void nchw_to_rows(
    const real* __restrict__ y, real* __restrict__ rows, int n, int o, int spots)
{
    const long long total = (long long)n * o * spots;
    FOR_EACH_INDEX(i, total) {
        const NchwIndex row(i, n, 1, spots);  // img is the output channel, ch the image
        rows[i] = y[((long long)row.ch * o + row.img) * spots + row.col];
    }
}

// grad_x[n, c, y, x] = sum of the grad_cols entries im2col copied that pixel into.
template <typename real>
__global__ void col2im(
    const real* __restrict__ grad_cols, real* __restrict__ grad_x, int n, int c, int h, int w,
    int kh, int kw, int oh, int ow, int stride, int pad)
{
    const long long spots = (long long)n * oh * ow;
    const long long total = (long long)n * c * h * w;
    FOR_EACH_INDEX(i, total) {
        const NchwIndex in(i, c, h, w);
        real acc = 0;
        for (int ki = 0; ki < kh; ++ki) {
            const int ty = in.row + pad - ki;
            if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
            for (int kj = 0; kj < kw; ++kj) {
                const int tx = in.col + pad - kj;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                const long long tap = ((long long)in.ch * kh + ki) * kw + kj;
                const long long spot = ((long long)in.img * oh + ty / stride) * ow + tx / stride;
                acc += grad_cols[tap * spots + spot];
            }
        }
        grad_x[i] = acc;
    }
}

// ---- general kernels: any stride, padding, dilation, groups ----
// One thread per output element, so no atomics; the padding is given as the top and left
// offsets (the bottom and right padding only decide the output size).

template <typename real>
__global__ void conv2d_forward_general(
    const real* __restrict__ x, const real* __restrict__ weight, const real* __restrict__ bias,
    real* __restrict__ y, int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow,
    int stride_h, int stride_w, int pad_top, int pad_left, int dilation_h, int dilation_w, int groups, int has_bias)
{
    const int group_c = c / groups, group_o = o / groups;
    const long long total = (long long)n * o * oh * ow;
    FOR_EACH_INDEX(i, total) {
        const NchwIndex out(i, o, oh, ow);
        const int first_c = (out.ch / group_o) * group_c;
        const real acc = window_sum(x + ((long long)out.img * c + first_c) * h * w,
                                    weight + (long long)out.ch * group_c * kh * kw, group_c, h, w, kh, kw,
                                    out.row * stride_h - pad_top, out.col * stride_w - pad_left, dilation_h, dilation_w);
        y[i] = has_bias ? acc + bias[out.ch] : acc;
    }
}

// grad_x[img, ch, iy, ix]: the outputs of ch's group whose taps read that pixel.
template <typename real>
__global__ void conv2d_grad_input_general(
    const real* __restrict__ grad_y, const real* __restrict__ weight, real* __restrict__ grad_x,
    int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow,
    int stride_h, int stride_w, int pad_top, int pad_left, int dilation_h, int dilation_w, int groups)
{
    const int group_c = c / groups, group_o = o / groups;
    const long long total = (long long)n * c * h * w;
    FOR_EACH_INDEX(i, total) {
        const NchwIndex in(i, c, h, w);
        const int group = in.ch / group_c;
        real acc = 0;
        for (int ki = 0; ki < kh; ++ki) {
            const int row_step = in.row + pad_top - ki * dilation_h;  // = row * stride_h
            if (row_step < 0 || row_step % stride_h) continue;
            const int row = row_step / stride_h;
            if (row >= oh) continue;
            for (int kj = 0; kj < kw; ++kj) {
                const int col_step = in.col + pad_left - kj * dilation_w;
                if (col_step < 0 || col_step % stride_w) continue;
                const int col = col_step / stride_w;
                if (col >= ow) continue;
                for (int out_ch = group * group_o; out_ch < (group + 1) * group_o; ++out_ch) {
                    const real tap = weight[(((long long)out_ch * group_c + in.ch - group * group_c) * kh + ki) * kw + kj];
                    acc += tap * grad_y[(((long long)in.img * o + out_ch) * oh + row) * ow + col];
                }
            }
        }
        grad_x[i] = acc;
    }
}

// One thread per weight element (and per bias element, after them), summing over images and outputs;
// the sums are added into grad_weight and grad_bias.
template <typename real>
__global__ void conv2d_grad_params_general(
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
        const NchwIndex tap(i, group_c, kh, kw);  // img is the output channel, ch the channel in its group
        const int in_ch = (tap.img / group_o) * group_c + tap.ch;
        for (int img = 0; img < n; ++img) {
            const real* plane = x + ((long long)img * c + in_ch) * h * w;
            const real* grads = grad_y + ((long long)img * o + tap.img) * oh * ow;
            for (int row = 0; row < oh; ++row) {
                const int iy = row * stride_h - pad_top + tap.row * dilation_h;
                if (iy < 0 || iy >= h) continue;
                for (int col = 0; col < ow; ++col) {
                    const int ix = col * stride_w - pad_left + tap.col * dilation_w;
                    if (ix < 0 || ix >= w) continue;
                    acc += grads[row * ow + col] * plane[(long long)iy * w + ix];
                }
            }
        }
        grad_weight[i] += acc;
    }
}
