"""The CIFAR-10 tutorial on scratchnet: ``python -m scratchnet.train [--backend numba] [--epochs 2] ...``.

Trains the tutorial's Net with cross-entropy and SGD momentum, prints the tutorial's
printout, and leaves a run folder with the weights (``cifar_net.npz``), ``metrics.json``
and PNG plots.
"""

import os
import sys
import time

import numpy as np
from tqdm import tqdm

from scratchnet import backends, checkpoint, cli, nn, plots, report
from scratchnet.data import CIFAR10, DataError, DataLoader
from scratchnet.evaluate import evaluate
from scratchnet.models import Net
from scratchnet.optim import SGD

WEIGHTS_FILE = "cifar_net.npz"


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) stopped being finite; the message names the epoch and step."""


def fit(net, criterion, optimizer, loader, epochs, log_every, on_log=None, progress=False, capture=True):
    """Train as the tutorial's loop does; return (loss_curve, epoch_losses, step_losses).

    Each step's loss stays a backend array, written into a per-epoch array on the
    backend: nothing is copied to the host until a log point (every ``log_every``
    mini-batches) or the end of an epoch. There the window is checked: a NaN or Inf
    raises TrainingDiverged naming the first bad epoch and step; a finite window is
    printed as the tutorial's ``[epoch, step] loss: mean`` and ``on_log(epoch, step)``
    runs (the CLI writes a checkpoint there). ``step_losses`` is (epochs, steps) on the host.

    Each step is the backend's compiled form of the model's training step
    (``Backend.compile_step``: fused layers, and with ``capture`` a replayed CUDA graph on
    a GPU), whose results equal the eager step's.
    """
    xp = loader.backend.xp
    take_step = loader.backend.compile_step(net, criterion, optimizer, loader.batch_size,
                                            label_pool=loader.targets, capture=capture)
    steps = len(loader)
    loss_curve, epoch_losses, step_losses = [], [], []
    for epoch in range(1, epochs + 1):
        losses = xp.empty(steps, dtype=xp.float64)
        checked = 0  # steps of this epoch whose losses are known to be finite
        batches = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, disable=not progress)
        for index, (images, labels) in enumerate(batches):
            _, losses[index] = take_step(images, labels)
            step = index + 1
            if step % log_every == 0:
                window = _finite_window(loader.backend, losses, checked, step, epoch)
                _check_weights(net, epoch, step)
                checked = step
                loss_curve.append({"epoch": epoch, "step": step, "global_step": (epoch - 1) * steps + step,
                                   "loss": float(window.mean())})
                tqdm.write(report.loss_line(epoch, step, loss_curve[-1]["loss"]))
                if on_log is not None:
                    on_log(epoch, step)
        _finite_window(loader.backend, losses, checked, steps, epoch)
        _check_weights(net, epoch, steps)
        epoch_loss = loader.backend.to_numpy(losses)
        epoch_losses.append(float(epoch_loss.mean()))
        step_losses.append(epoch_loss)
    return loss_curve, epoch_losses, np.stack(step_losses)


def _finite_window(backend, losses, start, stop, epoch):
    """The host copy of ``losses[start:stop]``; TrainingDiverged at the first non-finite one."""
    window = backend.to_numpy(losses[start:stop])
    bad = np.flatnonzero(~np.isfinite(window))
    if bad.size:
        raise TrainingDiverged(f"the loss became {window[bad[0]]} at epoch {epoch}, step {start + bad[0] + 1}")
    return window


def _check_weights(net, epoch, step):
    for name, param in net.named_parameters():
        if not bool(param.backend.xp.isfinite(param.data).all()):
            raise TrainingDiverged(f"{name} became non-finite by epoch {epoch}, step {step}")


def main(argv=None):
    parser = cli.Parser(prog="python -m scratchnet.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=backends.names(), default="numba", help="engine backend (default numba)")
    parser.add_argument("--width", type=cli.positive_int, default=1, help="multiply the conv channels (default 1)")
    parser.add_argument("--no-cuda-graph", dest="capture", action="store_false",
                        help="GPU: run every step eagerly instead of replaying a captured CUDA graph")
    cli.add_training_arguments(parser)
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser.prog, DataError, backends.BackendError, TrainingDiverged, OSError):
        run(args)


def run(args):
    started = time.perf_counter()
    backend = backends.get(args.backend)
    seed = cli.resolve_seed(args.seed)
    trainset = CIFAR10(args.data, train=True, download=args.download, limit=args.limit_train)
    testset = CIFAR10(args.data, train=False, limit=args.limit_test)
    run_dir = cli.run_folder(args.out, f"scratchnet-{backend.name}-seed{seed}")
    weights = os.path.join(run_dir, WEIGHTS_FILE)
    data_time = time.perf_counter() - started

    # Independent streams for the initial weights and the shuffle order, both from the one seed.
    init_seed, order_seed = np.random.SeedSequence(seed).spawn(2)
    net = Net(width=args.width, seed=np.random.default_rng(init_seed)).to(backend.name)
    criterion = nn.CrossEntropyLoss().to(backend.name)
    optimizer = SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    trainloader = DataLoader(trainset, args.batch_size, shuffle=True, seed=order_seed, backend=backend)

    last_saved = []

    def save_checkpoint(epoch, step):
        checkpoint.save_npz(weights, net.state_dict())
        last_saved[:] = [epoch, step]

    train_started = time.perf_counter()
    try:
        with np.errstate(all="ignore"):  # fit itself catches and reports non-finite losses
            loss_curve, epoch_losses, _ = fit(net, criterion, optimizer, trainloader, args.epochs, args.log_every,
                                              on_log=save_checkpoint, progress=sys.stderr.isatty(),
                                              capture=args.capture)
    except TrainingDiverged as exc:
        kept = (f"the last good weights (epoch {last_saved[0]}, step {last_saved[1]}) are in {weights}"
                if last_saved else "no weights were saved (it diverged before the first log point)")
        raise TrainingDiverged(f"training stopped: {exc}; {kept}") from None
    train_time = time.perf_counter() - train_started
    print("Finished Training")
    save_checkpoint(args.epochs, len(trainloader))

    test_started = time.perf_counter()
    predictions, summary = evaluate(net, testset, args.batch_size, backend)
    test_time = time.perf_counter() - test_started
    for line in report.test_report_lines(testset.targets, predictions, summary, testset.classes):
        print(line)

    metrics = report.run_metrics(
        framework="scratchnet", backend=backend.name, seed=seed, config=cli.config(args, width=args.width),
        data_root=args.data, train_images=len(trainset), summary=summary, loss_curve=loss_curve,
        epoch_losses=epoch_losses, wall_time_s={"data": data_time, "train": train_time, "test": test_time,
                                                "total": time.perf_counter() - started},
        versions=report.versions("scratchnet", "numpy", "numba", "cupy"),
    )
    report.write_metrics(run_dir, metrics)
    plots.save_all(run_dir, metrics, testset.data[:plots.GRID_IMAGES], testset.targets, predictions, testset.classes)
    print(f"Run folder: {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
