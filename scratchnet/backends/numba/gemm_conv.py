"""Convolutions as matrix products: the route of wide layers.

A group's output rows (``layout``: ``rows[o, g, p]``) are ``W @ cols``, where row
``(i, j, ci)`` of ``cols`` is the shifted plane ``planes[g, j, ci]`` read from
``i * span`` on (the plane's tap row ``i``). So the rows of ``cols`` of one tap row
``i`` are the group's planes themselves, one plane length apart, from ``i * span`` on:
where a tap row's sum (``KW * C``) is long (``VIEWS_FROM``), the product is ``KH``
products over those views of the planes, one per tap row, added up, and nothing is
copied. Where it is short (a first layer's 3 channels), one product over a ``cols``
that copies every tap row gives BLAS a sum long enough to run at speed; the bias then
rides along as a last row of ones against a last column of ``W``. The backward runs the
same products transposed: the weight gradient ``grad_rows[:, g] @ cols.T`` and the
planes' gradient from ``W.T @ grad_rows[:, g]`` (added into each tap row's view, or
gathered back from the copies by ``planes_from_cols``).

The products are numpy's BLAS GEMM (OpenBLAS in numpy's wheels; ``blas``), called
from our kernels: where the layer is wide (``wins``), a tuned GEMM beats the
shifted-plane kernels, which stream their output rows through memory every few taps.
The groups split into a fixed number of parts (``PARTS``), a ``prange`` over the parts
runs them on numba's threads, and each product runs on the thread that calls it. A
product on one thread repeats bit for bit, and the weight gradient sums each part's
groups in order, then the parts in order, so a result never depends on the thread
count.
"""

import numpy as np
from numba import prange

from scratchnet.backends.numba import blas
from scratchnet.backends.numba.blas import NO_TRANS, TRANS, gemm
from scratchnet.backends.numba.jit import add, copy, fill, kernel

# Where each route wins (``benchmarks/conv_routes.py`` times them on the tutorial's layers at widths 1 to 16 and
# the next chapter's, batches 4 to 128; ``benchmarks/results/conv_routes.json``): the shifted-plane kernels run
# taps in fives, so a kernel of 25 taps keeps them busy until the product's sum (input channels x taps) is long
# and its output tall; with taps left over (3x3), the product wins from far smaller layers.
MIN_SUM_LENGTH = 400
MIN_OUTPUT_CHANNELS = 16
MIN_MACS_PER_OUTPUT = 1024  # with taps left over


def wins(x_shape, weight_shape):
    """Whether a stride-1 convolution of ``x_shape`` by ``weight_shape`` runs faster as matrix products."""
    out_c, c, kh, kw = weight_shape
    sum_length = c * kh * kw
    if kh * kw % 5:
        return sum_length * out_c >= MIN_MACS_PER_OUTPUT
    return sum_length >= MIN_SUM_LENGTH and out_c >= MIN_OUTPUT_CHANNELS


# The groups' weight gradients are summed in this many parts, each in group order, then the parts in order:
# a fixed split, so the threads that take the parts never change a result.
PARTS = 4

# A tap row's sum (input channels x kernel width) from which its views of the planes feed the products directly
# (``benchmarks/conv_routes.py``: over copies faster at 15, a first layer's 3 channels x 5; over views at 30):
# shorter sums run BLAS below speed, and one product over copies of every tap row wins.
VIEWS_FROM = 24


def available(dtype):
    """Whether this route runs for ``dtype``: numpy's BLAS has a GEMM we can call (``blas.find_gemm``)."""
    return blas.find_gemm(dtype) is not None


@kernel()
def fill_cols(group_planes, kh, span, cols):
    """cols[(i * KW + j) * C + ci] = group_planes[j, ci, i * span:i * span + total] for the taps (i, j) of every
    input channel ci; the rows after those (the bias's ones) are left alone."""
    kw, c, total = group_planes.shape[0], group_planes.shape[1], cols.shape[1]
    for i in range(kh):
        for j in range(kw):
            for ci in range(c):
                copy(cols[(i * kw + j) * c + ci], group_planes[j, ci, i * span:i * span + total])


@kernel()
def planes_from_cols(grad_cols, kh, span, grad_planes):
    """grad_planes[r, q] = sum over i of grad_cols[i * R + r, q - i * span] (where that column exists), for the
    R rows ``(j, ci)`` of one group's planes; summed in tap order."""
    rows, total = grad_planes.shape[0], grad_cols.shape[1]
    for r in range(rows):
        dst = grad_planes[r]
        fill(dst, 0)
        for i in range(kh):
            add(dst[i * span:i * span + total], grad_cols[i * rows + r])


@kernel(parallel=True)
def products_forward(routine, planes, packed, kh, span, bounds, cols, rows):
    """rows[:, g] = packed @ cols of group g, from views of its planes or, where ``cols`` has parts, from copies;
    the parts of the groups (``bounds``) on numba's threads."""
    out_c, width = packed.shape
    groups, total = rows.shape[1], rows.shape[2]
    row_length = width - 1
    tap_row_length, plane_length = row_length // kh, planes.shape[3]
    for part in prange(bounds.size - 1):
        for g in range(bounds[part], bounds[part + 1]):
            out = rows[:, g]
            if cols.shape[0]:
                fill_cols(planes[g], kh, span, cols[part])
                gemm(routine, NO_TRANS, NO_TRANS, out_c, total, width, packed, width, cols[part], total, 0.0,
                     out, groups * total)
                continue
            for o in range(out_c):
                fill(out[o], packed[o, row_length])  # the bias, then each tap row's product added
            group_planes = planes[g].reshape(-1)
            for i in range(kh):
                gemm(routine, NO_TRANS, NO_TRANS, out_c, total, tap_row_length, packed[:, i * tap_row_length:],
                     width, group_planes[i * span:], plane_length, 1.0, out, groups * total)


@kernel(parallel=True)
def products_backward(routine, planes, packed, grad_rows, kh, span, bounds, cols, grad_cols, sums, grad_planes):
    """sums[part] = sum over the part's groups g, in order, of grad_rows[:, g] @ cols.T (the last column the bias's
    gradient); and, where ``grad_planes`` has groups, each group's planes' gradient from
    packed[:, :-1].T @ grad_rows[:, g]. From views of the planes or, where ``cols`` has parts, from copies."""
    out_c, width = packed.shape
    groups, total = grad_rows.shape[1], grad_rows.shape[2]
    row_length = width - 1
    tap_row_length, plane_length = row_length // kh, planes.shape[3]
    for part in prange(bounds.size - 1):
        part_sums = sums[part]
        for g in range(bounds[part], bounds[part + 1]):
            grad_out = grad_rows[:, g]
            beta = 0.0 if g == bounds[part] else 1.0  # the part's first group, then added
            if cols.shape[0]:
                fill_cols(planes[g], kh, span, cols[part])
                gemm(routine, NO_TRANS, TRANS, out_c, width, total, grad_out, groups * total, cols[part], total,
                     beta, part_sums, width)
                if grad_planes.shape[0]:
                    gemm(routine, TRANS, NO_TRANS, row_length, total, out_c, packed, width, grad_out, groups * total,
                         0.0, grad_cols[part], total)
                    planes_from_cols(grad_cols[part], kh, span, grad_planes[g].reshape(row_length // kh, -1))
                continue
            group_planes = planes[g].reshape(-1)
            for i in range(kh):
                gemm(routine, NO_TRANS, TRANS, out_c, tap_row_length, total, grad_out, groups * total,
                     group_planes[i * span:], plane_length, beta, part_sums[:, i * tap_row_length:], width)
            for o in range(out_c):
                total_o = part_sums.dtype.type(0)
                for p in range(total):
                    total_o += grad_out[o, p]
                part_sums[o, row_length] = total_o + (part_sums[o, row_length] if beta else 0)
            if grad_planes.shape[0]:
                group_grad = grad_planes[g].reshape(-1)
                fill(group_grad, 0)
                for i in range(kh):  # tap row by tap row, into overlapping views: the same order on any thread
                    gemm(routine, TRANS, NO_TRANS, tap_row_length, total, out_c, packed[:, i * tap_row_length:],
                         width, grad_out, groups * total, 1.0, group_grad[i * span:], plane_length)


class Matrices:
    """The matrices of one convolution's products, allocated once: the packed weights, and per part of the
    groups the weight gradient's partial sum and, where the products read copies (``VIEWS_FROM``), the
    columns and their gradient."""

    def __init__(self, geometry, weight_shape, dtype):
        out_c, c, kh, kw = weight_shape
        self.geometry, self.weight_shape, self.dtype = geometry, weight_shape, dtype
        self.routine = blas.find_gemm(dtype).routine
        self.size = c * kh * kw
        self.packed = np.empty((out_c, self.size + 1), dtype)  # W: columns (i, j, ci), then the bias
        groups = geometry.groups
        parts = min(PARTS, groups)
        self.bounds = np.array([p * groups // parts for p in range(parts + 1)], np.int64)
        self.parts = parts
        copies = parts if kw * c < VIEWS_FROM else 0
        self.cols = np.empty((copies, self.size + 1, geometry.total), dtype)
        self.cols[:, self.size] = 1  # the bias's row: the copies never reach it
        self.grad_cols = self.grad_sums = None
        self.no_grad_planes = np.empty((0,) + geometry.planes_shape[1:], dtype)

    def pack(self, weight, bias):
        out_c, c, kh, kw = self.weight_shape
        self.packed[:, :-1].reshape(out_c, kh, kw, c)[...] = weight.transpose(0, 2, 3, 1)
        self.packed[:, -1] = 0 if bias is None else bias

    def forward(self, planes, weight, bias, rows):
        """rows[:, g] = W @ cols of group g, plus the bias."""
        self.pack(weight, bias)
        with blas.one_blas_thread():
            products_forward(self.routine, planes, self.packed, self.weight_shape[2], self.geometry.span,
                             self.bounds, self.cols, rows)

    def backward(self, planes, weight, grad_rows, grad_weight, grad_bias, grad_planes=None):
        """Add the weight and bias gradients into ``grad_weight`` / ``grad_bias`` (None: none wanted); with
        ``grad_planes``, fill it with the planes' gradient."""
        out_c, c, kh, kw = self.weight_shape
        if self.grad_sums is None:
            self.grad_sums = np.empty((self.parts,) + self.packed.shape, self.dtype)
            self.grad_cols = np.empty((len(self.cols), self.size, self.geometry.total), self.dtype)
        if grad_planes is not None:
            self.pack(weight, None)
        sums = self.grad_sums
        with blas.one_blas_thread():
            products_backward(self.routine, planes, self.packed, grad_rows, kh, self.geometry.span, self.bounds,
                              self.cols, self.grad_cols, sums,
                              self.no_grad_planes if grad_planes is None else grad_planes)
        for part in range(1, len(sums)):  # the parts' sums in order: the same on any thread count
            sums[0] += sums[part]
        grad_weight += sums[0, :, :self.size].reshape(out_c, kh, kw, c).transpose(0, 3, 1, 2)
        if grad_bias is not None:
            grad_bias += sums[0, :, self.size]
