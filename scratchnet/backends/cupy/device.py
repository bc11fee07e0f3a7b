"""The seam under the cupy backend: CuPy itself, or, with ``SCRATCHNET_CUDA_EMULATOR=1``, the emulated
device (``emulator``), which runs the same kernels on the CPU behind the same API."""

import os
import sys

EMULATED = os.environ.get("SCRATCHNET_CUDA_EMULATOR") == "1"

if EMULATED:
    from scratchnet.backends.cupy import emulator as cp

    print("scratchnet: emulated CUDA device: for testing, not for speed", file=sys.stderr)
else:
    import cupy as cp  # noqa: F401 -- the backend's array module
