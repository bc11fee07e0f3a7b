"""CPU benchmark: a training step of the next chapter's network, scratchnet's numba backend against PyTorch eager.

    python -m benchmarks.modern_step --batch-sizes 128 --json benchmarks/results/modern_step.json

The network is the modern CIFAR-10 recipe's shape: three conv (3x3, 'same', no bias) -> batch norm -> GELU ->
max-pool blocks of 64, 128 and 256 channels, adaptive average pooling, dropout and a linear layer; one step is
forward, cross-entropy, backward and SGD with momentum on one fixed float32 batch, in training mode. Each
contender runs in its own process (``benchmarks.contenders``; the numba ones never load torch), alternating
within each repeat; figures are medians. The last line printed is the batch's numba/PyTorch ratio (each side's better thread count).
"""

import argparse
import statistics

import numba
import numpy as np

from benchmarks.contenders import ONE_THREAD, machine, sample_contenders, sampling_arguments, torch_sgd_step
from scratchnet import nn, optim
from scratchnet.files import write_json
from scratchnet.step import compile_step

WIDTHS = (64, 128, 256)


def _batch(batch_size):
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (batch_size, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch_size)


def _layers(module):
    layers, channels = [], 3
    for width in WIDTHS:
        layers += [module.Conv2d(channels, width, 3, padding=1, bias=False), module.BatchNorm2d(width), module.GELU(),
                   module.MaxPool2d(2)]
        channels = width
    return layers + [module.AdaptiveAvgPool2d(1), module.Flatten(), module.Dropout(0.1), module.Linear(channels, 10)]


def torch_step(batch_size, threads):
    import torch  # here: a numba contender's process never loads torch (see ``benchmarks.contenders``)

    return torch_sgd_step(torch.nn.Sequential(*_layers(torch.nn)), *_batch(batch_size), 0.01, 0.9, threads)


def scratchnet_step(batch_size, threads):
    numba.set_num_threads(threads)
    images, labels = _batch(batch_size)
    model = nn.Sequential(*_layers(nn)).to("numba")
    step = compile_step(model, nn.CrossEntropyLoss().to("numba"), optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                        batch_size, label_pool=labels)
    return lambda: step(images, labels)


CONTENDERS = {
    "torch-1thread": lambda batch_size: torch_step(batch_size, 1),
    "torch-2threads": lambda batch_size: torch_step(batch_size, 2),
    "numba-1thread": lambda batch_size: scratchnet_step(batch_size, 1),
    "numba-2threads": lambda batch_size: scratchnet_step(batch_size, 2),
}

CONTENDER_ENVIRONMENT = {name: ONE_THREAD for name in CONTENDERS if name.endswith("-1thread")}


def profile(batch_size, steps=3):
    """Seconds per step in each layer's forward and backward on numba (eager layer by layer, after a warm-up)."""
    import time

    images, labels = _batch(batch_size)
    model = nn.Sequential(*_layers(nn)).to("numba")
    criterion, optimizer = nn.CrossEntropyLoss().to("numba"), optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    layers = list(model._children.values())
    totals = {}
    for step in range(steps + 1):
        optimizer.zero_grad()
        x, started = images, time.perf_counter()
        for index, layer in enumerate(layers):
            x = layer(x)
            now = time.perf_counter()
            totals[f"{index} {type(layer).__name__} forward"] = totals.get(f"{index} {type(layer).__name__} forward", 0) + \
                (now - started) * (step > 0)
            started = now
        criterion(x, labels)
        grad = criterion.backward()
        started = time.perf_counter()
        for index, layer in reversed(list(enumerate(layers))):
            grad = layer.backward(grad)
            now = time.perf_counter()
            key = f"{index} {type(layer).__name__} backward"
            totals[key] = totals.get(key, 0) + (now - started) * (step > 0)
            started = now
        optimizer.step()
    return {key: value / steps for key, value in totals.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    sampling_arguments(parser, seconds=3.0)
    parser.add_argument("--profile", action="store_true", help="also time each layer of the numba step")
    args = parser.parse_args(argv)
    results = {"machine": machine(), "network": f"conv-BN-GELU-pool x {WIDTHS}, adaptive pool, dropout, linear",
               "batches": {}}
    for batch_size in args.batch_sizes:
        runs, unavailable = sample_contenders(__spec__.name, CONTENDERS, batch_size, args.repeats, args.seconds)
        if unavailable:
            raise SystemExit(f"batch {batch_size}: a contender could not run: {unavailable}")
        medians = {name: statistics.median(values) for name, values in runs.items()}
        best_numba = max(medians["numba-1thread"], medians["numba-2threads"])
        best_torch = max(medians["torch-1thread"], medians["torch-2threads"])
        results["batches"][str(batch_size)] = {"images_per_second": runs, "median": medians,
                                               "numba_over_torch_eager": best_numba / best_torch}
        for name, value in medians.items():
            print(f"batch {batch_size} {name:<16} {value:10.1f} images/s")
        if args.profile:
            layers = profile(batch_size)
            results["batches"][str(batch_size)]["numba_layer_seconds"] = layers
            whole = sum(layers.values())
            for key, value in sorted(layers.items(), key=lambda item: -item[1]):
                print(f"  {key:<32} {value * 1e3:8.1f} ms  {100 * value / whole:5.1f} %")
        print(f"batch {batch_size}: numba / PyTorch eager = {best_numba / best_torch:.2f}x")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
