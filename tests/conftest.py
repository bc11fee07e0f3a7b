"""Backend injection: every test that takes ``backend`` runs once per backend.

The cupy backend joins only where it loads (CuPy installed and a GPU present);
elsewhere its cases are skipped with the reason the registry gives.
"""

import os
from collections import defaultdict

import pytest

from scratchnet import backends

_MAX_ERRORS = defaultdict(float)


def _backend_params():
    params = []
    for name in backends.names():
        try:
            backends.get(name)
            marks = []
        except backends.BackendError as exc:
            marks = [pytest.mark.skip(reason=f"{name} backend unavailable: {exc}")]
        params.append(pytest.param(name, marks=marks, id=name))
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
