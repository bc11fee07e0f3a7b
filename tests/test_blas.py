"""numpy's BLAS GEMM called from numba kernels (``scratchnet.backends.numba.blas``): every operand form the
matrix-product convolutions use, both float types, both size conventions, and the fallback where none is found."""

import numpy as np
import pytest
import threadpoolctl
from numba import njit

from scratchnet.backends.numba import blas, gemm_conv, workspaces
from scratchnet.backends.numba.blas import NO_TRANS, TRANS


@njit
def _product(routine, trans_a, trans_b, a, b, beta, c):
    """c = op(a) @ op(b) + beta * c for 2-D views whose rows may be strided (a window of a wider matrix)."""
    m, n = c.shape
    k = a.shape[0] if trans_a == TRANS else a.shape[1]
    blas.gemm(routine, trans_a, trans_b, m, n, k, a, a.strides[0] // a.itemsize, b, b.strides[0] // b.itemsize,
              beta, c, c.strides[0] // c.itemsize)


def _check(gemm, dtype, trans_a, trans_b, beta):
    rng = np.random.default_rng(0)
    m, n, k = 7, 13, 29
    # Each operand a window of a wider matrix, so that a wrong leading dimension shows.
    a = rng.standard_normal((k, m + 3) if trans_a == TRANS else (m, k + 3)).astype(dtype)
    b = rng.standard_normal((n, k + 2) if trans_b == TRANS else (k, n + 2)).astype(dtype)
    c = rng.standard_normal((m, n + 5)).astype(dtype)
    a_view = a[:, :m] if trans_a == TRANS else a[:, :k]
    b_view = b[:, :k] if trans_b == TRANS else b[:, :n]
    op_a = a_view.T if trans_a == TRANS else a_view
    op_b = b_view.T if trans_b == TRANS else b_view
    expected = c.copy()
    expected[:, :n] = op_a.astype(np.float64) @ op_b + beta * c[:, :n]
    with blas.one_blas_thread():
        _product(gemm.routine, trans_a, trans_b, a_view, b_view, beta, c[:, :n])
    assert c.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(c, expected, rtol=tolerance, atol=tolerance)  # the columns past n untouched too


FORMS = [(NO_TRANS, NO_TRANS), (NO_TRANS, TRANS), (TRANS, NO_TRANS)]  # the route's three products


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", FORMS)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_numpys_gemm_from_a_kernel_matches_numpy(dtype, trans_a, trans_b, beta):
    gemm = blas.find_gemm(dtype)
    assert gemm is not None, "numpy's BLAS has no GEMM we can call: the wide layers lose their fast route"
    _check(gemm, dtype, trans_a, trans_b, beta)


@pytest.mark.parametrize("dtype, letter", [(np.float32, "s"), (np.float64, "d")])
def test_a_blas_with_32_bit_sizes(dtype, letter):
    """numpy's wheels take 64-bit sizes; scipy's bundled OpenBLAS takes 32-bit ones, as most BLAS builds do. (On
    x86-64 each size travels in a 64-bit register or stack slot either way, so there a mix-up of the two
    conventions goes unseen: planted, it passed. This checks that such a library is found and called right.)"""
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS)

    libraries = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    narrow = [gemm for gemm in (blas.gemm_in(info["filepath"], info["internal_api"], letter) for info in libraries)
              if gemm is not None and not gemm.routine[1]]
    assert narrow, f"no BLAS with 32-bit sizes loaded: {[info['filepath'] for info in libraries]}"
    for trans_a, trans_b in FORMS:
        _check(narrow[0], dtype, trans_a, trans_b, 1.0)


def test_no_gemm_for_other_dtypes():
    assert blas.find_gemm(np.int32) is None and blas.find_gemm(np.float16) is None


def test_without_a_gemm_wide_layers_take_the_shifted_route(monkeypatch):
    x_shape, weight_shape = (32, 48, 14, 14), (128, 48, 5, 5)
    assert gemm_conv.wins(x_shape, weight_shape)
    assert isinstance(workspaces.conv_workspace(x_shape, weight_shape, np.float32, 0), workspaces.GemmConv)
    monkeypatch.setattr(gemm_conv, "available", lambda dtype: False)
    assert isinstance(workspaces.conv_workspace(x_shape, weight_shape, np.float32, 0), workspaces.ShiftedConv)
