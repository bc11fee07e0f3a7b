"""The numba backend's compiled step: ``FusedStep`` with per-shape workspaces (buffers and layouts made once, which
the ops accept) gives the results of the same ops allocating on every call, bit for bit, for any Sequential,
loss and input, and refuses bad input alike."""

from collections import OrderedDict

import numpy as np
import pytest

from scratchnet import backends, nn, optim
from scratchnet.models import Net
from scratchnet.step import FusedStep, compile_step

try:
    from scratchnet.backends.numba import workspaces
except ImportError:  # numba not installed
    workspaces = None

pytestmark = pytest.mark.skipif(workspaces is None, reason="numba is not installed")


def _odd_net(seed):
    """Layers with blocks of their own and layers without: a strided conv, a lone ReLU, a bias-free linear."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(OrderedDict([
        ("block", nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False, seed=rng), nn.ReLU(), nn.MaxPool2d(3, 2))),
        ("strided", nn.Conv2d(5, 6, 3, stride=2, seed=rng)), ("relu", nn.ReLU()),
        ("pool", nn.MaxPool2d(2, ceil_mode=True)), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(6 * 4 * 4, 20, bias=False, seed=rng)), ("relu2", nn.ReLU()),
        ("fc2", nn.Linear(20, 10, seed=rng)), ("relu3", nn.ReLU()),
    ]))


MODELS = {"tutorial Net": lambda: Net(seed=1), "odd Sequential": lambda: _odd_net(2)}


def _pair(make_model, dtype, criterion=nn.CrossEntropyLoss):
    """(compiled step, its model, the step without workspaces, its model) from two copies of one model."""
    steps = []
    for _ in range(2):
        model = make_model().to("numba").to(dtype)
        optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        steps.append((model, criterion().to("numba"), optimizer))
    (model, loss, optimizer), (plain_model, plain_loss, plain_optimizer) = steps
    step = compile_step(model, loss, optimizer, 4)
    assert isinstance(step, FusedStep)
    return step, model, _without_workspaces(FusedStep(plain_model, plain_loss, plain_optimizer)), plain_model


def _without_workspaces(step):
    """``step`` with the backend's workspaces turned off: every op allocates and lays out on each call."""
    backend = backends.get("numba")

    def run(images, labels):
        backend.has_workspaces = False  # shadows the class's True for this call
        try:
            return step(images, labels)
        finally:
            del backend.has_workspaces

    return run


def _batches(sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-1, 1, (size, 3, 32, 32)).astype(dtype), rng.integers(0, 10, size)) for size in sizes]


def _assert_same_training(step, model, plain, plain_model, batches):
    for images, labels in batches:
        logits, loss = step(images, labels)
        plain_logits, plain_loss = plain(images, labels)
        assert loss.dtype == plain_loss.dtype and loss.shape == plain_loss.shape == ()
        np.testing.assert_array_equal(loss, plain_loss)
        np.testing.assert_array_equal(logits, plain_logits)
    for (name, param), plain_param in zip(model.named_parameters(), plain_model.parameters()):
        np.testing.assert_array_equal(param.data, plain_param.data, err_msg=name)
        np.testing.assert_array_equal(param.grad, plain_param.grad, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_step_is_the_step_without_workspaces_bit_for_bit(name, dtype):
    # Full batches, an epoch's smaller last one (another input shape: workspaces of its own), full again.
    _assert_same_training(*_pair(MODELS[name], dtype), _batches([4, 4, 4, 3, 4, 4], dtype))


def test_fused_conv_and_linear_stages_get_workspaces_and_other_layers_none():
    step, *_ = _pair(MODELS["odd Sequential"], np.float32)
    step(*_batches([4], np.float32)[0])
    kinds = [type(workspace).__name__ for workspace in next(iter(step._workspaces.values()))]
    assert kinds == ["ConvReLUPool"] + ["NoneType"] * 4 + ["Linear"] * 2


def test_the_first_stage_computes_no_input_gradient():
    step, *_ = _pair(MODELS["tutorial Net"], np.float32)
    for batch in _batches([4, 4], np.float32):  # the first step shows the shapes, the second uses the workspaces
        step(*batch)
    first, second = next(iter(step._workspaces.values()))[:2]
    assert first.conv.grad_x is None and second.conv.grad_x is not None


def test_other_losses_and_ignored_labels_give_the_same_results():
    batches = _batches([4, 4], np.float64)
    batches[1][1][2] = -100  # torch's default ignore_index: that image drops out of the mean
    _assert_same_training(*_pair(MODELS["tutorial Net"], np.float64), batches)
    smoothed = lambda: nn.CrossEntropyLoss(label_smoothing=0.1)  # noqa: E731 (a criterion factory)
    _assert_same_training(*_pair(MODELS["tutorial Net"], np.float64, smoothed), _batches([4, 4], np.float64))


def test_returned_logits_are_not_overwritten_by_the_next_step():
    step, *_ = _pair(MODELS["tutorial Net"], np.float32)
    first, second = _batches([4, 4], np.float32)
    logits, _ = step(*first)
    kept = logits.copy()
    step(*second)
    np.testing.assert_array_equal(logits, kept)


def test_non_contiguous_images_and_narrow_labels_give_the_same_results():
    step, model, plain, plain_model = _pair(MODELS["tutorial Net"], np.float32)
    images, labels = _batches([4], np.float32)[0]
    fortran = np.asfortranarray(images)
    _assert_same_training(step, model, plain, plain_model, [(fortran, labels.astype(np.int32))])


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 3, 32, 32), np.float32), np.array([0, 1, 2, 10]), r"labels must lie in \[0, 9\]"),
    (np.zeros((4, 3, 31, 32), np.float32), np.arange(4), r"Linear|MaxPool2d|Conv2d"),
    (np.zeros((4, 3, 32, 32), np.float64), np.arange(4), r"dtype|float"),
])
def test_bad_input_is_refused_as_without_workspaces(images, labels, message):
    step, model, plain, _ = _pair(MODELS["tutorial Net"], np.float32)
    with pytest.raises((ValueError, TypeError), match=message) as refused:
        step(images, labels)
    with pytest.raises(type(refused.value)) as plain_refused:
        plain(images, labels)
    assert str(refused.value) == str(plain_refused.value)


def test_a_label_pool_is_checked_once_instead_of_each_batch():
    """``fit`` names the pool every batch's labels come from: checked at the first step, not batch by batch."""
    images, labels = _batches([4], np.float32)[0]
    results = []
    for pool in (np.arange(10), None):
        model = Net(seed=1).to("numba")
        step = compile_step(model, nn.CrossEntropyLoss().to("numba"), optim.SGD(model.parameters(), lr=0.05), 4,
                            label_pool=pool)
        results.append([step(images, labels)[1] for _ in range(2)])
    np.testing.assert_array_equal(*results)
    model = Net(seed=1).to("numba")
    step = compile_step(model, nn.CrossEntropyLoss().to("numba"), optim.SGD(model.parameters(), lr=0.05), 4,
                        label_pool=np.array([0, 3, 10]))
    with pytest.raises(ValueError, match=r"label_pool: labels must lie in \[0, 9\] for 10 classes, got 0..10"):
        step(images, labels)
