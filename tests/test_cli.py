"""Both tutorial CLIs on a small slice of the real data: printout, run folder, and bad input."""

import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from cifar_fakes import MarkerPayload
from conftest import gpu_present
from scratchnet import checkpoint, cli, data, files
from scratchnet.models import Net

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICE = ["--limit-train", "400", "--limit-test", "100", "--log-every", "25", "--seed", "5"]
PLOTS = ("samples.png", "loss_curve.png", "per_class_accuracy.png", "confusion_matrix.png")


def run_cli(module, *args, cwd=None, unset=(), env=None):
    """Run ``python -m module args`` in a subprocess, with ``env`` added to the environment and ``unset`` taken away."""
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = {name: value for name, value in {**os.environ, "PYTHONPATH": path, **(env or {})}.items()
           if name not in unset}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def assert_one_line_error(result, *phrases):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last, result.stderr
    for phrase in phrases:
        assert phrase in last, last
    return last


@pytest.fixture(scope="module")
def scratchnet_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("scratchnet") / "run"
    notices = {files.CACHE_ENV: str(tmp_path_factory.mktemp("cache"))}  # not said yet to this "user"
    result = run_cli("scratchnet.train", "--backend", "numpy", "--data", data_root, "--out", out, *SLICE, env=notices)
    assert result.returncode == 0, result.stderr
    return result, out


@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli("reference.tutorial", "--threads", "1", "--data", data_root, "--out", out, *SLICE)
    assert result.returncode == 0, result.stderr
    return result, out


def check_tutorial_printout(stdout, test_images=100):
    lines = stdout.splitlines()
    loss_lines = [line for line in lines if line.startswith("[")]
    # 400 images / batch 4 = 100 steps per epoch, a log line every 25 steps, 2 epochs.
    assert [line[:10] for line in loss_lines] == [f"[{e}, {s:5d}]" for e in (1, 2) for s in (25, 50, 75, 100)]
    assert all(re.fullmatch(r"\[\d, +\d+\] loss: \d\.\d{3}", line) for line in loss_lines)
    finished = lines.index("Finished Training")
    assert finished > lines.index(loss_lines[-1])
    # The first four test images of CIFAR-10 are a cat, two ships and a plane.
    assert lines[finished + 1] == "GroundTruth:  cat   ship  ship  plane"
    assert re.fullmatch(r"Predicted:  (\w+ *){4}", lines[finished + 2])
    accuracy = re.fullmatch(rf"Accuracy of the network on the {test_images} test images: (\d+) %", lines[finished + 3])
    assert accuracy
    per_class = lines[finished + 4:finished + 14]
    assert [line.split(":")[0].split()[-1] for line in per_class] == list(data.CLASSES)
    assert all(re.fullmatch(r"Accuracy of \w+ *: +(\d+ %|no test images)", line) for line in per_class)
    return int(accuracy.group(1)), loss_lines


def check_run_folder(out, weights_file, framework):
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["framework"] == framework and metrics["seed"] == 5
    assert metrics["data"]["train_images"] == 400 and metrics["total"] == 100
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["batch_size"] == 4
    assert len(metrics["loss_curve"]) == 8 and len(metrics["epoch_losses"]) == 2
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 100 and np.trace(confusion) == metrics["correct"]
    assert set(metrics["wall_time_s"]) == {"data", "train", "test", "total"}
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    Net().load_state_dict(checkpoint.load(out / weights_file))  # the weights fit the tutorial Net
    return metrics


def test_scratchnet_train_prints_the_tutorial_and_fills_the_run_folder(scratchnet_run):
    result, out = scratchnet_run
    accuracy, loss_lines = check_tutorial_printout(result.stdout)
    metrics = check_run_folder(out, "cifar_net.npz", "scratchnet")
    assert metrics["backend"] == "numpy"
    assert accuracy == 100 * metrics["correct"] // metrics["total"]
    assert [f"{point['loss']:.3f}" for point in metrics["loss_curve"]] == [line[-5:] for line in loss_lines]
    assert "not the official CIFAR-10 release" in result.stderr  # the JPEG-derived copy is said so, once
    assert result.stderr.count("not the official") == 1


def test_reference_tutorial_prints_the_same_and_records_the_same_fields(reference_run, scratchnet_run):
    result, out = reference_run
    accuracy, _ = check_tutorial_printout(result.stdout)
    metrics = check_run_folder(out, "cifar_net.pth", "pytorch")
    ours = json.loads((scratchnet_run[1] / "metrics.json").read_text())
    assert set(metrics) == set(ours)
    assert set(metrics["config"]) - {"workers", "threads"} == set(ours["config"]) - {"dtype"}  # torch's is float32
    assert accuracy == 100 * metrics["correct"] // metrics["total"]


@pytest.mark.parametrize("which", ["scratchnet", "reference"])
def test_evaluate_reads_either_framework_weights(which, scratchnet_run, reference_run, data_root):
    result, out = scratchnet_run if which == "scratchnet" else reference_run
    weights = out / ("cifar_net.npz" if which == "scratchnet" else "cifar_net.pth")
    evaluation = run_cli("scratchnet.evaluate", "--weights", weights, "--backend", "numpy", "--data", data_root,
                         "--limit-test", "100")
    assert evaluation.returncode == 0, evaluation.stderr
    trained = result.stdout.splitlines()
    test_report = trained[trained.index("Finished Training") + 1:trained.index("Finished Training") + 14]
    assert evaluation.stdout.splitlines() == test_report  # same weights, same predictions, same report


@pytest.mark.parametrize("given", ["run folder", "weights file"])
def test_evaluate_finds_the_weights_and_the_data_of_a_run(given, scratchnet_run, tmp_path):
    result, out = scratchnet_run
    weights = out if given == "run folder" else out / "cifar_net.npz"
    # Neither --data, $SCRATCHNET_DATA nor ./data holds CIFAR-10 here: the data folder is the one the run recorded.
    evaluation = run_cli("scratchnet.evaluate", "--weights", weights, "--backend", "numpy", "--limit-test", "100",
                         cwd=tmp_path, unset=[cli.DATA_ENV])
    assert evaluation.returncode == 0, evaluation.stderr
    trained = result.stdout.splitlines()
    assert evaluation.stdout.splitlines() == trained[trained.index("Finished Training") + 1:][:13]


def test_evaluate_of_a_folder_without_weights_says_what_to_give(tmp_path):
    result = run_cli("scratchnet.evaluate", "--weights", tmp_path, "--backend", "numpy", cwd=tmp_path)
    assert_one_line_error(result, str(tmp_path), "cifar_net.npz", "give a run folder or a weights file")


def test_a_nan_loss_stops_training_and_keeps_the_last_good_weights(data_root, tmp_path):
    out = tmp_path / "run"
    result = run_cli("scratchnet.train", "--backend", "numpy", "--data", data_root, "--out", out, "--lr", "1e5",
                     "--limit-train", "40", "--limit-test", "4", "--log-every", "1", "--seed", "1")
    last = assert_one_line_error(result, "training stopped", "epoch 1, step")
    failed = int(re.search(r"at epoch 1, step (\d+)", last).group(1))
    kept = int(re.search(r"last good weights \(epoch 1, step (\d+)\)", last).group(1))
    assert kept == failed - 1
    state = checkpoint.load(out / "cifar_net.npz")
    assert all(np.isfinite(value).all() for value in state.values())
    assert "Finished Training" not in result.stdout
    # What ran is kept, marked diverged, with no accuracy that could pass for a result.
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert metrics["diverged"]["epoch"] == 1 and metrics["diverged"]["step"] == failed
    assert metrics["accuracy"] is None and len(metrics["loss_curve"]) == kept
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (out / "samples.png").exists()


def test_missing_data_folder(tmp_path):
    result = run_cli("scratchnet.train", "--data", tmp_path / "nothing-here", "--backend", "numpy")
    assert_one_line_error(result, "CIFAR-10 not found", "--download")
    assert len(result.stderr.strip().splitlines()) == 1


# The flags are shared code, so the reference (slow to start: it imports torch) gets one case.
@pytest.mark.parametrize("module, flag, value", [
    *[("scratchnet.train", flag, value) for flag, value in
      [("--batch-size", "0"), ("--epochs", "-1"), ("--limit-train", "0"), ("--log-every", "-5"), ("--lr", "nan")]],
    ("scratchnet.evaluate", "--limit-test", "0"),
    ("reference.tutorial", "--batch-size", "-4"),
])
def test_bad_sizes_are_one_line(module, flag, value, tmp_path):
    result = run_cli(module, flag, value, cwd=tmp_path)
    assert_one_line_error(result, flag)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("module", ["scratchnet.train", "scratchnet.evaluate", "reference.tutorial"])
def test_help_is_plain_text(module):
    result = run_cli(module, "--help")
    assert result.returncode == 0 and f"python -m {module}" in result.stdout
    assert "``" not in result.stdout


def test_unknown_backend(tmp_path):
    result = run_cli("scratchnet.train", "--backend", "tensorflow", cwd=tmp_path)
    assert_one_line_error(result, "--backend", "numpy", "numba", "cupy")


def test_cupy_without_cupy_or_gpu_is_one_line(tmp_path, data_root):
    if gpu_present():
        pytest.skip("CuPy and a GPU are present here, so --backend cupy works")
    result = run_cli("scratchnet.train", "--backend", "cupy", "--data", data_root, cwd=tmp_path,
                     env={"SCRATCHNET_CUDA_EMULATOR": "0"})
    assert_one_line_error(result, "backend 'cupy' is not available")
    assert len(result.stderr.strip().splitlines()) == 1


EMULATED_SLICE = ["--dtype", "float64", "--limit-train", "400", "--limit-test", "100", "--epochs", "1",
                  "--log-every", "50", "--seed", "3"]


def test_the_emulated_gpu_prints_what_numpy_prints(data_root, tmp_path):
    """Our CUDA kernels on the emulated device, with the CUDA-graph replay and without, against numpy."""
    runs = {}
    for name, backend, extra in [("numpy", "numpy", []), ("graph", "cupy", []),
                                 ("eager", "cupy", ["--no-cuda-graph"])]:
        out = tmp_path / name
        result = run_cli("scratchnet.train", "--backend", backend, "--data", data_root, "--out", out,
                         *EMULATED_SLICE, *extra, env={"SCRATCHNET_CUDA_EMULATOR": "1"})
        assert result.returncode == 0, result.stderr
        runs[name] = result, json.loads((out / "metrics.json").read_text())
    numpy_result, numpy_metrics = runs["numpy"]
    for name in ("graph", "eager"):
        result, metrics = runs[name]
        assert result.stderr.count("emulated CUDA device: for testing, not for speed") == 1, result.stderr
        printed = [line for line in result.stdout.splitlines() if not line.startswith("Run folder")]
        assert printed == [line for line in numpy_result.stdout.splitlines() if not line.startswith("Run folder")]
        losses = np.array([point["loss"] for point in metrics["loss_curve"]])
        numpy_losses = np.array([point["loss"] for point in numpy_metrics["loss_curve"]])
        assert losses.shape == (2,) and np.all(np.abs(losses - numpy_losses) <= 1e-12 * np.abs(numpy_losses)), name
        assert metrics["confusion_matrix"] == numpy_metrics["confusion_matrix"], name


@pytest.mark.parametrize("content", ["text", "evil", "missing"])
def test_unreadable_or_foreign_weights_are_one_line(content, tmp_path):
    weights = tmp_path / "weights.pth"
    if content == "text":
        weights.write_text("not weights")
    elif content == "evil":
        with zipfile.ZipFile(weights, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps(MarkerPayload(str(tmp_path / "ran")), protocol=2))
    result = run_cli("scratchnet.evaluate", "--weights", weights, "--backend", "numpy", "--data", tmp_path)
    assert_one_line_error(result, str(weights))
    assert not (tmp_path / "ran").exists()


def test_accuracy_benchmark_runs_both_frameworks_and_writes_json(data_root, tmp_path):
    output = tmp_path / "accuracy.json"
    result = run_cli("benchmarks.accuracy", "--seeds", "3", "--epochs", "1", "--backend", "numpy", "--data", data_root,
                     "--limit-train", "40", "--limit-test", "20", "--runs-dir", tmp_path / "runs", "--output", output,
                     cwd=REPO)
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text())
    assert [(run["framework"], run["seed"], run["total"]) for run in record["runs"]] == [
        ("scratchnet", 3, 20), ("pytorch", 3, 20)]
    for framework in ("scratchnet", "pytorch"):
        run = next(r for r in record["runs"] if r["framework"] == framework)
        assert record["summary"][framework]["accuracies"] == [run["accuracy"]]
        assert (tmp_path / "runs" / f"{framework}-seed3" / "metrics.json").exists()
    assert record["machine"]["cpu_count"] >= 1 and "torch" in record["versions"]["pytorch"]
    assert "| scratchnet |" in result.stdout and "| pytorch |" in result.stdout


def test_a_larger_test_batch_prints_the_same_report(data_root, tmp_path):
    args = ["--backend", "numpy", "--data", data_root, "--epochs", "1", "--limit-train", "40", "--limit-test", "100",
            "--log-every", "5", "--seed", "5"]
    runs = [run_cli("scratchnet.train", *args, "--out", tmp_path / name, *extra)
            for name, extra in [("tutorial", []), ("wide", ["--test-batch-size", "50"])]]
    assert all(result.returncode == 0 for result in runs), runs[-1].stderr
    printed = [[line for line in result.stdout.splitlines() if not line.startswith("Run folder")] for result in runs]
    assert printed[0] == printed[1] and any(line.startswith("Accuracy of the network") for line in printed[0])
    assert json.loads((tmp_path / "wide" / "metrics.json").read_text())["config"]["test_batch_size"] == 50
