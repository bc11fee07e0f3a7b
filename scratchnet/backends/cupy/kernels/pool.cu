// 2-D max-pool: the tutorial's geometry (square kernel and stride, no padding or dilation) and the
// general one (any kernel, stride, padding, dilation, ceil mode). Indices are flat h * W + w per plane.
#include "common.cuh"

// Like torch: a later element replaces the running max only when strictly greater (or NaN).
template <typename real>
__global__ void max_pool2d_forward(
    const real* __restrict__ x, real* __restrict__ y, long long* __restrict__ indices,
    long long planes, int h, int w, int oh, int ow, int kernel, int stride)
{
    const long long total = planes * oh * ow;
    FOR_EACH_INDEX(i, total) {
        const PlaneIndex out(i, oh, ow);
        const real* plane = x + out.plane * h * w;
        int best_index = out.row * stride * w + out.col * stride;
        real best = plane[best_index];
        for (int ki = 0; ki < kernel; ++ki) {
            for (int kj = 0; kj < kernel; ++kj) {
                const int index = (out.row * stride + ki) * w + out.col * stride + kj;
                const real value = plane[index];
                if (value > best || isnan(value)) { best = value; best_index = index; }
            }
        }
        y[i] = best;
        indices[i] = best_index;
    }
}

// Each input pixel sums the gradients of the windows that contain it and chose it.
template <typename real>
__global__ void max_pool2d_backward(
    const real* __restrict__ grad_y, const long long* __restrict__ indices, real* __restrict__ grad_x,
    long long planes, int h, int w, int oh, int ow, int kernel, int stride)
{
    const long long total = planes * h * w;
    FOR_EACH_INDEX(i, total) {
        const PlaneIndex in(i, h, w);
        const long long first = in.plane * oh * ow;
        const int self = in.row * w + in.col;
        // Windows row*stride <= in.row < row*stride + kernel, inside the output.
        const int row_lo = in.row >= kernel ? (in.row - kernel) / stride + 1 : 0;
        const int row_hi = min(oh - 1, in.row / stride);
        const int col_lo = in.col >= kernel ? (in.col - kernel) / stride + 1 : 0;
        const int col_hi = min(ow - 1, in.col / stride);
        real acc = 0;
        for (int row = row_lo; row <= row_hi; ++row) {
            for (int col = col_lo; col <= col_hi; ++col) {
                const long long out = first + (long long)row * ow + col;
                if (indices[out] == self) acc += grad_y[out];
            }
        }
        grad_x[i] = acc;
    }
}

// torch's scan: a strictly greater value or a NaN takes over; the window starts on its first tap inside the input.
template <typename real>
__global__ void max_pool2d_forward_general(
    const real* __restrict__ x, real* __restrict__ y, long long* __restrict__ indices,
    long long planes, int h, int w, int oh, int ow, int kernel_h, int kernel_w, int stride_h, int stride_w,
    int pad_h, int pad_w, int dilation_h, int dilation_w)
{
    const long long total = planes * oh * ow;
    FOR_EACH_INDEX(i, total) {
        const PlaneIndex out(i, oh, ow);
        const real* plane = x + out.plane * h * w;
        int y0 = out.row * stride_h - pad_h, x0 = out.col * stride_w - pad_w;
        while (y0 < 0) y0 += dilation_h;
        while (x0 < 0) x0 += dilation_w;
        const int y1 = min(out.row * stride_h - pad_h + (kernel_h - 1) * dilation_h + 1, h);
        const int x1 = min(out.col * stride_w - pad_w + (kernel_w - 1) * dilation_w + 1, w);
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
template <typename real>
__global__ void max_pool2d_backward_general(
    const real* __restrict__ grad_y, const long long* __restrict__ indices, real* __restrict__ grad_x,
    long long planes, int h, int w, int oh, int ow, int kernel_h, int kernel_w, int stride_h, int stride_w,
    int pad_h, int pad_w, int dilation_h, int dilation_w)
{
    const long long total = planes * h * w;
    FOR_EACH_INDEX(i, total) {
        const PlaneIndex in(i, h, w);
        const long long first = in.plane * oh * ow;
        const int self = in.row * w + in.col;
        real acc = 0;
        for (int ki = 0; ki < kernel_h; ++ki) {
            const int row_step = in.row + pad_h - ki * dilation_h;
            if (row_step < 0 || row_step % stride_h || row_step / stride_h >= oh) continue;
            for (int kj = 0; kj < kernel_w; ++kj) {
                const int col_step = in.col + pad_w - kj * dilation_w;
                if (col_step < 0 || col_step % stride_w || col_step / stride_w >= ow) continue;
                const long long out = first + (long long)(row_step / stride_h) * ow + col_step / stride_w;
                if (indices[out] == self) acc += grad_y[out];
            }
        }
        grad_x[i] = acc;
    }
}

// ---- average pooling (torch's avg_pool2d) ---------------------------------------------------------

// What output (row, col)'s sum is divided by: the override, the window clipped to the padded input
// (count_include_pad), or its part inside the input. *first/*end get the part inside, per axis.
__device__ inline int avg_window(int index, int stride, int pad, int kernel, int size, int* first, int* end)
{
    const int start = index * stride - pad;
    const int stop = min(start + kernel, size + pad);
    *first = max(start, 0);
    *end = min(stop, size);
    return stop - start;
}

// What a window's sum is divided by: the override, the window clipped to the padded input, or its part inside.
__device__ inline int avg_divisor(int inside, int padded, int count_include_pad, int divisor_override)
{
    return divisor_override ? divisor_override : count_include_pad ? padded : inside;
}

// The sum of plane rows [top, bottom) x columns [left, right), row by row.
template <typename real>
__device__ real plane_window_sum(const real* plane, int w, int top, int bottom, int left, int right)
{
    real sum = 0;
    for (int iy = top; iy < bottom; ++iy)
        for (int ix = left; ix < right; ++ix) sum += plane[iy * w + ix];
    return sum;
}

template <typename real>
__global__ void avg_pool2d_forward(
    const real* __restrict__ x, real* __restrict__ y, long long planes, int h, int w, int oh, int ow,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int count_include_pad,
    int divisor_override)
{
    FOR_EACH_INDEX(i, planes * oh * ow) {
        const PlaneIndex out(i, oh, ow);
        int top, bottom, left, right;
        const int padded_rows = avg_window(out.row, stride_h, pad_h, kernel_h, h, &top, &bottom);
        const int padded_cols = avg_window(out.col, stride_w, pad_w, kernel_w, w, &left, &right);
        if (top >= bottom || left >= right) { y[i] = 0; continue; }
        const real sum = plane_window_sum(x + out.plane * h * w, w, top, bottom, left, right);
        y[i] = sum / (real)avg_divisor((bottom - top) * (right - left), padded_rows * padded_cols,
                                       count_include_pad, divisor_override);
    }
}

// Each input pixel gathers grad_y / divisor of the windows that contain it.
template <typename real>
__global__ void avg_pool2d_backward(
    const real* __restrict__ grad_y, real* __restrict__ grad_x, long long planes, int h, int w, int oh, int ow,
    int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int count_include_pad,
    int divisor_override)
{
    FOR_EACH_INDEX(i, planes * h * w) {
        const PlaneIndex in(i, h, w);
        const real* grads = grad_y + in.plane * oh * ow;
        // Windows row*stride - pad <= in.row < row*stride - pad + kernel, inside the output.
        const int row_lo = max(0, (in.row + pad_h - kernel_h) / stride_h + ((in.row + pad_h - kernel_h) >= 0 ? 1 : 0));
        const int col_lo = max(0, (in.col + pad_w - kernel_w) / stride_w + ((in.col + pad_w - kernel_w) >= 0 ? 1 : 0));
        const int row_hi = min(oh - 1, (in.row + pad_h) / stride_h);
        const int col_hi = min(ow - 1, (in.col + pad_w) / stride_w);
        real acc = 0;
        for (int row = row_lo; row <= row_hi; ++row) {
            int top, bottom, left, right;
            const int padded_rows = avg_window(row, stride_h, pad_h, kernel_h, h, &top, &bottom);
            for (int col = col_lo; col <= col_hi; ++col) {
                const int padded_cols = avg_window(col, stride_w, pad_w, kernel_w, w, &left, &right);
                acc += grads[row * ow + col] / (real)avg_divisor((bottom - top) * (right - left),
                                                                 padded_rows * padded_cols, count_include_pad,
                                                                 divisor_override);
            }
        }
        grad_x[i] = acc;
    }
}

// ---- adaptive pooling: output row r pools rows floor(r*H/OH) to ceil((r+1)*H/OH) ----------------------

__device__ inline int adaptive_first(int index, int size, int out) { return (int)((long long)index * size / out); }
__device__ inline int adaptive_end(int index, int size, int out)
{
    return (int)(((long long)(index + 1) * size + out - 1) / out);
}

template <typename real>
__global__ void adaptive_avg_pool2d_forward(const real* __restrict__ x, real* __restrict__ y, long long planes,
                                            int h, int w, int oh, int ow)
{
    FOR_EACH_INDEX(i, planes * oh * ow) {
        const PlaneIndex out(i, oh, ow);
        const int top = adaptive_first(out.row, h, oh), bottom = adaptive_end(out.row, h, oh);
        const int left = adaptive_first(out.col, w, ow), right = adaptive_end(out.col, w, ow);
        y[i] = plane_window_sum(x + out.plane * h * w, w, top, bottom, left, right)
             / (real)((bottom - top) * (right - left));
    }
}

template <typename real>
__global__ void adaptive_avg_pool2d_backward(const real* __restrict__ grad_y, real* __restrict__ grad_x,
                                             long long planes, int h, int w, int oh, int ow)
{
    FOR_EACH_INDEX(i, planes * h * w) {
        const PlaneIndex in(i, h, w);
        const real* grads = grad_y + in.plane * oh * ow;
        real acc = 0;
        for (int row = 0; row < oh; ++row) {
            const int top = adaptive_first(row, h, oh), bottom = adaptive_end(row, h, oh);
            if (in.row < top || in.row >= bottom) continue;
            for (int col = 0; col < ow; ++col) {
                const int left = adaptive_first(col, w, ow), right = adaptive_end(col, w, ow);
                if (in.col < left || in.col >= right) continue;
                acc += grads[row * ow + col] / (real)((bottom - top) * (right - left));
            }
        }
        grad_x[i] = acc;
    }
}

// torch's scan: a strictly greater value or a NaN takes over.
template <typename real>
__global__ void adaptive_max_pool2d_forward(const real* __restrict__ x, real* __restrict__ y,
                                            long long* __restrict__ indices, long long planes, int h, int w, int oh,
                                            int ow)
{
    FOR_EACH_INDEX(i, planes * oh * ow) {
        const PlaneIndex out(i, oh, ow);
        const int top = adaptive_first(out.row, h, oh), bottom = adaptive_end(out.row, h, oh);
        const int left = adaptive_first(out.col, w, ow), right = adaptive_end(out.col, w, ow);
        const real* plane = x + out.plane * h * w;
        real best = -INFINITY;
        int best_index = top * w + left;
        for (int iy = top; iy < bottom; ++iy) {
            for (int ix = left; ix < right; ++ix) {
                const real value = plane[iy * w + ix];
                if (value > best || isnan(value)) { best = value; best_index = iy * w + ix; }
            }
        }
        y[i] = best;
        indices[i] = best_index;
    }
}

template <typename real>
__global__ void adaptive_max_pool2d_backward(const real* __restrict__ grad_y, const long long* __restrict__ indices,
                                             real* __restrict__ grad_x, long long planes, int h, int w, int oh,
                                             int ow)
{
    FOR_EACH_INDEX(i, planes * h * w) {
        const PlaneIndex in(i, h, w);
        const long long first = in.plane * oh * ow;
        const int self = in.row * w + in.col;
        real acc = 0;
        for (int row = 0; row < oh; ++row) {
            if (in.row < adaptive_first(row, h, oh) || in.row >= adaptive_end(row, h, oh)) continue;
            for (int col = 0; col < ow; ++col) {
                if (in.col < adaptive_first(col, w, ow) || in.col >= adaptive_end(col, w, ow)) continue;
                if (indices[first + row * ow + col] == self) acc += grad_y[first + row * ow + col];
            }
        }
        grad_x[i] = acc;
    }
}
