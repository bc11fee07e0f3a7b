"""Data-parallel training: N workers on one global batch take the steps one worker takes at N times the batch.

``init()`` returns the job's communicator: MPI (mpi4py) between CPU processes on one
machine or many, NCCL (CuPy) between GPUs with one process per GPU, bootstrapped over
MPI. Started without an MPI launcher it is a single worker whose collectives return
their input. Each worker's gradients live in one flat buffer per dtype
(``flatten_gradients``), so a step is one allreduce; ``DataParallelOptimizer`` averages
them before every step, so every rank takes the identical step.

Every collective wait is bounded by the communicator's timeout; a rank that fails
prints one line naming itself and the cause, and the launcher ends the whole job
(``reporting_faults``).
"""

import contextlib
import functools
import json
import os
import signal
import socket
import sys
import threading
import time

import numpy as np

from scratchnet import backends, report
from scratchnet.data import DataLoader
from scratchnet.evaluate import predict

# Set in every rank's environment by MPICH's hydra (PMI_*), PMIx launchers and Open MPI's mpirun.
LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")
DEFAULT_TIMEOUT_S = 300.0
# How long a rank other than 0 waits before reporting its fault: when every rank fails alike
# (missing data, a diverged loss), rank 0's report ends the job first and the job prints one line, not N.
_REPORT_DELAY_S = 1.0


class DistributedError(RuntimeError):
    """A data-parallel job cannot go on; the message says why."""


class CollectiveTimeout(DistributedError):
    """A collective waited longer than the timeout: another rank is stuck or gone."""


class Stopped(DistributedError):
    """This rank received a signal that ends it."""


def launched():
    """Whether this process was started by an MPI launcher (mpiexec, mpirun, srun)."""
    return any(name in os.environ for name in LAUNCHER_ENV)


def launcher_size():
    """How many ranks the launcher started (1 without one)."""
    return int(os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or 1)


def launcher_rank():
    """This process's rank as the launcher numbered it (0 without one)."""
    return int(os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or 0)


def init(backend=backends.REFERENCE, timeout=DEFAULT_TIMEOUT_S):
    """The communicator of this job for the named backend's arrays, over the transport that backend names
    (``Backend.collective_transport``): MPI for host arrays, NCCL for GPU arrays; one worker without a launcher.

    ``timeout`` (seconds, None for no bound) bounds every collective wait.
    """
    if not launched():
        return SingleProcess()
    try:
        transport = backends.get(backend).collective_transport
    except backends.BackendError as exc:
        raise DistributedError(str(exc)) from None
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError("started by an MPI launcher but mpi4py is missing: "
                               "pip install mpi4py mpich (the 'distributed' extra)") from None
    world = MpiCommunicator(MPI.COMM_WORLD, timeout)
    return NcclCommunicator(world) if transport == NcclCommunicator.transport else world


class SingleProcess:
    """The communicator of a job of one: every collective returns its input."""

    rank, size, transport = 0, 1, "none"

    def allreduce(self, buffer, op="sum"):
        return buffer

    def broadcast(self, buffer, root=0):
        return buffer

    def barrier(self):
        pass

    def allgather_json(self, value):
        return [json.loads(json.dumps(value))]


class MpiCommunicator:
    """Collectives over an mpi4py communicator, MPI's own blocking calls, each bounded by the timeout.

    A blocking MPI call cannot be interrupted from Python, so a watchdog thread watches
    the one in progress: past the timeout it reports a CollectiveTimeout through
    ``report_fault`` (which ends the process). Watching costs two attribute writes per call.
    """

    transport = "mpi"

    def __init__(self, comm, timeout=DEFAULT_TIMEOUT_S):
        from mpi4py import MPI

        self.mpi, self.comm, self.timeout = MPI, comm, timeout
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.report_fault = functools.partial(end_job, self, "scratchnet", ())  # reporting_faults names the program
        self._waiting = None  # (what, since) of the collective in progress
        if timeout is not None:
            threading.Thread(target=self._watch, name="collective-watchdog", daemon=True).start()

    def allreduce(self, buffer, op="sum"):
        """Sum (or mean) a contiguous host array over all ranks, in place; return it."""
        self._waiting = ("allreduce", time.monotonic())
        self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM)
        self._waiting = None
        if op == "mean":
            buffer /= self.size
        return buffer

    def broadcast(self, buffer, root=0):
        self._waiting = ("broadcast", time.monotonic())
        self.comm.Bcast(buffer, root=root)
        self._waiting = None
        return buffer

    def barrier(self):
        self._waiting = ("barrier", time.monotonic())
        self.comm.Barrier()
        self._waiting = None

    def allgather_json(self, value):
        """Every rank's ``value`` (anything JSON holds), in rank order, on every rank."""
        self._waiting = ("allgather", time.monotonic())
        gathered = self.comm.allgather(json.dumps(value, sort_keys=True))
        self._waiting = None
        return [json.loads(text) for text in gathered]

    def _watch(self):
        period = min(1.0, self.timeout / 10)
        while True:
            time.sleep(period)
            waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                self.report_fault(CollectiveTimeout(f"{waiting[0]} waited more than {self.timeout:g} s for the "
                                                    f"other ranks (one is stuck or gone)"))


class NcclCommunicator:
    """Collectives of CuPy arrays over NCCL, one process per GPU (chosen by local rank); host arrays go over MPI.

    The NCCL communicator is bootstrapped over ``world`` (an MpiCommunicator): rank 0's
    unique id is shared with the others, as ChainerMN does.
    """

    transport = "nccl"

    def __init__(self, world):
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as exc:
            raise DistributedError(f"--backend cupy over NCCL needs CuPy with NCCL ({exc})") from None
        if not getattr(nccl, "available", True):
            raise DistributedError("CuPy found no NCCL library: pip install nvidia-nccl-cu13")
        self._cupy, self._nccl, self.world = cupy, nccl, world
        self.rank, self.size, self.timeout = world.rank, world.size, world.timeout
        world.barrier()  # bounded: every rank is alive before the unbounded split below
        # Ranks that share a machine (and its GPUs): MPI-3's shared-memory split, whatever the launcher.
        node = world.comm.Split_type(world.mpi.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()
        devices = cupy.cuda.runtime.getDeviceCount()
        if self.local_rank >= devices:
            raise DistributedError(f"rank {self.rank} is local rank {self.local_rank} on {socket.gethostname()}, "
                                   f"which has only {devices} GPU(s): start one process per GPU")
        cupy.cuda.Device(self.local_rank).use()
        unique_id = world.allgather_json(list(nccl.get_unique_id()) if self.rank == 0 else None)[0]
        self.comm = nccl.NcclCommunicator(self.size, tuple(unique_id), self.rank)
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                        np.dtype(np.int64): nccl.NCCL_INT64}

    def allreduce(self, buffer, op="sum"):
        if isinstance(buffer, np.ndarray):
            return self.world.allreduce(buffer, op)
        stream = self._cupy.cuda.get_current_stream()
        self.comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, self._dtypes[buffer.dtype],
                            self._nccl.NCCL_SUM, stream.ptr)
        self._wait(stream, "allreduce")
        if op == "mean":
            buffer /= self.size
        return buffer

    def broadcast(self, buffer, root=0):
        if isinstance(buffer, np.ndarray):
            return self.world.broadcast(buffer, root)
        stream = self._cupy.cuda.get_current_stream()
        self.comm.bcast(buffer.data.ptr, buffer.size, self._dtypes[buffer.dtype], root, stream.ptr)
        self._wait(stream, "broadcast")
        return buffer

    def barrier(self):
        self.world.barrier()

    @property
    def report_fault(self):
        return self.world.report_fault

    @report_fault.setter
    def report_fault(self, report):
        self.world.report_fault = report  # its watchdog bounds the host collectives

    def allgather_json(self, value):
        return self.world.allgather_json(value)

    def _wait(self, stream, what):
        done = stream.record()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not done.done:
            if deadline is not None and time.monotonic() > deadline:
                self.comm.abort()  # frees this rank from the stuck NCCL kernel
                raise CollectiveTimeout(f"NCCL {what} waited more than {self.timeout:g} s for the other ranks "
                                        f"(one is stuck or gone)")
            os.sched_yield()


# ---- the model's side: gradients, parameters, steps --------------------------------------


def flatten_gradients(parameters):
    """Re-point every Parameter's ``.grad`` at a view of one flat, contiguous buffer per dtype; return the buffers.

    Call it after the last ``.to()`` (a move makes fresh gradient arrays).
    """
    by_dtype = {}
    for param in parameters:
        by_dtype.setdefault(param.data.dtype, []).append(param)
    buffers = []
    for dtype, params in by_dtype.items():
        flat = params[0].backend.xp.zeros(sum(param.data.size for param in params), dtype=dtype)
        offset = 0
        for param in params:
            param.grad = flat[offset:offset + param.data.size].reshape(param.data.shape)
            offset += param.data.size
        buffers.append(flat)
    return buffers


def broadcast_parameters(parameters, comm, root=0):
    """Give every rank ``root``'s parameter values."""
    for param in parameters:
        comm.broadcast(param.data, root)


class DataParallelOptimizer:
    """Wraps an optimizer: ``step()`` first averages the gradients over all ranks, one allreduce per dtype.

    Each rank's gradient is that of its mean loss over its equal share of the global
    batch, so their average is the gradient of the mean loss over the global batch:
    N workers at batch b step as one worker at batch N*b. ``allreduce_s`` adds up the
    time spent averaging.
    """

    def __init__(self, optimizer, comm):
        self.optimizer, self.comm = optimizer, comm
        self.buffers = flatten_gradients(optimizer.params)
        self.allreduce_s = 0.0

    @property
    def params(self):
        return self.optimizer.params

    @property
    def param_groups(self):  # what schedules and logs read and set
        return self.optimizer.param_groups

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)

    def zero_grad(self):
        for buffer in self.buffers:
            buffer.fill(0)

    def step(self):
        started = time.perf_counter()
        for buffer in self.buffers:
            self.comm.allreduce(buffer, "mean")
        self.allreduce_s += time.perf_counter() - started
        self.optimizer.step()


def loss_averager(comm):
    """For ``fit(average_losses=...)``: a host array of per-step losses -> their mean over the ranks."""
    return lambda losses: comm.allreduce(np.array(losses, dtype=np.float64), "mean")


# ---- data and evaluation ------------------------------------------------------------------


def shard_bounds(count, comm):
    """This rank's contiguous share ``[start, stop)`` of ``count`` items (sizes differ by at most one)."""
    return comm.rank * count // comm.size, (comm.rank + 1) * count // comm.size


class Subset:
    """Images ``[start, stop)`` of a dataset, as a dataset (views, no copies): its pixels, or its data."""

    def __init__(self, dataset, start, stop):
        if hasattr(dataset, "pixels"):
            self.pixels = dataset.pixels[start:stop]
        else:
            self.data = dataset.data[start:stop]
        self.targets = dataset.targets[start:stop]

    def __len__(self):
        return len(self.targets)


def evaluate(net, testset, batch_size, backend, comm, dtype=None, shown=1):
    """Each rank predicts its share of the test set and the confusion counts are summed over the ranks.

    Return (predictions of the first ``shown`` test images, accuracy summary), the same on every rank.
    """
    start, stop = shard_bounds(len(testset), comm)
    confusion = np.zeros((len(testset.classes), len(testset.classes)), dtype=np.int64)
    if stop > start:
        part = Subset(testset, start, stop)
        predictions = predict(net, DataLoader(part, batch_size, backend=backend, dtype=dtype))
        confusion += report.confusion_matrix(part.targets, predictions, testset.classes)
    comm.allreduce(confusion, "sum")
    first = Subset(testset, 0, min(shown, len(testset)))
    return predict(net, DataLoader(first, batch_size, backend=backend, dtype=dtype)), \
        report.summary_of_confusion(confusion, testset.classes)


def check_same_flags(comm, flags):
    """Raise DistributedError, on every rank alike, naming the first rank and flag that differ from rank 0's."""
    everyone = comm.allgather_json(flags)
    for rank, theirs in enumerate(everyone):
        differing = sorted(key for key in set(theirs) | set(everyone[0]) if theirs.get(key) != everyone[0].get(key))
        if differing:
            key = differing[0]
            raise DistributedError(f"rank {rank} was started with other flags than rank 0: "
                                   f"--{key.replace('_', '-')} is {theirs.get(key)!r} there, "
                                   f"{everyone[0].get(key)!r} on rank 0; start every rank with the same flags")


def rank_timings(comm, **timings):
    """Every rank's host and ``timings``, in rank order (a collective)."""
    return comm.allgather_json({"rank": comm.rank, "host": socket.gethostname(), **timings})


# ---- faults ---------------------------------------------------------------------------------


def quiet_unless_rank_0(comm):
    """Send the stdout and stderr of ranks other than 0 to nowhere: rank 0 alone speaks (faults still do)."""
    if comm.rank != 0:
        sys.stdout = sys.stderr = open(os.devnull, "w")


def _stop(signum, frame):
    raise Stopped(f"killed by {signal.Signals(signum).name}")


@contextlib.contextmanager
def reporting_faults(comm, prog, *expected):
    """Turn any exception of a rank, or a collective's timeout, into one ``prog: error: rank R: cause`` line
    and end the whole job (``end_job``).

    ``expected`` exception types are reported by their message alone, others with their
    type too. A SIGTERM, SIGINT or SIGHUP is reported the same way.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop)
    comm.report_fault = functools.partial(end_job, comm, prog, expected)
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        end_job(comm, prog, expected, exc)


def end_job(comm, prog, expected, exc):
    """Print this rank's one line about ``exc`` and exit with status 1.

    The rank exits without finalizing MPI, which makes the launcher end every other rank
    (MPI_Abort would add a second line of its own).
    """
    if comm.rank != 0:
        time.sleep(_REPORT_DELAY_S)
    print(f"{prog}: error: rank {comm.rank}: {_describe(exc, expected)}", file=sys.__stderr__, flush=True)
    if comm.size > 1 or threading.current_thread() is not threading.main_thread():
        os._exit(1)
    sys.exit(1)


def _describe(exc, expected):
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, (DistributedError, *expected)):
        return str(exc)
    if isinstance(exc, SystemExit):
        return f"exited with status {exc.code}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"
