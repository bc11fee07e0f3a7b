"""torch.optim.SGD."""

import numpy as np

from scratchnet.optim.optimizer import Optimizer


class SGD(Optimizer):
    """torch.optim.SGD: ``b = momentum*b + (1-dampening)*g`` (b starts as the first g), ``p -= lr*b``.

    With ``nesterov=True`` the step is ``p -= lr*(g + momentum*b)``; ``weight_decay`` adds
    ``weight_decay*p`` to the gradient first. Each group's options are its own; its momentum
    buffers are the state's ``momentum_buffer``.
    """

    # Its update reads no host value that changes from step to step, so a CUDA graph may replay it
    # (while no schedule changes the rate).
    replayable = True

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _check_options(self, group):
        if group["lr"] < 0 or group["momentum"] < 0 or group["weight_decay"] < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {group['lr']}, "
                             f"{group['momentum']}, {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum and zero dampening")

    def step(self):
        for group in self.param_groups:
            params, momentum = group["params"], group["momentum"]
            first = momentum != 0 and "momentum_buffer" not in self.state.get(params[0], {})
            if first:
                for param in params:
                    self.state[param] = {"momentum_buffer": np.zeros_like(param.data)}
            # One fused update per backend (normally one per group): per-call overhead dominates small nets.
            by_backend = {}
            for param in params:
                buf = self.state[param]["momentum_buffer"] if momentum != 0 else param.grad
                arrays = by_backend.setdefault(param.backend, ([], [], []))
                arrays[0].append(param.data)
                arrays[1].append(param.grad)
                arrays[2].append(buf)
            for backend, (datas, grads, bufs) in by_backend.items():
                backend.sgd_steps(datas, grads, bufs, group["lr"], momentum, group["dampening"],
                                  group["weight_decay"], group["nesterov"], first)
