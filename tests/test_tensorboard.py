"""--tensorboard: a real TensorBoard server, started on the written folder, serves back what the run logged."""

import json
import os
import re
import select
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from scratchnet import train
from scratchnet.models import Net
from test_cli import REPO
from test_resume import SMALL, train_in_process

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install -e '.[test]')")

SERVER_START_S = 60  # the longest the server may take to start and to load the event files


class TensorBoardServer:
    """``tensorboard --logdir LOGDIR`` on localhost, on a port the server picks (a free one); killed on exit."""

    def __init__(self, logdir):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = None

    def __enter__(self):
        try:
            self.url = self._address()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _address(self):
        """Where the server listens, once it says so (within SERVER_START_S)."""
        deadline = time.monotonic() + SERVER_START_S
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "TensorBoard did not start in time"
            if not select.select([self.process.stdout], [], [], remaining)[0]:
                continue
            line = self.process.stdout.readline()
            assert line, f"TensorBoard ended (exit code {self.process.wait()}) without serving"
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if found:
                return found.group(1)

    def __exit__(self, *exc_info):
        self.process.kill()
        self.process.wait(timeout=10)
        self.process.stdout.close()

    def get(self, path, **query):
        with urllib.request.urlopen(f"{self.url}{path}?{urllib.parse.urlencode(query)}", timeout=10) as response:
            return json.load(response)

    def wait_for(self, plugin, tags):
        """The run's tags of ``plugin``, once all of ``tags`` are loaded (the server reads files in the background)."""
        deadline = time.monotonic() + SERVER_START_S
        while True:
            found = self.get(f"/data/plugin/{plugin}/tags").get(".", {})
            if set(tags) <= set(found):
                return found
            assert time.monotonic() < deadline, f"TensorBoard did not load {sorted(set(tags) - set(found))}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def logged_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tensorboard") / "run"
    code, _, stderr = train_in_process("--backend", "numpy", "--data", data_root, "--out", out, "--tensorboard", *SMALL)
    assert code == 0, stderr
    return out, json.loads((out / "metrics.json").read_text())


def test_the_server_reads_back_the_logged_scalars(logged_run):
    out, metrics = logged_run
    classes = list(metrics["per_class_accuracy"])
    with TensorBoardServer(out / train.TENSORBOARD_FOLDER) as server:
        server.wait_for("scalars", ["train/loss", "train/learning_rate", "test/accuracy"])
        loss = server.get("/data/plugin/scalars/scalars", run=".", tag="train/loss")
        assert [step for _, step, _ in loss] == [point["global_step"] for point in metrics["loss_curve"]]
        np.testing.assert_allclose([value for *_, value in loss], [p["loss"] for p in metrics["loss_curve"]],
                                   rtol=1e-6)
        learning_rate = server.get("/data/plugin/scalars/scalars", run=".", tag="train/learning_rate")
        np.testing.assert_allclose([value for *_, value in learning_rate], metrics["config"]["lr"], rtol=1e-6)
        (_, step, accuracy), = server.get("/data/plugin/scalars/scalars", run=".", tag="test/accuracy")
        assert step == metrics["loss_curve"][-1]["global_step"] and accuracy == pytest.approx(metrics["accuracy"])

        assert set(server.wait_for("pr_curves", [f"pr_curve/{name}" for name in classes])) == {
            f"pr_curve/{name}" for name in classes}
        curve, = server.get("/data/plugin/pr_curves/pr_curves", run=".", tag="pr_curve/cat")["."]
        assert curve["recall"][0] == 1.0  # the lowest threshold takes every image
        parameters = [f"{kind}/{name}" for kind in ("weights", "gradients") for name, _ in Net().named_parameters()]
        server.wait_for("histograms", parameters)
        server.wait_for("images", ["test/predictions"])


def test_a_run_with_tensorboard_imports_neither_torch_nor_tensorflow(data_root, tmp_path):
    flags = ["--backend", "numpy", "--data", str(data_root), "--out", str(tmp_path / "run"), *SMALL,
             "--tensorboard", str(tmp_path / "board")]
    script = f"import sys; from scratchnet import train; train.main({flags!r}); " \
             "print(sorted({'torch', 'tensorflow'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]" and os.listdir(tmp_path / "board")


def test_without_the_tensorboard_package_it_is_one_line_and_no_run_folder(data_root, tmp_path, monkeypatch):
    for name in ["tensorboard", *(name for name in sys.modules if name.startswith("tensorboard."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    code, _, stderr = train_in_process("--backend", "numpy", "--data", data_root, "--out", tmp_path / "run",
                                       "--tensorboard", *SMALL)
    assert code == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines() == ["python -m scratchnet.train: error: --tensorboard needs the tensorboard "
                                           "package: pip install tensorboard (or the scratchnet[tensorboard] extra)"]
    assert not (tmp_path / "run").exists()
