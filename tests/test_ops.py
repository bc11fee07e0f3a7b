"""Every layer's forward and gradients against torch autograd, on every backend.

Each op runs on at least 50 random configurations per backend and dtype; the
largest relative error per op is printed in pytest's summary.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import TOLERANCE, check_module_against_torch, layouts_for, relative_error
from scratchnet import nn, optim
from scratchnet.models import Net

CASES = 50
DTYPES = [np.float32, np.float64]


def _conv_cases():
    rng = np.random.default_rng(2024)
    cases = []
    while len(cases) < CASES:
        kh, kw = rng.integers(1, 8, size=2)
        stride, padding = int(rng.integers(1, 4)), int(rng.integers(0, 4))
        h, w = rng.integers(1, 34, size=2)
        if h + 2 * padding < kh or w + 2 * padding < kw:
            continue
        cases.append(dict(n=int(rng.integers(1, 9)), c=int(rng.integers(1, 9)), o=int(rng.integers(1, 9)),
                          h=int(h), w=int(w), kh=int(kh), kw=int(kw), stride=stride, padding=padding,
                          bias=bool(rng.integers(0, 5))))  # mostly with bias, sometimes without
    return cases


def conv2d_cases(dtype):
    for index, case in enumerate(_conv_cases()):
        rng = np.random.default_rng(index)
        conv = nn.Conv2d(case["c"], case["o"], (case["kh"], case["kw"]), stride=case["stride"],
                         padding=case["padding"], bias=case["bias"], seed=index)
        x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"])).astype(dtype)

        def torch_conv(x_t, weight, bias=None, case=case):
            return F.conv2d(x_t, weight, bias, stride=case["stride"], padding=case["padding"])

        yield conv, torch_conv, x, ["weight"] + ["bias"] * case["bias"], str(case), index


def _pool_cases():
    rng = np.random.default_rng(7)
    cases = []
    while len(cases) < CASES:
        kernel, stride = int(rng.integers(1, 8)), int(rng.integers(1, 4))
        h, w = rng.integers(1, 34, size=2)
        if min(h, w) < kernel:
            continue
        cases.append(dict(n=int(rng.integers(1, 9)), c=int(rng.integers(1, 9)), h=int(h), w=int(w),
                          kernel=kernel, stride=stride))
    return cases


def max_pool2d_cases(dtype):
    for index, case in enumerate(_pool_cases()):
        rng = np.random.default_rng(index)
        shape = (case["n"], case["c"], case["h"], case["w"])
        # Tie-free: a permutation of distinct values, so torch's argmax is unambiguous.
        x = (rng.permutation(int(np.prod(shape))).reshape(shape) / np.prod(shape) - 0.5).astype(dtype)
        yield (nn.MaxPool2d(case["kernel"], case["stride"]),
               lambda x_t, c=case: F.max_pool2d(x_t, c["kernel"], c["stride"]), x, [], str(case), index)


def linear_cases(dtype):
    rng = np.random.default_rng(11)
    for index in range(CASES):
        n, fin, fout = (int(v) for v in rng.integers(1, 65, size=3))
        n = n % 8 + 1
        has_bias = index % 5 != 0
        x = rng.standard_normal((n, fin)).astype(dtype)
        yield (nn.Linear(fin, fout, bias=has_bias, seed=index), F.linear, x, ["weight"] + ["bias"] * has_bias,
               f"n={n} in={fin} out={fout} bias={has_bias}", index)


def _activation_inputs(dtype):
    rng = np.random.default_rng(13)
    for index in range(CASES):
        shape = tuple(int(v) for v in rng.integers(1, 9, size=4))
        x = rng.standard_normal(shape).astype(dtype)
        x[x == 0] = 1  # ReLU's derivative at exactly 0 is a convention; keep away from it
        yield x, f"shape={shape}", index


def relu_cases(dtype):
    for x, config, index in _activation_inputs(dtype):
        yield nn.ReLU(), F.relu, x, [], config, index


def flatten_cases(dtype):
    for x, config, index in _activation_inputs(dtype):
        yield nn.Flatten(), lambda t: torch.flatten(t, 1), x, [], config, index


# Every layer against torch: its name and its cases, each (module, the torch function of the input and the
# parameters, input, names of the parameters whose gradients are compared, description, case index). A new
# layer is one row here and one function of cases.
LAYERS = {
    "conv2d": conv2d_cases,
    "max_pool2d": max_pool2d_cases,
    "linear": linear_cases,
    "relu": relu_cases,
    "flatten": flatten_cases,
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_layer_matches_torch(backend, dtype, name, error_report):
    for module, torch_fn, x, param_names, config, index in LAYERS[name](dtype):
        module = module.to(backend.name).to(dtype)
        params = [(param_name, getattr(module, param_name)) for param_name in param_names]
        check_module_against_torch(module, torch_fn, x, backend, dtype, error_report, name, params, config=config,
                                   layouts=layouts_for(index))


@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["logits", "logits_x100"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cross_entropy_matches_torch(backend, dtype, scale, error_report):
    rng = np.random.default_rng(17)
    for _ in range(CASES):
        n, classes = int(rng.integers(1, 9)), int(rng.integers(2, 21))
        logits = (rng.standard_normal((n, classes)) * scale).astype(dtype)
        labels = rng.integers(0, classes, size=n)
        logits_t = torch.tensor(logits, requires_grad=True)
        loss_t = F.cross_entropy(logits_t, torch.tensor(labels))
        loss_t.backward()

        criterion = nn.CrossEntropyLoss()
        loss = criterion(backend.asarray(logits), backend.asarray(labels))
        grad = backend.to_numpy(criterion.backward())
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        what = "cross_entropy" + ("" if scale == 1 else " x100")
        for got, want in [(loss, loss_t.item()), (grad, logits_t.grad.numpy())]:
            error = relative_error(got, want)
            error_report((what, backend.name, np.dtype(dtype).name), error)
            assert error <= TOLERANCE[dtype]


@pytest.mark.parametrize("make", [lambda: (nn.Conv2d(2, 3, 3, seed=0), (2, 2, 6, 6)),
                                  lambda: (Net(seed=0), (2, 3, 32, 32))], ids=["conv2d", "net"])
def test_gradients_accumulate_until_zero_grad(backend, make):
    rng = np.random.default_rng(3)
    module, x_shape = make()
    module = module.to(backend.name)
    x = backend.asarray(rng.standard_normal(x_shape).astype(np.float32))
    grad_y = backend.asarray(np.ones(tuple(module(x).shape), dtype=np.float32))
    module.backward(grad_y)
    once = [backend.to_numpy(p.grad).copy() for p in module.parameters()]
    module(x)
    module.backward(grad_y)
    for param, grad in zip(module.parameters(), once):
        np.testing.assert_allclose(backend.to_numpy(param.grad), 2 * grad, rtol=1e-5, atol=1e-6)
    for zero_grad in (optim.SGD(module.parameters(), lr=0.1).zero_grad, module.zero_grad):
        zero_grad()
        assert not any(backend.to_numpy(p.grad).any() for p in module.parameters())
        module.backward(grad_y)


def test_float64_stays_float64(backend):
    from scratchnet.models import Net

    net = Net(seed=0).to(backend.name).double()
    x = backend.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32)))
    out = net(x)
    criterion = nn.CrossEntropyLoss()
    criterion(out, backend.asarray(np.array([1, 2])))
    net.backward(criterion.backward())
    assert out.dtype == np.float64
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in net.parameters())
