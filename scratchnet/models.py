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
        makers = {"conv": lambda args: nn.Conv2d(*args, seed=rng), "linear": lambda args: nn.Linear(*args, seed=rng),
                  "relu": lambda args: nn.ReLU(), "pool": lambda args: nn.MaxPool2d(*args),
                  "flatten": lambda args: nn.Flatten()}
        # Made in the layout's order, which is the tutorial's: one seed gives the same weights as ever.
        super().__init__(OrderedDict((name, makers[kind](args)) for name, kind, args in layout(width)))
        self.width = width


def layout(width):
    """The tutorial Net's layers at ``width`` as (name, kind, arguments), in order: the one description that
    builds the Net and gives its parameter shapes before anything is allocated. The tutorial reuses one
    pool; ours are two, as each layer keeps what its backward needs."""
    c1, c2 = 6 * width, 16 * width
    return [("conv1", "conv", (3, c1, 5)), ("relu1", "relu", ()), ("pool1", "pool", (2, 2)),
            ("conv2", "conv", (c1, c2, 5)), ("relu2", "relu", ()), ("pool2", "pool", (2, 2)),
            ("flatten", "flatten", ()),
            ("fc1", "linear", (c2 * 5 * 5, 120)), ("relu3", "relu", ()),
            ("fc2", "linear", (120, 84)), ("relu4", "relu", ()),
            ("fc3", "linear", (84, 10))]


def parameter_shapes(width):
    """The tutorial Net's parameter names and shapes at ``width``, from its layout: what weights are checked
    against before a Net of their size is built."""
    shapes = {}
    for name, kind, args in layout(width):
        if kind == "conv":
            in_channels, out_channels, kernel = args
            shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out_channels, in_channels, kernel, kernel), (out_channels,)
        elif kind == "linear":
            in_features, out_features = args
            shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out_features, in_features), (out_features,)
    return shapes
