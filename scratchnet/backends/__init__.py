"""Backend registry: one small interface, several implementations side by side.

Every backend implements one interface (``base.Backend``: each op, its signature and
contract); ``numpy_backend`` is the readable reference, ``numba`` and ``cupy`` packages.
"""

import importlib

import numpy as np

_MODULES = {
    "numpy": "scratchnet.backends.numpy_backend",
    "numba": "scratchnet.backends.numba",
    "cupy": "scratchnet.backends.cupy",
}
_LOADED = {}


class BackendError(ValueError):
    """An unknown backend name, or a backend whose library or device is missing."""


def names():
    """All backend names scratchnet knows, available here or not."""
    return tuple(_MODULES)


def get(name):
    """Return the backend called ``name``, importing it on first use."""
    if name not in _MODULES:
        raise BackendError(
            f"unknown backend {name!r}; scratchnet has: {', '.join(_MODULES)} "
            f"(available here: {', '.join(available()) or 'none'})"
        )
    try:
        return _load(name)
    except (BackendError, ImportError) as exc:
        reason = f"needs {exc.name}, which is not installed" if isinstance(exc, ImportError) and exc.name else str(exc)
        raise BackendError(
            f"backend {name!r} is not available: {reason}; available here: {', '.join(available())}"
        ) from None


def for_array(array):
    """The reference backend for a host array, the cupy backend for any other (a GPU array)."""
    return get("numpy") if isinstance(array, (np.ndarray, np.generic)) else get("cupy")


def available():
    """Names of the backends that load on this machine."""
    found = []
    for name in _MODULES:
        try:
            _load(name)
        except (BackendError, ImportError):
            continue
        found.append(name)
    return found


def _load(name):
    if name not in _LOADED:
        _LOADED[name] = importlib.import_module(_MODULES[name]).create()
    return _LOADED[name]
