"""Data augmentation against torchvision's functional ops, given the same decisions, on every backend; and
the DataLoader's augmentation: reproducible, resumable, the same on N workers as on one, ``drop_last``."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from scratchnet.data import DataLoader
from scratchnet.transforms import Compose, RandomCrop, RandomHorizontalFlip

CROPS = [
    dict(size=32, padding=4),
    dict(size=(28, 30), padding=(2, 3), padding_mode="reflect"),
    dict(size=30, padding=(1, 2, 3, 4), padding_mode="edge"),
    dict(size=32, padding=2, padding_mode="symmetric"),
    dict(size=36, pad_if_needed=True, fill=7),
    dict(size=(20, 24)),
]


def _images(dtype, count=5, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    return rng.standard_normal((count, 3, 32, 32)).astype(dtype)


def _torch_crop(image, settings, corner):
    crop = RandomCrop(**settings)
    image = torch.from_numpy(image)
    if crop.padding is not None:
        image = TF.pad(image, list(crop._sides) if not isinstance(crop.padding, int) else crop.padding, crop.fill,
                       crop.padding_mode)
    height, width = image.shape[-2:]
    if crop.pad_if_needed and width < crop.size[1]:
        image = TF.pad(image, [crop.size[1] - width, 0], crop.fill, crop.padding_mode)
    if crop.pad_if_needed and height < crop.size[0]:
        image = TF.pad(image, [0, crop.size[0] - height], crop.fill, crop.padding_mode)
    return TF.crop(image, int(corner[0]), int(corner[1]), *crop.size).numpy()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("settings", CROPS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_random_crop_equals_torchvisions_pad_and_crop(backend, dtype, settings):
    images = _images(dtype)
    crop = RandomCrop(**settings)
    corners = crop.decide(np.random.default_rng(1), images.shape)
    ours = backend.to_numpy(crop.apply(backend.xp, backend.asarray(images), corners))
    assert ours.shape == (5, 3, *crop.size) and ours.dtype == dtype
    for image, corner, got in zip(images, corners, ours):
        np.testing.assert_array_equal(got, _torch_crop(image, settings, corner))


def test_horizontal_flip_and_compose_equal_torchvisions(backend):
    images = _images(np.uint8, count=8)
    transform = Compose([RandomCrop(28, padding=2, padding_mode="reflect"), RandomHorizontalFlip(0.5)])
    crops, flips = transform.decide(np.random.default_rng(2), images.shape)
    assert flips.any() and not flips.all()
    ours = backend.to_numpy(transform.apply(backend.xp, backend.asarray(images), [crops, flips]))
    for image, corner, flip, got in zip(images, crops, flips, ours):
        expected = torch.from_numpy(_torch_crop(image, dict(size=28, padding=2, padding_mode="reflect"), corner))
        np.testing.assert_array_equal(got, (TF.hflip(expected) if flip else expected).numpy())


class _Pixels:
    """A dataset as DataLoader takes one: uint8 pixels and labels."""

    def __init__(self, count):
        self.pixels, self.targets = _images(np.uint8, count, seed=3), np.arange(count) % 10

    def __len__(self):
        return len(self.targets)


def _augmenting_loader(backend, batch, **options):
    return DataLoader(_Pixels(37), batch, shuffle=True, seed=5, backend=backend,
                      transform=Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()]), **options)


def _epochs(loader, epochs=2):
    return [[(loader.backend.to_numpy(x), loader.backend.to_numpy(y)) for x, y in loader] for _ in range(epochs)]


def test_the_loader_augments_reproducibly_without_changing_its_order(backend):
    first, second = _epochs(_augmenting_loader(backend, 4)), _epochs(_augmenting_loader(backend, 4))
    plain = _epochs(DataLoader(_Pixels(37), 4, shuffle=True, seed=5, backend=backend))
    for epoch, again, unaugmented in zip(first, second, plain):
        for (x, y), (x2, y2), (x0, y0) in zip(epoch, again, unaugmented):
            np.testing.assert_array_equal(x, x2)
            np.testing.assert_array_equal(y, y0)  # the shuffle order is the documented one
    assert not all(np.array_equal(x, x0) for (x, _), (x0, _) in zip(first[0], plain[0]))


def test_a_resumed_epoch_augments_as_the_uninterrupted_one(backend):
    whole = _epochs(_augmenting_loader(backend, 4))
    loader = _augmenting_loader(backend, 4)
    next(iter(loader))  # epoch 1 started, then interrupted: resume from its start state, skipping 3 batches
    resumed = _augmenting_loader(backend, 4)
    saved = _augmenting_loader(backend, 4).order_state
    resumed.order_state = saved
    batches = [(backend.to_numpy(x), backend.to_numpy(y)) for x, y in resumed.batches(skip=3)]
    for (x, y), (x2, y2) in zip(batches, whole[0][3:]):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert len(batches) == len(whole[0]) - 3


def test_two_workers_see_what_one_worker_at_twice_the_batch_sees(backend):
    one = _epochs(_augmenting_loader(backend, 8, drop_last=True))
    ranks = [_epochs(_augmenting_loader(backend, 4, rank=rank, workers=2, drop_last=True)) for rank in (0, 1)]
    for epoch in range(2):
        for step, (x, y) in enumerate(one[epoch]):
            np.testing.assert_array_equal(x, np.concatenate([ranks[0][epoch][step][0], ranks[1][epoch][step][0]]))
            np.testing.assert_array_equal(y, np.concatenate([ranks[0][epoch][step][1], ranks[1][epoch][step][1]]))


def test_drop_last_drops_the_smaller_last_batch_as_torch():
    kept, dropped = DataLoader(_Pixels(37), 4), DataLoader(_Pixels(37), 4, drop_last=True)
    assert (len(kept), len(dropped)) == (len(torch.utils.data.DataLoader(range(37), 4)),
                                         len(torch.utils.data.DataLoader(range(37), 4, drop_last=True)))
    assert [len(y) for _, y in dropped] == [4] * 9 and [len(y) for _, y in kept][-1] == 1


def test_bad_crop_settings_are_refused():
    with pytest.raises(ValueError, match="padding_mode"):
        RandomCrop(32, padding=4, padding_mode="wrap")
    with pytest.raises(ValueError, match="larger than input image size"):
        RandomCrop(40).decide(np.random.default_rng(0), (2, 3, 32, 32))
