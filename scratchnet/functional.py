"""torch.nn.functional's five ops: torch's names, arguments, defaults and refusals.

Every function accepts what torch's does (an int or a pair, ``'valid'`` / ``'same'``,
unbatched inputs) and refuses what torch refuses, with a message naming the caller,
the argument and the shapes. The parsing helpers are shared with ``scratchnet.nn``,
whose modules name themselves as the caller.
"""

import numpy as np

from scratchnet.backends.base import check_class_indices, conv_output_size, pool_output_size

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
        if not isinstance(groups, (int, np.integer)) or groups <= 0:
            raise ValueError(f"{caller}: groups must be a positive int, got groups={groups!r}")
        if out_channels % groups:
            raise ValueError(f"{caller}: groups={groups} must divide the weight's out_channels, "
                             f"got weight of shape {tuple(weight_shape)}")
        self.groups = int(groups)
        self.weight_shape = tuple(weight_shape)
        self.caller = caller

    def output_hw(self, h, w):
        return _conv_output_hw((h, w), self.kernel, self.stride, self.padding, self.dilation)

    def check_input(self, x):
        """Refuse an input this convolution cannot take, as torch does."""
        check_float_input(x, (3, 4), "(C, H, W) or (N, C, H, W)", self.caller)
        channels, h, w = x.shape[-3:]
        expected = self.groups * self.weight_shape[1]
        if channels != expected:
            raise ValueError(f"{self.caller} expects {expected} input channels (groups={self.groups}, weight of "
                             f"shape {self.weight_shape}), got input of shape {tuple(x.shape)}")
        padded = [size + before + after for size, (before, after) in zip((h, w), self.padding)]
        effective = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel)]
        if padded[0] < effective[0] or padded[1] < effective[1]:
            raise ValueError(f"{self.caller}: input of shape {tuple(x.shape)} (padded to {padded[0]}x{padded[1]}) "
                             f"is smaller than the kernel {effective[0]}x{effective[1]} (dilated)")


def _conv_output_hw(hw, kernel, stride, padding, dilation):
    """Output (H, W): the padded size against the dilated kernel."""
    return tuple(conv_output_size(size + before + after, d * (k - 1) + 1, s) for size, k, s, (before, after), d
                 in zip(hw, kernel, stride, padding, dilation))


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d: (N, C, H, W) or (C, H, W) input, weight (O, C / groups, kH, kW)."""
    args = Conv2dArguments(weight.shape, stride, padding, dilation, groups, "conv2d")
    args.check_input(input)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"conv2d: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    x, unbatched = batched(input, 3)
    y = conv2d_forward(x, weight, bias, args.stride, args.padding, args.dilation, args.groups)
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
            raise ValueError(f"{caller}: padding must be non-negative and at most half the kernel size, "
                             f"got padding={padding!r} for kernel_size={kernel_size!r}")
        self.ceil_mode = bool(ceil_mode)
        self.caller = caller

    def output_hw(self, h, w):
        return tuple(pool_output_size(size, k, s, p, d, self.ceil_mode) for size, k, s, p, d
                     in zip((h, w), self.kernel, self.stride, self.padding, self.dilation))

    def check_input(self, x):
        check_float_input(x, (3, 4), "(C, H, W) or (N, C, H, W)", self.caller)
        out_h, out_w = self.output_hw(*x.shape[-2:])
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{self.caller}: input of shape {tuple(x.shape)} is smaller than the kernel "
                             f"(output size {out_h}x{out_w})")


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """torch.nn.functional.max_pool2d; with ``return_indices`` also torch's flat per-plane argmax indices."""
    args = MaxPool2dArguments(kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    args.check_input(input)
    x, unbatched = batched(input, 3)
    y, indices = max_pool2d_forward(x, args.kernel, args.stride, args.padding, args.dilation, args.ceil_mode)
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
    rows = input.reshape(-1, weight.shape[1])
    y = rows @ weight.T
    if bias is not None:
        y += bias
    return y.reshape(input.shape[:-1] + (weight.shape[0],))


def relu(input):
    """torch.nn.functional.relu: NaN stays NaN."""
    return relu_forward(input)


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
        """(rows, C) logits and (rows,) or (rows, C) targets: the class axis moved last."""
        if logits.ndim == 1:
            return logits[None], target[None]
        classes = logits.shape[1]
        logit_rows = np.moveaxis(logits, 1, -1).reshape(-1, classes)
        target_rows = np.moveaxis(target, 1, -1).reshape(-1, classes) if probabilities else target.reshape(-1)
        return logit_rows, target_rows

    @staticmethod
    def unrows(rows, logits_shape):
        """Per-row values (rows,) or (rows, C) back in the logits' layout."""
        if len(logits_shape) == 1:
            return rows[0]
        if rows.ndim == 1:
            return rows.reshape(logits_shape[:1] + logits_shape[2:])
        moved = rows.reshape(logits_shape[:1] + logits_shape[2:] + logits_shape[1:2])
        return np.ascontiguousarray(np.moveaxis(moved, -1, 1))


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """torch.nn.functional.cross_entropy from logits, with class-index or class-probability targets."""
    args = CrossEntropyArguments(weight, ignore_index, reduction, label_smoothing, "cross_entropy")
    probabilities = args.check(input, target)
    logit_rows, target_rows = args.rows(input, target, probabilities)
    if not probabilities:
        check_class_indices(target_rows, logit_rows.shape[1], "cross_entropy", args.ignore_index)
    loss, _ = cross_entropy_forward(logit_rows, target_rows, weight, args.ignore_index, reduction, label_smoothing)
    return args.unrows(loss, input.shape) if reduction == "none" else loss


# ---- reference math: vectorized NumPy, one function per backend method --------------------


def _windows(padded, kernel, stride, dilation, out_hw):
    """A read-only (N, C, KH, KW, OH, OW) view of every receptive field, without copying."""
    n, c, _, _ = padded.shape
    sn, sc, sh, sw = padded.strides
    return np.lib.stride_tricks.as_strided(
        padded, shape=(n, c) + tuple(kernel) + tuple(out_hw),
        strides=(sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]), writeable=False)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """Cross-correlation of NCHW ``x`` with (O, C / groups, KH, KW) ``weight``: per group one matmul over im2col."""
    n, c, h, w = x.shape
    out_c, group_c, kh, kw = weight.shape
    out_hw = _conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    padded = np.pad(x, ((0, 0), (0, 0)) + tuple(padding))
    cols = _windows(padded, (kh, kw), stride, dilation, out_hw).reshape(n, groups, group_c * kh * kw, -1)
    y = np.matmul(weight.reshape(groups, out_c // groups, -1), cols).reshape((n, out_c) + out_hw)
    if bias is not None:
        y += bias[:, None, None]
    return y


def conv2d_backward(x, weight, grad_y, stride, padding, dilation, groups, grad_weight, grad_bias,
                    need_input_grad=True):
    """Add the weight and bias gradients into ``grad_weight`` / ``grad_bias`` (None: no bias);
    return the input gradient, or None without ``need_input_grad``."""
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
    rows = [slice(i * dilation[0], i * dilation[0] + stride[0] * (out_hw[0] - 1) + 1, stride[0]) for i in range(kh)]
    cols_ = [slice(j * dilation[1], j * dilation[1] + stride[1] * (out_hw[1] - 1) + 1, stride[1]) for j in range(kw)]
    for i, row in enumerate(rows):
        for j, col in enumerate(cols_):
            grad_padded[:, :, row, col] += grad_cols[:, :, i, j]
    (top, _), (left, _) = padding
    return np.ascontiguousarray(grad_padded[:, :, top:top + h, left:left + w])


def max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode):
    """Return (y, indices), indices flat ``h * W + w`` in each input plane.

    torch's rule inside a window, in scan order: a strictly greater value or any NaN takes
    over, so ties go to the first maximum and NaN to the last NaN; a window of -inf keeps
    its first tap on the input (padding never wins).
    """
    n, c, h, w = x.shape
    out_hw = tuple(pool_output_size(size, k, s, p, d, ceil_mode) for size, k, s, p, d
                   in zip((h, w), kernel, stride, padding, dilation))
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


def max_pool2d_backward(grad_y, indices, x_shape):
    """Route each output gradient to its argmax (added: overlapping windows may share one)."""
    n, c, h, w = x_shape
    grad_x = np.zeros((n * c, h * w), dtype=grad_y.dtype)
    np.add.at(grad_x, (np.arange(n * c)[:, None], indices.reshape(n * c, -1)), grad_y.reshape(n * c, -1))
    return grad_x.reshape(x_shape)


def relu_forward(x):
    """max(x, 0) keeping NaN, as torch (np.maximum propagates NaN); C-ordered whatever ``x``'s layout."""
    return np.ascontiguousarray(np.maximum(x, 0))


def relu_backward(grad_y, y):
    """torch passes the gradient wherever the output is not <= 0, which includes NaN."""
    return np.ascontiguousarray(np.where(y <= 0, 0, grad_y).astype(grad_y.dtype, copy=False))


def cross_entropy_forward(logits, target, weight, ignore_index, reduction, label_smoothing):
    """Cross-entropy of (rows, C) logits. Return (loss, saved): a 0-d loss for 'mean' / 'sum', (rows,) for 'none'.

    Both target kinds reduce to per-row coefficients ``a`` with ``loss_row = -sum_c a[c] * log_softmax[c]``
    over a normalizing ``denominator`` (torch's weighted mean), so the gradient is
    ``(softmax * sum_c a[c] - a) / denominator`` for one backward.
    """
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
        with np.errstate(divide="ignore", invalid="ignore"):  # every target ignored: 0 / 0 = NaN, as torch
            loss = row_loss.sum() / denominator
    saved = (np.exp(log_probs), coefficients, logits.dtype.type(denominator))
    return np.asarray(loss, dtype=logits.dtype), saved


def cross_entropy_backward(saved, grad_loss=None):
    """Gradient w.r.t. the logits; ``grad_loss`` is the upstream gradient (a (rows,) array for 'none', else 1)."""
    probs, coefficients, denominator = saved
    weight_sums = coefficients.sum(axis=1, keepdims=True)
    # A row without weight (ignored) has gradient 0 even when every row is ignored (0 / 0), as in torch.
    with np.errstate(divide="ignore", invalid="ignore"):
        grad = np.where(weight_sums == 0, 0, (probs * weight_sums - coefficients) / denominator)
    if grad_loss is not None:
        grad *= np.reshape(grad_loss, (-1, 1))
    return grad.astype(probs.dtype, copy=False)
