"""The Adam update (torch.optim.Adam and AdamW), one pass over each parameter's elements."""

import numpy as np
from numba import njit


@njit(cache=True)
def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, weight_decay, decay, beta1, beta2, eps,
              step_size, bias_correction2_sqrt, maximize):
    """As ``NumpyBackend.adam_step``, element by element on flat arrays; each scalar cast to the dtype
    first, as torch does, so float32 stays float32."""
    real = param.dtype.type
    weight_decay, decay, eps = real(weight_decay), real(decay), real(eps)
    weight, beta2, one_minus_beta2 = real(1 - beta1), real(beta2), real(1 - beta2)
    neg_step_size, bias_correction2_sqrt = real(-step_size), real(bias_correction2_sqrt)
    one = real(1)
    for k in range(param.size):
        g = -grad[k] if maximize else grad[k]
        if weight_decay != 0:
            g = g + weight_decay * param[k]
        p = param[k] * decay if decay != 1 else param[k]
        m = exp_avg[k] + weight * (g - exp_avg[k]) if weight < 0.5 else g - (g - exp_avg[k]) * (one - weight)
        exp_avg[k] = m
        v = exp_avg_sq[k] * beta2 + one_minus_beta2 * g * g
        exp_avg_sq[k] = v
        if amsgrad:
            v = max(max_exp_avg_sq[k], v)
            max_exp_avg_sq[k] = v
        param[k] = p + neg_step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)
