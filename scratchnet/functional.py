"""torch.nn.functional's five ops: torch's names, arguments, defaults and refusals.

Every function accepts what torch's does (an int or a pair, ``'valid'`` / ``'same'``,
unbatched inputs) and refuses what torch refuses, with a message naming the caller,
the argument and the shapes. The parsing helpers are shared with ``scratchnet.nn``,
whose modules name themselves as the caller. The math is the backends' (``NumpyBackend``
for numpy arrays, the reference); these functions parse, check and reshape.
"""

import numpy as np

from scratchnet import backends
from scratchnet.geometry import check_class_indices, conv2d_output_hw, max_pool2d_output_hw, plain_conv, plain_pool
from scratchnet.random import default_generator

REDUCTIONS = ("mean", "sum", "none")


# ---- argument parsing ------------------------------------------------------------------


def pair(value, argument, caller):
    """``value`` as a pair of ints: an int is used for both spatial axes, as in torch."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or len(items) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                   for v in items):
        raise ValueError(f"{caller}: {argument} must be an int or a pair of ints, got {value!r}")
    return int(items[0]), int(items[1])


def conv2d_padding(padding, kernel, stride, dilation, caller):
    """Padding as ((top, bottom), (left, right)).

    ``'same'`` pads ``dilation * (kernel - 1)`` in total per axis; when that is odd,
    torch puts the extra row and column at the bottom and right, and so do we.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise ValueError(f"{caller}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"{caller}: padding='same' is not supported for strided convolutions (stride={stride})")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple((total // 2, total - total // 2) for total in totals)
    ph, pw = pair(padding, "padding", caller)
    if ph < 0 or pw < 0:
        raise ValueError(f"{caller}: negative padding is not supported, got padding={padding!r}")
    return (ph, ph), (pw, pw)


def positive_pair(value, argument, caller):
    parsed = pair(value, argument, caller)
    if min(parsed) <= 0:
        raise ValueError(f"{caller}: {argument} must be positive, got {argument}={value!r}")
    return parsed


def check_groups(groups, caller):
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
        raise ValueError(f"{caller}: groups must be a positive int, got groups={groups!r}")
    return int(groups)


def check_float_input(x, ranks, form, caller):
    if x.ndim not in ranks:
        raise ValueError(f"{caller} expects a {form} input, got shape {tuple(x.shape)}")
    if x.dtype.kind != "f":
        raise ValueError(f"{caller} expects a floating-point input, got dtype {x.dtype} of shape {tuple(x.shape)}")


def batched(x, unbatched_rank):
    """``x`` with a batch axis, and whether one was added (unbatched input, as torch accepts)."""
    if x.ndim == unbatched_rank:
        return x[None], True
    return x, False


# ---- convolution -----------------------------------------------------------------------


class Conv2dArguments:
    """Parsed conv2d arguments: stride, dilation as pairs, padding as ((top, bottom), (left, right))."""

    def __init__(self, weight_shape, stride, padding, dilation, groups, caller):
        if len(weight_shape) != 4:
            raise ValueError(f"{caller}: weight must be 4-D (out_channels, in_channels / groups, kH, kW), "
                             f"got shape {tuple(weight_shape)}")
        out_channels, _, kh, kw = weight_shape
        self.kernel = (kh, kw)
        self.stride = positive_pair(stride, "stride", caller)
        self.dilation = positive_pair(dilation, "dilation", caller)
        self.padding = conv2d_padding(padding, self.kernel, self.stride, self.dilation, caller)
        self.groups = check_groups(groups, caller)
        if out_channels % self.groups:
            raise ValueError(f"{caller}: out_channels={out_channels} must be divisible by groups={self.groups}, "
                             f"got weight of shape {tuple(weight_shape)}")
        self.weight_shape = tuple(weight_shape)
        self.caller = caller

    def output_hw(self, h, w):
        return conv2d_output_hw((h, w), self.kernel, self.stride, self.padding, self.dilation)

    def plain(self):
        """(stride, padding) as ints when the fused ops take this convolution (``geometry.plain_conv``), else None."""
        return plain_conv(self.stride, self.padding, self.dilation, self.groups)

    def check_input(self, x):
        """Refuse an input this convolution cannot take, as torch does."""
        check_float_input(x, (3, 4), "(C, H, W) or (N, C, H, W)", self.caller)
        channels, h, w = x.shape[-3:]
        expected = self.groups * self.weight_shape[1]
        if channels != expected:
            raise ValueError(f"{self.caller} expects {expected} input channels (groups={self.groups}, weight of "
                             f"shape {self.weight_shape}), got {channels} input channels in input of shape "
                             f"{tuple(x.shape)}")
        padded = [size + before + after for size, (before, after) in zip((h, w), self.padding)]
        effective = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel)]
        if padded[0] < effective[0] or padded[1] < effective[1]:
            raise ValueError(f"{self.caller}: input of shape {tuple(x.shape)} (padded to {padded[0]}x{padded[1]}) "
                             f"is smaller than the kernel {effective[0]}x{effective[1]} (dilated)")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d: (N, C, H, W) or (C, H, W) input, weight (O, C / groups, kH, kW)."""
    args = Conv2dArguments(weight.shape, stride, padding, dilation, groups, "conv2d")
    args.check_input(input)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"conv2d: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    x, unbatched = batched(input, 3)
    y = backends.for_array(input).conv2d_forward(x, weight, bias, args.stride, args.padding, args.dilation,
                                                 args.groups)
    return y[0] if unbatched else y


# ---- max-pool ---------------------------------------------------------------------------


class MaxPool2dArguments:
    """Parsed max_pool2d arguments, all pairs; ``stride`` defaults to the kernel, as in torch."""

    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode, caller):
        self.kernel = positive_pair(kernel_size, "kernel_size", caller)
        self.stride = self.kernel if stride is None else positive_pair(stride, "stride", caller)
        self.padding = pair(padding, "padding", caller)
        self.dilation = positive_pair(dilation, "dilation", caller)
        if min(self.padding) < 0 or any(p > k // 2 for p, k in zip(self.padding, self.kernel)):
            raise ValueError(f"{caller}: padding={padding!r} must be non-negative and at most half the kernel "
                             f"size, kernel_size={kernel_size!r}")
        self.ceil_mode = bool(ceil_mode)
        self.caller = caller

    def output_hw(self, h, w):
        return max_pool2d_output_hw((h, w), self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    def plain(self):
        """(kernel, stride) as ints when the fused ops take this pool (``geometry.plain_pool``), else None."""
        return plain_pool(self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    def check_input(self, x):
        check_float_input(x, (3, 4), "(C, H, W) or (N, C, H, W)", self.caller)
        self.output_shape(x.shape)

    def output_shape(self, input_shape):
        """The output's shape for an input of ``input_shape``; a ValueError naming the caller if too small."""
        out_h, out_w = self.output_hw(*input_shape[-2:])
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{self.caller}: input of shape {tuple(input_shape)} is smaller than the kernel "
                             f"(output size {out_h}x{out_w})")
        return tuple(input_shape[:-2]) + (out_h, out_w)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """torch.nn.functional.max_pool2d; with ``return_indices`` also torch's flat per-plane argmax indices."""
    args = MaxPool2dArguments(kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    args.check_input(input)
    x, unbatched = batched(input, 3)
    y, indices = backends.for_array(input).max_pool2d_forward(x, args.kernel, args.stride, args.padding,
                                                              args.dilation, args.ceil_mode)
    if unbatched:
        y, indices = y[0], indices[0]
    return (y, indices) if return_indices else y


# ---- linear and relu ----------------------------------------------------------------------


def check_linear_input(x, in_features, caller):
    check_float_input(x, range(1, 33), "(*, in_features)", caller)
    if x.shape[-1] != in_features:
        raise ValueError(f"{caller} expects {in_features} input features, got input of shape {tuple(x.shape)}")


def linear(input, weight, bias=None):
    """torch.nn.functional.linear: any number of leading axes, or an unbatched (in_features,) vector."""
    check_linear_input(input, weight.shape[1], "linear")
    y = backends.for_array(input).linear_forward(input.reshape(-1, weight.shape[1]), weight, bias)
    return y.reshape(input.shape[:-1] + (weight.shape[0],))


def relu(input):
    """torch.nn.functional.relu: NaN stays NaN."""
    return backends.for_array(input).relu_forward(input)


# ---- cross-entropy --------------------------------------------------------------------------


class CrossEntropyArguments:
    """Parsed cross_entropy options; ``rows`` puts logits and targets into the (rows, C) form the
    backends compute on, and ``unrows`` brings per-row results back to the caller's shape."""

    def __init__(self, weight, ignore_index, reduction, label_smoothing, caller):
        if reduction not in REDUCTIONS:
            raise ValueError(f"{caller}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"{caller}: label_smoothing must be between 0.0 and 1.0, got {label_smoothing!r}")
        if weight is not None and weight.ndim != 1:
            raise ValueError(f"{caller}: weight must be 1-D (one per class), got shape {tuple(weight.shape)}")
        self.weight, self.ignore_index = weight, int(ignore_index)
        self.reduction, self.label_smoothing = reduction, float(label_smoothing)
        self.caller = caller

    def check(self, logits, target):
        """Refuse mismatched shapes and dtypes; return whether ``target`` holds class probabilities."""
        caller, shape = self.caller, tuple(logits.shape)
        check_float_input(logits, range(1, 33), "(C,), (N, C) or (N, C, d1, ...) logits", caller)
        classes = shape[0] if logits.ndim == 1 else shape[1]
        if self.weight is not None and self.weight.shape[0] != classes:
            raise ValueError(f"{caller}: weight of shape {tuple(self.weight.shape)} must have one entry per class "
                             f"for logits of shape {shape} ({classes} classes)")
        if target.dtype.kind == "f":
            if tuple(target.shape) != shape:
                raise ValueError(f"{caller}: class-probability targets must have the logits' shape {shape}, "
                                 f"got {tuple(target.shape)}")
            if target.dtype != logits.dtype:
                raise ValueError(f"{caller}: targets of dtype {target.dtype} for logits of dtype {logits.dtype}")
            if self.ignore_index != -100:
                raise ValueError(f"{caller}: ignore_index is not supported for class-probability targets")
            return True
        if target.dtype.kind not in "iu":
            raise ValueError(f"{caller}: targets must be integer class indices or float class probabilities, "
                             f"got dtype {target.dtype}")
        expected = shape[:1] + shape[2:] if logits.ndim > 1 else ()
        if tuple(target.shape) != expected:
            raise ValueError(f"{caller}: logits of shape {shape} need class-index targets of shape {expected}, "
                             f"got {tuple(target.shape)}")
        return False

    @staticmethod
    def rows(logits, target, probabilities):
        """(rows, C) logits and (rows,) or (rows, C) targets: the class axis moved last.
        Array methods only, so numpy and cupy arrays both stay where they are."""
        if logits.ndim == 1:
            return logits[None], target[None]
        if logits.ndim == 2:
            return logits, target  # rows already
        classes, class_last = logits.shape[1], (0,) + tuple(range(2, logits.ndim)) + (1,)
        logit_rows = logits.transpose(class_last).reshape(-1, classes)
        target_rows = target.transpose(class_last).reshape(-1, classes) if probabilities else target.reshape(-1)
        return logit_rows, target_rows

    @staticmethod
    def unrows(rows, logits_shape):
        """Per-row values (rows,) or (rows, C) back in the logits' layout, C-ordered."""
        if len(logits_shape) == 1:
            return rows[0]
        if len(logits_shape) == 2:
            return rows  # the logits' layout already: the backends return new C-ordered arrays
        if rows.ndim == 1:
            return rows.reshape(logits_shape[:1] + logits_shape[2:])
        moved = rows.reshape(logits_shape[:1] + logits_shape[2:] + logits_shape[1:2])
        class_second = (0, moved.ndim - 1) + tuple(range(1, moved.ndim - 1))
        return moved.transpose(class_second).copy()


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """torch.nn.functional.cross_entropy from logits, with class-index or class-probability targets."""
    args = CrossEntropyArguments(weight, ignore_index, reduction, label_smoothing, "cross_entropy")
    probabilities = args.check(input, target)
    logit_rows, target_rows = args.rows(input, target, probabilities)
    if not probabilities:
        check_class_indices(target_rows, logit_rows.shape[1], "cross_entropy", args.ignore_index)
    loss, _ = backends.for_array(input).cross_entropy_forward(logit_rows, target_rows, weight, args.ignore_index,
                                                              reduction, label_smoothing)
    return args.unrows(loss, input.shape) if reduction == "none" else loss


# ---- the next chapter: activations, dropout, average and adaptive pooling, batch norm ---------------


def activation(input, kind, alpha=0.0):
    """``Backend.activation_forward`` of a floating-point array of any shape (the activations below)."""
    check_float_input(input, range(0, 33), "floating-point", kind)
    return backends.for_array(input).activation_forward(input, kind, alpha)


def check_gelu_approximation(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate argument must be either none or tanh, got {approximate!r}")
    return "gelu" if approximate == "none" else "gelu_tanh"


def gelu(input, approximate="none"):
    """torch.nn.functional.gelu: ``x * Phi(x)`` with the normal CDF exact (erf) or by its tanh approximation."""
    return activation(input, check_gelu_approximation(approximate))


def silu(input, inplace=False):
    return activation(input, "silu")


def leaky_relu(input, negative_slope=0.01, inplace=False):
    return activation(input, "leaky_relu", negative_slope)


def tanh(input):
    return activation(input, "tanh")


def sigmoid(input):
    return activation(input, "sigmoid")


def check_dropout_probability(p):
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return float(p)


def dropout_mask(shape, p, generator):
    """(keep, scale): which elements survive (drawn on the host from ``generator``, so runs repeat on any
    backend and thread count) and what they are scaled by; p = 1 keeps none and scales by 0, as torch."""
    if p == 1:
        return np.zeros(shape, dtype=bool), 0.0
    return generator.random(shape) < 1 - p, 1 / (1 - p)


def dropout(input, p=0.5, training=True, inplace=False, generator=None):
    """torch.nn.functional.dropout, with the mask from ``generator`` (scratchnet's global one by default)."""
    p = check_dropout_probability(p)
    if not training or p == 0:
        return input
    backend = backends.for_array(input)
    keep, scale = dropout_mask(input.shape, p, default_generator(generator))
    return backend.dropout_forward(input, backend.asarray(keep), scale)


class AvgPool2dArguments:
    """Parsed avg_pool2d arguments, pairs; ``stride`` defaults to the kernel, as in torch."""

    def __init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, caller):
        self.kernel = positive_pair(kernel_size, "kernel_size", caller)
        self.stride = self.kernel if stride is None or stride == [] else positive_pair(stride, "stride", caller)
        self.padding = pair(padding, "padding", caller)
        if min(self.padding) < 0 or any(p > k // 2 for p, k in zip(self.padding, self.kernel)):
            raise ValueError(f"{caller}: pad should be at most half of effective kernel size, got "
                             f"padding={padding!r}, kernel_size={kernel_size!r}")
        if divisor_override is not None and (isinstance(divisor_override, bool) or int(divisor_override) != divisor_override
                                             or divisor_override == 0):
            raise ValueError(f"{caller}: divisor must be a non-zero int, got divisor_override={divisor_override!r}")
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)
        self.divisor_override = None if divisor_override is None else int(divisor_override)
        self.caller = caller

    def output_shape(self, input_shape):
        out_h, out_w = max_pool2d_output_hw(input_shape[-2:], self.kernel, self.stride, self.padding, (1, 1),
                                            self.ceil_mode)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{self.caller}: input of shape {tuple(input_shape)} is smaller than the kernel "
                             f"(output size {out_h}x{out_w})")
        return tuple(input_shape[:-2]) + (out_h, out_w)

    def check_input(self, x):
        check_float_input(x, (3, 4), "(C, H, W) or (N, C, H, W)", self.caller)
        self.output_shape(x.shape)

    def options(self):
        return self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.divisor_override


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """torch.nn.functional.avg_pool2d."""
    args = AvgPool2dArguments(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                              "avg_pool2d")
    args.check_input(input)
    x, unbatched = batched(input, 3)
    y = backends.for_array(input).avg_pool2d_forward(x, *args.options())
    return y[0] if unbatched else y


def adaptive_output_hw(output_size, input_hw, caller):
    """The output size of an adaptive pool: an int or a pair, None keeping that axis's input size."""
    sizes = (output_size, output_size) if output_size is None or isinstance(output_size, (int, np.integer)) \
        else tuple(output_size)
    if len(sizes) != 2 or not all(size is None or (isinstance(size, (int, np.integer)) and size > 0) for size in sizes):
        raise ValueError(f"{caller}: output_size must be a positive int or a pair of them (or None), got "
                         f"{output_size!r}")
    return tuple(int(input_size if size is None else size) for size, input_size in zip(sizes, input_hw))


def adaptive_pool2d(input, output_size, mode, caller):
    check_float_input(input, (3, 4), "(C, H, W) or (N, C, H, W)", caller)
    x, unbatched = batched(input, 3)
    y, indices = backends.for_array(input).adaptive_pool2d_forward(
        x, adaptive_output_hw(output_size, x.shape[2:], caller), mode)
    return (y[0], None if indices is None else indices[0]) if unbatched else (y, indices)


def adaptive_avg_pool2d(input, output_size):
    return adaptive_pool2d(input, output_size, "avg", "adaptive_avg_pool2d")[0]


def adaptive_max_pool2d(input, output_size, return_indices=False):
    y, indices = adaptive_pool2d(input, output_size, "max", "adaptive_max_pool2d")
    return (y, indices) if return_indices else y


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm of (N, C, *) input; in training the running statistics (if given)
    move by ``momentum``."""
    check_float_input(input, range(2, 33), "(N, C, *)", "batch_norm")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must be defined in evaluation mode")
    y, _ = backends.for_array(input).batch_norm_forward(input, weight, bias, running_mean, running_var, training,
                                                        momentum, eps)
    return y
