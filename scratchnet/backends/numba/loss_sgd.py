"""Softmax cross-entropy with torch's options, and the SGD update."""

import numpy as np
from numba import njit


def is_mean_loss(weight, ignore_index, reduction, label_smoothing):
    """Options of the tutorial's loss (unweighted mean, no smoothing, a negative ignore_index, which no
    class index equals), which ``mean_cross_entropy_forward`` / ``backward`` compute alone."""
    return weight is None and ignore_index < 0 and reduction == "mean" and label_smoothing == 0


@njit(cache=True, inline="always")
def _row_log_sum_exp(logits, r):
    """(peak, log(sum(exp(logits[r] - peak)))) with ``peak`` the row's maximum: log-sum-exp without overflow.
    NaN propagates, as in torch."""
    classes = logits.shape[1]
    peak = logits[r, 0]
    for k in range(1, classes):
        if logits[r, k] > peak or logits[r, k] != logits[r, k]:
            peak = logits[r, k]
    exp_sum = logits.dtype.type(0)
    for k in range(classes):
        exp_sum += np.exp(logits[r, k] - peak)
    return peak, np.log(exp_sum)


@njit(cache=True)
def cross_entropy_forward(logits, labels, target, class_weight, ignore_index, smoothing, probs, coefficients,
                          row_loss):
    """Softmax into ``probs``, each row's loss coefficients (as ``NumpyBackend.cross_entropy_forward``) and loss.

    Class-probability ``target`` rows when it has any, else the class indices ``labels``.
    Return (sum of the row losses, torch's mean denominator).
    """
    rows, classes = logits.shape
    spread = smoothing / classes
    total, denominator = 0.0, 0.0
    for r in range(rows):
        peak, log_sum_exp = _row_log_sum_exp(logits, r)
        if target.shape[0]:
            for k in range(classes):
                coefficients[r, k] = (target[r, k] * (1 - smoothing) + spread) * class_weight[k]
            denominator += 1
        else:
            label = labels[r]
            for k in range(classes):
                coefficients[r, k] = spread * class_weight[k] if label != ignore_index else 0
            if label != ignore_index:
                coefficients[r, label] += (1 - smoothing) * class_weight[label]
                denominator += class_weight[label]
        loss = logits.dtype.type(0)
        for k in range(classes):
            log_prob = logits[r, k] - peak - log_sum_exp
            probs[r, k] = np.exp(log_prob)
            if coefficients[r, k] != 0:  # 0 * -inf counts 0, as in torch
                loss -= coefficients[r, k] * log_prob
        row_loss[r] = loss
        total += loss
    return total, denominator


@njit(cache=True)
def cross_entropy_backward(probs, coefficients, scale, grad):
    """grad = (probs * sum(coefficients) - coefficients) * scale[row]; softmax * 0 on a row without weight
    (ignored: 0, NaN where the softmax is), even where the scale is infinite because every row is ignored,
    as in torch."""
    rows, classes = probs.shape
    for r in range(rows):
        weight_sum = probs.dtype.type(0)
        for k in range(classes):
            weight_sum += coefficients[r, k]
        for k in range(classes):
            grad[r, k] = (probs[r, k] * weight_sum - coefficients[r, k]) * scale[r] if weight_sum != 0 else probs[r, k] * 0


@njit(cache=True)
def mean_cross_entropy_forward(logits, labels, probs):
    """The tutorial's loss alone (class indices, no weights, mean): softmax into ``probs``; return
    (the mean loss, True), or (NaN, False) untouched when a label is no class index (an ignored
    one, say), which the general kernel takes.

    The same sums as ``cross_entropy_forward``, without its coefficients: fewer passes where every step counts.
    """
    rows, classes = logits.shape
    for r in range(rows):
        if not 0 <= labels[r] < classes:
            return np.nan, False
    total = 0.0
    for r in range(rows):
        peak, log_sum_exp = _row_log_sum_exp(logits, r)
        for k in range(classes):
            probs[r, k] = np.exp(logits[r, k] - peak - log_sum_exp)
        total -= logits[r, labels[r]] - peak - log_sum_exp
    return total / rows, True


@njit(cache=True)
def mean_cross_entropy_backward(probs, labels, scale, grad):
    """grad = (probs - one_hot(labels)) * scale: the gradient of ``mean_cross_entropy_forward`` at scale 1 / rows."""
    rows, classes = probs.shape
    for r in range(rows):
        for k in range(classes):
            grad[r, k] = probs[r, k] * scale
        grad[r, labels[r]] = (probs[r, labels[r]] - 1) * scale


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
