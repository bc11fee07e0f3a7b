"""One rank of a data-parallel fit on real CIFAR-10, started under mpiexec by ``test_distributed.py``.

``python tests/distributed_worker.py OUT.npz --data DIR --images N --batch-size B --dtype D --backend NAME
[--batch-norm]`` trains one epoch (the tutorial Net, or a small batch-norm network); rank 0 writes every
step's loss (averaged over the ranks), the final parameters and whether every rank ended with
bit-identical parameters.
"""

import argparse
import hashlib

import numpy as np

import scratchnet
from scratchnet import distributed, nn, training
from scratchnet.data import CIFAR10, DataLoader
from scratchnet.models import Net
from scratchnet.optim import SGD

SEED = 11


def batch_norm_net(seed):
    """conv (no bias) -> batch norm -> ReLU -> max-pool -> linear: each rank normalizes by its own batch."""
    scratchnet.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 5, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 14 * 14, 10))


def fit_one_epoch(root, images, batch_size, dtype, backend, comm=None, batch_norm=False):
    """The tutorial's training (lr 0.001, momentum 0.9) for one epoch; return (step losses, state_dict).

    Without ``comm``, one worker on the plain single-process path. With it, every rank
    starts from different weights, so the result depends on rank 0's being broadcast.
    """
    trainset = CIFAR10(root, train=True, limit=images)
    seed = SEED + (comm.rank if comm else 0)
    net = (batch_norm_net(seed) if batch_norm else Net(seed=seed)).to(backend).to(dtype)
    optimizer = SGD(net.parameters(), lr=0.001, momentum=0.9)
    rank, workers, average = 0, 1, None
    if comm is not None:
        distributed.broadcast_parameters(net.parameters(), comm)
        optimizer = distributed.DataParallelOptimizer(optimizer, comm)
        rank, workers, average = comm.rank, comm.size, distributed.loss_averager(comm)
    loader = DataLoader(trainset, batch_size, shuffle=True, seed=SEED, backend=backend, dtype=dtype,
                        rank=rank, workers=workers)
    _, _, step_losses = training.fit(net, nn.CrossEntropyLoss().to(backend), optimizer, loader, epochs=1,
                                  log_every=len(loader) + 1, average_losses=average, capture=False)
    return step_losses.ravel(), net.state_dict()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--batch-norm", action="store_true")
    args = parser.parse_args()
    comm = distributed.init(args.backend)
    with distributed.reporting_faults(comm, "distributed_worker"):
        losses, state = fit_one_epoch(args.data, args.images, args.batch_size, np.dtype(args.dtype), args.backend,
                                      comm, args.batch_norm)
        # Parameters only: batch norm's running statistics are each rank's own, as with torch's DDP without SyncBatchNorm.
        parameters = sorted(name for name in state if not name.endswith(("running_mean", "running_var", "tracked")))
        digest = hashlib.sha256(b"".join(state[name].tobytes() for name in parameters)).hexdigest()
        digests = comm.allgather_json(digest)
        if comm.rank == 0:
            np.savez(args.out, losses=losses, identical_on_every_rank=len(set(digests)) == 1,
                     world_size=comm.size, transport=comm.transport, **state)


if __name__ == "__main__":
    main()
