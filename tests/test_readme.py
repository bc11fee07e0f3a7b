"""The documents' examples run as they stand: the README's "Train your own network", then what "See what the
network learned" does with its model; the reference's API example."""

import os
import re
import subprocess
import sys

from test_cli import REPO


def python_blocks(section, document="README.md"):
    """The ```python blocks of the ``document`` section headed ``## section``, in order."""
    with open(os.path.join(REPO, document), encoding="utf-8") as file:
        text = file.read()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def run_python(code, cwd, **env):
    env = {**os.environ, "MPLBACKEND": "Agg", **env,
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_train_your_own_network_example_runs_verbatim(data_root, tmp_path):
    (example,) = python_blocks("Train your own network")
    seeing = python_blocks("See what the network learned")
    assert len(seeing) == 2
    result = run_python("\n".join([example, *seeing]), tmp_path, SCRATCHNET_DATA=data_root)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Sequential(" and "  (0): Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))" \
        in lines
    # 4,000 images at batch 16: 250 steps an epoch, logged every 125; then one epoch more, logged to TensorBoard.
    logged = [line[:10] for line in lines if line.startswith("[")]
    assert logged == ["[1,   125]", "[1,   250]", "[2,   125]", "[2,   250]", "[1,   125]", "[1,   250]"]
    accuracy = float(re.search(r"^test accuracy: (\d+\.\d) %$", result.stdout, flags=re.MULTILINE).group(1))
    assert accuracy > 30  # 10 % is chance
    assert (tmp_path / "my_net.npz").exists()
    assert sorted(os.listdir(tmp_path / "my_run")) == ["feature_maps.png", "filters.png", "histograms.png"]
    assert os.listdir(tmp_path / "runs" / "my-net")


def test_the_next_chapter_example_runs_verbatim(data_root, tmp_path):
    (example,) = python_blocks("The next chapter: batch norm, AdamW, a schedule, augmentation, your own layer")
    result = run_python(example, tmp_path, SCRATCHNET_DATA=data_root)
    assert result.returncode == 0, result.stderr
    # 2,000 images at batch 32, the last partial batch dropped: 62 steps an epoch, logged every 31.
    assert [line[:10] for line in result.stdout.splitlines() if line.startswith("[")] == \
        ["[1,    31]", "[1,    62]", "[2,    31]", "[2,    62]"]
    accuracy = float(re.search(r"^test accuracy: (\d+\.\d) %", result.stdout, flags=re.MULTILINE).group(1))
    assert accuracy > 20  # 10 % is chance; two short epochs
    last_rate = float(re.search(r"last learning rate (\S+)$", result.stdout, flags=re.MULTILINE).group(1))
    assert last_rate < 1e-2 / 1000  # the cycle ends near max_lr / 25 / 1e4


def test_the_api_example_of_the_reference_runs_verbatim(tmp_path):
    (example,) = python_blocks("The API: what a PyTorch user would guess", "docs/reference.md")
    result = run_python(example, tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.splitlines()[-1]) > 0  # the compiled step's loss, read as a float
