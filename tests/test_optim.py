"""SGD against torch.optim.SGD: the same gradients in, the same parameters out."""

import numpy as np
import pytest
import torch

from harness import relative_error
from scratchnet import optim
from scratchnet.models import Net
from scratchnet.nn import Parameter

SETTINGS = [
    dict(momentum=0.0),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, dampening=0.5),
    dict(momentum=0.9, weight_decay=1e-2),
    dict(momentum=0.0, weight_decay=1e-2),
    dict(momentum=0.5, nesterov=True, weight_decay=1e-3),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_sgd_matches_torch_for_20_steps(backend, settings, error_report):
    rng = np.random.default_rng(0)
    shapes = [(6, 3, 5, 5), (6,), (10, 84)]
    initial = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = [Parameter(backend.asarray(a), backend) for a in initial]
    params_t = [torch.tensor(a, requires_grad=True) for a in initial]
    ours = optim.SGD(params, lr=0.01, **settings)
    theirs = torch.optim.SGD(params_t, lr=0.01, **settings)

    for _ in range(20):
        for p, p_t in zip(params, params_t):
            grad = rng.standard_normal(p.shape).astype(np.float32)
            p.grad[...] = backend.asarray(grad)
            p_t.grad = torch.tensor(grad)
        ours.step()
        theirs.step()

    for p, p_t in zip(params, params_t):
        error = relative_error(backend.to_numpy(p.data), p_t.detach().numpy())
        error_report(("sgd 20 steps", backend.name, "float32"), error)
        assert error <= 1e-6


def test_sgd_zero_grad_clears_gradients(backend):
    param = Parameter(backend.asarray(np.ones(3, dtype=np.float32)), backend)
    param.grad[...] = 1
    optim.SGD([param], lr=0.1).zero_grad()
    assert not backend.to_numpy(param.grad).any()


@pytest.mark.parametrize("settings", [dict(lr=-1), dict(lr=0.1, momentum=-0.5),
                                      dict(lr=0.1, nesterov=True), dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1)])
def test_sgd_rejects_invalid_settings(settings):
    param = Parameter(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="SGD"):
        optim.SGD([param], **settings)


def test_state_dict_round_trip_continues_bit_identical(backend):
    def model():
        net = Net(seed=4).to(backend.name)
        return net, optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(net, optimizer, seed):
        for index, param in enumerate(net.parameters()):
            grad = np.random.default_rng(seed + index).standard_normal(param.shape).astype(np.float32)
            param.grad[...] = backend.asarray(grad)
        optimizer.step()

    whole, whole_optimizer = model()
    resumed, resumed_optimizer = model()
    assert resumed_optimizer.state_dict()["state"] == {}  # no step yet: the next one is the first
    resumed_optimizer.load_state_dict(resumed_optimizer.state_dict())
    for seed in range(3):
        step(whole, whole_optimizer, seed)
    step(resumed, resumed_optimizer, 0)
    saved_weights, saved_optimizer = resumed.state_dict(), resumed_optimizer.state_dict()
    resumed, resumed_optimizer = model()
    resumed.load_state_dict(saved_weights)
    resumed_optimizer.load_state_dict(saved_optimizer)
    for seed in (1, 2):
        step(resumed, resumed_optimizer, seed)
    for name, value in whole.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], value, err_msg=name)
