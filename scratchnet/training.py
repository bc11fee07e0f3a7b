"""Training a network on a DataLoader: ``fit``, the tutorial's loop for any model of scratchnet's layers, in
its backend's fastest step, with logging, schedules, divergence checks and resumable state."""

import numpy as np
from tqdm import tqdm

from scratchnet import report, resume
from scratchnet.step import compile_step


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) stopped being finite; the message names the epoch and step (also attributes)."""

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step


def fit(net, criterion, optimizer, loader, epochs, log_every, on_log=None, progress=False, capture=True,
        state=None, average_losses=None, scheduler=None, scheduler_interval="step"):
    """Train as the tutorial's loop does; return (loss_curve, epoch_losses, step_losses).

    Each step's loss stays a backend array, written into a per-epoch array on the
    backend: nothing is copied to the host until a log point (every ``log_every``
    mini-batches) or the end of an epoch. There the window is checked: a NaN or Inf
    raises TrainingDiverged naming the first bad epoch and step; a finite window is
    printed as the tutorial's ``[epoch, step] loss: mean`` and ``on_log(state)``
    runs (the CLI writes a checkpoint there). ``step_losses`` is (epochs run, steps) on the host.

    ``state`` (a ``resume.TrainingState``) is where training starts, and it is kept up to
    date as training goes (its loss curve and epoch losses are the lists returned): a
    fresh one starts at epoch 1, step 0; one restored by ``resume.restore`` continues
    bit for bit where the saved run stopped.

    Each step is the backend's compiled form of the model's training step
    (``step.compile_step``: fused layers, and with ``capture`` a replayed CUDA graph on
    a GPU), whose results equal the eager step's.

    Data-parallel runs pass ``average_losses`` (``scratchnet.distributed.loss_averager``):
    the host losses are averaged over the workers before they are checked and reported.

    The network trains in training mode (``net.train()``: batch statistics, dropout); ``scratchnet.evaluate``
    switches to evaluation mode for its passes and back.

    ``scheduler`` (``scratchnet.optim.lr_scheduler``) steps after every optimizer step
    (``scheduler_interval="step"``) or after every epoch (``"epoch"``); a CUDA graph would replay the
    first rate, so with a scheduler every step runs eagerly. Its state is part of ``resume``'s checkpoint.
    """
    if scheduler_interval not in ("step", "epoch"):
        raise ValueError(f"fit: scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
    average = average_losses or np.asarray
    xp = loader.backend.xp
    net.train()
    state = state if state is not None else resume.TrainingState()
    take_step = compile_step(net, criterion, optimizer, loader.batch_size, label_pool=loader.targets,
                             capture=capture and scheduler is None)
    per_step = scheduler if scheduler_interval == "step" else None
    steps = len(loader)
    loss_curve, epoch_losses, step_losses = state.loss_curve, state.epoch_losses, []
    for epoch in range(state.epoch, epochs + 1):
        done = state.step if epoch == state.epoch else 0
        losses = xp.empty(steps, dtype=xp.float64)
        losses[:done] = loader.backend.asarray(state.epoch_step_losses[:done])
        state.epoch, state.order_state = epoch, loader.order_state
        checked = done  # steps of this epoch whose losses are known to be finite
        batches = tqdm(loader.batches(skip=done), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                       disable=not progress, initial=done, total=steps)
        for index, (images, labels) in enumerate(batches, start=done):
            _, losses[index] = take_step(images, labels)
            if per_step is not None:
                per_step.step()
            step = index + 1
            if step % log_every == 0:
                window = _finite_window(loader.backend, losses, checked, step, epoch, average)
                _check_weights(net, epoch, step)
                checked = step
                loss_curve.append({"epoch": epoch, "step": step, "global_step": (epoch - 1) * steps + step,
                                   "loss": float(window.mean())})
                tqdm.write(report.loss_line(epoch, step, loss_curve[-1]["loss"]))
                if on_log is not None:
                    state.step, state.epoch_step_losses = step, loader.backend.to_numpy(losses[:step])
                    on_log(state)
        _finite_window(loader.backend, losses, checked, steps, epoch, average)
        _check_weights(net, epoch, steps)
        if scheduler is not None and per_step is None:
            scheduler.step()
        epoch_loss = average(loader.backend.to_numpy(losses))
        epoch_losses.append(float(epoch_loss.mean()))
        step_losses.append(epoch_loss)
    # Finished: the next epoch would be past the last, with the shuffle state it would start from.
    state.epoch, state.step, state.epoch_step_losses, state.order_state = epochs + 1, 0, np.empty(0), loader.order_state
    return loss_curve, epoch_losses, np.stack(step_losses) if step_losses else np.empty((0, steps))


def _finite_window(backend, losses, start, stop, epoch, average):
    """The host copy of ``losses[start:stop]``, ``average``d; TrainingDiverged at the first non-finite one."""
    window = average(backend.to_numpy(losses[start:stop]))
    bad = np.flatnonzero(~np.isfinite(window))
    if bad.size:
        step = start + int(bad[0]) + 1
        raise TrainingDiverged(f"the loss became {window[bad[0]]} at epoch {epoch}, step {step}", epoch, step)
    return window


def _check_weights(net, epoch, step):
    for name, param in net.named_parameters():
        if not bool(param.backend.xp.isfinite(param.data).all()):
            raise TrainingDiverged(f"{name} became non-finite by epoch {epoch}, step {step}", epoch, step)
