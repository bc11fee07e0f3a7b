"""The README's examples run as they stand: "Train your own network", then what "See what the network learned"
does with its model."""

import os
import re
import subprocess
import sys

from test_cli import REPO


def python_blocks(section):
    """The ```python blocks of the README section headed ``## section``, in order."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def test_the_train_your_own_network_example_runs_verbatim(data_root, tmp_path):
    (example,) = python_blocks("Train your own network")
    seeing = python_blocks("See what the network learned")
    assert len(seeing) == 2
    env = {**os.environ, "SCRATCHNET_DATA": data_root, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", "\n".join([example, *seeing])], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
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
