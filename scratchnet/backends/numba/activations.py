"""The next chapter's element-wise ops: GELU (exact and tanh), SiLU, LeakyReLU, Tanh, Sigmoid, and
dropout's masked scaling. ``kind`` indexes ``base.ACTIVATIONS``; the formulas are torch's (see the
NumPy reference and the CUDA kernels)."""

import math

from numba import njit

_SQRT1_2 = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_PDF = 1 / math.sqrt(2 * math.pi)
_KAPPA = 0.044715


@njit(cache=True)
def activation_forward(x, y, kind, alpha):
    real = x.dtype.type
    half, one, alpha = real(0.5), real(1), real(alpha)
    for k in range(x.size):
        v = x[k]
        if kind == 0:
            y[k] = v * half * (one + real(math.erf(v * real(_SQRT1_2))))
        elif kind == 1:
            y[k] = half * v * (one + math.tanh(real(_SQRT_2_OVER_PI) * (v + real(_KAPPA) * v * v * v)))
        elif kind == 2:
            y[k] = v / (one + math.exp(-v))
        elif kind == 3:
            y[k] = v if v > 0 else v * alpha
        elif kind == 4:
            y[k] = math.tanh(v)
        else:
            y[k] = one / (one + math.exp(-v))


@njit(cache=True)
def activation_backward(grad_y, x, y, grad_x, kind, alpha):
    real = x.dtype.type
    half, one, alpha = real(0.5), real(1), real(alpha)
    for k in range(x.size):
        v, g = x[k], grad_y[k]
        if kind == 0:
            cdf = half * (one + real(math.erf(v * real(_SQRT1_2))))
            pdf = math.exp(real(-0.5) * v * v) * real(_GELU_PDF)
            grad_x[k] = g * (cdf + v * pdf)
        elif kind == 1:
            t = math.tanh(real(_SQRT_2_OVER_PI) * (v + real(_KAPPA) * v * v * v))
            grad_x[k] = g * (half * (one + t)
                             + half * v * (one - t * t) * real(_SQRT_2_OVER_PI) * (one + real(3 * _KAPPA) * v * v))
        elif kind == 2:
            sigmoid = one / (one + math.exp(-v))
            grad_x[k] = g * sigmoid * (one + v * (one - sigmoid))
        elif kind == 3:
            grad_x[k] = g if v > 0 else g * alpha
        elif kind == 4:
            grad_x[k] = g * (one - y[k] * y[k])
        else:
            grad_x[k] = g * (one - y[k]) * y[k]


@njit(cache=True)
def dropout_apply(x, keep, y, scale):
    """``y = x * (keep * scale)`` on flat arrays."""
    zero = x.dtype.type(0)
    for k in range(x.size):
        y[k] = x[k] * (scale if keep[k] else zero)
