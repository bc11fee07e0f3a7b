"""Weights on disk: scratchnet's ``.npz`` and PyTorch's ``.pth``, both ways, without importing torch.

A state dict here is a dict of parameter name -> numpy array, as ``Module.state_dict``
returns. ``load`` tells the two formats apart by content. A ``.pth`` is read through
the allow-list unpickler, which admits only tensors in an OrderedDict: anything
else in the file is refused and nothing from it runs.

The ``.pth`` layout (torch.save's zip format): one top folder holding ``data.pkl``
(a protocol-2 pickle whose tensors point at storages by persistent id),
``data/<key>`` (each storage's raw bytes), ``byteorder`` and ``version``.
"""

import collections
import io
import math
import os
import struct
import zipfile

import numpy as np

from scratchnet import safe_pickle
from scratchnet.files import atomic_open


class CheckpointError(ValueError):
    """A weights file that cannot be read or written; the message names it."""


PLAIN_KINDS = "biufc"  # numpy dtype kinds of plain numbers: no objects, strings, dates or records


# ---- scratchnet .npz --------------------------------------------------------------------------


def save_npz(path, state_dict):
    """Write ``state_dict`` to ``path`` as an uncompressed .npz, atomically."""
    arrays = {name: np.asarray(value) for name, value in state_dict.items()}
    with atomic_open(path) as file:
        np.savez(file, **arrays)


def _load_npz(path, archive):
    """The arrays of an .npz, each header checked before anything is allocated (see ``_check_npy_header``)."""
    file_size = os.path.getsize(path)
    for info in archive.infolist():
        with archive.open(info) as member:
            _check_npy_header(path, info, member, file_size)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except ValueError as exc:  # an object array, which would need pickle
        raise CheckpointError(f"{path}: refused to load ({exc})") from None


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_npy_header(path, info, member, file_size):
    """Refuse an .npy member whose dtype is not plain numbers or whose declared size the file does not hold."""
    name = info.filename[: -len(".npy")]
    version = np.lib.format.read_magic(member)
    if version not in _NPY_HEADER_READERS:
        raise CheckpointError(f"{path}: array {name!r} uses .npy format {version}, which holds no plain numbers")
    shape, _fortran, dtype = _NPY_HEADER_READERS[version](member)
    if dtype.fields is not None or dtype.kind not in PLAIN_KINDS:
        raise CheckpointError(f"{path}: array {name!r} has dtype {dtype}; only plain numbers are accepted")
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - member.tell() or info.file_size > file_size:
        raise CheckpointError(f"{path}: array {name!r} declares shape {shape} of {dtype} ({declared} bytes), "
                              f"which this file does not hold")


# ---- PyTorch .pth -----------------------------------------------------------------------------

# torch storage class name -> numpy dtype (bfloat16 has no numpy equivalent).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_NAMES = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}


class _StorageType:
    """Stands in for a torch storage class while unpickling: it only names a dtype."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(what):
    def rebuild(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
        """torch._utils._rebuild_tensor_v2 on numpy: a bounds-checked strided view of the storage, copied."""
        size, stride = tuple(size), tuple(stride)
        ints = (offset,) + size + stride
        valid = isinstance(storage, np.ndarray) and len(size) == len(stride)
        # A stride of 0 (or < 0) along a dimension longer than 1 repeats elements: a tiny file could
        # declare a tensor of any size. Refused before anything is allocated, as are overlapping views larger
        # than their storage.
        if not valid or not all(isinstance(v, int) and v >= 0 for v in ints) \
                or any(s == 0 for n, s in zip(size, stride) if n > 1):
            raise CheckpointError(f"{what}: a tensor has an invalid layout (size {size}, stride {stride})")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
        if last >= storage.size:
            raise CheckpointError(f"{what}: a tensor reaches past the end of its storage")
        if math.prod(size) > storage.size:
            raise CheckpointError(f"{what}: a tensor of size {size} declares more elements than its storage "
                                  f"holds ({storage.size})")
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride], writeable=False
        )
        return view.copy()

    return rebuild


def _load_pth(path, archive):
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError(f"{path} is not a torch .pth archive (it has no single <folder>/data.pkl)")
    folder = pickles[0][: -len("data.pkl")]
    names = set(archive.namelist())
    file_size = os.path.getsize(path)
    big_endian = f"{folder}byteorder" in names and archive.read(f"{folder}byteorder").strip() == b"big"
    storages = {}

    def storage(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise safe_pickle.UnsafePickleError(f"{path}: refused a persistent reference {pid!r}")
        _, kind, key, _location, numel = pid
        if key not in storages:
            record = f"{folder}data/{key}"
            if record not in names:
                raise CheckpointError(f"{path}: storage {record} is missing")
            dtype = kind.dtype.newbyteorder(">" if big_endian else "<")
            declared = archive.getinfo(record).file_size
            # Checked before reading: a compressed record could unpack to any size.
            if not isinstance(numel, int) or declared != numel * dtype.itemsize or declared > file_size:
                raise CheckpointError(f"{path}: storage {record} declares {numel!r} elements in {declared} bytes, "
                                      f"which this file does not hold")
            raw = archive.read(record)
            storages[key] = np.frombuffer(raw, dtype=dtype).astype(kind.dtype)
        return storages[key]

    allowed = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor(path),
               ("collections", "OrderedDict"): collections.OrderedDict}
    allowed.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
    with archive.open(pickles[0]) as file:
        state = safe_pickle.load(file, allowed, what=path, persistent_load=storage, encoding="utf-8")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state_dict (parameter name -> tensor), got a {type(state).__name__}")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(
                f"{path}: expected a state_dict of tensors, but entry {name!r} holds {type(value).__name__}"
            )
    return dict(state)


def save_pth(path, state_dict):
    """Write ``state_dict`` as a torch.save zip archive that ``torch.load(path, weights_only=True)`` accepts."""
    arrays = {name: np.ascontiguousarray(value) for name, value in state_dict.items()}
    for name, array in arrays.items():
        if array.dtype.type not in _TORCH_NAMES:
            raise CheckpointError(f"save_pth: {name} has dtype {array.dtype}, which a torch storage cannot hold")
    folder = "archive/"
    with atomic_open(path) as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(folder + "data.pkl", _state_dict_pickle(arrays))
        archive.writestr(folder + "byteorder", "little")
        for key, array in enumerate(arrays.values()):
            archive.writestr(f"{folder}data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())
        archive.writestr(folder + "version", "3\n")


def _state_dict_pickle(arrays):
    """The protocol-2 pickle torch.save writes for an OrderedDict of contiguous CPU tensors.

    Written opcode by opcode, as the globals it names live in torch, which is not imported here.
    """
    out = io.BytesIO()
    out.write(b"\x80\x02")  # PROTO 2
    out.write(b"ccollections\nOrderedDict\n)R(")  # OrderedDict(), then MARK for its items
    for key, (name, array) in enumerate(arrays.items()):
        storage_name = _TORCH_NAMES[array.dtype.type]
        contiguous_strides = [int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
        _write_str(out, name)
        out.write(b"ctorch._utils\n_rebuild_tensor_v2\n(")  # callable, MARK for its arguments
        out.write(b"(")  # the storage's persistent id: ('storage', type, key, location, numel)
        _write_str(out, "storage")
        out.write(f"ctorch\n{storage_name}\n".encode())
        _write_str(out, str(key))
        _write_str(out, "cpu")
        _write_int(out, array.size)
        out.write(b"tQ")  # TUPLE, BINPERSID
        _write_int(out, 0)  # storage offset
        _write_tuple(out, array.shape)
        _write_tuple(out, contiguous_strides)
        out.write(b"\x89")  # requires_grad = False
        out.write(b"ccollections\nOrderedDict\n)R")  # backward hooks: OrderedDict()
        out.write(b"tR")  # TUPLE of the arguments, REDUCE
    out.write(b"u.")  # SETITEMS, STOP
    return out.getvalue()


def _write_str(out, text):
    data = text.encode("utf-8")
    out.write(b"X" + struct.pack("<I", len(data)) + data)  # BINUNICODE


def _write_int(out, value):
    value = int(value)
    if 0 <= value < 2 ** 31:
        out.write(b"J" + struct.pack("<i", value))  # BININT
    else:
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        out.write(b"\x8a" + bytes([len(data)]) + data)  # LONG1


def _write_tuple(out, values):
    out.write(b"(")
    for value in values:
        _write_int(out, value)
    out.write(b"t")


# ---- either format ----------------------------------------------------------------------------


def save(path, state_dict):
    """Save by extension: ``.pth``/``.pt`` for torch, anything else as scratchnet's .npz."""
    if os.fspath(path).endswith((".pth", ".pt")):
        save_pth(path, state_dict)
    else:
        save_npz(path, state_dict)


def load(path):
    """Read a scratchnet .npz or a torch .pth state_dict -> {name: numpy array}."""
    path = os.fspath(path)
    try:
        if not os.path.exists(path):
            raise CheckpointError(f"cannot read {path}: no such file")
        if os.path.isdir(path):
            raise CheckpointError(f"cannot read {path}: it is a folder, not a weights file")
        if not os.path.isfile(path):
            raise CheckpointError(f"cannot read {path}: it is not a regular file (a device or a pipe?)")
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path} is not a weights file (neither a scratchnet .npz nor a torch .pth archive)")
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            if any(name.endswith("/data.pkl") for name in members):
                return _load_pth(path, archive)
            if members and all(name.endswith(".npy") for name in members):
                return _load_npz(path, archive)
    except safe_pickle.UnsafePickleError as exc:
        raise CheckpointError(str(exc)) from None
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # damage inside the archive surfaces as many exception types
        raise CheckpointError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
    raise CheckpointError(f"{path} is a zip archive but neither a scratchnet .npz nor a torch .pth")
