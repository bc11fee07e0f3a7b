"""Data-parallel training under mpiexec: N workers at batch b equal one worker at batch N*b; faults end the job.

The check torch runs for its own DistributedDataParallel, on real CIFAR-10 slices, with
ranks oversubscribing the cores. Every case starts a real MPICH job.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from distributed_worker import SEED, batch_norm_net, fit_one_epoch
from harness import relative_error
from scratchnet import backends, checkpoint, distributed, files, nn, plots
from scratchnet.data import CIFAR10, DataLoader
from scratchnet.models import Net
from scratchnet.optim import SGD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
# The mpich wheel installs mpiexec beside the interpreter, which need not be on PATH.
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
NO_SHARED_MEMORY = {"MPIR_CVAR_NOLOCAL": "1"}  # MPICH sends through its network path, as between machines
JOB_TIMEOUT_S = 300
FAULT_BOUND_S = 30
CLI_SLICE = ["--backend", "numpy", "--dtype", "float64", "--limit-test", "200", "--epochs", "1", "--seed", "3"]


def _env(extra=None):
    path = os.pathsep.join(filter(None, [REPO, TESTS, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg", **(extra or {})}


def mpiexec(*ranks, env=None, timeout=JOB_TIMEOUT_S):
    """Run one MPI job; each of ``ranks`` is (count, argv) — several make an MPMD job. Return the CompletedProcess."""
    assert MPIEXEC, "mpiexec not found: install the test extra (mpi4py, mpich)"
    command = [MPIEXEC]
    for index, (count, argv) in enumerate(ranks):
        command += ([":"] if index else []) + ["-n", str(count), sys.executable, *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, env=_env(env), timeout=timeout)


def train_cli(*flags):
    return ["-m", "scratchnet.train", *map(str, flags)]


def worst_state_error(state, reference):
    assert set(state) == set(reference)
    return max(relative_error(state[name], reference[name]) for name in reference)


# ---- sharding ----------------------------------------------------------------------------------


class _Numbered:
    """A dataset whose image i is filled with i, so a batch shows which images it holds."""

    def __init__(self, count):
        self.data = np.arange(count, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 32, 32), np.float32)
        self.targets = np.arange(count) % 10

    def __len__(self):
        return len(self.targets)


@pytest.mark.parametrize("count, workers", [(24, 2), (25, 3), (23, 3), (7, 4)])
def test_the_workers_slices_make_up_the_global_batches_of_one_worker(count, workers):
    dataset, batch = _Numbered(count), 2
    alone = [labels for _, labels in DataLoader(dataset, workers * batch, shuffle=True, seed=4)]
    shards = [list(DataLoader(dataset, batch, shuffle=True, seed=4, rank=rank, workers=workers))
              for rank in range(workers)]
    assert all(len(shard) == len(DataLoader(dataset, batch, rank=rank, workers=workers))
               for rank, shard in enumerate(shards))
    for step, batches in enumerate(zip(*shards)):
        assert len({len(labels) for _, labels in batches}) == 1  # equal shares
        joined = np.concatenate([labels for _, labels in batches])
        # The same images as one worker's global batch (its last one cut to a multiple of the workers).
        assert np.array_equal(joined, alone[step][:len(joined)]) and len(alone[step]) - len(joined) < workers
        assert all(np.array_equal(images[:, 0, 0, 0].astype(int) % 10, labels) for images, labels in batches)
    assert len(alone) - len(shards[0]) == (0 < count % (workers * batch) < workers)


def test_every_gradient_is_a_view_of_one_flat_buffer_per_dtype():
    net = Net(seed=0)
    (buffer,) = distributed.flatten_gradients(net.parameters())
    assert buffer.flags.c_contiguous and buffer.size == sum(param.data.size for param in net.parameters())
    for param in net.parameters():
        assert param.grad.shape == param.data.shape and np.shares_memory(param.grad, buffer)
    buffer[:] = 1
    assert all((param.grad == 1).all() for param in net.parameters())


# ---- parity through the API ------------------------------------------------------------------


@pytest.mark.parametrize("backend, workers, batch, steps, dtype, loss_tolerance, param_tolerance, env", [
    pytest.param("numpy", 2, 2, 500, "float64", 1e-12, 1e-12, None, id="numpy-2-workers-float64"),
    pytest.param("numpy", 3, 2, 500, "float64", 1e-12, 1e-12, None, id="numpy-3-workers-float64"),
    pytest.param("numpy", 2, 2, 500, "float64", 1e-12, 1e-12, NO_SHARED_MEMORY,
                 id="numpy-2-workers-float64-no-shared-memory"),
    pytest.param("numpy", 2, 4, 100, "float32", 1e-5, None, None, id="numpy-2-workers-float32"),
    pytest.param("numba", 2, 2, 500, "float64", 1e-12, 1e-12, None, id="numba-2-workers-float64"),
])
def test_n_workers_at_batch_b_equal_one_worker_at_batch_n_times_b(
        backend, workers, batch, steps, dtype, loss_tolerance, param_tolerance, env, data_root, tmp_path,
        error_report):
    out = tmp_path / "rank0.npz"
    images = workers * batch * steps
    job = mpiexec((workers, [os.path.join(TESTS, "distributed_worker.py"), out, "--data", data_root, "--images",
                             images, "--batch-size", batch, "--dtype", dtype, "--backend", backend]), env=env)
    assert job.returncode == 0, job.stderr
    ranks = np.load(out)
    assert int(ranks["world_size"]) == workers and str(ranks["transport"]) == "mpi"
    assert bool(ranks["identical_on_every_rank"])

    losses, state = fit_one_epoch(data_root, images, workers * batch, np.dtype(dtype), backend)
    assert len(ranks["losses"]) == len(losses) == steps
    loss_error = max(relative_error(got, want) for got, want in zip(ranks["losses"], losses))
    param_error = worst_state_error({name: ranks[name] for name in state}, state)
    key = f"{backend}, {workers} workers{', no shm' if env else ''}"
    error_report((f"data-parallel {steps} steps: loss", key, dtype), loss_error)
    error_report((f"data-parallel {steps} steps: params", key, dtype), param_error)
    assert loss_error <= loss_tolerance
    if param_tolerance is not None:
        assert param_error <= param_tolerance


def test_batch_norm_uses_each_ranks_own_batch_statistics(data_root, tmp_path):
    """As torch's DistributedDataParallel without SyncBatchNorm: 2 workers at batch b step as one worker
    averaging the gradients of the two halves of each 2b batch, each half normalized by its own statistics
    (and not as one worker at 2b, whose batch norm sees the whole batch)."""
    out, batch, steps = tmp_path / "rank0.npz", 4, 50
    job = mpiexec((2, [os.path.join(TESTS, "distributed_worker.py"), out, "--data", data_root, "--images",
                       2 * batch * steps, "--batch-size", batch, "--dtype", "float64", "--batch-norm"]))
    assert job.returncode == 0, job.stderr
    ranks = np.load(out)
    assert bool(ranks["identical_on_every_rank"])
    net = batch_norm_net(SEED).double()
    optimizer = SGD(net.parameters(), lr=0.001, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(CIFAR10(data_root, limit=2 * batch * steps), 2 * batch, shuffle=True, seed=SEED,
                        dtype=np.float64)
    losses = []
    for images, labels in loader:
        optimizer.zero_grad()
        halves = []
        for half in (slice(0, batch), slice(batch, 2 * batch)):
            halves.append(criterion(net(images[half]), labels[half]))
            net.backward(criterion.backward())
        for param in net.parameters():
            param.grad *= 0.5  # the allreduce's mean over the two ranks
        optimizer.step()
        losses.append(sum(halves) / 2)
    assert relative_error(ranks["losses"], np.array(losses)) <= 1e-12
    params = {name: value for name, value in net.state_dict().items() if name in dict(net.named_parameters())}
    assert worst_state_error({name: ranks[name] for name in params}, params) <= 1e-12
    whole_batch, _ = fit_one_epoch(data_root, 2 * batch * steps, 2 * batch, np.dtype(np.float64), "numpy",
                                   batch_norm=True)
    assert relative_error(ranks["losses"], whole_batch) > 1e-6  # the global batch's statistics differ


def test_cupy_over_nccl_with_one_rank_equals_the_single_process_run(data_root, tmp_path):
    try:
        gpu = backends.get("cupy")
    except backends.BackendError as exc:
        pytest.skip(f"cupy backend unavailable: {exc} (NCCL over several GPUs cannot be tested here at all)")
    if gpu.emulated:
        pytest.skip("NCCL needs a real GPU: the emulated device has no NCCL")
    out = tmp_path / "rank0.npz"
    job = mpiexec((1, [os.path.join(TESTS, "distributed_worker.py"), out, "--data", data_root, "--images", 400,
                       "--batch-size", 4, "--dtype", "float64", "--backend", "cupy"]))
    assert job.returncode == 0, job.stderr
    ranks = np.load(out)
    assert str(ranks["transport"]) == "nccl"
    losses, state = fit_one_epoch(data_root, 400, 4, np.dtype(np.float64), "cupy")
    assert relative_error(ranks["losses"], losses) <= 1e-12
    assert worst_state_error({name: ranks[name] for name in state}, state) <= 1e-12


# ---- parity through the CLI --------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_worker_cli_run(data_root, tmp_path_factory):
    """``python -m scratchnet.train`` at batch 4 on 2,000 images: what 2 workers at batch 2 must repeat."""
    out = tmp_path_factory.mktemp("one-worker") / "run"
    result = subprocess.run([sys.executable, *train_cli(*CLI_SLICE, "--data", data_root, "--limit-train", 2000,
                                                        "--batch-size", 4, "--log-every", 50, "--out", out)],
                            capture_output=True, text=True, env=_env(), timeout=JOB_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("env", [None, NO_SHARED_MEMORY], ids=["shared-memory", "no-shared-memory"])
def test_cli_with_two_workers_repeats_the_one_worker_run(env, one_worker_cli_run, data_root, tmp_path, error_report):
    out = tmp_path / "run"
    job = mpiexec((2, train_cli("--distributed", *CLI_SLICE, "--data", data_root, "--limit-train", 2000,
                                "--batch-size", 2, "--log-every", 50, "--out", out)),
                  env={**(env or {}), files.CACHE_ENV: str(tmp_path / "cache")})  # the data notice not said yet
    assert job.returncode == 0, job.stderr
    lines = job.stdout.splitlines()
    # Rank 0 alone prints: one tutorial printout, headed by the global batch.
    assert lines[0] == "Data-parallel: 2 workers x batch 2 = global batch 4 (over MPI)"
    assert lines.count("Finished Training") == 1 and len([line for line in lines if line.startswith("[")]) == 10
    assert job.stderr.count("not the official") == 1

    ours, alone = (json.loads((folder / "metrics.json").read_text()) for folder in (out, one_worker_cli_run))
    assert ours["distributed"]["world_size"] == 2 and ours["distributed"]["global_batch_size"] == 4
    assert [entry["rank"] for entry in ours["distributed"]["per_rank"]] == [0, 1]
    assert all(entry["train_s"] > 0 and entry["allreduce_s"] > 0 for entry in ours["distributed"]["per_rank"])
    assert [point["step"] for point in ours["loss_curve"]] == [point["step"] for point in alone["loss_curve"]]
    # loss_curve.png draws the epoch's mean across the global steps it took, as the one worker's run does.
    epoch_mean_x = next(line for line in plots.loss_curve(ours).axes[0].lines if line.get_label().startswith("epoch"))
    assert np.nanmax(epoch_mean_x.get_xdata()) == ours["loss_curve"][-1]["global_step"] == 500
    loss_error = max(relative_error(a["loss"], b["loss"]) for a, b in zip(ours["loss_curve"], alone["loss_curve"]))
    weights_error = worst_state_error(checkpoint.load(out / "cifar_net.npz"),
                                      checkpoint.load(one_worker_cli_run / "cifar_net.npz"))
    error_report(("data-parallel CLI: logged loss", "2 workers" + (" no shm" if env else ""), "float64"), loss_error)
    error_report(("data-parallel CLI: weights", "2 workers" + (" no shm" if env else ""), "float64"), weights_error)
    assert loss_error <= 1e-12 and weights_error <= 1e-12
    # The sharded evaluation's summed counts give the single worker's accuracy and confusion matrix.
    assert ours["confusion_matrix"] == alone["confusion_matrix"] and ours["total"] == 200


# ---- faults ---------------------------------------------------------------------------------------------


def test_flags_that_differ_across_ranks_are_refused_at_start(data_root, tmp_path):
    flags = ["--distributed", *CLI_SLICE, "--data", data_root, "--limit-train", 40, "--out", tmp_path / "run"]
    job = mpiexec((1, train_cli(*flags, "--lr", 0.001)), (1, train_cli(*flags, "--lr", 0.01)))
    assert job.returncode != 0 and "Traceback" not in job.stderr
    assert job.stderr.strip().splitlines() == [
        "python -m scratchnet.train: error: rank 0: rank 1 was started with other flags than rank 0: "
        "--lr is 0.01 there, 0.001 on rank 0; start every rank with the same flags"]


def test_ranks_started_without_distributed_are_refused(data_root, tmp_path):
    job = mpiexec((2, train_cli(*CLI_SLICE, "--data", data_root, "--limit-train", 40, "--out", tmp_path / "run")))
    assert job.returncode != 0 and "Traceback" not in job.stderr
    assert job.stderr.strip().splitlines() == [
        "python -m scratchnet.train: error: started as one of 2 MPI ranks: pass --distributed (or start one process)"]


def test_a_stuck_rank_ends_the_job_at_the_timeout(data_root, tmp_path):
    flags = ["--distributed", "--timeout", 3, *CLI_SLICE, "--data", data_root, "--limit-train", 40,
             "--out", tmp_path / "run"]
    stuck = ["-c", "from mpi4py import MPI; import time; time.sleep(600)"]  # alive, never joins a collective
    started = time.monotonic()
    job = mpiexec((1, train_cli(*flags)), (1, stuck))
    elapsed = time.monotonic() - started
    assert job.returncode != 0 and "Traceback" not in job.stderr
    assert job.stderr.strip().splitlines()[-1] == (
        "python -m scratchnet.train: error: rank 0: allgather waited more than 3 s for the other ranks "
        "(one is stuck or gone)")
    assert elapsed < FAULT_BOUND_S
    print(f"stuck rank, --timeout 3: job ended {elapsed:.1f} s after start")


def _long_run(data_root, out):
    """A two-rank run long enough to be interrupted mid-epoch, checkpointing every 20 steps."""
    return train_cli("--distributed", *CLI_SLICE, "--data", data_root, "--limit-train", 20000, "--batch-size", 2,
                     "--log-every", 20, "--out", out)


def _assert_complete_checkpoint(out):
    Net().double().load_state_dict(checkpoint.load(out / "cifar_net.npz"))


def test_a_rank_that_raises_ends_the_job_naming_it(data_root, tmp_path):
    out, fault_time = tmp_path / "run", tmp_path / "fault-time"
    flags = _long_run(data_root, out)[2:]
    job = mpiexec((1, train_cli(*flags)), (1, [os.path.join(TESTS, "failing_rank.py"), 150, fault_time, *flags]))
    elapsed = time.time() - float(fault_time.read_text())
    assert job.returncode != 0 and "Traceback" not in job.stderr
    assert job.stderr.strip().splitlines()[-1] == (
        "python -m scratchnet.train: error: rank 1: RuntimeError: injected fault at step 150")
    assert elapsed < FAULT_BOUND_S
    _assert_complete_checkpoint(out)
    print(f"rank 1 raising at step 150: job ended {elapsed:.1f} s later")


def _pid_of_rank(job_marker, rank):
    """The pid of ``rank`` in the job whose environment holds ``job_marker`` (None until it has started)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                environ = set(file.read().split(b"\0"))
        except OSError:
            continue
        if job_marker in environ and f"PMI_RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.parametrize("rank, signum", [(1, signal.SIGKILL), (0, signal.SIGKILL), (1, signal.SIGTERM)],
                         ids=["rank1-SIGKILL", "rank0-SIGKILL", "rank1-SIGTERM"])
def test_a_killed_rank_ends_the_job_within_seconds(rank, signum, data_root, tmp_path):
    out = tmp_path / "run"
    marker = f"SCRATCHNET_TEST_JOB={uuid.uuid4().hex}"
    command = [MPIEXEC, "-n", "2", sys.executable, *_long_run(data_root, out)]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env(dict([marker.split("=")])))
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not (out / "cifar_net.npz").exists():  # mid-epoch: past the first checkpoints
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1]
            time.sleep(0.2)
        time.sleep(1)
        pid = _pid_of_rank(marker.encode(), rank)
        os.kill(pid, signum)
        killed = time.monotonic()
        stdout, stderr = job.communicate(timeout=FAULT_BOUND_S)
        elapsed = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and "Traceback" not in stderr
    assert elapsed < FAULT_BOUND_S
    if signum == signal.SIGKILL:  # nothing runs in a SIGKILLed rank: the launcher's report names it by its pid
        assert f"PID {pid} " in stdout and "EXIT CODE: 9" in stdout
    else:
        assert stderr.strip().splitlines()[-1] == f"python -m scratchnet.train: error: rank {rank}: killed by SIGTERM"
    _assert_complete_checkpoint(out)
    print(f"{signal.Signals(signum).name} to rank {rank}: job ended {elapsed:.1f} s later")
