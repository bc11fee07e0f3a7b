"""Convolutions as matrix products: the route of wide layers.

A group's output rows (``layout``: ``rows[o, g, p]``) are one matrix product,
``rows[:, g] = W @ cols``, where row ``(i, j, ci)`` of ``cols`` is the shifted plane
``planes[g, j, ci]`` read from ``i * span`` on (the plane's tap row ``i``): each row
of ``cols`` is one contiguous copy, and the bias rides along as a last row of ones
against a last column of ``W``. The backward is two more products per group: the
weight gradient ``grad_rows[:, g] @ cols.T`` (its last column the bias gradient) and
the columns' gradient ``W.T @ grad_rows[:, g]``, which ``planes_from_cols`` gathers
back into the planes' gradient.

The products are numpy's ``matmul``, that is the BLAS numpy is built with (OpenBLAS
in numpy's wheels): where the sum is long and the output tall (``wins``), a tuned
GEMM beats the shifted-plane kernels, which stream their output rows through memory
every few taps. The groups' weight gradients are summed in group order, and a
product repeats bit for bit run to run; but unlike our own kernels, OpenBLAS's
threaded driver blocks a long sum differently from its serial one, so a wide layer's
results may differ in the last bits between one and several BLAS threads
(``OPENBLAS_NUM_THREADS``; ``tests/test_wide_conv.py``).
"""

import numpy as np
from scratchnet.backends.numba.jit import add, fill, kernel

# Below these sizes the shifted-plane kernels win: a product's sum must be long (input channels x taps) and its
# output tall enough to keep a GEMM's register tiles full (``benchmarks/conv_routes.py`` measures both routes on
# the tutorial's layers at widths 1 to 16 and on the next chapter's; results in ``benchmarks/results``).
MIN_SUM_LENGTH = 256
MIN_OUTPUT_CHANNELS = 16


def wins(x_shape, weight_shape):
    """Whether a stride-1 convolution of ``x_shape`` by ``weight_shape`` runs faster as matrix products."""
    out_c, c, kh, kw = weight_shape
    return c * kh * kw >= MIN_SUM_LENGTH and out_c >= MIN_OUTPUT_CHANNELS


@kernel()
def planes_from_cols(grad_cols, kh, span, grad_planes):
    """grad_planes[r, q] = sum over i of grad_cols[i * R + r, q - i * span] (where that column exists), for the
    R rows ``(j, ci)`` of one group's planes; summed in tap order, so the same on any thread count."""
    rows, total = grad_planes.shape[0], grad_cols.shape[1]
    for r in range(rows):
        dst = grad_planes[r]
        fill(dst, 0)
        for i in range(kh):
            add(dst[i * span:i * span + total], grad_cols[i * rows + r])


class Matrices:
    """The matrices of one convolution's products, allocated once: the packed weights, one group's columns
    (and their gradient) and the weight gradient's sum."""

    def __init__(self, geometry, weight_shape, dtype):
        out_c, c, kh, kw = weight_shape
        self.geometry, self.weight_shape = geometry, weight_shape
        size = c * kh * kw
        self.packed = np.empty((out_c, size + 1), dtype)  # W: columns (i, j, ci), then the bias
        self.cols = np.empty((size + 1, geometry.total), dtype)
        self.cols[size] = 1  # the bias's row: the copies never reach it
        self.grad_cols = self.grad_sum = self.grad_part = None

    def pack(self, weight, bias):
        out_c, c, kh, kw = self.weight_shape
        self.packed[:, :-1].reshape(out_c, kh, kw, c)[...] = weight.transpose(0, 2, 3, 1)
        self.packed[:, -1] = 0 if bias is None else bias

    def fill_cols(self, group_planes):
        """The columns of one group from its planes (kw, C, L): tap row ``i`` is every plane read from ``i * span``."""
        kw, c, _ = group_planes.shape
        planes = group_planes.reshape(kw * c, -1)
        span, total = self.geometry.span, self.geometry.total
        for i in range(self.weight_shape[2]):
            self.cols[i * kw * c:(i + 1) * kw * c] = planes[:, i * span:i * span + total]

    def forward(self, planes, weight, bias, rows):
        """rows[:, g] = W @ cols of group g, the bias included."""
        self.pack(weight, bias)
        for g in range(planes.shape[0]):
            self.fill_cols(planes[g])
            np.matmul(self.packed, self.cols, out=rows[:, g])

    def backward(self, planes, weight, grad_rows, grad_weight, grad_bias, grad_planes=None):
        """Add the weight and bias gradients into ``grad_weight`` / ``grad_bias`` (None: none wanted); with
        ``grad_planes``, fill it with the planes' gradient."""
        out_c, c, kh, kw = self.weight_shape
        size = c * kh * kw
        if self.grad_sum is None:
            self.grad_sum, self.grad_part = np.empty_like(self.packed), np.empty_like(self.packed)
            self.grad_cols = np.empty((size, self.geometry.total), self.packed.dtype)
        if grad_planes is not None:
            self.pack(weight, None)
        for g in range(planes.shape[0]):
            self.fill_cols(planes[g])
            np.matmul(grad_rows[:, g], self.cols.T, out=self.grad_part if g else self.grad_sum)
            if g:
                self.grad_sum += self.grad_part  # group by group, in order
            if grad_planes is not None:
                np.matmul(self.packed[:, :size].T, grad_rows[:, g], out=self.grad_cols)
                planes_from_cols(self.grad_cols, kh, self.geometry.span, grad_planes[g].reshape(kw * c, -1))
        grad_weight += self.grad_sum[:, :size].reshape(out_c, kh, kw, c).transpose(0, 3, 1, 2)
        if grad_bias is not None:
            grad_bias += self.grad_sum[:, size]
