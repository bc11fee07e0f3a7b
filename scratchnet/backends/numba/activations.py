"""The next chapter's element-wise ops: GELU (exact and tanh), SiLU, LeakyReLU, Tanh, Sigmoid, and
dropout's masked scaling. ``kind`` indexes ``base.ACTIVATIONS``; the formulas are torch's (see the
NumPy reference and the CUDA kernels), float32's erf and exp the forms of ``fastmath32``, which vectorize. Threaded twins split the elements into fixed chunks, so results
never depend on the thread count."""

import math

from numba import njit, prange

from scratchnet.backends.numba.fastmath32 import erf, exp
from scratchnet.backends.numba.jit import Twin

CHUNK = 4096  # elements per parallel chunk

_SQRT1_2 = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_PDF = 1 / math.sqrt(2 * math.pi)
_KAPPA = 0.044715


@njit(cache=True, inline="always")
def _value(v, kind, alpha):
    real = type(v)
    half, one = real(0.5), real(1)
    if kind == 0:
        return v * half * (one + erf(v * real(_SQRT1_2)))
    if kind == 1:
        return half * v * (one + math.tanh(real(_SQRT_2_OVER_PI) * (v + real(_KAPPA) * v * v * v)))
    if kind == 2:
        return v / (one + exp(-v))
    if kind == 3:
        return v if v > 0 else v * alpha
    if kind == 4:
        return math.tanh(v)
    return one / (one + exp(-v))


@njit(cache=True, inline="always")
def _gradient(g, v, y, kind, alpha):
    real = type(v)
    half, one = real(0.5), real(1)
    if kind == 0:
        cdf = half * (one + erf(v * real(_SQRT1_2)))
        pdf = exp(real(-0.5) * v * v) * real(_GELU_PDF)
        return g * (cdf + v * pdf)
    if kind == 1:
        t = math.tanh(real(_SQRT_2_OVER_PI) * (v + real(_KAPPA) * v * v * v))
        return g * (half * (one + t) + half * v * (one - t * t) * real(_SQRT_2_OVER_PI) * (one + real(3 * _KAPPA) * v * v))
    if kind == 2:
        sigmoid = one / (one + exp(-v))
        return g * sigmoid * (one + v * (one - sigmoid))
    if kind == 3:
        return g if v > 0 else g * alpha
    if kind == 4:
        return g * (one - y * y)
    return g * (one - y) * y


@Twin
def activation_forward(x, y, kind, alpha):
    alpha = x.dtype.type(alpha)
    for chunk in prange((x.size + CHUNK - 1) // CHUNK):
        xs, ys = x[chunk * CHUNK:(chunk + 1) * CHUNK], y[chunk * CHUNK:(chunk + 1) * CHUNK]
        for k in range(xs.size):  # the loop counter alone indexes: it vectorizes (see ``jit.copy``)
            ys[k] = _value(xs[k], kind, alpha)


@Twin
def activation_backward(grad_y, x, y, grad_x, kind, alpha):
    alpha = x.dtype.type(alpha)
    for chunk in prange((x.size + CHUNK - 1) // CHUNK):
        part = slice(chunk * CHUNK, (chunk + 1) * CHUNK)
        gs, xs, ys, outs = grad_y[part], x[part], y[part], grad_x[part]
        for k in range(xs.size):
            outs[k] = _gradient(gs[k], xs[k], ys[k], kind, alpha)


@Twin
def dropout_apply(x, keep, y, scale):
    """``y = x * (keep * scale)`` on flat arrays."""
    zero = x.dtype.type(0)
    for chunk in prange((x.size + CHUNK - 1) // CHUNK):
        for k in range(chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK)):
            y[k] = x[k] * (scale if keep[k] else zero)
