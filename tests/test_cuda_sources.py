"""Every CUDA source of the cupy backend compiles with nvcc for Hopper.

Runs wherever nvcc is installed, GPU or not, so kernel typos surface on CPU-only machines too.
"""

import shutil
import subprocess

import numpy as np
import pytest

from scratchnet.backends.cupy import cuda_general_sources, cuda_sources

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH, so the CUDA sources cannot be compiled here")
@pytest.mark.parametrize("sources", [cuda_sources, cuda_general_sources], ids=["base", "general"])
@pytest.mark.parametrize("dtype", cuda_sources.supported_dtypes(), ids=lambda d: np.dtype(d).name)
def test_cuda_source_compiles_with_nvcc_for_sm90(dtype, sources, tmp_path):
    source, ptx = tmp_path / "kernels.cu", tmp_path / "kernels.ptx"
    source.write_text(sources.source_for(dtype))
    result = subprocess.run(
        [NVCC, "-arch=sm_90", "-std=c++14", "-Werror", "all-warnings", "--ptx", str(source), "-o", str(ptx)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, f"nvcc failed for {np.dtype(dtype).name}:\n{result.stderr}"
    entries = ptx.read_text()
    missing = [name for name in sources.KERNEL_NAMES if f".entry {name}(" not in entries]
    assert not missing, f"kernels missing from the PTX: {missing}"


def test_only_float32_and_float64_have_sources():
    assert {np.dtype(d).name for d in cuda_sources.supported_dtypes()} == {"float32", "float64"}
    with pytest.raises(TypeError, match="float16"):
        cuda_sources.source_for(np.float16)
