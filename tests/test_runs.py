"""Run folders: a run never silently reuses, mixes or loses another; refusals are one line, checked before training."""

import errno
import fcntl
import os
import urllib.error
import urllib.request

import pytest

from scratchnet import cli, runs
from test_resume import SMALL, train_in_process


def assert_refused(code, stderr, *phrases):
    lines = stderr.strip().splitlines()
    assert code == 1 and "Traceback" not in stderr and lines, stderr
    for phrase in phrases:
        assert phrase in lines[-1], lines[-1]


def test_a_folder_holding_a_run_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    code, _, stderr = train_in_process("--backend", "numpy", "--data", tmp_path / "no-data", "--out", out)
    assert_refused(code, stderr, f"{out} already holds a run (metrics.json)", "--resume", "--overwrite")
    assert sorted(os.listdir(out)) == [".lock", "metrics.json"] and (out / "metrics.json").read_text() == "{}"


def test_overwrite_replaces_a_run_says_so_and_spares_foreign_folders(tmp_path, data_root):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / ".checkpoint.npz.x1.partial").write_text("left by a killed writer")
    (out / "tensorboard").mkdir()  # what --tensorboard writes goes too
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"")
    code, _, stderr = train_in_process("--backend", "numpy", "--data", data_root, "--out", out, "--overwrite", *SMALL)
    assert code == 0, stderr
    assert not (out / "tensorboard").exists()
    assert f"note: --overwrite: replacing the run in {out}" in stderr.splitlines()
    assert (out / "metrics.json").read_text() != "{}" and not list(out.glob("*.partial"))
    (out / "notes.txt").write_text("mine")
    code, _, stderr = train_in_process("--backend", "numpy", "--data", data_root, "--out", out, "--overwrite")
    assert_refused(code, stderr, "holds files no run writes (notes.txt)")
    assert (out / "metrics.json").exists() and (out / "notes.txt").read_text() == "mine"


def test_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    with runs.open_run_folder(str(out), "unused"):  # holds the lock, as a running run does
        code, _, stderr = train_in_process("--backend", "numpy", "--data", tmp_path, "--out", out)
        assert_refused(code, stderr, f"{out} is in use: another run is writing to it")
    with runs.open_run_folder(str(out), "unused"):  # released on close (and by the kernel when a run dies)
        pass


def test_default_folder_names_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = runs.open_run_folder(None, "scratchnet-numpy-seed5")
    second = runs.open_run_folder(None, "scratchnet-numpy-seed5")  # same name, same second
    assert first.path != second.path and second.path.startswith(first.path)
    first.close()
    second.close()


def test_an_unwritable_folder_or_a_full_disk_is_found_out_before_training(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as patch:
        patch.setattr(runs.tempfile, "mkstemp", read_only)
        with pytest.raises(runs.RunFolderError, match="cannot write to the run folder .*Read-only file system"):
            runs.open_run_folder(str(tmp_path / "ro"), "unused")
    with pytest.raises(runs.RunFolderError, match=r"MiB free on its disk; a checkpoint of this run needs"):
        runs.open_run_folder(str(tmp_path / "full"), "unused", room_bytes=2**62)
    assert not (tmp_path / "ro").exists() and not (tmp_path / "full").exists()  # nothing left behind


def test_a_failed_start_leaves_no_empty_run_folder(tmp_path):
    code, _, stderr = train_in_process("--backend", "numpy", "--data", tmp_path / "no-data", "--out", tmp_path / "r")
    assert_refused(code, stderr, "CIFAR-10 not found")
    assert not (tmp_path / "r").exists()


def test_a_failed_download_leaves_no_empty_data_or_runs_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv(cli.DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, stderr = train_in_process("--backend", "numpy", "--download")
    assert_refused(code, stderr, "could not download", "no network")
    assert os.listdir(tmp_path) == []  # neither data/ nor runs/


def test_the_lock_is_an_exclusive_flock(tmp_path):
    with runs.open_run_folder(str(tmp_path / "run"), "unused") as folder:
        with open(folder.file(runs.LOCK_FILE)) as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
