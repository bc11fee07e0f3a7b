"""The readable reference backend: the ``Backend`` interface in plain vectorized NumPy.

Signatures and contracts are documented once, in ``base.Backend``; this file is the
math. It keeps the default (eager, unfused) training step: it computes what it says.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from scratchnet.backends.base import Backend, conv_output_size


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    # ---- arrays -----------------------------------------------------------------

    def asarray(self, array, dtype=None):
        self.check_array(array, "input")
        return np.ascontiguousarray(array, dtype=dtype)

    def to_numpy(self, array):
        return np.asarray(array)

    def check_array(self, array, what):
        if not isinstance(array, (np.ndarray, np.generic)):
            raise TypeError(
                f"{what}: the {self.name} backend takes numpy arrays, got {type(array).__module__}."
                f"{type(array).__name__}; move it with .get() or move the model with .to(...)"
            )

    # ---- conv2d ----------------------------------------------------------------

    @staticmethod
    def _windows(padded, kh, kw, stride, out_h, out_w):
        """A (N, C, KH, KW, OH, OW) view of every receptive field, without copying."""
        n, c, _, _ = padded.shape
        sn, sc, sh, sw = padded.strides
        return as_strided(
            padded,
            shape=(n, c, kh, kw, out_h, out_w),
            strides=(sn, sc, sh, sw, sh * stride, sw * stride),
            writeable=False,
        )

    def conv2d_forward(self, x, weight, bias, stride, padding):
        n, c, h, w = x.shape
        out_c, _, kh, kw = weight.shape
        out_h, out_w = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
        padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        cols = self._windows(padded, kh, kw, stride, out_h, out_w).reshape(n, c * kh * kw, out_h * out_w)
        y = np.matmul(weight.reshape(out_c, -1), cols)
        if bias is not None:
            y += bias[:, None]
        return y.reshape(n, out_c, out_h, out_w)

    def conv2d_backward(self, x, weight, grad_y, stride, padding, grad_weight, grad_bias, need_input_grad=True):
        n, c, h, w = x.shape
        out_c, _, kh, kw = weight.shape
        _, _, out_h, out_w = grad_y.shape
        padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        cols = self._windows(padded, kh, kw, stride, out_h, out_w).reshape(n, c * kh * kw, out_h * out_w)
        gy = grad_y.reshape(n, out_c, out_h * out_w)
        grad_weight += np.einsum("nol,nkl->ok", gy, cols).reshape(weight.shape)
        if grad_bias is not None:
            grad_bias += gy.sum(axis=(0, 2))
        if not need_input_grad:
            return None
        grad_cols = np.matmul(weight.reshape(out_c, -1).T, gy).reshape(n, c, kh, kw, out_h, out_w)
        grad_padded = np.zeros_like(padded)
        # col2im: every kernel tap adds its slice back to the pixels it read.
        for i in range(kh):
            for j in range(kw):
                grad_padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride] += grad_cols[:, :, i, j]
        return np.ascontiguousarray(grad_padded[:, :, padding:padding + h, padding:padding + w])

    # ---- max-pool --------------------------------------------------------------

    def max_pool2d_forward(self, x, kernel, stride):
        n, c, h, w = x.shape
        out_h, out_w = conv_output_size(h, kernel, stride), conv_output_size(w, kernel, stride)
        sn, sc, sh, sw = x.strides
        windows = as_strided(
            x,
            shape=(n, c, out_h, out_w, kernel, kernel),
            strides=(sn, sc, sh * stride, sw * stride, sh, sw),
            writeable=False,
        ).reshape(n, c, out_h, out_w, kernel * kernel)
        tap = windows.argmax(axis=-1)
        y = np.take_along_axis(windows, tap[..., None], axis=-1)[..., 0]
        row = np.arange(out_h)[:, None] * stride + tap // kernel
        col = np.arange(out_w)[None, :] * stride + tap % kernel
        return y, (row * w + col).astype(np.int64)

    def max_pool2d_backward(self, grad_y, indices, x_shape, kernel, stride):
        """``kernel`` and ``stride`` serve backends that gather per input pixel over the windows
        containing it; this one scatters."""
        n, c, h, w = x_shape
        grad_x = np.zeros((n * c, h * w), dtype=grad_y.dtype)
        planes = np.arange(n * c)[:, None]
        # add.at, not fancy assignment: overlapping windows may pick the same pixel.
        np.add.at(grad_x, (planes, indices.reshape(n * c, -1)), grad_y.reshape(n * c, -1))
        return grad_x.reshape(x_shape)

    # ---- element-wise and dense ----------------------------------------------------

    def relu_forward(self, x):
        return np.maximum(x, 0)

    def relu_backward(self, grad_y, y):
        return np.where(y > 0, grad_y, 0).astype(grad_y.dtype, copy=False)

    def linear_forward(self, x, weight, bias):
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y

    def linear_backward(self, x, weight, grad_y, grad_weight, grad_bias, need_input_grad=True):
        grad_weight += grad_y.T @ x
        if grad_bias is not None:
            grad_bias += grad_y.sum(axis=0)
        return grad_y @ weight if need_input_grad else None

    # ---- loss --------------------------------------------------------------------

    def cross_entropy_forward(self, logits, labels):
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_sum_exp = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_sum_exp
        loss = -log_probs[np.arange(len(labels)), labels].mean()
        return np.asarray(loss), np.exp(log_probs)

    def cross_entropy_backward(self, probs, labels):
        grad = probs.copy()
        grad[np.arange(len(labels)), labels] -= 1
        grad /= len(labels)
        return grad

    # ---- optimizer -----------------------------------------------------------------

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


def create():
    return NumpyBackend()
