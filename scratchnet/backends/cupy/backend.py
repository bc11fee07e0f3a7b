"""The GPU backend: the ``Backend`` interface on CuPy arrays, computed by our own CUDA kernels.

The kernels live in ``kernels/*.cu`` (``sources``), compiled by CuPy's NVRTC once, every kernel
instantiated for both float types; large dense products go to cuBLAS through ``cupy.matmul``. No cuDNN.
CuPy comes through ``device``, which hands the emulated device instead when it is asked for. Arrays
never cross between host and device implicitly: ``asarray`` and ``to_numpy``
are the only moves, and ``check_array`` refuses numpy arrays.

Convolutions take one of two routes: small problems (batch 4 of the tutorial)
run one direct kernel per op, as launch count is what costs there; large ones
go through im2col and a cuBLAS GEMM, whose throughput wins once there is work.
Both routes are deterministic: cuBLAS on one stream is, and our kernels never
use atomics. Dense products split the same way: small ones (the tutorial's
linear layers) run our one-launch ``matmul_direct``, which also lets a training
step be captured into a CUDA graph (``graph``, the ``capture`` hook): CuPy refuses
cuBLAS calls during stream capture.
"""

import numpy as np

from scratchnet.backends.base import ACTIVATIONS, Backend, BackendError
from scratchnet.backends.cupy import graph, sources
from scratchnet.backends.cupy.device import EMULATED, cp
from scratchnet.geometry import conv2d_output_hw, conv_output_size, max_pool2d_output_hw, plain_conv, plain_pool

_THREADS = 256
_REDUCE_THREADS = sources.reduce_threads()
# Enough blocks to fill any current GPU; grid-stride loops cover the rest.
_MAX_BLOCKS = 65535


class CupyBackend(Backend):
    name = "cupy"
    xp = cp
    emulated = EMULATED
    fused_training = captures_graphs = True
    collective_transport = "nccl"

    # Multiply-adds per conv op up to which the single-launch direct kernels are used.
    direct_conv_max_macs = 1 << 24
    # Multiply-adds per dense product up to which matmul_direct is used instead of cuBLAS.
    direct_matmul_max_macs = 1 << 24

    def __init__(self):
        self._module = None
        self._kernels = {}

    # ---- arrays -----------------------------------------------------------------

    def asarray(self, array, dtype=None):
        """Copy a host (numpy) array to the GPU; a GPU array is only cast (if asked) and made contiguous."""
        if isinstance(array, cp.ndarray):
            return cp.ascontiguousarray(array, dtype=dtype)
        if not isinstance(array, (np.ndarray, np.generic)):
            raise TypeError(
                f"input: the cupy backend moves numpy arrays to the GPU, got "
                f"{type(array).__module__}.{type(array).__name__}"
            )
        # np.asarray, not np.ascontiguousarray, which would make a 0-d array 1-d.
        return cp.asarray(np.asarray(array, dtype=dtype, order="C"))

    def to_numpy(self, array):
        """Copy a GPU array to the host."""
        return cp.asnumpy(array)

    def owns(self, array):
        """CuPy's device arrays (the emulated device's, when it stands in)."""
        return isinstance(array, cp.ndarray)

    def check_array(self, array, what):
        """Refuse arrays that live on the host instead of copying them silently."""
        if not isinstance(array, cp.ndarray):
            raise TypeError(
                f"{what}: the cupy backend takes cupy (GPU) arrays, got {type(array).__module__}."
                f"{type(array).__name__}; move it with backend.asarray(...) or move the model with .to(...)"
            )

    # ---- kernels ----------------------------------------------------------------

    def _kernel(self, dtype, name):
        key = (np.dtype(dtype), name)
        if key not in self._kernels:
            if self._module is None:
                self._module = cp.RawModule(code=sources.module_source(), options=("-std=c++14",),
                                            name_expressions=sources.name_expressions())
            self._kernels[key] = self._module.get_function(sources.name_expression(name, dtype))
        return self._kernels[key]

    def _launch(self, dtype, name, total, args):
        """One thread per element over ``total`` elements (grid-stride beyond the grid)."""
        if total > 0:
            blocks = min((total + _THREADS - 1) // _THREADS, _MAX_BLOCKS)
            self._kernel(dtype, name)((blocks,), (_THREADS,), args)

    def _launch_blocks(self, dtype, name, blocks, args):
        """One block (of the kernels' fixed REDUCE_THREADS) per reduced element."""
        if blocks > 0:
            self._kernel(dtype, name)((blocks,), (_REDUCE_THREADS,), args)

    # ---- conv2d ----------------------------------------------------------------

    @staticmethod
    def _conv_shapes(x, weight, stride, padding):
        n, c, h, w = x.shape
        out_c, _, kh, kw = weight.shape
        out_h, out_w = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
        return n, c, h, w, out_c, kh, kw, out_h, out_w

    def _is_direct(self, n, c, out_c, kh, kw, out_h, out_w):
        return n * out_c * out_h * out_w * c * kh * kw <= self.direct_conv_max_macs

    def _im2col(self, x, kh, kw, out_h, out_w, stride, padding):
        """(C*KH*KW + 1, N*OH*OW) receptive fields, with a last row of ones for the bias."""
        n, c, h, w = x.shape
        cols = cp.empty((c * kh * kw + 1, n * out_h * out_w), dtype=x.dtype)
        self._launch(x.dtype, "im2col", cols.size, (
            x, cols, *_ints(n, c, h, w, kh, kw, out_h, out_w, stride, padding)))
        return cols

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, workspace=None):
        x, weight = cp.ascontiguousarray(x), cp.ascontiguousarray(weight)
        # The kernels skip the bias when has_bias is 0; any valid pointer fills its slot.
        bias_arg = weight if bias is None else cp.ascontiguousarray(bias)
        has_bias = np.int32(bias is not None)
        plain = plain_conv(stride, padding, dilation, groups)
        if plain is None:
            sizes = _general_conv_sizes(x.shape, weight.shape, stride, padding, dilation, groups)
            out_hw = conv2d_output_hw(x.shape[2:], weight.shape[2:], stride, padding, dilation)
            y = cp.empty((x.shape[0], weight.shape[0]) + out_hw, dtype=x.dtype)
            self._launch(x.dtype, "conv2d_forward_general", y.size, (x, weight, bias_arg, y, *sizes, has_bias))
            return y
        stride, padding = plain
        n, c, h, w, out_c, kh, kw, out_h, out_w = self._conv_shapes(x, weight, stride, padding)
        y = cp.empty((n, out_c, out_h, out_w), dtype=x.dtype)
        if self._is_direct(n, c, out_c, kh, kw, out_h, out_w):
            self._launch(x.dtype, "conv2d_forward_direct", y.size, (
                x, weight, bias_arg, y,
                *_ints(n, c, h, w, out_c, kh, kw, out_h, out_w, stride, padding), has_bias))
        else:
            cols = self._im2col(x, kh, kw, out_h, out_w, stride, padding)
            rows = cp.matmul(weight.reshape(out_c, -1), cols[:-1])
            self._launch(x.dtype, "rows_to_nchw", y.size, (
                rows, bias_arg, y, *_ints(n, out_c, out_h * out_w), has_bias))
        return y

    def conv2d_backward(self, x, weight, grad_y, stride, padding, dilation, groups, grad_weight, grad_bias,
                        need_input_grad=True, workspace=None):
        plain = plain_conv(stride, padding, dilation, groups)
        if plain is None:
            return self._conv2d_general_backward(x, weight, grad_y, stride, padding, dilation, groups, grad_weight,
                                                 grad_bias, need_input_grad)
        grad_x, weight_sum, bias_sum = self._conv2d_gradients(x, weight, grad_y, *plain, need_input_grad)
        grad_weight += weight_sum
        if grad_bias is not None:
            grad_bias += bias_sum
        return grad_x

    def _conv2d_general_backward(self, x, weight, grad_y, stride, padding, dilation, groups, grad_weight, grad_bias,
                                 need_input_grad):
        """Gather kernels, one thread per weight, bias or input element; the parameter gradients
        are added in place, so ``grad_weight`` / ``grad_bias`` must be contiguous (``.grad`` is)."""
        x, weight, grad_y = (cp.ascontiguousarray(a) for a in (x, weight, grad_y))
        sizes = _general_conv_sizes(x.shape, weight.shape, stride, padding, dilation, groups)
        has_bias = grad_bias is not None
        self._launch(x.dtype, "conv2d_grad_params_general", weight.size + has_bias * weight.shape[0], (
            x, grad_y, grad_weight, grad_weight if grad_bias is None else grad_bias, *sizes, np.int32(has_bias)))
        if not need_input_grad:
            return None
        grad_x = cp.empty_like(x)
        self._launch(x.dtype, "conv2d_grad_input_general", grad_x.size, (grad_y, weight, grad_x, *sizes))
        return grad_x

    def _conv2d_gradients(self, x, weight, grad_y, stride, padding, need_input_grad):
        """Return (grad_x or None, grad_weight, grad_bias), all new arrays."""
        x, weight, grad_y = (cp.ascontiguousarray(a) for a in (x, weight, grad_y))
        n, c, h, w, out_c, kh, kw, out_h, out_w = self._conv_shapes(x, weight, stride, padding)
        sizes = _ints(n, c, h, w, out_c, kh, kw, out_h, out_w, stride, padding)
        grad_x = cp.empty_like(x) if need_input_grad else None
        if self._is_direct(n, c, out_c, kh, kw, out_h, out_w):
            grad_weight = cp.empty_like(weight)
            grad_bias = cp.empty(out_c, dtype=x.dtype)
            self._launch_blocks(x.dtype, "conv2d_grad_params_direct", weight.size + out_c, (
                x, grad_y, grad_weight, grad_bias, *sizes))
            if need_input_grad:
                self._launch(x.dtype, "conv2d_grad_input_direct", grad_x.size, (grad_y, weight, grad_x, *sizes))
            return grad_x, grad_weight, grad_bias

        cols = self._im2col(x, kh, kw, out_h, out_w, stride, padding)
        rows = cp.empty((out_c, n * out_h * out_w), dtype=x.dtype)
        self._launch(x.dtype, "nchw_to_rows", rows.size, (grad_y, rows, *_ints(n, out_c, out_h * out_w)))
        # The ones row of cols makes the last column the bias gradient.
        grad_params = cp.matmul(rows, cols.T)
        grad_weight = cp.ascontiguousarray(grad_params[:, :-1]).reshape(weight.shape)
        grad_bias = cp.ascontiguousarray(grad_params[:, -1])
        if need_input_grad:
            grad_cols = cp.matmul(weight.reshape(out_c, -1).T, rows)
            self._launch(x.dtype, "col2im", grad_x.size, (
                grad_cols, grad_x, *_ints(n, c, h, w, kh, kw, out_h, out_w, stride, padding)))
        return grad_x, grad_weight, grad_bias

    # ---- max-pool --------------------------------------------------------------

    def max_pool2d_forward(self, x, kernel, stride, padding, dilation, ceil_mode):
        x = cp.ascontiguousarray(x)
        n, c, h, w = x.shape
        out_h, out_w = max_pool2d_output_hw((h, w), kernel, stride, padding, dilation, ceil_mode)
        y = cp.empty((n, c, out_h, out_w), dtype=x.dtype)
        indices = cp.empty(y.shape, dtype=cp.int64)
        plain = plain_pool(kernel, stride, padding, dilation, ceil_mode)
        if plain is not None:
            self._launch(x.dtype, "max_pool2d_forward", y.size, (
                x, y, indices, np.int64(n * c), *_ints(h, w, out_h, out_w, *plain)))
        else:
            self._launch(x.dtype, "max_pool2d_forward_general", y.size, (
                x, y, indices, np.int64(n * c), *_ints(h, w, out_h, out_w, *kernel, *stride, *padding, *dilation)))
        return y, indices

    def max_pool2d_backward(self, grad_y, indices, x_shape, kernel, stride, padding, dilation):
        """Each input pixel gathers from the windows (of this geometry) that contain it."""
        grad_y, indices = cp.ascontiguousarray(grad_y), cp.ascontiguousarray(indices)
        n, c, h, w = x_shape
        _, _, out_h, out_w = grad_y.shape
        grad_x = cp.empty(x_shape, dtype=grad_y.dtype)
        plain = plain_pool(kernel, stride, padding, dilation, ceil_mode=False)  # grad_y's shape carries ceil mode
        if plain is not None:
            self._launch(grad_y.dtype, "max_pool2d_backward", grad_x.size, (
                grad_y, indices, grad_x, np.int64(n * c), *_ints(h, w, out_h, out_w, *plain)))
        else:
            self._launch(grad_y.dtype, "max_pool2d_backward_general", grad_x.size, (
                grad_y, indices, grad_x, np.int64(n * c),
                *_ints(h, w, out_h, out_w, *kernel, *stride, *padding, *dilation)))
        return grad_x

    # ---- element-wise and dense ----------------------------------------------------

    def relu_forward(self, x):
        x = cp.ascontiguousarray(x)
        y = cp.empty_like(x)
        self._launch(x.dtype, "relu_forward", x.size, (x, y, np.int64(x.size)))
        return y

    def relu_backward(self, grad_y, y):
        grad_y, y = cp.ascontiguousarray(grad_y), cp.ascontiguousarray(y)
        grad_x = cp.empty_like(grad_y)
        self._launch(y.dtype, "relu_backward", y.size, (grad_y, y, grad_x, np.int64(y.size)))
        return grad_x

    def activation_forward(self, x, kind, alpha=0.0):
        x = cp.ascontiguousarray(x)
        y = cp.empty_like(x)
        self._launch(x.dtype, "activation_forward", x.size, (
            x, y, np.int64(x.size), np.int32(ACTIVATIONS.index(kind)), x.dtype.type(alpha)))
        return y

    def activation_backward(self, grad_y, x, y, kind, alpha=0.0):
        grad_y, x, y = (cp.ascontiguousarray(a) for a in (grad_y, x, y))
        grad_x = cp.empty_like(grad_y)
        self._launch(x.dtype, "activation_backward", x.size, (
            grad_y, x, y, grad_x, np.int64(x.size), np.int32(ACTIVATIONS.index(kind)), x.dtype.type(alpha)))
        return grad_x

    def dropout_forward(self, x, keep, scale):
        x, keep = cp.ascontiguousarray(x), cp.ascontiguousarray(keep)
        y = cp.empty_like(x)
        self._launch(x.dtype, "dropout_apply", x.size, (x, keep, y, np.int64(x.size), x.dtype.type(scale)))
        return y

    dropout_backward = dropout_forward

    def _matmul(self, a, b, bias=None):
        """``a @ b`` (plus ``bias`` on every row) for 2-D arrays, which may be transposed views."""
        rows, inner = a.shape
        cols = b.shape[1]
        if rows * cols * inner > self.direct_matmul_max_macs:
            c = cp.matmul(a, b)
            if bias is not None:
                bias = cp.ascontiguousarray(bias)
                self._launch(c.dtype, "add_bias_rows", c.size, (c, bias, np.int64(c.size), np.int32(bias.size)))
            return c
        c = cp.empty((rows, cols), dtype=a.dtype)
        # The kernel skips the bias when has_bias is 0; any valid pointer fills its slot.
        bias_arg = a if bias is None else cp.ascontiguousarray(bias)
        strides = (np.int64(stride // array.itemsize) for array in (a, b) for stride in array.strides)
        self._launch(a.dtype, "matmul_direct", c.size, (
            a, b, bias_arg, c, *_ints(rows, cols, inner), *strides, np.int32(bias is not None)))
        return c

    def linear_forward(self, x, weight, bias, workspace=None):
        return self._matmul(x, weight.T, bias)

    def linear_backward(self, x, weight, grad_y, grad_weight, grad_bias, need_input_grad=True, workspace=None):
        grad_y = cp.ascontiguousarray(grad_y)
        rows, features = grad_y.shape
        grad_x = self._matmul(grad_y, weight) if need_input_grad else None
        bias_sum = cp.empty(features, dtype=grad_y.dtype)
        self._launch_blocks(grad_y.dtype, "reduce_sum", features, (
            grad_y, bias_sum, np.int64(rows), np.int64(features), np.int64(1)))
        grad_weight += self._matmul(grad_y.T, x)
        if grad_bias is not None:
            grad_bias += bias_sum
        return grad_x

    # ---- loss --------------------------------------------------------------------

    def cross_entropy_forward(self, logits, target, weight, ignore_index, reduction, label_smoothing):
        """One thread per row, then one block reduces; no synchronization with the host."""
        logits = cp.ascontiguousarray(logits)
        rows, classes = logits.shape
        dtype = logits.dtype
        probabilities = target.ndim == 2
        # Unused slots get any valid pointer: has_target says which of labels and target is read.
        labels = logits if probabilities else cp.ascontiguousarray(target, dtype=cp.int64)
        target = cp.ascontiguousarray(target) if probabilities else logits
        class_weight = cp.ones(classes, dtype) if weight is None else cp.ascontiguousarray(weight, dtype=dtype)
        probs, coefficients = cp.empty_like(logits), cp.empty_like(logits)
        row_loss, row_denominator = cp.empty(rows, dtype), cp.empty(rows, dtype)
        self._launch(dtype, "cross_entropy_rows", rows, (
            logits, labels, target, class_weight, probs, coefficients, row_loss, row_denominator,
            *_ints(rows, classes), np.int64(ignore_index), dtype.type(label_smoothing), np.int32(probabilities)))
        if reduction == "none":
            return row_loss, (probs, coefficients, None)
        loss, divisor = cp.empty((), dtype), cp.empty((), dtype)
        self._kernel(dtype, "cross_entropy_reduce")((1,), (_REDUCE_THREADS,), (
            row_loss, row_denominator, loss, divisor, np.int32(rows), np.int32(reduction == "mean")))
        return loss, (probs, coefficients, divisor)

    def cross_entropy_backward(self, saved, grad_loss=None):
        probs, coefficients, divisor = saved
        rows, classes = probs.shape
        scale = cp.ones(rows, probs.dtype) if divisor is None else cp.broadcast_to(1 / divisor, (rows,))
        if grad_loss is not None:
            scale = scale * cp.reshape(grad_loss, (-1,))
        grad = cp.empty_like(probs)
        self._launch(probs.dtype, "cross_entropy_rows_backward", grad.size, (
            probs, coefficients, cp.ascontiguousarray(scale), grad, *_ints(rows, classes)))
        return grad

    # ---- average and adaptive pooling, batch norm ------------------------------------------

    def avg_pool2d_forward(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        x = cp.ascontiguousarray(x)
        n, c, h, w = x.shape
        out_h, out_w = max_pool2d_output_hw((h, w), kernel, stride, padding, (1, 1), ceil_mode)
        y = cp.empty((n, c, out_h, out_w), dtype=x.dtype)
        self._launch(x.dtype, "avg_pool2d_forward", y.size, (
            x, y, np.int64(n * c), *_ints(h, w, out_h, out_w, *kernel, *stride, *padding, count_include_pad,
                                         divisor_override or 0)))
        return y

    def avg_pool2d_backward(self, grad_y, x_shape, kernel, stride, padding, ceil_mode, count_include_pad,
                            divisor_override):
        grad_y = cp.ascontiguousarray(grad_y)
        n, c, h, w = x_shape
        grad_x = cp.empty(x_shape, dtype=grad_y.dtype)
        self._launch(grad_y.dtype, "avg_pool2d_backward", grad_x.size, (
            grad_y, grad_x, np.int64(n * c), *_ints(h, w, *grad_y.shape[2:], *kernel, *stride, *padding,
                                                    count_include_pad, divisor_override or 0)))
        return grad_x

    def adaptive_pool2d_forward(self, x, output_hw, mode):
        x = cp.ascontiguousarray(x)
        n, c, h, w = x.shape
        y = cp.empty((n, c) + tuple(output_hw), dtype=x.dtype)
        sizes = (np.int64(n * c), *_ints(h, w, *output_hw))
        if mode == "avg":
            self._launch(x.dtype, "adaptive_avg_pool2d_forward", y.size, (x, y, *sizes))
            return y, None
        indices = cp.empty(y.shape, dtype=cp.int64)
        self._launch(x.dtype, "adaptive_max_pool2d_forward", y.size, (x, y, indices, *sizes))
        return y, indices

    def adaptive_pool2d_backward(self, grad_y, x_shape, mode, indices):
        grad_y = cp.ascontiguousarray(grad_y)
        n, c, h, w = x_shape
        grad_x = cp.empty(x_shape, dtype=grad_y.dtype)
        sizes = (np.int64(n * c), *_ints(h, w, *grad_y.shape[2:]))
        if mode == "avg":
            self._launch(grad_y.dtype, "adaptive_avg_pool2d_backward", grad_x.size, (grad_y, grad_x, *sizes))
        else:
            self._launch(grad_y.dtype, "adaptive_max_pool2d_backward", grad_x.size, (
                grad_y, cp.ascontiguousarray(indices), grad_x, *sizes))
        return grad_x

    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
        x = cp.ascontiguousarray(x)
        n, c = x.shape[:2]
        spatial = x.size // max(n * c, 1)
        real = x.dtype.type
        if use_batch_stats:
            mean, invstd = cp.empty(c, x.dtype), cp.empty(c, x.dtype)
            update = running_mean is not None
            self._launch_blocks(x.dtype, "batch_norm_stats", c, (
                x, mean, invstd, running_mean if update else mean, running_var if update else invstd,
                *_ints(n, c), np.int64(spatial), real(eps), real(momentum), real(1 - momentum), np.int32(update)))
        else:
            mean, invstd = running_mean, cp.empty(c, x.dtype)
            self._launch(x.dtype, "batch_norm_invstd", c, (running_var, invstd, np.int32(c), real(eps)))
        y = cp.empty_like(x)
        self._launch(x.dtype, "batch_norm_transform", x.size, (
            x, y, mean, invstd, weight if weight is not None else x, bias if bias is not None else x, np.int32(c),
            np.int64(spatial), np.int64(x.size), np.int32(weight is not None), np.int32(bias is not None)))
        return y, (x, mean, invstd, use_batch_stats)

    def batch_norm_backward(self, grad_y, saved, weight, grad_weight, grad_bias, need_input_grad=True):
        x, mean, invstd, use_batch_stats = saved
        grad_y = cp.ascontiguousarray(grad_y)
        n, c = x.shape[:2]
        spatial = x.size // max(n * c, 1)
        grad_sum, dot = cp.empty(c, x.dtype), cp.empty(c, x.dtype)
        self._launch_blocks(x.dtype, "batch_norm_backward_reduce", c, (
            x, grad_y, mean, invstd, grad_sum, dot, _or_placeholder(grad_weight, dot), _or_placeholder(grad_bias, dot),
            *_ints(n, c), np.int64(spatial), np.int32(grad_weight is not None), np.int32(grad_bias is not None)))
        if not need_input_grad:
            return None
        grad_x = cp.empty_like(x)
        self._launch(x.dtype, "batch_norm_backward_input", x.size, (
            x, grad_y, mean, invstd, weight if weight is not None else x, grad_sum, dot, grad_x, np.int32(c),
            np.int64(spatial), np.int64(x.size), x.dtype.type(n * spatial), np.int32(weight is not None),
            np.int32(bool(use_batch_stats))))
        return grad_x

    # ---- optimizer -----------------------------------------------------------------

    def sgd_step(self, param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
        """In place, so the arrays must be contiguous."""
        for array, what in ((param, "param"), (grad, "grad"), (buf, "momentum buffer")):
            if not array.flags.c_contiguous:
                raise ValueError(f"sgd_step updates in place and needs a contiguous {what}")
        real = param.dtype.type
        self._launch(param.dtype, "sgd_step", param.size, (
            param, grad, buf, np.int64(param.size), real(lr), real(momentum), real(1 - dampening),
            real(weight_decay), np.int32(bool(nesterov)), np.int32(bool(first))))

    def adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, weight_decay, decay, beta1, beta2, eps,
                  step_size, bias_correction2_sqrt, maximize):
        """In place, so the arrays must be contiguous (parameters, gradients and the state are)."""
        real = param.dtype.type
        amsgrad = max_exp_avg_sq is not None
        self._launch(param.dtype, "adam_step", param.size, (
            param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else exp_avg_sq, np.int64(param.size),
            real(weight_decay), real(decay), real(1 - beta1), real(beta2), real(1 - beta2), real(eps),
            real(-step_size), real(bias_correction2_sqrt), np.int32(amsgrad), np.int32(bool(maximize))))

    # ---- graph capture ----------------------------------------------------------------------

    def capture(self, run):
        return graph.capture(run)


def _general_conv_sizes(x_shape, weight_shape, stride, padding, dilation, groups):
    """The general kernels' size arguments; the padding as its top and left offsets (the output
    size carries the rest)."""
    n, c, h, w = x_shape
    out_c, _, kh, kw = weight_shape
    out_h, out_w = conv2d_output_hw((h, w), (kh, kw), stride, padding, dilation)
    return _ints(n, c, h, w, out_c, kh, kw, out_h, out_w, *stride, padding[0][0], padding[1][0], *dilation, groups)


def _or_placeholder(array, placeholder):
    """``array``, or any valid pointer for a slot the kernel does not read (its flag is 0)."""
    return placeholder if array is None else array


def _ints(*values):
    """Kernel arguments declared ``int``."""
    return tuple(np.int32(v) for v in values)


def create():
    if EMULATED:
        from scratchnet.backends.cupy.emulator.compiler import CompilerError, compiler

        try:
            compiler()
        except CompilerError as exc:
            raise BackendError(str(exc)) from None
    try:
        devices = cp.cuda.runtime.getDeviceCount()
    except (RuntimeError, OSError) as exc:
        raise BackendError(f"CuPy is installed but CUDA is not usable here ({exc})") from None
    if devices == 0:
        raise BackendError("CuPy is installed but this machine has no CUDA device")
    return CupyBackend()
