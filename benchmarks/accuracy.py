"""Accuracy parity: ``python -m benchmarks.accuracy`` runs both full tutorials for several seeds.

Each seed runs ``python -m scratchnet.train`` and ``python -m reference.tutorial`` (each
framework with its own random initialization and shuffle), one after the other in fresh
processes, and the test accuracies and wall times land in one JSON file
(``benchmarks/results/accuracy.json`` by default) with a description of the machine.
A Markdown table for the README is printed at the end.
"""

import datetime
import os
import statistics
import subprocess
import sys

from scratchnet import cli, report
from scratchnet.files import write_json

FRAMEWORKS = {"scratchnet": "scratchnet.train", "pytorch": "reference.tutorial"}
DEFAULT_OUTPUT = os.path.join("benchmarks", "results", "accuracy.json")
PARITY_POINTS = 1.5  # scratchnet's mean accuracy should lie this close to the reference's


def main(argv=None):
    parser = cli.Parser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run (default 0 1 2)")
    parser.add_argument("--epochs", type=cli.positive_int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--backend", default="numba", help="scratchnet backend (default numba)")
    parser.add_argument("--torch-threads", type=cli.positive_int, default=1,
                        help="torch intra-op threads for the reference (default 1: torch's spinning thread pool "
                             "collapses on a few shared cores)")
    parser.add_argument("--data", metavar="DIR", default=os.environ.get(cli.DATA_ENV, "data"),
                        help=f"folder holding cifar-10-batches-py (default: ${cli.DATA_ENV} or ./data)")
    parser.add_argument("--limit-train", type=cli.positive_int, metavar="N",
                        help="first N training images (for trials)")
    parser.add_argument("--limit-test", type=cli.positive_int, metavar="N", help="first N test images (for trials)")
    parser.add_argument("--runs-dir", default=os.path.join("runs", "accuracy"), help="where the run folders go")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"the JSON to write (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)

    runs = []
    for seed in args.seeds:
        for framework, module in FRAMEWORKS.items():
            runs.append(run_one(framework, module, seed, args))
    result = {
        "what": "CIFAR-10 tutorial test accuracy, scratchnet vs the canonical PyTorch tutorial, "
                "each framework with its own random initialization and shuffle per seed",
        "date": datetime.date.today().isoformat(),
        "settings": {"epochs": args.epochs, "batch_size": 4, "lr": 0.001, "momentum": 0.9,
                     "scratchnet_backend": args.backend, "torch_threads": args.torch_threads,
                     "limit_train": args.limit_train, "limit_test": args.limit_test, "seeds": args.seeds},
        "machine": report.machine(),
        "versions": {framework: next(r["versions"] for r in runs if r["framework"] == framework)
                     for framework in FRAMEWORKS},
        "runs": [{key: run[key] for key in ("framework", "seed", "accuracy", "correct", "total", "wall_time_s")}
                 for run in runs],
        "summary": summarize(runs),
    }
    write_json(args.output, result)
    print(markdown_table(result))
    print(f"Wrote {args.output}")
    return 0


def run_one(framework, module, seed, args):
    out = os.path.join(args.runs_dir, f"{framework}-seed{seed}")
    command = [sys.executable, "-m", module, "--seed", str(seed), "--epochs", str(args.epochs),
               "--data", args.data, "--out", out, "--overwrite"]  # a rerun replaces its earlier run
    command += ["--backend", args.backend] if framework == "scratchnet" else ["--threads", str(args.torch_threads)]
    for flag, value in (("--limit-train", args.limit_train), ("--limit-test", args.limit_test)):
        if value is not None:
            command += [flag, str(value)]
    print(f"{framework} seed {seed}: {' '.join(command[1:])}", flush=True)
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        tail = (finished.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"python -m benchmarks.accuracy: error: {framework} seed {seed} failed: {tail}")
    metrics = report.read_metrics(out)
    print(f"  accuracy {metrics['accuracy']:.2f} %, train {metrics['wall_time_s']['train']:.0f} s", flush=True)
    return metrics


def summarize(runs):
    summary = {}
    for framework in FRAMEWORKS:
        mine = [run for run in runs if run["framework"] == framework]
        accuracies = [run["accuracy"] for run in mine]
        summary[framework] = {
            "accuracies": accuracies,
            "mean_accuracy": statistics.fmean(accuracies),
            "stdev_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "mean_train_time_s": statistics.fmean(run["wall_time_s"]["train"] for run in mine),
            "mean_total_time_s": statistics.fmean(run["wall_time_s"]["total"] for run in mine),
        }
    difference = summary["scratchnet"]["mean_accuracy"] - summary["pytorch"]["mean_accuracy"]
    summary["mean_accuracy_difference_points"] = difference
    summary[f"within_{PARITY_POINTS}_points"] = abs(difference) <= PARITY_POINTS
    return summary


def markdown_table(result):
    summary = result["summary"]
    lines = ["| framework | test accuracy per seed (%) | mean ± stdev (%) | mean train time (s) |",
             "|---|---|---|---|"]
    for framework in FRAMEWORKS:
        row = summary[framework]
        lines.append(f"| {framework} | {', '.join(f'{a:.2f}' for a in row['accuracies'])} | "
                     f"{row['mean_accuracy']:.2f} ± {row['stdev_accuracy']:.2f} | {row['mean_train_time_s']:.0f} |")
    lines.append(f"\nDifference of the means: {summary['mean_accuracy_difference_points']:+.2f} points "
                 f"({result['machine']['processor']}, {result['machine']['usable_cpus']} usable cores).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
