"""Writing files atomically: readers see the old file or the complete new one, never a partial one."""

import contextlib
import json
import math
import os
import tempfile

TEMPORARY_SUFFIX = ".partial"  # what a temporary file left by a killed writer ends with
CACHE_ENV = "SCRATCHNET_CACHE_DIR"  # where scratchnet keeps what it remembers across runs, if set

# mkstemp creates files readable by the owner only; give the result the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on an error it vanishes."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMPORARY_SUFFIX,
                                             dir=folder)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except OSError as exc:  # a full disk or a vanished folder: say which file could not be written
        raise _naming(exc, path) from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def cache_folder():
    """Where scratchnet keeps what it remembers across runs: ``$SCRATCHNET_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/scratchnet`` or ``~/.cache/scratchnet``."""
    return os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "scratchnet")


def missing_folders(path):
    """``path`` and those of its ancestors that do not exist yet, deepest first: what creating ``path`` creates."""
    missing, path = [], os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_empty_folders(folders):
    """Remove ``folders`` in order (as ``missing_folders`` lists them), stopping at the first one not empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # it holds something (or is gone): it and its ancestors stay
            return


def _naming(error, path):
    """``error`` as an OSError that names ``path`` (the file being written), when it names no file itself.

    Errors without an errno (a network error from the code writing the file, say) are not
    the file's and pass unchanged, with their own message."""
    if error.filename is not None or error.errno is None:
        return error
    return OSError(error.errno, error.strerror, path)


def write_json(path, data):
    """Write ``data`` as indented, strict JSON to ``path`` atomically: non-finite numbers become null."""
    with atomic_open(path, "w") as file:
        json.dump(strict_json(data), file, indent=2, allow_nan=False)
        file.write("\n")


def strict_json(data):
    """``data`` with every NaN or infinite float replaced by None (JSON has no spelling for them)."""
    if isinstance(data, dict):
        return {key: strict_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(value) for value in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data
