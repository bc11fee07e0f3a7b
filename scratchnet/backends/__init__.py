"""Backend registry: one small interface, several implementations side by side.

Every backend implements one interface (``base.Backend``: each op, its signature and
contract); ``numpy_backend`` is the readable reference, ``numba`` and ``cupy`` packages.
"""

import importlib

from scratchnet.backends.base import BackendError

# In the order ``for_array`` asks them: a host array belongs to the reference first.
_MODULES = {
    "numpy": "scratchnet.backends.numpy_backend",
    "numba": "scratchnet.backends.numba",
    "cupy": "scratchnet.backends.cupy",
}
REFERENCE = "numpy"
_LOADED = {}

__all__ = ["BackendError", "REFERENCE", "available", "for_array", "get", "names", "owner", "reference"]


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


def reference():
    """The readable reference backend, where modules and parameters start."""
    return get(REFERENCE)


def owner(array, preferred=None):
    """The loaded backend ``array`` belongs to, or None: ``preferred`` when it owns the array, else the first
    loaded one in the registry's order that does. Both CPU backends own host arrays, so a host array belongs
    to the reference unless the caller prefers numba (a loss moved there stays there)."""
    if preferred is not None and preferred.owns(array):
        return preferred
    for name in _MODULES:
        backend = _LOADED.get(name)
        if backend is not None and backend.owns(array):
            return backend
    return None


def for_array(array, preferred=None):
    """``owner(array, preferred)``, loading the other available backends to ask them if no loaded one owns
    it (an array made by CuPy itself); a TypeError if none does."""
    backend = owner(array, preferred)
    if backend is None:
        backend = next((get(name) for name in available() if get(name).owns(array)), None)
    if backend is None:
        raise TypeError(f"no scratchnet backend computes on {type(array).__module__}.{type(array).__name__}")
    return backend


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
