"""The numba backend's threaded kernels give the results of their serial twins.

Small batches run the serial twins, so the op tests (batches up to 8) never reach
the threaded ones; here the same modules run both ways on the same data, and must
agree bit for bit (work splits into fixed chunks, summed in a fixed order).
"""

import numpy as np
import pytest

from scratchnet import nn, optim
from scratchnet.models import Net
from scratchnet.step import compile_step

try:
    from scratchnet.backends.numba import jit
except ImportError:  # numba not installed
    jit = None

pytestmark = pytest.mark.skipif(jit is None, reason="numba is not installed")


def _modules():
    return {
        "net": Net(seed=0),
        "conv stride 2 padding 1": nn.Conv2d(3, 5, 3, stride=2, padding=1, seed=1),
        "conv padding 2": nn.Conv2d(3, 4, 5, padding=2, seed=2),
        "max-pool 3 stride 2": nn.MaxPool2d(3, 2),
        "max-pool 2": nn.MaxPool2d(2),
        "batch norm": nn.BatchNorm2d(3),
        "adaptive average pool": nn.AdaptiveAvgPool2d((3, 5)),
        "adaptive max pool": nn.AdaptiveMaxPool2d(3),
        "linear": nn.Linear(3 * 32 * 32, 7, seed=3),
        "gelu": nn.GELU(),
        "gelu tanh": nn.GELU("tanh"),
        "silu": nn.SiLU(),
        "sigmoid": nn.Sigmoid(),
    }


def _run(module, x):
    """Output, input gradient and parameter gradients of one forward and backward."""
    module.to("numba")
    inputs = x.reshape(len(x), -1) if isinstance(module, nn.Linear) else x
    y = module(inputs)
    grad_y = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    grad_x = module.backward(grad_y)
    return [y, grad_x] + [p.grad.copy() for p in module.parameters()]


@pytest.mark.parametrize("name", list(_modules()))
def test_threaded_kernels_match_serial(name, monkeypatch):
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    serial = _run(_modules()[name], x)
    monkeypatch.setattr(jit, "PARALLEL_MIN_BATCH", 1)
    threaded = _run(_modules()[name], x)
    for expected, got in zip(serial, threaded):
        if expected is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, expected)  # bit for bit: no sum depends on the threads


def _compiled_training(steps=3):
    """Weights after a few steps of the numba backend's compiled (fused) training step."""
    net = Net(seed=0).to("numba")
    criterion = nn.CrossEntropyLoss().to("numba")
    step = compile_step(net, criterion, optim.SGD(net.parameters(), lr=0.01, momentum=0.9), 6)
    rng = np.random.default_rng(2)
    for _ in range(steps):
        step(rng.uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 6))
    return net.state_dict()


def test_threaded_fused_step_matches_serial(monkeypatch):
    serial = _compiled_training()
    monkeypatch.setattr(jit, "PARALLEL_MIN_BATCH", 1)
    threaded = _compiled_training()
    for name in serial:
        np.testing.assert_array_equal(threaded[name], serial[name], err_msg=name)
