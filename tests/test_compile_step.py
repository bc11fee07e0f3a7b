"""``step.compile_step``: any Sequential of our layers trains through the fused path, with the
results of the plain eager step, and the fused kernels are the ones that run."""

import functools
from collections import OrderedDict

import numpy as np
import pytest

from harness import relative_error
from scratchnet import nn, optim
from scratchnet.backends.base import Backend
from scratchnet.models import Net
from scratchnet.step import (ConvReLUPoolStage, ConvStage, FlattenStage, FusedStep, LayerStage, LinearStage,
                             compile_forward, compile_step, eager_step, plan)

STEPS = 4


def _user_net(seed):
    """Not the tutorial's: three padded conv blocks (one nested), other fc widths, no bias in one layer."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(OrderedDict([
        ("features", nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, seed=rng), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, bias=False, seed=rng), nn.ReLU(), nn.MaxPool2d(2),
        )),
        ("conv3", nn.Conv2d(8, 12, 3, padding=1, seed=rng)), ("relu3", nn.ReLU()), ("pool3", nn.MaxPool2d(3, 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(12 * 3 * 3, 50, seed=rng)), ("relu4", nn.ReLU()),
        ("fc2", nn.Linear(50, 10, seed=rng)),
    ]))


MODELS = {"tutorial Net": lambda: Net(seed=5), "user Sequential": lambda: _user_net(6)}


def _train(model, backend, compiled, batches):
    model = model.to(backend.name).double()
    criterion = nn.CrossEntropyLoss().to(backend.name)
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if compiled:
        step = compile_step(model, criterion, optimizer, batch_size=len(batches[0][1]))
    else:
        step = functools.partial(eager_step, model, criterion, optimizer)
    losses = [float(step(backend.asarray(images), backend.asarray(labels))[1]) for images, labels in batches]
    return losses, model.state_dict()


def _batches(count=STEPS, batch_size=4):
    rng = np.random.default_rng(0)
    return [(rng.uniform(-1, 1, (batch_size, 3, 32, 32)), rng.integers(0, 10, batch_size)) for _ in range(count)]


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_step_equals_the_eager_step(backend, name):
    batches = _batches()
    eager_losses, eager_state = _train(MODELS[name](), backend, compiled=False, batches=batches)
    losses, state = _train(MODELS[name](), backend, compiled=True, batches=batches)
    assert relative_error(losses, eager_losses) <= 1e-12, f"{name}: losses {losses} != eager {eager_losses}"
    for key in eager_state:
        assert relative_error(state[key], eager_state[key]) <= 1e-12, f"{name}: {key} differs after {STEPS} steps"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_forward_gives_the_model_s_outputs_bit_for_bit(backend, name, dtype):
    model = MODELS[name]().to(backend.name).to(dtype)
    images = backend.asarray(_batches(count=1)[0][0].astype(dtype))
    expected = backend.to_numpy(model(images))
    got = backend.to_numpy(compile_forward(model)(images))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_the_plan_fuses_every_run_in_any_sequential():
    stages = plan(_user_net(0))
    kinds = [type(stage) for stage in stages]
    assert kinds == [ConvReLUPoolStage] * 3 + [FlattenStage, LinearStage, LinearStage]
    assert [stage.op for stage in stages[-2:]] == ["linear_relu", "linear"]
    not_a_run = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Linear(4, 4))
    assert [type(stage) for stage in plan(not_a_run)] == [ConvStage] + [LayerStage] * 2 + [LinearStage]
    # Geometry the fused ops do not take runs layer by layer (a plain conv alone as a conv2d stage).
    for conv, pool in [(nn.Conv2d(3, 4, 3, dilation=2), nn.MaxPool2d(2)), (nn.Conv2d(3, 4, 3, groups=1,
                       padding=(1, 0)), nn.MaxPool2d(2)), (nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, ceil_mode=True)),
                       (nn.Conv2d(3, 4, 3), nn.MaxPool2d((2, 3))), (nn.Conv2d(3, 4, 3, stride=(1, 2)), nn.MaxPool2d(2))]:
        first = LayerStage if conv.plain_geometry() is None else ConvStage
        assert [type(stage) for stage in plan(nn.Sequential(conv, nn.ReLU(), pool))] == [first] + [LayerStage] * 2, \
            (conv, pool)


class _Spy:
    """Counts a backend method's calls; for a backward, records its ``need_input_grad`` (the stages pass it last)."""

    def __init__(self, method):
        self.method, self.calls, self.need_input_grad = method, 0, []

    def __call__(self, *args, **workspace):
        self.calls += 1
        self.need_input_grad.append(args[-1])
        return self.method(*args, **workspace)


FUSED_OPS = ["conv2d_relu_max_pool2d_forward", "conv2d_relu_max_pool2d_backward",
             "linear_relu_forward", "linear_relu_backward"]
UNFUSED_OPS = ["conv2d_forward", "relu_forward", "max_pool2d_forward"]


@pytest.mark.parametrize("name", list(MODELS))
def test_the_fused_kernels_run_and_the_first_layer_skips_its_input_gradient(backend, name, monkeypatch):
    """``FusedStep``, which the backends compile into (on numba with workspaces: see test_numba_compiled),
    calls the fused ops, and only those, once per step."""
    model = MODELS[name]().to(backend.name).double()
    step = FusedStep(model, nn.CrossEntropyLoss().to(backend.name), optim.SGD(model.parameters(), lr=0.05))
    images, labels = _batches(count=1)[0]
    step(backend.asarray(images), backend.asarray(labels))  # the first step of a shape may also lay out workspaces
    spies = {op: _Spy(getattr(backend, op)) for op in FUSED_OPS + UNFUSED_OPS}
    for op, spy in spies.items():
        monkeypatch.setattr(backend, op, spy)
    step(backend.asarray(images), backend.asarray(labels))
    convs = 2 if name == "tutorial Net" else 3
    assert spies["conv2d_relu_max_pool2d_forward"].calls == spies["conv2d_relu_max_pool2d_backward"].calls == convs
    assert spies["linear_relu_forward"].calls == spies["linear_relu_backward"].calls > 0
    if type(backend).conv2d_relu_max_pool2d_forward is not Backend.conv2d_relu_max_pool2d_forward:
        for op in UNFUSED_OPS:  # the composed fused ops would call these; a backend's own fused kernels do not
            assert spies[op].calls == 0, f"{op} ran {spies[op].calls} times beside the fused kernels"
    first_block_last = spies["conv2d_relu_max_pool2d_backward"].need_input_grad
    assert first_block_last[-1] is False and all(first_block_last[:-1]), first_block_last
