"""``fit`` with the next chapter's pieces: Adam, a learning-rate schedule stepped per batch or per epoch,
augmentation. A run interrupted at a checkpoint and resumed through ``resume`` ends bit-identical to an
uninterrupted one, on every backend; on the GPU backend an Adam step is never replayed from a CUDA graph."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_cli import REPO

from scratchnet import nn, optim, resume
from scratchnet.data import DataLoader
from scratchnet.models import Net
from scratchnet.optim import lr_scheduler
from scratchnet.step import compile_step, eager_step
from scratchnet.training import fit
from scratchnet.transforms import Compose, RandomCrop, RandomHorizontalFlip


class _Pixels:
    def __init__(self, count):
        rng = np.random.default_rng(11)
        self.pixels = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
        self.targets = rng.integers(0, 10, size=count)

    def __len__(self):
        return len(self.targets)


class _Interrupted(Exception):
    pass


def _parts(backend, interval):
    net = Net(seed=4).to(backend.name)
    optimizer = optim.AdamW(net.parameters(), lr=2e-3, amsgrad=True)
    loader = DataLoader(_Pixels(40), 4, shuffle=True, seed=9, backend=backend, drop_last=True,
                        transform=Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()]))
    if interval == "step":
        scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, epochs=3, steps_per_epoch=len(loader))
    else:
        scheduler = lr_scheduler.SequentialLR(optimizer, [lr_scheduler.LinearLR(optimizer, 0.5, total_iters=1),
                                                          lr_scheduler.ExponentialLR(optimizer, 0.5)], milestones=[1])
    return net, nn.CrossEntropyLoss().to(backend.name), optimizer, loader, scheduler


def _fit(parts, interval, **options):
    net, criterion, optimizer, loader, scheduler = parts
    curve, epoch_losses, _ = fit(net, criterion, optimizer, loader, epochs=3, log_every=4, scheduler=scheduler,
                                 scheduler_interval=interval, **options)
    return net.state_dict(), curve, epoch_losses, scheduler.get_last_lr()


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_a_run_with_adam_a_schedule_and_augmentation_resumes_bit_identical(backend, interval, tmp_path):
    whole = _fit(_parts(backend, interval), interval)
    path = tmp_path / "checkpoint.npz"
    parts = _parts(backend, interval)
    net, _, optimizer, _, scheduler = parts

    def save_then_stop(state):
        if (state.epoch, state.step) == (2, 4):  # mid-epoch, after a schedule change and some augmentation
            resume.save(path, net, optimizer, state, {"args": {}}, scheduler)
            raise _Interrupted

    with pytest.raises(_Interrupted):
        _fit(parts, interval, on_log=save_then_stop)
    parts = _parts(backend, interval)
    record, arrays = resume.read(path)
    state = resume.restore(path, record, arrays, *parts[:1], parts[2], parts[3], parts[4])
    resumed = _fit(parts, interval, state=state)
    for name, value in whole[0].items():
        np.testing.assert_array_equal(resumed[0][name], value, err_msg=name)
    assert resumed[1:] == whole[1:]


def test_a_schedule_saved_needs_one_to_resume(backend, tmp_path):
    parts = _parts(backend, "epoch")
    net, _, optimizer, loader, scheduler = parts
    path = tmp_path / "checkpoint.npz"
    resume.save(path, net, optimizer, resume.TrainingState(), {"args": {}}, scheduler)
    record, arrays = resume.read(path)
    with pytest.raises(resume.ResumeError, match="saved with a learning-rate schedule"):
        resume.restore(path, record, arrays, net, optimizer, loader)


def test_an_adam_step_is_never_replayed_from_a_cuda_graph(backend):
    """Adam's bias corrections change every step: a replayed graph would keep the first. Compiled steps
    (with graph capture where the backend has it) equal eager steps bit for bit."""
    rng = np.random.default_rng(12)
    batches = [(backend.asarray(rng.uniform(-1, 1, size=(4, 3, 32, 32)).astype(np.float32)),
                backend.asarray(rng.integers(0, 10, size=4))) for _ in range(6)]
    results = []
    for compiled in (False, True):
        net = Net(seed=5).to(backend.name)
        optimizer, criterion = optim.Adam(net.parameters(), lr=0.01), nn.CrossEntropyLoss().to(backend.name)
        step = compile_step(net, criterion, optimizer, 4) if compiled else \
            (lambda x, y: eager_step(net, criterion, optimizer, x, y))
        losses = [float(step(x, y)[1]) for x, y in batches]
        results.append((losses, net.state_dict()))
    assert results[0][0] == results[1][0]
    for name, value in results[0][1].items():
        np.testing.assert_array_equal(results[1][1][name], value, err_msg=name)


def test_a_modern_run_killed_at_any_moment_resumes_bit_identical(data_root, tmp_path):
    worker = [sys.executable, os.path.join(os.path.dirname(__file__), "fit_worker.py")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    assert subprocess.run([*worker, str(whole), data_root], env=env, capture_output=True).returncode == 0
    process = subprocess.Popen([*worker, str(killed), data_root], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while not (killed / resume.STATE_FILE).exists() and process.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # a few checkpoints later, at whatever the run is doing then
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = subprocess.run([*worker, str(killed), data_root], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_array_equal(np.load(killed / "curve.npy"), np.load(whole / "curve.npy"))
    with np.load(whole / "weights.npz") as want, np.load(killed / "weights.npz") as got:
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
