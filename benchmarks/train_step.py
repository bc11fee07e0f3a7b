"""CPU benchmark: training-step throughput of the tutorial Net, scratchnet against PyTorch eager.

    python -m benchmarks.train_step --batch-sizes 4 32 128 --json benchmarks/results/train_step.json

One training step is forward, cross-entropy, backward and SGD(lr=0.001,
momentum=0.9) on one fixed float32 batch. Contenders: PyTorch eager on 1 and on
2 threads, scratchnet's numpy backend, and its numba backend on 1 and on 2
threads. Each repeat times every contender in turn (alternating, so load
changes hit all alike); figures are medians over the repeats. The run also
measures the float32 matmul peak (numpy, 1024x1024, 1 and 2 BLAS threads), the
numba JIT's first-run compile time and its cached start-up, both in fresh
processes, and records the machine and its load. The last line printed is the
batch-4 numba/PyTorch ratio.
"""

import argparse
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
import torch

from reference.tutorial import Net as TorchNet
from scratchnet import backends, nn, optim, report
from scratchnet.files import write_json
from scratchnet.models import Net

MFLOP_PER_IMAGE = 3.205  # forward + backward (no input gradient for conv1) of the tutorial Net
LR, MOMENTUM = 0.001, 0.9


def _batch(batch_size):
    rng = np.random.default_rng(0)
    return (rng.uniform(-1, 1, (batch_size, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 10, batch_size))


def torch_step(batch_size, threads):
    torch.set_num_threads(threads)
    images, labels = _batch(batch_size)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    net = TorchNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    criterion = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        criterion(net(images), labels).backward()
        optimizer.step()

    return step


def scratchnet_step(batch_size, backend, threads=None):
    """The step ``fit`` trains with: the backend's compiled step of the model."""
    if threads:
        numba.set_num_threads(threads)
    images, labels = _batch(batch_size)
    net = Net(seed=0).to(backend)
    optimizer = optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    criterion = nn.CrossEntropyLoss().to(backend)  # as the training CLI does
    step = backends.get(backend).compile_step(net, criterion, optimizer, batch_size, label_pool=labels)
    return lambda: step(images, labels)


CONTENDERS = {
    "torch-1thread": lambda batch_size: torch_step(batch_size, 1),
    "torch-2threads": lambda batch_size: torch_step(batch_size, 2),
    "numpy": lambda batch_size: scratchnet_step(batch_size, "numpy"),
    "numba-1thread": lambda batch_size: scratchnet_step(batch_size, "numba", 1),
    "numba-2threads": lambda batch_size: scratchnet_step(batch_size, "numba", 2),
}


def images_per_second(step, batch_size, seconds):
    """Run whole steps for about ``seconds``; return images/s."""
    steps, start = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * batch_size / elapsed


def _worker(name, batch_size, connection):
    """One contender in its own process: thread pools of different libraries never spin against each other."""
    step = CONTENDERS[name](batch_size)
    images_per_second(step, batch_size, 0.3)  # warm up: JIT, allocator, caches
    connection.send("ready")
    while (seconds := connection.recv()) is not None:
        connection.send(images_per_second(step, batch_size, seconds))


def measure_batch(batch_size, repeats, seconds):
    context = multiprocessing.get_context("spawn")
    workers = {}
    for name in CONTENDERS:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(name, batch_size, child), daemon=True)
        process.start()
        workers[name] = (process, parent)
    try:
        for _, connection in workers.values():
            connection.recv()
        samples = {name: [] for name in workers}
        for _ in range(repeats):  # alternate: each repeat times every contender once, one at a time
            for name, (_, connection) in workers.items():
                connection.send(seconds)
                samples[name].append(connection.recv())
    finally:
        for process, connection in workers.values():
            connection.send(None)
            process.join()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    best = lambda prefix: max((n for n in medians if n.startswith(prefix)), key=medians.get)  # noqa: E731
    torch_best, numba_best = best("torch"), best("numba")
    return {
        "batch_size": batch_size,
        "images_per_second": {name: {"median": medians[name], "samples": samples[name]} for name in workers},
        "torch_best": torch_best,
        "numba_best": numba_best,
        "numba_over_torch": medians[numba_best] / medians[torch_best],
        "numpy_over_torch": medians["numpy"] / medians[torch_best],
        "numba_gflops": medians[numba_best] * MFLOP_PER_IMAGE / 1e3,
        "torch_gflops": medians[torch_best] * MFLOP_PER_IMAGE / 1e3,
    }


_MATMUL = """
import time, numpy as np
a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
a @ a
best = 0.0
for _ in range(7):
    start = time.perf_counter(); a @ a; best = max(best, 2 * 1024 ** 3 / (time.perf_counter() - start))
print(best / 1e9)
"""


def matmul_peak(threads):
    """float32 1024x1024 matmul GFLOP/s in a fresh process with ``threads`` BLAS threads (best of 7)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", _MATMUL], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


_FIRST_STEP = """
import time
start = time.perf_counter()
from benchmarks.train_step import scratchnet_step
scratchnet_step(4, "numba")()
print(time.perf_counter() - start)
"""


def jit_times():
    """Seconds from interpreter start-up to one finished training step, with an empty and a warm JIT cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        times = {}
        for label in ("first_run_compile_s", "cached_startup_s"):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", _FIRST_STEP], env=env, check=True, capture_output=True)
            times[label] = time.perf_counter() - start
        return times


def _threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return numba.config.THREADING_LAYER


def machine():
    return {
        **report.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": _threading_layer(),
        "torch": torch.__version__,
        "blas_env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "MKL_", "OMP_"))},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32, 128])
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per contender (median taken)")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per contender per repeat")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")

    load_before = os.getloadavg()
    results = {"load_average_before": load_before,
               "mflop_per_image": MFLOP_PER_IMAGE, "repeats": args.repeats, "seconds_per_sample": args.seconds}
    results["jit"] = jit_times()
    print(f"numba JIT: first run {results['jit']['first_run_compile_s']:.1f} s, "
          f"cached start-up {results['jit']['cached_startup_s']:.1f} s")
    results["matmul_peak_gflops"] = {f"{t}thread{'s' * (t > 1)}": matmul_peak(t) for t in (1, 2)}
    peak = max(results["matmul_peak_gflops"].values())
    print("float32 matmul peak: " + ", ".join(f"{k} {v:.1f}" for k, v in results["matmul_peak_gflops"].items())
          + " GFLOP/s")

    results["batches"] = []
    for batch_size in args.batch_sizes:
        row = measure_batch(batch_size, args.repeats, args.seconds)
        row["numba_fraction_of_matmul_peak"] = row["numba_gflops"] / peak
        results["batches"].append(row)
        ips = {name: value["median"] for name, value in row["images_per_second"].items()}
        print(f"batch {batch_size:4d}: " + ", ".join(f"{name} {value:8.0f}" for name, value in ips.items())
              + f" images/s; numba {row['numba_gflops']:.1f} GFLOP/s ({100 * row['numba_fraction_of_matmul_peak']:.0f}%"
              f" of matmul peak); numba/torch {row['numba_over_torch']:.2f}x, numpy/torch {row['numpy_over_torch']:.2f}x")
    results["load_average_after"] = os.getloadavg()
    results["machine"] = machine()

    if args.json:
        write_json(args.json, results)
    headline = next((row for row in results["batches"] if row["batch_size"] == 4), results["batches"][0])
    print(f"batch {headline['batch_size']} numba/torch: {headline['numba_over_torch']:.2f}x")


if __name__ == "__main__":
    main()
