"""Geometry and label checks: output sizes, the plain geometry each fused kernel family takes, class-index checks.

The leaf of the engine: ``functional``, ``nn`` and every backend import it, and it
imports nothing of the project, so a layer and the kernels under it agree on one
definition of each size and of each "plain" case. Arguments come parsed, as
``functional`` hands them to the backends: ``stride``, ``dilation`` and ``kernel`` (h, w)
pairs, a convolution's ``padding`` ((top, bottom), (left, right)), a pool's (h, w).
"""


def conv_output_size(size, kernel, stride=1, padding=0):
    """Output length of a convolution (or floor-mode pooling) along one axis, as torch computes it."""
    return (size + 2 * padding - kernel) // stride + 1


def conv2d_output_hw(hw, kernel, stride, padding, dilation):
    """Output (H, W) of a convolution: the padded size against the dilated kernel."""
    return tuple((size + before + after - d * (k - 1) - 1) // s + 1
                 for size, k, s, (before, after), d in zip(hw, kernel, stride, padding, dilation))


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Output length of a max-pool along one axis. In ceil mode torch drops a last window
    that would start inside the right padding, so every window starts on the input or the left padding."""
    reach = size + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return reach // stride + 1
    out = -(-reach // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def max_pool2d_output_hw(hw, kernel, stride, padding, dilation, ceil_mode):
    """Output (H, W) of a max-pool; every argument but ``ceil_mode`` a pair."""
    return tuple(pool_output_size(size, k, s, p, d, ceil_mode)
                 for size, k, s, p, d in zip(hw, kernel, stride, padding, dilation))


# ---- plain geometry: one predicate per fused kernel family ---------------------------------


def plain_conv(stride, padding, dilation, groups):
    """(stride, padding) as ints for the square-geometry convolution kernels (the fused
    conv -> ReLU -> max-pool ops, the GPU's direct and im2col kernels): a square stride,
    the same padding on every side, no dilation, one group (the tutorial's). Else None."""
    (top, bottom), (left, right) = padding
    if stride[0] == stride[1] and top == bottom == left == right and dilation == (1, 1) and groups == 1:
        return stride[0], top
    return None


def shifted_planes_padding(stride, padding, dilation, groups):
    """The padding (an int) for the shifted-plane convolution kernels (the CPU's fast ones), which
    read every input position: the plain geometry at stride 1. Else None."""
    plain = plain_conv(stride, padding, dilation, groups)
    return plain[1] if plain is not None and plain[0] == 1 else None


def plain_pool(kernel, stride, padding, dilation, ceil_mode):
    """(kernel, stride) as ints for the plain max-pool kernels, whose windows all lie on the input:
    a square window and stride, no padding or dilation, floor mode. Else None."""
    if (kernel[0] == kernel[1] and stride[0] == stride[1] and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1)
            and not ceil_mode):
        return kernel[0], stride[0]
    return None


# ---- labels ---------------------------------------------------------------------------------


def check_class_indices(labels, classes, what, ignore_index=None):
    """Raise a ValueError naming ``what`` unless every label lies in [0, classes) or equals ``ignore_index``."""
    if labels.size and 0 <= int(labels.min()) and int(labels.max()) < classes:
        return  # every label a class: no need to pick out the ignored ones
    counted = labels if ignore_index is None else labels[labels != ignore_index]
    if counted.size == 0:
        return
    low, high = int(counted.min()), int(counted.max())
    if low < 0 or high >= classes:
        ignored = "" if ignore_index is None else f" (or equal ignore_index={ignore_index})"
        raise ValueError(f"{what}: labels must lie in [0, {classes - 1}] for {classes} classes{ignored}, "
                         f"got {low}..{high}")
