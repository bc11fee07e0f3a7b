"""nn.Conv2d and functional.conv2d with every torch argument, against torch autograd, on every backend.

Each feature has its own random cases (one pytest id per case); the summary's largest-error
table has one row per feature, backend and dtype.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import TOLERANCE, check_module_against_torch, layouts_for, relative_error
from scratchnet import functional, nn

CASES = 12
DTYPES = [np.float32, np.float64]
FEATURES = ("stride and padding pairs", "padding valid", "padding same", "dilation", "groups", "depthwise",
            "unbatched", "combined")


def conv_case(feature, index):
    """A random configuration exercising ``feature`` (small shapes keep the suite fast)."""
    rng = np.random.default_rng([FEATURES.index(feature), index])
    groups = 1
    if feature in ("groups", "combined"):
        groups = int(rng.integers(2, 4))
    per_group_in, per_group_out = (int(v) for v in rng.integers(1, 4, size=2))
    if feature == "depthwise":
        groups, per_group_in = int(rng.integers(2, 6)), 1
    kernel = tuple(int(v) for v in rng.integers(1, 5, size=2))
    stride, dilation, padding = (1, 1), (1, 1), (0, 0)
    if feature in ("stride and padding pairs", "combined", "depthwise"):
        stride = tuple(int(v) for v in rng.integers(1, 4, size=2))
        padding = tuple(int(v) for v in rng.integers(0, 3, size=2))
    if feature in ("dilation", "combined"):
        dilation = tuple(int(v) for v in rng.integers(1, 4, size=2))
    if feature == "padding valid":
        padding = "valid"
    if feature == "padding same":
        dilation = tuple(int(v) for v in rng.integers(1, 3, size=2))
        kernel = tuple(int(v) for v in rng.integers(1, 6, size=2))  # even sizes pad asymmetrically
        padding = "same"
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    h, w = (int(r + rng.integers(0, 6)) for r in reach)
    return dict(n=int(rng.integers(1, 4)), in_channels=groups * per_group_in, out_channels=groups * per_group_out,
                h=h, w=w, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                bias=bool(index % 4), unbatched=feature == "unbatched")


def _case_ids():
    return [pytest.param(feature, index, id=f"{feature.replace(' ', '_')}-{index}")
            for feature in FEATURES for index in range(CASES)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("feature, index", _case_ids())
def test_conv2d_feature_matches_torch(backend, dtype, feature, index, error_report):
    case = conv_case(feature, index)
    options = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    conv = nn.Conv2d(case["in_channels"], case["out_channels"], case["kernel_size"], bias=case["bias"], seed=index,
                     **options).to(backend.name).to(dtype)
    shape = (case["n"], case["in_channels"], case["h"], case["w"])
    x = np.random.default_rng(index).standard_normal(shape[1:] if case["unbatched"] else shape).astype(dtype)
    params = [("weight", conv.weight)] + ([("bias", conv.bias)] if case["bias"] else [])

    def torch_conv(x_t, weight, bias=None):
        return F.conv2d(x_t, weight, bias, **options)

    check_module_against_torch(conv, torch_conv, x, backend, dtype, error_report, f"conv2d {feature}", params,
                               config=str(case), layouts=layouts_for(index))


@pytest.mark.parametrize("feature, index", [p for p in _case_ids() if p.values[1] < 3])
def test_functional_conv2d_matches_torch(feature, index):
    case = conv_case(feature, index)
    rng = np.random.default_rng(index)
    shape = (case["n"], case["in_channels"], case["h"], case["w"])
    x = rng.standard_normal(shape[1:] if case["unbatched"] else shape)
    weight = rng.standard_normal((case["out_channels"], case["in_channels"] // case["groups"]) + case["kernel_size"])
    bias = rng.standard_normal(case["out_channels"]) if case["bias"] else None
    options = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    got = functional.conv2d(x, weight, bias, **options)
    want = F.conv2d(torch.tensor(x), torch.tensor(weight), None if bias is None else torch.tensor(bias), **options)
    assert relative_error(got, want.numpy()) <= TOLERANCE[np.float64], str(case)


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(2, 3, 3, stride=(2, 1), padding="same"), r"Conv2d.*padding='same'.*strided"),
    (lambda: nn.Conv2d(2, 3, 3, padding="full"), r"Conv2d.*padding.*'full'"),
    (lambda: nn.Conv2d(2, 3, 3, padding=(1, 2, 3)), r"Conv2d.*padding.*\(1, 2, 3\)"),
    (lambda: nn.Conv2d(2, 3, 3, padding=-1), r"Conv2d.*negative padding"),
    (lambda: nn.Conv2d(2, 3, 3, stride=0), r"Conv2d.*stride must be positive"),
    (lambda: nn.Conv2d(2, 3, 3, dilation=(1, 0)), r"Conv2d.*dilation must be positive"),
    (lambda: nn.Conv2d(4, 3, 3, groups=2), r"Conv2d.*out_channels=3.*groups=2"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), r"Conv2d.*in_channels=3.*groups=2"),
    (lambda: nn.Conv2d(2, 4, 3, groups=0), r"Conv2d.*groups"),
    (lambda: nn.Conv2d(2, 4, 3, padding_mode="reflect"), r"Conv2d.*padding_mode='reflect'"),
], ids=["same_strided", "unknown_string", "triple", "negative", "stride_0", "dilation_0", "groups_out",
        "groups_in", "groups_0", "padding_mode"])
def test_conv2d_refuses_what_torch_refuses(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_conv2d_refuses_bad_inputs_naming_layer_and_shapes(backend):
    conv = nn.Conv2d(4, 6, 3, dilation=2, groups=2).to(backend.name)
    with pytest.raises(ValueError, match=r"Conv2d.*4 input channels.*groups=2.*\(1, 6, 9, 9\)"):
        conv(backend.asarray(np.zeros((1, 6, 9, 9), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"Conv2d.*\(1, 4, 4, 9\).*smaller than the kernel 5x5"):
        conv(backend.asarray(np.zeros((1, 4, 4, 9), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"Conv2d.*\(4, 9\)"):
        conv(backend.asarray(np.zeros((4, 9), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"conv2d.*3 input channels.*\(3, 5, 5\)"):
        functional.conv2d(np.zeros((3, 5, 5)), np.zeros((2, 2, 3, 3)))
