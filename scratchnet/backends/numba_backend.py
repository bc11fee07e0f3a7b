"""The fast CPU backend: every operation is an ``@njit(cache=True)`` kernel of ours.

Inner loops run along the contiguous last axis and update whole rows
(``out_row += w * in_row``) instead of taking short dot products, so LLVM can
vectorize them. Parallel loops split over independent output planes, so no two
threads ever write the same element and results do not depend on thread timing.
"""

import numpy as np
from numba import njit, prange

from scratchnet.backends.numpy_backend import NumpyBackend


@njit(cache=True, inline="always")
def _valid_range(out_size, in_size, tap, stride, padding):
    """Output positions o with 0 <= o*stride + tap - padding < in_size, as [lo, hi)."""
    lo = max(0, -((tap - padding) // stride))  # ceil((padding - tap) / stride)
    hi = min(out_size, (in_size - 1 + padding - tap) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, parallel=True)
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


@njit(cache=True, parallel=True)
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


@njit(cache=True, parallel=True)
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


@njit(cache=True, parallel=True)
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


@njit(cache=True)
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


@njit(cache=True)
def _relu_forward(x, y):
    flat_x, flat_y = x.ravel(), y.ravel()
    for k in range(flat_x.size):
        flat_y[k] = flat_x[k] if flat_x[k] > 0 else 0


@njit(cache=True)
def _relu_backward(grad_y, y, grad_x):
    flat_g, flat_y, flat_out = grad_y.ravel(), y.ravel(), grad_x.ravel()
    for k in range(flat_g.size):
        flat_out[k] = flat_g[k] if flat_y[k] > 0 else 0


@njit(cache=True)
def _linear_forward(x, weight, bias, y):
    n, _ = x.shape
    out_f = weight.shape[0]
    for b in range(n):
        for o in range(out_f):
            y[b, o] = bias[o] + _row_dot(weight[o], x[b])


@njit(cache=True, inline="always")
def _row_dot(a, b):
    total = a.dtype.type(0)
    for k in range(a.size):
        total += a[k] * b[k]
    return total


@njit(cache=True)
def _linear_backward(x, weight, grad_y, grad_x, grad_weight, grad_bias, need_input_grad):
    n, in_f = x.shape
    out_f = weight.shape[0]
    grad_weight[:] = 0
    for o in range(out_f):
        total = grad_y.dtype.type(0)
        for b in range(n):
            g = grad_y[b, o]
            total += g
            for k in range(in_f):
                grad_weight[o, k] += g * x[b, k]
        grad_bias[o] = total
    if need_input_grad:
        grad_x[:] = 0
        for b in range(n):
            for o in range(out_f):
                g = grad_y[b, o]
                for k in range(in_f):
                    grad_x[b, k] += g * weight[o, k]


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
    for k in range(p.size):
        d_p = g[k] + weight_decay * p[k] if weight_decay != 0 else g[k]
        if momentum != 0:
            if first:
                m[k] = d_p
            else:
                m[k] = momentum * m[k] + (1 - dampening) * d_p
            d_p = d_p + momentum * m[k] if nesterov else m[k]
        p[k] -= lr * d_p


class NumbaBackend(NumpyBackend):
    name = "numba"

    def conv2d_forward(self, x, weight, bias, stride, padding):
        n, _, h, w = x.shape
        out_c, _, kh, kw = weight.shape
        out_h = (h + 2 * padding - kh) // stride + 1
        out_w = (w + 2 * padding - kw) // stride + 1
        y = np.empty((n, out_c, out_h, out_w), dtype=x.dtype)
        if bias is None:
            bias = np.zeros(out_c, dtype=x.dtype)
        _conv2d_forward(x, weight, bias, stride, padding, y)
        return y

    def conv2d_backward(self, x, weight, grad_y, stride, padding, need_input_grad=True):
        grad_weight = np.empty_like(weight)
        grad_bias = np.empty(weight.shape[0], dtype=weight.dtype)
        grad_y = np.ascontiguousarray(grad_y)
        _conv2d_grad_weight(x, grad_y, stride, padding, grad_weight, grad_bias)
        grad_x = None
        if need_input_grad:
            grad_x = np.empty_like(x)
            _conv2d_grad_input(weight, grad_y, stride, padding, grad_x)
        return grad_x, grad_weight, grad_bias

    def max_pool2d_forward(self, x, kernel, stride):
        n, c, h, w = x.shape
        shape = (n, c, (h - kernel) // stride + 1, (w - kernel) // stride + 1)
        y = np.empty(shape, dtype=x.dtype)
        indices = np.empty(shape, dtype=np.int64)
        _max_pool2d_forward(x, kernel, stride, y, indices)
        return y, indices

    def max_pool2d_backward(self, grad_y, indices, x_shape):
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
        _linear_forward(np.ascontiguousarray(x), weight, bias, y)
        return y

    def linear_backward(self, x, weight, grad_y, need_input_grad=True):
        grad_x = np.empty_like(x)
        grad_weight = np.empty_like(weight)
        grad_bias = np.empty(weight.shape[0], dtype=weight.dtype)
        _linear_backward(np.ascontiguousarray(x), weight, np.ascontiguousarray(grad_y),
                         grad_x, grad_weight, grad_bias, need_input_grad)
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


def create():
    return NumbaBackend()
