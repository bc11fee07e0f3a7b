"""CPU benchmark: this tree's numba training step against a git revision's, the same Net, width and batch.

    python -m benchmarks.revision_ab bcbc47e --width 1 --batch-size 4 --json benchmarks/results/width1_batch4_ab.json

The revision is checked out into a temporary folder (``git worktree``) and each side runs in processes of its
own, alternating, every process timing whole steps (``step.compile_step``'s, as ``fit`` trains) for
``--seconds`` after a warm-up; figures are medians. It answers "is it slower than before" in one run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.contenders import machine
from scratchnet.files import write_json

REPO = Path(__file__).resolve().parent.parent

_STEP = """
import json, sys, time
import numpy as np
from scratchnet import nn, optim
from scratchnet.models import Net
from scratchnet.step import compile_step
width, batch, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
images, labels = rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch)
net = Net(width=width, seed=0).to("numba")
step = compile_step(net, nn.CrossEntropyLoss().to("numba"), optim.SGD(net.parameters(), lr=0.001, momentum=0.9),
                    batch, label_pool=labels)
for warm_up in range(20):
    step(images, labels)
steps, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    step(images, labels)
    steps += 1
print(json.dumps(steps * batch / (time.perf_counter() - start)))
"""


def images_per_second(tree, width, batch_size, seconds):
    env = dict(os.environ, PYTHONPATH=str(tree))
    run = subprocess.run([sys.executable, "-c", _STEP, str(width), str(batch_size), str(seconds)], cwd=tree, env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the git revision to run against (its scratchnet package)")
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", args.revision], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        baseline = Path(folder) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), commit], cwd=REPO, check=True,
                       capture_output=True)
        try:
            trees = {"this tree": REPO, args.revision: baseline}
            for tree in trees.values():  # compile each side's kernels into its cache before timing
                images_per_second(tree, args.width, args.batch_size, 0.2)
            samples = {name: [] for name in trees}
            for _ in range(args.repeats):
                for name, tree in trees.items():
                    samples[name].append(images_per_second(tree, args.width, args.batch_size, args.seconds))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=True)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratio = medians["this tree"] / medians[args.revision]
    for name, value in medians.items():
        print(f"{name:>12}: {value:8.0f} images/s (median of {args.repeats})")
    print(f"width {args.width}, batch {args.batch_size}: this tree / {args.revision} = {ratio:.3f}x")
    if args.json:
        write_json(args.json, {"revision": args.revision, "commit": commit, "width": args.width,
                               "batch_size": args.batch_size, "seconds_per_sample": args.seconds,
                               "images_per_second": samples, "median": medians, "this_over_revision": ratio,
                               "machine": machine()})


if __name__ == "__main__":
    main()
