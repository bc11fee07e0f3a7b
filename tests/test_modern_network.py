"""A modern network (conv - batch norm - GELU - pool blocks, dropout, adaptive pooling, linear) against
torch: 200 real-data training steps in float64 from torch's weights with the same batches and dropout
masks, every loss within 1e-10 in training and in evaluation; and its compiled step (a CUDA graph on the
GPU backend) equal to the eager one, dropout masks included."""

import numpy as np
import torch

import scratchnet
from harness import relative_error
from scratchnet import nn, optim
from scratchnet.data import CIFAR10, DataLoader
from scratchnet.evaluate import evaluate
from scratchnet.step import compile_step, eager_step

STEPS, BATCH = 200, 8


def _ours():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.GELU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU(), nn.AvgPool2d(2),
        nn.Dropout(0.25), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


class _GivenMask(torch.nn.Module):
    """torch's dropout, but with the mask scratchnet drew for this step."""

    def __init__(self, p):
        super().__init__()
        self.p, self.keep = p, None

    def forward(self, x):
        return x * (torch.from_numpy(self.keep).to(x.dtype) / (1 - self.p)) if self.training else x


def _theirs():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.GELU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.SiLU(), torch.nn.AvgPool2d(2),
        _GivenMask(0.25), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).double()


def test_a_modern_network_trains_and_evaluates_as_torch_for_200_steps(backend, data_root, error_report, one_torch_thread):
    torch.manual_seed(0)
    theirs = _theirs()
    ours = _ours().to(backend.name).double()
    ours.load_state_dict({name: value.numpy() for name, value in theirs.state_dict().items()})
    optimizer, torch_optimizer = optim.AdamW(ours.parameters(), lr=2e-3), torch.optim.AdamW(theirs.parameters(), lr=2e-3)
    criterion, torch_criterion = nn.CrossEntropyLoss().to(backend.name), torch.nn.CrossEntropyLoss()
    loader = DataLoader(CIFAR10(data_root, limit=STEPS * BATCH), BATCH, backend=backend, dtype=np.float64)
    scratchnet.manual_seed(1)
    worst = 0.0
    for images, labels in loader:
        loss = eager_step(ours, criterion, optimizer, images, labels)[1]
        theirs[8].keep = backend.to_numpy(ours[8]._keep)
        torch_optimizer.zero_grad()
        torch_loss = torch_criterion(theirs(torch.from_numpy(backend.to_numpy(images))),
                                     torch.from_numpy(backend.to_numpy(labels)))
        torch_loss.backward()
        torch_optimizer.step()
        worst = max(worst, relative_error(float(loss), torch_loss.item()))
    error_report(("modern network 200 steps: loss", backend.name, "float64"), worst)
    assert worst <= 1e-10
    # The convolutions feed batch norm without a bias, as modern networks do: a bias there has a zero
    # gradient but for rounding, which Adam's normalized step would follow.
    for name, value in theirs.state_dict().items():
        assert relative_error(ours.state_dict()[name], value.numpy()) <= 1e-9, name
    ours.eval(), theirs.eval()
    test = DataLoader(CIFAR10(data_root, train=False, limit=64), 64, backend=backend, dtype=np.float64)
    images, labels = next(iter(test))
    loss = criterion(ours(images), labels)
    torch_loss = torch_criterion(theirs(torch.from_numpy(backend.to_numpy(images))),
                                 torch.from_numpy(backend.to_numpy(labels)))
    assert relative_error(loss, torch_loss.item()) <= 1e-10


def test_its_compiled_step_equals_the_eager_one_dropout_masks_included(backend):
    rng = np.random.default_rng(2)
    batches = [(backend.asarray(rng.uniform(-1, 1, size=(4, 3, 16, 16))), backend.asarray(rng.integers(0, 10, 4)))
               for _ in range(5)]
    results = []
    for compiled in (False, True):
        model = _ours().to(backend.name).double()
        model.load_state_dict(_reference_weights())
        optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        criterion = nn.CrossEntropyLoss().to(backend.name)
        step = compile_step(model, criterion, optimizer, 4) if compiled else \
            (lambda x, y: eager_step(model, criterion, optimizer, x, y))
        scratchnet.manual_seed(3)
        results.append(([float(step(x, y)[1]) for x, y in batches], model.state_dict()))
    assert results[0][0] == results[1][0]
    for name, value in results[0][1].items():
        np.testing.assert_array_equal(results[1][1][name], value, err_msg=name)


def _reference_weights():
    torch.manual_seed(4)
    return {name: value.numpy() for name, value in _theirs().state_dict().items()}


def test_evaluation_runs_in_evaluation_mode_and_restores_each_modules_mode(backend, data_root):
    model = _ours().to(backend.name)
    model[9].eval()  # a mixed state, to be restored as it was
    testset = CIFAR10(data_root, train=False, limit=32)
    predictions, _ = evaluate(model, testset, 16, backend)
    assert [module.training for module in model.modules()] == [index != 10 for index in range(13)]
    model.eval()
    images, _ = next(iter(DataLoader(testset, 32, backend=backend)))
    np.testing.assert_array_equal(predictions, backend.to_numpy(model(images)).argmax(axis=1))
