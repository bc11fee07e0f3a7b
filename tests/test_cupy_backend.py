"""What only the cupy backend has: device boundaries, two conv and dense routes, determinism, CUDA graph replay,
parity with torch.

The shared op, optimizer and parity tests run on cupy through the ``backend``
fixture; these add the GPU-specific checks. Without a GPU they skip, except the
one that checks the registry's message for exactly that situation.
"""

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import gpu_present
from harness import relative_error
from scratchnet import backends, nn, optim
from scratchnet.data import DataLoader
from scratchnet.models import Net
from scratchnet.step import compile_step, eager_step
from scratchnet.training import fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cupy_or_reason():
    try:
        return backends.get("cupy"), None
    except backends.BackendError as exc:
        return None, str(exc)


@pytest.fixture
def gpu():
    backend, reason = _cupy_or_reason()
    if backend is None:
        pytest.skip(f"needs CuPy and a CUDA GPU: {reason}")
    return backend


def test_missing_gpu_is_a_clear_backend_error():
    if gpu_present():
        pytest.skip("CuPy and a GPU are present here, so the cupy backend loads")
    # In a process of its own with the emulated device off: this one may have loaded it.
    script = textwrap.dedent("""
        import pytest
        from scratchnet import backends
        from scratchnet.models import Net
        with pytest.raises(backends.BackendError, match=r"backend 'cupy' is not available: .*(cupy|CUDA).*available here"):
            backends.get("cupy")
        with pytest.raises(backends.BackendError, match="cupy"):
            Net(seed=0).to("cupy")
        assert "cupy" not in backends.available()
    """)
    env = {**os.environ, "SCRATCHNET_CUDA_EMULATOR": "0", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def test_host_and_device_arrays_never_mix(gpu):
    images = np.zeros((2, 3, 32, 32), dtype=np.float32)
    with pytest.raises(TypeError, match=r"cupy backend takes cupy \(GPU\) arrays, got numpy.ndarray"):
        Net(seed=0).to("cupy")(images)
    with pytest.raises(TypeError, match=r"numpy backend takes numpy arrays, got (cupy|scratchnet.backends.cupy.emulator)"):
        Net(seed=0)(gpu.asarray(images))
    with pytest.raises(TypeError, match="cupy backend takes cupy"):
        nn.CrossEntropyLoss()(gpu.asarray(np.zeros((2, 10), dtype=np.float32)), np.array([0, 1]))


def test_loss_stays_on_the_device(gpu):
    logits = gpu.asarray(np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32))
    loss = nn.CrossEntropyLoss().forward_array(logits, gpu.asarray(np.array([0, 1, 2, 3])))
    assert isinstance(loss, gpu.xp.ndarray) and loss.shape == ()


def _backward(backend, op, x, weight, grad_y, *geometry):
    """``op``'s input, weight and bias gradients, added (as the contract says) into fresh zero arrays."""
    grad_weight, grad_bias = backend.xp.zeros_like(weight), backend.xp.zeros(weight.shape[0], dtype=weight.dtype)
    grad_x = getattr(backend, op)(x, weight, grad_y, *geometry, grad_weight, grad_bias)
    return grad_x, grad_weight, grad_bias


def _assert_routes_match_numpy(gpu, route, cases, forward, backward):
    """Each case's (x, weight, bias, geometry) through ``forward`` and ``backward`` on the GPU and on numpy."""
    reference = backends.get("numpy")
    for x, weight, bias, geometry in cases:
        want_y = getattr(reference, forward)(x, weight, bias, *geometry)
        grad_y = np.random.default_rng(x.size).standard_normal(want_y.shape)
        want = _backward(reference, backward, x, weight, grad_y, *geometry)
        on_gpu = [gpu.asarray(a) for a in (x, weight, bias, grad_y)]
        y = getattr(gpu, forward)(*on_gpu[:3], *geometry)
        got = _backward(gpu, backward, on_gpu[0], on_gpu[1], on_gpu[3], *geometry)
        for label, ours, theirs in [("forward", y, want_y)] + list(zip(("grad x", "grad w", "grad b"), got, want)):
            error = relative_error(gpu.to_numpy(ours), theirs)
            assert error <= 1e-10, f"{route} {label} for x {x.shape}, weight {weight.shape}, {geometry}: {error:.2e}"


def _conv_cases(count):
    rng = np.random.default_rng(5)
    for _ in range(count):
        n, c, o = (int(v) for v in rng.integers(1, 7, size=3))
        kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
        stride, padding = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        h, w = (int(v) for v in rng.integers(max(kh, kw), 20, size=2))
        yield (rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, kh, kw)), rng.standard_normal(o),
               ((stride, stride), ((padding, padding), (padding, padding)), (1, 1), 1))


def _dense_cases(count):
    rng = np.random.default_rng(9)
    for _ in range(count):
        rows, fin, fout = (int(v) for v in rng.integers(1, 40, size=3))
        yield rng.standard_normal((rows, fin)), rng.standard_normal((fout, fin)), rng.standard_normal(fout), ()


@pytest.mark.parametrize("route", ["direct", "im2col_gemm"])
def test_both_conv_routes_match_numpy_in_float64(gpu, route, monkeypatch):
    monkeypatch.setattr(gpu, "direct_conv_max_macs", 1 << 62 if route == "direct" else 0)
    _assert_routes_match_numpy(gpu, route, _conv_cases(30), "conv2d_forward", "conv2d_backward")


@pytest.mark.parametrize("route", ["direct", "cublas"])
def test_both_dense_routes_match_numpy_in_float64(gpu, route, monkeypatch):
    monkeypatch.setattr(gpu, "direct_matmul_max_macs", 1 << 62 if route == "direct" else 0)
    _assert_routes_match_numpy(gpu, route, _dense_cases(30), "linear_forward", "linear_backward")


def _one_training_step_gradients(gpu, width, batch):
    net = Net(width=width, seed=3).to("cupy")
    rng = np.random.default_rng(4)
    images = gpu.asarray(rng.uniform(-1, 1, size=(batch, 3, 32, 32)).astype(np.float32))
    labels = gpu.asarray(rng.integers(0, 10, size=batch))
    criterion = nn.CrossEntropyLoss()
    criterion.forward_array(net(images), labels)
    net.backward(criterion.backward())
    return {name: gpu.to_numpy(p.grad) for name, p in net.named_parameters()}


@pytest.mark.parametrize("width,batch", [(1, 4), (4, 128)])
def test_backward_is_bit_for_bit_repeatable(gpu, width, batch):
    first = _one_training_step_gradients(gpu, width, batch)
    second = _one_training_step_gradients(gpu, width, batch)
    for name in first:
        assert np.array_equal(first[name], second[name]), f"{name} gradient differs between identical runs"


class _RandomImages:
    """A dataset as DataLoader takes one: float32 images in [-1, 1] and int64 labels."""

    def __init__(self, count, seed):
        rng = np.random.default_rng(seed)
        self.data = rng.uniform(-1, 1, size=(count, 3, 32, 32)).astype(np.float32)
        self.targets = rng.integers(0, 10, size=count)

    def __len__(self):
        return len(self.targets)


def _fit_on_gpu(gpu, capture):
    # 30 steps of 4 per epoch, the last one partial (2 images): it runs eagerly between replays.
    loader = DataLoader(_RandomImages(4 * 29 + 2, seed=6), 4, shuffle=True, seed=7, backend=gpu)
    net = Net(seed=2).to("cupy")
    optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    _, epoch_losses, step_losses = fit(net, nn.CrossEntropyLoss(), optimizer, loader, epochs=2, log_every=7,
                                       capture=capture)
    return epoch_losses, step_losses, net.state_dict(), [gpu.to_numpy(optimizer.state[p]["momentum_buffer"]) for p in optimizer.params]


def test_graph_replayed_training_equals_eager_training_bit_for_bit(gpu):
    eager_epochs, eager_steps, eager_weights, eager_momentum = _fit_on_gpu(gpu, capture=False)
    epochs, steps, weights, momentum = _fit_on_gpu(gpu, capture=True)
    assert steps.shape == (2, 30) and np.isfinite(steps).all()
    assert np.array_equal(steps, eager_steps), "per-step losses differ between graph replay and eager steps"
    assert epochs == eager_epochs
    for name in eager_weights:
        assert np.array_equal(weights[name], eager_weights[name]), f"{name} differs after graph-replayed training"
    for index, (ours, theirs) in enumerate(zip(momentum, eager_momentum)):
        assert np.array_equal(ours, theirs), f"momentum buffer {index} differs after graph-replayed training"


def _tutorial_step(captured, label_pool=None):
    """The plain eager step, or the backend's compiled one replaying a CUDA graph."""
    net = Net(seed=3).to("cupy")
    optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    if not captured:
        return functools.partial(eager_step, net, nn.CrossEntropyLoss(), optimizer)
    return compile_step(net, nn.CrossEntropyLoss(), optimizer, 4, label_pool=label_pool)


def test_captured_step_returns_each_steps_outputs(gpu):
    rng = np.random.default_rng(8)
    batches = [(gpu.asarray(rng.uniform(-1, 1, size=(4, 3, 32, 32)).astype(np.float32)),
                gpu.asarray(rng.integers(0, 10, size=4))) for _ in range(6)]
    eager_step, captured_step = _tutorial_step(captured=False), _tutorial_step(captured=True)
    eager, replayed, loss_arrays = [], [], []
    for images, labels in batches:
        logits, loss = eager_step(images, labels)
        eager.append((gpu.to_numpy(logits), float(loss)))
        # A replay hands back the graph's static outputs, which the next replay overwrites: read them now.
        logits, loss = captured_step(images, labels)
        replayed.append((gpu.to_numpy(logits), float(loss)))
        loss_arrays.append(loss)
    assert loss_arrays[0] is not loss_arrays[1], "the warm-up step should run eagerly"
    assert all(loss is loss_arrays[1] for loss in loss_arrays[2:]), "the steps after the warm-up did not replay one graph"
    for index, ((logits, loss), (eager_logits, eager_loss)) in enumerate(zip(replayed, eager), 1):
        assert loss == eager_loss and np.array_equal(logits, eager_logits), f"step {index} differs"
    with pytest.raises(ValueError, match=r"CapturedStep: labels must lie in \[0, 9\] for 10 classes, got"):
        captured_step(batches[0][0], batches[0][1] + 10)


def test_a_label_pool_is_checked_once_at_capture(gpu):
    rng = np.random.default_rng(10)
    images = gpu.asarray(rng.uniform(-1, 1, size=(4, 3, 32, 32)).astype(np.float32))
    labels = gpu.asarray(rng.integers(0, 10, size=4))
    captured_step = _tutorial_step(captured=True, label_pool=gpu.asarray(np.array([0, 3, 10])))
    captured_step(images, labels)  # the warm-up step runs eagerly, checking its own batch
    with pytest.raises(ValueError, match=r"CapturedStep label_pool: labels must lie in \[0, 9\] for 10 classes"):
        captured_step(images, labels)


def test_training_matches_torch_on_the_gpu(gpu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from reference.tutorial import Net as TorchNet

    # Full-precision float32 on both sides: torch's convolutions would otherwise use TF32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(0)
        torch_net = TorchNet().cuda()
        net = Net(seed=1).to("cupy")
        net.load_state_dict({k: v.cpu().numpy() for k, v in torch_net.state_dict().items()})
        torch_opt = torch.optim.SGD(torch_net.parameters(), lr=0.001, momentum=0.9)
        opt = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        torch_criterion, criterion = torch.nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
        rng = np.random.default_rng(0)
        worst = 0.0
        for _ in range(300):
            images = rng.uniform(-1, 1, size=(4, 3, 32, 32)).astype(np.float32)
            labels = rng.integers(0, 10, size=4)
            torch_opt.zero_grad()
            torch_loss = torch_criterion(torch_net(torch.from_numpy(images).cuda()), torch.from_numpy(labels).cuda())
            torch_loss.backward()
            torch_opt.step()
            opt.zero_grad()
            loss = criterion(net(gpu.asarray(images)), gpu.asarray(labels))
            net.backward(criterion.backward())
            opt.step()
            worst = max(worst, relative_error(loss, torch_loss.item()))
        assert worst <= 1e-5
        ours = net.state_dict()
        for name, value in torch_net.state_dict().items():
            assert relative_error(ours[name], value.cpu().numpy()) <= 1e-4, name
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
