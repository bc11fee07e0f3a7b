"""GPU benchmark: scratchnet's cupy backend against PyTorch CUDA eager, training-step images/s.

    python -m benchmarks.gpu --json benchmarks/results/gpu_<card>.json

For each width (1, 4, 8: the tutorial's "make it wider" exercise) and batch
(4, 128, 512) each runner trains the tutorial Net with SGD(lr=0.001,
momentum=0.9) on batches already resident on the GPU: scratchnet replaying its
captured CUDA graph of the step as ``fit`` does (where the step is small enough
to be captured, see ``scratchnet.backends.cupy.graph``; elsewhere it steps eagerly too),
scratchnet stepping eagerly, and PyTorch eager. They are measured in
alternation, each figure is the median over the repeats, and each scratchnet
runner gets its ratio to PyTorch. PyTorch runs with its defaults (cuDNN, TF32
convolutions allowed), which the JSON records. Then the headline command
``python -m scratchnet.train --backend cupy`` runs once, timed end to end, and
its output is kept.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from scratchnet import backends, cli, nn, optim, report
from scratchnet.files import write_json
from scratchnet.models import Net
from scratchnet.step import compile_step

WIDTHS = (1, 4, 8)
BATCHES = (4, 128, 512)
# Timed steps per repeat: enough that one repeat lasts well past timer resolution.
STEPS = {4: 200, 128: 50, 512: 20}
WARMUP_STEPS = 5
DISTINCT_BATCHES = 8


def _batches(batch, seed):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, size=(DISTINCT_BATCHES, batch, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, size=(DISTINCT_BATCHES, batch))
    return images, labels


class ScratchnetCupyEager:
    """Steps as ``fit`` takes them on the GPU (``step.compile_step``), here without graph capture."""

    name = "scratchnet-cupy-eager"
    capture = False

    def __init__(self, width, batch):
        import cupy

        self.cupy = cupy
        gpu = backends.get("cupy")
        net = Net(width=width, seed=0).to("cupy")
        images, labels = _batches(batch, seed=width)
        self.data = [(gpu.asarray(x), gpu.asarray(y)) for x, y in zip(images, labels)]
        # The loss stays on the GPU, as in fit.
        self.step = compile_step(net, nn.CrossEntropyLoss().to("cupy"),
                                 optim.SGD(net.parameters(), lr=0.001, momentum=0.9), batch,
                                 label_pool=cupy.concatenate([y for _, y in self.data]), capture=self.capture)

    def run(self, steps):
        for step in range(steps):
            self.step(*self.data[step % DISTINCT_BATCHES])

    def synchronize(self):
        self.cupy.cuda.Device().synchronize()


class ScratchnetCupy(ScratchnetCupyEager):
    """Steps through the captured CUDA graph (the warm-up steps capture it), as ``fit`` trains."""

    name = "scratchnet-cupy"
    capture = True


class TorchCuda:
    name = "torch-cuda-eager"

    def __init__(self, width, batch):
        import torch

        self.torch = torch
        torch.manual_seed(0)
        from reference.tutorial import Net as TorchNet

        self.net = TorchNet(width).cuda()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.001, momentum=0.9)
        self.criterion = torch.nn.CrossEntropyLoss()
        images, labels = _batches(batch, seed=width)
        self.data = [(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()) for x, y in zip(images, labels)]

    def run(self, steps):
        for step in range(steps):
            images, labels = self.data[step % DISTINCT_BATCHES]
            self.optimizer.zero_grad()
            self.criterion(self.net(images), labels).backward()
            self.optimizer.step()

    def synchronize(self):
        self.torch.cuda.synchronize()


def _images_per_second(runner, steps, batch):
    runner.synchronize()
    start = time.perf_counter()
    runner.run(steps)
    runner.synchronize()
    return steps * batch / (time.perf_counter() - start)


def measure_throughput(frameworks, repeats):
    rows = []
    for width in WIDTHS:
        for batch in BATCHES:
            runners = [framework(width, batch) for framework in frameworks]
            for runner in runners:
                runner.run(WARMUP_STEPS)
            samples = {runner.name: [] for runner in runners}
            for _ in range(repeats):  # alternate so drifting clocks hit both alike
                for runner in runners:
                    samples[runner.name].append(_images_per_second(runner, STEPS[batch], batch))
            row = {"width": width, "batch": batch, "steps_per_repeat": STEPS[batch]}
            for name, values in samples.items():
                row[f"{name} images/s (median)"] = statistics.median(values)
                row[f"{name} images/s (all)"] = values
            if TorchCuda.name in samples:
                torch_median = statistics.median(samples[TorchCuda.name])
                for name, values in samples.items():
                    if name != TorchCuda.name:
                        row[f"ratio {name}/torch"] = statistics.median(values) / torch_median
            print(json.dumps({k: v for k, v in row.items() if "(all)" not in k}), flush=True)
            rows.append(row)
            del runners
    return rows


def tutorial_run(timeout_s):
    """The headline command, timed end to end (process start and data loading included)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "scratchnet.train", "--backend", "cupy", "--out", out]
        shown = "python -m scratchnet.train --backend cupy"
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"command": shown, "error": f"did not finish within {timeout_s} s"}
        seconds = time.perf_counter() - start
        output = result.stdout + result.stderr
        metrics = report.read_metrics(out) if result.returncode == 0 else {}
    return {
        "command": shown,
        "exit_status": result.returncode,
        "wall_seconds": seconds,
        "data": os.environ.get(cli.DATA_ENV, "data (the default folder)"),
        **{key: metrics.get(key) for key in ("accuracy", "correct", "total", "wall_time_s")},
        "output_tail": output[-3000:],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-tutorial", action="store_true", help="only the throughput table")
    parser.add_argument("--tutorial-timeout", type=int, default=300)
    args = parser.parse_args(argv)

    try:
        backends.get("cupy")
    except backends.BackendError as exc:
        raise SystemExit(f"benchmarks.gpu needs a CUDA GPU with CuPy: {exc}") from None
    import cupy

    properties = cupy.cuda.runtime.getDeviceProperties(0)
    card = properties["name"].decode() if isinstance(properties["name"], bytes) else str(properties["name"])
    results = {
        "card": card,
        "multiprocessors": properties["multiProcessorCount"],
        "cupy": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "numpy": np.__version__,
    }
    frameworks = [ScratchnetCupy, ScratchnetCupyEager]
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        frameworks.append(TorchCuda)
        results["torch"] = torch.__version__
        results["torch_settings"] = {
            "cudnn.enabled": torch.backends.cudnn.enabled,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    else:
        results["torch"] = "not available with CUDA here: scratchnet measured alone"
    print(f"card: {card}", flush=True)
    results["throughput"] = measure_throughput(frameworks, args.repeats)
    if not args.skip_tutorial:
        results["tutorial_2_epochs"] = tutorial_run(args.tutorial_timeout)
        print(json.dumps({k: v for k, v in results["tutorial_2_epochs"].items() if k != "output_tail"}), flush=True)

    write_json(args.json, results)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
