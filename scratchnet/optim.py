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

    def state_dict(self):
        """The momentum buffers as host arrays, or None before the first step (as torch: no buffer yet)."""
        if self.momentum_buffers[0] is None:
            return {"momentum_buffers": None}
        return {"momentum_buffers": [param.backend.to_numpy(buf).copy()
                                     for param, buf in zip(self.params, self.momentum_buffers)]}

    def load_state_dict(self, state):
        """Restore ``state_dict()``'s buffers onto each parameter's backend; None means the next step is the first."""
        buffers = state["momentum_buffers"]
        if buffers is None:
            self.momentum_buffers = [None] * len(self.params)
            return
        if len(buffers) != len(self.params):
            raise ValueError(f"SGD.load_state_dict: {len(buffers)} momentum buffers for {len(self.params)} parameters")
        restored = []
        for index, (param, buf) in enumerate(zip(self.params, buffers)):
            if buf.shape != param.shape:
                raise ValueError(f"SGD.load_state_dict: buffer {index} has shape {buf.shape}, expected {param.shape}")
            restored.append(param.backend.asarray(np.asarray(buf, dtype=param.data.dtype)))
        self.momentum_buffers = restored

    def zero_grad(self):
        for param in self.params:
            param.grad.fill(0)

    def step(self):
        first = self.momentum != 0 and self.momentum_buffers[0] is None
        if first:
            self.momentum_buffers = [np.zeros_like(param.data) for param in self.params]
        # One fused update per backend (normally one for the whole model): per-call overhead dominates small nets.
        by_backend = {}
        for index, param in enumerate(self.params):
            buf = self.momentum_buffers[index] if self.momentum != 0 else param.grad
            arrays = by_backend.setdefault(param.backend, ([], [], []))
            arrays[0].append(param.data)
            arrays[1].append(param.grad)
            arrays[2].append(buf)
        for backend, (datas, grads, bufs) in by_backend.items():
            backend.sgd_steps(datas, grads, bufs, self.lr, self.momentum, self.dampening,
                              self.weight_decay, self.nesterov, first)
