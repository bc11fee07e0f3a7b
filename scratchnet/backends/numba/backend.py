"""The fast CPU backend: the ``Backend`` interface on numpy arrays, every op an ``@njit(cache=True)`` kernel.

The kernels live by op family beside this file: ``layout`` (shifted planes), ``conv``
and ``gemm_conv`` for convolutions, ``pooling``, ``dense`` (linear and ReLU), ``loss_sgd``
(cross-entropy with torch's options, SGD), ``general`` (convolution and max-pool of any
other geometry). Stride-1 convolutions with the same padding on every side, no dilation
and one group (the tutorial's) lay their input out as shifted planes and their output as
rows, computed by our kernels for narrow layers and as matrix products for wide ones
(``gemm_conv.wins`` picks per layer), and conv -> ReLU -> max-pool as one fused pass over
the convolution's rows; ``scratchnet.step`` finds such runs in any ``Sequential`` and
trains through them, handing the ops per-shape workspaces (``workspaces``) so that a step
allocates nothing.
"""

import collections
import ctypes
import functools

import numpy as np

from scratchnet.backends.base import ACTIVATIONS
from scratchnet.backends.numba import activations, adam, dense, general, layout, loss_sgd, norm, pooling, workspaces
from scratchnet.backends.numba.jit import threaded
from scratchnet.backends.numba.loss_sgd import is_mean_loss
from scratchnet.backends.numpy_backend import NumpyBackend
from scratchnet.geometry import conv2d_output_hw, max_pool2d_output_hw, plain_pool, shifted_planes_padding

# Flat views kept for at most this many lists of arrays: an optimizer passes the same three every step.
_FLAT_VIEWS_KEPT = 16


class NumbaBackend(NumpyBackend):
    """Array handling is numpy's, so it derives from the reference; every op is its own."""

    name = "numba"
    fused_training = fused_inference = True
    has_workspaces = True

    def __init__(self):
        # ids of a list's arrays -> their 1-D views. The views hold their arrays, so no id is reused meanwhile.
        self._flat_views = {}
        _keep_freed_memory()

    def _flat(self, arrays):
        """1-D views, so that arrays of any shapes make one tuple type (one compiled kernel);
        remembered, as reshaping every parameter costs more than the update of a small network."""
        key = tuple(map(id, arrays))
        views = self._flat_views.get(key)
        if views is None:
            if len(self._flat_views) >= _FLAT_VIEWS_KEPT:
                self._flat_views.clear()
            views = self._flat_views[key] = tuple(array.reshape(-1) for array in arrays)
        return views

    def normalize_pixels(self, pixels, dtype=None):
        data = np.empty(pixels.shape, dtype=np.float32)
        dense.normalize_pixels(np.ascontiguousarray(pixels), data)
        return data if dtype is None else data.astype(dtype, copy=False)

    # ---- conv2d ----------------------------------------------------------------
    # The plain geometry at stride 1 (``shifted_planes_padding``: the tutorial's) runs on shifted
    # planes; any other runs the general kernels.

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, workspace=None):
        x = np.ascontiguousarray(x)
        plain_padding = shifted_planes_padding(stride, padding, dilation, groups)
        if plain_padding is None:
            out_hw = conv2d_output_hw(x.shape[2:], weight.shape[2:], stride, padding, dilation)
            y = np.empty((x.shape[0], weight.shape[0]) + out_hw, dtype=x.dtype)
            general.conv2d_forward.run(threaded(x.shape[0]), x, np.ascontiguousarray(weight),
                                       _bias_or_empty(bias, weight),
                                       *_general_conv_geometry(stride, padding, dilation, groups), y)
            return y
        work = workspace or workspaces.Conv2d(x.shape, weight.shape, x.dtype, plain_padding)
        work.conv.forward(x, weight, bias)
        work.conv.from_rows(work.conv.rows, work.y)
        return work.y

    def conv2d_backward(self, x, weight, grad_y, stride, padding, dilation, groups, grad_weight, grad_bias,
                        need_input_grad=True, workspace=None):
        grad_y = np.ascontiguousarray(grad_y)
        x = np.ascontiguousarray(x)
        plain_padding = shifted_planes_padding(stride, padding, dilation, groups)
        if plain_padding is None:
            parallel = threaded(x.shape[0])
            weight = np.ascontiguousarray(weight)
            conv_geometry = _general_conv_geometry(stride, padding, dilation, groups)
            general.conv2d_add_param_grads.run(parallel, x, grad_y, *conv_geometry, grad_weight,
                                               _bias_or_empty(grad_bias, weight))
            if not need_input_grad:
                return None
            grad_x = np.empty_like(x)
            general.conv2d_grad_input.run(parallel, weight, grad_y, *conv_geometry, grad_x)
            return grad_x
        work = workspace.conv if workspace else workspaces.conv_workspace(x.shape, weight.shape, x.dtype,
                                                                          plain_padding)
        layout.grad_rows_from_conv(grad_y, work.backward_buffers(need_input_grad))
        if not workspace:  # a workspace keeps the planes of its forward's input
            work.lay_out(x)
        return work.backward(weight, grad_weight, grad_bias, need_input_grad)

    def conv2d_relu_max_pool2d_forward(self, x, weight, bias, stride, padding, pool_kernel, pool_stride,
                                       workspace=None):
        if stride != 1:  # the geometry is plain (the fused ops take no other); shifted planes need stride 1 too
            return super().conv2d_relu_max_pool2d_forward(x, weight, bias, stride, padding, pool_kernel, pool_stride)
        x = np.ascontiguousarray(x)
        work = workspace or workspaces.ConvReLUPool(x.shape, weight.shape, x.dtype, padding, pool_kernel, pool_stride)
        work.conv.forward(x, weight, bias)
        rows, out_w = work.conv.rows, work.conv.geometry.out_hw[1]
        if work.pool_2x2:
            work.pool(rows, out_w, work.as_taps, work.y, work.indices)
        else:
            work.pool(rows, out_w, pool_kernel, pool_stride, work.y, work.indices)
        return work.y, work  # the workspace keeps what the backward needs: the planes, the pooled output, the argmax

    def conv2d_relu_max_pool2d_backward(self, x, weight, saved, grad_y, stride, padding, pool_kernel, pool_stride,
                                        grad_weight, grad_bias, need_input_grad=True):
        if stride != 1:
            return super().conv2d_relu_max_pool2d_backward(x, weight, saved, grad_y, stride, padding, pool_kernel,
                                                           pool_stride, grad_weight, grad_bias, need_input_grad)
        work = saved
        grad_y, grad_rows = np.ascontiguousarray(grad_y), work.conv.backward_buffers(need_input_grad)
        if work.as_taps:
            work.grad_rows_from_pool_2x2(grad_y, work.y, work.indices, work.conv.geometry.out_hw[1], grad_rows)
        else:
            pooling.grad_rows_from_pool(grad_y, work.y, work.indices, grad_rows)
        return work.conv.backward(weight, grad_weight, grad_bias, need_input_grad)

    # ---- max-pool --------------------------------------------------------------

    def max_pool2d_forward(self, x, kernel, stride, padding, dilation, ceil_mode):
        n, c, h, w = x.shape
        shape = (n, c) + max_pool2d_output_hw((h, w), kernel, stride, padding, dilation, ceil_mode)
        y = np.empty(shape, dtype=x.dtype)
        indices = np.empty(shape, dtype=np.int64)
        x = np.ascontiguousarray(x)
        plain = plain_pool(kernel, stride, padding, dilation, ceil_mode)
        if plain == (2, 2):
            pooling.max_pool2d_forward_2x2.run(threaded(n), x, y, indices)
        elif plain is not None:
            pooling.max_pool2d_forward.run(threaded(n), x, *plain, y, indices)
        else:
            general.max_pool2d_forward.run(threaded(n), x, *kernel, *stride, *padding, *dilation, y, indices)
        return y, indices

    def max_pool2d_backward(self, grad_y, indices, x_shape, kernel, stride, padding, dilation):
        grad_x = np.empty(x_shape, dtype=grad_y.dtype)
        pooling.max_pool2d_backward.run(threaded(x_shape[0]), np.ascontiguousarray(grad_y),
                                        np.ascontiguousarray(indices), grad_x)
        return grad_x

    # ---- element-wise and dense ----------------------------------------------------

    def relu_forward(self, x):
        y = np.empty(x.shape, dtype=x.dtype)  # C-ordered, whatever x's layout, so that the kernel's ravel is a view
        dense.relu_forward(np.ascontiguousarray(x), y)
        return y

    def relu_backward(self, grad_y, y):
        grad_x = np.empty(y.shape, dtype=grad_y.dtype)
        dense.relu_backward(np.ascontiguousarray(grad_y), np.ascontiguousarray(y), grad_x)
        return grad_x

    def linear_forward(self, x, weight, bias, workspace=None):
        return _linear(x, weight, bias, False, workspace)

    def linear_relu_forward(self, x, weight, bias, workspace=None):
        return _linear(x, weight, bias, True, workspace)

    def linear_backward(self, x, weight, grad_y, grad_weight, grad_bias, need_input_grad=True, workspace=None):
        return _linear_gradients(x, weight, None, grad_y, grad_weight, grad_bias, need_input_grad, workspace)

    def linear_relu_backward(self, x, weight, y, grad_y, grad_weight, grad_bias, need_input_grad=True,
                             workspace=None):
        return _linear_gradients(x, weight, y, grad_y, grad_weight, grad_bias, need_input_grad, workspace)

    # ---- loss and optimizer ------------------------------------------------------------

    def cross_entropy_forward(self, logits, target, weight, ignore_index, reduction, label_smoothing):
        logits = np.ascontiguousarray(logits)
        rows, classes = logits.shape
        dtype = logits.dtype
        probabilities = target.ndim == 2
        labels = np.empty(0, np.int64) if probabilities else np.ascontiguousarray(target, dtype=np.int64)
        if not probabilities and rows and is_mean_loss(weight, ignore_index, reduction, label_smoothing):
            # The tutorial's loss: its own kernel, unless a label is ignored.
            probs = np.empty_like(logits)
            loss, every_label_a_class = loss_sgd.mean_cross_entropy_forward(logits, labels, probs)
            if every_label_a_class:
                return np.asarray(loss, dtype=dtype), _MeanLoss(probs, labels)
        target = np.ascontiguousarray(target) if probabilities else np.empty((0, classes), dtype)
        class_weight = _ones(classes, dtype) if weight is None else np.ascontiguousarray(weight, dtype=dtype)
        probs, coefficients, row_loss = np.empty_like(logits), np.empty_like(logits), np.empty(rows, dtype)
        total, denominator = loss_sgd.cross_entropy_forward(logits, labels, target, class_weight, ignore_index,
                                                            dtype.type(label_smoothing), probs, coefficients, row_loss)
        if reduction == "none":
            return row_loss, (probs, coefficients, None)
        divisor = dtype.type(denominator if reduction == "mean" else 1)
        if divisor == 0:
            with np.errstate(divide="ignore", invalid="ignore"):  # every target ignored: 0 / 0 = NaN, as torch
                return np.asarray(dtype.type(total) / divisor), (probs, coefficients, divisor)
        return np.asarray(dtype.type(total) / divisor), (probs, coefficients, divisor)

    def cross_entropy_backward(self, saved, grad_loss=None):
        if isinstance(saved, _MeanLoss):
            scale = 1 / saved.probs.shape[0] * (1 if grad_loss is None else float(np.reshape(grad_loss, -1)[0]))
            grad = np.empty_like(saved.probs)
            loss_sgd.mean_cross_entropy_backward(saved.probs, saved.labels, saved.probs.dtype.type(scale), grad)
            return grad
        probs, coefficients, divisor = saved
        rows = probs.shape[0]
        if divisor is None:
            scale = np.ones(rows, probs.dtype)
        elif divisor == 0:
            with np.errstate(divide="ignore"):  # every target ignored: an infinite scale, on rows whose gradient is 0
                scale = np.full(rows, 1 / divisor, probs.dtype)
        else:
            scale = np.full(rows, 1 / divisor, probs.dtype)
        if grad_loss is not None:
            scale *= np.broadcast_to(np.reshape(grad_loss, -1), rows)
        grad = np.empty_like(probs)
        loss_sgd.cross_entropy_backward(probs, coefficients, np.ascontiguousarray(scale), grad)
        return grad

    def sgd_step(self, param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
        loss_sgd.sgd_step(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first)

    def sgd_steps(self, params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
        if len({array.dtype for array in params}) != 1:  # a tuple of mixed dtypes is no single kernel type
            return super().sgd_steps(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first)
        loss_sgd.sgd_steps(self._flat(params), self._flat(grads), self._flat(bufs), lr, momentum, dampening,
                           weight_decay, nesterov, first)

    # ---- the next chapter's ops ----------------------------------------------------------

    def activation_forward(self, x, kind, alpha=0.0):
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        activations.activation_forward.run(_threaded_for(x), x.reshape(-1), y.reshape(-1),
                                           ACTIVATIONS.index(kind), alpha)
        return y

    def activation_backward(self, grad_y, x, y, kind, alpha=0.0):
        grad_y, x, y = (np.ascontiguousarray(a) for a in (grad_y, x, y))
        grad_x = np.empty_like(grad_y)
        activations.activation_backward.run(_threaded_for(x), grad_y.reshape(-1), x.reshape(-1),
                                            y.reshape(-1), grad_x.reshape(-1), ACTIVATIONS.index(kind), alpha)
        return grad_x

    def dropout_forward(self, x, keep, scale):
        x, keep = np.ascontiguousarray(x), np.ascontiguousarray(keep)
        y = np.empty_like(x)
        activations.dropout_apply.run(_threaded_for(x), x.reshape(-1), keep.reshape(-1),
                                      y.reshape(-1), x.dtype.type(scale))
        return y

    dropout_backward = dropout_forward

    def avg_pool2d_forward(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        n, c, h, w = x.shape
        out_hw = max_pool2d_output_hw((h, w), kernel, stride, padding, (1, 1), ceil_mode)
        y = np.empty((n, c) + out_hw, dtype=x.dtype)
        pooling.avg_pool2d_forward(np.ascontiguousarray(x).reshape(n * c, h, w), y.reshape(n * c, *out_hw), *stride,
                                   *padding, *kernel, count_include_pad, divisor_override or 0)
        return y

    def avg_pool2d_backward(self, grad_y, x_shape, kernel, stride, padding, ceil_mode, count_include_pad,
                            divisor_override):
        n, c, h, w = x_shape
        grad_x = np.empty(x_shape, dtype=grad_y.dtype)
        pooling.avg_pool2d_backward(np.ascontiguousarray(grad_y).reshape(n * c, *grad_y.shape[2:]),
                                    grad_x.reshape(n * c, h, w), *stride, *padding, *kernel, count_include_pad,
                                    divisor_override or 0)
        return grad_x

    def adaptive_pool2d_forward(self, x, output_hw, mode):
        n, c, h, w = x.shape
        y = np.empty((n, c) + tuple(output_hw), dtype=x.dtype)
        indices = np.empty(y.shape, dtype=np.int64)
        pooling.adaptive_pool2d_forward.run(threaded(n), np.ascontiguousarray(x).reshape(n * c, h, w),
                                            y.reshape(n * c, *output_hw), indices.reshape(n * c, *output_hw),
                                            mode == "max")
        return y, indices if mode == "max" else None

    def adaptive_pool2d_backward(self, grad_y, x_shape, mode, indices):
        n, c, h, w = x_shape
        out_hw = grad_y.shape[2:]
        grad_x = np.empty(x_shape, dtype=grad_y.dtype)
        indices = np.zeros((1, 1, 1), dtype=np.int64) if indices is None else \
            np.ascontiguousarray(indices).reshape(n * c, *out_hw)
        pooling.adaptive_pool2d_backward.run(threaded(n), np.ascontiguousarray(grad_y).reshape(n * c, *out_hw),
                                             indices, grad_x.reshape(n * c, h, w), mode == "max")
        return grad_x

    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
        n, c = x.shape[:2]
        rows = np.ascontiguousarray(x).reshape(n, c, -1)
        if use_batch_stats:
            mean, invstd = np.empty(c, x.dtype), np.empty(c, x.dtype)
            update = running_mean is not None
            norm.batch_norm_stats.run(threaded(n), rows, mean, invstd, running_mean if update else mean,
                                      running_var if update else invstd, eps, momentum, update)
        else:
            mean, invstd = running_mean, 1 / np.sqrt(running_var + x.dtype.type(eps))
        y = np.empty_like(rows)
        norm.batch_norm_transform.run(threaded(n), rows, y, mean, invstd, mean if weight is None else weight,
                                      mean if bias is None else bias, weight is not None, bias is not None)
        return y.reshape(x.shape), (rows, mean, invstd, use_batch_stats)

    def batch_norm_backward(self, grad_y, saved, weight, grad_weight, grad_bias, need_input_grad=True):
        rows, mean, invstd, use_batch_stats = saved
        grads = np.ascontiguousarray(grad_y).reshape(rows.shape)
        grad_x = np.empty_like(rows)
        norm.batch_norm_backward.run(threaded(rows.shape[0]), rows, grads, mean, invstd,
                                     mean if weight is None else weight, weight is not None,
                                     mean if grad_weight is None else grad_weight,
                                     mean if grad_bias is None else grad_bias, grad_weight is not None,
                                     grad_bias is not None, grad_x, need_input_grad, use_batch_stats)
        return grad_x.reshape(grad_y.shape) if need_input_grad else None

    def adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, weight_decay, decay, beta1, beta2, eps,
                  step_size, bias_correction2_sqrt, maximize):
        flat = [array.reshape(-1) for array in (param, grad, exp_avg, exp_avg_sq)]  # contiguous: views
        amsgrad = max_exp_avg_sq is not None
        adam.adam_step(*flat, max_exp_avg_sq.reshape(-1) if amsgrad else flat[3], amsgrad, weight_decay, decay, beta1,
                       beta2, eps, step_size, bias_correction2_sqrt, maximize)

    # ---- workspaces ------------------------------------------------------------------------

    def workspace(self, op, x_shape, weight_shape, dtype, geometry=()):
        if op == "conv2d_relu_max_pool2d" and len(x_shape) == 4 and geometry[0] == 1:
            return workspaces.ConvReLUPool(x_shape, weight_shape, dtype, *geometry[1:])
        if op == "conv2d" and len(x_shape) == 4 and geometry[0] == 1:
            return workspaces.Conv2d(x_shape, weight_shape, dtype, geometry[1])
        if op in ("linear", "linear_relu") and len(x_shape) == 2:
            return workspaces.Linear(x_shape, weight_shape, dtype)
        return None


def _keep_freed_memory():
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it back to the system:
    a training step frees and allocates the same large arrays every step, and memory fresh from the system
    costs a page fault per 4 KiB on first touch (a sixth of the next chapter's step at batch 128, measured), or a
    wait while the kernel gathers a huge page. Large blocks come from the heap too (glibc maps blocks from 32 MiB
    up afresh otherwise: the next chapter's step at batch 512, arrays of 128 MiB, took 1.41-1.67 s instead of
    1.27-1.29 s). Elsewhere than glibc, nothing changes."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # shrink the heap only past 1 GiB free at its top
    mallopt(_M_TOP_PAD, 256 << 20)  # grow it by 256 MiB at a time
    mallopt(_M_MMAP_MAX, 0)  # every block from the heap, whose freed memory is kept


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameters

# What the tutorial's loss keeps for its backward.
_MeanLoss = collections.namedtuple("_MeanLoss", "probs labels")


@functools.lru_cache(maxsize=16)
def _ones(size, dtype):
    """A read-only array of ones, made once per size and dtype (the class weights of an unweighted loss)."""
    ones = np.ones(size, dtype)
    ones.flags.writeable = False
    return ones


def _bias_or_empty(bias, weight):
    """The general kernels take an empty array for no bias (or no bias gradient)."""
    return np.empty(0, dtype=weight.dtype) if bias is None else bias


def _general_conv_geometry(stride, padding, dilation, groups):
    """The general kernels' geometry arguments: the padding as its top and left offsets (the
    output's shape carries the rest)."""
    return (*stride, padding[0][0], padding[1][0], *dilation, groups)


def _linear(x, weight, bias, relu, workspace):
    x = np.ascontiguousarray(x)
    work = workspace or workspaces.Linear(x.shape, weight.shape, x.dtype)
    work.forward_kernel(x, weight, work.zero_bias if bias is None else bias, relu, work.y)
    return work.y


def _linear_gradients(x, weight, relu_y, grad_y, grad_weight, grad_bias, need_input_grad, workspace):
    """``linear_backward``, after a ReLU whose output was ``relu_y`` unless that is None."""
    work = workspace or workspaces.Linear(x.shape, weight.shape, x.dtype)
    grad_x, spare_grad_bias, no_relu = work.backward_buffers(need_input_grad)
    work.backward_kernel(np.ascontiguousarray(x), weight, no_relu if relu_y is None else relu_y,
                         np.ascontiguousarray(grad_y), need_input_grad, grad_x, grad_weight,
                         spare_grad_bias if grad_bias is None else grad_bias)
    return grad_x if need_input_grad else None


def _threaded_for(x):
    """Whether an element-wise kernel splits over the cores: by the batch, as every other kernel decides."""
    return threaded(x.shape[0] if x.ndim else 1)
