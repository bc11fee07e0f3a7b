"""Data augmentation as torchvision names it, applied to a whole batch at once on the batch's backend:
``RandomCrop``, ``RandomHorizontalFlip`` and ``Compose``.

A transform first draws its decisions for a batch on the host (``decide``: one entry per image, from the
generator it is handed: the DataLoader's augmentation generator, seeded with the run, so runs repeat and
resume), then applies them with the batch's array module (``apply``), so a GPU batch never leaves the
GPU. Given the same decisions, each equals torchvision's functional op image by image (tested). The
DataLoader applies its transform to NCHW batches before normalizing them, as torchvision's recipes
transform images before ``ToTensor`` and ``Normalize``: a crop's constant padding is a pixel value.
"""

import numpy as np

_PADDING_MODES = ("constant", "edge", "reflect", "symmetric")


class Compose:
    """The transforms one after the other; its decisions are theirs, in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __repr__(self):
        return "Compose(\n" + "".join(f"    {transform!r}\n" for transform in self.transforms) + ")"

    def decide(self, rng, shape):
        decisions = []
        for transform in self.transforms:
            decisions.append(transform.decide(rng, shape))
            shape = transform.output_shape(shape)
        return decisions

    def apply(self, xp, batch, decisions):
        for transform, decision in zip(self.transforms, decisions):
            batch = transform.apply(xp, batch, decision)
        return batch

    def output_shape(self, shape):
        for transform in self.transforms:
            shape = transform.output_shape(shape)
        return shape


class RandomHorizontalFlip:
    """Each image mirrored left to right with probability ``p``."""

    def __init__(self, p=0.5):
        self.p = p

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"

    def decide(self, rng, shape):
        """Whether each image is flipped."""
        return rng.random(shape[0]) < self.p

    def apply(self, xp, batch, flips):
        flips = xp.asarray(np.asarray(flips).reshape(-1, *(1,) * (batch.ndim - 1)))
        return xp.where(flips, batch[..., ::-1], batch)

    def output_shape(self, shape):
        return shape


class RandomCrop:
    """torchvision's RandomCrop: pad (``padding``: an int, (left/right, top/bottom) or (left, top, right,
    bottom); ``pad_if_needed`` up to ``size``) with ``fill`` or by ``padding_mode``, then cut a window of
    ``size`` at a random place in each image."""

    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant"):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if len(self.size) != 2 or min(self.size) <= 0:
            raise ValueError(f"RandomCrop: size must be a positive int or (height, width), got {size!r}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"RandomCrop: padding_mode must be one of {', '.join(_PADDING_MODES)}, got "
                             f"{padding_mode!r}")
        self.padding, self.pad_if_needed, self.fill, self.padding_mode = padding, pad_if_needed, fill, padding_mode
        self._sides = _sides(padding)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"

    def _padding(self, height, width):
        """((top, bottom), (left, right)) for an image of this size."""
        left, top, right, bottom = self._sides
        height, width = height + top + bottom, width + left + right
        if self.pad_if_needed and width < self.size[1]:
            left, right = left + self.size[1] - width, right + self.size[1] - width
        if self.pad_if_needed and height < self.size[0]:
            top, bottom = top + self.size[0] - height, bottom + self.size[0] - height
        return (top, bottom), (left, right)

    def decide(self, rng, shape):
        """Each window's top-left corner in the padded image, (images, 2)."""
        (top, bottom), (left, right) = self._padding(*shape[-2:])
        height, width = shape[-2] + top + bottom, shape[-1] + left + right
        if height < self.size[0] or width < self.size[1]:
            raise ValueError(f"Required crop size {self.size} is larger than input image size {(height, width)}")
        return np.stack([rng.integers(0, height - self.size[0] + 1, shape[0]),
                         rng.integers(0, width - self.size[1] + 1, shape[0])], axis=1)

    def apply(self, xp, batch, corners):
        padding = ((0, 0),) * (batch.ndim - 2) + self._padding(*batch.shape[-2:])
        options = {"constant_values": self.fill} if self.padding_mode == "constant" else {}
        padded = xp.pad(batch, padding, mode=self.padding_mode, **options) if any(map(any, padding)) else batch
        corners = np.asarray(corners)
        rows = corners[:, 0, None] + np.arange(self.size[0])  # (images, height)
        cols = corners[:, 1, None] + np.arange(self.size[1])
        images = np.arange(len(corners))[:, None, None, None]
        channels = np.arange(batch.shape[1])[None, :, None, None]
        index = tuple(xp.asarray(i) for i in (images, channels, rows[:, None, :, None], cols[:, None, None, :]))
        return padded[index]

    def output_shape(self, shape):
        return tuple(shape[:-2]) + self.size


def take(decisions, rows):
    """The decisions of some images (a slice): a data-parallel worker's share of a global batch's."""
    if isinstance(decisions, list):
        return [take(decision, rows) for decision in decisions]
    return decisions[rows]


def _sides(padding):
    """(left, top, right, bottom) from torchvision's forms of ``padding``."""
    if padding is None:
        return 0, 0, 0, 0
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(padding)
    if len(padding) == 2:
        return padding * 2
    if len(padding) == 4:
        return padding
    raise ValueError(f"RandomCrop: padding must be an int or a sequence of 2 or 4 ints, got {padding!r}")
