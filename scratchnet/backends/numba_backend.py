"""The fast CPU backend: every operation is an ``@njit(cache=True)`` kernel of ours.

Stride-1 convolutions (the tutorial's) use *shifted planes*. Each input channel
is stored ``KW`` times, copy ``j`` shifted left by ``j`` columns and cropped to the
output width ``OW``; inside a copy, row ``r`` of each image in a small group of
``G`` images follows row ``r`` of the image before it. Flat position
``p = (oh * G + b) * OW + ow`` then names output pixel ``(b, oh, ow)``, and kernel
tap ``(i, j)`` reads copy ``j`` at ``p + i * G * OW``: every tap is one contiguous
vector operation over a whole group's outputs, with no wasted columns (planes
flattened at full width compute 1.8 positions per output of the tutorial's second
conv, 14-wide rows for 10 outputs). The forward keeps the copies for the weight
gradient. Inner loops update rows with five taps per pass (one store per five
multiply-adds; the forward updates three outputs' rows per pass, which share the
input loads) or run register-blocked dot products, so LLVM vectorizes them;
element loops index views by the loop counter alone (see ``_copy``).

Kernels compile with the ``contract`` and ``reassoc`` math flags only: fused
multiply-add and reordered sums, which let reductions vectorize. No flag
changes NaN/inf handling; the op tests hold the results to torch's tolerances.

Parallel loops run over images or fixed chunks of positions; per-chunk weight
gradients are summed afterwards in chunk order, so results never depend on the
thread count or timing. Each such kernel also has a serial twin, which small
batches use (see ``_PARALLEL_MIN_BATCH``).
"""

import types

import numba
import numpy as np
from numba import njit, prange

from scratchnet.backends.numpy_backend import NumpyBackend, accumulate

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


# ---- shifted planes: stride-1 convolution on groups of images at once ----------------------
# The batch splits into groups of ``G`` images (see ``_group_size``). In group ``g``,
# ``planes[g, j, ci]`` holds channel ``ci`` of the padded input shifted left by ``j``
# columns and cropped to the output width, row ``r`` of the group's image ``b`` at
# ``(r * G + b) * OW``. Outputs ``rows[o, g]`` (OH * G * OW) use the same order, so tap
# ``(i, j)`` of output position ``p`` reads ``planes[g, j, ci, p + i * span]`` with
# ``span = G * OW``. Work splits into fixed chunks of positions, independent of the
# thread count.

_CHUNK = 512
# At most this many images per group: a tap row's shift (``span``) grows with the group,
# and past a few images the taps of one chunk no longer share the cache.
_MAX_GROUP = 8


def _group_size(batch_size):
    """The largest divisor of the batch up to ``_MAX_GROUP``: equal groups, no padding images."""
    return max(size for size in range(1, _MAX_GROUP + 1) if batch_size % size == 0)


@njit(cache=True, inline="always")
def _copy(dst, src):
    """Element loops index views by the loop counter alone: an offset index (``start + k``)
    makes numba check it for negative wraparound on every element, which stops vectorization."""
    for k in range(dst.size):
        dst[k] = src[k]


@njit(cache=True, inline="always")
def _add(dst, src):
    for k in range(dst.size):
        dst[k] += src[k]


@njit(cache=True, inline="always")
def _fill(dst, value):
    for k in range(dst.size):
        dst[k] = value


@_Twin
def _to_shifted_planes(x, padding, planes):
    """NCHW ``x`` -> ``planes[g, j, ci, (r * G + b) * OW + col] = x_padded[g * G + b, ci, r, col + j]``."""
    n, c, h, w = x.shape
    groups, kw = planes.shape[0], planes.shape[1]
    size = n // groups
    out_w = w + 2 * padding - kw + 1
    for item in prange(groups * kw * c):
        g, j, ci = item // (kw * c), (item // c) % kw, item % c
        plane = planes[g, j, ci]
        if padding:
            _fill(plane, 0)
        lo = max(0, padding - j)  # output columns [lo, hi) read inside x; the rest read padding
        hi = max(lo, min(out_w, w + padding - j))
        for r in range(h):
            for b in range(size):
                start = ((r + padding) * size + b) * out_w
                _copy(plane[start + lo:start + hi], x[g * size + b, ci, r, lo + j - padding:hi + j - padding])


@_Twin
def _from_shifted_planes(grad_planes, padding, grad_x):
    """grad_x[g * G + b, ci, r, col] = sum over j of
    grad_planes[g, j, ci, ((r + padding) * G + b) * OW + col + padding - j] (where that column exists)."""
    n, c, h, w = grad_x.shape
    groups, kw = grad_planes.shape[0], grad_planes.shape[1]
    size = n // groups
    out_w = w + 2 * padding - kw + 1
    for item in prange(n * c):
        image, ci = item // c, item % c
        g, b = image // size, image % size
        for r in range(h):
            base = ((r + padding) * size + b) * out_w + padding
            dst = grad_x[image, ci, r]
            _fill(dst, 0)
            for j in range(kw):  # fixed order: the same sums whatever the threads
                lo, hi = max(0, j - padding), max(0, min(w, out_w + j - padding))  # columns inside copy j
                _add(dst[lo:hi], grad_planes[g, j, ci, base + lo - j:base + hi - j])


@njit(cache=True, inline="always")
def _tap(t, kw):
    """Tap ``t`` as (i, j), row by row: sums run in torch's order, which keeps float32 results close to its."""
    return t // kw, t % kw


@njit(cache=True, inline="always")
def _tap_input(planes, g, ci, t, kw, span, p0, length):
    i, j = _tap(t, kw)
    start = p0 + i * span
    return planes[g, j, ci, start:start + length]  # integer indices then one slice: a contiguous view


@njit(cache=True, inline="always")
def _tap_weight(weight, o, ci, t, kw):
    i, j = _tap(t, kw)
    return weight[o, ci, i, j]


@njit(cache=True, inline="always")
def _five_tap_weights(weight, o, ci, t, kw):
    return (_tap_weight(weight, o, ci, t, kw), _tap_weight(weight, o, ci, t + 1, kw),
            _tap_weight(weight, o, ci, t + 2, kw), _tap_weight(weight, o, ci, t + 3, kw),
            _tap_weight(weight, o, ci, t + 4, kw))


@_Twin
def _shifted_forward(planes, weight, bias, span, rows):
    """rows[o, g, p] = bias[o] + sum over (ci, i, j) of weight[o, ci, i, j] * planes[g, j, ci, p + i * span].

    Each pass updates three outputs, which share the loads of their inputs.
    """
    out_c, c, kh, kw = weight.shape
    taps = kh * kw
    groups, total = rows.shape[1], rows.shape[2]
    chunks = (total + _CHUNK - 1) // _CHUNK
    triples = (out_c + 2) // 3
    for item in prange(groups * chunks * triples):
        g, chunk, o0 = item // (chunks * triples), (item // triples) % chunks, 3 * (item % triples)
        p0 = chunk * _CHUNK
        length = min(_CHUNK, total - p0)
        o1, o2 = min(o0 + 1, out_c - 1), min(o0 + 2, out_c - 1)
        # Past the last output, a triple's missing members add their sums into spare rows, one
        # each: rows that alias would make LLVM fall back to its scalar loop.
        spare = np.empty((2, length if o2 < o0 + 2 else 0), rows.dtype)
        row0 = rows[o0, g, p0:p0 + length]
        row1 = rows[o1, g, p0:p0 + length] if o1 > o0 else spare[0]
        row2 = rows[o2, g, p0:p0 + length] if o2 > o1 else spare[1]
        _fill(row0, bias[o0])
        _fill(row1, bias[o1])
        _fill(row2, bias[o2])
        for ci in range(c):
            t = 0
            while t + 5 <= taps:  # five taps per pass (a 5x5 kernel's row): one store per five multiply-adds
                x0 = _tap_input(planes, g, ci, t, kw, span, p0, length)
                x1 = _tap_input(planes, g, ci, t + 1, kw, span, p0, length)
                x2 = _tap_input(planes, g, ci, t + 2, kw, span, p0, length)
                x3 = _tap_input(planes, g, ci, t + 3, kw, span, p0, length)
                x4 = _tap_input(planes, g, ci, t + 4, kw, span, p0, length)
                u0, u1, u2, u3, u4 = _five_tap_weights(weight, o0, ci, t, kw)
                v0, v1, v2, v3, v4 = _five_tap_weights(weight, o1, ci, t, kw)
                w0, w1, w2, w3, w4 = _five_tap_weights(weight, o2, ci, t, kw)
                for p in range(length):
                    # Read once into locals: a store to a row might alias the inputs, and would force reloads.
                    a0, a1, a2, a3, a4 = x0[p], x1[p], x2[p], x3[p], x4[p]
                    row0[p] += u0 * a0 + u1 * a1 + u2 * a2 + u3 * a3 + u4 * a4
                    row1[p] += v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3 + v4 * a4
                    row2[p] += w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3 + w4 * a4
                t += 5
            while t < taps:
                x0 = _tap_input(planes, g, ci, t, kw, span, p0, length)
                u0, v0 = _tap_weight(weight, o0, ci, t, kw), _tap_weight(weight, o1, ci, t, kw)
                w0 = _tap_weight(weight, o2, ci, t, kw)
                for p in range(length):
                    a0 = x0[p]
                    row0[p] += u0 * a0
                    row1[p] += v0 * a0
                    row2[p] += w0 * a0
                t += 1


@njit(cache=True, inline="always")
def _store_taps(kernel, t, kw, v0, v1, v2, v3):
    kernel[_tap(t, kw)] = v0
    kernel[_tap(t + 1, kw)] = v1
    kernel[_tap(t + 2, kw)] = v2
    kernel[_tap(t + 3, kw)] = v3


@_Twin
def _shifted_grad_weight(planes, grad_rows, span, partial):
    """partial[g * chunks + chunk, o, ci, i, j] = sum over the chunk's p of
    grad_rows[o, g, p] * planes[g, j, ci, p + i * span].

    Blocks of 2 outputs x 4 taps share their loads across eight running sums.
    """
    _, out_c, c, kh, kw = partial.shape
    taps = kh * kw
    groups, total = grad_rows.shape[1], grad_rows.shape[2]
    chunks = (total + _CHUNK - 1) // _CHUNK
    pairs = (out_c + 1) // 2
    zero = grad_rows.dtype.type(0)
    for item in prange(groups * chunks * pairs):
        g, chunk, o = item // (chunks * pairs), (item // pairs) % chunks, 2 * (item % pairs)
        part = g * chunks + chunk
        p0 = chunk * _CHUNK
        length = min(_CHUNK, total - p0)
        o2 = min(o + 1, out_c - 1)  # a lone last output computes its sums twice
        gr, hr = grad_rows[o, g, p0:p0 + length], grad_rows[o2, g, p0:p0 + length]
        for ci in range(c):
            t = 0
            while t + 4 <= taps:
                v0 = _tap_input(planes, g, ci, t, kw, span, p0, length)
                v1 = _tap_input(planes, g, ci, t + 1, kw, span, p0, length)
                v2 = _tap_input(planes, g, ci, t + 2, kw, span, p0, length)
                v3 = _tap_input(planes, g, ci, t + 3, kw, span, p0, length)
                a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = zero
                for p in range(length):
                    x0, x1, x2, x3 = v0[p], v1[p], v2[p], v3[p]
                    a0 += gr[p] * x0
                    a1 += gr[p] * x1
                    a2 += gr[p] * x2
                    a3 += gr[p] * x3
                    b0 += hr[p] * x0
                    b1 += hr[p] * x1
                    b2 += hr[p] * x2
                    b3 += hr[p] * x3
                _store_taps(partial[part, o, ci], t, kw, a0, a1, a2, a3)
                _store_taps(partial[part, o2, ci], t, kw, b0, b1, b2, b3)
                t += 4
            while t < taps:
                v0 = _tap_input(planes, g, ci, t, kw, span, p0, length)
                a0 = b0 = zero
                for p in range(length):
                    a0 += gr[p] * v0[p]
                    b0 += hr[p] * v0[p]
                partial[part, o, ci][_tap(t, kw)] = a0
                partial[part, o2, ci][_tap(t, kw)] = b0
                t += 1


@_Twin
def _shifted_grad_input(grad_rows, weight, span, grad_planes):
    """grad_planes[g, j, ci, q] = sum over (o, i) of weight[o, ci, i, j] * grad_rows[o, g, q - i * span]
    (zero outside)."""
    out_c, c, kh, kw = weight.shape
    total = grad_rows.shape[2]
    groups, full = grad_planes.shape[0], grad_planes.shape[3]
    chunks = (full + _CHUNK - 1) // _CHUNK
    for item in prange(groups * chunks * kw * c):
        g, chunk = item // (chunks * kw * c), (item // (kw * c)) % chunks
        j, ci = (item // c) % kw, item % c
        q0 = chunk * _CHUNK
        length = min(_CHUNK, full - q0)
        row = grad_planes[g, j, ci, q0:q0 + length]
        _fill(row, 0)
        for i in range(kh):
            lo, hi = max(q0, i * span), min(q0 + length, i * span + total)  # where tap row i reaches
            if lo >= hi:
                continue
            part = row[lo - q0:hi - q0]
            s = lo - i * span
            o = 0
            while o + 4 <= out_c:  # four outputs per pass: one store per four multiply-adds
                g0, g1 = grad_rows[o, g, s:s + hi - lo], grad_rows[o + 1, g, s:s + hi - lo]
                g2, g3 = grad_rows[o + 2, g, s:s + hi - lo], grad_rows[o + 3, g, s:s + hi - lo]
                w0, w1 = weight[o, ci, i, j], weight[o + 1, ci, i, j]
                w2, w3 = weight[o + 2, ci, i, j], weight[o + 3, ci, i, j]
                for q in range(hi - lo):
                    part[q] += w0 * g0[q] + w1 * g1[q] + w2 * g2[q] + w3 * g3[q]
                o += 4
            while o < out_c:
                g0, w0 = grad_rows[o, g, s:s + hi - lo], weight[o, ci, i, j]
                for q in range(hi - lo):
                    part[q] += w0 * g0[q]
                o += 1


@_kernel()
def _add_sum_leading(parts, total):
    """total += parts[0] + parts[1] + ..., summed in order (deterministic), then added (as autograd does)."""
    flat_total = total.ravel()
    acc = np.zeros_like(flat_total)
    for k in range(parts.shape[0]):
        _add(acc, parts[k].ravel())
    _add(flat_total, acc)


@_kernel()
def _add_row_sums(rows, out):
    """out[o] += the sum of rows[o]."""
    for o in range(rows.shape[0]):
        row = rows[o].ravel()
        acc = rows.dtype.type(0)
        for p in range(row.size):
            acc += row[p]
        out[o] += acc


@_Twin
def _from_rows(rows, y):
    """NCHW ``y`` from ``rows[o, g, (oh * G + b) * OW + ow]``."""
    n, out_c, out_h, out_w = y.shape
    size = n // rows.shape[1]
    for item in prange(n * out_c):
        image, o = item // out_c, item % out_c
        g, b = image // size, image % size
        for oh in range(out_h):
            start = (oh * size + b) * out_w
            _copy(y[image, o, oh], rows[o, g, start:start + out_w])


@_Twin
def _relu_max_pool_rows(rows, out_w, pool_kernel, pool_stride, y, indices):
    """ReLU then max-pool, read straight from ``rows``; ``indices`` are positions in the group's rows.

    Pooling the raw conv output and clamping at zero afterwards equals pooling the
    ReLU output, and wherever the two argmaxes could differ (window max <= 0) the
    gradient is zero either way.
    """
    n, out_c, pool_h, pool_w = y.shape
    size = n // rows.shape[1]
    for item in prange(n * out_c):
        image, o = item // out_c, item % out_c
        row = rows[o, image // size]
        b = image % size
        for ph in range(pool_h):
            for pw in range(pool_w):
                best_at = (ph * pool_stride * size + b) * out_w + pw * pool_stride
                best = row[best_at]
                for i in range(pool_kernel):
                    for j in range(pool_kernel):
                        at = ((ph * pool_stride + i) * size + b) * out_w + pw * pool_stride + j
                        if row[at] > best:  # strict: the first maximum wins, as in torch
                            best, best_at = row[at], at
                y[image, o, ph, pw] = best if best > 0 else 0
                indices[image, o, ph, pw] = best_at


@njit(cache=True, inline="always")
def _first_max_step(best, best_tap, value, tap):
    """One step of a window scan: strict, so the first maximum wins, as in torch."""
    better = value > best
    return (value if better else best), (tap if better else best_tap)


@_Twin
def _relu_max_pool_rows_2x2(rows, out_w, y, indices):
    """``_relu_max_pool_rows`` for the tutorial's 2x2 windows at stride 2, as selects over whole
    output rows: it vectorizes, where the general kernel's per-window branches mispredict on
    about every other comparison. Same scan order, so the same results."""
    n, out_c, pool_h, pool_w = y.shape
    size = n // rows.shape[1]
    below = size * out_w  # from a row of an image to its next row
    for item in prange(n * out_c):
        image, o = item // out_c, item % out_c
        row = rows[o, image // size]
        b = image % size
        for ph in range(pool_h):
            top = (2 * ph * size + b) * out_w
            upper, lower = row[top:top + 2 * pool_w], row[top + below:top + below + 2 * pool_w]
            y_row, indices_row = y[image, o, ph], indices[image, o, ph]
            for pw in range(pool_w):
                best, tap = upper[2 * pw], 0
                best, tap = _first_max_step(best, tap, upper[2 * pw + 1], 1)
                best, tap = _first_max_step(best, tap, lower[2 * pw], 2)
                best, tap = _first_max_step(best, tap, lower[2 * pw + 1], 3)
                y_row[pw] = best if best > 0 else 0
                indices_row[pw] = top + 2 * pw + (tap & 1) + (tap >> 1) * below


@_kernel()
def _grad_rows_from_pool(grad_y, pool_y, indices, grad_rows):
    n, out_c, pool_h, pool_w = grad_y.shape
    size = n // grad_rows.shape[1]
    _fill(grad_rows.ravel(), 0)
    for image in range(n):
        for o in range(out_c):
            row = grad_rows[o, image // size]
            for ph in range(pool_h):
                grad, kept, at = grad_y[image, o, ph], pool_y[image, o, ph], indices[image, o, ph]
                for pw in range(pool_w):
                    if kept[pw] > 0:
                        row[at[pw]] += grad[pw]


@_kernel()
def _grad_rows_from_conv(grad_y, grad_rows):
    n, out_c, out_h, out_w = grad_y.shape
    size = n // grad_rows.shape[1]
    for image in range(n):
        g, b = image // size, image % size
        for o in range(out_c):
            for oh in range(out_h):
                start = (oh * size + b) * out_w
                _copy(grad_rows[o, g, start:start + out_w], grad_y[image, o, oh])


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
def _linear_backward(x, weight, relu_y, grad_y, need_input_grad, grad_x, grad_weight, grad_bias):
    """Rows of grad_weight and grad_x as sums of scaled rows, four rows per pass. The weight
    and bias gradients are *added* to ``grad_weight`` and ``grad_bias``.

    With a ReLU's output ``relu_y`` (an empty array when there was no ReLU), ``grad_y``
    is the ReLU's output gradient and is masked first.
    """
    n, in_f = x.shape
    out_f = weight.shape[0]
    if relu_y.size:
        masked = np.empty_like(grad_y)
        _relu_backward(grad_y, relu_y, masked)
        grad_y = masked
    for o in prange(out_f):
        row = grad_weight[o]
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
        grad_bias[o] += total
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


# Flat views kept for at most this many lists of arrays: an optimizer passes the same three every step.
_FLAT_VIEWS_KEPT = 16


class _ShiftedGeometry:
    """Sizes of the shifted-plane layout for a stride-1 convolution."""

    def __init__(self, x_shape, weight_shape, padding):
        n, c, h, w = x_shape
        _, _, kh, kw = weight_shape
        self.x_shape, self.padding = x_shape, padding
        self.out_hw = (h + 2 * padding - kh + 1, w + 2 * padding - kw + 1)
        size = _group_size(n)
        self.groups = n // size
        self.span = size * self.out_hw[1]  # one output row of every image in a group: the shift of one tap row
        self.total = self.out_hw[0] * self.span  # a group's output pixels
        self.planes_shape = (self.groups, kw, c, (h + 2 * padding) * self.span)
        self.rows_shape = (weight_shape[0], self.groups, self.total)


class NumbaBackend(NumpyBackend):
    name = "numba"

    def __init__(self):
        # ids of a list's arrays -> their 1-D views. The views hold their arrays, so no id is reused meanwhile.
        self._flat_views = {}

    def _flat(self, arrays):
        """1-D views, so that arrays of any shapes make one tuple type (one compiled kernel);
        remembered, as reshaping every parameter costs more than the update of a small network."""
        key = tuple(map(id, arrays))
        views = self._flat_views.get(key)
        if views is None:
            if len(self._flat_views) >= _FLAT_VIEWS_KEPT:
                self._flat_views.clear()
            views = self._flat_views[key] = tuple(array.reshape(-1) for array in arrays)
        return views

    def conv2d_forward(self, x, weight, bias, stride, padding):
        if bias is None:
            bias = np.zeros(weight.shape[0], dtype=x.dtype)
        x = np.ascontiguousarray(x)
        threaded = _threaded(x.shape[0])
        if stride == 1:
            rows, _, geometry = self._shifted_forward(x, weight, bias, padding, threaded)
            y = np.empty((x.shape[0], weight.shape[0]) + geometry.out_hw, dtype=x.dtype)
            _from_rows.run(threaded, rows, y)
            return y
        n, _, h, w = x.shape
        out_c, _, kh, kw = weight.shape
        out_h = (h + 2 * padding - kh) // stride + 1
        out_w = (w + 2 * padding - kw) // stride + 1
        y = np.empty((n, out_c, out_h, out_w), dtype=x.dtype)
        _conv2d_forward.run(threaded, x, weight, bias, stride, padding, y)
        return y

    def conv2d_backward(self, x, weight, grad_y, stride, padding, need_input_grad=True, grad_weight=None,
                        grad_bias=None):
        grad_y = np.ascontiguousarray(grad_y)
        x = np.ascontiguousarray(x)
        threaded = _threaded(x.shape[0])
        if stride == 1:
            geometry = _ShiftedGeometry(x.shape, weight.shape, padding)
            grad_rows = np.empty(geometry.rows_shape, dtype=x.dtype)
            _grad_rows_from_conv(grad_y, grad_rows)
            planes = self._shifted_planes(x, geometry, threaded)
            return self._shifted_backward(planes, weight, grad_rows, geometry, need_input_grad, threaded,
                                          grad_weight, grad_bias)
        weight_sum = np.empty_like(weight)
        bias_sum = np.empty(weight.shape[0], dtype=weight.dtype)
        _conv2d_grad_weight.run(threaded, x, grad_y, stride, padding, weight_sum, bias_sum)
        grad_x = None
        if need_input_grad:
            grad_x = np.empty_like(x)
            _conv2d_grad_input.run(threaded, weight, grad_y, stride, padding, grad_x)
        return grad_x, accumulate(grad_weight, weight_sum), accumulate(grad_bias, bias_sum)

    def conv2d_relu_max_pool2d_forward(self, x, weight, bias, stride, padding, pool_kernel, pool_stride):
        if stride != 1:
            return super().conv2d_relu_max_pool2d_forward(x, weight, bias, stride, padding, pool_kernel, pool_stride)
        if bias is None:
            bias = np.zeros(weight.shape[0], dtype=x.dtype)
        threaded = _threaded(x.shape[0])
        rows, planes, geometry = self._shifted_forward(np.ascontiguousarray(x), weight, bias, padding, threaded)
        out_h, out_w = geometry.out_hw
        shape = (x.shape[0], weight.shape[0], (out_h - pool_kernel) // pool_stride + 1,
                 (out_w - pool_kernel) // pool_stride + 1)
        y = np.empty(shape, dtype=x.dtype)
        indices = np.empty(shape, dtype=np.int64)
        if pool_kernel == pool_stride == 2:
            _relu_max_pool_rows_2x2.run(threaded, rows, out_w, y, indices)
        else:
            _relu_max_pool_rows.run(threaded, rows, out_w, pool_kernel, pool_stride, y, indices)
        return y, (y, indices, planes)  # the planes again serve the weight gradient

    def conv2d_relu_max_pool2d_backward(self, x, weight, saved, grad_y, stride, padding, pool_kernel, pool_stride,
                                        need_input_grad=True, grad_weight=None, grad_bias=None):
        if stride != 1:
            return super().conv2d_relu_max_pool2d_backward(x, weight, saved, grad_y, stride, padding, pool_kernel,
                                                           pool_stride, need_input_grad, grad_weight, grad_bias)
        pool_y, indices, planes = saved
        geometry = _ShiftedGeometry(x.shape, weight.shape, padding)
        grad_rows = np.empty(geometry.rows_shape, dtype=x.dtype)
        _grad_rows_from_pool(np.ascontiguousarray(grad_y), pool_y, indices, grad_rows)
        return self._shifted_backward(planes, weight, grad_rows, geometry, need_input_grad, _threaded(x.shape[0]),
                                      grad_weight, grad_bias)

    @staticmethod
    def _shifted_planes(x, geometry, threaded):
        planes = np.empty(geometry.planes_shape, dtype=x.dtype)
        _to_shifted_planes.run(threaded, x, geometry.padding, planes)
        return planes

    @classmethod
    def _shifted_forward(cls, x, weight, bias, padding, threaded):
        """Return (rows, planes, geometry): the output on rows, and the shifted planes it read."""
        geometry = _ShiftedGeometry(x.shape, weight.shape, padding)
        planes = cls._shifted_planes(x, geometry, threaded)
        rows = np.empty(geometry.rows_shape, dtype=x.dtype)
        _shifted_forward.run(threaded, planes, weight, bias, geometry.span, rows)
        return rows, planes, geometry

    @staticmethod
    def _shifted_backward(planes, weight, grad_rows, geometry, need_input_grad, threaded, grad_weight, grad_bias):
        """Gradients from ``grad_rows``, the output gradient laid out as the forward's rows;
        the parameter gradients are added into ``grad_weight`` / ``grad_bias`` (new ones when None)."""
        parts = geometry.groups * -(-geometry.total // _CHUNK)
        partial = np.empty((parts,) + weight.shape, dtype=weight.dtype)
        _shifted_grad_weight.run(threaded, planes, grad_rows, geometry.span, partial)
        if grad_weight is None:
            grad_weight = np.zeros_like(weight)
        _add_sum_leading(partial, grad_weight)
        if grad_bias is None:
            grad_bias = np.zeros(weight.shape[0], dtype=weight.dtype)
        _add_row_sums(grad_rows, grad_bias)
        grad_x = None
        if need_input_grad:
            grad_planes = np.empty_like(planes)
            _shifted_grad_input.run(threaded, grad_rows, weight, geometry.span, grad_planes)
            grad_x = np.empty(geometry.x_shape, dtype=planes.dtype)
            _from_shifted_planes.run(threaded, grad_planes, geometry.padding, grad_x)
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
        return self._linear(x, weight, bias, relu=False)

    def linear_relu_forward(self, x, weight, bias):
        return self._linear(x, weight, bias, relu=True)

    def linear_backward(self, x, weight, grad_y, need_input_grad=True, grad_weight=None, grad_bias=None):
        return self._linear_gradients(x, weight, None, grad_y, need_input_grad, grad_weight, grad_bias)

    def linear_relu_backward(self, x, weight, y, grad_y, need_input_grad=True, grad_weight=None, grad_bias=None):
        return self._linear_gradients(x, weight, y, grad_y, need_input_grad, grad_weight, grad_bias)

    @staticmethod
    def _linear(x, weight, bias, relu):
        y = np.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
        if bias is None:
            bias = np.zeros(weight.shape[0], dtype=x.dtype)
        _linear_forward.run(_threaded(x.shape[0]), np.ascontiguousarray(x), weight, bias, relu, y)
        return y

    @staticmethod
    def _linear_gradients(x, weight, relu_y, grad_y, need_input_grad, grad_weight, grad_bias):
        """``linear_backward``, after a ReLU whose output was ``relu_y`` unless that is None."""
        grad_x = np.empty_like(x) if need_input_grad else np.empty((0, x.shape[1]), dtype=x.dtype)
        if grad_weight is None:
            grad_weight = np.zeros_like(weight)
        if grad_bias is None:
            grad_bias = np.zeros(weight.shape[0], dtype=weight.dtype)
        if relu_y is None:
            relu_y = np.empty((0, 0), dtype=x.dtype)  # no ReLU: nothing to mask
        _linear_backward.run(_threaded(x.shape[0]), np.ascontiguousarray(x), weight, relu_y,
                             np.ascontiguousarray(grad_y), need_input_grad, grad_x, grad_weight, grad_bias)
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
        _sgd_steps(self._flat(params), self._flat(grads), self._flat(bufs), lr, momentum, dampening,
                   weight_decay, nesterov, first)


def create():
    return NumbaBackend()
