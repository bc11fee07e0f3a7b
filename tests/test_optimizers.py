"""Adam and AdamW against torch.optim, parameter groups, state dicts, and gradient clipping against
torch.nn.utils, on every backend and both float types."""

import math

import numpy as np
import pytest
import torch

from harness import relative_error
from scratchnet import nn, optim
from scratchnet.nn import Parameter

DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
SHAPES = [(6, 3, 5, 5), (6,), (10, 84)]
ADAM_SETTINGS = [
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(weight_decay=0.1)),
    ("Adam", dict(amsgrad=True)),
    ("Adam", dict(maximize=True, weight_decay=0.05)),
    ("Adam", dict(betas=(0.3, 0.5))),  # 1 - beta1 >= 0.5: torch's lerp takes its other form
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True)),
    ("AdamW", dict(weight_decay=0.0, maximize=True)),
]


def _pair(backend, dtype, seed=0):
    rng = np.random.default_rng(seed)
    initial = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    return [Parameter(backend.asarray(a), backend) for a in initial], [torch.tensor(a, requires_grad=True)
                                                                        for a in initial]


def _run(backend, dtype, ours, theirs, params, params_t, steps, seed=1):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p, p_t in zip(params, params_t):
            grad = rng.standard_normal(p.shape).astype(dtype)
            p.grad[...] = backend.asarray(grad)
            p_t.grad = torch.tensor(grad)
        ours.step()
        theirs.step()


def _worst(backend, params, params_t):
    return max(relative_error(backend.to_numpy(p.data), p_t.detach().numpy()) for p, p_t in zip(params, params_t))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, settings", ADAM_SETTINGS,
                         ids=[f"{n}-{','.join(f'{k}={v}' for k, v in s.items()) or 'defaults'}" for n, s in ADAM_SETTINGS])
def test_adam_matches_torch_for_50_steps(backend, dtype, name, settings, error_report):
    params, params_t = _pair(backend, dtype)
    ours, theirs = getattr(optim, name)(params, **settings), getattr(torch.optim, name)(params_t, **settings)
    _run(backend, dtype, ours, theirs, params, params_t, 50)
    error = _worst(backend, params, params_t)
    error_report((f"{name.lower()} 50 steps", backend.name, np.dtype(dtype).name), error)
    assert error <= TOLERANCE[dtype], f"{name} {settings}: {error:.2e}"


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_parameter_groups_take_their_own_options(backend, name):
    params, params_t = _pair(backend, np.float64, seed=2)
    options = dict(SGD=[dict(lr=0.1, momentum=0.9), dict(lr=0.01, nesterov=True, momentum=0.5)],
                   Adam=[dict(lr=0.05, betas=(0.5, 0.9)), dict(amsgrad=True, weight_decay=0.1)],
                   AdamW=[dict(lr=0.05), dict(weight_decay=0.5, maximize=True)])[name]
    groups = [dict(params=params[:2], **options[0]), dict(params=params[2:], **options[1])]
    groups_t = [dict(params=params_t[:2], **options[0]), dict(params=params_t[2:], **options[1])]
    ours, theirs = getattr(optim, name)(groups, lr=0.02), getattr(torch.optim, name)(groups_t, lr=0.02)
    assert [group["lr"] for group in ours.param_groups] == [group["lr"] for group in theirs.param_groups]
    _run(backend, np.float64, ours, theirs, params, params_t, 30)
    assert _worst(backend, params, params_t) <= 1e-10


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_torch_state_dict_loads_and_training_continues_as_torch(backend, name):
    """Our state_dict has torch's layout: torch's (tensors as arrays) loads into ours and the next steps agree."""
    params, params_t = _pair(backend, np.float64, seed=3)
    settings = dict(lr=0.01, momentum=0.9) if name == "SGD" else dict(lr=0.01, amsgrad=True)
    ours, theirs = getattr(optim, name)(params, **settings), getattr(torch.optim, name)(params_t, **settings)
    _run(backend, np.float64, theirs, theirs, [], [], 0)
    rng = np.random.default_rng(4)
    for _ in range(5):  # torch alone trains; ours then takes torch's weights and state
        for p_t in params_t:
            p_t.grad = torch.tensor(rng.standard_normal(tuple(p_t.shape)))
        theirs.step()
    for p, p_t in zip(params, params_t):
        p.data[...] = backend.asarray(p_t.detach().numpy())
    torch_state = theirs.state_dict()
    ours.load_state_dict({"state": {index: {key: value.numpy() if torch.is_tensor(value) else value
                                            for key, value in values.items()}
                                    for index, values in torch_state["state"].items()},
                          "param_groups": torch_state["param_groups"]})
    assert sorted(ours.state_dict()["state"][0]) == sorted(torch_state["state"][0])
    _run(backend, np.float64, ours, theirs, params, params_t, 10, seed=5)
    assert _worst(backend, params, params_t) <= 1e-10


def test_state_dict_round_trip_continues_bit_identical(backend):
    def fresh():
        params, _ = _pair(backend, np.float32, seed=6)
        return params, optim.AdamW(params, lr=0.01, amsgrad=True)

    def steps(params, optimizer, seeds):
        for seed in seeds:
            for index, param in enumerate(params):
                grad = np.random.default_rng(seed + index).standard_normal(param.shape).astype(np.float32)
                param.grad[...] = backend.asarray(grad)
            optimizer.step()

    whole, whole_optimizer = fresh()
    steps(whole, whole_optimizer, range(5))
    resumed, resumed_optimizer = fresh()
    steps(resumed, resumed_optimizer, range(2))
    saved_weights = [backend.to_numpy(p.data).copy() for p in resumed]
    saved_state = resumed_optimizer.state_dict()
    resumed, resumed_optimizer = fresh()
    for param, weights in zip(resumed, saved_weights):
        param.data[...] = backend.asarray(weights)
    resumed_optimizer.load_state_dict(saved_state)
    assert resumed_optimizer.state[resumed[0]]["step"] == 2.0
    steps(resumed, resumed_optimizer, range(2, 5))
    for ours, theirs in zip(resumed, whole):
        np.testing.assert_array_equal(backend.to_numpy(ours.data), backend.to_numpy(theirs.data))


@pytest.mark.parametrize("settings, message", [
    (dict(lr=-1), "invalid learning rate"), (dict(betas=(1.0, 0.9)), "beta parameter at index 0"),
    (dict(betas=(0.9, -0.1)), "beta parameter at index 1"), (dict(eps=-1), "epsilon"),
    (dict(weight_decay=-1), "weight_decay")])
def test_adam_refuses_what_torch_refuses(settings, message):
    with pytest.raises(ValueError, match=message):
        optim.Adam([Parameter(np.ones(3))], **settings)
    with pytest.raises(ValueError):
        torch.optim.Adam([torch.ones(3, requires_grad=True)], **settings)


def test_a_parameter_in_two_groups_or_no_parameters_is_refused():
    param = Parameter(np.ones(3))
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [param]}, {"params": [param]}], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0, 0.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(backend, dtype, norm_type, max_norm):
    params, params_t = _pair(backend, dtype, seed=7)
    rng = np.random.default_rng(8)
    for p, p_t in zip(params, params_t):
        grad = rng.standard_normal(p.shape).astype(dtype)
        p.grad[...] = backend.asarray(grad)
        p_t.grad = torch.tensor(grad)
    total = nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    total_t = torch.nn.utils.clip_grad_norm_(params_t, max_norm, norm_type)
    assert total.shape == () and total.dtype == dtype
    assert relative_error(backend.to_numpy(total), total_t.numpy()) <= TOLERANCE[dtype]
    for p, p_t in zip(params, params_t):
        assert relative_error(backend.to_numpy(p.grad), p_t.grad.numpy()) <= TOLERANCE[dtype]


def test_clip_grad_value_and_a_nonfinite_norm_match_torch(backend):
    params, params_t = _pair(backend, np.float64, seed=9)
    for p, p_t in zip(params, params_t):
        p.grad[...] = p.data * 3
        p_t.grad = p_t.detach() * 3
    nn.utils.clip_grad_value_(params, 0.7)
    torch.nn.utils.clip_grad_value_(params_t, 0.7)
    for p, p_t in zip(params, params_t):
        np.testing.assert_array_equal(backend.to_numpy(p.grad), p_t.grad.numpy())
    params[0].grad[0, 0, 0, 0] = np.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
