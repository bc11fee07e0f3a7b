"""The network of PyTorch's "Training a Classifier" tutorial."""

from scratchnet import nn
from scratchnet.random import default_generator


class Net(nn.Module):
    """conv(3->6, 5) -> ReLU -> pool 2 -> conv(6->16, 5) -> ReLU -> pool 2 -> fc 400->120->84->10.

    ``width`` multiplies both conv channel counts (the tutorial's "make it wider"
    exercise). Parameter names and shapes equal the tutorial's ``Net``, so a
    ``state_dict`` copies across frameworks both ways.
    """

    def __init__(self, width=1, seed=None):
        super().__init__()
        if not isinstance(width, int) or width <= 0:
            raise ValueError(f"Net: width must be a positive int, got {width!r}")
        rng = default_generator(seed)
        c1, c2 = 6 * width, 16 * width
        self.conv1 = nn.Conv2d(3, c1, 5, seed=rng)
        self.conv2 = nn.Conv2d(c1, c2, 5, seed=rng)
        self.fc1 = nn.Linear(c2 * 5 * 5, 120, seed=rng)
        self.fc2 = nn.Linear(120, 84, seed=rng)
        self.fc3 = nn.Linear(84, 10, seed=rng)
        # The input needs no gradient, so conv1 skips that work (as torch does).
        self.conv1.need_input_grad = False
        # The tutorial reuses one pool; ours are two so each keeps its own argmax for backward.
        # conv -> ReLU -> pool and fc -> ReLU run as fused layers (same results, fewer passes).
        self.layers = [
            nn.Conv2dReLUMaxPool2d(self.conv1, nn.MaxPool2d(2, 2)),
            nn.Conv2dReLUMaxPool2d(self.conv2, nn.MaxPool2d(2, 2)),
            nn.Flatten(),
            nn.LinearReLU(self.fc1),
            nn.LinearReLU(self.fc2),
            self.fc3,
        ]

    def __repr__(self):
        return f"Net(width={self.conv1.out_channels // 6})"

    def modules(self):
        yield self
        for layer in self.layers:
            yield from layer.modules()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, grad_out):
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
        return grad_out
