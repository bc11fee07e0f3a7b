"""Softmax cross-entropy and the SGD update."""

import numpy as np
from numba import njit

@njit(cache=True)
def cross_entropy_forward(logits, labels, probs):
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
def cross_entropy_backward(probs, labels, grad):
    n, classes = probs.shape
    for b in range(n):
        for k in range(classes):
            grad[b, k] = probs[b, k] / n
        grad[b, labels[b]] = (probs[b, labels[b]] - 1) / n


@njit(cache=True)
def sgd_step(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
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
def sgd_steps(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
    """``sgd_step`` over tuples of flat arrays: one call for the whole network."""
    for k in range(len(params)):
        sgd_step(params[k], grads[k], bufs[k], lr, momentum, dampening, weight_decay, nesterov, first)


# Flat views kept for at most this many lists of arrays: an optimizer passes the same three every step.
