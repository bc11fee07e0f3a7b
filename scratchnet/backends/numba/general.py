"""General convolution and max-pool kernels: any stride, padding, dilation, groups, ceil mode.

The tutorial's configuration keeps the shifted-plane and fused kernels of ``conv`` and
``pooling``; every other configuration runs here (the max-pool backward is ``pooling``'s,
which takes any geometry). Each parallel loop owns whole output planes (forward, input
gradient) or whole output channels (weight gradient), so no two iterations write one
element and results never depend on the thread count; small batches run the serial twins,
as every numba kernel does (``jit.Twin``).
"""

import numpy as np
from numba import njit, prange

from scratchnet.backends.numba.jit import Twin


@njit(cache=True, inline="always")
def _valid_range(out_size, in_size, offset, stride):
    """Output positions o with 0 <= o * stride + offset < in_size, as [lo, hi)."""
    lo = max(0, -(offset // stride))  # ceil(-offset / stride)
    hi = min(out_size, (in_size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@Twin
def conv2d_forward(x, weight, bias, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups, y):
    """y[b, o] = bias[o] + sum over o's group's channels and taps; ``bias`` is empty for no bias."""
    n, c, h, w = x.shape
    out_c, group_c, kh, kw = weight.shape
    _, _, out_h, out_w = y.shape
    group_out = out_c // groups
    for plane in prange(n * out_c):
        b, o = plane // out_c, plane % out_c
        first_c = (o // group_out) * group_c
        y[b, o] = bias[o] if bias.size else 0
        for ci in range(group_c):
            for i in range(kh):
                oh_lo, oh_hi = _valid_range(out_h, h, i * dilation_h - pad_top, stride_h)
                for j in range(kw):
                    ow_lo, ow_hi = _valid_range(out_w, w, j * dilation_w - pad_left, stride_w)
                    tap = weight[o, ci, i, j]
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * stride_h + i * dilation_h - pad_top
                        for ow in range(ow_lo, ow_hi):
                            y[b, o, oh, ow] += tap * x[b, first_c + ci, ih, ow * stride_w + j * dilation_w - pad_left]


@Twin
def conv2d_add_param_grads(x, grad_y, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups,
                           grad_weight, grad_bias):
    """Add the weight gradient, and the bias gradient unless ``grad_bias`` is empty."""
    n, c, h, w = x.shape
    out_c, group_c, kh, kw = grad_weight.shape
    _, _, out_h, out_w = grad_y.shape
    group_out = out_c // groups
    for o in prange(out_c):
        first_c = (o // group_out) * group_c
        if grad_bias.size:
            total = grad_y.dtype.type(0)
            for b in range(n):
                for oh in range(out_h):
                    for ow in range(out_w):
                        total += grad_y[b, o, oh, ow]
            grad_bias[o] += total
        for ci in range(group_c):
            for i in range(kh):
                oh_lo, oh_hi = _valid_range(out_h, h, i * dilation_h - pad_top, stride_h)
                for j in range(kw):
                    ow_lo, ow_hi = _valid_range(out_w, w, j * dilation_w - pad_left, stride_w)
                    acc = grad_y.dtype.type(0)
                    for b in range(n):
                        for oh in range(oh_lo, oh_hi):
                            ih = oh * stride_h + i * dilation_h - pad_top
                            for ow in range(ow_lo, ow_hi):
                                acc += grad_y[b, o, oh, ow] * x[b, first_c + ci, ih,
                                                                 ow * stride_w + j * dilation_w - pad_left]
                    grad_weight[o, ci, i, j] += acc


@Twin
def conv2d_grad_input(weight, grad_y, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups,
                      grad_x):
    n, c, h, w = grad_x.shape
    out_c, group_c, kh, kw = weight.shape
    _, _, out_h, out_w = grad_y.shape
    group_out = out_c // groups
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        group = ci // group_c
        grad_x[b, ci] = 0
        for o in range(group * group_out, (group + 1) * group_out):
            for i in range(kh):
                oh_lo, oh_hi = _valid_range(out_h, h, i * dilation_h - pad_top, stride_h)
                for j in range(kw):
                    ow_lo, ow_hi = _valid_range(out_w, w, j * dilation_w - pad_left, stride_w)
                    tap = weight[o, ci - group * group_c, i, j]
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * stride_h + i * dilation_h - pad_top
                        for ow in range(ow_lo, ow_hi):
                            iw = ow * stride_w + j * dilation_w - pad_left
                            grad_x[b, ci, ih, iw] += tap * grad_y[b, o, oh, ow]


@Twin
def max_pool2d_forward(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, y, indices):
    """torch's scan: a strictly greater value or any NaN takes over; a window starts on its first tap
    inside the input."""
    n, c, h, w = x.shape
    _, _, out_h, out_w = y.shape
    for plane in prange(n * c):
        b, ci = plane // c, plane % c
        for oh in range(out_h):
            h_lo, h_hi = _valid_range(kernel_h, h, oh * stride_h - pad_h, dilation_h)
            for ow in range(out_w):
                w_lo, w_hi = _valid_range(kernel_w, w, ow * stride_w - pad_w, dilation_w)
                best_h = oh * stride_h - pad_h + h_lo * dilation_h
                best_w = ow * stride_w - pad_w + w_lo * dilation_w
                best = x.dtype.type(-np.inf)
                for i in range(h_lo, h_hi):
                    ih = oh * stride_h - pad_h + i * dilation_h
                    for j in range(w_lo, w_hi):
                        iw = ow * stride_w - pad_w + j * dilation_w
                        v = x[b, ci, ih, iw]
                        if v > best or v != v:
                            best, best_h, best_w = v, ih, iw
                y[b, ci, oh, ow] = best
                indices[b, ci, oh, ow] = best_h * w + best_w
