"""Optimizers with torch.optim semantics."""

import numpy as np


class SGD:
    """torch.optim.SGD: ``b = momentum*b + (1-dampening)*g`` (b starts as the first g), ``p -= lr*b``.

    With ``nesterov=True`` the step is ``p -= lr*(g + momentum*b)``; ``weight_decay``
    adds ``weight_decay*p`` to the gradient first. Each parameter's update runs on
    the backend its arrays live on.
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: got an empty parameter list")
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum and zero dampening")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov
        self.momentum_buffers = [None] * len(self.params)

    def zero_grad(self):
        for param in self.params:
            param.grad[...] = 0

    def step(self):
        for index, param in enumerate(self.params):
            first = self.momentum_buffers[index] is None
            if first and self.momentum != 0:
                self.momentum_buffers[index] = np.zeros_like(param.data)
            buf = self.momentum_buffers[index] if self.momentum != 0 else param.grad
            param.backend.sgd_step(
                param.data, param.grad, buf, self.lr, self.momentum, self.dampening,
                self.weight_decay, self.nesterov, first,
            )
