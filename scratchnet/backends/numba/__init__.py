"""The numba backend (fast CPU JIT): ``backend.NumbaBackend`` and its kernels, one module per op family."""

from scratchnet.backends.numba.backend import NumbaBackend


def create():
    return NumbaBackend()
