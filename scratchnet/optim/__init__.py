"""Optimizers and learning-rate schedules with torch.optim's semantics."""

from scratchnet.optim import lr_scheduler
from scratchnet.optim.adam import Adam, AdamW
from scratchnet.optim.optimizer import Optimizer
from scratchnet.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
