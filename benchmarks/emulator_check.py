"""The emulated CUDA device checked against a real GPU: the same ops, on the same inputs, through the cupy
backend once on each, compared output by output.

    python -m benchmarks.emulator_check --save real.npz                                  # on the GPU
    SCRATCHNET_CUDA_EMULATOR=1 python -m benchmarks.emulator_check --save emulated.npz  # anywhere
    python -m benchmarks.emulator_check --compare real.npz emulated.npz

Float64 results must agree within 1e-12 relative (the GPU contracts multiply-adds, the CPU build does
not); max-pool indices exactly. ``benchmarks/gpu_check.sh`` runs all three steps on a GPU machine.
"""

import argparse
import sys

import numpy as np

from scratchnet import backends

_TOLERANCE = 1e-12


def _results(gpu):
    """{name: host array} for a fixed set of ops on fixed float64 inputs."""
    rng = np.random.default_rng(0)
    xp, out = gpu.xp, {}

    def host(name, value):
        out[name] = gpu.to_numpy(value)

    x = gpu.asarray(rng.standard_normal((3, 4, 11, 9)))
    for label, weight_shape, geometry in [
            ("direct", (6, 4, 3, 3), ((1, 1), ((1, 1), (1, 1)), (1, 1), 1)),
            ("general", (6, 2, 3, 2), ((2, 1), ((1, 0), (2, 0)), (1, 2), 2))]:
        weight, bias = gpu.asarray(rng.standard_normal(weight_shape)), gpu.asarray(rng.standard_normal(6))
        y = gpu.conv2d_forward(x, weight, bias, *geometry)
        grad_weight, grad_bias = xp.zeros_like(weight), xp.zeros_like(bias)
        grad_x = gpu.conv2d_backward(x, weight, gpu.asarray(rng.standard_normal(y.shape)), *geometry,
                                     grad_weight, grad_bias)
        for name, value in [("y", y), ("grad_x", grad_x), ("grad_weight", grad_weight), ("grad_bias", grad_bias)]:
            host(f"conv {label} {name}", value)
    for label, pool in [("plain", ((2, 2), (2, 2), (0, 0), (1, 1), False)),
                        ("general", ((3, 2), (2, 1), (1, 1), (1, 2), True))]:
        y, indices = gpu.max_pool2d_forward(x, *pool)
        grad_x = gpu.max_pool2d_backward(gpu.asarray(rng.standard_normal(y.shape)), indices, x.shape, *pool[:4])
        host(f"pool {label} y", y), host(f"pool {label} indices", indices), host(f"pool {label} grad_x", grad_x)
    logits, labels = gpu.asarray(rng.standard_normal((7, 10)) * 3), gpu.asarray(np.array([1, 2, -100, 4, 9, 0, 3]))
    loss, saved = gpu.cross_entropy_forward(logits, labels, gpu.asarray(rng.uniform(0.5, 2, 10)), -100, "mean", 0.1)
    host("cross_entropy loss", loss), host("cross_entropy grad", gpu.cross_entropy_backward(saved))
    weight = gpu.asarray(rng.standard_normal((5, 10)))
    y = gpu.linear_forward(logits, weight, gpu.asarray(rng.standard_normal(5)))
    grad_weight, grad_bias = xp.zeros_like(weight), xp.zeros(5)
    grad_x = gpu.linear_backward(logits, weight, gpu.asarray(rng.standard_normal(y.shape)), grad_weight, grad_bias)
    for name, value in [("y", y), ("grad_x", grad_x), ("grad_weight", grad_weight), ("grad_bias", grad_bias)]:
        host(f"linear {name}", value)
    param, grad, buf = (gpu.asarray(rng.standard_normal(50)) for _ in range(3))
    gpu.sgd_step(param, grad, buf, 0.1, 0.9, 0.1, 1e-4, True, False)
    host("sgd param", param), host("sgd momentum", buf)
    return out


def compare(first, second):
    """Lines describing each output; the second value is whether every output agreed."""
    lines, agreed = [], True
    for name in sorted(first):
        a, b = first[name], second[name]
        if a.dtype.kind == "i":
            ok, error = np.array_equal(a, b), float(np.count_nonzero(a != b))
        else:
            error = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-300), initial=0.0))
            ok = error <= _TOLERANCE
        agreed &= ok
        lines.append(f"{'ok  ' if ok else 'DIFF'} {name:<28} {error:.2e}")
    return lines, agreed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", metavar="NPZ", help="run the ops on this process's cupy backend and save them")
    group.add_argument("--compare", nargs=2, metavar="NPZ", help="compare two saved runs")
    args = parser.parse_args(argv)
    if args.save:
        gpu = backends.get("cupy")
        np.savez(args.save, **_results(gpu))
        print(f"saved {'emulated' if gpu.emulated else 'GPU'} results to {args.save}")
        return 0
    with np.load(args.compare[0]) as first, np.load(args.compare[1]) as second:
        if set(first.files) != set(second.files):
            print("error: the two runs saved different outputs", file=sys.stderr)
            return 1
        lines, agreed = compare(dict(first), dict(second))
    print("\n".join(lines))
    print("emulated and real GPU agree" if agreed else "emulated and real GPU DIFFER")
    return 0 if agreed else 1


if __name__ == "__main__":
    sys.exit(main())
