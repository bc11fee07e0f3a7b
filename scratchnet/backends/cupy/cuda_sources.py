"""The CUDA C++ of the cupy backend, kept apart so it can be compiled without CuPy.

One text serves both float types: ``source_for(dtype)`` prefixes a ``typedef``
for ``real``, giving plain ``extern "C"`` kernels that NVRTC (through CuPy) and
``nvcc`` compile alike. Every kernel gathers: each output element is written by
exactly one thread (or one block with a fixed-shape tree reduction), so no
atomics are needed and every run is bit-for-bit the same.

Layouts follow torch: NCHW activations, (O, C, KH, KW) conv weights, flat
``h * W + w`` max-pool indices per plane. "cols" is the im2col matrix of shape
(C*KH*KW + 1, N*OH*OW); its last row is all ones so that one GEMM also yields
the bias gradient.
"""

import numpy as np

# Threads per block of the block-reduction kernels; the kernels' shared arrays use it.
REDUCE_THREADS = 128

_BODY = r"""
#define REDUCE_THREADS __REDUCE_THREADS__

// Each thread visits i, i + stride, ... so any grid size covers any element count.
#define FOR_EACH_INDEX(i, total) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (long long)blockDim.x * gridDim.x)

// Sum REDUCE_THREADS partial sums of one block in a fixed tree order; thread 0 gets the total.
__device__ real block_sum(real value, real* partial)
{
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int half = REDUCE_THREADS / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    return partial[0];
}

// ---- convolution: direct kernels (small problems, one launch each) ----------------

extern "C" __global__ void conv2d_forward_direct(
    const real* __restrict__ x, const real* __restrict__ weight, const real* __restrict__ bias,
    real* __restrict__ y, int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow,
    int stride, int pad, int has_bias)
{
    const long long total = (long long)n * o * oh * ow;
    FOR_EACH_INDEX(i, total) {
        const int col = (int)(i % ow);
        const int row = (int)((i / ow) % oh);
        const int out_ch = (int)((i / ((long long)ow * oh)) % o);
        const int img = (int)(i / ((long long)ow * oh * o));
        real acc = 0;
        for (int ch = 0; ch < c; ++ch) {
            const real* plane = x + ((long long)img * c + ch) * h * w;
            const real* taps = weight + ((long long)out_ch * c + ch) * kh * kw;
            for (int ki = 0; ki < kh; ++ki) {
                const int iy = row * stride - pad + ki;
                if (iy < 0 || iy >= h) continue;
                for (int kj = 0; kj < kw; ++kj) {
                    const int ix = col * stride - pad + kj;
                    if (ix < 0 || ix >= w) continue;
                    acc += plane[(long long)iy * w + ix] * taps[ki * kw + kj];
                }
            }
        }
        y[i] = has_bias ? acc + bias[out_ch] : acc;
    }
}

// grad_x[n, c, y, x] = sum over (kh, kw, o) of the outputs whose window read that pixel.
extern "C" __global__ void conv2d_grad_input_direct(
    const real* __restrict__ grad_y, const real* __restrict__ weight, real* __restrict__ grad_x,
    int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow, int stride, int pad)
{
    const long long total = (long long)n * c * h * w;
    FOR_EACH_INDEX(i, total) {
        const int ix = (int)(i % w);
        const int iy = (int)((i / w) % h);
        const int ch = (int)((i / ((long long)w * h)) % c);
        const int img = (int)(i / ((long long)w * h * c));
        real acc = 0;
        for (int ki = 0; ki < kh; ++ki) {
            const int ty = iy + pad - ki;
            if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
            const int row = ty / stride;
            for (int kj = 0; kj < kw; ++kj) {
                const int tx = ix + pad - kj;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                const int col = tx / stride;
                for (int out_ch = 0; out_ch < o; ++out_ch) {
                    acc += grad_y[(((long long)img * o + out_ch) * oh + row) * ow + col]
                         * weight[(((long long)out_ch * c + ch) * kh + ki) * kw + kj];
                }
            }
        }
        grad_x[i] = acc;
    }
}

// One block per weight element, then one per bias element; launch with REDUCE_THREADS threads.
extern "C" __global__ void conv2d_grad_params_direct(
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
        const int kj = (int)(element % kw);
        const int ki = (int)((element / kw) % kh);
        const int ch = (int)((element / ((long long)kw * kh)) % c);
        const int out_ch = (int)(element / ((long long)kw * kh * c));
        for (long long s = threadIdx.x; s < count; s += REDUCE_THREADS) {
            const int img = (int)(s / spots);
            const int spot = (int)(s % spots);
            const int iy = (spot / ow) * stride - pad + ki;
            const int ix = (spot % ow) * stride - pad + kj;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
            acc += x[(((long long)img * c + ch) * h + iy) * w + ix]
                 * grad_y[((long long)img * o + out_ch) * spots + spot];
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

// ---- convolution: im2col + GEMM helpers (large problems) ---------------------------

// cols[(c*kh + ki)*kw + kj, (img*oh + row)*ow + col]; the extra last row is all ones.
extern "C" __global__ void im2col(
    const real* __restrict__ x, real* __restrict__ cols, int n, int c, int h, int w, int kh, int kw,
    int oh, int ow, int stride, int pad)
{
    const long long spots = (long long)n * oh * ow;
    const long long taps = (long long)c * kh * kw;
    const long long total = (taps + 1) * spots;
    FOR_EACH_INDEX(i, total) {
        const long long tap = i / spots;
        if (tap == taps) { cols[i] = 1; continue; }
        const long long spot = i % spots;
        const int col = (int)(spot % ow);
        const int row = (int)((spot / ow) % oh);
        const int img = (int)(spot / ((long long)ow * oh));
        const int kj = (int)(tap % kw);
        const int ki = (int)((tap / kw) % kh);
        const int ch = (int)(tap / ((long long)kw * kh));
        const int iy = row * stride - pad + ki;
        const int ix = col * stride - pad + kj;
        cols[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w)
                ? x[(((long long)img * c + ch) * h + iy) * w + ix] : (real)0;
    }
}

// y[img, o, spot] = rows[o, img*spots + spot] (+ bias[o]): the GEMM's (O, N*L) back to NCHW.
extern "C" __global__ void rows_to_nchw(
    const real* __restrict__ rows, const real* __restrict__ bias, real* __restrict__ y,
    int n, int o, int spots, int has_bias)
{
    const long long total = (long long)n * o * spots;
    FOR_EACH_INDEX(i, total) {
        const int spot = (int)(i % spots);
        const int out_ch = (int)((i / spots) % o);
        const int img = (int)(i / ((long long)spots * o));
        const real value = rows[((long long)out_ch * n + img) * spots + spot];
        y[i] = has_bias ? value + bias[out_ch] : value;
    }
}

// rows[o, img*spots + spot] = y[img, o, spot]: NCHW gradients into the GEMM's layout.
extern "C" __global__ void nchw_to_rows(
    const real* __restrict__ y, real* __restrict__ rows, int n, int o, int spots)
{
    const long long total = (long long)n * o * spots;
    FOR_EACH_INDEX(i, total) {
        const int spot = (int)(i % spots);
        const int img = (int)((i / spots) % n);
        const int out_ch = (int)(i / ((long long)spots * n));
        rows[i] = y[((long long)img * o + out_ch) * spots + spot];
    }
}

// grad_x[n, c, y, x] = sum of the grad_cols entries im2col copied that pixel into.
extern "C" __global__ void col2im(
    const real* __restrict__ grad_cols, real* __restrict__ grad_x, int n, int c, int h, int w,
    int kh, int kw, int oh, int ow, int stride, int pad)
{
    const long long spots = (long long)n * oh * ow;
    const long long total = (long long)n * c * h * w;
    FOR_EACH_INDEX(i, total) {
        const int ix = (int)(i % w);
        const int iy = (int)((i / w) % h);
        const int ch = (int)((i / ((long long)w * h)) % c);
        const int img = (int)(i / ((long long)w * h * c));
        real acc = 0;
        for (int ki = 0; ki < kh; ++ki) {
            const int ty = iy + pad - ki;
            if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
            for (int kj = 0; kj < kw; ++kj) {
                const int tx = ix + pad - kj;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                const long long tap = ((long long)ch * kh + ki) * kw + kj;
                const long long spot = ((long long)img * oh + ty / stride) * ow + tx / stride;
                acc += grad_cols[tap * spots + spot];
            }
        }
        grad_x[i] = acc;
    }
}

// ---- max-pool ---------------------------------------------------------------------

// Like torch: a later element replaces the running max only when strictly greater (or NaN).
extern "C" __global__ void max_pool2d_forward(
    const real* __restrict__ x, real* __restrict__ y, long long* __restrict__ indices,
    long long planes, int h, int w, int oh, int ow, int kernel, int stride)
{
    const long long total = planes * oh * ow;
    FOR_EACH_INDEX(i, total) {
        const int col = (int)(i % ow);
        const int row = (int)((i / ow) % oh);
        const real* plane = x + (i / ((long long)ow * oh)) * h * w;
        int best_index = row * stride * w + col * stride;
        real best = plane[best_index];
        for (int ki = 0; ki < kernel; ++ki) {
            for (int kj = 0; kj < kernel; ++kj) {
                const int index = (row * stride + ki) * w + col * stride + kj;
                const real value = plane[index];
                if (value > best || isnan(value)) { best = value; best_index = index; }
            }
        }
        y[i] = best;
        indices[i] = best_index;
    }
}

// Each input pixel sums the gradients of the windows that contain it and chose it.
extern "C" __global__ void max_pool2d_backward(
    const real* __restrict__ grad_y, const long long* __restrict__ indices, real* __restrict__ grad_x,
    long long planes, int h, int w, int oh, int ow, int kernel, int stride)
{
    const long long total = planes * h * w;
    FOR_EACH_INDEX(i, total) {
        const int ix = (int)(i % w);
        const int iy = (int)((i / w) % h);
        const long long first = (i / ((long long)w * h)) * oh * ow;
        const int self = iy * w + ix;
        // Windows row*stride <= iy < row*stride + kernel, inside the output.
        const int row_lo = iy >= kernel ? (iy - kernel) / stride + 1 : 0;
        const int row_hi = min(oh - 1, iy / stride);
        const int col_lo = ix >= kernel ? (ix - kernel) / stride + 1 : 0;
        const int col_hi = min(ow - 1, ix / stride);
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

// ---- element-wise and dense ---------------------------------------------------------

extern "C" __global__ void relu_forward(const real* __restrict__ x, real* __restrict__ y, long long total)
{
    FOR_EACH_INDEX(i, total) {
        const real value = x[i];
        y[i] = value < (real)0 ? (real)0 : value;
    }
}

extern "C" __global__ void relu_backward(
    const real* __restrict__ grad_y, const real* __restrict__ y, real* __restrict__ grad_x, long long total)
{
    FOR_EACH_INDEX(i, total) {
        grad_x[i] = y[i] <= (real)0 ? (real)0 : grad_y[i];  // NaN passes its gradient, as in torch
    }
}

// c[r, j] = sum over k < inner of a[r*a_row + k*a_col] * b[k*b_row + j*b_col] (+ bias[j]), c row-major
// (rows, cols): the small products, one thread per output summing in k order. The strides (in elements)
// let either operand be read transposed.
extern "C" __global__ void matmul_direct(
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
extern "C" __global__ void add_bias_rows(real* __restrict__ y, const real* __restrict__ bias, long long total, int features)
{
    FOR_EACH_INDEX(i, total) {
        y[i] += bias[i % features];
    }
}

// out[e] = sum over r < count of src[e*element_stride + r*step]; one block per e.
extern "C" __global__ void reduce_sum(
    const real* __restrict__ src, real* __restrict__ out, long long count, long long step, long long element_stride)
{
    __shared__ real partial[REDUCE_THREADS];
    const real* first = src + (long long)blockIdx.x * element_stride;
    real acc = 0;
    for (long long r = threadIdx.x; r < count; r += REDUCE_THREADS) acc += first[r * step];
    const real total = block_sum(acc, partial);
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

// ---- optimizer ----------------------------------------------------------------------

// torch.optim.SGD in place. buf may be grad itself when there is no momentum (then unused).
extern "C" __global__ void sgd_step(
    real* param, const real* grad, real* buf, long long total, real lr, real momentum,
    real one_minus_dampening, real weight_decay, int nesterov, int first)
{
    FOR_EACH_INDEX(i, total) {
        real step = grad[i];
        if (weight_decay != (real)0) step = step + weight_decay * param[i];
        if (momentum != (real)0) {
            const real velocity = first ? step : buf[i] * momentum + one_minus_dampening * step;
            buf[i] = velocity;
            step = nesterov ? step + momentum * velocity : velocity;
        }
        param[i] = param[i] - lr * step;
    }
}
"""

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Every kernel in the source, for compiling and for tests that check they all exist.
KERNEL_NAMES = (
    "conv2d_forward_direct", "conv2d_grad_input_direct", "conv2d_grad_params_direct",
    "im2col", "rows_to_nchw", "nchw_to_rows", "col2im",
    "max_pool2d_forward", "max_pool2d_backward",
    "relu_forward", "relu_backward", "matmul_direct", "add_bias_rows", "reduce_sum",
    "sgd_step",
)


def supported_dtypes():
    return tuple(_C_TYPES)


def source_for(dtype):
    """The complete CUDA source with ``real`` bound to ``dtype`` (float32 or float64)."""
    dtype = np.dtype(dtype)
    if dtype not in _C_TYPES:
        raise TypeError(f"the cupy backend computes in float32 or float64, got {dtype}")
    return f"typedef {_C_TYPES[dtype]} real;\n" + _BODY.replace("__REDUCE_THREADS__", str(REDUCE_THREADS))
