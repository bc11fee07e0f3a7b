"""Shifted planes: the layout in which stride-1 convolutions run on groups of images at once.

Each input channel is stored ``KW`` times, copy ``j`` shifted left by ``j`` columns
and cropped to the output width ``OW``; inside a copy, row ``r`` of each image in a
small group of ``G`` images follows row ``r`` of the image before it. Flat position
``p = (oh * G + b) * OW + ow`` then names output pixel ``(b, oh, ow)``, and kernel
tap ``(i, j)`` reads copy ``j`` at ``p + i * G * OW``: every tap is one contiguous
vector operation over a whole group's outputs, with no wasted columns (planes
flattened at full width compute 1.8 positions per output of the tutorial's second
conv, 14-wide rows for 10 outputs). The forward keeps the copies for the weight
gradient.
"""

from numba import prange

from scratchnet.geometry import conv_output_size
from scratchnet.backends.numba.jit import Twin, add, copy, fill, kernel

# ---- shifted planes: stride-1 convolution on groups of images at once ----------------------
# The batch splits into groups of ``G`` images (see ``group_size``). In group ``g``,
# ``planes[g, j, ci]`` holds channel ``ci`` of the padded input shifted left by ``j``
# columns and cropped to the output width, row ``r`` of the group's image ``b`` at
# ``(r * G + b) * OW``. Outputs ``rows[o, g]`` (OH * G * OW) use the same order, so tap
# ``(i, j)`` of output position ``p`` reads ``planes[g, j, ci, p + i * span]`` with
# ``span = G * OW``. Work splits into fixed chunks of positions, independent of the
# thread count.

CHUNK = 512
# At most this many images per group: a tap row's shift (``span``) grows with the group,
# and past a few images the taps of one chunk no longer share the cache.
MAX_GROUP = 8


def group_size(batch_size):
    """The largest divisor of the batch up to ``MAX_GROUP``: equal groups, no padding images."""
    return max(size for size in range(1, MAX_GROUP + 1) if batch_size % size == 0)


@Twin
def to_shifted_planes(x, padding, planes):
    """NCHW ``x`` -> ``planes[g, j, ci, (r * G + b) * OW + col] = x_padded[g * G + b, ci, r, col + j]``."""
    n, c, h, w = x.shape
    groups, kw = planes.shape[0], planes.shape[1]
    size = n // groups
    out_w = w + 2 * padding - kw + 1
    for item in prange(groups * kw * c):
        g, j, ci = item // (kw * c), (item // c) % kw, item % c
        plane = planes[g, j, ci]
        if padding:
            fill(plane, 0)
        lo = max(0, padding - j)  # output columns [lo, hi) read inside x; the rest read padding
        hi = max(lo, min(out_w, w + padding - j))
        for r in range(h):
            for b in range(size):
                start = ((r + padding) * size + b) * out_w
                copy(plane[start + lo:start + hi], x[g * size + b, ci, r, lo + j - padding:hi + j - padding])


@Twin
def from_shifted_planes(grad_planes, padding, grad_x):
    """grad_x[g * G + b, ci, r, col] = sum over j of
    grad_planes[g, j, ci, ((r + padding) * G + b) * OW + col + padding - j] (where that column exists)."""
    n, c, h, w = grad_x.shape
    groups, kw = grad_planes.shape[0], grad_planes.shape[1]
    size = n // groups
    out_w = w + 2 * padding - kw + 1
    for item in prange(n * c):
        image, ci = item // c, item % c
        g, b = image // size, image % size
        for r in range(h):
            base = ((r + padding) * size + b) * out_w + padding
            dst = grad_x[image, ci, r]
            fill(dst, 0)
            for j in range(kw):  # fixed order: the same sums whatever the threads
                lo, hi = max(0, j - padding), max(0, min(w, out_w + j - padding))  # columns inside copy j
                add(dst[lo:hi], grad_planes[g, j, ci, base + lo - j:base + hi - j])


@Twin
def from_rows(rows, y):
    """NCHW ``y`` from ``rows[o, g, (oh * G + b) * OW + ow]``."""
    n, out_c, out_h, out_w = y.shape
    size = n // rows.shape[1]
    for item in prange(n * out_c):
        image, o = item // out_c, item % out_c
        g, b = image // size, image % size
        for oh in range(out_h):
            start = (oh * size + b) * out_w
            copy(y[image, o, oh], rows[o, g, start:start + out_w])


@kernel()
def grad_rows_from_conv(grad_y, grad_rows):
    n, out_c, out_h, out_w = grad_y.shape
    size = n // grad_rows.shape[1]
    for image in range(n):
        g, b = image // size, image % size
        for o in range(out_c):
            for oh in range(out_h):
                start = (oh * size + b) * out_w
                copy(grad_rows[o, g, start:start + out_w], grad_y[image, o, oh])


class ShiftedGeometry:
    """Sizes of the shifted-plane layout for a stride-1 convolution."""

    def __init__(self, x_shape, weight_shape, padding):
        n, c, h, w = x_shape
        _, _, kh, kw = weight_shape
        self.x_shape, self.padding = x_shape, padding
        self.out_hw = (conv_output_size(h, kh, 1, padding), conv_output_size(w, kw, 1, padding))
        size = group_size(n)
        self.groups = n // size
        self.span = size * self.out_hw[1]  # one output row of every image in a group: the shift of one tap row
        self.total = self.out_hw[0] * self.span  # a group's output pixels
        self.planes_shape = (self.groups, kw, c, (h + 2 * padding) * self.span)
        self.rows_shape = (weight_shape[0], self.groups, self.total)
        # The weight gradient's per-chunk parts, summed afterwards in chunk order.
        self.partial_shape = (self.groups * -(-self.total // CHUNK),) + tuple(weight_shape)
