"""The emulated device's runtime, shaped as the ``cupy.cuda`` the backend uses: devices, streams and
CUDA-graph capture, memory pools and allocators, and modules of our kernels (``RawModule``).

Device work is submitted to the current stream. It runs at once, unless that stream is capturing: then
it is only recorded, as on a GPU, and runs when the graph is launched, in the same order on the same
buffers. So host work done during capture is not replayed, a capture that reads device memory on the
host fails as CUDA's does, and a kernel's scalar arguments are the ones marshalled at capture.
"""

import contextlib
import ctypes
import threading
import types
import weakref

import numpy as np

from scratchnet.backends.cupy.emulator import compiler


class CUDARuntimeError(RuntimeError):
    """A CUDA error, with CUDA's name for it first."""


# ---- devices ----------------------------------------------------------------------------

def _device_count():
    return 1


def _device_properties(device=0):
    _check_device(device)
    return {"name": b"scratchnet emulated CUDA device", "totalGlobalMem": 1 << 34, "multiProcessorCount": 1,
            "major": 9, "minor": 0, "maxThreadsPerBlock": 1024, "warpSize": 32}


def _check_device(device):
    if device != 0:
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")


runtime = types.SimpleNamespace(
    CUDARuntimeError=CUDARuntimeError,
    getDeviceCount=_device_count,
    getDeviceProperties=_device_properties,
    runtimeGetVersion=lambda: 13000,
    driverGetVersion=lambda: 13000,
)


class Device:
    def __init__(self, device=0):
        _check_device(device)
        self.id = device
        self.compute_capability = "90"

    def use(self):
        pass

    def synchronize(self):
        require_host_sync("Device.synchronize")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- streams and graphs --------------------------------------------------------------------

class Stream:
    """A stream whose work runs at once, or is recorded between ``begin_capture`` and ``end_capture``."""

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.null = null
        self._recording = None
        self._invalidated = False

    def __enter__(self):
        _streams().append(self)
        return self

    def __exit__(self, *exc):
        _streams().pop()
        return False

    def use(self):
        _streams()[0:1] = [self]
        return self

    def is_capturing(self):
        return self._recording is not None

    def begin_capture(self, mode=None):
        if self.null:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: the legacy default stream cannot be captured")
        if self._recording is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is already capturing")
        self._recording, self._invalidated = [], False

    def end_capture(self):
        if self._recording is None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is not capturing")
        recorded, self._recording = self._recording, None
        if self._invalidated:
            raise CUDARuntimeError("cudaErrorStreamCaptureInvalidated: the capture was invalidated by an earlier "
                                   "error (a synchronization or host transfer while capturing)")
        return Graph(recorded)

    def synchronize(self):
        require_host_sync("Stream.synchronize")


class Graph:
    """The work recorded by one capture; ``launch`` runs it again, in order, on the same buffers."""

    def __init__(self, work):
        self._work = tuple(work)

    def launch(self, stream=None):
        submit(self._replay, stream)

    def upload(self, stream=None):
        pass

    def _replay(self):
        for work in self._work:
            work()


_state = threading.local()


def _streams():
    if not hasattr(_state, "streams"):
        _state.streams = [Stream(null=True)]
    return _state.streams


def get_current_stream():
    return _streams()[-1]


def capturing():
    """Whether the current stream records instead of running."""
    return get_current_stream()._recording is not None


def submit(work, stream=None):
    """Run device work now, or record it if ``stream`` (default: the current one) is capturing."""
    stream = stream or get_current_stream()
    if stream._recording is not None:
        stream._recording.append(work)
    else:
        work()


def require_host_sync(what):
    """A host read or write of device memory: refused while the current stream captures, which it invalidates."""
    stream = get_current_stream()
    if stream._recording is not None:
        stream._invalidated = True
        raise CUDARuntimeError(f"cudaErrorStreamCaptureUnsupported: {what} is not permitted when the stream is "
                               f"capturing")


def refuse_during_capture(library):
    """What CuPy refuses before issuing it while the stream captures (cuBLAS)."""
    if capturing():
        raise NotImplementedError(f"{library} is not supported during stream capture")


# ---- memory -------------------------------------------------------------------------------

class MemoryPointer:
    def __init__(self, buffer, pool):
        self.buffer, self.mem, self.ptr = buffer, self, buffer.ctypes.data
        self.size = buffer.nbytes
        pool._add(self.size)
        weakref.finalize(buffer, pool._add, -self.size)


class MemoryPool:
    """Hands out device memory (host memory here, 256-byte aligned as cudaMalloc's) and counts it."""

    def __init__(self, allocator=None):
        self._used = 0

    def malloc(self, size):
        if compiler.sanitizing():  # exact, so that reading past an array's end is caught
            return MemoryPointer(np.empty(size, dtype=np.uint8), self)
        raw = np.empty(size + 256, dtype=np.uint8)
        offset = -raw.ctypes.data % 256
        return MemoryPointer(raw[offset:offset + size], self)

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._used

    def free_all_blocks(self):
        pass

    def _add(self, size):
        self._used += size


_default_pool = MemoryPool()


def get_allocator():
    return getattr(_state, "allocator", None) or _default_pool.malloc


def set_allocator(allocator=None):
    _state.allocator = allocator


@contextlib.contextmanager
def using_allocator(allocator=None):
    previous = getattr(_state, "allocator", None)
    _state.allocator = allocator
    try:
        yield
    finally:
        _state.allocator = previous


def allocate(shape, dtype):
    """A new C-contiguous array in device memory from the current allocator."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    memory = get_allocator()(max(count * dtype.itemsize, 1))
    return np.ndarray(shape, dtype=dtype, buffer=memory.buffer[:count * dtype.itemsize])


# ---- kernels ------------------------------------------------------------------------------

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
    from scratchnet.backends.cupy.emulator.arrays import ndarray

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
