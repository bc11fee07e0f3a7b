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
every few taps. Each product runs on one BLAS thread (threadpoolctl limits BLAS
while ours run), and the groups are dealt to as many Python threads as numba may
use: BLAS's own thread pool, spinning between calls, took the cores from numba's
kernels around it (2-3x slower steps at batch 32). A product on one thread repeats
bit for bit, and the weight gradient sums the groups in a fixed split (``PARTS``),
so a result never depends on the thread count.
"""

import concurrent.futures

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from scratchnet.backends.numba.jit import add, fill, kernel

# Where each route wins (``benchmarks/conv_routes.py`` times both on the tutorial's layers at widths 1 to 16 and
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


@kernel(nogil=True)
def planes_from_cols(grad_cols, kh, span, grad_planes):
    """grad_planes[r, q] = sum over i of grad_cols[i * R + r, q - i * span] (where that column exists), for the
    R rows ``(j, ci)`` of one group's planes; summed in tap order, so the same on any thread count."""
    rows, total = grad_planes.shape[0], grad_cols.shape[1]
    for r in range(rows):
        dst = grad_planes[r]
        fill(dst, 0)
        for i in range(kh):
            add(dst[i * span:i * span + total], grad_cols[i * rows + r])


class _Lane:
    """One thread's share of the products: a group's columns and their gradient, made on first need."""

    def __init__(self, geometry, size, dtype):
        self.geometry, self.size = geometry, size
        self.cols = np.empty((size + 1, geometry.total), dtype)
        self.cols[size] = 1  # the bias's row: the copies never reach it
        self.grad_cols = self.grad_part = None

    def fill_cols(self, group_planes, kh):
        """The columns of one group from its planes (kw, C, L): tap row ``i`` is every plane read from ``i * span``."""
        kw, c, _ = group_planes.shape
        planes = group_planes.reshape(kw * c, -1)
        span, total = self.geometry.span, self.geometry.total
        for i in range(kh):
            self.cols[i * kw * c:(i + 1) * kw * c] = planes[:, i * span:i * span + total]

    def backward_buffers(self, packed):
        if self.grad_part is None:
            self.grad_part = np.empty_like(packed)
            self.grad_cols = np.empty((self.size, self.geometry.total), packed.dtype)
        return self.grad_part, self.grad_cols


class Matrices:
    """The matrices of one convolution's products, allocated once: the packed weights, each thread's columns,
    and the weight gradient's partial sums (one per part of the groups)."""

    def __init__(self, geometry, weight_shape, dtype):
        out_c, c, kh, kw = weight_shape
        self.geometry, self.weight_shape, self.dtype = geometry, weight_shape, dtype
        self.size = c * kh * kw
        self.packed = np.empty((out_c, self.size + 1), dtype)  # W: columns (i, j, ci), then the bias
        groups = geometry.groups
        parts = min(PARTS, groups)
        self.parts = [range(p * groups // parts, (p + 1) * groups // parts) for p in range(parts)]
        self.lanes = []
        self.grad_sums = None

    def pack(self, weight, bias):
        out_c, c, kh, kw = self.weight_shape
        self.packed[:, :-1].reshape(out_c, kh, kw, c)[...] = weight.transpose(0, 2, 3, 1)
        self.packed[:, -1] = 0 if bias is None else bias

    def forward(self, planes, weight, bias, rows):
        """rows[:, g] = W @ cols of group g, the bias included."""
        self.pack(weight, bias)
        kh = self.weight_shape[2]

        def part_forward(lane, part):
            for g in self.parts[part]:
                lane.fill_cols(planes[g], kh)
                np.matmul(self.packed, lane.cols, out=rows[:, g])

        self._run(part_forward)

    def backward(self, planes, weight, grad_rows, grad_weight, grad_bias, grad_planes=None):
        """Add the weight and bias gradients into ``grad_weight`` / ``grad_bias`` (None: none wanted); with
        ``grad_planes``, fill it with the planes' gradient."""
        out_c, c, kh, kw = self.weight_shape
        size, span = self.size, self.geometry.span
        if self.grad_sums is None:
            self.grad_sums = np.empty((len(self.parts),) + self.packed.shape, self.dtype)
        if grad_planes is not None:
            self.pack(weight, None)
        sums = self.grad_sums

        def part_backward(lane, part):
            grad_part, grad_cols = lane.backward_buffers(self.packed)
            for index, g in enumerate(self.parts[part]):
                lane.fill_cols(planes[g], kh)
                np.matmul(grad_rows[:, g], lane.cols.T, out=grad_part if index else sums[part])
                if index:
                    sums[part] += grad_part  # group by group, in order
                if grad_planes is not None:
                    np.matmul(self.packed[:, :size].T, grad_rows[:, g], out=grad_cols)
                    planes_from_cols(grad_cols, kh, span, grad_planes[g].reshape(kw * c, -1))

        self._run(part_backward)
        for part in range(1, len(self.parts)):  # the parts' sums in order: the same on any thread count
            sums[0] += sums[part]
        grad_weight += sums[0, :, :size].reshape(out_c, kh, kw, c).transpose(0, 3, 1, 2)
        if grad_bias is not None:
            grad_bias += sums[0, :, size]

    def _run(self, part_job):
        """``part_job(lane, part)`` for every part, the parts dealt to as many threads as numba may use (each
        product on one BLAS thread: BLAS's own pool would fight numba's for the cores)."""
        lanes = min(numba.get_num_threads(), len(self.parts))
        while len(self.lanes) < lanes:
            self.lanes.append(_Lane(self.geometry, self.size, self.dtype))

        def lane_job(lane):
            for part in range(lane, len(self.parts), lanes):
                part_job(self.lanes[lane], part)

        with _blas_threads(1):
            if lanes == 1:
                lane_job(0)
                return
            others = [_pool(lanes - 1).submit(lane_job, lane) for lane in range(1, lanes)]
            lane_job(0)
            for other in others:
                other.result()


def _blas_threads(count):
    """A context in which numpy's BLAS runs on ``count`` threads (threadpoolctl's; made once)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=count, user_api="blas")


def _pool(workers):
    """A thread pool of at least ``workers`` threads, kept for the next call."""
    global _POOL, _POOL_WORKERS
    if _POOL_WORKERS < workers:
        _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scratchnet-gemm")
        _POOL_WORKERS = workers
    return _POOL


_BLAS = _POOL = None
_POOL_WORKERS = 0
