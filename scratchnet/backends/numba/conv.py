"""Convolution kernels: stride-1 convolutions on shifted planes (the tutorial's path; any
other geometry runs the kernels of ``general``).

Inner loops update rows with five taps per pass (one store per five multiply-adds;
the forward updates three outputs' rows per pass, which share the input loads) or
run register-blocked dot products, so LLVM vectorizes them; element loops index
views by the loop counter alone (see ``jit.copy``). Per-chunk weight gradients are
summed afterwards in chunk order, so results never depend on the thread count.
"""

import numpy as np
from numba import njit, prange

from scratchnet.backends.numba.jit import Twin, add, fill, kernel
from scratchnet.backends.numba.layout import CHUNK


@njit(cache=True, inline="always")
def tap(t, kw):
    """Tap ``t`` as (i, j), row by row: sums run in torch's order, which keeps float32 results close to its."""
    return t // kw, t % kw


@njit(cache=True, inline="always")
def tap_input(planes, g, ci, t, kw, span, p0, length):
    i, j = tap(t, kw)
    start = p0 + i * span
    return planes[g, j, ci, start:start + length]  # integer indices then one slice: a contiguous view


@njit(cache=True, inline="always")
def tap_weight(weight, o, ci, t, kw):
    i, j = tap(t, kw)
    return weight[o, ci, i, j]


@njit(cache=True, inline="always")
def five_tap_weights(weight, o, ci, t, kw):
    return (tap_weight(weight, o, ci, t, kw), tap_weight(weight, o, ci, t + 1, kw),
            tap_weight(weight, o, ci, t + 2, kw), tap_weight(weight, o, ci, t + 3, kw),
            tap_weight(weight, o, ci, t + 4, kw))


@Twin
def shifted_forward(planes, weight, bias, span, rows):
    """rows[o, g, p] = bias[o] + sum over (ci, i, j) of weight[o, ci, i, j] * planes[g, j, ci, p + i * span].

    Each pass updates three outputs, which share the loads of their inputs.
    """
    out_c, c, kh, kw = weight.shape
    taps = kh * kw
    groups, total = rows.shape[1], rows.shape[2]
    chunks = (total + CHUNK - 1) // CHUNK
    triples = (out_c + 2) // 3
    for item in prange(groups * chunks * triples):
        g, chunk, o0 = item // (chunks * triples), (item // triples) % chunks, 3 * (item % triples)
        p0 = chunk * CHUNK
        length = min(CHUNK, total - p0)
        o1, o2 = min(o0 + 1, out_c - 1), min(o0 + 2, out_c - 1)
        # Past the last output, a triple's missing members add their sums into spare rows, one
        # each: rows that alias would make LLVM fall back to its scalar loop.
        spare = np.empty((2, length if o2 < o0 + 2 else 0), rows.dtype)
        row0 = rows[o0, g, p0:p0 + length]
        row1 = rows[o1, g, p0:p0 + length] if o1 > o0 else spare[0]
        row2 = rows[o2, g, p0:p0 + length] if o2 > o1 else spare[1]
        fill(row0, bias[o0])
        fill(row1, bias[o1])
        fill(row2, bias[o2])
        for ci in range(c):
            t = 0
            while t + 5 <= taps:  # five taps per pass (a 5x5 kernel's row): one store per five multiply-adds
                x0 = tap_input(planes, g, ci, t, kw, span, p0, length)
                x1 = tap_input(planes, g, ci, t + 1, kw, span, p0, length)
                x2 = tap_input(planes, g, ci, t + 2, kw, span, p0, length)
                x3 = tap_input(planes, g, ci, t + 3, kw, span, p0, length)
                x4 = tap_input(planes, g, ci, t + 4, kw, span, p0, length)
                u0, u1, u2, u3, u4 = five_tap_weights(weight, o0, ci, t, kw)
                v0, v1, v2, v3, v4 = five_tap_weights(weight, o1, ci, t, kw)
                w0, w1, w2, w3, w4 = five_tap_weights(weight, o2, ci, t, kw)
                for p in range(length):
                    # Read once into locals: a store to a row might alias the inputs, and would force reloads.
                    a0, a1, a2, a3, a4 = x0[p], x1[p], x2[p], x3[p], x4[p]
                    row0[p] += u0 * a0 + u1 * a1 + u2 * a2 + u3 * a3 + u4 * a4
                    row1[p] += v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3 + v4 * a4
                    row2[p] += w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3 + w4 * a4
                t += 5
            while t < taps:
                x0 = tap_input(planes, g, ci, t, kw, span, p0, length)
                u0, v0 = tap_weight(weight, o0, ci, t, kw), tap_weight(weight, o1, ci, t, kw)
                w0 = tap_weight(weight, o2, ci, t, kw)
                for p in range(length):
                    a0 = x0[p]
                    row0[p] += u0 * a0
                    row1[p] += v0 * a0
                    row2[p] += w0 * a0
                t += 1


@njit(cache=True, inline="always")
def store_taps(kernel, t, kw, v0, v1, v2, v3):
    kernel[tap(t, kw)] = v0
    kernel[tap(t + 1, kw)] = v1
    kernel[tap(t + 2, kw)] = v2
    kernel[tap(t + 3, kw)] = v3


@Twin
def shifted_grad_weight(planes, grad_rows, span, partial):
    """partial[g * chunks + chunk, o, ci, i, j] = sum over the chunk's p of
    grad_rows[o, g, p] * planes[g, j, ci, p + i * span].

    Blocks of 2 outputs x 4 taps share their loads across eight running sums.
    """
    _, out_c, c, kh, kw = partial.shape
    taps = kh * kw
    groups, total = grad_rows.shape[1], grad_rows.shape[2]
    chunks = (total + CHUNK - 1) // CHUNK
    pairs = (out_c + 1) // 2
    zero = grad_rows.dtype.type(0)
    for item in prange(groups * chunks * pairs):
        g, chunk, o = item // (chunks * pairs), (item // pairs) % chunks, 2 * (item % pairs)
        part = g * chunks + chunk
        p0 = chunk * CHUNK
        length = min(CHUNK, total - p0)
        o2 = min(o + 1, out_c - 1)  # a lone last output computes its sums twice
        gr, hr = grad_rows[o, g, p0:p0 + length], grad_rows[o2, g, p0:p0 + length]
        for ci in range(c):
            t = 0
            while t + 4 <= taps:
                v0 = tap_input(planes, g, ci, t, kw, span, p0, length)
                v1 = tap_input(planes, g, ci, t + 1, kw, span, p0, length)
                v2 = tap_input(planes, g, ci, t + 2, kw, span, p0, length)
                v3 = tap_input(planes, g, ci, t + 3, kw, span, p0, length)
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
                store_taps(partial[part, o, ci], t, kw, a0, a1, a2, a3)
                store_taps(partial[part, o2, ci], t, kw, b0, b1, b2, b3)
                t += 4
            while t < taps:
                v0 = tap_input(planes, g, ci, t, kw, span, p0, length)
                a0 = b0 = zero
                for p in range(length):
                    a0 += gr[p] * v0[p]
                    b0 += hr[p] * v0[p]
                partial[part, o, ci][tap(t, kw)] = a0
                partial[part, o2, ci][tap(t, kw)] = b0
                t += 1


@Twin
def shifted_grad_input(grad_rows, weight, span, grad_planes):
    """grad_planes[g, j, ci, q] = sum over (o, i) of weight[o, ci, i, j] * grad_rows[o, g, q - i * span]
    (zero outside)."""
    out_c, c, kh, kw = weight.shape
    total = grad_rows.shape[2]
    groups, full = grad_planes.shape[0], grad_planes.shape[3]
    chunks = (full + CHUNK - 1) // CHUNK
    for item in prange(groups * chunks * kw * c):
        g, chunk = item // (chunks * kw * c), (item // (kw * c)) % chunks
        j, ci = (item // c) % kw, item % c
        q0 = chunk * CHUNK
        length = min(CHUNK, full - q0)
        row = grad_planes[g, j, ci, q0:q0 + length]
        fill(row, 0)
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


@kernel()
def add_sum_leading(parts, total):
    """total += parts[0] + parts[1] + ..., summed in order (deterministic), then added (as autograd does)."""
    flat_total = total.ravel()
    acc = np.zeros_like(flat_total)
    for k in range(parts.shape[0]):
        add(acc, parts[k].ravel())
    add(flat_total, acc)


@kernel()
def add_row_sums(rows, out):
    """out[o] += the sum of rows[o]."""
    for o in range(rows.shape[0]):
        row = rows[o].ravel()
        acc = rows.dtype.type(0)
        for p in range(row.size):
            acc += row[p]
        out[o] += acc
