"""The readable reference backend: the ``Backend`` interface in plain vectorized NumPy.

Signatures and contracts are documented once, in ``base.Backend``; this file is the
math. It keeps the default (eager, unfused) training step: it computes what it says.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from scratchnet.backends.base import Backend
from scratchnet.geometry import conv2d_output_hw, max_pool2d_output_hw, pool_output_size


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    # ---- arrays -----------------------------------------------------------------

    def asarray(self, array, dtype=None):
        self.check_array(array, "input")
        return np.asarray(array, dtype=dtype, order="C")  # ascontiguousarray would make a 0-d array 1-d

    def to_numpy(self, array):
        return np.asarray(array)

    def owns(self, array):
        """Host arrays (numba owns them too: ``backends.owner`` gives them to this reference first)."""
        return isinstance(array, (np.ndarray, np.generic))

    def check_array(self, array, what):
        if not isinstance(array, (np.ndarray, np.generic)):
            raise TypeError(
                f"{what}: the {self.name} backend takes numpy arrays, got {type(array).__module__}."
                f"{type(array).__name__}; move it with .get() or move the model with .to(...)"
            )

    # ---- conv2d ----------------------------------------------------------------

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, workspace=None):
        n = x.shape[0]
        out_c, group_c, kh, kw = weight.shape
        out_hw = conv2d_output_hw(x.shape[2:], (kh, kw), stride, padding, dilation)
        padded = np.pad(x, ((0, 0), (0, 0)) + tuple(padding))
        # Per group one matmul over im2col.
        cols = _windows(padded, (kh, kw), stride, dilation, out_hw).reshape(n, groups, group_c * kh * kw, -1)
        y = np.matmul(weight.reshape(groups, out_c // groups, -1), cols).reshape((n, out_c) + out_hw)
        if bias is not None:
            y += bias[:, None, None]
        return y

    def conv2d_backward(self, x, weight, grad_y, stride, padding, dilation, groups, grad_weight, grad_bias,
                        need_input_grad=True, workspace=None):
        n, c, h, w = x.shape
        out_c, group_c, kh, kw = weight.shape
        out_hw = grad_y.shape[2:]
        padded = np.pad(x, ((0, 0), (0, 0)) + tuple(padding))
        cols = _windows(padded, (kh, kw), stride, dilation, out_hw).reshape(n, groups, group_c * kh * kw, -1)
        gy = grad_y.reshape(n, groups, out_c // groups, -1)
        grad_weight += np.einsum("ngol,ngkl->gok", gy, cols).reshape(weight.shape)
        if grad_bias is not None:
            grad_bias += grad_y.sum(axis=(0, 2, 3))
        if not need_input_grad:
            return None
        weight_t = weight.reshape(groups, out_c // groups, -1).transpose(0, 2, 1)
        grad_cols = np.matmul(weight_t, gy).reshape((n, c, kh, kw) + tuple(out_hw))
        grad_padded = np.zeros_like(padded)
        # col2im: every kernel tap adds its slice back to the pixels it read.
        for i in range(kh):
            rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (out_hw[0] - 1) + 1, stride[0])
            for j in range(kw):
                cols_ = slice(j * dilation[1], j * dilation[1] + stride[1] * (out_hw[1] - 1) + 1, stride[1])
                grad_padded[:, :, rows, cols_] += grad_cols[:, :, i, j]
        (top, _), (left, _) = padding
        return np.ascontiguousarray(grad_padded[:, :, top:top + h, left:left + w])

    # ---- max-pool --------------------------------------------------------------

    def max_pool2d_forward(self, x, kernel, stride, padding, dilation, ceil_mode):
        n, c, h, w = x.shape
        out_hw = max_pool2d_output_hw((h, w), kernel, stride, padding, dilation, ceil_mode)
        # Pad far enough for every window (ceil mode may reach past the right padding).
        reach = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(out_hw, stride, dilation, kernel)]
        after = [max(r - size - p, 0) for r, size, p in zip(reach, (h, w), padding)]
        shape = (n, c, padding[0] + h + after[0], padding[1] + w + after[1])
        padded = np.full(shape, -np.inf, dtype=x.dtype)
        padded[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w] = x
        on_input = np.zeros((1, 1) + shape[2:], dtype=bool)
        on_input[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w] = True
        taps = kernel[0] * kernel[1]

        def window_values(array):
            view = _windows(array, kernel, stride, dilation, out_hw)  # (N, C, KH, KW, OH, OW)
            return np.moveaxis(view.reshape(array.shape[:2] + (taps,) + out_hw), 2, -1)

        values, valid = window_values(padded), window_values(on_input)
        is_nan = np.isnan(values)
        first_max = values.argmax(axis=-1)
        last_nan = taps - 1 - is_nan[..., ::-1].argmax(axis=-1)
        first_valid = np.broadcast_to(valid.argmax(axis=-1), first_max.shape)
        best = np.take_along_axis(values, first_max[..., None], axis=-1)[..., 0]
        tap = np.where(is_nan.any(axis=-1), last_nan, np.where(best == -np.inf, first_valid, first_max))
        y = np.take_along_axis(values, tap[..., None], axis=-1)[..., 0]
        row = np.arange(out_hw[0])[:, None] * stride[0] - padding[0] + tap // kernel[1] * dilation[0]
        col = np.arange(out_hw[1])[None, :] * stride[1] - padding[1] + tap % kernel[1] * dilation[1]
        return np.ascontiguousarray(y), (row * w + col).astype(np.int64)

    def max_pool2d_backward(self, grad_y, indices, x_shape, kernel, stride, padding, dilation):
        n, c, h, w = x_shape
        grad_x = np.zeros((n * c, h * w), dtype=grad_y.dtype)
        # add.at, not fancy assignment: overlapping windows may pick the same pixel.
        np.add.at(grad_x, (np.arange(n * c)[:, None], indices.reshape(n * c, -1)), grad_y.reshape(n * c, -1))
        return grad_x.reshape(x_shape)

    # ---- element-wise and dense ----------------------------------------------------

    def relu_forward(self, x):
        # np.maximum propagates NaN, as torch; np.asarray keeps a 0-d input 0-d (np.ascontiguousarray would not).
        return np.asarray(np.maximum(x, 0), order="C")

    def relu_backward(self, grad_y, y):
        return np.asarray(np.where(y <= 0, 0, grad_y).astype(grad_y.dtype, copy=False), order="C")

    def activation_forward(self, x, kind, alpha=0.0):
        x = np.asarray(x)
        real = x.dtype.type
        if kind == "gelu":
            return x * real(0.5) * (1 + _erf(x * real(_SQRT1_2)).astype(x.dtype))
        if kind == "gelu_tanh":
            return real(0.5) * x * (1 + np.tanh(real(_SQRT_2_OVER_PI) * (x + real(_KAPPA) * x * x * x)))
        if kind == "silu":
            return x / (1 + np.exp(-x))
        if kind == "leaky_relu":
            return np.where(x > 0, x, x * real(alpha))
        if kind == "tanh":
            return np.ascontiguousarray(np.tanh(x))
        if kind == "sigmoid":
            return 1 / (1 + np.exp(-x))
        raise ValueError(f"unknown activation {kind!r}")

    def activation_backward(self, grad_y, x, y, kind, alpha=0.0):
        real = grad_y.dtype.type
        if kind == "gelu":
            cdf = real(0.5) * (1 + _erf(x * real(_SQRT1_2)).astype(x.dtype))
            pdf = np.exp(real(-0.5) * x * x) * real(_GELU_PDF)
            return grad_y * (cdf + x * pdf)
        if kind == "gelu_tanh":
            inner = real(_SQRT_2_OVER_PI) * (x + real(_KAPPA) * x * x * x)
            t = np.tanh(inner)
            left = real(0.5) * x
            derivative = real(0.5) * (1 + t) + left * (1 - t * t) * real(_SQRT_2_OVER_PI) * (1 + real(3 * _KAPPA) * x * x)
            return grad_y * derivative
        if kind == "silu":
            sigmoid = 1 / (1 + np.exp(-x))
            return grad_y * sigmoid * (1 + x * (1 - sigmoid))
        if kind == "leaky_relu":
            return np.where(x > 0, grad_y, grad_y * real(alpha))
        if kind == "tanh":
            return grad_y * (1 - y * y)
        if kind == "sigmoid":
            return grad_y * (1 - y) * y
        raise ValueError(f"unknown activation {kind!r}")

    def dropout_forward(self, x, keep, scale):
        return x * (keep * x.dtype.type(scale))

    dropout_backward = dropout_forward  # the gradient is scaled by the same mask

    def linear_forward(self, x, weight, bias, workspace=None):
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y

    def linear_backward(self, x, weight, grad_y, grad_weight, grad_bias, need_input_grad=True, workspace=None):
        grad_weight += grad_y.T @ x
        if grad_bias is not None:
            grad_bias += grad_y.sum(axis=0)
        return grad_y @ weight if need_input_grad else None

    # ---- loss --------------------------------------------------------------------

    def cross_entropy_forward(self, logits, target, weight, ignore_index, reduction, label_smoothing):
        """Both target kinds reduce to per-row coefficients ``a`` with ``loss_row = -sum_c a[c] *
        log_softmax[c]`` over a normalizing ``denominator`` (torch's weighted mean), so one
        backward serves both: ``(softmax * sum_c a[c] - a) / denominator``."""
        # NaN or inf logits, and every target ignored (0 / 0), give NaN as in torch: no warnings.
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing)

    @staticmethod
    def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing):
        rows, classes = logits.shape
        class_weight = np.ones(classes, dtype=logits.dtype) if weight is None else weight.astype(logits.dtype)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        smoothing = logits.dtype.type(label_smoothing)
        if target.ndim == 2:
            coefficients = (target * (1 - smoothing) + smoothing / classes) * class_weight
            denominator = rows
        else:
            counted = target != ignore_index
            labels = np.where(counted, target, 0)
            picked = class_weight[labels] * counted
            coefficients = (smoothing / classes) * class_weight * counted[:, None]
            coefficients[np.arange(rows), labels] += (1 - smoothing) * picked
            denominator = picked.sum()
        # 0 * -inf (a class with probability 0 and no coefficient) contributes 0, as in torch.
        row_loss = -np.where(coefficients == 0, 0, coefficients * log_probs).sum(axis=1)
        if reduction == "none":
            loss, denominator = row_loss, 1
        elif reduction == "sum":
            loss, denominator = row_loss.sum(), 1
        else:
            loss = row_loss.sum() / denominator
        saved = (np.exp(log_probs), coefficients, logits.dtype.type(denominator))
        return np.asarray(loss, dtype=logits.dtype), saved

    def cross_entropy_backward(self, saved, grad_loss=None):
        probs, coefficients, denominator = saved
        weight_sums = coefficients.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            grad = (probs * weight_sums - coefficients) / denominator
            if grad_loss is not None:
                grad *= np.reshape(grad_loss, (-1, 1))
            # A row without weight (ignored) gets softmax * 0, as torch's log-softmax backward of a zero
            # gradient: 0, even when every row is ignored (0 / 0), and NaN where its softmax is NaN.
            grad = np.where(weight_sums == 0, probs * 0, grad)
        return grad.astype(probs.dtype, copy=False)

    # ---- optimizer -----------------------------------------------------------------

    def avg_pool2d_forward(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        n, c, h, w = x.shape
        windows = _avg_windows((h, w), kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        y = np.zeros((n, c, len(windows[0]), len(windows[1])), dtype=x.dtype)
        for i, (top, bottom, rows) in enumerate(windows[0]):
            for j, (left, right, cols) in enumerate(windows[1]):
                divisor = _avg_divisor((bottom - top) * (right - left), rows * cols, count_include_pad,
                                       divisor_override)
                if bottom > top and right > left:
                    y[:, :, i, j] = x[:, :, top:bottom, left:right].sum(axis=(2, 3)) / x.dtype.type(divisor)
        return y

    def avg_pool2d_backward(self, grad_y, x_shape, kernel, stride, padding, ceil_mode, count_include_pad,
                            divisor_override):
        windows = _avg_windows(x_shape[2:], kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        grad_x = np.zeros(x_shape, dtype=grad_y.dtype)
        for i, (top, bottom, rows) in enumerate(windows[0]):
            for j, (left, right, cols) in enumerate(windows[1]):
                divisor = _avg_divisor((bottom - top) * (right - left), rows * cols, count_include_pad,
                                       divisor_override)
                if bottom > top and right > left:
                    grad_x[:, :, top:bottom, left:right] += (grad_y[:, :, i, j] / grad_y.dtype.type(divisor))[..., None, None]
        return grad_x

    def adaptive_pool2d_forward(self, x, output_hw, mode):
        n, c, h, w = x.shape
        rows, cols = _adaptive_windows(h, output_hw[0]), _adaptive_windows(w, output_hw[1])
        y = np.empty((n, c) + tuple(output_hw), dtype=x.dtype)
        indices = np.empty(y.shape, dtype=np.int64) if mode == "max" else None
        for i, (top, bottom) in enumerate(rows):
            for j, (left, right) in enumerate(cols):
                window = x[:, :, top:bottom, left:right].reshape(n, c, -1)
                if mode == "avg":
                    y[:, :, i, j] = window.sum(axis=2) / x.dtype.type(window.shape[2])
                    continue
                # torch's scan: a strictly greater value or a NaN takes over, so the last NaN, else the first maximum.
                nan = np.isnan(window)
                last_nan = window.shape[2] - 1 - nan[..., ::-1].argmax(axis=2)
                best = np.where(nan.any(axis=2), last_nan, window.argmax(axis=2))
                y[:, :, i, j] = np.take_along_axis(window, best[..., None], axis=2)[..., 0]
                indices[:, :, i, j] = (top + best // (right - left)) * w + left + best % (right - left)
        return y, indices

    def adaptive_pool2d_backward(self, grad_y, x_shape, mode, indices):
        n, c, h, w = x_shape
        grad_x = np.zeros(x_shape, dtype=grad_y.dtype)
        if mode == "max":
            planes = grad_x.reshape(n * c, h * w)
            np.add.at(planes, (np.arange(n * c)[:, None], indices.reshape(n * c, -1)), grad_y.reshape(n * c, -1))
            return grad_x
        rows, cols = _adaptive_windows(h, grad_y.shape[2]), _adaptive_windows(w, grad_y.shape[3])
        for i, (top, bottom) in enumerate(rows):
            for j, (left, right) in enumerate(cols):
                size = grad_y.dtype.type((bottom - top) * (right - left))
                grad_x[:, :, top:bottom, left:right] += (grad_y[:, :, i, j] / size)[..., None, None]
        return grad_x

    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
        n, c = x.shape[:2]
        rows = x.reshape(n, c, -1)
        real = x.dtype.type
        count = n * rows.shape[2]
        if use_batch_stats:
            mean = rows.sum(axis=(0, 2)) / real(count)
            centered_squares = ((rows - mean[:, None]) ** 2).sum(axis=(0, 2))
            invstd = 1 / np.sqrt(centered_squares / real(count) + real(eps))
            if running_mean is not None:
                running_mean *= real(1 - momentum)
                running_mean += real(momentum) * mean
                running_var *= real(1 - momentum)
                running_var += real(momentum) * (centered_squares / real(count - 1))
        else:
            mean, invstd = running_mean, 1 / np.sqrt(running_var + real(eps))
        # torch's transform: y = x * alpha + beta with alpha = invstd * weight, beta = bias - mean * alpha
        alpha = invstd if weight is None else invstd * weight
        beta = -mean * alpha if bias is None else bias - mean * alpha
        y = rows * alpha[:, None] + beta[:, None]
        return y.reshape(x.shape), (x, mean, invstd, use_batch_stats)

    def batch_norm_backward(self, grad_y, saved, weight, grad_weight, grad_bias, need_input_grad=True):
        x, mean, invstd, use_batch_stats = saved
        n, c = x.shape[:2]
        real = x.dtype.type
        rows, grads = x.reshape(n, c, -1), grad_y.reshape(n, c, -1)
        count = real(n * rows.shape[2])
        centered = rows - mean[:, None]
        grad_sum = grads.sum(axis=(0, 2))
        dot = (centered * grads).sum(axis=(0, 2))
        if grad_weight is not None:
            grad_weight += dot * invstd
        if grad_bias is not None:
            grad_bias += grad_sum
        if not need_input_grad:
            return None
        scale = invstd if weight is None else invstd * weight
        if not use_batch_stats:
            return (grads * scale[:, None]).reshape(x.shape)
        projection = centered * (dot * invstd * invstd / count)[:, None]
        return ((grads - (grad_sum / count)[:, None] - projection) * scale[:, None]).reshape(x.shape)

    def sgd_step(self, param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
        d_p = grad + weight_decay * param if weight_decay != 0 else grad
        if momentum != 0:
            if first:
                buf[...] = d_p
            else:
                buf *= momentum
                buf += (1 - dampening) * d_p
            d_p = d_p + momentum * buf if nesterov else buf
        param -= lr * d_p


    def adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, weight_decay, decay, beta1, beta2, eps,
                  step_size, bias_correction2_sqrt, maximize):
        real = param.dtype.type  # torch casts each scalar to the parameter's dtype, then computes in it
        g = -grad if maximize else grad
        if weight_decay != 0:
            g = g + real(weight_decay) * param
        if decay != 1:
            param *= real(decay)
        weight = real(1 - beta1)
        if weight < 0.5:  # torch's lerp, exact at both ends
            exp_avg += weight * (g - exp_avg)
        else:
            exp_avg[...] = g - (g - exp_avg) * (1 - weight)
        exp_avg_sq *= real(beta2)
        exp_avg_sq += real(1 - beta2) * g * g
        second = exp_avg_sq
        if max_exp_avg_sq is not None:
            np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second = max_exp_avg_sq
        param += real(-step_size) * exp_avg / (np.sqrt(second) / real(bias_correction2_sqrt) + real(eps))

_SQRT1_2 = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_PDF = 1 / math.sqrt(2 * math.pi)  # the normal density's constant
_KAPPA = 0.044715
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _avg_windows(hw, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Per axis, each output's (first, end, size clipped to the padded input) as torch's avg_pool2d."""
    windows = []
    for size, k, s, p in zip(hw, kernel, stride, padding):
        out = pool_output_size(size, k, s, p, 1, ceil_mode)
        axis = []
        for index in range(out):
            start = index * s - p
            end = min(start + k, size + p)
            axis.append((max(start, 0), min(end, size), end - start))
        windows.append(axis)
    return windows


def _avg_divisor(inside, padded, count_include_pad, divisor_override):
    """What a window's sum is divided by: the override, the window clipped to the padded input, or its part inside."""
    if divisor_override:
        return divisor_override
    return padded if count_include_pad else inside


def _adaptive_windows(size, out):
    """(first, end) of each of ``out`` adaptive windows over ``size``: floor(i*size/out) to ceil((i+1)*size/out)."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _windows(padded, kernel, stride, dilation, out_hw):
    """A read-only (N, C, KH, KW, OH, OW) view of every receptive field, without copying."""
    n, c, _, _ = padded.shape
    sn, sc, sh, sw = padded.strides
    return as_strided(padded, shape=(n, c) + tuple(kernel) + tuple(out_hw),
                      strides=(sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]),
                      writeable=False)


def create():
    return NumpyBackend()
