"""scratchnet: a from-scratch CNN engine that trains PyTorch's CIFAR-10 tutorial network."""

from scratchnet import backends, models, nn, optim
from scratchnet.random import manual_seed

__version__ = "0.1.0"
__all__ = ["backends", "models", "nn", "optim", "manual_seed", "__version__"]
