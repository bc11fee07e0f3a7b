"""The backend interface: every operation a backend provides, its signature and its contract.

``nn`` modules, the optimizer and the training step call nothing but these methods, so
a backend is exactly this class filled in. ``NumpyBackend`` is the readable reference;
``numba`` and ``cupy`` implement the same methods with their own kernels, and the tests
hold all of them to torch autograd.

The contract every op keeps:

* Layouts follow torch: activations NCHW, conv weights (O, C / groups, KH, KW), linear weights
  (out, in). Max-pool indices are flat positions ``h * W + w`` inside each input plane,
  like torch's ``return_indices``.
* Ops never modify their inputs, and take arrays of any strides.
* One gradient contract: a backward op is handed the parameters' gradient arrays
  (``grad_weight``, ``grad_bias``: the parameters' ``.grad``; ``grad_bias`` is None for a
  layer without bias) and *adds* its gradients into them, as autograd accumulates. It
  returns only the input gradient, or None when ``need_input_grad`` is False.
* Losses come back as arrays on the backend (0-d, or per row for reduction 'none'), so a
  GPU need not wait for the host.
* Arrays never cross devices silently: ``asarray`` and ``to_numpy`` are the only moves,
  and ``check_array`` refuses an array of another device.
"""

import numpy as np


def normalize_pixels(pixels, dtype=None):
    """uint8 pixels -> (pixel / 255 - 0.5) / 0.5 in float32, as torchvision's ToTensor + Normalize((0.5,)*3,
    (0.5,)*3) compute it, then cast to ``dtype`` if given; numpy or cupy arrays alike."""
    data = pixels.astype(np.float32)
    data /= np.float32(255)
    data -= np.float32(0.5)
    data /= np.float32(0.5)
    return data if dtype is None else data.astype(dtype, copy=False)


class BackendError(ValueError):
    """An unknown backend name, or a backend whose library or device is missing."""


# The element-wise activations of ``activation_forward``.
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "leaky_relu", "tanh", "sigmoid")


class Backend:
    """The interface. ``name`` is the registry's name; ``xp`` the array module (numpy or cupy)."""

    name = None
    xp = None

    # ---- arrays -----------------------------------------------------------------

    def asarray(self, array, dtype=None):
        """A host (numpy) array brought onto this backend, contiguous, cast to ``dtype`` if given."""
        raise NotImplementedError

    def to_numpy(self, array):
        """A host copy (or view) of one of this backend's arrays."""
        raise NotImplementedError

    def owns(self, array):
        """Whether ``array`` is of the kind this backend computes on (the registry asks: ``backends.for_array``)."""
        raise NotImplementedError

    def check_array(self, array, what):
        """Raise a TypeError unless ``array`` lives on this backend. ``what`` names the caller;
        it is formatted only for the message, so a module can pass itself cheaply."""
        raise NotImplementedError

    def normalize_pixels(self, pixels, dtype=None):
        """``normalize_pixels`` of one of this backend's uint8 arrays (a batch the data loader draws)."""
        return normalize_pixels(pixels, dtype)

    # ---- conv2d ----------------------------------------------------------------
    # Geometry comes parsed (``scratchnet.functional`` parses torch's arguments): ``stride``
    # and ``dilation`` are (h, w) pairs, ``padding`` is ((top, bottom), (left, right)) (torch's
    # 'same' pads an odd total one more at the bottom and right), ``groups`` an int that
    # divides both channel counts. ``x`` is (N, C, H, W), ``weight`` (O, C / groups, KH, KW).

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, workspace=None):
        """Cross-correlation of ``x`` with ``weight``, zero padding; ``bias`` may be None; ``workspace`` one of
        ``self.workspace("conv2d", ...)`` or None."""
        raise NotImplementedError

    def conv2d_backward(self, x, weight, grad_y, stride, padding, dilation, groups, grad_weight, grad_bias,
                        need_input_grad=True, workspace=None):
        """Add the weight and bias gradients into ``grad_weight`` / ``grad_bias``; return grad_x or None. With a
        workspace, the forward's call with it came just before, on the same ``x``."""
        raise NotImplementedError

    # ---- max-pool --------------------------------------------------------------
    # ``kernel``, ``stride``, ``padding`` and ``dilation`` are (h, w) pairs; padding counts as
    # -inf and is at most half the kernel; ``ceil_mode`` as torch's (``max_pool2d_output_hw``).

    def max_pool2d_forward(self, x, kernel, stride, padding, dilation, ceil_mode):
        """Max-pool of (N, C, H, W) ``x``. Return (y, indices) with torch's choice in each window:
        in scan order a strictly greater value or any NaN takes over (ties go to the first
        maximum, NaN to the last NaN); a window of -inf keeps its first tap on the input."""
        raise NotImplementedError

    def max_pool2d_backward(self, grad_y, indices, x_shape, kernel, stride, padding, dilation):
        """Each output gradient routed to its argmax (summed where windows overlap). The geometry
        serves backends that gather per input pixel over the windows containing it."""
        raise NotImplementedError

    # ---- element-wise and dense ----------------------------------------------------

    def relu_forward(self, x):
        """max(x, 0) of any shape and memory layout, C-ordered; NaN stays NaN, as in torch."""
        raise NotImplementedError

    def relu_backward(self, grad_y, y):
        """``grad_y`` wherever the forward's output ``y`` is not <= 0 (NaN included, as torch), else 0."""
        raise NotImplementedError

    def activation_forward(self, x, kind, alpha=0.0):
        """``y = f(x)`` element-wise, C-ordered, for ``kind`` in ACTIVATIONS: torch's GELU (``"gelu"``: exact,
        with erf; ``"gelu_tanh"``), SiLU, LeakyReLU (``alpha``: the negative slope), Tanh, Sigmoid."""
        raise NotImplementedError

    def activation_backward(self, grad_y, x, y, kind, alpha=0.0):
        """``grad_y * f'(x)``, by torch's formulas (from ``x``, or from ``y`` for tanh and sigmoid)."""
        raise NotImplementedError

    def dropout_forward(self, x, keep, scale):
        """``x * (keep * scale)``: ``keep`` a boolean array of ``x``'s shape on this backend, ``scale`` 1 / (1 - p)
        cast to ``x``'s dtype first, as torch scales its mask."""
        raise NotImplementedError

    def dropout_backward(self, grad_y, keep, scale):
        """``grad_y * (keep * scale)``."""
        raise NotImplementedError

    def linear_forward(self, x, weight, bias, workspace=None):
        """``x @ weight.T + bias`` for (N, in) ``x`` (``nn.Linear`` folds leading axes into N); ``bias`` may be
        None; ``workspace`` one of ``self.workspace("linear", ...)`` or None."""
        raise NotImplementedError

    def linear_backward(self, x, weight, grad_y, grad_weight, grad_bias, need_input_grad=True, workspace=None):
        """As ``conv2d_backward``: gradients added into ``grad_weight`` / ``grad_bias``; return grad_x or None."""
        raise NotImplementedError

    # ---- loss --------------------------------------------------------------------

    def cross_entropy_forward(self, logits, target, weight, ignore_index, reduction, label_smoothing):
        """torch's cross-entropy of (rows, C) ``logits`` (``scratchnet.functional`` moves the class
        axis last). ``target`` is (rows,) integer class indices, checked to lie in [0, C) or
        equal ``ignore_index``, or (rows, C) class probabilities of the logits' dtype; ``weight``
        is None or one weight per class. ``reduction`` is 'mean' (torch's weighted mean: NaN when
        every row is ignored), 'sum' or 'none'. Return (loss, saved): the loss a 0-d array, or
        (rows,) for 'none'; ``saved`` is private to the backend, for the backward."""
        raise NotImplementedError

    def cross_entropy_backward(self, saved, grad_loss=None):
        """d loss / d logits as (rows, C). ``grad_loss`` is the upstream gradient: None for 1, or
        an array of the loss's shape. A row without weight (ignored) gets 0."""
        raise NotImplementedError

    # ---- optimizer -----------------------------------------------------------------

    # ---- average and adaptive pooling, batch norm -----------------------------------------------

    def avg_pool2d_forward(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        """torch's avg_pool2d of (N, C, H, W) ``x`` (pairs; ``divisor_override`` None or an int): each window's sum
        over its part inside the input, divided by the window's size clipped to the padded input
        (``count_include_pad``), by its part inside the input, or by ``divisor_override``."""
        raise NotImplementedError

    def avg_pool2d_backward(self, grad_y, x_shape, kernel, stride, padding, ceil_mode, count_include_pad,
                            divisor_override):
        """Each input pixel gathers ``grad_y / divisor`` of the windows that contain it."""
        raise NotImplementedError

    def adaptive_pool2d_forward(self, x, output_hw, mode):
        """torch's adaptive_avg_pool2d (``mode="avg"``) or adaptive_max_pool2d (``"max"``) of (N, C, H, W) ``x``:
        output row i pools rows floor(i*H/OH) to ceil((i+1)*H/OH). Returns (y, indices): flat h * W + w argmax
        per plane for max (NaN wins, first maximum kept, as torch), None for avg."""
        raise NotImplementedError

    def adaptive_pool2d_backward(self, grad_y, x_shape, mode, indices):
        """avg: each input pixel gathers ``grad_y / window size`` of its windows; max: the windows that chose it."""
        raise NotImplementedError

    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
        """Batch norm of (N, C, *) ``x`` over every axis but C. With ``use_batch_stats`` the batch's mean and
        biased variance normalize, and ``running_mean`` / ``running_var`` (when not None) move in place by
        ``momentum`` toward the mean and the unbiased variance; else the running statistics normalize.
        ``weight`` and ``bias`` may be None. Returns (y, saved)."""
        raise NotImplementedError

    def batch_norm_backward(self, grad_y, saved, weight, grad_weight, grad_bias, need_input_grad=True):
        """torch's batch norm backward: the input gradient (through the batch statistics when they were used),
        ``sum(grad_y * x_hat)`` added into ``grad_weight`` and ``sum(grad_y)`` into ``grad_bias`` (each may be None)."""
        raise NotImplementedError

    def sgd_step(self, param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
        """One torch.optim.SGD update, in place on ``param`` and ``buf``.

        ``first`` says the momentum buffer is fresh: torch then copies the gradient
        into it instead of applying dampening.
        """
        raise NotImplementedError

    def adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, weight_decay, decay, beta1, beta2, eps,
                  step_size, bias_correction2_sqrt, maximize):
        """One torch.optim.Adam update, in place on ``param`` and the moments, in ``param``'s dtype.

        ``g`` is the gradient (negated with ``maximize``) plus ``weight_decay * param`` (Adam's L2 term);
        ``param`` is first scaled by ``decay`` (AdamW's ``1 - lr*weight_decay``); ``exp_avg`` moves toward
        ``g`` by ``1 - beta1`` as torch's lerp, ``exp_avg_sq = beta2*exp_avg_sq + (1 - beta2)*g*g``; with
        ``max_exp_avg_sq`` (amsgrad) the running maximum of ``exp_avg_sq`` is used. Then
        ``param -= step_size * exp_avg / (sqrt(second moment) / bias_correction2_sqrt + eps)``.
        """
        raise NotImplementedError

    def sgd_steps(self, params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
        """``sgd_step`` on each (param, grad, buf) of three equal-length lists; a backend may
        fuse them into one call, as per-call overhead dominates small networks."""
        for param, grad, buf in zip(params, grads, bufs):
            self.sgd_step(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first)

    # ---- fused blocks ------------------------------------------------------------------
    # Composed from the ops above, so every backend has them; a backend may override them
    # with fused kernels of the same results. ``saved`` is private to the backend. They take
    # plain geometry only, as ints: a square ``stride``, the same ``padding`` on every side, no
    # dilation, one group, and a square floor-mode pool window without padding or dilation
    # (``scratchnet.step`` fuses only such layers).

    def conv2d_relu_max_pool2d_forward(self, x, weight, bias, stride, padding, pool_kernel, pool_stride,
                                       workspace=None):
        """max_pool2d(relu(conv2d(x))). Return (y, saved): ``saved`` is what the backward needs (with a
        workspace, it keeps it there)."""
        conv = _plain_conv(stride, padding)
        relu_y = self.relu_forward(self.conv2d_forward(x, weight, bias, *conv))
        y, indices = self.max_pool2d_forward(relu_y, *_plain_pool(pool_kernel, pool_stride), False)
        return y, (relu_y, indices)

    def conv2d_relu_max_pool2d_backward(self, x, weight, saved, grad_y, stride, padding, pool_kernel, pool_stride,
                                        grad_weight, grad_bias, need_input_grad=True):
        """As ``conv2d_backward``, given the forward's ``saved``."""
        relu_y, indices = saved
        grad_relu = self.max_pool2d_backward(grad_y, indices, relu_y.shape, *_plain_pool(pool_kernel, pool_stride))
        grad_conv = self.relu_backward(grad_relu, relu_y)
        return self.conv2d_backward(x, weight, grad_conv, *_plain_conv(stride, padding), grad_weight, grad_bias,
                                    need_input_grad)

    def linear_relu_forward(self, x, weight, bias, workspace=None):
        """relu(linear(x)); the backward takes this output back."""
        return self.relu_forward(self.linear_forward(x, weight, bias))

    def linear_relu_backward(self, x, weight, y, grad_y, grad_weight, grad_bias, need_input_grad=True,
                             workspace=None):
        """As ``linear_backward``, given the forward's output ``y``."""
        return self.linear_backward(x, weight, self.relu_backward(grad_y, y), grad_weight, grad_bias,
                                    need_input_grad)

    # ---- workspaces --------------------------------------------------------------------------

    has_workspaces = False  # whether ``workspace`` ever gives one

    def workspace(self, op, x_shape, weight_shape, dtype, geometry=()):
        """Buffers and layouts, made once, for calls of ``op`` ("conv2d", "conv2d_relu_max_pool2d", "linear" or
        "linear_relu") on inputs of ``x_shape`` and ``dtype`` with weights of ``weight_shape`` (and a convolution's
        plain int ``geometry``). The op's forward and backward take it as ``workspace`` and then allocate
        nothing: what they return lies in the workspace, and their next call with it overwrites it. None
        where this backend has none for the op (this default): each call then allocates its own."""
        return None

    # ---- training-step capabilities ----------------------------------------------------------
    # ``scratchnet.step`` builds the training step and reads these; no backend imports it.

    fused_training = False  # whether the step runs the fused stages (else the plain eager step: the reference)
    fused_inference = False  # whether inference runs the fused stages (else the model itself)

    captures_graphs = False  # whether ``capture`` records

    def capture(self, run):
        """``(graph, run())``: the device work of ``run`` recorded once while it runs, so that
        ``graph.replay()`` repeats it (the same launches on the same memory) in one launch; None where the
        backend refused to record it (nothing ran then). ``scratchnet.step.CapturedStep`` drives it."""
        raise NotImplementedError

    # How a data-parallel job exchanges this backend's arrays (``scratchnet.distributed``): "mpi" for host
    # arrays, "nccl" for CUDA device arrays.
    collective_transport = "mpi"


def _plain_conv(stride, padding):
    """The fused ops' int geometry as conv2d's (stride, padding, dilation, groups)."""
    return (stride, stride), ((padding, padding), (padding, padding)), (1, 1), 1


def _plain_pool(kernel, stride):
    """The fused ops' int pool geometry as max-pool's (kernel, stride, padding, dilation)."""
    return (kernel, kernel), (stride, stride), (0, 0), (1, 1)
