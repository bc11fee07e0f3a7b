"""The general numba kernels (``backends/numba/general``, the max-pool backward of ``pooling``,
the cross-entropy of ``loss_sgd``) called directly, against torch autograd.

They take what the backends will pass them: C-ordered arrays, parsed pairs, padding as
top and left offsets (the output shape carries the rest).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import TOLERANCE, relative_error
from scratchnet import functional
from scratchnet.backends.numba import general as numba_general, loss_sgd, pooling
from test_conv2d_features import FEATURES as CONV_FEATURES, conv_case
from test_cross_entropy_features import FEATURES as LOSS_FEATURES, loss_case, loss_inputs
from test_max_pool2d_features import FEATURES as POOL_FEATURES, pool_case, pool_input

CASES = 12
DTYPES = [np.float32, np.float64]
KERNELS = "numba general kernels"


def _check(record, what, dtype, pairs, config):
    for label, got, want in pairs:
        error = relative_error(got, want)
        record((what, KERNELS, np.dtype(dtype).name), error)
        assert error <= TOLERANCE[dtype], f"{what} {label} [{config}]: relative error {error:.3e}"


def _ids(features):
    return [pytest.param(f, i, id=f"{f.replace(' ', '_')}-{i}") for f in features for i in range(CASES)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("feature, index", _ids(CONV_FEATURES))
def test_general_conv2d_kernels_match_torch(dtype, feature, index, error_report):
    case = conv_case(feature, index)
    rng = np.random.default_rng(index)
    x = rng.standard_normal((case["n"], case["in_channels"], case["h"], case["w"])).astype(dtype)
    weight = rng.standard_normal((case["out_channels"], case["in_channels"] // case["groups"]) + case["kernel_size"])
    weight = weight.astype(dtype)
    bias = rng.standard_normal(case["out_channels"]).astype(dtype) if case["bias"] else np.empty(0, dtype)
    args = functional.Conv2dArguments(weight.shape, case["stride"], case["padding"], case["dilation"], case["groups"],
                                      "test")
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    y_t = F.conv2d(tensors[0], tensors[1], tensors[2] if case["bias"] else None, case["stride"], case["padding"],
                   case["dilation"], case["groups"])
    grad_y = rng.standard_normal(tuple(y_t.shape)).astype(dtype)
    y_t.backward(torch.tensor(grad_y))

    geometry = (*args.stride, args.padding[0][0], args.padding[1][0], *args.dilation, args.groups)
    y = np.empty(tuple(y_t.shape), dtype=dtype)
    numba_general.conv2d_forward.parallel(x, weight, bias, *geometry, y)
    grad_weight, grad_bias = np.zeros_like(weight), np.zeros_like(bias)
    numba_general.conv2d_add_param_grads.parallel(x, grad_y, *geometry, grad_weight, grad_bias)
    grad_x = np.empty_like(x)
    numba_general.conv2d_grad_input.parallel(weight, grad_y, *geometry, grad_x)
    pairs = [("forward", y, y_t.detach().numpy()), ("grad input", grad_x, tensors[0].grad.numpy()),
             ("grad weight", grad_weight, tensors[1].grad.numpy())]
    if case["bias"]:
        pairs.append(("grad bias", grad_bias, tensors[2].grad.numpy()))
    _check(error_report, f"conv2d {feature}", dtype, pairs, str(case))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("feature, index", _ids(POOL_FEATURES))
def test_general_max_pool2d_kernels_match_torch(dtype, feature, index, error_report):
    case = pool_case(feature, index)
    x = pool_input(feature, case, index, dtype)
    x = x[None] if case["unbatched"] else x
    options = {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    args = functional.MaxPool2dArguments(*options.values(), "test")
    x_t = torch.tensor(x, requires_grad=True)
    y_t, indices_t = F.max_pool2d(x_t, return_indices=True, **options)
    grad_y = np.random.default_rng(index).standard_normal(tuple(y_t.shape)).astype(dtype)
    y_t.backward(torch.tensor(grad_y))

    y, indices = np.empty(tuple(y_t.shape), dtype=dtype), np.empty(tuple(y_t.shape), dtype=np.int64)
    numba_general.max_pool2d_forward.parallel(x, *args.kernel, *args.stride, *args.padding, *args.dilation, y, indices)
    grad_x = np.empty_like(x)
    pooling.max_pool2d_backward.parallel(grad_y, indices, grad_x)
    np.testing.assert_array_equal(indices, indices_t.numpy(), err_msg=str(case))
    _check(error_report, f"max_pool2d {feature}", dtype,
           [("forward", y, y_t.detach().numpy()), ("grad input", grad_x, x_t.grad.numpy())], str(case))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("feature, index", _ids(LOSS_FEATURES))
def test_general_cross_entropy_kernels_match_torch(dtype, feature, index, error_report):
    case = loss_case(feature, index)
    logits, target, weight = loss_inputs(case, dtype)
    logits_t = torch.tensor(logits, requires_grad=True)
    loss_t = F.cross_entropy(logits_t, torch.tensor(target), None if weight is None else torch.tensor(weight),
                             ignore_index=case["ignore_index"], reduction=case["reduction"],
                             label_smoothing=case["label_smoothing"])
    upstream = np.random.default_rng(index).standard_normal(tuple(loss_t.shape)).astype(dtype)
    loss_t.backward(torch.tensor(upstream) if case["reduction"] == "none" else None)

    parsed = functional.CrossEntropyArguments(weight, case["ignore_index"], case["reduction"],
                                              case["label_smoothing"], "test")
    logit_rows, target_rows = parsed.rows(logits, target, case["probabilities"])
    logit_rows = np.ascontiguousarray(logit_rows)
    rows, classes = logit_rows.shape
    probabilities = np.ascontiguousarray(target_rows) if case["probabilities"] else np.empty((0, classes), dtype)
    labels = np.empty(0, np.int64) if case["probabilities"] else np.ascontiguousarray(target_rows, dtype=np.int64)
    class_weight = np.ones(classes, dtype) if weight is None else weight
    probs, coefficients = np.empty_like(logit_rows), np.empty_like(logit_rows)
    row_loss = np.empty(rows, dtype)
    total, denominator = loss_sgd.cross_entropy_forward(
        logit_rows, labels, probabilities, class_weight, case["ignore_index"], dtype(case["label_smoothing"]), probs,
        coefficients, row_loss)
    if case["reduction"] == "none":
        loss, scale = parsed.unrows(row_loss, logits.shape), np.reshape(upstream, rows)
    else:
        divisor = np.float64(denominator if case["reduction"] == "mean" else 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):  # every target ignored: 0 / 0, as torch
            loss, scale = total / divisor, np.full(rows, 1 / divisor)
    grad_rows = np.empty_like(logit_rows)
    loss_sgd.cross_entropy_backward(probs, coefficients, scale.astype(dtype), grad_rows)
    _check(error_report, f"cross_entropy {feature}", dtype,
           [("loss", loss, loss_t.detach().numpy()),
            ("grad logits", parsed.unrows(grad_rows, logits.shape), logits_t.grad.numpy())], str(case))

