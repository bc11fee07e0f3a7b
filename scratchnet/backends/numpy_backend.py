"""The readable reference backend: plain vectorized NumPy.

Every other backend implements exactly these methods with the same signatures
and the same semantics; the tests hold them all to torch autograd.

Layouts follow torch: activations NCHW, conv weight (O, C, KH, KW), linear
weight (out, in). Max-pool indices are flat positions ``h * W + w`` inside each
input plane, like torch's ``return_indices``.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided


class NumpyBackend:
    name = "numpy"
    xp = np

    # ---- arrays -----------------------------------------------------------------

    def asarray(self, array, dtype=None):
        """Bring a host (numpy) array onto this backend."""
        self.check_array(array, "input")
        return np.ascontiguousarray(array, dtype=dtype)

    def to_numpy(self, array):
        return np.asarray(array)

    def check_array(self, array, what):
        """Refuse arrays that live on another device instead of copying silently.

        ``what`` names the caller; it is formatted only for the error message, so a
        module can pass itself and skip building its repr on every call.
        """
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
        out_h = (h + 2 * padding - kh) // stride + 1
        out_w = (w + 2 * padding - kw) // stride + 1
        padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        cols = self._windows(padded, kh, kw, stride, out_h, out_w).reshape(n, c * kh * kw, out_h * out_w)
        y = np.matmul(weight.reshape(out_c, -1), cols)
        if bias is not None:
            y += bias[:, None]
        return y.reshape(n, out_c, out_h, out_w)

    def conv2d_backward(self, x, weight, grad_y, stride, padding, need_input_grad=True, grad_weight=None,
                        grad_bias=None):
        """Return (grad_x or None, grad_weight, grad_bias).

        Given ``grad_weight`` / ``grad_bias`` arrays (the parameters' ``.grad``), the
        gradients are added into them, as autograd accumulates, and those are returned:
        a backend may then skip temporaries. ``linear_backward`` takes them too.
        """
        n, c, h, w = x.shape
        out_c, _, kh, kw = weight.shape
        _, _, out_h, out_w = grad_y.shape
        padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        cols = self._windows(padded, kh, kw, stride, out_h, out_w).reshape(n, c * kh * kw, out_h * out_w)
        gy = grad_y.reshape(n, out_c, out_h * out_w)
        grad_weight = accumulate(grad_weight, np.einsum("nol,nkl->ok", gy, cols).reshape(weight.shape))
        grad_bias = accumulate(grad_bias, gy.sum(axis=(0, 2)))
        grad_x = None
        if need_input_grad:
            grad_cols = np.matmul(weight.reshape(out_c, -1).T, gy).reshape(n, c, kh, kw, out_h, out_w)
            grad_padded = np.zeros_like(padded)
            # col2im: every kernel tap adds its slice back to the pixels it read.
            for i in range(kh):
                for j in range(kw):
                    grad_padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride] += grad_cols[:, :, i, j]
            grad_x = grad_padded[:, :, padding:padding + h, padding:padding + w]
            grad_x = np.ascontiguousarray(grad_x)
        return grad_x, grad_weight, grad_bias

    # ---- max-pool --------------------------------------------------------------

    def max_pool2d_forward(self, x, kernel, stride):
        """Return (y, indices); ties go to the first element in scan order, as in torch."""
        n, c, h, w = x.shape
        out_h = (h - kernel) // stride + 1
        out_w = (w - kernel) // stride + 1
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
        """Route each output gradient to its argmax. ``kernel`` and ``stride`` serve
        backends that gather per input pixel over the windows containing it; this one scatters."""
        n, c, h, w = x_shape
        grad_x = np.zeros((n * c, h * w), dtype=grad_y.dtype)
        planes = np.arange(n * c)[:, None]
        # add.at, not fancy assignment: overlapping windows may pick the same pixel.
        np.add.at(grad_x, (planes, indices.reshape(n * c, -1)), grad_y.reshape(n * c, -1))
        return grad_x.reshape(x_shape)

    # ---- fused blocks ------------------------------------------------------------------
    # Composed from the primitives above, so every backend has them; a backend may
    # override them with one fused kernel. ``saved`` is backend-private.

    def conv2d_relu_max_pool2d_forward(self, x, weight, bias, stride, padding, pool_kernel, pool_stride):
        """max_pool2d(relu(conv2d(x))). Return (y, saved): ``saved`` is what the backward needs."""
        relu_y = self.relu_forward(self.conv2d_forward(x, weight, bias, stride, padding))
        y, indices = self.max_pool2d_forward(relu_y, pool_kernel, pool_stride)
        return y, (relu_y, indices)

    def conv2d_relu_max_pool2d_backward(self, x, weight, saved, grad_y, stride, padding, pool_kernel, pool_stride,
                                        need_input_grad=True, grad_weight=None, grad_bias=None):
        """Return (grad_x or None, grad_weight, grad_bias), as ``conv2d_backward``."""
        relu_y, indices = saved
        grad_relu = self.max_pool2d_backward(grad_y, indices, relu_y.shape, pool_kernel, pool_stride)
        grad_conv = self.relu_backward(grad_relu, relu_y)
        return self.conv2d_backward(x, weight, grad_conv, stride, padding, need_input_grad, grad_weight, grad_bias)

    def linear_relu_forward(self, x, weight, bias):
        """relu(linear(x)); the backward takes this output back."""
        return self.relu_forward(self.linear_forward(x, weight, bias))

    def linear_relu_backward(self, x, weight, y, grad_y, need_input_grad=True, grad_weight=None, grad_bias=None):
        """As ``linear_backward``, given the forward's output ``y``."""
        return self.linear_backward(x, weight, self.relu_backward(grad_y, y), need_input_grad, grad_weight, grad_bias)

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

    def linear_backward(self, x, weight, grad_y, need_input_grad=True, grad_weight=None, grad_bias=None):
        """Return (grad_x or None, grad_weight, grad_bias); ``grad_weight`` / ``grad_bias`` as in ``conv2d_backward``."""
        grad_x = grad_y @ weight if need_input_grad else None
        return grad_x, accumulate(grad_weight, grad_y.T @ x), accumulate(grad_bias, grad_y.sum(axis=0))

    # ---- loss --------------------------------------------------------------------

    def cross_entropy_forward(self, logits, labels):
        """Mean softmax cross-entropy. Return (loss as a 0-d array on this backend, probabilities).

        The loss stays an array so a GPU backend need not synchronize every step.
        """
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
        """One torch.optim.SGD update, in place on ``param`` and ``buf``.

        ``first`` says the momentum buffer is fresh: torch then copies the gradient
        into it instead of applying dampening.
        """
        d_p = grad + weight_decay * param if weight_decay != 0 else grad
        if momentum != 0:
            if first:
                buf[...] = d_p
            else:
                buf *= momentum
                buf += (1 - dampening) * d_p
            d_p = d_p + momentum * buf if nesterov else buf
        param -= lr * d_p

    def sgd_steps(self, params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
        """``sgd_step`` on each (param, grad, buf) of the three equal-length lists; a backend may
        fuse them into one call, as per-call overhead dominates small networks."""
        for param, grad, buf in zip(params, grads, bufs):
            self.sgd_step(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first)


def accumulate(total, gradient):
    """``total += gradient`` and return ``total``; just ``gradient`` when there is no ``total``."""
    if total is None:
        return gradient
    total += gradient
    return total


def create():
    return NumpyBackend()
