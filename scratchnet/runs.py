"""Run folders a user can trust: never silently reused, locked while a run writes, checked before training.

``open_run_folder`` creates (or, on request, resumes or replaces) the folder one run
writes to and holds an exclusive ``fcntl`` lock on its ``.lock`` file until
``RunFolder.close``; the kernel drops the lock when the process dies, even by
kill -9, so a killed run never blocks the next one. Before a run starts, the folder
is proven writable and the disk checked for room for a checkpoint, and temporary
files left by a killed writer are removed.
"""

import datetime
import errno
import fcntl
import os
import shutil
import tempfile

from scratchnet.files import TEMPORARY_SUFFIX, missing_folders, remove_empty_folders

LOCK_FILE = ".lock"
# What a run leaves in its folder: --overwrite removes these and refuses to touch a folder holding anything else.
RUN_FILES = ("cifar_net.npz", "cifar_net.pth", "checkpoint.npz", "metrics.json", "samples.png",
             "loss_curve.png", "per_class_accuracy.png", "confusion_matrix.png",
             "filters.png", "feature_maps.png", "histograms.png",  # python -m scratchnet.inspect
             "tensorboard")  # a folder: --tensorboard's event files
RUNS_ROOT = "runs"  # where runs go without --out


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked; the message names it and what to do."""


class RunFolder:
    """An open, locked run folder: ``path``, ``file(name)``, and ``close()`` (also as a context manager).

    A folder this run created and never wrote a file to is removed again when the run
    fails, with the folders created to hold it (``runs/``), so a refused or failed start
    leaves nothing that could pass for a run.
    """

    def __init__(self, path, lock, created):
        self.path, self._lock, self._created = path, lock, created  # created: files.missing_folders before

    def file(self, name):
        return os.path.join(self.path, name)

    def close(self, failed=False):
        if self._lock is None:
            return
        unused = bool(self._created) and set(os.listdir(self.path)) <= {LOCK_FILE}
        if failed and unused:
            os.remove(self.file(LOCK_FILE))
        os.close(self._lock)
        self._lock = None
        if failed and unused:
            remove_empty_folders(self._created)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self.close(failed=kind is not None)


def open_run_folder(out, default_name, resume=False, overwrite=False, room_bytes=0):
    """Open the run folder ``out`` (or a new ``runs/<default_name>-<time>``) for one run; return a RunFolder.

    A folder holding files is refused unless ``resume`` (continue the run in it) or
    ``overwrite`` (delete what a run wrote there first; said on stderr by the caller).
    """
    if out is None:
        created = missing_folders(RUNS_ROOT)
        path = _new_default_folder(default_name)
        created.insert(0, os.path.abspath(path))
    else:
        path, created = out, missing_folders(out)
        if not created and not os.path.isdir(path):
            raise RunFolderError(f"{path} exists and is not a folder; choose another --out")
        if resume and created:
            raise RunFolderError(f"{path}: there is no run to resume there (no such folder)")
        _make_folder(path)
    lock = _lock(path)
    try:
        _remove_temporary_files(path)
        existing = sorted(set(os.listdir(path)) - {LOCK_FILE})
        if existing and not (resume or overwrite):
            raise RunFolderError(f"{path} already holds a run ({', '.join(existing[:3])}); pass --resume {path} to "
                                 f"continue it, --overwrite to replace it, or choose another --out")
        if overwrite:
            _remove_run_files(path, existing)
        _check_writable(path, room_bytes)
    except BaseException:
        os.close(lock)
        if created:
            shutil.rmtree(path, ignore_errors=True)
            remove_empty_folders(created[1:])
        raise
    return RunFolder(path, lock, created)


def _new_default_folder(name):
    """``runs/<name>-<timestamp>``, with ``-2``, ``-3``... when that exists: mkdir is atomic, so two runs
    never share."""
    base = os.path.join(RUNS_ROOT, f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    _make_folder(RUNS_ROOT)
    for attempt in range(1, 1000):
        path = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunFolderError(f"cannot create the run folder {path}: {exc.strerror}") from None
    raise RunFolderError(f"cannot find a free run folder name beside {base}; pass --out")


def _make_folder(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create the run folder {path}: {exc.strerror}") from None


def _lock(path):
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RunFolderError(f"cannot write to the run folder {path}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(handle)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise RunFolderError(f"{path} is in use: another run is writing to it (it holds {lock_path}); "
                                 f"wait for it to finish or choose another --out") from None
        raise RunFolderError(f"cannot lock the run folder {path}: {exc.strerror}") from None
    return handle


def _remove_temporary_files(path):
    """Drop what writers killed mid-write left (``.<name>.<random>.partial``): the lock says none is writing now."""
    for name in os.listdir(path):
        if name.startswith(".") and name.endswith(TEMPORARY_SUFFIX):
            os.remove(os.path.join(path, name))


def _remove_run_files(path, existing):
    foreign = [name for name in existing if name not in RUN_FILES]
    if foreign:
        raise RunFolderError(f"--overwrite: {path} holds files no run writes ({', '.join(foreign[:3])}); "
                             f"not touching it, choose another --out")
    for name in existing:
        file = os.path.join(path, name)
        shutil.rmtree(file) if os.path.isdir(file) else os.remove(file)


def _check_writable(path, room_bytes):
    """Write and remove a probe file, and check the disk has ``room_bytes`` free: found out now, not after training."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".probe.", suffix=TEMPORARY_SUFFIX, dir=path)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise RunFolderError(f"cannot write to the run folder {path}: {exc.strerror}") from None
    stats = os.statvfs(path)
    free = stats.f_bavail * stats.f_frsize
    if free < room_bytes:
        raise RunFolderError(f"{path}: only {free / 2**20:.1f} MiB free on its disk; a checkpoint of this run "
                             f"needs about {room_bytes / 2**20:.1f} MiB")
