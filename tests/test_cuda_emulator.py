"""The emulated CUDA device itself: CuPy's argument marshalling, device arrays that never turn into host
arrays, capture and replay as a GPU records them, real barriers, launch limits, a missing compiler,
and AddressSanitizer over our kernels.

The emulated device is importable without CuPy and whatever the environment says; the backend's own
cases run on it through the ``backend`` fixture (test id ``cupy-emulated``).
"""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from scratchnet.backends.cupy import emulator as cp
from scratchnet.backends.cupy import sources
from scratchnet.backends.cupy.emulator import compiler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                reason="no C++ compiler here, so the emulated device cannot build kernels")

_TOY = r"""
template <typename real>
__global__ void scale(real* x, real factor, long long n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x)
        x[i] *= factor;
}

template <typename real>
__global__ void fill_index(real* x, int offset, long long wide)
{
    x[threadIdx.x] = (real)(offset + wide);
}

// Each block sums its 64 values; with BARRIERS 0 the tree reads partial sums before they are written.
template <typename real>
__global__ void block_total(const real* x, real* out)
{
    __shared__ real partial[64];
    partial[threadIdx.x] = x[blockIdx.x * 64 + threadIdx.x];
    if (BARRIERS) __syncthreads();
    for (int half = 32; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        if (BARRIERS) __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}
"""


def _toy(name, barriers=True):
    code = f"#define BARRIERS {int(barriers)}\n{_TOY}"
    return cp.RawModule(code=code, name_expressions=[f"{name}<float>", f"{name}<double>"])


def test_a_scalar_reaches_the_kernel_as_cupy_marshals_it():
    scale = _toy("scale").get_function("scale<float>")
    x = cp.ones(5, dtype=np.float32)
    scale((1,), (32,), (x, np.float32(3), np.int64(5)))
    assert x.get().tolist() == [3] * 5
    # A Python float is a double: the kernel's float reads its low four bytes (zero for 2.0), as on a GPU.
    scale((1,), (32,), (x, 2.0, np.int64(5)))
    assert x.get().tolist() == [0] * 5
    # A Python int is an int64: an int parameter reads its low half (7). An int32 where the kernel reads a
    # long long: the zeroed rest of the slot keeps non-negative values right but turns -1 into 2**32 - 1.
    fill = _toy("fill_index").get_function("fill_index<double>")
    y = cp.zeros(2, dtype=np.float64)
    fill((1,), (2,), (y, 7, np.int32(-1)))
    assert y.get().tolist() == [7 + 2 ** 32 - 1] * 2


def test_numpy_arrays_never_reach_the_device_implicitly():
    scale = _toy("scale").get_function("scale<float>")
    host = np.ones(4, dtype=np.float32)
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        scale((1,), (32,), (host, np.float32(2), np.int64(4)))
    device = cp.asarray(host)
    with pytest.raises(TypeError, match="NumPy array cannot take part"):
        device + host
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(device)
    with pytest.raises(TypeError, match="takes 3 arguments, got 2"):
        scale((1,), (32,), (device, np.float32(2)))
    assert isinstance(device * 2, cp.ndarray) and isinstance(np.zeros_like(device), cp.ndarray)


def test_capture_records_and_a_replay_reruns_the_launches_on_the_same_buffers():
    scale = _toy("scale").get_function("scale<float>")
    x = cp.ones(3, dtype=np.float32)
    factor = 2.0
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        scale((1,), (32,), (x, np.float32(factor), np.int64(3)))
        y = x + 1  # device work: recorded, its result allocated now
        graph = stream.end_capture()
    factor = 10.0  # host work after the capture is not seen by the replay: the scalar was marshalled
    assert x.get().tolist() == [1] * 3, "a captured launch ran during capture"
    graph.launch()
    assert x.get().tolist() == [2] * 3 and y.get().tolist() == [3] * 3
    graph.launch()
    assert x.get().tolist() == [4] * 3 and y.get().tolist() == [5] * 3
    assert factor == 10.0


def test_a_host_read_during_capture_fails_and_invalidates_it_as_cuda_does():
    x = cp.ones(3, dtype=np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        total = x.sum()
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
            float(total)
        with pytest.raises(NotImplementedError, match="cuBLAS"):
            cp.matmul(x[None], x[:, None])
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureInvalidated"):
            stream.end_capture()
    assert float(x.sum()) == 3.0  # outside capture host reads work again


@pytest.mark.parametrize("barriers", [True, False], ids=["with barriers", "barriers removed"])
def test_shared_memory_is_per_block_and_a_barrier_is_real(barriers):
    total = _toy("block_total", barriers).get_function("block_total<double>")
    values = np.arange(3 * 64, dtype=np.float64)
    x, out = cp.asarray(values), cp.zeros(3, dtype=np.float64)
    total((3,), (64,), (x, out))
    expected = values.reshape(3, 64).sum(axis=1)
    if barriers:
        assert out.get().tolist() == expected.tolist()
    else:
        assert not np.array_equal(out.get(), expected), "a reduction without barriers summed right"


def test_launch_limits_are_cudas():
    scale = _toy("scale").get_function("scale<float>")
    x = cp.ones(3, dtype=np.float32)
    for grid, block in [((1,), (2048,)), ((0,), (32,)), ((1,), (1, 1, 128))]:
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="invalid configuration argument"):
            scale(grid, block, (x, np.float32(2), np.int64(3)))


def test_the_kernels_with_barriers_are_found_through_the_functions_they_call():
    found = compiler.kernels_with_barriers(sources.module_source())
    assert found == {"block_sum", "conv2d_grad_params_direct", "reduce_sum", "cross_entropy_reduce",
                     "batch_norm_stats", "batch_norm_backward_reduce"}


def _run(code, env=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
           **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_missing_compiler_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scratchnet.train", "--backend", "cupy", "--data", tmp_path], capture_output=True,
        text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": REPO, "SCRATCHNET_CUDA_EMULATOR": "1", "CXX": "no-such-compiler"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last and "C++ compiler" in last and "no-such-compiler" in last, result.stderr


def _asan_runtime():
    path = subprocess.run([os.environ.get("CXX", "g++"), "-print-file-name=libasan.so"], capture_output=True,
                          text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


_ASAN_SCRIPT = """
    import numpy as np
    from scratchnet import backends
    from scratchnet.backends.cupy import emulator as cp
    gpu = backends.get("cupy")
    rng = np.random.default_rng(0)
    for geometry in [((1, 1), ((2, 2), (2, 2)), (1, 1), 1), ((2, 1), ((1, 0), (1, 0)), (1, 2), 2)]:
        x, w = gpu.asarray(rng.standard_normal((2, 4, 9, 8))), gpu.asarray(rng.standard_normal((6, 4 // geometry[3], 3, 3)))
        y = gpu.conv2d_forward(x, w, None, *geometry)
        gw, gb = cp.zeros_like(w), cp.zeros(6)
        gpu.conv2d_backward(x, w, cp.ones_like(y), *geometry, gw, gb)
    y, idx = gpu.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), (1, 1), True)
    gpu.max_pool2d_backward(cp.ones_like(y), idx, x.shape, (3, 3), (2, 2), (1, 1), (1, 1))
    logits = gpu.asarray(rng.standard_normal((5, 10)))
    loss, saved = gpu.cross_entropy_forward(logits, gpu.asarray(np.array([1, 2, -100, 4, 9])), None, -100, "mean", 0.1)
    gpu.cross_entropy_backward(saved)
    gpu.linear_backward(logits, gpu.asarray(rng.standard_normal((3, 10))), gpu.asarray(rng.standard_normal((5, 3))),
                        cp.zeros((3, 10)), cp.zeros(3))
    print("clean", float(loss))
"""


@pytest.mark.skipif(_asan_runtime() is None, reason="the C++ compiler has no AddressSanitizer runtime here")
def test_address_sanitizer_passes_our_kernels_and_catches_an_out_of_bounds_read(tmp_path):
    env = {"LD_PRELOAD": _asan_runtime(), "ASAN_OPTIONS": "detect_leaks=0:alloc_dealloc_mismatch=0",
           "SCRATCHNET_CUDA_EMULATOR": "1", "SCRATCHNET_CUDA_EMULATOR_ASAN": "1",
           "SCRATCHNET_CACHE_DIR": str(tmp_path / "cache")}
    clean = _run(_ASAN_SCRIPT, env)
    assert clean.returncode == 0 and "clean" in clean.stdout, clean.stderr[-3000:]
    # The scale kernel told the array is one element longer than it is: a GPU reads past it silently.
    overflow = _run("""
        import numpy as np
        from scratchnet.backends.cupy import emulator as cp
        from tests.test_cuda_emulator import _toy
        x = cp.ones(7, dtype=np.float32)
        _toy("scale").get_function("scale<float>")((1,), (32,), (x, np.float32(2), np.int64(8)))
    """, env)
    assert overflow.returncode != 0
    assert "heap-buffer-overflow" in overflow.stderr and "scale<float>" in overflow.stderr, overflow.stderr[-3000:]
