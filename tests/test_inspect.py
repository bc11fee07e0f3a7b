"""python -m scratchnet.inspect and save_inspection: filters, feature maps and histograms of a trained network."""

import numpy as np
import pytest

from scratchnet import inspect, nn
from scratchnet.data import CIFAR10
from test_cli import assert_one_line_error, run_cli
from test_resume import SMALL, train_in_process

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_tutorial_run_folder_gets_its_inspection_pngs(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, stderr = train_in_process("--backend", "numpy", "--data", data_root, "--out", out, *SMALL)
    assert code == 0, stderr
    capsys.readouterr()
    inspect.main([str(out), "--image", "3"])  # no --data: the run's own data folder
    assert capsys.readouterr().out.splitlines() == [str(out / name) for name in inspect.FILES]
    assert all((out / name).read_bytes()[:8] == PNG for name in inspect.FILES)


def test_feature_maps_follow_each_image_stage_of_a_users_own_sequential(data_root, tmp_path):
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Conv2d(4, 20, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(20 * 7 * 7, 10),
    ).to("numba")
    testset = CIFAR10(data_root, train=False, limit=inspect.GRADIENT_IMAGES)
    paths = inspect.save_inspection(model, tmp_path, testset, image=2)
    assert [path.rsplit("/", 1)[1] for path in paths] == list(inspect.FILES)
    assert all(open(path, "rb").read(8) == PNG for path in paths)
    stages = inspect.feature_maps(model, model.backend.asarray(np.zeros((1, 3, 32, 32), np.float32)))
    assert [(name, maps.shape) for name, maps in stages] == [
        ("input", (3, 32, 32)), ("0.0: Conv2d", (4, 32, 32)), ("0.1: ReLU", (4, 32, 32)),
        ("0.2: MaxPool2d", (4, 16, 16)), ("1: Conv2d", (20, 7, 7)), ("2: ReLU", (20, 7, 7))]
    # Every parameter got the gradient the histograms show, of the loss on the first test images.
    assert all(np.abs(model.backend.to_numpy(param.grad)).sum() > 0 for param in model.parameters())
    assert len(inspect.histograms_figure(model).axes) == 2 * 6


def test_a_folder_without_a_run_is_one_line(tmp_path):
    assert_one_line_error(run_cli("scratchnet.inspect", tmp_path / "nothing"), "is not a run folder")
    assert_one_line_error(run_cli("scratchnet.inspect", tmp_path), "give a run folder or a weights file")
    with pytest.raises(TypeError, match="expected a Sequential"):
        inspect.save_inspection(nn.Linear(3, 4), tmp_path, None)
