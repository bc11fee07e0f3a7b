"""The cupy backend's CUDA C++: the ``.cu`` files in ``kernels/``, one per op family, and the header
they share (``common.cuh``).

Every kernel is a template on its float type (``real``). ``module_source()`` is the one text that
CuPy compiles (NVRTC) and the emulated device compiles (the system C++ compiler): the header once,
then each family, with ``#line`` marks so compiler messages name the ``.cu`` file and line. Kernels
are instantiated by name (``name_expression``); their names are read from the sources.
"""

import re
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).with_name("kernels")
HEADER = "common.cuh"

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_INCLUDE_HEADER = re.compile(rf'^#include "{re.escape(HEADER)}"[ \t]*$', re.MULTILINE)
_KERNEL = re.compile(r"template <typename real>\s*__global__\s+void\s+(\w+)\s*\(")


def family_files():
    """The ``.cu`` files, in a fixed order."""
    return tuple(sorted(KERNEL_DIR.glob("*.cu")))


def _header_text():
    return (KERNEL_DIR / HEADER).read_text()


def module_source():
    """The header, then every family with its ``#include`` of the header replaced by a ``#line`` mark."""
    parts = [f'#line 1 "{HEADER}"\n', _header_text()]
    for path in family_files():
        text = _INCLUDE_HEADER.sub("", path.read_text(), count=1)
        parts.append(f'\n#line 1 "{path.name}"\n{text}')
    return "".join(parts)


def kernel_names():
    """Every kernel of every family, in source order."""
    return tuple(name for path in family_files() for name in _KERNEL.findall(path.read_text()))


def reduce_threads():
    """Threads per block of the block-reduction kernels, as the header fixes it."""
    return int(re.search(r"constexpr int REDUCE_THREADS = (\d+);", _header_text()).group(1))


def supported_dtypes():
    return tuple(_C_TYPES)


def name_expression(kernel, dtype):
    """The kernel's instantiation for ``dtype``, as CuPy's ``RawModule`` names it (``"relu_forward<float>"``)."""
    dtype = np.dtype(dtype)
    if dtype not in _C_TYPES:
        raise TypeError(f"the cupy backend computes in float32 or float64, got {dtype}")
    return f"{kernel}<{_C_TYPES[dtype]}>"


def name_expressions():
    """Every kernel for every float type."""
    return tuple(name_expression(kernel, dtype) for dtype in _C_TYPES for kernel in kernel_names())
