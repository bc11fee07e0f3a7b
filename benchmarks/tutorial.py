"""End to end: wall time of ``python -m scratchnet.train`` against ``python -m reference.tutorial``.

    python -m benchmarks.tutorial --data DIR --json benchmarks/results/tutorial.json

Both command lines run as fresh processes on the same data with the same
flags (default: the tutorial's 2 epochs and full test set), one after the
other, each writing into its own temporary run folder; the wall time includes
start-up, data loading, training and testing, and each run's own split of it
(``wall_time_s`` of its ``metrics.json``: data, train, test, total in-process) is
recorded beside it. Extra ``--limit-train`` /
``--limit-test`` flags pass through to both for a quick check.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from scratchnet import report
from scratchnet.files import write_json


def run(module, flags):
    """Run ``python -m module *flags``; return (seconds, last lines of its output)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{module} failed with exit status {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds, (done.stdout + done.stderr).strip().splitlines()[-5:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, metavar="DIR", help="folder holding cifar-10-batches-py")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit-train", type=int, metavar="N")
    parser.add_argument("--limit-test", type=int, metavar="N")
    parser.add_argument("--backend", default="numba", help="scratchnet backend (default numba)")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)

    shared = ["--data", args.data, "--epochs", str(args.epochs)]
    for flag, value in (("--limit-train", args.limit_train), ("--limit-test", args.limit_test)):
        if value is not None:
            shared += [flag, str(value)]
    results = {"flags": shared, "backend": args.backend, "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as runs:
        for name, module, extra in (("scratchnet", "scratchnet.train", ["--backend", args.backend]),
                                    ("reference", "reference.tutorial", [])):
            folder = os.path.join(runs, name)
            seconds, tail = run(module, shared + extra + ["--out", folder])
            with open(os.path.join(folder, report.METRICS_FILE)) as file:
                phases = json.load(file)["wall_time_s"]
            results[name] = {"command": f"python -m {module} " + " ".join(shared + extra), "wall_s": seconds,
                             "in_process_s": phases, "output_tail": tail}
            print(f"{name}: {seconds:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()) + ")")
    results["load_average_after"] = os.getloadavg()
    results["reference_over_scratchnet"] = results["reference"]["wall_s"] / results["scratchnet"]["wall_s"]

    if args.json:
        write_json(args.json, results)
    print(f"scratchnet ({args.backend}) is {results['reference_over_scratchnet']:.1f}x faster end to end")


if __name__ == "__main__":
    main()
