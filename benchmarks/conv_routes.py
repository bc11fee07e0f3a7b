"""CPU benchmark: the numba backend's convolution routes, layer by layer: what ``gemm_conv.wins`` and
``gemm_conv.VIEWS_FROM`` rest on.

    python -m benchmarks.conv_routes --json benchmarks/results/conv_routes.json

For each stride-1 layer of the tutorial Net at widths 1 to 16 and of the next chapter's network, and each
batch size, one training pass of the layer alone (forward into the rows, backward with the input gradient
but for the first layers, in float32, from workspaces made beforehand) on shifted planes and as matrix products
in both forms (over views of the planes, over copies), alternating, the median of the repeats; with the route
the backend picks and whether it is the faster.
"""

import argparse
import statistics
import time

import numpy as np

from benchmarks.contenders import machine
from scratchnet.backends.numba import gemm_conv, workspaces
from scratchnet.files import write_json
from scratchnet.models import layout

FORMS = {"gemm-views": 0, "gemm-copies": 10 ** 9}  # gemm_conv.VIEWS_FROM giving each form
MODERN = [("modern conv1", 3, 64, 32, 3, 1), ("modern conv2", 64, 128, 16, 3, 1), ("modern conv3", 128, 256, 8, 3, 1)]


def layers():
    """(name, in channels, out channels, input size, kernel, padding) of every layer measured."""
    found = []
    for width in (1, 2, 4, 8, 16):
        size = 32
        for name, kind, args in layout(width):
            if kind == "conv":
                in_c, out_c, kernel = args
                found.append((f"width {width} {name}", in_c, out_c, size, kernel, 0))
                size -= kernel - 1
            elif kind == "pool":
                size //= args[0]
    return found + MODERN


def _pass(work, x, weight, bias):
    work.forward(x, weight, bias)
    first = x.shape[1] == 3  # a network's first layer, whose input needs no gradient
    work.backward(weight, np.zeros_like(weight), np.zeros_like(bias), not first)


def measure(batch, in_c, out_c, size, kernel, padding, repeats):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, in_c, size, size)).astype(np.float32)
    weight = (rng.standard_normal((out_c, in_c, kernel, kernel)) * 0.1).astype(np.float32)
    bias = np.zeros(out_c, np.float32)
    works = {"shifted": workspaces.ShiftedConv(x.shape, weight.shape, np.float32, padding)}
    chosen = gemm_conv.VIEWS_FROM
    try:
        for form, views_from in FORMS.items():
            gemm_conv.VIEWS_FROM = views_from  # read as the products' matrices are made
            works[form] = workspaces.GemmConv(x.shape, weight.shape, np.float32, padding)
    finally:
        gemm_conv.VIEWS_FROM = chosen
    for work in works.values():
        work.backward_buffers(True)[...] = rng.standard_normal(work.rows.shape).astype(np.float32)
        _pass(work, x, weight, bias)  # warm up
    samples = {route: [] for route in works}
    for _ in range(repeats):  # alternate, so that the machine's drift hits both alike
        for route, work in works.items():
            start = time.perf_counter()
            _pass(work, x, weight, bias)
            samples[route].append(time.perf_counter() - start)
    return {route: statistics.median(values) for route, values in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32, 128])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rows = []
    for batch in args.batch_sizes:
        for name, in_c, out_c, size, kernel, padding in layers():
            seconds = measure(batch, in_c, out_c, size, kernel, padding, args.repeats)
            picked = "shifted"
            if gemm_conv.wins((batch, in_c, size, size), (out_c, in_c, kernel, kernel)):
                picked = "gemm-views" if in_c * kernel >= gemm_conv.VIEWS_FROM else "gemm-copies"
            faster = min(seconds, key=seconds.get)
            rows.append({"layer": name, "batch": batch, "in_channels": in_c, "out_channels": out_c, "size": size,
                         "kernel": kernel, "padding": padding, "seconds": seconds, "picked": picked,
                         "faster": faster, "picked_over_faster": seconds[picked] / seconds[faster]})
            times = ", ".join(f"{route} {value * 1e3:8.2f} ms" for route, value in seconds.items())
            print(f"batch {batch:4d} {name:18s} {in_c:4d}->{out_c:4d} {kernel}x{kernel}: {times}; picked {picked:11s}"
                  f"{'' if picked == faster else f' ({faster} is {seconds[picked] / seconds[faster]:.2f}x faster)'}",
                  flush=True)
    if args.json:
        write_json(args.json, {"machine": machine(), "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
