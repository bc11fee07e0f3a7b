"""The numba backend's compiled step (buffers built once per input shape, kernels called directly)
gives ``FusedStep``'s results bit for bit, for any Sequential, loss and input, and refuses bad input alike."""

from collections import OrderedDict

import numpy as np
import pytest

from scratchnet import nn, optim
from scratchnet.models import Net
from scratchnet.step import FusedStep, compile_step

try:
    from scratchnet.backends.numba import compiled
except ImportError:  # numba not installed
    compiled = None

pytestmark = pytest.mark.skipif(compiled is None, reason="numba is not installed")


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
    """(compiled step, its model, FusedStep, its model) from two copies of one model."""
    steps = []
    for _ in range(2):
        model = make_model().to("numba").to(dtype)
        optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        steps.append((model, criterion().to("numba"), optimizer))
    (model, loss, optimizer), (fused_model, fused_loss, fused_optimizer) = steps
    step = compile_step(model, loss, optimizer, 4)
    assert isinstance(step, compiled.CompiledStep)
    return step, model, FusedStep(fused_model, fused_loss, fused_optimizer), fused_model


def _batches(sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-1, 1, (size, 3, 32, 32)).astype(dtype), rng.integers(0, 10, size)) for size in sizes]


def _assert_same_training(step, model, fused, fused_model, batches):
    for images, labels in batches:
        logits, loss = step(images, labels)
        fused_logits, fused_loss = fused(images, labels)
        assert loss.dtype == fused_loss.dtype and loss.shape == fused_loss.shape == ()
        np.testing.assert_array_equal(loss, fused_loss)
        np.testing.assert_array_equal(logits, fused_logits)
    for (name, param), fused_param in zip(model.named_parameters(), fused_model.parameters()):
        np.testing.assert_array_equal(param.data, fused_param.data, err_msg=name)
        np.testing.assert_array_equal(param.grad, fused_param.grad, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_step_is_the_fused_step_bit_for_bit(name, dtype):
    # Full batches, an epoch's smaller last one (another input shape: blocks of its own), full again.
    _assert_same_training(*_pair(MODELS[name], dtype), _batches([4, 4, 4, 3, 4, 4], dtype))


def test_layers_without_a_block_of_their_own_run_as_themselves():
    step, *_ = _pair(MODELS["odd Sequential"], np.float32)
    step(*_batches([4], np.float32)[0])
    kinds = [type(block).__name__ for block in next(iter(step._plans.values()))]
    assert kinds == ["_ConvReLUPoolBlock"] + ["_StageBlock"] * 3 + ["_FlattenBlock"] + ["_LinearBlock"] * 2


def test_the_first_block_computes_no_input_gradient():
    step, *_ = _pair(MODELS["tutorial Net"], np.float32)
    step(*_batches([4], np.float32)[0])
    blocks = next(iter(step._plans.values()))
    assert [block.need_input_grad for block in blocks] == [False] + [True] * (len(blocks) - 1)
    assert not hasattr(blocks[0], "grad_x")


def test_other_losses_and_ignored_labels_give_the_fused_results():
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


def test_non_contiguous_images_and_narrow_labels_give_the_fused_results():
    step, model, fused, fused_model = _pair(MODELS["tutorial Net"], np.float32)
    images, labels = _batches([4], np.float32)[0]
    fortran = np.asfortranarray(images)
    _assert_same_training(step, model, fused, fused_model, [(fortran, labels.astype(np.int32))])


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 3, 32, 32), np.float32), np.array([0, 1, 2, 10]), r"labels must lie in \[0, 9\]"),
    (np.zeros((4, 3, 31, 32), np.float32), np.arange(4), r"Linear|MaxPool2d|Conv2d"),
    (np.zeros((4, 3, 32, 32), np.float64), np.arange(4), r"dtype|float"),
])
def test_bad_input_is_refused_as_the_fused_step_refuses_it(images, labels, message):
    step, model, fused, _ = _pair(MODELS["tutorial Net"], np.float32)
    with pytest.raises((ValueError, TypeError), match=message) as refused:
        step(images, labels)
    with pytest.raises(type(refused.value)) as fused_refused:
        fused(images, labels)
    assert str(refused.value) == str(fused_refused.value)
