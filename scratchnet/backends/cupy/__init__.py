"""The cupy backend (GPU): ``backend.CupyBackend``, our CUDA kernels (``cuda_sources``) and the
CUDA-graph capture of a whole training step (``graph``).

Only ``create`` imports CuPy, so ``cuda_sources`` stays importable (and compile-checkable)
on machines without it.
"""


def create():
    from scratchnet.backends.cupy.backend import create as create_backend

    return create_backend()
