"""scratchnet.checkpoint: our .npz and torch's .pth, both ways, and refusals."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from cifar_fakes import MarkerPayload
from reference.tutorial import Net as TorchNet
from scratchnet import checkpoint
from scratchnet.evaluate import net_from_weights
from scratchnet.models import Net


@pytest.fixture
def state():
    return Net(seed=3).state_dict()


def assert_same_state(got, want):
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name])


def test_npz_round_trip_leaves_no_temporary_files(tmp_path, state):
    path = tmp_path / "cifar_net.npz"
    checkpoint.save_npz(path, state)
    checkpoint.save_npz(path, state)  # overwriting goes through a temporary file too
    assert_same_state(checkpoint.load(path), state)
    assert os.listdir(tmp_path) == ["cifar_net.npz"]


def test_our_pth_is_accepted_by_torch_weights_only_load(tmp_path, state):
    path = tmp_path / "cifar_net.pth"
    checkpoint.save_pth(path, state)
    loaded = torch.load(path, weights_only=True)
    assert_same_state({name: tensor.numpy() for name, tensor in loaded.items()}, state)
    assert_same_state(checkpoint.load(path), state)
    torch_net = TorchNet()
    torch_net.load_state_dict(loaded)  # the tutorial's Net takes it as its own


def test_torch_saved_state_dict_reads_without_torch_and_predicts_alike(tmp_path):
    torch.manual_seed(0)
    torch_net = TorchNet()
    path = tmp_path / "cifar_net.pth"
    torch.save(torch_net.state_dict(), path)
    net = net_from_weights(path)
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = torch_net(torch.from_numpy(images)).numpy()
    got = net(images)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_strided_and_shared_storages_are_rebuilt(tmp_path):
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    path = tmp_path / "views.pth"
    torch.save({"transposed": base.t(), "row": base[2], "every_other": base[:, ::2], "longs": torch.arange(3)}, path)
    loaded = checkpoint.load(path)
    for name, tensor in {"transposed": base.t(), "row": base[2], "every_other": base[:, ::2],
                         "longs": torch.arange(3)}.items():
        np.testing.assert_array_equal(loaded[name], tensor.numpy())


def test_a_pth_asking_for_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": MarkerPayload(str(marker))}, protocol=2))
    with pytest.raises(checkpoint.CheckpointError, match="refused to load"):
        checkpoint.load(path)
    assert not marker.exists()


def test_a_pth_with_more_than_tensors_is_refused(tmp_path):
    path = tmp_path / "extra.pth"
    torch.save({"w": torch.zeros(2), "epoch": 3}, path)
    with pytest.raises(checkpoint.CheckpointError, match="'epoch' holds int"):
        checkpoint.load(path)


def test_a_tensor_outside_its_storage_is_refused():
    rebuild = checkpoint._rebuild_tensor("crafted.pth")
    storage = np.zeros(5, np.float32)
    with pytest.raises(checkpoint.CheckpointError, match="past the end"):
        rebuild(storage, 0, (6,), (1,))
    with pytest.raises(checkpoint.CheckpointError, match="past the end"):
        rebuild(storage, 3, (2, 2), (1, 1))
    with pytest.raises(checkpoint.CheckpointError, match="invalid layout"):
        rebuild(storage, 0, (2,), (-1,))
    np.testing.assert_array_equal(rebuild(np.arange(5, dtype=np.float32), 1, (2, 2), (2, 1)), [[1, 2], [3, 4]])


@pytest.mark.parametrize("content", [b"just some text", b"PK\x03\x04broken zip", None])
def test_foreign_or_damaged_files_are_refused_by_name(tmp_path, content, state):
    path = tmp_path / "weights.bin"
    if content is None:  # a real .pth cut short
        checkpoint.save_pth(tmp_path / "whole.pth", state)
        content = (tmp_path / "whole.pth").read_bytes()[:5000]
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        checkpoint.load(path)


def test_weights_of_another_network_are_refused_by_name(tmp_path):
    path = tmp_path / "other.npz"
    checkpoint.save_npz(path, {"conv1.weight": np.zeros((6, 3, 5, 5), np.float32)})
    with pytest.raises(checkpoint.CheckpointError, match="does not hold the tutorial Net's weights"):
        net_from_weights(path)
    with pytest.raises(checkpoint.CheckpointError, match="missing.npz: no such file"):
        checkpoint.load(tmp_path / "missing.npz")
