"""An emulated CUDA device: the cupy backend's own kernels (``kernels/*.cu``) compiled for the CPU and
run with their real grids and blocks, behind the part of CuPy's API the backend uses.

``SCRATCHNET_CUDA_EMULATOR=1`` makes the cupy backend import this module in place of CuPy; nothing
above that seam changes. It proves kernel logic, launch geometry, argument types, shared memory and
barriers, capture and replay order and the backend's glue; not the real memory model, races across
blocks, NVRTC, cuBLAS, NCCL or speed. It is for testing, not for speed.
"""

import types

from scratchnet.backends.cupy.emulator import runtime as cuda
from scratchnet.backends.cupy.emulator.arrays import (
    array, as_strided, asarray, ascontiguousarray, asnumpy, copyto, empty, empty_like, full, full_like,
    matmul, ndarray, numpy_function, ones, ones_like, zeros, zeros_like,
)
from scratchnet.backends.cupy.emulator.modules import RawModule

lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=as_strided))

__all__ = ["RawModule", "array", "lib", "asarray", "ascontiguousarray", "asnumpy", "copyto", "cuda", "empty",
           "empty_like", "full", "full_like", "matmul", "ndarray", "ones", "ones_like",
           "zeros", "zeros_like"]


def __getattr__(name):
    return numpy_function(name)
