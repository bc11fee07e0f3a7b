"""CIFAR-10 as the tutorial sees it: the official python batches, normalized to [-1, 1], NCHW float32.

``CIFAR10`` reads ``root/cifar-10-batches-py`` (found, extracted or downloaded by ``download``)
through the allow-list unpickler and
holds a whole split as one array of pixels. ``DataLoader`` cuts it into mini-batches on
any backend, normalizing each batch as it is drawn (as torchvision's transforms do per
image): normalizing a whole split up front takes longer than training on it for a while.
"""

import functools
import os

import numpy as np

from scratchnet import backends, safe_pickle
from scratchnet.backends.base import normalize_pixels as normalize
from scratchnet.download import TEST_FILES, TRAIN_FILES, DataError, OfficialCheck, locate
from scratchnet.transforms import take

IMAGES_PER_FILE = 10000
IMAGE_SHAPE = (3, 32, 32)
# The tutorial's own short class names, in label order.
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

class CIFAR10:
    """One CIFAR-10 split: ``pixels`` (N, 3, 32, 32) uint8, ``data`` the same normalized to float32
    in [-1, 1], and ``targets`` (N,) int64.

    Normalization is the tutorial's ToTensor (pixel / 255) then Normalize(0.5, 0.5),
    computed in float32 as torchvision does; ``data`` is made on first use, and a
    ``DataLoader`` normalizes only the batches it draws. ``limit`` keeps the first
    ``limit`` images (reading only the batch files they live in).
    """

    classes = CLASSES

    def __init__(self, root, train=True, download=False, limit=None):
        self.root, self.train = os.fspath(root), train
        self.pixels, self.targets = read_split(self.root, train, download, limit)

    @functools.cached_property
    def data(self):
        return normalize(self.pixels)

    def __len__(self):
        return len(self.targets)

    def __repr__(self):
        return f"CIFAR10(root={self.root!r}, train={self.train}, images={len(self)})"


def read_split(root, train=True, download=False, limit=None):
    """The raw split: uint8 images (N, 3, 32, 32) and int64 labels (N,), the first ``limit`` if given."""
    if limit is not None and limit <= 0:
        raise ValueError(f"CIFAR10: limit must be a positive number of images, got {limit}")
    folder = locate(root, download)
    names = TRAIN_FILES if train else TEST_FILES
    with OfficialCheck(folder, names) as official:
        images, labels, read = [], [], []
        for name in names:
            batch_images, batch_labels = read_batch(os.path.join(folder, name))
            images.append(batch_images)
            labels.append(batch_labels)
            read.append(name)
            if limit is not None and sum(map(len, labels)) >= limit:
                break  # the files after this one hold no image within the limit
        official.notice(read)
    images, labels = np.concatenate(images), np.concatenate(labels)
    return images[:limit], labels[:limit]


def read_batch(path):
    """One batch file -> (uint8 images (n, 3, 32, 32), int64 labels (n,)); a clear error naming the file otherwise."""
    try:
        # Python 2's strings load as bytes: decoding the 30 MB of pixels to text and back would copy them twice.
        batch = safe_pickle.load_file(path, safe_pickle.NUMPY_ARRAYS, encoding="bytes")
    except safe_pickle.UnsafePickleError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # any damage to the stream surfaces as one of many exception types
        raise DataError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); re-extract or re-download it"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, not a dict")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    images, labels = batch.get("data"), batch.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != np.prod(IMAGE_SHAPE):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{path} is not a CIFAR-10 batch: 'data' must be a uint8 (n, 3072) array, got {got}")
    if len(images) == 0:
        raise DataError(f"{path} is not a CIFAR-10 batch: it holds no images")
    if not isinstance(labels, list) or len(labels) != len(images):
        raise DataError(f"{path} is not a CIFAR-10 batch: 'labels' must be a list of {len(images)} class indices")
    # Exactly ints: nested lists ([[3], [8], ...]) or floats would pass np.asarray and fail mid-training.
    odd = next((index for index, label in enumerate(labels) if type(label) is not int), None)
    if odd is not None:
        raise DataError(f"{path} is not a CIFAR-10 batch: label {odd} is a {type(labels[odd]).__name__}, "
                        f"not an integer class index")
    labels = np.array(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataError(f"{path} is not a CIFAR-10 batch: labels must be integers in 0..{len(CLASSES) - 1}")
    return images.reshape(-1, *IMAGE_SHAPE), labels


# ---- batching -----------------------------------------------------------------------------


class DataLoader:
    """Mini-batches ``(x, y)`` of a dataset on a backend, reshuffled every epoch.

    A dataset has ``targets`` and either ``data`` (any array, cast to ``dtype`` if
    given) or ``pixels``, uint8 values that each batch normalizes (to ``dtype``, with
    ``backend.normalize_pixels``) as it is drawn. The whole split moves to the
    backend once (``backend.asarray``), and batches are gathered there with the
    backend's array module, so a GPU backend keeps the data on the device. The shuffle order comes from a host
    numpy Generator seeded with ``seed``: every backend sees the same batches in the
    same order. The last partial batch is kept, as torch's DataLoader does by default.

    The order is a documented contract, so another framework can replay it: with
    ``shuffle``, epoch k visits ``np.random.default_rng(seed).permutation(n)`` drawn
    for the k-th time from that one Generator; without it, the dataset order.

    ``transform`` (``scratchnet.transforms``) augments each batch before it is normalized, with
    decisions drawn from a second generator seeded from ``seed``, drawn for each global batch (a worker
    applies its share), so N workers see what one worker at N times the batch sees. ``drop_last``
    drops a last batch smaller than the others, as torch's DataLoader does.

    Data-parallel: with ``workers`` > 1 the order is cut into global batches of
    ``workers * batch_size`` and worker ``rank`` (0-based) yields its slice of each,
    so every worker, given the same seed, walks the same global permutation. The last
    global batch is split equally: its last ``len % workers`` images are skipped, and
    it is dropped if it holds fewer images than workers.
    """

    def __init__(self, dataset, batch_size, shuffle=False, seed=None, backend=None, dtype=None, rank=0, workers=1,
                 transform=None, drop_last=False):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if len(dataset) == 0:
            raise ValueError("DataLoader: the dataset is empty")
        if not 0 <= rank < workers:
            raise ValueError(f"DataLoader: rank must lie in [0, workers), got rank {rank} of {workers} workers")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.rank, self.workers, self.transform, self.drop_last = rank, workers, transform, drop_last
        self.backend = backends.get(backend) if isinstance(backend, str) else backend or backends.reference()
        self._rng = np.random.default_rng(seed)
        # Its own stream, so that augmenting leaves the shuffle order (a documented contract) as it is.
        self._augment_rng = self._rng.spawn(1)[0]
        self._pixels = hasattr(dataset, "pixels")
        self._dtype = dtype
        self._data = self.backend.asarray(dataset.pixels if self._pixels else dataset.data,
                                          dtype=None if self._pixels else dtype)
        self._targets = self.backend.asarray(dataset.targets)

    @property
    def targets(self):
        """Every label of the dataset, on the loader's backend: what its batches' labels are drawn from."""
        return self._targets

    @property
    def global_batch_size(self):
        return self.workers * self.batch_size

    @property
    def order_state(self):
        """The shuffle generator's state (a plain dict), with a transform also the augmentation generator's:
        restoring it replays the epochs drawn since."""
        if self.transform is None:
            return self._rng.bit_generator.state
        return {"order": self._rng.bit_generator.state, "augment": self._augment_rng.bit_generator.state}

    @order_state.setter
    def order_state(self, state):
        if "augment" in state:
            self._augment_rng.bit_generator.state = state["augment"]
            state = state["order"]
        self._rng.bit_generator.state = state

    def __len__(self):
        full, rest = divmod(len(self.dataset), self.global_batch_size)
        return full + (rest >= self.workers and not self.drop_last)

    def __iter__(self):
        return self.batches()

    def batches(self, skip=0):
        """One epoch's batches after the first ``skip`` (whose order and augmentation are drawn all the same):
        a resumed epoch."""
        n, size = len(self.dataset), self.global_batch_size
        order = self.backend.asarray(self._rng.permutation(n)) if self.shuffle else None
        for number, start in enumerate(range(0, n, size)):
            share = min(size, n - start) // self.workers
            if share == 0 or (self.drop_last and share < self.batch_size):
                return
            decisions = None
            if self.transform is not None:
                shape = (share * self.workers,) + tuple(self._data.shape[1:])
                decisions = take(self.transform.decide(self._augment_rng, shape),
                                 slice(self.rank * share, (self.rank + 1) * share))
            if number < skip:
                continue
            first = start + self.rank * share
            if order is None:
                x, y = self._data[first:first + share], self._targets[first:first + share]
            else:
                index = order[first:first + share]
                x, y = self._data[index], self._targets[index]
            if decisions is not None:
                x = self.transform.apply(self.backend.xp, x, decisions)
            yield (self.backend.normalize_pixels(x, self._dtype) if self._pixels else x), y
