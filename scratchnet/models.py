"""The network of PyTorch's "Training a Classifier" tutorial."""

from collections import OrderedDict

from scratchnet import nn
from scratchnet.random import default_generator


class Net(nn.Sequential):
    """conv1(3->6, 5) -> ReLU -> pool 2 -> conv2(6->16, 5) -> ReLU -> pool 2 -> flatten -> fc1 400->120
    -> ReLU -> fc2 120->84 -> ReLU -> fc3 84->10: the tutorial's layers, in its order.

    ``width`` multiplies both conv channel counts (the tutorial's "make it wider"
    exercise). Parameter names and shapes equal the tutorial's ``Net``, so a
    ``state_dict`` copies across frameworks both ways. The layers are plain; a backend's
    ``step.compile_step`` fuses conv -> ReLU -> pool and linear -> ReLU when it trains them.
    """

    def __init__(self, width=1, seed=None):
        if not isinstance(width, int) or width <= 0:
            raise ValueError(f"Net: width must be a positive int, got {width!r}")
        rng = default_generator(seed)
        c1, c2 = 6 * width, 16 * width
        # Created in the tutorial's order, so one seed gives the same weights as ever.
        conv1, conv2 = nn.Conv2d(3, c1, 5, seed=rng), nn.Conv2d(c1, c2, 5, seed=rng)
        fc1, fc2, fc3 = nn.Linear(c2 * 5 * 5, 120, seed=rng), nn.Linear(120, 84, seed=rng), nn.Linear(84, 10, seed=rng)
        # The tutorial reuses one pool; ours are two, as each layer keeps what its backward needs.
        super().__init__(OrderedDict([
            ("conv1", conv1), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2, 2)),
            ("conv2", conv2), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2, 2)),
            ("flatten", nn.Flatten()),
            ("fc1", fc1), ("relu3", nn.ReLU()),
            ("fc2", fc2), ("relu4", nn.ReLU()),
            ("fc3", fc3),
        ]))
        self.width = width
