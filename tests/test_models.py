"""The tutorial Net: torch's names and shapes, torch's default init, seeded draws, torch's printout."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

import scratchnet
from reference.tutorial import Net as TorchNet
from scratchnet import backends, nn
from scratchnet.models import Net


def test_state_dict_has_the_tutorial_names_and_shapes():
    ours = Net().state_dict()
    theirs = TorchNet().state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert all(v.dtype == np.float32 for v in ours.values())


def test_weights_copy_across_both_ways_and_predict_the_same():
    torch_net = TorchNet()
    net = Net(seed=0)
    net.load_state_dict({k: v.numpy() for k, v in torch_net.state_dict().items()})
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(net(x), torch_net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)

    back = TorchNet()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    for name, value in back.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), torch_net.state_dict()[name].numpy())


def test_default_init_follows_torch_bounds():
    net = Net(seed=0)
    for name, value in net.state_dict().items():
        layer = name.split(".")[0]
        fan_in = np.prod(net.state_dict()[f"{layer}.weight"].shape[1:])
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(value).max() <= bound, name
        if value.size >= 400:  # enough draws to see a uniform's spread: std = bound / sqrt(3)
            assert abs(value.std() - bound / np.sqrt(3)) < 0.1 * bound, name
            assert abs(value.mean()) < 0.1 * bound, name


def test_seeds_make_init_reproducible():
    def same(a, b):
        return all(np.array_equal(a[k], b[k]) for k in a)

    assert same(Net(seed=3).state_dict(), Net(seed=3).state_dict())
    assert not same(Net(seed=3).state_dict(), Net(seed=4).state_dict())
    scratchnet.manual_seed(5)
    first = Net().state_dict()
    scratchnet.manual_seed(5)
    assert same(first, Net().state_dict())


@pytest.mark.parametrize("width", [1, 2, 4])
def test_width_multiplies_conv_channels(width):
    state = Net(width=width).state_dict()
    assert state["conv1.weight"].shape == (6 * width, 3, 5, 5)
    assert state["conv2.weight"].shape == (16 * width, 6 * width, 5, 5)
    assert state["fc1.weight"].shape == (120, 16 * width * 25)
    assert Net(width=width)(np.zeros((2, 3, 32, 32), dtype=np.float32)).shape == (2, 10)


def test_moving_between_backends_keeps_the_weights(backend):
    net = Net(seed=0)
    before = net.state_dict()
    after = net.to(backend.name).state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(p.backend is backend for p in net.parameters())


def test_a_missing_library_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(backends._MODULES, "broken", "scratchnet_no_such_module")
    with pytest.raises(backends.BackendError, match=r"'broken' is not available.*scratchnet_no_such_module.*numpy"):
        backends.get("broken")


def torch_twin(module):
    """The torch module ``module`` would be, built from the same arguments (for comparing reprs)."""
    if isinstance(module, nn.Sequential):
        return torch.nn.Sequential(OrderedDict((name, torch_twin(child)) for name, child in module._children.items()))
    if isinstance(module, nn.Conv2d):
        return torch.nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                               module.padding, module.dilation, module.groups, module.bias is not None)
    if isinstance(module, nn.Linear):
        return torch.nn.Linear(module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.MaxPool2d):
        return torch.nn.MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                                  ceil_mode=module.ceil_mode)
    return {nn.ReLU: torch.nn.ReLU, nn.Flatten: torch.nn.Flatten, nn.CrossEntropyLoss: torch.nn.CrossEntropyLoss}[
        type(module)]()


def test_print_shows_the_layer_tree_as_torch_does():
    net = Net()
    assert repr(net) == repr(torch_twin(net)).replace("Sequential(", "Net(", 1)
    assert str(net).splitlines()[1] == "  (conv1): Conv2d(3, 6, kernel_size=(5, 5), stride=(1, 1))"
    own = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d((2, 3), ceil_mode=True),
        nn.Sequential(nn.Conv2d(8, 8, (3, 5), padding="same", dilation=2, groups=4),
                      nn.Conv2d(8, 4, 1, padding="valid")),
        nn.Flatten(), nn.Linear(16, 10, bias=False), nn.CrossEntropyLoss())
    assert repr(own) == repr(torch_twin(own))
