"""Small CIFAR-10 folders in the real python-batch format, for tests that need no real data."""

import io
import os
import pickle
import tarfile

import numpy as np

from scratchnet import download


def batch_bytes(images, labels, bytes_keys=False):
    """One batch pickled as the official files are laid out: a dict of data, labels, batch_label, filenames."""
    batch = {"batch_label": "testing batch", "labels": [int(v) for v in labels],
             "data": images.reshape(len(images), -1), "filenames": [f"image_{i}.png" for i in range(len(images))]}
    if bytes_keys:  # as Python 3 reads the Python 2 originals with encoding="bytes"
        batch = {key.encode(): value for key, value in batch.items()}
    return pickle.dumps(batch, protocol=2)


def write_fake_cifar(root, per_file=6, seed=0):
    """Write ``root/cifar-10-batches-py`` with ``per_file`` random images in each of the six batch files.

    Returns {file name: (uint8 images (n, 3, 32, 32), int64 labels)}.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, download.FOLDER)
    os.makedirs(folder, exist_ok=True)
    written = {}
    for name in download.TRAIN_FILES + download.TEST_FILES:
        images = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_file)
        with open(os.path.join(folder, name), "wb") as file:
            file.write(batch_bytes(images, labels))
        written[name] = (images, labels)
    return written


def tar_folder(root, archive):
    """Pack ``root/cifar-10-batches-py`` into ``archive`` as the official .tar.gz is packed."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(root, download.FOLDER), arcname=download.FOLDER)


def tar_with_member(archive, name, payload=b"x", kind=tarfile.REGTYPE, link=""):
    """A .tar.gz holding one member of the given name and type (for the refusal tests)."""
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        info.size = len(payload) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)


class MarkerPayload:
    """Unpickling this would create ``path`` (a directory): proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)
