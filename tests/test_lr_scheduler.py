"""Every learning-rate schedule against torch.optim.lr_scheduler: the rates of 300 steps, momentum where
OneCycleLR cycles it, and a schedule saved and loaded midway."""

import math

import numpy as np
import pytest
import torch

from scratchnet import optim
from scratchnet.nn import Parameter
from scratchnet.optim import lr_scheduler

STEPS = 300


def _warmup_then_cosine(lrs, optimizer):
    return lrs.SequentialLR(optimizer, [lrs.LinearLR(optimizer, 0.1, total_iters=20),
                                        lrs.CosineAnnealingLR(optimizer, T_max=100, eta_min=1e-4)], milestones=[20])


def _three_stages(lrs, optimizer):
    return lrs.SequentialLR(optimizer, [lrs.ExponentialLR(optimizer, 0.99),
                                        lrs.StepLR(optimizer, 30, 0.5), lrs.MultiStepLR(optimizer, [10, 40], 0.3)],
                            milestones=[50, 120])


SCHEDULES = {
    "StepLR": lambda lrs, o: lrs.StepLR(o, step_size=30, gamma=0.5),
    "MultiStepLR": lambda lrs, o: lrs.MultiStepLR(o, milestones=[20, 80, 80, 200], gamma=0.3),
    "ExponentialLR": lambda lrs, o: lrs.ExponentialLR(o, gamma=0.98),
    "CosineAnnealingLR": lambda lrs, o: lrs.CosineAnnealingLR(o, T_max=70, eta_min=0.001),
    "LinearLR": lambda lrs, o: lrs.LinearLR(o, start_factor=0.25, end_factor=0.9, total_iters=40),
    "LambdaLR": lambda lrs, o: lrs.LambdaLR(o, [lambda step: 0.97 ** step, lambda step: 1 / (1 + step)]),
    "OneCycleLR": lambda lrs, o: lrs.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=STEPS),
    "OneCycleLR-three-phase-linear": lambda lrs, o: lrs.OneCycleLR(
        o, max_lr=0.4, epochs=6, steps_per_epoch=50, pct_start=0.25, anneal_strategy="linear", three_phase=True,
        base_momentum=0.8, max_momentum=0.9),
    "SequentialLR-warmup-cosine": _warmup_then_cosine,
    "SequentialLR-three": _three_stages,
}


def _optimizers(name):
    ours_params, torch_params = [Parameter(np.zeros(2)), Parameter(np.zeros(3))], [torch.zeros(2), torch.zeros(3)]
    make = dict(SGD=lambda m, p: m.SGD([{"params": p[:1]}, {"params": p[1:], "lr": 0.05}], lr=0.1, momentum=0.9),
                Adam=lambda m, p: m.Adam([{"params": p[:1]}, {"params": p[1:], "lr": 0.05}], lr=0.1))[name]
    return make(optim, ours_params), make(torch.optim, torch_params)


def _momentum(optimizer):
    return [group["betas"][0] if "betas" in group else group["momentum"] for group in optimizer.param_groups]


@pytest.mark.parametrize("optimizer_name", ["SGD", "Adam"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_gives_torchs_rates_for_300_steps(schedule, optimizer_name):
    ours_optimizer, torch_optimizer = _optimizers(optimizer_name)
    ours, theirs = SCHEDULES[schedule](lr_scheduler, ours_optimizer), SCHEDULES[schedule](
        torch.optim.lr_scheduler, torch_optimizer)
    for step in range(STEPS - 1 if schedule.startswith("OneCycle") else STEPS):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-13, abs=1e-16), f"step {step}"
        assert [g["lr"] for g in ours_optimizer.param_groups] == ours.get_last_lr()
        assert _momentum(ours_optimizer) == pytest.approx(_momentum(torch_optimizer), rel=1e-13), f"step {step}"
        torch_optimizer.step()
        ours.step()
        theirs.step()


def test_one_cycle_refuses_a_step_past_its_total_as_torch():
    ours_optimizer, _ = _optimizers("SGD")
    schedule = lr_scheduler.OneCycleLR(ours_optimizer, max_lr=0.1, total_steps=3)
    for _ in range(2):
        schedule.step()
    schedule.step()
    with pytest.raises(ValueError, match="Tried to step 4 times"):
        schedule.step()


@pytest.mark.parametrize("schedule", ["CosineAnnealingLR", "OneCycleLR", "SequentialLR-warmup-cosine", "LambdaLR"])
def test_a_schedule_saved_midway_continues_as_the_whole(schedule):
    whole_optimizer, _ = _optimizers("Adam")
    whole = SCHEDULES[schedule](lr_scheduler, whole_optimizer)
    rates = []
    for _ in range(150):
        whole.step()
        rates.append(whole.get_last_lr())
    first_optimizer, _ = _optimizers("Adam")
    first = SCHEDULES[schedule](lr_scheduler, first_optimizer)
    for _ in range(60):
        first.step()
    saved_schedule, saved_optimizer = first.state_dict(), first_optimizer.state_dict()
    resumed_optimizer, _ = _optimizers("Adam")
    resumed = SCHEDULES[schedule](lr_scheduler, resumed_optimizer)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_schedule)
    for expected in rates[60:]:
        resumed.step()
        assert resumed.get_last_lr() == expected


def test_a_scheduler_that_resumes_without_initial_lr_is_refused():
    optimizer, _ = _optimizers("SGD")
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(optimizer, 10, last_epoch=5)
    assert math.isclose(lr_scheduler.StepLR(optimizer, 10).get_last_lr()[0], 0.1)
