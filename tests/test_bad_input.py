"""Bad input gets one clear ValueError naming the layer and the shapes."""

import numpy as np
import pytest

from scratchnet import backends, nn
from scratchnet.models import Net


def _zeros(backend, *shape):
    return backend.asarray(np.zeros(shape, dtype=np.float32))


def test_wrong_rank_names_layer_and_shape(backend):
    conv = nn.Conv2d(3, 6, 5).to(backend.name)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 6.*\(32, 32\)"):
        conv(_zeros(backend, 32, 32))  # (C, H, W) is an unbatched input, as in torch
    linear = nn.Linear(400, 120).to(backend.name)
    with pytest.raises(ValueError, match=r"Linear.*\(4, 16, 5, 5\)"):
        linear(_zeros(backend, 4, 16, 5, 5))


def test_wrong_channel_count(backend):
    net = Net(seed=0).to(backend.name)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 6.*3 input channels.*\(4, 1, 32, 32\)"):
        net(_zeros(backend, 4, 1, 32, 32))


def test_wrong_feature_count(backend):
    with pytest.raises(ValueError, match=r"Linear\(in_features=400.*\(2, 300\)"):
        nn.Linear(400, 120).to(backend.name)(_zeros(backend, 2, 300))


def test_spatial_size_smaller_than_kernel(backend):
    with pytest.raises(ValueError, match=r"Conv2d.*\(1, 3, 4, 4\).*smaller than the kernel 5x5"):
        nn.Conv2d(3, 6, 5).to(backend.name)(_zeros(backend, 1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"MaxPool2d.*\(1, 3, 1, 1\).*smaller"):
        nn.MaxPool2d(2).to(backend.name)(_zeros(backend, 1, 3, 1, 1))
    # Too small only deep inside the network: conv2 names itself.
    with pytest.raises(ValueError, match=r"Conv2d\(6, 16.*smaller than the kernel"):
        Net(seed=0).to(backend.name)(_zeros(backend, 1, 3, 12, 12))


def test_label_out_of_range(backend):
    criterion = nn.CrossEntropyLoss()
    logits = _zeros(backend, 2, 10)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*\[0, 9\].*10"):
        criterion(logits, backend.asarray(np.array([3, 10])))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*\[0, 9\]"):
        criterion(logits, backend.asarray(np.array([-1, 0])))


def test_mismatched_batch_sizes(backend):
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*\(4, 10\).*\(4,\).*\(3,\)"):
        nn.CrossEntropyLoss()(_zeros(backend, 4, 10), backend.asarray(np.array([0, 1, 2])))


def test_gradient_of_wrong_shape(backend):
    conv = nn.Conv2d(3, 6, 5).to(backend.name)
    conv(_zeros(backend, 2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"Conv2d.*backward.*\(2, 6, 3, 3\).*\(2, 6, 4, 4\)"):
        conv.backward(_zeros(backend, 2, 6, 3, 3))


def test_backward_before_forward(backend):
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(3, 2).to(backend.name).backward(_zeros(backend, 1, 2))


def test_dtype_mismatch_is_refused(backend):
    linear = nn.Linear(3, 2).to(backend.name)
    with pytest.raises(ValueError, match=r"Linear.*float32.*float64"):
        linear(backend.asarray(np.zeros((1, 3))))


def test_invalid_layer_sizes():
    with pytest.raises(ValueError, match="Conv2d"):
        nn.Conv2d(3, 0, 5)
    with pytest.raises(ValueError, match="Linear"):
        nn.Linear(-1, 3)
    with pytest.raises(ValueError, match="MaxPool2d"):
        nn.MaxPool2d(0)
    with pytest.raises(ValueError, match="width"):
        Net(width=0)


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(backends.BackendError, match=r"'tpu'.*numpy, numba, cupy.*available here: numpy"):
        backends.get("tpu")
    with pytest.raises(backends.BackendError, match="tpu"):
        Net().to("tpu")


def test_load_state_dict_rejects_wrong_keys_and_shapes():
    net = Net(seed=0)
    state = net.state_dict()
    with pytest.raises(KeyError, match="conv1.weight"):
        net.load_state_dict({k: v for k, v in state.items() if k != "conv1.weight"})
    state["fc3.bias"] = np.zeros(11, dtype=np.float32)
    with pytest.raises(ValueError, match=r"fc3.bias.*\(11,\).*\(10,\)"):
        net.load_state_dict(state)
