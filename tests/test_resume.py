"""--resume: a run interrupted anywhere (a test hook, or kill -9) ends bit-identical to an uninterrupted one."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scratchnet import checkpoint, resume, train
from scratchnet.data import DataLoader
from test_cli import REPO, run_cli

# 40 images at batch 4: 10 steps per epoch, a checkpoint every 5 steps (mid-epoch and at each epoch's end).
SMALL = ["--limit-train", "40", "--limit-test", "8", "--log-every", "5", "--seed", "2", "--epochs", "2"]
# Metrics fields that are not results: wall times, and the record of where each resume started.
NOT_RESULTS = ("wall_time_s", "resumed_from")


def train_in_process(*args):
    """Run ``python -m scratchnet.train`` in this process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = train.main([str(arg) for arg in args])
        except SystemExit as exit:
            code = exit.code
    return code or 0, out.getvalue(), err.getvalue()


def interrupt_after(monkeypatch, steps):
    """Make training raise KeyboardInterrupt (as Ctrl-C would) when it asks for training batch ``steps + 1``."""
    original, taken = DataLoader.batches, [0]

    def batches(self, skip=0):
        for batch in original(self, skip):
            if self.shuffle and taken[0] == steps:
                raise KeyboardInterrupt
            taken[0] += self.shuffle
            yield batch

    monkeypatch.setattr(DataLoader, "batches", batches)
    return lambda: monkeypatch.setattr(DataLoader, "batches", original)


def printout(stdout):
    return [line for line in stdout.splitlines() if not line.startswith("Run folder:")]


def results(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record, arrays = resume.read(run_dir / resume.STATE_FILE)
    record["run"] = {key: value for key, value in record["run"].items()
                     if key not in ("train_time_s", "total_time_s", "resumed_from")}
    return ({key: value for key, value in metrics.items() if key not in NOT_RESULTS},
            checkpoint.load(run_dir / "cifar_net.npz"), record, arrays)


def assert_same_results(got_dir, want_dir):
    got, want = results(got_dir), results(want_dir)
    assert got[0] == want[0] and got[2] == want[2]
    for got_arrays, want_arrays in (got[1], want[1]), (got[3], want[3]):
        assert list(got_arrays) == list(want_arrays)
        for name in want_arrays:
            np.testing.assert_array_equal(got_arrays[name], want_arrays[name], err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
    """One uninterrupted run per backend: {backend name: (run folder, stdout)}."""
    runs = {}

    def run(backend):
        if backend not in runs:
            out = tmp_path_factory.mktemp(f"whole-{backend}") / "run"
            code, stdout, stderr = train_in_process("--backend", backend, "--data", data_root, "--out", out, *SMALL)
            assert code == 0, stderr
            runs[backend] = out, stdout
        return runs[backend]

    return run


# After 8 steps: mid-epoch, resumed from step 5. After 10: between epochs, from the checkpoint at epoch 1's end.
# After 15: right after the checkpoint at epoch 2, step 5.
@pytest.mark.parametrize("steps, resumed_at", [(8, (1, 5)), (10, (1, 10)), (15, (2, 5))])
def test_an_interrupted_run_resumes_bit_identical(backend, steps, resumed_at, uninterrupted, data_root, tmp_path,
                                                  monkeypatch):
    whole_dir, whole_stdout = uninterrupted(backend.name)
    out = tmp_path / "run"
    restore = interrupt_after(monkeypatch, steps)
    code, stdout, stderr = train_in_process("--backend", backend.name, "--data", data_root, "--out", out, *SMALL)
    restore()
    assert code == 130 and "Finished Training" not in stdout
    last = stderr.strip().splitlines()[-1]
    epoch, step = resumed_at
    assert f"interrupted; the last checkpoint (epoch {epoch}, step {step})" in last
    assert f"--resume {out}" in last

    code, stdout, stderr = train_in_process("--resume", out)
    assert code == 0, stderr
    assert printout(stdout) == printout(whole_stdout)
    assert_same_results(out, whole_dir)
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == [{"epoch": epoch, "step": step}]


def test_a_run_resumed_twice_and_a_finished_run_resumed_end_alike(uninterrupted, data_root, tmp_path, monkeypatch):
    whole_dir, whole_stdout = uninterrupted("numpy")
    out = tmp_path / "run"
    restore = interrupt_after(monkeypatch, 6)
    assert train_in_process("--backend", "numpy", "--data", data_root, "--out", out, *SMALL)[0] == 130
    restore()
    restore = interrupt_after(monkeypatch, 7)  # the resumed run restarts at step 6 of 20: stopped after step 13
    assert train_in_process("--resume", out)[0] == 130
    restore()
    code, stdout, stderr = train_in_process("--resume", out)
    assert code == 0, stderr
    assert printout(stdout) == printout(whole_stdout)
    assert_same_results(out, whole_dir)


def folder_contents(folder):
    return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in sorted(folder.iterdir())}


def test_resuming_a_finished_run_says_so_and_changes_nothing(uninterrupted):
    whole_dir, _ = uninterrupted("numpy")
    before = folder_contents(whole_dir)
    code, stdout, stderr = train_in_process("--resume", whole_dir)
    assert code == 0 and stderr == ""
    assert stdout.splitlines() == [f"{whole_dir} is a finished run (2 of 2 epochs); nothing to do. To train it "
                                   f"further pass --epochs N with N > 2"]
    assert folder_contents(whole_dir) == before


def test_a_finished_run_continued_for_more_epochs_equals_a_longer_run(data_root, tmp_path, monkeypatch):
    longer = [*SMALL[:-1], "3"]  # SMALL's epochs, 2, made 3
    code, longer_stdout, stderr = train_in_process("--backend", "numpy", "--data", data_root, "--out",
                                                   tmp_path / "longer", *longer)
    assert code == 0, stderr
    out = tmp_path / "continued"
    real_clock = time.perf_counter
    with monkeypatch.context() as patch:  # the first 2 epochs took ages: each second a week by the run's clock
        patch.setattr(time, "perf_counter", lambda: 604800 * real_clock())
        assert train_in_process("--backend", "numpy", "--data", data_root, "--out", out, *SMALL)[0] == 0
    first = json.loads((out / "metrics.json").read_text())["wall_time_s"]
    code, _, stderr = train_in_process("--resume", out, "--epochs", "1")
    assert code == 1 and "--epochs 1 conflicts with the resumed run's 2" in stderr
    code, stdout, stderr = train_in_process("--resume", out, "--epochs", "3")
    assert code == 0, stderr
    assert printout(stdout) == printout(longer_stdout)
    assert_same_results(out, tmp_path / "longer")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == [{"epoch": 3, "step": 0}]
    # Both times are summed over the parts: the first part's week is in each (not only this process's seconds).
    assert metrics["wall_time_s"]["train"] > first["train"] and metrics["wall_time_s"]["total"] > first["train"]


def test_a_run_killed_at_any_moment_resumes_bit_identical(data_root, tmp_path):
    flags = ["--backend", "numpy", "--data", data_root, "--limit-train", "400", "--limit-test", "8",
             "--log-every", "10", "--seed", "3"]
    whole = run_cli("scratchnet.train", *flags, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "scratchnet.train", *map(str, flags), "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / resume.STATE_FILE).exists() and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # at whatever the run is doing then, checkpoint writing included
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    (out / ".cifar_net.npz.left-by-a-killed-writer.partial").write_bytes(b"partial")

    resumed = run_cli("scratchnet.train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert printout(resumed.stdout) == printout(whole.stdout)
    assert_same_results(out, tmp_path / "whole")
    assert not [name for name in os.listdir(out) if name.endswith(".partial")]


def test_a_conflicting_flag_or_a_folder_without_a_checkpoint_is_one_line(uninterrupted, tmp_path):
    whole_dir, _ = uninterrupted("numpy")
    code, _, stderr = train_in_process("--resume", whole_dir, "--lr", "0.5")
    assert code == 1 and stderr.strip().splitlines() == [
        "python -m scratchnet.train: error: --lr 0.5 conflicts with the resumed run's 0.001; "
        "a resumed run keeps its flags (drop --lr)"]
    assert train_in_process("--resume", whole_dir, "--seed", "2", "--lr", "0.001")[0] == 0  # agreeing flags are fine
    code, _, stderr = train_in_process("--resume", whole_dir, "--overwrite")
    assert code == 1 and "pass one of them" in stderr
    (tmp_path / "empty").mkdir()
    code, _, stderr = train_in_process("--resume", tmp_path / "empty")
    assert code == 1 and "cannot resume" in stderr and "checkpoint.npz: no such file" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_a_damaged_or_foreign_checkpoint_is_one_line(uninterrupted, tmp_path):
    whole_dir, _ = uninterrupted("numpy")
    record, arrays = resume.read(whole_dir / resume.STATE_FILE)
    for name, damage in (("steps", {"step": 10**6}), ("curve", {"loss_curve": [{"epoch": "x"}]})):
        out = tmp_path / name
        out.mkdir()
        text = json.dumps({**record, **damage}).encode()
        checkpoint.save_npz(out / resume.STATE_FILE, {**arrays, "record": np.frombuffer(text, np.uint8)})
        code, _, stderr = train_in_process("--resume", out)
        assert code == 1 and "Traceback" not in stderr and "cannot resume" in stderr.strip().splitlines()[-1]
