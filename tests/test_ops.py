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


def _module_on(module, backend, dtype):
    return module.to(backend.name).to(dtype)


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


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_conv2d_matches_torch(backend, dtype, error_report):
    for index, case in enumerate(_conv_cases()):
        rng = np.random.default_rng(index)
        conv = nn.Conv2d(case["c"], case["o"], (case["kh"], case["kw"]), stride=case["stride"],
                         padding=case["padding"], bias=case["bias"], seed=index)
        conv = _module_on(conv, backend, dtype)
        x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"])).astype(dtype)
        params = [("weight", conv.weight)] + ([("bias", conv.bias)] if case["bias"] else [])

        def torch_conv(x_t, weight, bias=None, case=case):
            return F.conv2d(x_t, weight, bias, stride=case["stride"], padding=case["padding"])

        check_module_against_torch(conv, torch_conv, x, backend, dtype, error_report, "conv2d", params,
                                   config=str(case), layouts=layouts_for(index))


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


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_max_pool2d_matches_torch(backend, dtype, error_report):
    for index, case in enumerate(_pool_cases()):
        rng = np.random.default_rng(index)
        shape = (case["n"], case["c"], case["h"], case["w"])
        # Tie-free: a permutation of distinct values, so torch's argmax is unambiguous.
        x = (rng.permutation(int(np.prod(shape))).reshape(shape) / np.prod(shape) - 0.5).astype(dtype)
        pool = _module_on(nn.MaxPool2d(case["kernel"], case["stride"]), backend, dtype)
        check_module_against_torch(pool, lambda x_t, c=case: F.max_pool2d(x_t, c["kernel"], c["stride"]),
                                   x, backend, dtype, error_report, "max_pool2d", config=str(case),
                                   layouts=layouts_for(index))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_linear_matches_torch(backend, dtype, error_report):
    rng = np.random.default_rng(11)
    for index in range(CASES):
        n, fin, fout = (int(v) for v in rng.integers(1, 65, size=3))
        n = n % 8 + 1
        has_bias = index % 5 != 0
        linear = _module_on(nn.Linear(fin, fout, bias=has_bias, seed=index), backend, dtype)
        x = rng.standard_normal((n, fin)).astype(dtype)
        params = [("weight", linear.weight)] + ([("bias", linear.bias)] if has_bias else [])
        check_module_against_torch(linear, F.linear, x, backend, dtype, error_report, "linear", params,
                                   config=f"n={n} in={fin} out={fout} bias={has_bias}", layouts=layouts_for(index))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_and_flatten_match_torch(backend, dtype, error_report):
    rng = np.random.default_rng(13)
    for index in range(CASES):
        shape = tuple(int(v) for v in rng.integers(1, 9, size=4))
        x = rng.standard_normal(shape).astype(dtype)
        x[x == 0] = 1  # ReLU's derivative at exactly 0 is a convention; keep away from it
        relu = _module_on(nn.ReLU(), backend, dtype)
        config, layouts = f"shape={shape}", layouts_for(index)
        check_module_against_torch(relu, F.relu, x, backend, dtype, error_report, "relu", config=config,
                                   layouts=layouts)
        flatten = _module_on(nn.Flatten(), backend, dtype)
        check_module_against_torch(flatten, lambda t: torch.flatten(t, 1), x, backend, dtype, error_report, "flatten",
                                   config=config, layouts=layouts)


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
