"""Gradient clipping as torch.nn.utils: ``clip_grad_norm_`` and ``clip_grad_value_`` (reached as
``scratchnet.nn.utils``). Both change the ``.grad`` arrays in place on their backend."""

import math


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale every gradient by ``max_norm / (total_norm + 1e-6)`` where that is below 1, ``total_norm``
    being the ``norm_type``-norm of all gradients together (the norm of their norms, as torch).
    Returns ``total_norm`` as a 0-d array on the parameters' backend."""
    params = _as_list(parameters)
    if not params:
        raise ValueError("clip_grad_norm_: got no parameters")
    xp, norm_type = params[0].backend.xp, float(norm_type)
    norms = xp.stack([_vector_norm(xp, param.grad.reshape(-1), norm_type) for param in params])
    total_norm = _vector_norm(xp, norms, norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total_norm)):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so "
                           f"it cannot be clipped. To disable this error and scale the gradients by the non-finite "
                           f"norm anyway, set `error_if_nonfinite=False`")
    scale = xp.minimum(max_norm / (total_norm + 1e-6), 1.0).astype(total_norm.dtype)
    for param in params:
        param.grad *= scale
    return total_norm


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element into ``[-clip_value, clip_value]``."""
    for param in _as_list(parameters):
        param.backend.xp.clip(param.grad, -clip_value, clip_value, out=param.grad)


def _vector_norm(xp, values, norm_type):
    if norm_type == math.inf:
        return xp.max(xp.abs(values))
    if norm_type == -math.inf:
        return xp.min(xp.abs(values))
    if norm_type == 0:
        return xp.sum(values != 0).astype(values.dtype)
    if norm_type == 1:
        return xp.sum(xp.abs(values))
    if norm_type == 2:
        return xp.sqrt(xp.sum(values * values))
    return xp.sum(xp.abs(values) ** norm_type) ** (1 / norm_type)


def _as_list(parameters):
    return [parameters] if hasattr(parameters, "grad") else list(parameters)
