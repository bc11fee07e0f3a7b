"""Modules of our kernels on the emulated device, shaped as CuPy's ``RawModule``: the CUDA source compiled for
the CPU (``compiler``), each kernel launched on the current stream with its arguments marshalled as CuPy
marshals them."""

import ctypes

import numpy as np

from scratchnet.backends.cupy.emulator import compiler
from scratchnet.backends.cupy.emulator.arrays import ndarray
from scratchnet.backends.cupy.emulator.runtime import CUDARuntimeError, submit

# Bytes per argument slot: room for any scalar, zero past its value, as CuPy's scalar holder.
_SLOT_BYTES = 32


class RawModule:
    """Our CUDA source compiled for the CPU; ``get_function`` takes one of its ``name_expressions``."""

    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None or not name_expressions:
            raise ValueError("the emulated device builds modules from code with name_expressions")
        self._expressions = tuple(name_expressions)
        self._library = ctypes.CDLL(str(compiler.build(code, self._expressions)))
        self._with_barriers = compiler.kernels_with_barriers(code)
        self._functions = {}

    def get_function(self, name):
        if name not in self._functions:
            if name not in self._expressions:
                raise CUDARuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}")
            index = self._expressions.index(name)
            entry = getattr(self._library, f"scratchnet_launch_{index}")
            entry.argtypes = (ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                              ctypes.c_char_p, ctypes.c_size_t)
            entry.restype = ctypes.c_int
            arity = getattr(self._library, f"scratchnet_arity_{index}")()
            self._functions[name] = Function(name, entry, arity, name.split("<")[0] in self._with_barriers)
        return self._functions[name]


class Function:
    """A kernel: ``kernel(grid, block, args)`` launches it on the current stream."""

    def __init__(self, name, entry, arity, team):
        self.name, self._entry, self._arity, self._team = name, entry, arity, team

    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        if len(args) != self._arity:
            raise TypeError(f"kernel {self.name} takes {self._arity} arguments, got {len(args)}")
        geometry = (ctypes.c_uint * 6)(*_dims(grid, "grid"), *_dims(block, "block"))
        slots, keep_alive = _marshal(args)
        pointers = (ctypes.c_void_p * max(len(args), 1))(
            *(slots.ctypes.data + index * _SLOT_BYTES for index in range(len(args))))
        name, entry, team = self.name, self._entry, int(self._team)

        def launch():
            error = ctypes.create_string_buffer(256)
            if entry(geometry, pointers, team, error, len(error)) != 0:
                raise CUDARuntimeError(f"cudaErrorLaunchFailure: {name}: {error.value.decode()}")

        launch.memory = slots, keep_alive  # a recorded launch keeps its arguments and arrays for every replay
        submit(launch, stream)


def _dims(value, what):
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


def _marshal(args):
    """Each argument's bytes in its own zeroed slot, typed as CuPy types them: an array as its device
    pointer, None as a null pointer, a NumPy scalar by its own dtype, a Python bool as bool, int as
    int64 (uint64 from 2**63), float as float64, complex as complex128. Anything else is refused."""
    slots = np.zeros((len(args), _SLOT_BYTES), dtype=np.uint8)
    keep_alive = []
    for index, arg in enumerate(args):
        if isinstance(arg, ndarray):
            value = np.uint64(arg.data.ptr)
            keep_alive.append(arg)
        elif arg is None:
            value = np.uint64(0)
        elif isinstance(arg, np.generic) and arg.dtype.kind in "biufc":
            value = arg
        elif type(arg) is bool:
            value = np.bool_(arg)
        elif type(arg) is int:
            value = np.uint64(arg) if arg >= 1 << 63 else np.int64(arg)
        elif type(arg) is float:
            value = np.float64(arg)
        elif type(arg) is complex:
            value = np.complex128(arg)
        else:
            raise TypeError(f"Unsupported type {type(arg)}")
        raw = np.frombuffer(value.tobytes(), dtype=np.uint8)
        slots[index, :raw.size] = raw
    return slots, keep_alive
