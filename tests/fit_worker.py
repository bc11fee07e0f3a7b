"""A modern network trained by ``fit`` with AdamW, a one-cycle schedule and augmentation, checkpointed at every
log point through ``resume``; started again on the same folder, it resumes from the checkpoint. What
``test_fit_resume`` kills with SIGKILL and resumes.

    python tests/fit_worker.py FOLDER DATA_ROOT
"""

import os
import sys

import numpy as np

import scratchnet
from scratchnet import checkpoint, nn, optim, resume
from scratchnet.data import CIFAR10, DataLoader
from scratchnet.optim.lr_scheduler import OneCycleLR
from scratchnet.training import fit
from scratchnet.transforms import Compose, RandomCrop, RandomHorizontalFlip


def main(folder, data_root):
    scratchnet.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.GELU(), nn.MaxPool2d(2),
                          nn.Dropout(0.2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)).to("numba")
    optimizer = optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(CIFAR10(data_root, limit=960), 16, shuffle=True, seed=1, backend="numba",
                        transform=Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()]))
    schedule = OneCycleLR(optimizer, max_lr=0.01, epochs=3, steps_per_epoch=len(loader))
    path = os.path.join(folder, resume.STATE_FILE)
    state = None
    if os.path.exists(path):
        record, arrays = resume.read(path)
        state = resume.restore(path, record, arrays, model, optimizer, loader, schedule)

    def save(at):
        resume.save(path, model, optimizer, at, {"args": {}}, schedule)

    curve, _, _ = fit(model, nn.CrossEntropyLoss().to("numba"), optimizer, loader, epochs=3, log_every=4,
                      on_log=save, state=state, scheduler=schedule)
    checkpoint.save_npz(os.path.join(folder, "weights.npz"), model.state_dict())
    np.save(os.path.join(folder, "curve.npy"), np.array([point["loss"] for point in curve]))


if __name__ == "__main__":
    main(*sys.argv[1:])
