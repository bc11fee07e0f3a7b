"""The whole training state of a run, on disk: what ``python -m scratchnet.train --resume RUN_DIR`` continues from.

``checkpoint.npz`` beside the weights holds plain arrays only (read with
``allow_pickle=False`` through ``checkpoint.load``, which checks every header before
allocating): the parameters and buffers (``param/<name>``), the optimizer's per-parameter arrays
(``optimizer/<index>/<name>``, as its ``state_dict``; runs saved before that wrote SGD's
momentum buffers as ``momentum/<index>``), the losses of the epoch in progress, and one JSON
record (``record``: epoch, step, loss curve, per-epoch losses, the shuffle generator's state
at the start of the epoch, the optimizer's parameter groups and scalar state, the schedule's state,
the global generator's state (dropout's masks), and the run's flags, seed and versions). Restoring all of
it makes the rest of the run bit-identical to one that was never interrupted.
"""

import dataclasses
import json

import numpy as np

from scratchnet import checkpoint, random

STATE_FILE = "checkpoint.npz"
FORMAT = 1
_RECORD = "record"


class ResumeError(ValueError):
    """A run that cannot be resumed as asked; the message names the file or flag."""


@dataclasses.dataclass
class TrainingState:
    """Where training stands: ``step`` steps of ``epoch`` done (``epoch`` is 1-based; past the last when finished).

    ``epoch_step_losses`` are those steps' losses (host float64); ``order_state`` is the
    shuffle generator's state before ``epoch``'s order was drawn.
    """

    epoch: int = 1
    step: int = 0
    loss_curve: list = dataclasses.field(default_factory=list)
    epoch_losses: list = dataclasses.field(default_factory=list)
    epoch_step_losses: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    order_state: dict = None


def save(path, net, optimizer, state, run, scheduler=None):
    """Write ``state``, ``net``'s parameters, ``optimizer``'s state, ``scheduler``'s (if any) and the ``run``
    record to ``path`` atomically."""
    arrays = {f"param/{name}": value for name, value in net.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    scalars = {}
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, np.ndarray):
                arrays[f"optimizer/{index}/{name}"] = value
            else:
                scalars[f"{index}/{name}"] = value
    arrays["epoch_step_losses"] = np.asarray(state.epoch_step_losses, dtype=np.float64)
    record = {"format": FORMAT, "epoch": state.epoch, "step": state.step, "loss_curve": state.loss_curve,
              "epoch_losses": state.epoch_losses, "order_state": state.order_state, "run": run,
              "optimizer": {"param_groups": optimizer_state["param_groups"], "scalars": scalars},
              "scheduler": None if scheduler is None else scheduler.state_dict(),
              "random": random.get_state()}
    text = json.dumps(record, allow_nan=False)  # what reaches a checkpoint is finite: fit stops at a NaN first
    arrays[_RECORD] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    checkpoint.save_npz(path, arrays)


def read(path):
    """The saved (record, arrays) of ``path``; ResumeError if it is not a training state this version wrote."""
    try:
        arrays = checkpoint.load(path)
    except checkpoint.CheckpointError as exc:
        raise ResumeError(f"cannot resume: {exc}") from None
    try:
        blob = arrays.pop(_RECORD)
        record = json.loads(blob.astype(np.uint8).tobytes().decode("utf-8"))
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format') if isinstance(record, dict) else record!r}")
        for key in ("epoch", "step"):
            if type(record[key]) is not int or record[key] < 0:
                raise ValueError(f"{key} {record[key]!r}")
        if not isinstance(record["run"], dict) or not isinstance(record["run"].get("args"), dict):
            raise ValueError("no run flags")
        points = record["loss_curve"]
        if not all(isinstance(point, dict) and all(type(point.get(key)) is int for key in ("epoch", "step"))
                   and isinstance(point.get("loss"), float) for point in points):
            raise ValueError("a damaged loss curve")
        if not all(isinstance(loss, float) for loss in record["epoch_losses"]):
            raise ValueError("damaged epoch losses")
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ResumeError(f"cannot resume: {path} is not a scratchnet training state ({exc})") from None
    return record, arrays


def restore(path, record, arrays, net, optimizer, loader, scheduler=None):
    """Put the saved parameters, optimizer state, schedule and shuffle state into ``net``, ``optimizer``,
    ``scheduler`` and ``loader``.

    Returns the TrainingState to hand ``fit``. Every array must be a finite float of
    the shape the run's network has.
    """
    names = list(net.state_dict())  # parameters and buffers (batch norm's running statistics and count)
    try:
        net.load_state_dict({name: _finite(path, f"param/{name}", arrays) for name in names})
        optimizer.load_state_dict(_optimizer_state(path, record, arrays, optimizer))
        if (record.get("scheduler") is None) != (scheduler is None):
            raise ValueError("the run was saved with a learning-rate schedule" if scheduler is None
                             else "the run was saved without a learning-rate schedule")
        if scheduler is not None:
            scheduler.load_state_dict(record["scheduler"])
        if "random" in record:  # dropout's masks go on from where they were (runs saved before had none)
            random.set_state(record["random"])
        losses = _finite(path, "epoch_step_losses", arrays)
        if losses.shape != (record["step"],):
            raise ValueError(f"{losses.size} losses saved for step {record['step']}")
        if record["epoch"] < 1 or record["step"] > len(loader):
            raise ValueError(f"epoch {record['epoch']}, step {record['step']} of {len(loader)} steps per epoch")
        loader.order_state = record["order_state"]
        return TrainingState(record["epoch"], record["step"], record["loss_curve"], record["epoch_losses"],
                             losses, record["order_state"])
    except (KeyError, ValueError, TypeError) as exc:
        message = exc.args[0] if exc.args else exc
        raise ResumeError(f"cannot resume from {path}: it does not fit this run ({message})") from None


def _optimizer_state(path, record, arrays, optimizer):
    """The optimizer's ``state_dict`` as saved (or, from a run saved before, its SGD momentum buffers)."""
    saved = record.get("optimizer", {"param_groups": optimizer.state_dict()["param_groups"], "scalars": {}})
    state = {}
    for name in arrays:
        parts = name.split("/")
        if parts[0] == "optimizer" and len(parts) == 3:
            state.setdefault(int(parts[1]), {})[parts[2]] = _finite(path, name, arrays)
        elif parts[0] == "momentum" and len(parts) == 2:
            state.setdefault(int(parts[1]), {})["momentum_buffer"] = _finite(path, name, arrays)
    for key, value in saved["scalars"].items():
        index, name = key.split("/")
        state.setdefault(int(index), {})[name] = float(value)
    # JSON has no tuples: options saved as lists (Adam's betas) come back as the tuples torch keeps.
    groups = [{key: tuple(value) if isinstance(value, list) and key != "params" else value
               for key, value in group.items()} for group in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def _finite(path, name, arrays):
    """``arrays[name]``, a finite float array (or an integer one: a buffer's count)."""
    value = arrays[name]
    if value.dtype.kind not in "fiu" or (value.dtype.kind == "f" and not np.isfinite(value).all()):
        raise ResumeError(f"cannot resume from {path}: {name} is not a finite float array")
    return value
