"""Max-pool kernels: fused ReLU + max-pool read straight from a convolution's rows, and plain max-pool."""

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
def relu_max_pool_rows_2x2(rows, out_w, y, indices):
    """``relu_max_pool_rows`` for the tutorial's 2x2 windows at stride 2, as selects over whole
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
                best, tap = first_max_step(best, tap, upper[2 * pw + 1], 1)
                best, tap = first_max_step(best, tap, lower[2 * pw], 2)
                best, tap = first_max_step(best, tap, lower[2 * pw + 1], 3)
                y_row[pw] = best if best > 0 else 0
                indices_row[pw] = top + 2 * pw + (tap & 1) + (tap >> 1) * below


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


@kernel()
def max_pool2d_backward(grad_y, indices, grad_x):
    n, c, out_h, out_w = grad_y.shape
    w = grad_x.shape[3]
    grad_x[:] = 0
    for b in range(n):
        for ci in range(c):
            for oh in range(out_h):
                for ow in range(out_w):
                    k = indices[b, ci, oh, ow]
                    grad_x[b, ci, k // w, k % w] += grad_y[b, ci, oh, ow]
