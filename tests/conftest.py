"""Backend injection: every test that takes ``backend`` runs once per backend.

The cupy backend runs on a GPU where CuPy and a GPU are present; elsewhere on the emulated CUDA
device (our kernels compiled for the CPU, test id ``cupy-emulated``), unless
``SCRATCHNET_CUDA_EMULATOR=0`` or no C++ compiler is found: then its cases are skipped with the
reason the registry gives.
"""

import os
from collections import defaultdict

import pytest

from scratchnet import backends

_MAX_ERRORS = defaultdict(float)


def gpu_present():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: each means no GPU here
        return False


# Set before the cupy backend is first loaded (it reads the variable then); subprocesses inherit it.
if "SCRATCHNET_CUDA_EMULATOR" not in os.environ and not gpu_present():
    os.environ["SCRATCHNET_CUDA_EMULATOR"] = "1"
EMULATED = os.environ.get("SCRATCHNET_CUDA_EMULATOR") == "1"


def _backend_params():
    params = []
    for name in backends.names():
        try:
            backends.get(name)
            marks = []
        except backends.BackendError as exc:
            marks = [pytest.mark.skip(reason=f"{name} backend unavailable: {exc}")]
        params.append(pytest.param(name, marks=marks, id="cupy-emulated" if name == "cupy" and EMULATED else name))
    return params


@pytest.fixture(params=_backend_params())
def backend(request):
    return backends.get(request.param)


@pytest.fixture
def error_report():
    """Record the largest relative error seen per (what, backend, dtype) for the summary."""

    def record(key, error):
        _MAX_ERRORS[key] = max(_MAX_ERRORS[key], float(error))

    return record


@pytest.fixture(scope="session")
def data_root():
    root = os.environ.get("SCRATCHNET_DATA")
    if not root or not os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        pytest.skip("real CIFAR-10 data not found: set SCRATCHNET_DATA to the folder holding cifar-10-batches-py")
    return root


def pytest_terminal_summary(terminalreporter):
    if not _MAX_ERRORS:
        return
    terminalreporter.section("largest relative errors against torch")
    for key in sorted(_MAX_ERRORS):
        terminalreporter.write_line(f"{' / '.join(key):<48} {_MAX_ERRORS[key]:.3e}")


@pytest.fixture
def one_torch_thread():
    """Torch's thread pool crawls on a few shared cores; one thread is also what makes runs repeatable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
