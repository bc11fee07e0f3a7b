"""Element-wise and dense kernels: pixel normalization, ReLU and linear layers (optionally fused with a ReLU)."""

import numpy as np
from numba import njit, prange

from scratchnet.backends.numba.jit import Twin, kernel


@njit(cache=True)  # no fast-math flags: the same float32 operations, rounded the same way, as torchvision's
def normalize_pixels(pixels, out):
    """float32 ``out`` = (pixel / 255 - 0.5) / 0.5 of C-ordered uint8 ``pixels``."""
    flat_pixels, flat_out = pixels.ravel(), out.ravel()
    for k in range(flat_pixels.size):
        value = np.float32(flat_pixels[k]) / np.float32(255)
        flat_out[k] = (value - np.float32(0.5)) / np.float32(0.5)


@kernel()
def relu_forward(x, y):
    """C-ordered ``x`` and ``y`` (ravel must be a view of ``y``). ``<= 0`` is false for NaN, which stays NaN."""
    flat_x, flat_y = x.ravel(), y.ravel()
    for k in range(flat_x.size):
        flat_y[k] = 0 if flat_x[k] <= 0 else flat_x[k]


@kernel()
def relu_backward(grad_y, y, grad_x):
    """The gradient passes wherever ``y`` is not <= 0, NaN included, as in torch."""
    flat_g, flat_y, flat_out = grad_y.ravel(), y.ravel(), grad_x.ravel()
    for k in range(flat_g.size):
        flat_out[k] = 0 if flat_y[k] <= 0 else flat_g[k]


@Twin
def linear_forward(x, weight, bias, relu, y):
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
            y[b, o] = 0 if relu and v <= 0 else v  # NaN stays NaN, as torch's ReLU


@Twin
def linear_backward(x, weight, relu_y, grad_y, need_input_grad, grad_x, grad_weight, grad_bias):
    """Rows of grad_weight and grad_x as sums of scaled rows, four rows per pass. The weight
    and bias gradients are *added* to ``grad_weight`` and ``grad_bias``.

    With a ReLU's output ``relu_y`` (an empty array when there was no ReLU), ``grad_y``
    is the ReLU's output gradient and is masked first.
    """
    n, in_f = x.shape
    out_f = weight.shape[0]
    if relu_y.size:
        masked = np.empty_like(grad_y)
        relu_backward(grad_y, relu_y, masked)
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
