"""``Module``'s buffers and modes, held to torch.nn.Module's: ``register_buffer`` (persistent or not), the
``state_dict``'s keys and order, strict loading, moves and casts, ``.pth`` and ``.npz`` files both ways,
and ``train()`` / ``eval()`` / ``training`` through the children."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from scratchnet import checkpoint, nn


class Ours(nn.Module):
    """A parameter, a float and an integer buffer (batch norm's running mean and step count), one buffer kept
    out of the state_dict, one None buffer, and a child with a buffer of its own."""

    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", np.arange(3, dtype=np.float32))
        self.child = nn.Linear(3, 2, seed=0)
        self.weight = nn.Parameter(np.ones(3, dtype=np.float32))
        self.register_buffer("scratch", np.zeros(3, dtype=np.float32), persistent=False)
        self.register_buffer("num_batches_tracked", np.array(5, dtype=np.int64))
        self.register_buffer("absent", None)
        self.child.register_buffer("counts", np.array([1.5, 2.5], dtype=np.float32))


class Theirs(torch.nn.Module):
    """``Ours`` in torch, registered in the same order."""

    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.arange(3, dtype=torch.float32))
        self.child = torch.nn.Linear(3, 2)
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.register_buffer("num_batches_tracked", torch.tensor(5))
        self.register_buffer("absent", None)
        self.child.register_buffer("counts", torch.tensor([1.5, 2.5]))


def test_state_dict_keys_and_order_are_torch_s():
    ours, theirs = Ours(), Theirs()
    assert list(ours.state_dict()) == list(theirs.state_dict())  # per module: parameters, buffers, then children
    assert [name for name, _ in ours.named_buffers()] == [name for name, _ in theirs.named_buffers()]
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    assert "scratch" not in ours.state_dict() and "absent" not in ours.state_dict()


def test_state_dict_holds_copies_and_load_restores_buffers():
    ours = Ours()
    state = ours.state_dict()
    state["running_mean"][...] = -1  # a copy: the module's buffer is untouched
    assert ours.running_mean[0] == 0
    other = Ours()
    other.running_mean += 7
    other.num_batches_tracked = np.array(9, dtype=np.int64)  # assigning to a buffer replaces it, as in torch
    assert other.state_dict()["num_batches_tracked"] == 9
    ours.load_state_dict(other.state_dict())
    assert np.array_equal(ours.running_mean, np.arange(3) + 7) and ours.num_batches_tracked == 9
    assert ours.num_batches_tracked.dtype == np.int64


def test_strict_load_names_a_missing_or_unexpected_buffer():
    ours = Ours()
    state = ours.state_dict()
    del state["child.counts"]
    with pytest.raises(KeyError, match="missing keys \\['child.counts'\\]"):
        ours.load_state_dict(state)
    with pytest.raises(KeyError, match="unexpected keys \\['scratch'\\]"):
        ours.load_state_dict({**ours.state_dict(), "scratch": np.zeros(3, np.float32)})


def test_state_dicts_cross_to_torch_and_back():
    ours, theirs = Ours(), Theirs()
    ours.running_mean += 1
    theirs.load_state_dict({name: torch.from_numpy(value) for name, value in ours.state_dict().items()})
    assert torch.equal(theirs.running_mean, torch.arange(3.0) + 1)
    theirs.num_batches_tracked += 10
    ours.load_state_dict({name: value.numpy() for name, value in theirs.state_dict().items()})
    assert ours.num_batches_tracked == 15


@pytest.mark.parametrize("suffix", [".pth", ".npz"])
def test_buffers_are_saved_and_loaded_both_ways(tmp_path, suffix):
    ours, theirs = Ours(), Theirs()
    ours.running_mean *= 3
    ours.num_batches_tracked = np.array(11, dtype=np.int64)
    path = tmp_path / f"ours{suffix}"
    checkpoint.save(path, ours.state_dict())
    if suffix == ".pth":
        theirs.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(theirs.running_mean, torch.arange(3.0) * 3) and int(theirs.num_batches_tracked) == 11
        theirs.num_batches_tracked += 1
        torch.save(theirs.state_dict(), tmp_path / "theirs.pth")
        path = tmp_path / "theirs.pth"
    loaded = Ours()
    loaded.load_state_dict(checkpoint.load(path))
    assert np.array_equal(loaded.running_mean, np.arange(3) * 3)
    assert loaded.num_batches_tracked == (12 if suffix == ".pth" else 11)


def test_moves_carry_buffers_and_casts_change_float_ones_only(backend):
    ours = Ours().to(backend.name)
    for name, array in ours.named_buffers():
        backend.check_array(array, name)
    assert ours.running_mean.dtype == np.float32 and ours.num_batches_tracked.dtype == np.int64
    ours.double()
    assert ours.running_mean.dtype == np.float64 and ours.child.counts.dtype == np.float64
    assert ours.scratch.dtype == np.float64  # non-persistent buffers move and cast too, as in torch
    assert ours.num_batches_tracked.dtype == np.int64
    assert np.array_equal(ours.state_dict()["running_mean"], np.arange(3))


def test_train_and_eval_set_the_mode_of_every_module_as_torch():
    ours, theirs = nn.Sequential(OrderedDict(block=nn.Sequential(nn.ReLU()), leaf=Ours())), Theirs()
    assert all(module.training for module in ours.modules())
    assert ours.eval() is ours and not any(module.training for module in ours.modules())
    assert ours.train() is ours and all(module.training for module in ours.modules())
    ours.block.eval()
    assert [module.training for module in ours.modules()] == [True, False, False, True, True]
    for module in (ours, theirs):
        with pytest.raises(ValueError, match="training mode is expected to be boolean"):
            module.train("no")


def test_register_buffer_refuses_what_torch_refuses():
    ours, theirs = Ours(), Theirs()
    for module in (ours, theirs):
        with pytest.raises(KeyError, match="already exists"):
            module.register_buffer("weight", np.zeros(1) if module is ours else torch.zeros(1))
        with pytest.raises(KeyError):
            module.register_buffer("a.b", np.zeros(1) if module is ours else torch.zeros(1))
