"""The cupy backend (GPU): ``backend.CupyBackend``, our CUDA kernels (``kernels/*.cu``, read by
``sources``), the recording of kernel launches as a CUDA graph (``graph``), and the emulated device
that runs the same kernels on the CPU (``emulator``, chosen in ``device``).

Only ``create`` imports CuPy (or the emulator), so ``sources`` stays importable (and compile-checkable)
on machines without it.
"""


def create():
    from scratchnet.backends.cupy.backend import create as create_backend

    return create_backend()
