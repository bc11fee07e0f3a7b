"""The CIFAR-10 tutorial on scratchnet: ``python -m scratchnet.train [--backend numba] [--epochs 2] ...``.

Trains the tutorial's Net with cross-entropy and SGD momentum, prints the tutorial's
printout, and leaves a run folder with the weights (``cifar_net.npz``), the whole training
state (``checkpoint.npz``, which ``--resume RUN_DIR`` continues from bit for bit),
``metrics.json`` and PNG plots.
"""

import math
import os
import sys
import time

import numpy as np

from scratchnet import backends, checkpoint, cli, distributed, nn, plots, random, report, resume, runs
from scratchnet.data import CIFAR10, DataLoader, normalize
from scratchnet.download import DataError
from scratchnet.evaluate import class_probabilities, evaluate
from scratchnet.models import Net, parameter_shapes
from scratchnet.optim import SGD
from scratchnet.tensorboard_log import TensorBoardLog, TensorBoardMissing
from scratchnet.training import TrainingDiverged, fit

WEIGHTS_FILE = "cifar_net.npz"


# The flags a run is made of: recorded in its checkpoint, taken from there by --resume.
RUN_FLAGS = ("backend", "width", "dtype", "distributed", "cuda_graph", "data", "epochs", "batch_size", "lr", "momentum",
             "seed", "limit_train", "limit_test", "log_every", "tensorboard")
TENSORBOARD_FOLDER = "tensorboard"  # --tensorboard without a DIR: this folder in the run folder


def main(argv=None):
    parser = cli.Parser(prog="python -m scratchnet.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=backends.names(), default="numba", help="engine backend (default numba)")
    parser.add_argument("--width", type=cli.positive_int, default=1, help="multiply the conv channels (default 1)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="float type of the whole run: data, weights, gradients (default float32)")
    parser.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                        help="GPU: run every step eagerly instead of replaying a captured CUDA graph")
    parser.add_argument("--resume", metavar="RUN_DIR", type=cli.folder_name,
                        help="continue the run in RUN_DIR from its last checkpoint, with its flags")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over the ranks of an MPI launcher (mpiexec -n N ...), "
                             "over NCCL with --backend cupy; --batch-size is then per worker")
    parser.add_argument("--timeout", type=cli.non_negative_float, default=distributed.DEFAULT_TIMEOUT_S,
                        metavar="SECONDS", help="--distributed: the longest a rank waits for the others in any "
                                                "collective, 0 for no bound (default %(default)g)")
    parser.add_argument("--tensorboard", nargs="?", const="", metavar="DIR",
                        help=f"log the loss, learning rate, weight and gradient histograms, test accuracy, per-class "
                             f"precision-recall curves and predictions for TensorBoard in DIR (default: "
                             f"RUN_DIR/{TENSORBOARD_FOLDER}); needs the tensorboard package")
    cli.add_training_arguments(parser)
    args = parser.parse_args(argv)
    expected = (DataError, backends.BackendError, TrainingDiverged, OSError, runs.RunFolderError, resume.ResumeError,
                TensorBoardMissing)
    if not args.distributed:
        if distributed.launcher_size() > 1:
            if distributed.launcher_rank() != 0:
                sys.exit(2)  # rank 0, started with the same command, says why: one line, not one per rank
            parser.error(f"started as one of {distributed.launcher_size()} MPI ranks: pass --distributed "
                         f"(or start one process)")
        with cli.one_line_errors(parser.prog, *expected):
            if args.resume is not None:
                args, next_epoch = _flags_of_resumed_run(args, cli.explicit_flags(parser, argv))
                if args.distributed:
                    parser.error(f"{args.resume} holds a data-parallel run, which --resume cannot continue")
                if next_epoch > args.epochs:  # finished: nothing to train, and its folder stays as it is
                    print(f"{args.resume} is a finished run ({args.epochs} of {args.epochs} epochs); nothing to do. "
                          f"To train it further pass --epochs N with N > {args.epochs}")
                    return
            _check_memory(parser, args.width)
            run(args, distributed.SingleProcess())
        return
    if args.resume is not None:
        parser.error("--resume continues single-process runs only; a data-parallel run starts afresh")
    _check_memory(parser, args.width)
    with cli.one_line_errors(parser.prog, distributed.DistributedError):
        comm = distributed.init(args.backend, args.timeout or None)
    with distributed.reporting_faults(comm, parser.prog, *expected):
        run(args, comm)


def _flags_of_resumed_run(args, given):
    """``args`` with the run's own flags from its checkpoint, and the epoch it continues at.

    A flag given that differs is refused, except a larger ``--epochs``: a run, finished
    or not, continues for more epochs as if it had been started with that many.
    """
    if args.overwrite:
        raise resume.ResumeError("--resume continues a run and --overwrite replaces it: pass one of them")
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
        raise resume.ResumeError(f"--out {args.out} differs from --resume {args.resume}: a run resumes in its folder")
    path = os.path.join(args.resume, resume.STATE_FILE)
    record, _ = resume.read(path)
    saved = record["run"]["args"]
    epochs = saved.get("epochs")
    # Past the last epoch is where a finished run stands, at step 0: anything further is damage.
    if not isinstance(epochs, int) or (record["epoch"], record["step"]) > (epochs + 1, 0):
        raise resume.ResumeError(f"cannot resume from {path}: epoch {record['epoch']}, step {record['step']} "
                                 f"does not fit a run of {epochs!r} epochs")
    for dest in RUN_FLAGS:
        if dest == "epochs" and "epochs" in given and args.epochs > epochs:
            continue
        if dest in given and getattr(args, dest) != saved.get(dest):
            flag = "--no-cuda-graph" if dest == "cuda_graph" else "--" + dest.replace("_", "-")
            raise resume.ResumeError(f"{flag} {getattr(args, dest)} conflicts with the resumed run's "
                                     f"{saved.get(dest)!r}; a resumed run keeps its flags (drop {flag})")
        setattr(args, dest, saved.get(dest, getattr(args, dest)))  # a flag older records lack keeps its default
    args.out = args.resume
    return args, record["epoch"]


def _check_memory(parser, width):
    """Refuse a --width whose parameters, gradients and momentum alone exceed this machine's memory."""
    needed = 3 * 4 * sum(math.prod(shape) for shape in parameter_shapes(width).values())
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        parser.error(f"--width {width} needs at least {needed / 2**30:.1f} GiB of memory for the network's "
                     f"parameters, gradients and momentum; this machine has {available / 2**30:.1f} GiB")


def run(args, comm):
    """One training run; with ``--distributed``, this rank's part of it (``comm`` is the job's communicator)."""
    started = time.perf_counter()
    backend = backends.get(args.backend)
    distributed.check_same_flags(comm, vars(args))
    seed = comm.allgather_json(cli.resolve_seed(args.seed))[0]  # rank 0's: a fresh seed is drawn once
    distributed.quiet_unless_rank_0(comm)
    if comm.rank != 0:  # rank 0 alone writes the run folder
        _train_and_test(args, backend, seed, None, started, comm)
        return
    # Room for the weights and the training state, each beside its previous version while it is replaced.
    params = sum(math.prod(shape) for shape in parameter_shapes(args.width).values())
    room = 2 * 3 * np.dtype(args.dtype).itemsize * params
    with runs.open_run_folder(args.out, f"scratchnet-{backend.name}-seed{seed}", resume=args.resume is not None,
                              overwrite=args.overwrite, room_bytes=room) as folder:
        if args.overwrite:
            print(f"note: --overwrite: replacing the run in {folder.path}", file=sys.stderr)
        _train_and_test(args, backend, seed, folder, started, comm)


def _train_and_test(args, backend, seed, folder, started, comm):
    """Train and test; ``folder`` is the run folder, None on the ranks that do not write it."""
    saved = resume.read(folder.file(resume.STATE_FILE)) if args.resume is not None else None
    data_started = time.perf_counter()  # the data's time alone, as the reference times its own
    trainset = CIFAR10(args.data, train=True, download=args.download and folder is not None, limit=args.limit_train)
    testset = CIFAR10(args.data, train=False, limit=args.limit_test)
    data_time = time.perf_counter() - data_started
    weights = folder.file(WEIGHTS_FILE) if folder is not None else None

    # Independent streams for the initial weights, the shuffle order and the layers' own draws (dropout's
    # masks, from scratchnet's global generator), all from the one seed.
    init_seed, order_seed, layers_seed = np.random.SeedSequence(seed).spawn(3)
    random.manual_seed(layers_seed)
    dtype = np.dtype(args.dtype)
    net = Net(width=args.width, seed=np.random.default_rng(init_seed)).to(backend.name).to(dtype)
    criterion = nn.CrossEntropyLoss().to(backend.name)
    optimizer = SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    # Made once the data is read, so a run that fails before has written nothing (its folder is removed).
    board = TensorBoardLog(args.tensorboard or folder.file(TENSORBOARD_FOLDER)) \
        if args.tensorboard is not None and folder is not None else None
    log_training = board.log_training(net, optimizer) if board is not None else None
    if args.distributed:
        distributed.broadcast_parameters(net.parameters(), comm)
        optimizer = distributed.DataParallelOptimizer(optimizer, comm)
        print(f"Data-parallel: {comm.size} workers x batch {args.batch_size} = global batch "
              f"{comm.size * args.batch_size} (over {comm.transport.upper()})")
    trainloader = DataLoader(trainset, args.batch_size, shuffle=True, seed=order_seed, backend=backend, dtype=dtype,
                             rank=comm.rank, workers=comm.size)

    run_record = {"args": {**{dest: getattr(args, dest) for dest in RUN_FLAGS}, "seed": seed},
                  "versions": report.versions("scratchnet", "numpy", "numba", "cupy", "mpi4py"), "train_time_s": 0.0,
                  "total_time_s": 0.0, "resumed_from": []}
    state = resume.TrainingState()
    if saved is not None:
        record, arrays = saved
        state = resume.restore(folder.file(resume.STATE_FILE), record, arrays, net, optimizer, trainloader)
        run_record["train_time_s"] = record["run"].get("train_time_s", 0.0)
        run_record["total_time_s"] = record["run"].get("total_time_s", 0.0)
        run_record["resumed_from"] = record["run"].get("resumed_from", []) + [{"epoch": state.epoch,
                                                                               "step": state.step}]
        for point in state.loss_curve:  # the printout so far, so a resumed run prints what an uninterrupted one does
            print(report.loss_line(point["epoch"], point["step"], point["loss"]))
    last_saved = [state.epoch, state.step] if saved is not None else []

    # The training time, and the whole time, up to here are in run_record: summed over the run's resumed parts.
    counted_until = {"train_time_s": time.perf_counter(), "total_time_s": started}

    def save_checkpoint(at):
        now = time.perf_counter()
        for key, since in counted_until.items():
            run_record[key] += now - since
            counted_until[key] = now
        checkpoint.save_npz(weights, net.state_dict())
        resume.save(folder.file(resume.STATE_FILE), net, optimizer, at, run_record)
        last_saved[:] = [at.epoch, at.step]

    def at_log_point(at):
        save_checkpoint(at)
        if log_training is not None:
            log_training(at)

    def metrics_of(summary, diverged=None):
        return report.run_metrics(
            framework="scratchnet", backend=backend.name, seed=seed,
            config=cli.config(args, width=args.width, dtype=args.dtype),
            data_root=args.data, train_images=len(trainset), steps_per_epoch=len(trainloader), summary=summary,
            loss_curve=state.loss_curve, epoch_losses=state.epoch_losses, diverged=diverged,
            resumed_from=run_record["resumed_from"],
            wall_time_s={"data": data_time, "train": run_record["train_time_s"], "test": test_time,
                         "total": run_record["total_time_s"] + time.perf_counter() - counted_until["total_time_s"]},
            versions=run_record["versions"],
        )

    test_time = None
    train_started = time.perf_counter()
    try:
        with np.errstate(all="ignore"):  # fit itself catches and reports non-finite losses
            fit(net, criterion, optimizer, trainloader, args.epochs, args.log_every,
                on_log=at_log_point if folder is not None else None, progress=sys.stderr.isatty(),
                # A captured graph cannot hold the allreduce's bounded wait: data-parallel steps run eagerly.
                capture=args.cuda_graph and not args.distributed, state=state,
                average_losses=distributed.loss_averager(comm) if args.distributed else None)
    except TrainingDiverged as exc:
        kept = (f"the last good weights (epoch {last_saved[0]}, step {last_saved[1]}) are in {weights}"
                if last_saved else "no weights were saved (it diverged before the first log point)")
        if folder is not None:
            metrics = metrics_of(report.UNTESTED, {"epoch": exc.epoch, "step": exc.step, "message": str(exc)})
            report.write_metrics(folder.path, metrics)
            plots.save_training_plots(folder.path, metrics)
        raise TrainingDiverged(f"training stopped: {exc}; {kept}", exc.epoch, exc.step) from None
    except KeyboardInterrupt:
        where = (f"the last checkpoint (epoch {last_saved[0]}, step {last_saved[1]}) is in {folder.path}; continue "
                 f"with: python -m scratchnet.train --resume {folder.path}" if last_saved else "nothing was saved yet")
        raise KeyboardInterrupt(where) from None
    print("Finished Training")
    train_time = time.perf_counter() - train_started
    if folder is not None:
        save_checkpoint(state)

    test_started = time.perf_counter()
    test_batch = args.test_batch_size or args.batch_size
    if args.distributed:
        predictions, summary = distributed.evaluate(net, testset, test_batch, backend, comm, dtype,
                                                    shown=plots.GRID_IMAGES)
    else:
        predictions, summary = evaluate(net, testset, test_batch, backend, dtype)
    test_time = time.perf_counter() - test_started
    for line in report.test_report_lines(testset.targets, predictions, summary, testset.classes):
        print(line)

    if board is not None:
        step = args.epochs * len(trainloader)
        board.log_test(step, summary, class_probabilities(net, testset, test_batch, backend, dtype), testset,
                       predictions)
        board.close()
    metrics = metrics_of(summary)
    if args.distributed:
        metrics["distributed"] = {
            "world_size": comm.size, "transport": comm.transport, "batch_size_per_worker": args.batch_size,
            "global_batch_size": trainloader.global_batch_size,
            "per_rank": distributed.rank_timings(comm, train_s=train_time, allreduce_s=optimizer.allreduce_s,
                                                 test_s=test_time),
        }
    if folder is None:
        return
    report.write_metrics(folder.path, metrics)
    plots.save_all(folder.path, metrics, normalize(testset.pixels[:plots.GRID_IMAGES]), testset.targets, predictions,
                   testset.classes)
    print(f"Run folder: {folder.path}")


if __name__ == "__main__":
    sys.exit(main())
