"""One harness for every comparison with torch: run both, compare forward and gradients."""

import numpy as np
import torch

# Relative to the largest magnitude of the torch result (per-dtype tolerances).
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}


def relative_error(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != torch's {want.shape}"
    scale = max(np.abs(want).max(initial=0.0), 1e-30)
    return np.abs(got - want).max(initial=0.0) / scale


def to_host(backend, array):
    return None if array is None else backend.to_numpy(array)


def check_module_against_torch(module, torch_fn, x, backend, dtype, record, what, extra_params=()):
    """Forward and backward of ``module`` against ``torch_fn`` under autograd.

    ``torch_fn(x_t, *param_tensors)`` is the torch computation; ``extra_params``
    are (name, scratchnet Parameter) pairs whose gradients are compared too.
    Returns the largest relative error (and asserts it is within tolerance).
    """
    rng = np.random.default_rng(x.size)
    x_t = torch.tensor(x, requires_grad=True)
    params_t = [torch.tensor(backend.to_numpy(p.data), requires_grad=True) for _, p in extra_params]
    y_t = torch_fn(x_t, *params_t)
    grad_y = rng.standard_normal(tuple(y_t.shape)).astype(dtype)
    y_t.backward(torch.tensor(grad_y))

    module.zero_grad()
    y = module(backend.asarray(x))
    grad_x = module.backward(backend.asarray(grad_y))

    pairs = [("forward", to_host(backend, y), y_t.detach().numpy()),
             ("grad input", to_host(backend, grad_x), x_t.grad.numpy())]
    pairs += [(f"grad {name}", to_host(backend, p.grad), p_t.grad.numpy())
              for (name, p), p_t in zip(extra_params, params_t)]
    tolerance = TOLERANCE[dtype]
    worst = 0.0
    for label, got, want in pairs:
        error = relative_error(got, want)
        record((what, backend.name, np.dtype(dtype).name), error)
        assert error <= tolerance, f"{what} {label}: relative error {error:.3e} > {tolerance:g}"
        worst = max(worst, error)
    return worst
