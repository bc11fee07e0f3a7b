"""Whole training steps: torch's tutorial Net and scratchnet's Net from the same weights."""

import numpy as np
import torch

from harness import relative_error
from reference.tutorial import Net as TorchNet
from scratchnet import nn, optim
from scratchnet.models import Net

STEPS = 500
BATCH = 4


def test_500_training_steps_match_torch(backend, error_report, one_torch_thread):
    torch.manual_seed(0)
    torch_net = TorchNet()
    net = Net(seed=1).to(backend.name)
    net.load_state_dict({k: v.numpy() for k, v in torch_net.state_dict().items()})
    torch_opt = torch.optim.SGD(torch_net.parameters(), lr=0.001, momentum=0.9)
    opt = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    torch_criterion, criterion = torch.nn.CrossEntropyLoss(), nn.CrossEntropyLoss()

    rng = np.random.default_rng(0)
    worst_loss = 0.0
    for _ in range(STEPS):
        images = rng.uniform(-1, 1, size=(BATCH, 3, 32, 32)).astype(np.float32)
        labels = rng.integers(0, 10, size=BATCH)

        torch_opt.zero_grad()
        torch_loss = torch_criterion(torch_net(torch.from_numpy(images)), torch.from_numpy(labels))
        torch_loss.backward()
        torch_opt.step()

        opt.zero_grad()
        loss = criterion(net(backend.asarray(images)), backend.asarray(labels))
        net.backward(criterion.backward())
        opt.step()

        worst_loss = max(worst_loss, relative_error(loss, torch_loss.item()))
    error_report(("training 500 steps: loss", backend.name, "float32"), worst_loss)
    assert worst_loss <= 1e-5

    ours = net.state_dict()
    for name, value in torch_net.state_dict().items():
        error = relative_error(ours[name], value.numpy())
        error_report(("training 500 steps: params", backend.name, "float32"), error)
        assert error <= 1e-4, name
