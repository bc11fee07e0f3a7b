"""The emulated device's arrays, shaped as the ``cupy`` the backend uses: ``ndarray`` and the array
functions.

An ``ndarray`` lives in device memory (host memory here) and never turns into a NumPy array
implicitly: ``get()`` and ``asnumpy`` copy it out, NumPy arrays are refused as operands, and
``np.asarray(device_array)`` raises, as CuPy's does. NumPy functions and operators on device arrays run
as device work on the current stream (``runtime.submit``); while it captures they are recorded, their
results allocated from the shape and dtype NumPy gives for zero-stride stand-ins, and views stay views.
"""

import operator
import types

import numpy as np

from scratchnet.backends.cupy.emulator import runtime


class ndarray(np.lib.mixins.NDArrayOperatorsMixin):  # noqa: N801 -- CuPy's name
    """A device array. ``cupy.ndarray(shape, dtype)`` allocates one from the current allocator."""

    __slots__ = ("_buffer", "__weakref__")

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None or order != "C":
            raise NotImplementedError("the emulated device allocates C-ordered arrays only")
        self._buffer = runtime.allocate(_shape(shape), dtype)

    @classmethod
    def _over(cls, buffer):
        array = object.__new__(cls)
        array._buffer = buffer
        return array

    # ---- what the array is ---------------------------------------------------------------

    shape = property(lambda self: self._buffer.shape)
    dtype = property(lambda self: self._buffer.dtype)
    ndim = property(lambda self: self._buffer.ndim)
    size = property(lambda self: self._buffer.size)
    itemsize = property(lambda self: self._buffer.itemsize)
    nbytes = property(lambda self: self._buffer.nbytes)
    strides = property(lambda self: self._buffer.strides)
    flags = property(lambda self: self._buffer.flags)
    T = property(lambda self: ndarray._over(self._buffer.T))
    data = property(lambda self: _DevicePointer(self._buffer.ctypes.data))
    device = property(lambda self: runtime.Device(0))

    def __len__(self):
        return len(self._buffer)

    def __repr__(self):
        runtime.require_host_sync("printing a device array")
        return repr(self._buffer)

    # ---- host transfers: explicit only --------------------------------------------------

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        runtime.require_host_sync("ndarray.get (a device-to-host copy)")
        if out is not None:
            np.copyto(out, self._buffer)
            return out
        return np.array(self._buffer, order=order, copy=True)

    def set(self, array, stream=None):
        runtime.require_host_sync("ndarray.set (a host-to-device copy from pageable memory)")
        np.copyto(self._buffer, np.asarray(array))

    def item(self, *args):
        runtime.require_host_sync("ndarray.item")
        return self._buffer.item(*args)

    def tolist(self):
        runtime.require_host_sync("ndarray.tolist")
        return self._buffer.tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        runtime.require_host_sync("the truth value of a device array")
        return bool(self._buffer)

    def __complex__(self):
        return complex(self.item())

    # ---- device work ----------------------------------------------------------------------

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul:
            runtime.refuse_during_capture("cuBLAS")
        return _device_call(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        own = globals().get(func.__name__)
        if own is not None and getattr(own, "_array_function", False):
            return own(*args, **kwargs)
        return _device_call(func, args, kwargs)

    def __getitem__(self, key):
        return _device_call(operator.getitem, (self, key), {})

    def __setitem__(self, key, value):
        _device_call(operator.setitem, (self, key, value), {}, writes=True)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[index] for index in range(len(self)))

    def fill(self, value):
        _device_call(np.ndarray.fill, (self, value), {}, writes=True)

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return _device_call(np.ndarray.astype, (self, dtype), {"copy": copy})

    def copy(self, order="C"):
        return _device_call(np.array, (self,), {"copy": True, "order": order})

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __getattr__(self, name):
        # The rest of NumPy's array methods (reshape, ravel, sum, max, argmax, view, ...) as device work.
        method = getattr(np.ndarray, name, None)
        if not callable(method) or name.startswith("_"):
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        return lambda *args, **kwargs: _device_call(method, (self, *args), kwargs)

    def __getstate__(self):
        raise TypeError("a device array cannot be pickled; copy it to the host with .get() first")


class _DevicePointer:
    def __init__(self, ptr):
        self.ptr = ptr


def _shape(shape):
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)


# ---- the generic device call ------------------------------------------------------------

def _device_call(func, args, kwargs, writes=False):
    """``func`` (a NumPy function on host arrays) as device work: at once when the current stream runs,
    recorded when it captures. Results that share memory with an operand are views (metadata, made
    now); others are new device arrays; Python values (shapes, types) are returned as they are."""
    devices = {}
    host_args, host_kwargs = _to_buffers(args, devices), _to_buffers(kwargs, devices)
    if writes or "out" in kwargs:
        runtime.submit(lambda: func(*host_args, **host_kwargs))
        out = kwargs.get("out")
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out
    if not runtime.capturing():
        return _from_buffers(func(*host_args, **host_kwargs), devices)
    stand_ins = {}
    with np.errstate(all="ignore"):
        probe = func(*_stand_ins(host_args, stand_ins), **_stand_ins(host_kwargs, stand_ins))
    if not _is_array_result(probe):
        return probe
    if any(np.shares_memory(part, stand_in) for part in _parts(probe) for stand_in in stand_ins.values()):
        return _from_buffers(func(*host_args, **host_kwargs), devices)
    results = tuple(ndarray(np.shape(part), np.asarray(part).dtype) for part in _parts(probe))

    def work():
        computed = func(*host_args, **host_kwargs)
        for result, part in zip(results, _parts(computed)):
            np.copyto(result._buffer, part)

    runtime.submit(work)
    return results if isinstance(probe, tuple) else results[0]


def _to_buffers(value, devices):
    if isinstance(value, ndarray):
        devices[id(value._buffer)] = value
        return value._buffer
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}: a NumPy array cannot take part in device work; "
                        f"move it to the device first")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_buffers(item, devices) for item in value)
    if isinstance(value, dict):
        return {key: _to_buffers(item, devices) for key, item in value.items()}
    return value


def _from_buffers(value, devices):
    """Device arrays for host results: an operand's own buffer maps back to that operand."""
    if isinstance(value, np.ndarray):
        own = devices.get(id(value))
        return ndarray._over(value) if own is None else own
    if isinstance(value, np.generic):
        return ndarray._over(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_from_buffers(item, devices) for item in value)
    return value


def _stand_ins(value, stand_ins):
    """Zero-stride arrays of the operands' shapes and dtypes: what a result's layout is learnt from."""
    if isinstance(value, np.ndarray):
        stand_ins[id(value)] = np.lib.stride_tricks.as_strided(
            np.zeros(1, dtype=value.dtype), value.shape, (0,) * value.ndim)
        return stand_ins[id(value)]
    if isinstance(value, (list, tuple)):
        return type(value)(_stand_ins(item, stand_ins) for item in value)
    if isinstance(value, dict):
        return {key: _stand_ins(item, stand_ins) for key, item in value.items()}
    return value


def _is_array_result(value):
    return isinstance(value, (np.ndarray, np.generic)) or (
        isinstance(value, tuple) and value != () and all(isinstance(v, (np.ndarray, np.generic)) for v in value))


def _parts(value):
    return value if isinstance(value, tuple) else (value,)


# ---- array functions with device semantics of their own ---------------------------------------

def _own(func):
    func._array_function = True
    return func


def asarray(a, dtype=None, order=None):
    """A device array: itself (cast if asked), or a host-to-device copy of host data."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    runtime.require_host_sync("a host-to-device copy from pageable memory")
    host = np.asarray(a, dtype=dtype)
    device = ndarray(host.shape, host.dtype)
    np.copyto(device._buffer, host)
    return device


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(obj, ndarray):
        return obj.astype(dtype or obj.dtype, copy=copy)
    return asarray(obj, dtype)


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(out=out)
    return np.asarray(a, order=order)


@_own
def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}: cupy.ascontiguousarray takes a device array")
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    result = ndarray(a.shape, dtype or a.dtype)
    copyto(result, a, casting="unsafe")
    return result


@_own
def copyto(dst, src, casting="same_kind", where=True):
    if not isinstance(dst, ndarray):
        raise TypeError(f"Unsupported type {type(dst)}: cupy.copyto writes into a device array")
    _device_call(np.copyto, (dst, src), {"casting": casting, "where": where}, writes=True)


def empty(shape, dtype=float, order="C"):
    return ndarray(shape, dtype)


@_own
def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return ndarray(prototype.shape if shape is None else shape, prototype.dtype if dtype is None else dtype)


def full(shape, fill_value, dtype=None, order="C"):
    result = ndarray(shape, np.result_type(fill_value) if dtype is None else dtype)
    result.fill(fill_value)
    return result


@_own
def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    result = empty_like(a, dtype=dtype, shape=shape)
    result.fill(fill_value)
    return result


def zeros(shape, dtype=float, order="C"):
    return full(shape, 0, dtype)


@_own
def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return full_like(a, 0, dtype=dtype, shape=shape)


def ones(shape, dtype=float, order="C"):
    return full(shape, 1, dtype)


@_own
def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return full_like(a, 1, dtype=dtype, shape=shape)


@_own
def matmul(a, b, out=None):
    """Dense products are cuBLAS's on a GPU: refused during capture, as CuPy refuses them."""
    runtime.refuse_during_capture("cuBLAS")
    return _device_call(np.matmul, (a, b), {} if out is None else {"out": out})


def as_strided(x, shape=None, strides=None):
    """A view of ``x``'s memory with any shape and strides (``cupy.lib.stride_tricks.as_strided``)."""
    return ndarray._over(np.lib.stride_tricks.as_strided(x._buffer, shape, strides))


def numpy_function(name):
    """Any other NumPy name: dtypes and constants as they are, functions as device work."""
    value = getattr(np, name)
    if isinstance(value, types.ModuleType):  # np.random, np.linalg...: host arrays, so not emulated
        raise AttributeError(f"the emulated device has no cupy.{name}")
    if isinstance(value, type) or not callable(value):
        return value
    return lambda *args, **kwargs: _device_call(value, args, kwargs)
