"""The emulated device's runtime, shaped as the ``cupy.cuda`` the backend uses: devices, streams and
CUDA-graph capture, memory pools and allocators (modules of our kernels are ``modules``).

Device work is submitted to the current stream. It runs at once, unless that stream is capturing: then
it is only recorded, as on a GPU, and runs when the graph is launched, in the same order on the same
buffers. So host work done during capture is not replayed, a capture that reads device memory on the
host fails as CUDA's does, and a kernel's scalar arguments are the ones marshalled at capture.
"""

import contextlib
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
