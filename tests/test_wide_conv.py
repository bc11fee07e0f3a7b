"""The numba backend's two convolution routes: shifted planes (narrow layers) and matrix products (wide ones).

Both routes against torch autograd, forward and backward, alone and inside the fused conv + ReLU + max-pool,
on one and on several threads (batches from 12 on thread); the matrix-product route the same bit for bit on one
and two threads; the route each of the tutorial's layers takes; and whole training steps of a wide
Net against torch.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import TOLERANCE, relative_error
from reference.tutorial import Net as TorchNet
from scratchnet import backends, nn, optim
from scratchnet.backends.numba import gemm_conv
from scratchnet.models import Net, layout
from scratchnet.step import compile_step

DTYPES = [np.float32, np.float64]
CASES = 12  # case 11: parts of several groups (17 images, one a group), with a bias


# The matrix-product route's two forms: every tap row's products over views of the planes, or one over copies.
FORMS = {"gemm-views": 0, "gemm-copies": 10 ** 9}  # gemm_conv.VIEWS_FROM


@pytest.fixture(params=["shifted", *FORMS])
def route(request, monkeypatch):
    """Every stride-1 convolution on one route (and form), whatever its width."""
    wide = request.param in FORMS
    monkeypatch.setattr(gemm_conv, "wins", lambda x_shape, weight_shape: wide)
    if wide:
        monkeypatch.setattr(gemm_conv, "VIEWS_FROM", FORMS[request.param])
    return request.param


def conv_case(index):
    """Random stride-1 convolutions; batches up to 40, so that groups of several sizes, parts of several groups
    (``gemm_conv.PARTS``) and the threaded kernels all run."""
    rng = np.random.default_rng([404, index])
    k = int(rng.integers(1, 6))
    return dict(n=int(rng.choice([1, 3, 4, 12, 17, 40])), c=int(rng.integers(1, 9)), o=int(rng.integers(1, 10)),
                h=int(rng.integers(k, k + 9)), w=int(rng.integers(k, k + 9)), k=k,
                padding=int(rng.integers(0, (k - 1) // 2 + 1)), bias=bool(index % 3))


def _arrays(case, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"])).astype(dtype)
    weight = rng.standard_normal((case["o"], case["c"], case["k"], case["k"])).astype(dtype)
    bias = rng.standard_normal(case["o"]).astype(dtype) if case["bias"] else None
    return x, weight, bias


def _check(pairs, dtype, what):
    for label, got, want in pairs:
        error = relative_error(got, want)
        assert error <= TOLERANCE[dtype], f"{what}: {label} relative error {error:.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("index", range(CASES))
def test_conv2d_matches_torch_on_both_routes(route, dtype, index):
    case = conv_case(index)
    x, weight, bias = _arrays(case, dtype, index)
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    y_t = F.conv2d(*tensors, padding=case["padding"])
    grad_y = np.random.default_rng(index + 1).standard_normal(y_t.shape).astype(dtype)
    y_t.backward(torch.tensor(grad_y))

    numba = backends.get("numba")
    geometry = ((1, 1), ((case["padding"],) * 2,) * 2, (1, 1), 1)
    y = numba.conv2d_forward(x, weight, bias, *geometry)
    grad_weight, grad_bias = np.ones_like(weight), None if bias is None else np.ones_like(bias)  # added into
    grad_x = numba.conv2d_backward(x, weight, grad_y, *geometry, grad_weight, grad_bias)
    pairs = [("y", y, y_t.detach().numpy()), ("grad_x", grad_x, tensors[0].grad.numpy()),
             ("grad_weight", grad_weight - 1, tensors[1].grad.numpy())]
    if bias is not None:
        pairs.append(("grad_bias", grad_bias - 1, tensors[2].grad.numpy()))
    assert y.shape == y_t.shape and y.dtype == dtype and grad_x.dtype == dtype
    _check(pairs, dtype, f"{route} {case}")


@pytest.mark.parametrize("need_input_grad", [True, False], ids=["grad_x", "no_grad_x"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("index", range(CASES))
def test_fused_conv_relu_pool_matches_torch_on_both_routes(route, dtype, index, need_input_grad):
    case = conv_case(index)
    case["h"], case["w"] = case["h"] + 1, case["w"] + 1  # a 2x2 pool needs two output rows and columns
    x, weight, bias = _arrays(case, dtype, index)
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    y_t = F.max_pool2d(F.relu(F.conv2d(*tensors, padding=case["padding"])), 2, 2)
    grad_y = np.random.default_rng(index + 1).standard_normal(y_t.shape).astype(dtype)
    y_t.backward(torch.tensor(grad_y))

    numba = backends.get("numba")
    geometry = (1, case["padding"], 2, 2)
    y, saved = numba.conv2d_relu_max_pool2d_forward(x, weight, bias, *geometry)
    assert type(saved.conv).__name__ == ("GemmConv" if route in FORMS else "ShiftedConv")
    grad_weight, grad_bias = np.zeros_like(weight), None if bias is None else np.zeros_like(bias)
    grad_x = numba.conv2d_relu_max_pool2d_backward(x, weight, saved, grad_y, *geometry, grad_weight, grad_bias,
                                                   need_input_grad)
    pairs = [("y", y, y_t.detach().numpy()), ("grad_weight", grad_weight, tensors[1].grad.numpy())]
    if need_input_grad:
        pairs.append(("grad_x", grad_x, tensors[0].grad.numpy()))
    else:
        assert grad_x is None
    if bias is not None:
        pairs.append(("grad_bias", grad_bias, tensors[2].grad.numpy()))
    _check(pairs, dtype, f"{route} {case}")


def test_the_routes_agree_in_float64(monkeypatch):
    """A wide layer of the next chapter's network on both routes, the products in both forms: the same sums in
    other orders."""
    rng = np.random.default_rng(5)
    x, weight, bias = rng.standard_normal((12, 48, 8, 8)), rng.standard_normal((64, 48, 3, 3)), rng.standard_normal(64)
    grad_y = rng.standard_normal((12, 64, 8, 8))
    numba, geometry = backends.get("numba"), ((1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    results = {}
    for route in ("shifted", *FORMS):
        monkeypatch.setattr(gemm_conv, "wins", lambda x_shape, weight_shape, wide=route in FORMS: wide)
        monkeypatch.setattr(gemm_conv, "VIEWS_FROM", FORMS.get(route, 0))
        grad_weight, grad_bias = np.zeros_like(weight), np.zeros_like(bias)
        y = numba.conv2d_forward(x, weight, bias, *geometry)
        grad_x = numba.conv2d_backward(x, weight, grad_y, *geometry, grad_weight, grad_bias)
        results[route] = (y, grad_x, grad_weight, grad_bias)
    for form in FORMS:
        for shifted, gemm in zip(results["shifted"], results[form]):
            assert relative_error(gemm, shifted) <= 1e-13, form


def test_each_tutorial_layer_takes_the_route_measured_faster():
    """Widths 1 and 2 stay on shifted planes; from width 4 conv2 is wide; conv1 (3 channels, 5x5) never is; the
    next chapter's 3x3 layers all are."""
    def routes(width):
        convs = [args for _, kind, args in layout(width) if kind == "conv"]
        return [gemm_conv.wins((4, c, 32, 32), (o, c, k, k)) for c, o, k in convs]

    assert routes(1) == [False, False]
    assert routes(2) == [False, False]
    assert routes(4) == [False, True]
    assert routes(8) == [False, True]
    assert routes(16) == [False, True]
    modern = [(3, 64), (64, 128), (128, 256)]  # 3x3: taps left over for the shifted kernels' fives
    assert [gemm_conv.wins((4, c, 32, 32), (o, c, 3, 3)) for c, o in modern] == [True, True, True]
    assert not gemm_conv.wins((4, 3, 32, 32), (8, 3, 3, 3))


_RUN = """
import sys
import numba
import numpy as np
from scratchnet.backends.numba import gemm_conv, workspaces
numba.set_num_threads(int(sys.argv[2]))
gemm_conv.VIEWS_FROM = int(sys.argv[3])
rng = np.random.default_rng(0)
x, weight, bias = (rng.standard_normal(s).astype(np.float32) for s in ((32, 64, 12, 12), (96, 64, 5, 5), (96,)))
work = workspaces.GemmConv(x.shape, weight.shape, np.float32, 2)
work.forward(x, weight, bias)
work.backward_buffers(True)[...] = rng.standard_normal(work.rows.shape).astype(np.float32)
grad_weight, grad_bias = np.zeros_like(weight), np.zeros_like(bias)
grad_x = work.backward(weight, grad_weight, grad_bias, True)
np.savez(sys.argv[1], y=work.rows, grad_x=grad_x, grad_weight=grad_weight, grad_bias=grad_bias)
"""


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores to run two threads")
@pytest.mark.parametrize("form", FORMS)
def test_matrix_products_are_the_same_on_one_and_two_threads(tmp_path, form):
    """numba's threads (the groups dealt to threads) and BLAS's (its pool, which the route limits to one) alike:
    the same bits."""
    results = []
    for numba_threads, blas_threads in (("1", "1"), ("2", "2"), ("2", "1"), ("1", "2")):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": blas_threads, "MKL_NUM_THREADS": blas_threads}
        path = tmp_path / f"{numba_threads}-{blas_threads}.npz"
        subprocess.run([sys.executable, "-c", _RUN, str(path), numba_threads, str(FORMS[form])], env=env, check=True)
        with np.load(path) as saved:
            results.append({name: saved[name] for name in saved.files})
    for other in results[1:]:
        for name, value in results[0].items():
            assert np.array_equal(other[name], value), name


@pytest.mark.parametrize("width", [4, 16])
def test_wide_net_training_steps_match_torch_in_float64(width, one_torch_thread):
    """Five compiled training steps of the Net at ``width`` (both routes in one network: conv1 narrow, conv2 wide)
    against torch autograd, in float64, from the same weights; batch 12 threads."""
    torch.manual_seed(width)
    torch_net = TorchNet(width).double()
    net = Net(width=width, seed=0).to("numba").double()
    net.load_state_dict({k: v.numpy() for k, v in torch_net.state_dict().items()})
    torch_opt = torch.optim.SGD(torch_net.parameters(), lr=0.01, momentum=0.9)
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    step = compile_step(net, nn.CrossEntropyLoss().to("numba"), opt, 12)
    rng = np.random.default_rng(width)
    for index in range(5):
        images, labels = rng.uniform(-1, 1, (12, 3, 32, 32)), rng.integers(0, 10, 12)
        torch_opt.zero_grad()
        torch_loss = F.cross_entropy(torch_net(torch.from_numpy(images)), torch.from_numpy(labels))
        torch_loss.backward()
        torch_opt.step()
        _, loss = step(images, labels)
        assert relative_error(loss, torch_loss.item()) <= 1e-10, f"step {index}"
    ours = net.state_dict()
    for name, value in torch_net.state_dict().items():
        assert relative_error(ours[name], value.numpy()) <= 1e-10, name
    (workspaces,) = step._workspaces.values()  # the steps after the first ran on these
    routes = [type(work.conv).__name__ for work in workspaces if hasattr(work, "conv")]
    assert routes == ["ShiftedConv", "GemmConv"]
