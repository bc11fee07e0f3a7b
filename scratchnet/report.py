"""What a tutorial run prints and records, shared by ``scratchnet.train``, ``scratchnet.evaluate``
and ``reference.tutorial`` so their printouts and ``metrics.json`` compare line by line and field by field.

Pure Python and NumPy: the reference imports it without pulling in the engine.
"""

import json
import os
import platform
import sys

import numpy as np

from scratchnet.files import write_json

METRICS_FILE = "metrics.json"
SHOWN_TEST_IMAGES = 4  # the tutorial shows its first test batch of 4


def loss_line(epoch, step, loss):
    """The tutorial's ``[1,  2000] loss: 2.182`` (epoch and step counted from 1)."""
    return f"[{epoch}, {step:5d}] loss: {loss:.3f}"


def accuracy_summary(labels, predictions, classes):
    """Overall and per-class accuracy (percent) and the confusion matrix (rows: true class)."""
    return summary_of_confusion(confusion_matrix(labels, predictions, classes), classes)


def confusion_matrix(labels, predictions, classes):
    """Counts of (true class, predicted class) as an int64 (classes, classes) array."""
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (np.asarray(labels), np.asarray(predictions)), 1)
    return confusion


def summary_of_confusion(confusion, classes):
    """``accuracy_summary``'s record from the confusion counts alone (so counts summed over workers will do)."""
    per_class_total = confusion.sum(axis=1)
    correct = int(np.trace(confusion))
    total = int(confusion.sum())
    return {
        "correct": correct,
        "total": total,
        "accuracy": 100.0 * correct / total,
        "per_class_accuracy": {
            name: (100.0 * confusion[i, i] / per_class_total[i] if per_class_total[i] else None)
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion.tolist(),
    }


def test_report_lines(labels, predictions, summary, classes):
    """The tutorial's test printout: GroundTruth/Predicted for the first 4 images, overall and per-class accuracy."""
    shown = range(min(SHOWN_TEST_IMAGES, len(labels)))
    lines = [
        "GroundTruth:  " + " ".join(f"{classes[labels[j]]:5s}" for j in shown),
        "Predicted:  " + " ".join(f"{classes[predictions[j]]:5s}" for j in shown),
        f"Accuracy of the network on the {summary['total']} test images: "
        f"{100 * summary['correct'] // summary['total']} %",
    ]
    for name, accuracy in summary["per_class_accuracy"].items():
        lines.append(f"Accuracy of {name:5s} : {int(accuracy):2d} %" if accuracy is not None
                     else f"Accuracy of {name:5s} : no test images")
    return lines


# The accuracy fields of a run that never reached its test (it diverged): null, so nothing passes for a result.
UNTESTED = {"correct": None, "total": None, "accuracy": None, "per_class_accuracy": None, "confusion_matrix": None}


def run_metrics(*, framework, backend, seed, config, data_root, train_images, steps_per_epoch, summary, loss_curve,
                epoch_losses, wall_time_s, versions, diverged=None, resumed_from=()):
    """The ``metrics.json`` record of one run; both frameworks write exactly these fields.

    ``steps_per_epoch`` counts the optimizer's steps (global batches in a data-parallel run).

    ``diverged`` is None or {"epoch", "step", "message"} of where the loss stopped being
    finite; ``resumed_from`` lists the {"epoch", "step"} each ``--resume`` continued from.
    """
    return {
        "framework": framework,
        "backend": backend,
        "seed": seed,
        "config": config,
        "data": {"root": os.path.abspath(data_root), "train_images": train_images, "steps_per_epoch": steps_per_epoch,
                 "test_images": summary["total"]},
        "loss_curve": loss_curve,
        "epoch_losses": epoch_losses,
        "diverged": diverged,
        "resumed_from": list(resumed_from),
        **summary,
        "wall_time_s": wall_time_s,
        "versions": versions,
        "machine": machine(),
    }


def versions(*modules):
    """Python and the versions of those named modules that this process has imported."""
    found = {"python": platform.python_version()}
    for name in modules:
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "unknown")
    return found


def machine():
    """A short description of where a run happened, for comparing wall times."""
    return {
        "platform": platform.platform(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def write_metrics(run_dir, metrics):
    """Write ``metrics.json`` into ``run_dir`` atomically; return its path."""
    path = os.path.join(run_dir, METRICS_FILE)
    write_json(path, metrics)
    return path


def read_metrics(run_dir):
    with open(os.path.join(run_dir, METRICS_FILE)) as file:
        return json.load(file)
