"""The fused backend ops against torch autograd: conv2d + ReLU + max-pool and linear + ReLU.

Called through the backend methods (the gradient contract: parameter gradients are added
into the given arrays, the input gradient is returned, or None without ``need_input_grad``).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import TOLERANCE, relative_error

CASES = 16
DTYPES = [np.float32, np.float64]


def block_case(index):
    """Random conv + pool geometry; case 0 is the tutorial's first block."""
    if index == 0:
        return dict(n=4, c=3, o=6, h=32, w=32, k=5, stride=1, padding=0, pool_kernel=2, pool_stride=2, bias=True)
    rng = np.random.default_rng([201, index])
    k, stride = int(rng.integers(1, 6)), int(rng.integers(1, 3))
    padding = int(rng.integers(0, (k - 1) // 2 + 1))  # at most half the kernel: every input size >= 1 works
    pool_kernel, pool_stride = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    conv_h, conv_w = (int(v) for v in rng.integers(pool_kernel, 9, size=2))
    return dict(n=int(rng.integers(1, 5)), c=int(rng.integers(1, 5)), o=int(rng.integers(1, 7)),
                h=(conv_h - 1) * stride + k - 2 * padding, w=(conv_w - 1) * stride + k - 2 * padding, k=k,
                stride=stride, padding=padding, pool_kernel=pool_kernel, pool_stride=pool_stride, bias=bool(index % 3))


def _record_and_check(record, what, backend, dtype, pairs, config):
    for label, got, want in pairs:
        error = relative_error(got, want)
        record((what, backend.name, np.dtype(dtype).name), error)
        assert error <= TOLERANCE[dtype], f"{what} {label} [{config}]: relative error {error:.3e}"


@pytest.mark.parametrize("need_input_grad", [True, False], ids=["grad_x", "no_grad_x"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("index", range(CASES))
def test_conv2d_relu_max_pool2d_matches_torch(backend, dtype, index, need_input_grad, error_report):
    case = block_case(index)
    rng = np.random.default_rng(index)
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"])).astype(dtype)
    weight = rng.standard_normal((case["o"], case["c"], case["k"], case["k"])).astype(dtype)
    bias = rng.standard_normal(case["o"]).astype(dtype) if case["bias"] else None
    tensors = [torch.tensor(a, requires_grad=True) if a is not None else None for a in (x, weight, bias)]
    y_t = F.max_pool2d(F.relu(F.conv2d(*tensors, stride=case["stride"], padding=case["padding"])),
                       case["pool_kernel"], case["pool_stride"])
    grad_y = rng.standard_normal(tuple(y_t.shape)).astype(dtype)
    y_t.backward(torch.tensor(grad_y))

    # Gradients are added into what is there already, as autograd accumulates. Copies: the numpy
    # backends' asarray returns a contiguous array itself, which the backward adds into.
    start_weight = rng.standard_normal(weight.shape).astype(dtype)
    start_bias = rng.standard_normal(case["o"]).astype(dtype)
    grad_weight = backend.asarray(start_weight.copy())
    grad_bias = backend.asarray(start_bias.copy()) if case["bias"] else None
    geometry = (case["stride"], case["padding"], case["pool_kernel"], case["pool_stride"])
    x_b, weight_b = backend.asarray(x), backend.asarray(weight)
    y, saved = backend.conv2d_relu_max_pool2d_forward(x_b, weight_b, None if bias is None else backend.asarray(bias),
                                                      *geometry)
    grad_x = backend.conv2d_relu_max_pool2d_backward(x_b, weight_b, saved, backend.asarray(grad_y), *geometry,
                                                     grad_weight, grad_bias, need_input_grad=need_input_grad)
    assert (grad_x is None) == (not need_input_grad), str(case)
    pairs = [("forward", backend.to_numpy(y), y_t.detach().numpy()),
             ("grad weight", backend.to_numpy(grad_weight) - start_weight, tensors[1].grad.numpy())]
    if need_input_grad:
        pairs.append(("grad input", backend.to_numpy(grad_x), tensors[0].grad.numpy()))
    if case["bias"]:
        pairs.append(("grad bias", backend.to_numpy(grad_bias) - start_bias, tensors[2].grad.numpy()))
    _record_and_check(error_report, "conv2d+relu+max_pool2d", backend, dtype, pairs, str(case))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("index", range(CASES))
def test_linear_relu_matches_torch(backend, dtype, index, error_report):
    rng = np.random.default_rng([203, index])
    n, fin, fout = int(rng.integers(1, 9)), int(rng.integers(1, 40)), int(rng.integers(1, 40))
    has_bias, need_input_grad = index % 4 != 0, index % 5 != 0
    x, weight = rng.standard_normal((n, fin)).astype(dtype), rng.standard_normal((fout, fin)).astype(dtype)
    bias = rng.standard_normal(fout).astype(dtype) if has_bias else None
    tensors = [torch.tensor(a, requires_grad=True) if a is not None else None for a in (x, weight, bias)]
    y_t = F.relu(F.linear(*tensors))
    grad_y = rng.standard_normal(tuple(y_t.shape)).astype(dtype)
    y_t.backward(torch.tensor(grad_y))

    start_weight, start_bias = rng.standard_normal(weight.shape).astype(dtype), rng.standard_normal(fout).astype(dtype)
    grad_weight = backend.asarray(start_weight.copy())
    grad_bias = backend.asarray(start_bias.copy()) if has_bias else None
    x_b, weight_b = backend.asarray(x), backend.asarray(weight)
    y = backend.linear_relu_forward(x_b, weight_b, None if bias is None else backend.asarray(bias))
    grad_x = backend.linear_relu_backward(x_b, weight_b, y, backend.asarray(grad_y), grad_weight, grad_bias,
                                          need_input_grad=need_input_grad)
    config = f"n={n} in={fin} out={fout} bias={has_bias} need_input_grad={need_input_grad}"
    assert (grad_x is None) == (not need_input_grad), config
    pairs = [("forward", backend.to_numpy(y), y_t.detach().numpy()),
             ("grad weight", backend.to_numpy(grad_weight) - start_weight, tensors[1].grad.numpy())]
    if need_input_grad:
        pairs.append(("grad input", backend.to_numpy(grad_x), tensors[0].grad.numpy()))
    if has_bias:
        pairs.append(("grad bias", backend.to_numpy(grad_bias) - start_bias, tensors[2].grad.numpy()))
    _record_and_check(error_report, "linear+relu", backend, dtype, pairs, config)
