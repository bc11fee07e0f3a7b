"""One harness for every comparison with torch: run both, compare forward and gradients.

Every check runs each op on several memory layouts of its input and output gradient
(C-ordered, channels-last, Fortran-ordered, negative strides, a broadcast view, overlapping
strides) and asserts that no op wrote into what it was given.
"""

import numpy as np
import torch

# Relative to the largest magnitude of the torch result (per-dtype tolerances).
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}

LAYOUTS = ("contiguous", "channels_last", "fortran", "negative_strides", "broadcast", "overlapping")


def layouts_for(index):
    """The C-ordered layout and one other, rotating with the case index: every layout is
    covered across a test's cases at twice (not six times) the cost of one."""
    return LAYOUTS[0], LAYOUTS[1 + index % (len(LAYOUTS) - 1)]


def relative_error(got, want):
    """Largest error over the finite entries, relative to the largest finite torch magnitude.

    NaN and +-inf must sit exactly where torch has them; otherwise the error is infinite.
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != torch's {want.shape}"
    finite = np.isfinite(want)
    same_special = np.array_equal(got[~finite], want[~finite], equal_nan=True)
    if not same_special or not np.isfinite(got[finite]).all():
        return np.inf
    scale = max(np.abs(want[finite]).max(initial=0.0), 1e-30)
    return np.abs(got[finite] - want[finite]).max(initial=0.0) / scale


def to_host(backend, array):
    return None if array is None else backend.to_numpy(array)


def layout_view(xp, array, layout):
    """``array`` seen through ``layout``, or None where that layout means nothing for its rank.

    A broadcast or overlapping view repeats some values, so the torch side must be fed
    the view's values (``to_numpy`` of the result), not the original array's.
    """
    if layout == "contiguous":
        return array
    if array.ndim < 2:
        return xp.broadcast_to(array[:1], array.shape) if layout == "broadcast" and array.size > 1 else None
    if layout == "channels_last":
        return xp.moveaxis(xp.ascontiguousarray(xp.moveaxis(array, 1, -1)), -1, 1)
    if layout == "fortran":
        return xp.asfortranarray(array)
    if layout == "negative_strides":
        return xp.ascontiguousarray(array[..., ::-1])[..., ::-1]
    if layout == "broadcast":
        axis = next((k for k, size in enumerate(array.shape) if size > 1), 0)
        first = array[(slice(None),) * axis + (slice(0, 1),)]
        return xp.broadcast_to(first, array.shape)
    if layout == "overlapping":
        # The last two axes share one stride: element [..., i, j] is [..., 0, i + j] of a C-ordered copy.
        base = xp.ascontiguousarray(array)
        strides = base.strides[:-2] + (base.strides[-1], base.strides[-1])
        return xp.lib.stride_tricks.as_strided(base, shape=base.shape, strides=strides)
    raise ValueError(f"unknown layout {layout!r}")


def check_module_against_torch(module, torch_fn, x, backend, dtype, record, what, extra_params=(), config="",
                               layouts=LAYOUTS):
    """Forward and backward of ``module`` against ``torch_fn`` under autograd, once per layout.

    ``torch_fn(x_t, *param_tensors)`` is the torch computation; ``extra_params``
    are (name, scratchnet Parameter) pairs whose gradients are compared too. When
    ``torch_fn`` returns (output, indices), so must the module, and the indices must
    equal torch's. ``config`` names the case in every failure message. Returns the
    largest relative error (and asserts each is within tolerance).
    """
    worst = 0.0
    for layout in layouts:
        x_view = layout_view(backend.xp, backend.asarray(x), layout)
        if x_view is None:
            continue
        worst = max(worst, _check_layout(module, torch_fn, x_view, backend, dtype, record, what, extra_params,
                                         f"{config} layout={layout}", layout))
    return worst


def _check_layout(module, torch_fn, x, backend, dtype, record, what, extra_params, config, layout):
    x_host = backend.to_numpy(x).copy()
    x_t = torch.tensor(x_host, requires_grad=True)
    params_t = [torch.tensor(backend.to_numpy(p.data), requires_grad=True) for _, p in extra_params]
    params_before = [backend.to_numpy(p.data).copy() for _, p in extra_params]
    y_t = torch_fn(x_t, *params_t)
    indices_t = None
    if isinstance(y_t, tuple):
        y_t, indices_t = y_t
    rng = np.random.default_rng(x.size)
    grad_y = layout_view(backend.xp, backend.asarray(rng.standard_normal(tuple(y_t.shape)).astype(dtype)), layout)
    if grad_y is None:
        grad_y = backend.asarray(rng.standard_normal(tuple(y_t.shape)).astype(dtype))
    grad_y_host = backend.to_numpy(grad_y).copy()
    y_t.backward(torch.tensor(grad_y_host))

    module.zero_grad()
    y = module(x)
    if indices_t is not None:
        y, indices = y
        got_indices = backend.to_numpy(indices)
        assert got_indices.shape == tuple(indices_t.shape) and np.array_equal(got_indices, indices_t.numpy()), \
            f"{what} [{config}]: indices differ from torch's at {np.argwhere(got_indices != indices_t.numpy())[:5]}"
    grad_x = module.backward(grad_y)

    assert np.array_equal(backend.to_numpy(x), x_host, equal_nan=True), f"{what} [{config}]: the input was modified"
    assert np.array_equal(backend.to_numpy(grad_y), grad_y_host, equal_nan=True), \
        f"{what} [{config}]: the output gradient was modified"
    for (name, p), before in zip(extra_params, params_before):
        assert np.array_equal(backend.to_numpy(p.data), before), f"{what} [{config}]: {name} was modified"

    pairs = [("forward", to_host(backend, y), y_t.detach().numpy()),
             ("grad input", to_host(backend, grad_x), x_t.grad.numpy())]
    pairs += [(f"grad {name}", to_host(backend, p.grad), p_t.grad.numpy())
              for (name, p), p_t in zip(extra_params, params_t)]
    tolerance = TOLERANCE[dtype]
    worst = 0.0
    for label, got, want in pairs:
        error = relative_error(got, want)
        record((what, backend.name, np.dtype(dtype).name), error)
        assert error <= tolerance, f"{what} {label} [{config}]: relative error {error:.3e} > {tolerance:g}"
        worst = max(worst, error)
    return worst
