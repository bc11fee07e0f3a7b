"""The next chapter's layers against torch autograd on every backend and both float types, through the
harness (memory layouts, inputs unchanged): activations, average and adaptive pooling, batch norm in
training and evaluation (running statistics too), dropout with its masks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchnet
from harness import check_module_against_torch, layouts_for, relative_error
from scratchnet import functional, nn

DTYPES = [np.float32, np.float64]
ACTIVATIONS = {
    "GELU": (lambda: nn.GELU(), lambda x: F.gelu(x)),
    "GELU-tanh": (lambda: nn.GELU("tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "SiLU": (lambda: nn.SiLU(), F.silu),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2)),
    "Tanh": (lambda: nn.Tanh(), torch.tanh),
    "Sigmoid": (lambda: nn.Sigmoid(), torch.sigmoid),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_matches_torch(backend, dtype, name, error_report):
    make, torch_fn = ACTIVATIONS[name]
    x = (np.random.default_rng(0).standard_normal((3, 4, 5, 6)) * 3).astype(dtype)
    x.reshape(-1)[:6] = [np.nan, 0, 20, -20, 1e-8, -1e-8]  # NaN stays NaN; large and tiny values
    module = make().to(backend.name)
    check_module_against_torch(module, torch_fn, x, backend, dtype, error_report, name.lower())
    assert module(backend.asarray(x)).dtype == dtype


def test_identity_and_the_functional_forms(backend):
    x = backend.asarray(np.random.default_rng(1).standard_normal((2, 3)))
    assert nn.Identity(54, unused=1)(x) is x
    for ours, theirs in [(functional.gelu, F.gelu), (functional.silu, F.silu), (functional.tanh, torch.tanh),
                         (functional.sigmoid, torch.sigmoid), (lambda a: functional.leaky_relu(a, 0.1),
                                                               lambda a: F.leaky_relu(a, 0.1))]:
        want = theirs(torch.tensor(backend.to_numpy(x))).numpy()
        assert relative_error(backend.to_numpy(ours(x)), want) <= 1e-12
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")


def _pool_case(index):
    rng = np.random.default_rng(100 + index)
    kernel = tuple(int(k) for k in rng.integers(1, 5, size=2))
    stride = tuple(int(s) for s in rng.integers(1, 4, size=2))
    padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
    return dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=bool(rng.integers(0, 2)),
                count_include_pad=bool(rng.integers(0, 2)), divisor_override=[None, None, 3][index % 3]), \
        (int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(5, 12)), int(rng.integers(5, 12)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("index", range(12))
def test_avg_pool2d_matches_torch(backend, dtype, index, error_report):
    options, shape = _pool_case(index)
    x = np.random.default_rng(index).standard_normal(shape[1:] if index % 5 == 4 else shape).astype(dtype)
    module = nn.AvgPool2d(**options).to(backend.name)
    check_module_against_torch(module, lambda t: F.avg_pool2d(t, **options), x, backend, dtype, error_report,
                               "avg_pool2d", config=str(options), layouts=layouts_for(index))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("output_size", [1, (3, 2), (5, None), 7])
def test_adaptive_pools_match_torch(backend, dtype, mode, output_size, error_report):
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 10)).astype(dtype)
    if mode == "avg":
        module, torch_fn = nn.AdaptiveAvgPool2d(output_size), lambda t: F.adaptive_avg_pool2d(t, output_size)
    else:
        x[0, 0, 0, :3] = np.nan  # NaN wins a window, as in torch
        module = nn.AdaptiveMaxPool2d(output_size, return_indices=True)
        torch_fn = lambda t: F.adaptive_max_pool2d(t, output_size, return_indices=True)  # noqa: E731
    check_module_against_torch(module.to(backend.name), torch_fn, x, backend, dtype, error_report,
                               f"adaptive_{mode}_pool2d", config=str(output_size), layouts=("contiguous", "fortran"))


def _batch_norm_pair(backend, dtype, cls, torch_cls, **options):
    ours, theirs = cls(5, **options).to(backend.name).to(dtype), torch_cls(5, **options).to(torch.float64
                                                                                               if dtype == np.float64 else torch.float32)
    if options.get("affine", True):
        rng = np.random.default_rng(3)
        weight, bias = rng.uniform(0.5, 2, 5).astype(dtype), rng.standard_normal(5).astype(dtype)
        ours.weight.data[...], ours.bias.data[...] = backend.asarray(weight), backend.asarray(bias)
        theirs.weight.data, theirs.bias.data = torch.tensor(weight), torch.tensor(bias)
    return ours, theirs


BN_CASES = [
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 5, 6, 7), dict()),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (3, 5, 4, 4), dict(momentum=None, eps=1e-3)),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (2, 5, 3, 3), dict(affine=False)),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (2, 5, 3, 3), dict(track_running_stats=False)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 5), dict(momentum=0.3)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (3, 5, 8), dict()),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", range(len(BN_CASES)))
def test_batch_norm_trains_and_evaluates_as_torch(backend, dtype, case, error_report):
    cls, torch_cls, shape, options = BN_CASES[case]
    ours, theirs = _batch_norm_pair(backend, dtype, cls, torch_cls, **options)
    rng = np.random.default_rng(case)
    for _ in range(4):  # the running statistics after several training steps
        x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
        ours(backend.asarray(x))
        theirs(torch.tensor(x))
    assert set(ours.state_dict()) == set(theirs.state_dict()) and list(ours.state_dict()) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():
        assert relative_error(ours.state_dict()[name], value.numpy()) <= (1e-6 if dtype == np.float32 else 1e-12), name
    params = [("weight", ours.weight), ("bias", ours.bias)] if options.get("affine", True) else []
    tracking = options.get("track_running_stats", True)
    for training in (True, False):
        ours.train(training)
        state = {k: v.clone() for k, v in theirs.state_dict().items()}

        def torch_fn(t, *weights, training=training, state=state):
            running = (state["running_mean"].clone(), state["running_var"].clone()) if tracking else (None, None)
            return F.batch_norm(t, *running, *(weights or (None, None)), training or not tracking, 0.1,
                                options.get("eps", 1e-5))

        x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
        saved = ours.state_dict()
        for layout in ("contiguous", "channels_last" if len(shape) == 4 else "fortran"):
            ours.load_state_dict(saved)  # every layout from the same running statistics
            check_module_against_torch(ours, torch_fn, x, backend, dtype, error_report,
                                       f"batch_norm {'train' if training else 'eval'}", params, config=str(options),
                                       layouts=(layout,))
        ours.load_state_dict(saved)


def test_batch_norm_refuses_what_torch_refuses(backend):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3).to(backend.name)(backend.asarray(np.ones((1, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        nn.BatchNorm2d(3).to(backend.name)(backend.asarray(np.ones((2, 3, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="expects 3 channels"):
        nn.BatchNorm2d(3).to(backend.name)(backend.asarray(np.ones((2, 4, 2, 2), dtype=np.float32)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout_scales_its_mask_as_torch_and_is_the_identity_in_eval(backend, dtype, p):
    x = np.random.default_rng(4).standard_normal((64, 50)).astype(dtype)
    x[0, 0] = np.nan
    module = nn.Dropout(p).to(backend.name)
    scratchnet.manual_seed(7)
    y = module(backend.asarray(x))
    keep = np.ones(x.shape, dtype=bool) if module._keep is None else backend.to_numpy(module._keep)
    x_t = torch.tensor(x, requires_grad=True)
    noise = torch.tensor(keep.astype(dtype)) / (1 - p) if p < 1 else torch.zeros(x.shape, dtype=x_t.dtype)
    y_t = x_t * noise if p > 0 else x_t
    grad = np.random.default_rng(5).standard_normal(x.shape).astype(dtype)
    y_t.backward(torch.tensor(grad))
    np.testing.assert_array_equal(backend.to_numpy(y), y_t.detach().numpy())
    np.testing.assert_array_equal(backend.to_numpy(module.backward(backend.asarray(grad))), x_t.grad.numpy())
    if 0 < p < 1:
        assert abs(1 - keep.mean() - p) < 0.05
        scratchnet.manual_seed(7)
        np.testing.assert_array_equal(backend.to_numpy(module(backend.asarray(x))), backend.to_numpy(y))
    module.eval()
    assert module(backend.asarray(x)) is not None and np.array_equal(backend.to_numpy(module(backend.asarray(x))), x,
                                                                     equal_nan=True)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
