"""nn.MaxPool2d and functional.max_pool2d with every torch argument, against torch autograd, on every backend.

Outputs, input gradients and the returned indices must equal torch's, including at ties
(first maximum in scan order), NaN (the last NaN in the window) and windows of -inf.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import check_module_against_torch, layouts_for
from scratchnet import functional, nn

CASES = 12
DTYPES = [np.float32, np.float64]
FEATURES = ("kernel and stride pairs", "padding", "dilation", "ceil_mode", "unbatched", "ties", "nan and inf",
            "combined")


def pool_case(feature, index):
    rng = np.random.default_rng([FEATURES.index(feature), index])
    kernel = tuple(int(v) for v in rng.integers(1, 5, size=2))
    stride = None if index % 3 == 0 else tuple(int(v) for v in rng.integers(1, 4, size=2))
    padding, dilation, ceil_mode = (0, 0), (1, 1), False
    if feature in ("padding", "combined", "nan and inf"):
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
    if feature in ("dilation", "combined"):
        dilation = tuple(int(v) for v in rng.integers(1, 4, size=2))
    if feature in ("ceil_mode", "combined", "ties"):
        ceil_mode = True
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    h, w = (int(r + rng.integers(0, 7)) for r in reach)
    return dict(n=int(rng.integers(1, 4)), c=int(rng.integers(1, 4)), h=h, w=w, kernel_size=kernel, stride=stride,
                padding=padding, dilation=dilation, ceil_mode=ceil_mode, unbatched=feature == "unbatched")


def pool_input(feature, case, index, dtype):
    rng = np.random.default_rng(index)
    shape = (case["c"], case["h"], case["w"]) if case["unbatched"] else (case["n"], case["c"], case["h"], case["w"])
    size = int(np.prod(shape))
    if feature == "ties":
        return rng.integers(0, 3, size=shape).astype(dtype)  # many equal maxima per window
    # Distinct values elsewhere, so torch's argmax is unambiguous.
    x = (rng.permutation(size).reshape(shape) / size - 0.5).astype(dtype)
    if feature == "nan and inf":
        specials = np.array([np.nan, np.inf, -np.inf], dtype=dtype)
        flat = x.reshape(-1)
        flat[rng.choice(size, size=max(1, size // 4), replace=False)] = rng.choice(specials, size=max(1, size // 4))
    return x


def _case_ids():
    return [pytest.param(feature, index, id=f"{feature.replace(' ', '_')}-{index}")
            for feature in FEATURES for index in range(CASES)]


def _options(case):
    return {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("feature, index", _case_ids())
def test_max_pool2d_feature_matches_torch(backend, dtype, feature, index, error_report):
    case = pool_case(feature, index)
    x = pool_input(feature, case, index, dtype)
    pool = nn.MaxPool2d(return_indices=True, **_options(case)).to(backend.name).to(dtype)
    check_module_against_torch(pool, lambda x_t: F.max_pool2d(x_t, return_indices=True, **_options(case)), x,
                               backend, dtype, error_report, f"max_pool2d {feature}", config=str(case),
                               layouts=layouts_for(index))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("feature", ["ties", "nan and inf"])
def test_2x2_windows_at_stride_2_match_torch(backend, dtype, feature, error_report):
    """The next chapter's pool (a kernel of its own on numba), on odd sizes and on a batch that threads."""
    case = dict(n=13, c=3, h=9, w=11, kernel_size=2, stride=None, padding=(0, 0), dilation=(1, 1), ceil_mode=False,
                unbatched=False)
    x = pool_input(feature, case, 7, dtype)
    pool = nn.MaxPool2d(2, return_indices=True).to(backend.name).to(dtype)
    check_module_against_torch(pool, lambda x_t: F.max_pool2d(x_t, 2, return_indices=True), x, backend, dtype,
                               error_report, f"max_pool2d 2x2 {feature}", config=str(case))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_max_pool2d_without_indices_returns_the_output_only(backend, dtype, error_report):
    case = pool_case("combined", 0)
    x = pool_input("combined", case, 0, dtype)
    pool = nn.MaxPool2d(**_options(case)).to(backend.name).to(dtype)
    check_module_against_torch(pool, lambda x_t: F.max_pool2d(x_t, **_options(case)), x, backend, dtype,
                               error_report, "max_pool2d combined", config=str(case))


@pytest.mark.parametrize("feature, index", [p for p in _case_ids() if p.values[1] < 3])
def test_functional_max_pool2d_matches_torch(feature, index):
    case = pool_case(feature, index)
    x = pool_input(feature, case, index, np.float64)
    y, indices = functional.max_pool2d(x, return_indices=True, **_options(case))
    y_t, indices_t = F.max_pool2d(torch.tensor(x), return_indices=True, **_options(case))
    np.testing.assert_array_equal(y, y_t.numpy(), err_msg=str(case))
    np.testing.assert_array_equal(indices, indices_t.numpy(), err_msg=str(case))
    assert isinstance(functional.max_pool2d(x, **_options(case)), np.ndarray)


@pytest.mark.parametrize("make, message", [
    (lambda: nn.MaxPool2d(3, padding=2), r"MaxPool2d.*padding=2.*half the kernel.*kernel_size=3"),
    (lambda: nn.MaxPool2d((2, 4), padding=(1, 3)), r"MaxPool2d.*half the kernel"),
    (lambda: nn.MaxPool2d(0), r"MaxPool2d.*kernel_size must be positive"),
    (lambda: nn.MaxPool2d(2, stride=(1, 0)), r"MaxPool2d.*stride must be positive"),
    (lambda: nn.MaxPool2d(2, dilation=0), r"MaxPool2d.*dilation must be positive"),
    (lambda: nn.MaxPool2d((2, 2, 2)), r"MaxPool2d.*kernel_size.*\(2, 2, 2\)"),
], ids=["padding_over_half", "padding_pair_over_half", "kernel_0", "stride_0", "dilation_0", "kernel_triple"])
def test_max_pool2d_refuses_what_torch_refuses(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_max_pool2d_refuses_too_small_input_naming_layer_and_shape(backend):
    pool = nn.MaxPool2d(3, dilation=3).to(backend.name)
    with pytest.raises(ValueError, match=r"MaxPool2d.*\(1, 2, 6, 9\).*smaller than the kernel"):
        pool(backend.asarray(np.zeros((1, 2, 6, 9), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"MaxPool2d.*\(6, 9\)"):
        pool(backend.asarray(np.zeros((6, 9), dtype=np.float32)))
