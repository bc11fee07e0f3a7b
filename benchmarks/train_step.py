"""CPU benchmark: training-step throughput of the tutorial Net, scratchnet against PyTorch and JAX.

    python -m benchmarks.train_step --batch-sizes 4 32 128 --json benchmarks/results/train_step.json

One training step is forward, cross-entropy, backward and SGD(lr=0.001,
momentum=0.9) on one fixed float32 batch. Contenders: PyTorch eager and
``torch.compile`` (inductor) on 1 and on 2 threads, a JAX-jitted whole step
(the ``bench`` extra installs JAX; a contender that cannot run is reported,
not fatal), scratchnet's numpy backend, and its numba backend on 1 and on 2
threads, each scratchnet step being ``step.compile_step``'s, as ``fit``
trains. Each repeat times every contender in turn (alternating, so load
changes hit all alike); figures are medians over the repeats. The run also
measures the float32 matmul peak (numpy, 1024x1024, 1 and 2 BLAS threads), the
numba JIT's first-run compile time and its cached start-up, both in fresh
processes, and records the machine and its load. The last line printed is the
batch-4 numba/PyTorch ratio.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
import torch

from benchmarks.contenders import machine, matmul_peak, sample_contenders, sampling_arguments, torch_sgd_step
from reference.tutorial import Net as TorchNet
from scratchnet import nn, optim
from scratchnet.files import write_json
from scratchnet.models import Net
from scratchnet.step import compile_step

MFLOP_PER_IMAGE = 3.205  # forward + backward (no input gradient for conv1) of the tutorial Net
LR, MOMENTUM = 0.001, 0.9


def _batch(batch_size):
    rng = np.random.default_rng(0)
    return (rng.uniform(-1, 1, (batch_size, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 10, batch_size))


def torch_step(batch_size, threads, compiled=False):
    """PyTorch eager, or with the model under ``torch.compile`` (inductor; its backward compiled too)."""
    net = TorchNet()
    return torch_sgd_step(torch.compile(net) if compiled else net, *_batch(batch_size), LR, MOMENTUM, threads)


def jax_step(batch_size):
    """The whole step under one ``jax.jit``: forward, loss, ``jax.grad``, SGD momentum (torch's rule)."""
    import jax
    import jax.numpy as jnp

    def conv(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b[None, :, None, None]

    def pool(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def loss_of(params, x, labels):
        x = pool(jax.nn.relu(conv(x, params["conv1.weight"], params["conv1.bias"])))
        x = pool(jax.nn.relu(conv(x, params["conv2.weight"], params["conv2.bias"])))
        x = x.reshape(x.shape[0], -1)
        for layer in ("fc1", "fc2", "fc3"):
            x = x @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
            x = jax.nn.relu(x) if layer != "fc3" else x
        log_probs = jax.nn.log_softmax(x)
        return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()

    @jax.jit
    def train(params, buffers, x, labels):
        grads = jax.grad(loss_of)(params, x, labels)
        buffers = jax.tree_util.tree_map(lambda b, g: MOMENTUM * b + g, buffers, grads)
        return jax.tree_util.tree_map(lambda p, b: p - LR * b, params, buffers), buffers

    images, labels = (jnp.asarray(a) for a in _batch(batch_size))
    state = [{k: jnp.asarray(v) for k, v in Net(seed=0).state_dict().items()}]
    # Zero buffers make the first update equal torch's (which copies the first gradient in).
    state.append(jax.tree_util.tree_map(jnp.zeros_like, state[0]))

    def step():
        state[:] = train(state[0], state[1], images, labels)
        jax.block_until_ready(state[0])

    return step


def scratchnet_step(batch_size, backend, threads=None):
    """The step ``fit`` trains with: the backend's compiled step of the model."""
    if threads:
        numba.set_num_threads(threads)
    images, labels = _batch(batch_size)
    net = Net(seed=0).to(backend)
    optimizer = optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    criterion = nn.CrossEntropyLoss().to(backend)  # as the training CLI does
    step = compile_step(net, criterion, optimizer, batch_size, label_pool=labels)
    return lambda: step(images, labels)


CONTENDERS = {
    "torch-1thread": lambda batch_size: torch_step(batch_size, 1),
    "torch-2threads": lambda batch_size: torch_step(batch_size, 2),
    "torch.compile-1thread": lambda batch_size: torch_step(batch_size, 1, compiled=True),
    "torch.compile-2threads": lambda batch_size: torch_step(batch_size, 2, compiled=True),
    "jax-jit": jax_step,
    "numpy": lambda batch_size: scratchnet_step(batch_size, "numpy"),
    "numba-1thread": lambda batch_size: scratchnet_step(batch_size, "numba", 1),
    "numba-2threads": lambda batch_size: scratchnet_step(batch_size, "numba", 2),
}
EAGER = ("torch-1thread", "torch-2threads")
COMPILED = ("torch.compile-1thread", "torch.compile-2threads", "jax-jit")


def measure_batch(batch_size, repeats, seconds):
    samples, unavailable = sample_contenders(__spec__.name, CONTENDERS, batch_size, repeats, seconds)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    best = lambda names: max((n for n in names if n in medians), key=medians.get, default=None)  # noqa: E731
    torch_best, compiled_best = best(EAGER), best(COMPILED)
    numba_best = best(("numba-1thread", "numba-2threads"))
    if None in (torch_best, numba_best) or "numpy" not in medians:
        raise SystemExit(f"batch {batch_size}: a required contender could not run: {unavailable}")
    row = {
        "batch_size": batch_size,
        "images_per_second": {name: {"median": medians[name], "samples": samples[name]} for name in samples},
        "unavailable": unavailable,
        "torch_best": torch_best,
        "compiled_best": compiled_best,
        "numba_best": numba_best,
        "numba_over_torch": medians[numba_best] / medians[torch_best],
        "numpy_over_torch": medians["numpy"] / medians[torch_best],
        "numba_gflops": medians[numba_best] * MFLOP_PER_IMAGE / 1e3,
        "torch_gflops": medians[torch_best] * MFLOP_PER_IMAGE / 1e3,
    }
    if compiled_best is not None:
        row["numba_over_compiled"] = medians[numba_best] / medians[compiled_best]
    return row


# One compiled training step, as ``scratchnet_step`` builds it, without this module's torch and JAX imports.
_FIRST_STEP = """
import time
start = time.perf_counter()
import numpy as np
from scratchnet import nn, optim
from scratchnet.models import Net
from scratchnet.step import compile_step
net, criterion = Net(seed=0).to("numba"), nn.CrossEntropyLoss().to("numba")
optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
step = compile_step(net, criterion, optimizer, 4)
step(np.zeros((4, 3, 32, 32), np.float32), np.zeros(4, np.int64))
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32, 128])
    sampling_arguments(parser, seconds=1.0)
    args = parser.parse_args(argv)

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
              f" of matmul peak); numba/torch {row['numba_over_torch']:.2f}x, numpy/torch {row['numpy_over_torch']:.2f}x"
              + (f", numba/best compiled {row['numba_over_compiled']:.2f}x" if "numba_over_compiled" in row else ""))
        for name, reason in row["unavailable"].items():
            print(f"  {name}: {reason}")
    results["load_average_after"] = os.getloadavg()
    results["machine"] = machine()

    if args.json:
        write_json(args.json, results)
    headline = next((row for row in results["batches"] if row["batch_size"] == 4), results["batches"][0])
    print(f"batch {headline['batch_size']} numba/torch: {headline['numba_over_torch']:.2f}x")


if __name__ == "__main__":
    main()
