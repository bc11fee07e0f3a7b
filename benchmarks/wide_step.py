"""CPU benchmark: the tutorial's "make it wider" exercise, a training step of the tutorial Net at widths 4, 8 and 16.

    python -m benchmarks.wide_step --json benchmarks/results/wide_step.json

One step is forward, cross-entropy, backward and SGD(lr=0.001, momentum=0.9) on one fixed float32 batch, for
each width and batch size: scratchnet's numba backend (``step.compile_step``, as ``fit`` trains) and PyTorch
eager, each on 1 and 2 threads (one BLAS thread for the 1-thread contenders too), every contender in its own process
and timed in alternation (``benchmarks.contenders``; the numba processes never load torch); figures are
medians. Each row gives both sides' GFLOP/s and numba's as
a fraction of the 2-thread float32 matmul peak measured in the same run.
"""

import argparse
import statistics

import numba
import numpy as np

from benchmarks.contenders import (ONE_THREAD, machine, matmul_peak, sample_contenders, sampling_arguments,
                                   torch_sgd_step)
from scratchnet import nn, optim
from scratchnet.files import write_json
from scratchnet.models import Net, layout
from scratchnet.step import compile_step

LR, MOMENTUM = 0.001, 0.9  # the tutorial's


def mflop_per_image(width):
    """Forward, backward (no input gradient for conv1) of the Net at ``width``, in MFLOP per image."""
    forward = {}
    size = 32
    for name, kind, args in layout(width):
        if kind == "conv":
            in_c, out_c, kernel = args
            size = size - kernel + 1
            forward[name] = 2 * out_c * in_c * kernel * kernel * size * size
        elif kind == "pool":
            size //= args[0]
        elif kind == "linear":
            forward[name] = 2 * args[0] * args[1]
    return (3 * sum(forward.values()) - forward["conv1"]) / 1e6


def _batch(batch_size, width):
    rng = np.random.default_rng(width)
    return rng.uniform(-1, 1, (batch_size, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch_size)


def torch_step(batch_size, width, threads):
    from reference.tutorial import Net as TorchNet  # here: a numba contender's process never loads torch

    return torch_sgd_step(TorchNet(width), *_batch(batch_size, width), LR, MOMENTUM, threads)


def scratchnet_step(batch_size, width, threads):
    numba.set_num_threads(threads)
    images, labels = _batch(batch_size, width)
    net = Net(width=width, seed=0).to("numba")
    step = compile_step(net, nn.CrossEntropyLoss().to("numba"), optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM),
                        batch_size, label_pool=labels)
    return lambda: step(images, labels)


CONTENDERS = {
    "torch-1thread": lambda batch_size, width: torch_step(batch_size, width, 1),
    "torch-2threads": lambda batch_size, width: torch_step(batch_size, width, 2),
    "numba-1thread": lambda batch_size, width: scratchnet_step(batch_size, width, 1),
    "numba-2threads": lambda batch_size, width: scratchnet_step(batch_size, width, 2),
}

CONTENDER_ENVIRONMENT = {name: ONE_THREAD for name in CONTENDERS if name.endswith("-1thread")}


def measure(width, batch_size, repeats, seconds, peak):
    samples, unavailable = sample_contenders(__spec__.name, CONTENDERS, batch_size, repeats, seconds, width=width)
    if unavailable:
        raise SystemExit(f"width {width}, batch {batch_size}: a contender could not run: {unavailable}")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    numba_best = max(("numba-1thread", "numba-2threads"), key=medians.get)
    torch_best = max(("torch-1thread", "torch-2threads"), key=medians.get)
    mflop = mflop_per_image(width)
    return {
        "width": width, "batch_size": batch_size, "mflop_per_image": mflop,
        "images_per_second": {name: {"median": medians[name], "samples": samples[name]} for name in samples},
        "numba_best": numba_best, "torch_best": torch_best,
        "numba_over_torch": medians[numba_best] / medians[torch_best],
        "numba_gflops": medians[numba_best] * mflop / 1e3, "torch_gflops": medians[torch_best] * mflop / 1e3,
        "numba_fraction_of_matmul_peak": medians[numba_best] * mflop / 1e3 / peak,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    sampling_arguments(parser, seconds=2.0)
    args = parser.parse_args(argv)
    peaks = {f"{t}thread{'s' * (t > 1)}": matmul_peak(t) for t in (1, 2)}
    print("float32 matmul peak: " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()) + " GFLOP/s")
    results = {"matmul_peak_gflops": peaks, "repeats": args.repeats, "seconds_per_sample": args.seconds, "rows": []}
    for width in args.widths:
        for batch_size in args.batch_sizes:
            row = measure(width, batch_size, args.repeats, args.seconds, peaks["2threads"])
            results["rows"].append(row)
            ips = {name: value["median"] for name, value in row["images_per_second"].items()}
            print(f"width {width:2d} batch {batch_size:4d}: " + ", ".join(f"{n} {v:7.0f}" for n, v in ips.items())
                  + f" images/s; numba {row['numba_gflops']:.0f} GFLOP/s "
                  f"({100 * row['numba_fraction_of_matmul_peak']:.0f}% of matmul peak), torch {row['torch_gflops']:.0f};"
                  f" numba/torch {row['numba_over_torch']:.2f}x", flush=True)
    results["machine"] = machine()
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
