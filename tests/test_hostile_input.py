"""Every bad or hostile input the CLIs meet: one line on stderr naming the culprit, a non-zero exit, nothing run,
no large allocation, and nothing written that could pass for a result."""

import errno
import io
import json
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from cifar_fakes import batch_bytes, tar_folder, write_fake_cifar
from scratchnet import checkpoint, data, download, evaluate, files, safe_pickle
from scratchnet.models import Net
from test_cli import assert_one_line_error, run_cli
from test_resume import train_in_process

SMALL_ALLOCATION = 16 * 2**20  # bytes: far below what the hostile files below declare


@pytest.fixture
def fake_root(tmp_path):
    write_fake_cifar(tmp_path / "data")
    return tmp_path / "data"


def assert_one_line(code, stderr, *phrases):
    lines = stderr.strip().splitlines()
    assert code != 0 and "Traceback" not in stderr and len(lines) >= 1, stderr
    assert "error:" in lines[-1]
    for phrase in phrases:
        assert phrase in lines[-1], lines[-1]


def peak_allocation(function, *args):
    """Run ``function(*args)``; return (its exception or None, the peak bytes it allocated)."""
    tracemalloc.start()
    try:
        function(*args)
        raised = None
    except Exception as exc:
        raised = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return raised, peak


# ---- flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value, phrase", [
    ("--seed", "-1", "expected a seed in 0..4294967295, got -1"),
    ("--width", "100000", "--width 100000 needs at least"),
    ("--out", "", "--out: expected a folder name, got ''"),
])
def test_bad_flags_are_one_line_and_create_nothing(flag, value, phrase, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = train_in_process("--backend", "numpy", "--data", tmp_path, flag, value)
    assert_one_line(code, stderr, phrase)
    assert os.listdir(tmp_path) == []


def test_the_reference_refuses_a_seed_torch_cannot_take(tmp_path):
    result = run_cli("reference.tutorial", "--seed", str(2**128), cwd=tmp_path)
    assert_one_line_error(result, "--seed", "expected a seed")
    assert os.listdir(tmp_path) == []


# ---- weights ----------------------------------------------------------------------------------


def tutorial_state(**replaced):
    state = Net(seed=0).state_dict()
    state.update(replaced)
    return state


@pytest.mark.parametrize("name, value, phrase", [
    ("empty conv1", np.zeros((0, 3, 5, 5), np.float32), "conv1.weight has shape (0, 3, 5, 5)"),
    ("datetime", np.zeros((6, 3, 5, 5), "datetime64[s]"), "'conv1.weight' has dtype datetime64[s]"),
    ("int8", np.zeros((6, 3, 5, 5), np.int8), "conv1.weight has dtype int8; weights must be floats"),
    ("complex", np.zeros((6, 3, 5, 5), np.complex64), "conv1.weight has dtype complex64"),
    ("all NaN", np.full((6, 3, 5, 5), np.nan, np.float32), "conv1.weight holds 450 non-finite values"),
    ("structured", np.zeros((6, 3, 5, 5), [("a", "f4")]), "only plain numbers are accepted"),
])
def test_weights_that_are_no_finite_floats_of_the_right_shape_are_refused(name, value, phrase, tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, **tutorial_state(**{"conv1.weight": value}))
    with pytest.raises(checkpoint.CheckpointError) as error:
        evaluate.net_from_weights(path)
    assert str(path) in str(error.value) and phrase in str(error.value)


def test_non_finite_weights_load_with_the_explicit_flag(tmp_path):
    path = tmp_path / "weights.npz"
    checkpoint.save_npz(path, tutorial_state(**{"fc3.bias": np.full(10, np.nan, np.float32)}))
    assert np.isnan(evaluate.net_from_weights(path, allow_non_finite=True).state_dict()["fc3.bias"]).all()


def test_a_tiny_pth_declaring_a_huge_tensor_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.pth"
    state = {name: torch.from_numpy(value) for name, value in tutorial_state().items()}
    state["conv1.weight"] = torch.zeros(1).expand(10**9, 3, 5, 5)  # stride 0: one stored float, 75e9 declared
    torch.save(state, path)
    assert path.stat().st_size < 300_000
    raised, peak = peak_allocation(evaluate.net_from_weights, path)
    assert isinstance(raised, checkpoint.CheckpointError) and "invalid layout" in str(raised)
    assert peak < SMALL_ALLOCATION


def test_an_npz_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path):
    path = tmp_path / "lying.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("conv1.weight.npy", header.getvalue() + b"\0" * 64)  # the header starts with the magic
    raised, peak = peak_allocation(checkpoint.load, path)
    assert isinstance(raised, checkpoint.CheckpointError) and "which this file does not hold" in str(raised)
    assert peak < SMALL_ALLOCATION


@pytest.mark.parametrize("what", ["folder", "device"])
def test_weights_that_are_no_file_say_what_they_are(what, tmp_path):
    path = tmp_path if what == "folder" else "/dev/null"
    result = run_cli("scratchnet.evaluate", "--weights", path, "--backend", "numpy", "--data", tmp_path)
    assert_one_line_error(result, str(path), "it is a folder" if what == "folder" else "not a regular file")


# ---- data -------------------------------------------------------------------------------------


class _ZeroStrideImages:
    """Pickles as ``numpy.ndarray(shape, dtype, buffer, 0, strides)``: 1.5 GB of zero-stride view on 3 KB."""

    def __reduce__(self):
        return np.ndarray, ((500_000, 3072), np.dtype(np.uint8), b"\0" * 3072, 0, (0, 1))


class _HugeEmpty:
    """Pickles as ``numpy.ndarray((10**12,))``: a terabyte asked for by a few bytes."""

    def __reduce__(self):
        return np.ndarray, ((10**12,), np.dtype(np.uint8))


@pytest.mark.parametrize("payload", [_ZeroStrideImages, _HugeEmpty])
def test_a_batch_asking_numpy_for_a_huge_array_is_refused_before_allocating(payload, fake_root):
    path = fake_root / download.FOLDER / "test_batch"
    path.write_bytes(pickle.dumps({"data": payload(), "labels": [0] * 500_000}, protocol=2))
    assert path.stat().st_size < 2**21
    raised, peak = peak_allocation(data.CIFAR10, fake_root, False)
    assert isinstance(raised, download.DataError) and "refused to call numpy.ndarray directly" in str(raised)
    assert str(path) in str(raised) and peak < 3 * SMALL_ALLOCATION  # reading the 1 MB file itself is allowed


def test_nested_labels_are_refused_by_every_reader(fake_root, tmp_path):
    path = fake_root / download.FOLDER / "test_batch"
    images = np.zeros((3, 3, 32, 32), np.uint8)
    batch = pickle.loads(batch_bytes(images, [3, 8, 8]))
    batch["labels"] = [[3], [8], [8]]
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(download.DataError, match="label 0 is a list, not an integer class index"):
        data.read_split(fake_root, train=False)  # what the reference reads through too
    code, stdout, stderr = train_in_process("--backend", "numpy", "--data", fake_root, "--out", tmp_path / "run")
    assert_one_line(code, stderr, str(path), "label 0 is a list")
    assert "Finished Training" not in stdout and not (tmp_path / "run").exists()
    checkpoint.save_npz(tmp_path / "weights.npz", tutorial_state())
    result = run_cli("scratchnet.evaluate", "--weights", tmp_path / "weights.npz", "--data", fake_root)
    assert_one_line_error(result, str(path), "label 0 is a list")


def test_an_empty_test_batch_is_refused_before_training(fake_root, tmp_path):
    path = fake_root / download.FOLDER / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((0, 3072), np.uint8), "labels": []}, protocol=2))
    code, stdout, stderr = train_in_process("--backend", "numpy", "--data", fake_root, "--out", tmp_path / "run")
    assert_one_line(code, stderr, str(path), "holds no images")
    assert stdout == "" and not (tmp_path / "run").exists()


def test_a_missing_batch_file_is_named(fake_root):
    os.remove(fake_root / download.FOLDER / "data_batch_5")
    with pytest.raises(download.DataError, match="is incomplete: data_batch_5 missing"):
        data.CIFAR10(fake_root)


def test_a_read_only_folder_holding_only_the_archive_says_so(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path / "source")
    root = tmp_path / "root"
    root.mkdir()
    tar_folder(tmp_path / "source", root / download.ARCHIVE)

    def read_only(*args, **kwargs):  # what a read-only mount answers (root ignores permission bits)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(download.tempfile, "mkdtemp", read_only)
    with pytest.raises(download.DataError, match=f"cannot extract .*: {root} is not writable .Read-only file system"):
        data.CIFAR10(root, train=False)


def test_a_protocol_2_pickle_holding_empty_bytes_loads():
    assert safe_pickle.load(io.BytesIO(pickle.dumps({"b": b"", "c": b"xy"}, protocol=2)), safe_pickle.NUMPY_ARRAYS,
                            "sample") == {"b": b"", "c": b"xy"}


def test_bytes_with_arguments_are_refused():
    stream = io.BytesIO(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.")  # bytes(2**30)
    with pytest.raises(safe_pickle.UnsafePickleError, match="refused to call bytes with arguments"):
        safe_pickle.load(stream, safe_pickle.NUMPY_ARRAYS, "sample")


# ---- what a run writes --------------------------------------------------------------------------


def test_json_is_strict(tmp_path):
    files.write_json(tmp_path / "m.json", {"loss": [1.5, float("nan")], "best": float("inf")})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON")) == {
        "loss": [1.5, None], "best": None}


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    path = tmp_path / "cifar_net.npz"
    with pytest.raises(OSError) as error:
        checkpoint.save_npz(path, tutorial_state())
    assert error.value.filename == str(path) and error.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []  # no partial file left


def test_the_reference_writes_strict_json_when_its_loss_is_nan(data_root, tmp_path):
    out = tmp_path / "run"
    result = run_cli("reference.tutorial", "--threads", "1", "--workers", "0", "--data", data_root, "--out", out,
                     "--lr", "1e5", "--limit-train", "40", "--limit-test", "4", "--log-every", "5", "--seed", "1")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert None in [point["loss"] for point in metrics["loss_curve"]]
