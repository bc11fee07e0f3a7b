"""Batch norm over every axis but the channels of (N, C, spatial) arrays: per-channel statistics, torch's
transform and backward (see ``NumpyBackend.batch_norm_forward``). Each channel is one item of a ``prange``,
its sums in one fixed order (vectorized by the ``reassoc`` flag), so results never depend on the thread
count."""

import numpy as np
from numba import prange

from scratchnet.backends.numba.jit import Twin


@Twin
def batch_norm_stats(x, mean, invstd, running_mean, running_var, eps, momentum, update):
    n, c, spatial = x.shape
    real = x.dtype.type
    count = n * spatial
    for ch in prange(c):
        total = real(0)
        for i in range(n):
            row = x[i, ch]
            for s in range(spatial):
                total += row[s]
        m = total / real(count)
        squares = real(0)
        for i in range(n):
            row = x[i, ch]
            for s in range(spatial):
                squares += (row[s] - m) * (row[s] - m)
        mean[ch] = m
        invstd[ch] = real(1) / np.sqrt(squares / real(count) + real(eps))
        if update:
            running_mean[ch] = running_mean[ch] * real(1 - momentum) + real(momentum) * m
            running_var[ch] = running_var[ch] * real(1 - momentum) + real(momentum) * (squares / real(count - 1))


@Twin
def batch_norm_transform(x, y, mean, invstd, weight, bias, has_weight, has_bias):
    n, c, spatial = x.shape
    for ch in prange(c):
        alpha = invstd[ch] * weight[ch] if has_weight else invstd[ch]
        beta = bias[ch] - mean[ch] * alpha if has_bias else -mean[ch] * alpha
        for i in range(n):
            row, out = x[i, ch], y[i, ch]
            for s in range(spatial):
                out[s] = row[s] * alpha + beta


@Twin
def batch_norm_backward(x, grad_y, mean, invstd, weight, has_weight, grad_weight, grad_bias, has_grad_weight,
                        has_grad_bias, grad_x, need_input_grad, batch_stats):
    n, c, spatial = x.shape
    real = x.dtype.type
    count = real(n * spatial)
    for ch in prange(c):
        m = mean[ch]
        grad_sum, dot = real(0), real(0)
        for i in range(n):
            row, grads = x[i, ch], grad_y[i, ch]
            for s in range(spatial):
                grad_sum += grads[s]
                dot += (row[s] - m) * grads[s]
        if has_grad_weight:
            grad_weight[ch] += dot * invstd[ch]
        if has_grad_bias:
            grad_bias[ch] += grad_sum
        if not need_input_grad:
            continue
        scale = invstd[ch] * weight[ch] if has_weight else invstd[ch]
        factor = dot * invstd[ch] * invstd[ch] / count
        shift = grad_sum / count
        for i in range(n):
            row, grads, out = x[i, ch], grad_y[i, ch], grad_x[i, ch]
            if batch_stats:
                for s in range(spatial):
                    out[s] = (grads[s] - shift - (row[s] - m) * factor) * scale
            else:
                for s in range(spatial):
                    out[s] = grads[s] * scale
