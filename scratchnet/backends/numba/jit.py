"""JIT helpers shared by the numba kernels: compile flags, serial/threaded twins, element loops.

Kernels compile with the ``contract`` and ``reassoc`` math flags only: fused
multiply-add and reordered sums, which let reductions vectorize. No flag
changes NaN/inf handling; the op tests hold the results to torch's tolerances.
Divisions follow numpy's error model (see ``kernel``).

Parallel loops run over images or fixed chunks of positions, and results never
depend on the thread count or timing. Each threaded kernel also has a serial
twin, which small batches use (see ``PARALLEL_MIN_BATCH``).
"""

import types

import numba
from numba import njit

FLAGS = {"contract", "reassoc"}


def kernel(parallel=False):
    # numpy's error model: a float division by zero gives inf or NaN, as in torch, instead of a check for
    # Python's ZeroDivisionError that keeps the loop around it from vectorizing.
    return njit(cache=True, fastmath=FLAGS, parallel=parallel, error_model="numpy")


class Twin:
    """One kernel compiled twice: threaded over its ``prange`` loops, and serial.

    The serial copy gets its own name, so the two never share a cache entry.
    """

    def __init__(self, func):
        serial = types.FunctionType(func.__code__, func.__globals__, func.__name__ + "_serial",
                                    func.__defaults__, func.__closure__)
        serial.__qualname__ = func.__qualname__ + "_serial"
        self.parallel = kernel(parallel=True)(func)
        self.serial = kernel()(serial)

    def run(self, threaded, *args):
        return (self.parallel if threaded else self.serial)(*args)


# Below this batch size every kernel runs serially: waking threads (and, on a busy
# machine, waiting for a core) costs more than splitting a few images' work gains.
PARALLEL_MIN_BATCH = 12


def threaded(batch_size):
    return batch_size >= PARALLEL_MIN_BATCH and numba.get_num_threads() > 1


@njit(cache=True, inline="always")
def copy(dst, src):
    """Element loops index views by the loop counter alone: an offset index (``start + k``)
    makes numba check it for negative wraparound on every element, which stops vectorization."""
    for k in range(dst.size):
        dst[k] = src[k]


@njit(cache=True, inline="always")
def add(dst, src):
    for k in range(dst.size):
        dst[k] += src[k]


@njit(cache=True, inline="always")
def fill(dst, value):
    for k in range(dst.size):
        dst[k] = value
