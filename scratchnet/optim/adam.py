"""torch.optim.Adam and AdamW."""

import numpy as np

from scratchnet.optim.optimizer import Optimizer


class Adam(Optimizer):
    """torch.optim.Adam: moving averages of the gradient and its square, bias-corrected; ``weight_decay``
    adds ``weight_decay*p`` to the gradient (L2), ``amsgrad`` divides by the largest second moment so
    far, ``maximize`` ascends. The state holds ``step``, ``exp_avg``, ``exp_avg_sq`` (and
    ``max_exp_avg_sq``) per parameter, as torch's."""

    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def _check_options(self, group):
        name, (beta1, beta2) = type(self).__name__, group["betas"]
        if group["lr"] < 0:
            raise ValueError(f"{name}: invalid learning rate {group['lr']}")
        if group["eps"] < 0:
            raise ValueError(f"{name}: invalid epsilon value {group['eps']}")
        for index, beta in enumerate((beta1, beta2)):
            if not 0 <= beta < 1:
                raise ValueError(f"{name}: invalid beta parameter at index {index}: {beta}")
        if group["weight_decay"] < 0:
            raise ValueError(f"{name}: invalid weight_decay value {group['weight_decay']}")

    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
            for param in group["params"]:
                state = self.state.setdefault(param, {})
                if not state:
                    state.update(step=0.0, exp_avg=np.zeros_like(param.data), exp_avg_sq=np.zeros_like(param.data))
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = np.zeros_like(param.data)
                state["step"] += 1
                # The scalars torch computes in double precision, once per parameter.
                step = state["step"]
                decoupled = self.decoupled_weight_decay and weight_decay != 0
                param.backend.adam_step(
                    param.data, param.grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
                    weight_decay=0.0 if self.decoupled_weight_decay else weight_decay,
                    decay=1 - lr * weight_decay if decoupled else 1.0, beta1=beta1, beta2=beta2, eps=group["eps"],
                    step_size=lr / (1 - beta1 ** step), bias_correction2_sqrt=(1 - beta2 ** step) ** 0.5,
                    maximize=group["maximize"])


class AdamW(Adam):
    """torch.optim.AdamW: Adam whose weight decay shrinks the parameters, ``p *= 1 - lr*weight_decay``,
    instead of adding to the gradient."""

    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
