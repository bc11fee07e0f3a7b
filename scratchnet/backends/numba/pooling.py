"""Max-pool kernels: fused ReLU + max-pool read straight from a convolution's rows, and plain max-pool."""

import math

from numba import njit, prange

from scratchnet.backends.numba.jit import Twin, fill, kernel


@Twin
def relu_max_pool_rows(rows, out_w, pool_kernel, pool_stride, y, indices):
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
def first_max_step(best, best_tap, value, tap):
    """One step of a window scan: strict, so the first maximum wins, as in torch."""
    better = value > best
    return (value if better else best), (tap if better else best_tap)


@Twin
def relu_max_pool_rows_2x2(rows, out_w, as_taps, y, indices):
    """``relu_max_pool_rows`` for the tutorial's 2x2 windows at stride 2, as selects over whole
    output rows: it vectorizes, where the general kernel's per-window branches mispredict on
    about every other comparison. Same scan order, so the same results. With ``as_taps`` the
    argmax is kept as its tap in the window (0 to 3, row by row: a byte, not a position's eight,
    for ``grad_rows_from_pool_2x2``), else as its position in the rows (``grad_rows_from_pool``)."""
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
                best, tap = first_max_step(best, tap, upper[2 * pw + 1], 1)
                best, tap = first_max_step(best, tap, lower[2 * pw], 2)
                best, tap = first_max_step(best, tap, lower[2 * pw + 1], 3)
                y_row[pw] = best if best > 0 else 0
                indices_row[pw] = tap if as_taps else top + 2 * pw + (tap & 1) + (tap >> 1) * below


@Twin
def grad_rows_from_pool_2x2(grad_y, pool_y, taps, out_w, grad_rows):
    """The gradient of ``relu_max_pool_rows_2x2`` laid out as the rows: zero, then each window's argmax its
    gradient where the pooled value passed the ReLU. Channels and groups split over the threads: each owns a
    contiguous block of the rows."""
    n, out_c, pool_h, pool_w = grad_y.shape
    groups = grad_rows.shape[1]
    size = n // groups
    below = size * out_w
    for item in prange(out_c * groups):
        o, g = item // groups, item % groups
        row = grad_rows[o, g]
        fill(row, 0)
        for b in range(size):
            image = g * size + b
            for ph in range(pool_h):
                top = (2 * ph * size + b) * out_w
                grad, kept, tap_row = grad_y[image, o, ph], pool_y[image, o, ph], taps[image, o, ph]
                for pw in range(pool_w):
                    if kept[pw] > 0:
                        tap = tap_row[pw]
                        row[top + 2 * pw + (tap & 1) + (tap >> 1) * below] = grad[pw]


@kernel()
def grad_rows_from_pool(grad_y, pool_y, indices, grad_rows):
    n, out_c, pool_h, pool_w = grad_y.shape
    size = n // grad_rows.shape[1]
    fill(grad_rows.ravel(), 0)
    for image in range(n):
        for o in range(out_c):
            row = grad_rows[o, image // size]
            for ph in range(pool_h):
                grad, kept, at = grad_y[image, o, ph], pool_y[image, o, ph], indices[image, o, ph]
                for pw in range(pool_w):
                    if kept[pw] > 0:
                        row[at[pw]] += grad[pw]


@Twin
def max_pool2d_forward(x, kernel, stride, y, indices):
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
                        if v > best or v != v:  # strict: the first maximum wins, the last NaN, as in torch
                            best, best_h, best_w = v, oh * stride + i, ow * stride + j
                y[b, ci, oh, ow] = best
                indices[b, ci, oh, ow] = best_h * w + best_w


@njit(cache=True, inline="always")
def first_max_or_nan_step(best, best_at, value, at):
    """One step of a window scan as torch's max-pool takes it: the first maximum wins, and the last NaN."""
    better = (value > best) | (value != value)
    return (value if better else best), (at if better else best_at)


@Twin
def max_pool2d_forward_2x2(x, y, indices):
    """``max_pool2d_forward`` for 2x2 windows at stride 2, as selects over whole output rows: it vectorizes."""
    n, c, h, w = x.shape
    _, _, out_h, out_w = y.shape
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for oh in range(out_h):
            upper, lower = x[b, ci, 2 * oh], x[b, ci, 2 * oh + 1]
            y_row, indices_row = y[b, ci, oh], indices[b, ci, oh]
            top = 2 * oh * w
            for ow in range(out_w):
                best, at = upper[2 * ow], top + 2 * ow
                best, at = first_max_or_nan_step(best, at, upper[2 * ow + 1], top + 2 * ow + 1)
                best, at = first_max_or_nan_step(best, at, lower[2 * ow], top + w + 2 * ow)
                best, at = first_max_or_nan_step(best, at, lower[2 * ow + 1], top + w + 2 * ow + 1)
                y_row[ow] = best
                indices_row[ow] = at


@Twin
def max_pool2d_backward(grad_y, indices, grad_x):
    """Zero, then each window's gradient into its argmax; planes split over the threads (each owns its plane)."""
    n, c, out_h, out_w = grad_y.shape
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        dst = grad_x[b, ci].ravel()
        fill(dst, 0)
        for oh in range(out_h):
            grad, at = grad_y[b, ci, oh], indices[b, ci, oh]
            for ow in range(out_w):
                dst[at[ow]] += grad[ow]


# ---- average and adaptive pooling: gathers over (planes, H, W), as the CUDA kernels --------------------

@njit(cache=True)
def _avg_window(index, stride, pad, kernel, size):
    """(first, end) of the window's part inside the input, and its size clipped to the padded input."""
    start = index * stride - pad
    stop = min(start + kernel, size + pad)
    return max(start, 0), min(stop, size), stop - start


@njit(cache=True)
def _avg_divisor(inside, padded, count_include_pad, divisor_override):
    if divisor_override:
        return divisor_override
    return padded if count_include_pad else inside


@njit(cache=True)
def _window_sum(x, p, top, bottom, left, right):
    """The sum of plane ``p``'s rows [top, bottom) x columns [left, right), row by row (as the CUDA kernels)."""
    total = x.dtype.type(0)
    for iy in range(top, bottom):
        for ix in range(left, right):
            total += x[p, iy, ix]
    return total


@njit(cache=True)
def avg_pool2d_forward(x, y, stride_h, stride_w, pad_h, pad_w, kernel_h, kernel_w, count_include_pad,
                       divisor_override):
    planes, h, w = x.shape
    for p in range(planes):
        for row in range(y.shape[1]):
            top, bottom, rows = _avg_window(row, stride_h, pad_h, kernel_h, h)
            for col in range(y.shape[2]):
                left, right, cols = _avg_window(col, stride_w, pad_w, kernel_w, w)
                if top >= bottom or left >= right:
                    y[p, row, col] = 0
                    continue
                y[p, row, col] = _window_sum(x, p, top, bottom, left, right) / x.dtype.type(
                    _avg_divisor((bottom - top) * (right - left), rows * cols, count_include_pad, divisor_override))


@njit(cache=True)
def avg_pool2d_backward(grad_y, grad_x, stride_h, stride_w, pad_h, pad_w, kernel_h, kernel_w, count_include_pad,
                        divisor_override):
    planes, h, w = grad_x.shape
    out_h, out_w = grad_y.shape[1], grad_y.shape[2]
    for p in range(planes):
        for iy in range(h):
            row_lo = max(0, (iy + pad_h - kernel_h) // stride_h + 1)
            row_hi = min(out_h - 1, (iy + pad_h) // stride_h)
            for ix in range(w):
                col_lo = max(0, (ix + pad_w - kernel_w) // stride_w + 1)
                col_hi = min(out_w - 1, (ix + pad_w) // stride_w)
                total = grad_x.dtype.type(0)
                for row in range(row_lo, row_hi + 1):
                    top, bottom, rows = _avg_window(row, stride_h, pad_h, kernel_h, h)
                    for col in range(col_lo, col_hi + 1):
                        left, right, cols = _avg_window(col, stride_w, pad_w, kernel_w, w)
                        total += grad_y[p, row, col] / grad_x.dtype.type(_avg_divisor(
                            (bottom - top) * (right - left), rows * cols, count_include_pad, divisor_override))
                grad_x[p, iy, ix] = total


@njit(cache=True)
def _adaptive(index, size, out):
    return index * size // out, -(-(index + 1) * size // out)


@Twin
def adaptive_pool2d_forward(x, y, indices, take_max):
    planes, h, w = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    for p in prange(planes):
        for row in range(out_h):
            top, bottom = _adaptive(row, h, out_h)
            for col in range(out_w):
                left, right = _adaptive(col, w, out_w)
                if take_max:  # torch's scan: a strictly greater value or a NaN takes over
                    best, best_at = -math.inf, top * w + left
                    for iy in range(top, bottom):
                        for ix in range(left, right):
                            v = x[p, iy, ix]
                            if v > best or v != v:
                                best, best_at = v, iy * w + ix
                    y[p, row, col], indices[p, row, col] = best, best_at
                else:
                    y[p, row, col] = _window_sum(x, p, top, bottom, left, right) / x.dtype.type(
                        (bottom - top) * (right - left))


@Twin
def adaptive_pool2d_backward(grad_y, indices, grad_x, take_max):
    planes, h, w = grad_x.shape
    out_h, out_w = grad_y.shape[1], grad_y.shape[2]
    for p in prange(planes):
        for iy in range(h):
            for ix in range(w):
                total = grad_x.dtype.type(0)
                for row in range(out_h):
                    top, bottom = _adaptive(row, h, out_h)
                    if iy < top or iy >= bottom:
                        continue
                    for col in range(out_w):
                        left, right = _adaptive(col, w, out_w)
                        if ix < left or ix >= right:
                            continue
                        if not take_max:
                            total += grad_y[p, row, col] / grad_x.dtype.type((bottom - top) * (right - left))
                        elif indices[p, row, col] == iy * w + ix:
                            total += grad_y[p, row, col]
                grad_x[p, iy, ix] = total
