"""Batch norm over every axis but the channels of (N, C, spatial) arrays: per-channel statistics, torch's
transform and backward (see ``NumpyBackend.batch_norm_forward``)."""

import numpy as np
from numba import njit


@njit(cache=True)
def batch_norm_stats(x, mean, invstd, running_mean, running_var, eps, momentum, update):
    n, c, spatial = x.shape
    real = x.dtype.type
    count = n * spatial
    for ch in range(c):
        total = real(0)
        for i in range(n):
            for s in range(spatial):
                total += x[i, ch, s]
        m = total / real(count)
        squares = real(0)
        for i in range(n):
            for s in range(spatial):
                squares += (x[i, ch, s] - m) * (x[i, ch, s] - m)
        mean[ch] = m
        invstd[ch] = real(1) / np.sqrt(squares / real(count) + real(eps))
        if update:
            running_mean[ch] = running_mean[ch] * real(1 - momentum) + real(momentum) * m
            running_var[ch] = running_var[ch] * real(1 - momentum) + real(momentum) * (squares / real(count - 1))


@njit(cache=True)
def batch_norm_transform(x, y, mean, invstd, weight, bias, has_weight, has_bias):
    n, c, spatial = x.shape
    for ch in range(c):
        alpha = invstd[ch] * weight[ch] if has_weight else invstd[ch]
        beta = bias[ch] - mean[ch] * alpha if has_bias else -mean[ch] * alpha
        for i in range(n):
            for s in range(spatial):
                y[i, ch, s] = x[i, ch, s] * alpha + beta


@njit(cache=True)
def batch_norm_backward(x, grad_y, mean, invstd, weight, has_weight, grad_weight, grad_bias, has_grad_weight,
                        has_grad_bias, grad_x, need_input_grad, batch_stats):
    n, c, spatial = x.shape
    real = x.dtype.type
    count = real(n * spatial)
    for ch in range(c):
        grad_sum, dot = real(0), real(0)
        for i in range(n):
            for s in range(spatial):
                grad_sum += grad_y[i, ch, s]
                dot += (x[i, ch, s] - mean[ch]) * grad_y[i, ch, s]
        if has_grad_weight:
            grad_weight[ch] += dot * invstd[ch]
        if has_grad_bias:
            grad_bias[ch] += grad_sum
        if not need_input_grad:
            continue
        scale = invstd[ch] * weight[ch] if has_weight else invstd[ch]
        factor = dot * invstd[ch] * invstd[ch] / count
        for i in range(n):
            for s in range(spatial):
                if batch_stats:
                    projection = (x[i, ch, s] - mean[ch]) * factor
                    grad_x[i, ch, s] = (grad_y[i, ch, s] - grad_sum / count - projection) * scale
                else:
                    grad_x[i, ch, s] = grad_y[i, ch, s] * scale
