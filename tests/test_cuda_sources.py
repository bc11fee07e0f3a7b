"""The CUDA sources of the cupy backend: every kernel, for both float types, compiles with nvcc for Hopper.

Runs wherever nvcc is installed, GPU or not, so kernel typos surface on CPU-only machines too.
"""

import shutil
import subprocess

import numpy as np
import pytest

from scratchnet.backends.cupy import sources

NVCC = shutil.which("nvcc")
_MANGLED_TYPE = {"float": "f", "double": "d"}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH, so the CUDA sources cannot be compiled here")
def test_every_kernel_instantiation_compiles_with_nvcc_for_sm90(tmp_path):
    # Taking each instantiation's address makes nvcc emit it, as CuPy's name expressions do with NVRTC.
    table = ",\n".join(f"    (void*)&{expression}" for expression in sources.name_expressions())
    source, ptx = tmp_path / "kernels.cu", tmp_path / "kernels.ptx"
    source.write_text(f"{sources.module_source()}\nstatic void* const instantiated[] = {{\n{table}\n}};\n")
    result = subprocess.run(
        [NVCC, "-arch=sm_90", "-std=c++14", "-Werror", "all-warnings", "--ptx", str(source), "-o", str(ptx)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr}"
    entries = ptx.read_text()
    missing = [expression for expression in sources.name_expressions() if _mangled_entry(expression) not in entries]
    assert not missing, f"kernels missing from the PTX: {missing}"


def _mangled_entry(expression):
    """The start of the PTX entry of ``name<type>``: ``.entry _Z<len>name I<type code> E``."""
    name, type_name = expression.rstrip(">").split("<")
    return f".entry _Z{len(name)}{name}I{_MANGLED_TYPE[type_name]}E"


def test_kernel_names_are_read_from_every_family():
    names = sources.kernel_names()
    assert len(names) == len(set(names)) and {"conv2d_forward_direct", "cross_entropy_reduce", "sgd_step"} <= set(names)
    assert {path.name for path in sources.family_files()} >= {"conv.cu", "pool.cu", "loss.cu"}
    assert sources.reduce_threads() == 128


def test_only_float32_and_float64_have_instantiations():
    assert {np.dtype(d).name for d in sources.supported_dtypes()} == {"float32", "float64"}
    assert sources.name_expression("relu_forward", np.float64) == "relu_forward<double>"
    with pytest.raises(TypeError, match="float16"):
        sources.name_expression("relu_forward", np.float16)
