"""Unpickling outside files without running their code: an allow-list unpickler.

A pickle may name any importable callable and have it called on load. This
unpickler resolves only the (module, name) pairs it is given and refuses every
other one before anything is imported or called, so a hostile file runs nothing.
Plain containers and scalars (dict, list, tuple, str, bytes, int, float, bool,
None) need no callable and always load.

What a file allocates is bounded by what it holds: ``load_file`` unpickles from the
file mapped into memory, so no opcode can get more bytes than the file has, and the
NumPy class an array pickle names may only tag ``_reconstruct``: called directly
(``ndarray(shape, dtype, buffer, offset, strides)``, which could allocate any size or
make zero-stride views) it is refused.
"""

import codecs
import io
import mmap
import os
import pickle

import numpy as np

try:  # NumPy 2 moved the array internals to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list; nothing was run."""


class _RefusedCall(UnsafePickleError):
    """An allowed name called in a way that could do harm; ``load`` adds which file asked."""


class _ArrayTag(np.ndarray):
    """Stands in for ``numpy.ndarray`` in a pickle: usable as ``_reconstruct``'s class argument only."""

    def __new__(cls, *args, **kwargs):
        raise _RefusedCall("refused to call numpy.ndarray directly (only pickled arrays may be rebuilt)")


def _reconstruct_array(cls, shape, dtype):
    """``_reconstruct`` for plain arrays: an empty array that ``__setstate__`` then fills from the pickle's bytes."""
    if cls is not _ArrayTag:
        raise _RefusedCall(f"refused to rebuild an array of class {cls!r}")
    return _reconstruct(np.ndarray, shape, dtype)


def _empty_bytes(*args):
    """``bytes()``, which protocol-2 writers emit for b''; with arguments it could allocate any size."""
    if args:
        raise _RefusedCall("refused to call bytes with arguments (only b'' is written that way)")
    return b""


# What NumPy arrays pickled by Python 2 or 3 (protocols 0-4) are rebuilt from,
# under both spellings of NumPy's internal module. ``_codecs.encode`` turns the
# latin-1 text that protocol-2 writers use for bytes back into bytes.
NUMPY_ARRAYS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy", "ndarray"): _ArrayTag,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed, what, persistent_load, encoding):
        super().__init__(file, encoding=encoding)
        self._allowed = allowed
        self._what = what
        self.persistent_load = persistent_load or self._refuse_persistent_id

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._what}: refused to load {module}.{name}; this file may only contain "
                f"{_describe(self._allowed)} (nothing from it was run)"
            ) from None

    def _refuse_persistent_id(self, pid):
        raise UnsafePickleError(f"{self._what}: refused a persistent reference {pid!r} (nothing from it was run)")


def load(file, allowed, what, persistent_load=None, encoding="latin1"):
    """Unpickle from the binary file object ``file``, resolving only the globals in ``allowed``.

    ``allowed`` maps (module, name) to the object to use in its place; ``what``
    names the file in error messages. Returns the unpickled object. Raises
    UnsafePickleError for anything not allowed and pickle.UnpicklingError (or
    EOFError, ValueError) for a damaged stream.
    """
    try:
        return _AllowListUnpickler(file, allowed, what, persistent_load, encoding).load()
    except _RefusedCall as exc:
        raise UnsafePickleError(f"{what}: {exc} (nothing from it was run)") from None


def load_file(path, allowed, what=None, encoding="latin1"):
    """``load`` from the file at ``path``, mapped whole into memory (not read: copying a large file
    costs more than its unpickling), so the pickle cannot ask for more than the file holds."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:  # nothing to map; the unpickler reports the empty stream
            return load(io.BytesIO(b""), allowed, what or path, encoding=encoding)
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return load(mapped, allowed, what or path, encoding=encoding)


def _describe(allowed):
    names = sorted({f"{module}.{name}" for module, name in allowed})
    return "plain data" + (f" and {', '.join(names)}" if names else "")
