"""nn.Linear on any leading axes and unbatched vectors, nn.ReLU on any layout and on NaN / +-inf,
against torch autograd on every backend."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import TOLERANCE, check_module_against_torch, layouts_for, relative_error
from scratchnet import functional, nn

CASES = 12
DTYPES = [np.float32, np.float64]


def linear_case(index):
    rng = np.random.default_rng([101, index])
    leading = tuple(int(v) for v in rng.integers(1, 4, size=index % 4))  # () is an unbatched vector
    return dict(leading=leading, in_features=int(rng.integers(1, 20)), out_features=int(rng.integers(1, 20)),
                bias=bool(index % 3))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("index", range(CASES))
def test_linear_on_any_leading_axes_matches_torch(backend, dtype, index, error_report):
    case = linear_case(index)
    linear = nn.Linear(case["in_features"], case["out_features"], bias=case["bias"], seed=index)
    linear = linear.to(backend.name).to(dtype)
    x = np.random.default_rng(index).standard_normal(case["leading"] + (case["in_features"],)).astype(dtype)
    params = [("weight", linear.weight)] + ([("bias", linear.bias)] if case["bias"] else [])
    what = "linear unbatched" if not case["leading"] else "linear leading axes"
    check_module_against_torch(linear, F.linear, x, backend, dtype, error_report, what, params, config=str(case),
                               layouts=layouts_for(index))


@pytest.mark.parametrize("index", range(4))
def test_functional_linear_matches_torch(index):
    case = linear_case(index)
    rng = np.random.default_rng(index)
    x = rng.standard_normal(case["leading"] + (case["in_features"],))
    weight = rng.standard_normal((case["out_features"], case["in_features"]))
    bias = rng.standard_normal(case["out_features"]) if case["bias"] else None
    want = F.linear(torch.tensor(x), torch.tensor(weight), None if bias is None else torch.tensor(bias))
    assert relative_error(functional.linear(x, weight, bias), want.numpy()) <= TOLERANCE[np.float64], str(case)


def test_linear_refuses_wrong_feature_count_naming_layer_and_shape(backend):
    with pytest.raises(ValueError, match=r"Linear\(in_features=4.*\(2, 3, 5\)"):
        nn.Linear(4, 2).to(backend.name)(backend.asarray(np.zeros((2, 3, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"linear.*4 input features.*\(3,\)"):
        functional.linear(np.zeros(3), np.zeros((2, 4)))


def relu_input(index, dtype):
    rng = np.random.default_rng([103, index])
    shape = tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 5))))
    x = rng.standard_normal(shape).astype(dtype)
    x[x == 0] = 1  # ReLU's derivative at exactly 0 is a convention; the special-values test covers it
    if index % 2:
        specials = np.array([np.nan, np.inf, -np.inf, 0.0], dtype=dtype)
        flat = x.reshape(-1)
        picks = rng.choice(flat.size, size=max(1, flat.size // 3), replace=False)
        flat[picks] = rng.choice(specials, size=picks.size)
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("index", range(CASES))
def test_relu_on_any_layout_and_special_values_matches_torch(backend, dtype, index, error_report):
    x = relu_input(index, dtype)
    relu = nn.ReLU().to(backend.name).to(dtype)
    what = "relu nan and inf" if index % 2 else "relu layouts"
    check_module_against_torch(relu, F.relu, x, backend, dtype, error_report, what, config=f"shape={x.shape}",
                               layouts=layouts_for(index))


def test_relu_keeps_nan_and_passes_its_gradient_as_torch(backend):
    x = np.array([np.nan, -1.0, 0.0, 2.0, np.inf, -np.inf])
    relu = nn.ReLU().to(backend.name)
    y = backend.to_numpy(relu(backend.asarray(x)))
    grad = backend.to_numpy(relu.backward(backend.asarray(np.full(6, 3.0))))
    np.testing.assert_array_equal(y, [np.nan, 0, 0, 2, np.inf, 0])
    np.testing.assert_array_equal(grad, [3, 0, 0, 3, 3, 0])  # torch: the gradient passes where y is not <= 0


def test_relu_of_a_channels_last_view_is_right(backend):
    """The view from the bug report: errors of 2.0 when the kernel wrote through a copy."""
    channels_last = np.random.default_rng(0).standard_normal((2, 4, 5, 3))
    x = backend.xp.asarray(channels_last).transpose(0, 3, 1, 2)
    got = backend.to_numpy(nn.ReLU().to(backend.name)(x))
    np.testing.assert_array_equal(got, np.maximum(channels_last.transpose(0, 3, 1, 2), 0))


def test_relu_of_a_0d_array_is_0d_and_a_linear_without_input_features_is_its_bias(backend):
    """Two gaps torch's own samples found: both now as torch."""
    relu = nn.ReLU().to(backend.name)
    y = relu(backend.asarray(np.array(-2.0)))
    assert y.shape == () and relu.backward(backend.asarray(np.array(1.0))).shape == ()
    torch.manual_seed(0)
    theirs = torch.nn.Linear(0, 3)
    ours = nn.Linear(0, 3).to(backend.name)
    np.testing.assert_array_equal(backend.to_numpy(ours.bias.data), theirs.bias.detach().numpy())  # zeros
    x = torch.zeros(2, 0, requires_grad=True)
    theirs(x).backward(torch.ones(2, 3))
    y = ours(backend.asarray(np.zeros((2, 0), dtype=np.float32)))
    grad_x = ours.backward(backend.asarray(np.ones((2, 3), dtype=np.float32)))
    np.testing.assert_array_equal(backend.to_numpy(y), theirs(x).detach().numpy())
    assert grad_x.shape == (2, 0) and backend.to_numpy(ours.weight.grad).shape == (3, 0)
    np.testing.assert_array_equal(backend.to_numpy(ours.bias.grad), theirs.bias.grad.numpy())
