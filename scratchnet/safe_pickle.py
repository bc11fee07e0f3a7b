"""Unpickling outside files without running their code: an allow-list unpickler.

A pickle may name any importable callable and have it called on load. This
unpickler resolves only the (module, name) pairs it is given and refuses every
other one before anything is imported or called, so a hostile file runs nothing.
Plain containers and scalars (dict, list, tuple, str, bytes, int, float, bool,
None) need no callable and always load.
"""

import codecs
import pickle

import numpy as np

try:  # NumPy 2 moved the array internals to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct

# What NumPy arrays pickled by Python 2 or 3 (protocols 0-4) are rebuilt from,
# under both spellings of NumPy's internal module. ``_codecs.encode`` turns the
# latin-1 text that protocol-2 writers use for bytes back into bytes.
NUMPY_ARRAYS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list; nothing was run."""


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
    return _AllowListUnpickler(file, allowed, what, persistent_load, encoding).load()


def _describe(allowed):
    names = sorted({f"{module}.{name}" for module, name in allowed})
    return "plain data" + (f" and {', '.join(names)}" if names else "")
