"""The benchmarks' shared harness: contenders timed in processes of their own, in alternation, and the
machine they ran on.

A benchmark module names its contenders in ``CONTENDERS`` (name -> maker of a step) and, where a contender's
process needs variables set as it starts, ``CONTENDER_ENVIRONMENT``. This module imports no framework, so that
a contender's process loads only what its maker imports (a numba contender never loads torch, whose OpenMP
runtime numba would then share).
"""

import argparse
import contextlib
import importlib
import importlib.metadata
import multiprocessing
import os
import platform
import subprocess
import sys
import time

import numba
import numpy as np

from scratchnet import report

# The environment of a 1-thread contender's process: one thread for BLAS and OpenMP too, read as they load.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sampling_arguments(parser, seconds):
    """The contender benchmarks' common options: --repeats (at least 5, medians taken), --seconds, --json."""
    parser.add_argument("--repeats", type=_at_least_five, default=5, help="alternating repeats per contender "
                        "(median taken; at least 5)")
    parser.add_argument("--seconds", type=float, default=seconds, help="timed seconds per contender per repeat")
    parser.add_argument("--json", metavar="PATH", help="write the results here")


def _at_least_five(text):
    value = int(text)
    if value < 5:
        raise argparse.ArgumentTypeError("must be at least 5")
    return value


def torch_sgd_step(model, images, labels, lr, momentum, threads):
    """PyTorch's training step on ``threads`` threads: zero_grad, cross-entropy, backward, SGD with momentum, on
    numpy ``images`` and ``labels``. torch is imported here, in the contender's process only."""
    import torch

    torch.set_num_threads(threads)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    criterion = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()

    return step


def images_per_second(step, batch_size, seconds):
    """Run whole steps for about ``seconds``; return images/s."""
    steps, start = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * batch_size / elapsed


def _worker(module, name, batch_size, options, connection):
    """One contender of ``module``'s ``CONTENDERS`` in its own process: thread pools of different libraries
    never spin against each other. A contender that cannot run here (JAX not installed, no compiler for
    inductor) says why instead."""
    try:
        step = importlib.import_module(module).CONTENDERS[name](batch_size, **options)
        images_per_second(step, batch_size, 0.3)  # warm up: JIT, allocator, caches
    except Exception as exc:  # noqa: BLE001 - any failure of an optional contender is reported, not fatal
        connection.send(f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return
    connection.send("ready")
    while (seconds := connection.recv()) is not None:
        connection.send(images_per_second(step, batch_size, seconds))


@contextlib.contextmanager
def _environment(variables):
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def sample_contenders(module, names, batch_size, repeats, seconds, **options):
    """({contender: [images/s, one per repeat]}, {contender: why it could not run}) for ``names`` of
    ``module``'s ``CONTENDERS`` (each made as ``CONTENDERS[name](batch_size, **options)``, in a process started
    with the variables of ``CONTENDER_ENVIRONMENT[name]`` when the module has them), each in its own process,
    every repeat timing each once, in turn."""
    context = multiprocessing.get_context("spawn")
    environments = getattr(importlib.import_module(module), "CONTENDER_ENVIRONMENT", {})
    workers = {}
    for name in names:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(module, name, batch_size, options, child), daemon=True)
        with _environment(environments.get(name, {})):  # read as the process starts: BLAS threads, say
            process.start()
        workers[name] = (process, parent)
    try:
        unavailable = {}
        for name, (process, connection) in list(workers.items()):
            answer = connection.recv()
            if answer != "ready":
                unavailable[name] = answer
                process.join()
                del workers[name]
        samples = {name: [] for name in workers}
        for _ in range(repeats):  # alternate: each repeat times every contender once, one at a time
            for name, (_, connection) in workers.items():
                connection.send(seconds)
                samples[name].append(connection.recv())
    finally:
        for process, connection in workers.values():
            connection.send(None)
            process.join()
    return samples, unavailable


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
        "torch": _version("torch"),
        "blas_env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "MKL_", "OMP_"))},
    }


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
