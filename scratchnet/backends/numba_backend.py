"""The fast CPU backend: every operation is an ``@njit(cache=True)`` kernel of ours.

Stride-1 convolutions (the tutorial's) use *wide planes*: with the input plane
flattened row by row (width ``Wp`` after padding), output pixel ``(oh, ow)``
sits at ``oh * Wp + ow`` and kernel tap ``(i, j)`` reads the input at that
position plus ``i * Wp + j``. Every tap is then one long contiguous vector
operation over the whole plane; the ``Wp - OW`` columns between rows are
computed and ignored (forward) or held at zero (backward). Inner loops update
rows with four taps per pass (one store per four multiply-adds) or run
register-blocked dot products, so LLVM vectorizes them.

Kernels compile with the ``contract`` and ``reassoc`` math flags only: fused
multiply-add and reordered sums, which let reductions vectorize. No flag
changes NaN/inf handling; the op tests hold the results to torch's tolerances.

Parallel loops run over images (or independent output rows); per-image weight
gradients are summed afterwards in image order, so results never depend on the
thread count or timing. Each such kernel also has a serial twin, which small
batches use (see ``_PARALLEL_MIN_BATCH``).
"""

import types

import numba
import numpy as np
from numba import njit, prange

from scratchnet.backends.numpy_backend import NumpyBackend

_FLAGS = {"contract", "reassoc"}


def _kernel(parallel=False):
    return njit(cache=True, fastmath=_FLAGS, parallel=parallel)


class _Twin:
    """One kernel compiled twice: threaded over its ``prange`` loops, and serial.

    The serial copy gets its own name, so the two never share a cache entry.
    """

    def __init__(self, func):
        serial = types.FunctionType(func.__code__, func.__globals__, func.__name__ + "_serial",
                                    func.__defaults__, func.__closure__)
        serial.__qualname__ = func.__qualname__ + "_serial"
        self.parallel = _kernel(parallel=True)(func)
        self.serial = _kernel()(serial)

    def run(self, threaded, *args):
        return (self.parallel if threaded else self.serial)(*args)


# Below this batch size every kernel runs serially: waking threads (and, on a busy
# machine, waiting for a core) costs more than splitting a few images' work gains.
_PARALLEL_MIN_BATCH = 32


def _threaded(batch_size):
    return batch_size >= _PARALLEL_MIN_BATCH and numba.get_num_threads() > 1


# ---- wide planes: stride-1 convolution on all images at once -------------------------------
# Images sit one after another along the flat axis of ``planes`` (C, N * Hp * Wp), so
# one wide row spans the whole batch (the positions between images are garbage too).
# Work splits into fixed chunks of positions, independent of the thread count.

_CHUNK = 1024


@_Twin
def _to_planes(x, padding, planes):
    """NCHW ``x`` -> zero-bordered ``planes`` (C, N * Hp * Wp)."""
    n, c, h, w = x.shape
    wp = w + 2 * padding
    size = (h + 2 * padding) * wp
    for ci in prange(c):
        if padding:
            planes[ci] = 0
        for b in range(n):
            for r in range(h):
                base = b * size + (r + padding) * wp + padding
                for col in range(w):
                    planes[ci, base + col] = x[b, ci, r, col]


@_Twin
def _from_planes(grad_planes, padding, grad_x):
    n, c, h, w = grad_x.shape
    wp = w + 2 * padding
    size = (h + 2 * padding) * wp
    for ci in prange(c):
        for b in range(n):
            for r in range(h):
                base = b * size + (r + padding) * wp + padding
                for col in range(w):
                    grad_x[b, ci, r, col] = grad_planes[ci, base + col]


@njit(cache=True, inline="always")
def _shift(t, kw, wp):
    return (t // kw) * wp + t % kw


@_Twin
def _wide_forward(planes, weight, bias, wp, total, y_wide):
    """y_wide[o, p] = bias[o] + sum over (ci, tap) of weight * planes[ci, p + shift(tap)], p < total."""
    out_c, c, kh, kw = weight.shape
    taps = kh * kw
    chunks = (total + _CHUNK - 1) // _CHUNK
    for item in prange(chunks * out_c):
        chunk, o = item // out_c, item % out_c
        p0 = chunk * _CHUNK
        length = min(_CHUNK, total - p0)
        row = y_wide[o, p0:p0 + length]
        row[:] = bias[o]
        for ci in range(c):
            t = 0
            while t + 4 <= taps:  # four taps per pass: one store per four multiply-adds
                a0, a1 = p0 + _shift(t, kw, wp), p0 + _shift(t + 1, kw, wp)
                a2, a3 = p0 + _shift(t + 2, kw, wp), p0 + _shift(t + 3, kw, wp)
                x0, x1 = planes[ci, a0:a0 + length], planes[ci, a1:a1 + length]
                x2, x3 = planes[ci, a2:a2 + length], planes[ci, a3:a3 + length]
                w0, w1 = weight[o, ci, t // kw, t % kw], weight[o, ci, (t + 1) // kw, (t + 1) % kw]
                w2, w3 = weight[o, ci, (t + 2) // kw, (t + 2) % kw], weight[o, ci, (t + 3) // kw, (t + 3) % kw]
                for p in range(length):
                    row[p] += w0 * x0[p] + w1 * x1[p] + w2 * x2[p] + w3 * x3[p]
                t += 4
            while t < taps:
                a0 = p0 + _shift(t, kw, wp)
                x0, w0 = planes[ci, a0:a0 + length], weight[o, ci, t // kw, t % kw]
                for p in range(length):
                    row[p] += w0 * x0[p]
                t += 1


@njit(cache=True, inline="always")
def _store_taps(kernel, t, kw, v0, v1, v2, v3):
    kernel[t // kw, t % kw] = v0
    kernel[(t + 1) // kw, (t + 1) % kw] = v1
    kernel[(t + 2) // kw, (t + 2) % kw] = v2
    kernel[(t + 3) // kw, (t + 3) % kw] = v3


@_Twin
def _wide_grad_weight(planes, grad_ext, margin, wp, total, kh, kw, partial):
    """partial[chunk, o, ci, tap] = sum over the chunk's p of grad_wide[o, p] * planes[ci, p + shift(tap)].

    ``grad_wide[o, p]`` is ``grad_ext[o, margin + p]``. Blocks of 2 outputs x 4 taps
    share their loads across eight running sums.
    """
    out_c, c = grad_ext.shape[0], planes.shape[0]
    taps = kh * kw
    chunks = (total + _CHUNK - 1) // _CHUNK
    pairs = (out_c + 1) // 2
    zero = grad_ext.dtype.type(0)
    for item in prange(chunks * pairs):
        chunk, o = item // pairs, 2 * (item % pairs)
        p0 = chunk * _CHUNK
        length = min(_CHUNK, total - p0)
        o2 = min(o + 1, out_c - 1)  # a lone last output computes its sums twice
        g, h = grad_ext[o, margin + p0:margin + p0 + length], grad_ext[o2, margin + p0:margin + p0 + length]
        for ci in range(c):
            t = 0
            while t + 4 <= taps:
                s0, s1 = p0 + _shift(t, kw, wp), p0 + _shift(t + 1, kw, wp)
                s2, s3 = p0 + _shift(t + 2, kw, wp), p0 + _shift(t + 3, kw, wp)
                v0, v1 = planes[ci, s0:s0 + length], planes[ci, s1:s1 + length]
                v2, v3 = planes[ci, s2:s2 + length], planes[ci, s3:s3 + length]
                a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = zero
                for p in range(length):
                    x0, x1, x2, x3 = v0[p], v1[p], v2[p], v3[p]
                    a0 += g[p] * x0
                    a1 += g[p] * x1
                    a2 += g[p] * x2
                    a3 += g[p] * x3
                    b0 += h[p] * x0
                    b1 += h[p] * x1
                    b2 += h[p] * x2
                    b3 += h[p] * x3
                _store_taps(partial[chunk, o, ci], t, kw, a0, a1, a2, a3)
                _store_taps(partial[chunk, o2, ci], t, kw, b0, b1, b2, b3)
                t += 4
            while t < taps:
                s0 = p0 + _shift(t, kw, wp)
                v0 = planes[ci, s0:s0 + length]
                a0 = b0 = zero
                for p in range(length):
                    a0 += g[p] * v0[p]
                    b0 += h[p] * v0[p]
                partial[chunk, o, ci, t // kw, t % kw] = a0
                partial[chunk, o2, ci, t // kw, t % kw] = b0
                t += 1


@_Twin
def _wide_grad_input(grad_ext, weight, margin, wp, grad_planes):
    """grad_planes[ci, q] = sum over (o, tap) of weight * grad_wide[o, q - shift(tap)] (zero outside)."""
    out_c, c, kh, kw = weight.shape
    taps = kh * kw
    full = grad_planes.shape[1]
    chunks = (full + _CHUNK - 1) // _CHUNK
    for item in prange(chunks * c):
        chunk, ci = item // c, item % c
        q0 = chunk * _CHUNK
        length = min(_CHUNK, full - q0)
        row = grad_planes[ci, q0:q0 + length]
        row[:] = 0
        for o in range(out_c):
            t = 0
            while t + 4 <= taps:
                s0, s1 = q0 + margin - _shift(t, kw, wp), q0 + margin - _shift(t + 1, kw, wp)
                s2, s3 = q0 + margin - _shift(t + 2, kw, wp), q0 + margin - _shift(t + 3, kw, wp)
                g0, g1 = grad_ext[o, s0:s0 + length], grad_ext[o, s1:s1 + length]
                g2, g3 = grad_ext[o, s2:s2 + length], grad_ext[o, s3:s3 + length]
                w0, w1 = weight[o, ci, t // kw, t % kw], weight[o, ci, (t + 1) // kw, (t + 1) % kw]
                w2, w3 = weight[o, ci, (t + 2) // kw, (t + 2) % kw], weight[o, ci, (t + 3) // kw, (t + 3) % kw]
                for q in range(length):
                    row[q] += w0 * g0[q] + w1 * g1[q] + w2 * g2[q] + w3 * g3[q]
                t += 4
            while t < taps:
                s0 = q0 + margin - _shift(t, kw, wp)
                g0, w0 = grad_ext[o, s0:s0 + length], weight[o, ci, t // kw, t % kw]
                for q in range(length):
                    row[q] += w0 * g0[q]
                t += 1


@_kernel()
def _sum_leading(parts, total):
    """total = parts[0] + parts[1] + ... in order (deterministic)."""
    flat_total = total.ravel()
    flat_total[:] = 0
    for k in range(parts.shape[0]):
        part = parts[k].ravel()
        for i in range(flat_total.size):
            flat_total[i] += part[i]


@_kernel()
def _row_sums(grad_ext, margin, total, out):
    for o in range(grad_ext.shape[0]):
        row = grad_ext[o, margin:margin + total]
        acc = grad_ext.dtype.type(0)
        for p in range(total):
            acc += row[p]
        out[o] = acc


@_Twin
def _unwide(y_wide, wp, size, y):
    n, out_c, out_h, out_w = y.shape
    for item in prange(n * out_c):
        b, o = item // out_c, item % out_c
        for oh in range(out_h):
            for ow in range(out_w):
                y[b, o, oh, ow] = y_wide[o, b * size + oh * wp + ow]


@_Twin
def _relu_max_pool_wide(y_wide, wp, size, pool_kernel, pool_stride, y, indices):
    """ReLU then max-pool, read straight from the wide rows; ``indices`` are wide positions.

    Pooling the raw conv output and clamping at zero afterwards equals pooling the
    ReLU output, and wherever the two argmaxes could differ (window max <= 0) the
    gradient is zero either way.
    """
    n, out_c, pool_h, pool_w = y.shape
    for item in prange(n * out_c):
        b, o = item // out_c, item % out_c
        for ph in range(pool_h):
            for pw in range(pool_w):
                best_at = b * size + ph * pool_stride * wp + pw * pool_stride
                best = y_wide[o, best_at]
                for i in range(pool_kernel):
                    for j in range(pool_kernel):
                        at = b * size + (ph * pool_stride + i) * wp + pw * pool_stride + j
                        if y_wide[o, at] > best:  # strict: the first maximum wins, as in torch
                            best, best_at = y_wide[o, at], at
                y[b, o, ph, pw] = best if best > 0 else 0
                indices[b, o, ph, pw] = best_at


@_kernel()
def _grad_ext_from_pool(grad_y, pool_y, indices, margin, grad_ext):
    n, out_c, pool_h, pool_w = grad_y.shape
    grad_ext[:] = 0
    for b in range(n):
        for o in range(out_c):
            for ph in range(pool_h):
                for pw in range(pool_w):
                    if pool_y[b, o, ph, pw] > 0:
                        grad_ext[o, margin + indices[b, o, ph, pw]] += grad_y[b, o, ph, pw]


@_kernel()
def _grad_ext_from_conv(grad_y, wp, size, margin, grad_ext):
    n, out_c, out_h, out_w = grad_y.shape
    grad_ext[:] = 0
    for b in range(n):
        for o in range(out_c):
            for oh in range(out_h):
                for ow in range(out_w):
                    grad_ext[o, margin + b * size + oh * wp + ow] = grad_y[b, o, oh, ow]


# ---- any-stride convolution (direct loops; not on the tutorial's path) -----------------


@njit(cache=True, inline="always")
def _valid_range(out_size, in_size, tap, stride, padding):
    """Output positions o with 0 <= o*stride + tap - padding < in_size, as [lo, hi)."""
    lo = max(0, -((tap - padding) // stride))  # ceil((padding - tap) / stride)
    hi = min(out_size, (in_size - 1 + padding - tap) // stride + 1)
    return lo, max(lo, hi)


@_Twin
def _conv2d_forward(x, weight, bias, stride, padding, y):
    n, c, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    _, _, out_h, out_w = y.shape
    for plane in prange(n * out_c):
        b, o = plane // out_c, plane % out_c
        y[b, o] = bias[o]
        for ci in range(c):
            for i in range(kh):
                oh_lo, oh_hi = _valid_range(out_h, h, i, stride, padding)
                for j in range(kw):
                    ow_lo, ow_hi = _valid_range(out_w, w, j, stride, padding)
                    tap = weight[o, ci, i, j]
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * stride + i - padding
                        for ow in range(ow_lo, ow_hi):
                            y[b, o, oh, ow] += tap * x[b, ci, ih, ow * stride + j - padding]


@_Twin
def _conv2d_grad_weight(x, grad_y, stride, padding, grad_weight, grad_bias):
    n, c, h, w = x.shape
    out_c, _, kh, kw = grad_weight.shape
    _, _, out_h, out_w = grad_y.shape
    for o in prange(out_c):
        total = grad_y.dtype.type(0)
        for b in range(n):
            for oh in range(out_h):
                for ow in range(out_w):
                    total += grad_y[b, o, oh, ow]
        grad_bias[o] = total
        for ci in range(c):
            for i in range(kh):
                oh_lo, oh_hi = _valid_range(out_h, h, i, stride, padding)
                for j in range(kw):
                    ow_lo, ow_hi = _valid_range(out_w, w, j, stride, padding)
                    acc = grad_y.dtype.type(0)
                    for b in range(n):
                        for oh in range(oh_lo, oh_hi):
                            ih = oh * stride + i - padding
                            for ow in range(ow_lo, ow_hi):
                                acc += grad_y[b, o, oh, ow] * x[b, ci, ih, ow * stride + j - padding]
                    grad_weight[o, ci, i, j] = acc


@_Twin
def _conv2d_grad_input(weight, grad_y, stride, padding, grad_x):
    n, c, h, w = grad_x.shape
    out_c, _, kh, kw = weight.shape
    _, _, out_h, out_w = grad_y.shape
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        grad_x[b, ci] = 0
        for o in range(out_c):
            for i in range(kh):
                oh_lo, oh_hi = _valid_range(out_h, h, i, stride, padding)
                for j in range(kw):
                    ow_lo, ow_hi = _valid_range(out_w, w, j, stride, padding)
                    tap = weight[o, ci, i, j]
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * stride + i - padding
                        for ow in range(ow_lo, ow_hi):
                            grad_x[b, ci, ih, ow * stride + j - padding] += tap * grad_y[b, o, oh, ow]


# ---- max-pool, ReLU, linear, loss, SGD ------------------------------------------------------


@_Twin
def _max_pool2d_forward(x, kernel, stride, y, indices):
    n, c, h, w = x.shape
    _, _, out_h, out_w = y.shape
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for oh in range(out_h):
            for ow in range(out_w):
                best_h, best_w = oh * stride, ow * stride
                best = x[b, ci, best_h, best_w]
                for i in range(kernel):
                    for j in range(kernel):
                        v = x[b, ci, oh * stride + i, ow * stride + j]
                        if v > best:  # strict: the first maximum wins, as in torch
                            best, best_h, best_w = v, oh * stride + i, ow * stride + j
                y[b, ci, oh, ow] = best
                indices[b, ci, oh, ow] = best_h * w + best_w


@_kernel()
def _max_pool2d_backward(grad_y, indices, grad_x):
    n, c, out_h, out_w = grad_y.shape
    w = grad_x.shape[3]
    grad_x[:] = 0
    for b in range(n):
        for ci in range(c):
            for oh in range(out_h):
                for ow in range(out_w):
                    k = indices[b, ci, oh, ow]
                    grad_x[b, ci, k // w, k % w] += grad_y[b, ci, oh, ow]


@_kernel()
def _relu_forward(x, y):
    flat_x, flat_y = x.ravel(), y.ravel()
    for k in range(flat_x.size):
        flat_y[k] = flat_x[k] if flat_x[k] > 0 else 0


@_kernel()
def _relu_backward(grad_y, y, grad_x):
    flat_g, flat_y, flat_out = grad_y.ravel(), y.ravel(), grad_x.ravel()
    for k in range(flat_g.size):
        flat_out[k] = flat_g[k] if flat_y[k] > 0 else 0


@_Twin
def _linear_forward(x, weight, bias, relu, y):
    """y = x @ weight.T + bias (then max(., 0) if ``relu``): four output features per pass over x's row."""
    n, in_f = x.shape
    out_f = weight.shape[0]
    for b in prange(n):
        o = 0
        while o + 4 <= out_f:
            a0 = a1 = a2 = a3 = x.dtype.type(0)
            for k in range(in_f):
                v = x[b, k]
                a0 += v * weight[o, k]
                a1 += v * weight[o + 1, k]
                a2 += v * weight[o + 2, k]
                a3 += v * weight[o + 3, k]
            y[b, o], y[b, o + 1], y[b, o + 2], y[b, o + 3] = a0, a1, a2, a3
            o += 4
        while o < out_f:
            a0 = x.dtype.type(0)
            for k in range(in_f):
                a0 += x[b, k] * weight[o, k]
            y[b, o] = a0
            o += 1
        for o in range(out_f):
            v = y[b, o] + bias[o]
            y[b, o] = v if v > 0 or not relu else 0


@_Twin
def _linear_backward(x, weight, grad_y, need_input_grad, grad_x, grad_weight, grad_bias):
    """Rows of grad_weight and grad_x as sums of scaled rows, four rows per pass."""
    n, in_f = x.shape
    out_f = weight.shape[0]
    for o in prange(out_f):
        row = grad_weight[o]
        row[:] = 0
        b = 0
        while b + 4 <= n:
            g0, g1, g2, g3 = grad_y[b, o], grad_y[b + 1, o], grad_y[b + 2, o], grad_y[b + 3, o]
            for k in range(in_f):
                row[k] += g0 * x[b, k] + g1 * x[b + 1, k] + g2 * x[b + 2, k] + g3 * x[b + 3, k]
            b += 4
        while b < n:
            g0 = grad_y[b, o]
            for k in range(in_f):
                row[k] += g0 * x[b, k]
            b += 1
        total = grad_y.dtype.type(0)
        for b in range(n):
            total += grad_y[b, o]
        grad_bias[o] = total
    if need_input_grad:
        for b in prange(n):
            row = grad_x[b]
            row[:] = 0
            o = 0
            while o + 4 <= out_f:
                g0, g1, g2, g3 = grad_y[b, o], grad_y[b, o + 1], grad_y[b, o + 2], grad_y[b, o + 3]
                for k in range(in_f):
                    row[k] += g0 * weight[o, k] + g1 * weight[o + 1, k] + g2 * weight[o + 2, k] + g3 * weight[o + 3, k]
                o += 4
            while o < out_f:
                g0 = grad_y[b, o]
                for k in range(in_f):
                    row[k] += g0 * weight[o, k]
                o += 1


@njit(cache=True)
def _cross_entropy_forward(logits, labels, probs):
    n, classes = logits.shape
    loss = 0.0
    for b in range(n):
        peak = logits[b, 0]
        for k in range(1, classes):
            peak = max(peak, logits[b, k])
        total = logits.dtype.type(0)
        for k in range(classes):
            total += np.exp(logits[b, k] - peak)
        log_sum_exp = np.log(total)
        for k in range(classes):
            probs[b, k] = np.exp(logits[b, k] - peak - log_sum_exp)
        loss -= logits[b, labels[b]] - peak - log_sum_exp
    return loss / n


@njit(cache=True)
def _cross_entropy_backward(probs, labels, grad):
    n, classes = probs.shape
    for b in range(n):
        for k in range(classes):
            grad[b, k] = probs[b, k] / n
        grad[b, labels[b]] = (probs[b, labels[b]] - 1) / n


@njit(cache=True)
def _sgd_step(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    p, g, m = param.ravel(), grad.ravel(), buf.ravel()
    dtype = p.dtype.type
    lr, momentum, dampening, weight_decay = dtype(lr), dtype(momentum), dtype(dampening), dtype(weight_decay)
    if momentum != 0 and weight_decay == 0 and not nesterov and not first:
        # The usual step, without branches in the loop so that it vectorizes.
        for k in range(p.size):
            m[k] = momentum * m[k] + (1 - dampening) * g[k]
            p[k] -= lr * m[k]
        return
    for k in range(p.size):
        d_p = g[k] + weight_decay * p[k] if weight_decay != 0 else g[k]
        if momentum != 0:
            if first:
                m[k] = d_p
            else:
                m[k] = momentum * m[k] + (1 - dampening) * d_p
            d_p = d_p + momentum * m[k] if nesterov else m[k]
        p[k] -= lr * d_p


@njit(cache=True)
def _sgd_steps(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
    """``_sgd_step`` over tuples of flat arrays: one call for the whole network."""
    for k in range(len(params)):
        _sgd_step(params[k], grads[k], bufs[k], lr, momentum, dampening, weight_decay, nesterov, first)


def _flat(arrays):
    """1-D views, so that arrays of any shapes make one tuple type (one compiled ``_sgd_steps``)."""
    return tuple(array.reshape(-1) for array in arrays)


class _WideGeometry:
    """Sizes of the wide-plane layout for a stride-1 convolution."""

    def __init__(self, x_shape, weight_shape, padding):
        n, _, h, w = x_shape
        _, _, kh, kw = weight_shape
        self.padding = padding
        self.wp = w + 2 * padding
        self.size = (h + 2 * padding) * self.wp  # one padded plane
        self.full = n * self.size  # all images' planes
        self.out_hw = (h + 2 * padding - kh + 1, w + 2 * padding - kw + 1)
        self.margin = (kh - 1) * self.wp + kw - 1  # largest tap shift
        self.total = self.full - self.margin  # wide positions covering every output pixel


class NumbaBackend(NumpyBackend):
    name = "numba"

    def conv2d_forward(self, x, weight, bias, stride, padding):
        if bias is None:
            bias = np.zeros(weight.shape[0], dtype=x.dtype)
        x = np.ascontiguousarray(x)
        threaded = _threaded(x.shape[0])
        if stride == 1:
            y_wide, geometry = self._wide_forward(x, weight, bias, padding, threaded)
            y = np.empty((x.shape[0], weight.shape[0]) + geometry.out_hw, dtype=x.dtype)
            _unwide.run(threaded, y_wide, geometry.wp, geometry.size, y)
            return y
        n, _, h, w = x.shape
        out_c, _, kh, kw = weight.shape
        out_h = (h + 2 * padding - kh) // stride + 1
        out_w = (w + 2 * padding - kw) // stride + 1
        y = np.empty((n, out_c, out_h, out_w), dtype=x.dtype)
        _conv2d_forward.run(threaded, x, weight, bias, stride, padding, y)
        return y

    def conv2d_backward(self, x, weight, grad_y, stride, padding, need_input_grad=True):
        grad_y = np.ascontiguousarray(grad_y)
        x = np.ascontiguousarray(x)
        threaded = _threaded(x.shape[0])
        if stride == 1:
            geometry = _WideGeometry(x.shape, weight.shape, padding)
            grad_ext = np.empty((weight.shape[0], geometry.margin + geometry.full), dtype=x.dtype)
            _grad_ext_from_conv(grad_y, geometry.wp, geometry.size, geometry.margin, grad_ext)
            return self._wide_backward(x, weight, grad_ext, geometry, need_input_grad, threaded)
        grad_weight = np.empty_like(weight)
        grad_bias = np.empty(weight.shape[0], dtype=weight.dtype)
        _conv2d_grad_weight.run(threaded, x, grad_y, stride, padding, grad_weight, grad_bias)
        grad_x = None
        if need_input_grad:
            grad_x = np.empty_like(x)
            _conv2d_grad_input.run(threaded, weight, grad_y, stride, padding, grad_x)
        return grad_x, grad_weight, grad_bias

    def conv2d_relu_max_pool2d_forward(self, x, weight, bias, stride, padding, pool_kernel, pool_stride):
        if stride != 1:
            return super().conv2d_relu_max_pool2d_forward(x, weight, bias, stride, padding, pool_kernel, pool_stride)
        if bias is None:
            bias = np.zeros(weight.shape[0], dtype=x.dtype)
        threaded = _threaded(x.shape[0])
        y_wide, geometry = self._wide_forward(np.ascontiguousarray(x), weight, bias, padding, threaded)
        out_h, out_w = geometry.out_hw
        shape = (x.shape[0], weight.shape[0], (out_h - pool_kernel) // pool_stride + 1,
                 (out_w - pool_kernel) // pool_stride + 1)
        y = np.empty(shape, dtype=x.dtype)
        indices = np.empty(shape, dtype=np.int64)
        _relu_max_pool_wide.run(threaded, y_wide, geometry.wp, geometry.size, pool_kernel, pool_stride, y, indices)
        return y, (y, indices)

    def conv2d_relu_max_pool2d_backward(self, x, weight, saved, grad_y, stride, padding, pool_kernel, pool_stride,
                                        need_input_grad=True):
        if stride != 1:
            return super().conv2d_relu_max_pool2d_backward(x, weight, saved, grad_y, stride, padding,
                                                           pool_kernel, pool_stride, need_input_grad)
        pool_y, indices = saved
        x = np.ascontiguousarray(x)
        threaded = _threaded(x.shape[0])
        geometry = _WideGeometry(x.shape, weight.shape, padding)
        grad_ext = np.empty((weight.shape[0], geometry.margin + geometry.full), dtype=x.dtype)
        _grad_ext_from_pool(np.ascontiguousarray(grad_y), pool_y, indices, geometry.margin, grad_ext)
        return self._wide_backward(x, weight, grad_ext, geometry, need_input_grad, threaded)

    @staticmethod
    def _wide_forward(x, weight, bias, padding, threaded):
        geometry = _WideGeometry(x.shape, weight.shape, padding)
        planes = np.empty((x.shape[1], geometry.full), dtype=x.dtype)
        _to_planes.run(threaded, x, padding, planes)
        y_wide = np.empty((weight.shape[0], geometry.total), dtype=x.dtype)
        _wide_forward.run(threaded, planes, weight, bias, geometry.wp, geometry.total, y_wide)
        return y_wide, geometry

    @staticmethod
    def _wide_backward(x, weight, grad_ext, geometry, need_input_grad, threaded):
        """Gradients from ``grad_ext``: the output gradient on wide rows after ``margin`` zeros."""
        out_c, _, kh, kw = weight.shape
        planes = np.empty((x.shape[1], geometry.full), dtype=x.dtype)
        _to_planes.run(threaded, x, geometry.padding, planes)
        chunks = -(-geometry.total // _CHUNK)
        partial = np.empty((chunks,) + weight.shape, dtype=x.dtype)
        _wide_grad_weight.run(threaded, planes, grad_ext, geometry.margin, geometry.wp, geometry.total, kh, kw, partial)
        grad_weight = np.empty_like(weight)
        _sum_leading(partial, grad_weight)
        grad_bias = np.empty(out_c, dtype=x.dtype)
        _row_sums(grad_ext, geometry.margin, geometry.total, grad_bias)
        grad_x = None
        if need_input_grad:
            grad_planes = np.empty_like(planes)
            _wide_grad_input.run(threaded, grad_ext, weight, geometry.margin, geometry.wp, grad_planes)
            grad_x = np.empty_like(x)
            _from_planes.run(threaded, grad_planes, geometry.padding, grad_x)
        return grad_x, grad_weight, grad_bias

    def max_pool2d_forward(self, x, kernel, stride):
        n, c, h, w = x.shape
        shape = (n, c, (h - kernel) // stride + 1, (w - kernel) // stride + 1)
        y = np.empty(shape, dtype=x.dtype)
        indices = np.empty(shape, dtype=np.int64)
        _max_pool2d_forward.run(_threaded(n), np.ascontiguousarray(x), kernel, stride, y, indices)
        return y, indices

    def max_pool2d_backward(self, grad_y, indices, x_shape, kernel, stride):
        grad_x = np.empty(x_shape, dtype=grad_y.dtype)
        _max_pool2d_backward(np.ascontiguousarray(grad_y), indices, grad_x)
        return grad_x

    def relu_forward(self, x):
        y = np.empty_like(x)
        _relu_forward(np.ascontiguousarray(x), y)
        return y

    def relu_backward(self, grad_y, y):
        grad_x = np.empty_like(y)
        _relu_backward(np.ascontiguousarray(grad_y), y, grad_x)
        return grad_x

    def linear_forward(self, x, weight, bias):
        y = np.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
        if bias is None:
            bias = np.zeros(weight.shape[0], dtype=x.dtype)
        _linear_forward.run(_threaded(x.shape[0]), np.ascontiguousarray(x), weight, bias, False, y)
        return y

    def linear_backward(self, x, weight, grad_y, need_input_grad=True):
        grad_x = np.empty_like(x) if need_input_grad else np.empty((0, x.shape[1]), dtype=x.dtype)
        grad_weight = np.empty_like(weight)
        grad_bias = np.empty(weight.shape[0], dtype=weight.dtype)
        _linear_backward.run(_threaded(x.shape[0]), np.ascontiguousarray(x), weight, np.ascontiguousarray(grad_y),
                             need_input_grad, grad_x, grad_weight, grad_bias)
        return (grad_x if need_input_grad else None), grad_weight, grad_bias

    def cross_entropy_forward(self, logits, labels):
        probs = np.empty_like(logits)
        loss = _cross_entropy_forward(np.ascontiguousarray(logits), np.asarray(labels, dtype=np.int64), probs)
        return np.asarray(loss, dtype=logits.dtype), probs

    def cross_entropy_backward(self, probs, labels):
        grad = np.empty_like(probs)
        _cross_entropy_backward(probs, np.asarray(labels, dtype=np.int64), grad)
        return grad

    def sgd_step(self, param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
        _sgd_step(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first)

    def sgd_steps(self, params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
        if len({array.dtype for array in params}) != 1:  # a tuple of mixed dtypes is no single kernel type
            return super().sgd_steps(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first)
        _sgd_steps(_flat(params), _flat(grads), _flat(bufs), lr, momentum, dampening, weight_decay, nesterov, first)


def create():
    return NumbaBackend()
