"""Workspaces of the numba backend's ops: per input shape, the layout, the kernels and every buffer, made once.

An op called without a workspace makes one for the call; ``scratchnet.step``'s fused step asks
the backend for one per stage and input shape (``NumbaBackend.workspace``) and hands it to every
call, so a training step neither allocates nor lays out anything (llm.c's way). Either way the
op runs the same kernels in the same order, so the results are the same bit for bit. What an op
returns out of a workspace is overwritten by the op's next call with it.

Each workspace picks the serial or the threaded twin of its kernels once, by batch size (``jit.threaded``).
"""

import numpy as np

from scratchnet.backends.numba import conv, dense, gemm_conv, layout, pooling
from scratchnet.backends.numba.jit import threaded
from scratchnet.geometry import conv_output_size


def _pick(twin, parallel):
    return twin.parallel if parallel else twin.serial


class _ConvLayout:
    """What both routes of a stride-1 convolution of (N, C, H, W) inputs share: the input laid out as shifted
    planes (``layout``), the output as rows, the kernels between those and NCHW, and the backward's buffers,
    made on its first call. A route adds ``forward`` (the rows from the planes) and ``backward``."""

    def __init__(self, x_shape, weight_shape, dtype, padding, parallel):
        self.geometry = layout.ShiftedGeometry(x_shape, weight_shape, padding)
        self.dtype = dtype
        self.to_planes = _pick(layout.to_shifted_planes, parallel)
        self.from_rows = _pick(layout.from_rows, parallel)
        self.from_planes = _pick(layout.from_shifted_planes, parallel)
        self.planes = np.empty(self.geometry.planes_shape, dtype)
        self.rows = np.empty(self.geometry.rows_shape, dtype)
        self.grad_rows = self.grad_x = None

    def lay_out(self, x):
        """The shifted planes of C-ordered ``x``: what the forward and the backward read."""
        self.to_planes(x, self.geometry.padding, self.planes)

    def backward_buffers(self, need_input_grad):
        """The backward's buffers, made on first need: grad_rows, and with ``need_input_grad`` grad_planes and
        grad_x. Return grad_rows."""
        geometry = self.geometry
        if self.grad_rows is None:
            self.grad_rows = np.empty(geometry.rows_shape, self.dtype)
        if need_input_grad and self.grad_x is None:
            self.grad_planes = np.empty_like(self.planes)
            self.grad_x = np.empty(geometry.x_shape, self.dtype)
        return self.grad_rows


class ShiftedConv(_ConvLayout):
    """The convolution by our shifted-plane kernels (``conv``): the route of narrow layers."""

    def __init__(self, x_shape, weight_shape, dtype, padding):
        parallel = threaded(x_shape[0])
        super().__init__(x_shape, weight_shape, dtype, padding, parallel)
        self.forward_rows = _pick(conv.shifted_forward, parallel)
        self.grad_weight_parts = _pick(conv.shifted_grad_weight, parallel)
        self.grad_input_planes = _pick(conv.shifted_grad_input, parallel)
        self.zero_bias = np.zeros(weight_shape[0], dtype)  # for a convolution without bias
        self.partial = None

    def forward(self, x, weight, bias):
        """The convolution of C-ordered ``x`` into ``self.rows``, keeping the input's planes for the backward."""
        self.lay_out(x)
        self.forward_rows(self.planes, weight, self.zero_bias if bias is None else bias, self.geometry.span,
                          self.rows)

    def backward(self, weight, grad_weight, grad_bias, need_input_grad):
        """Gradients from ``self.grad_rows`` (the output gradient laid out as the rows) and the planes: the
        parameter gradients added into ``grad_weight`` / ``grad_bias``; grad_x (or None) returned."""
        geometry = self.geometry
        self.grad_weight_parts(self.planes, self.grad_rows, geometry.span, self.partial)
        conv.add_sum_leading(self.partial, grad_weight)
        if grad_bias is not None:
            conv.add_row_sums(self.grad_rows, grad_bias)
        if not need_input_grad:
            return None
        self.grad_input_planes(self.grad_rows, weight, geometry.span, self.grad_planes)
        self.from_planes(self.grad_planes, geometry.padding, self.grad_x)
        return self.grad_x

    def backward_buffers(self, need_input_grad):
        if self.partial is None:  # the weight gradient's per-chunk parts
            self.partial = np.empty(self.geometry.partial_shape, self.dtype)
        return super().backward_buffers(need_input_grad)


class GemmConv(_ConvLayout):
    """The same convolution as matrix products (``gemm_conv``): the route of wide layers."""

    def __init__(self, x_shape, weight_shape, dtype, padding):
        super().__init__(x_shape, weight_shape, dtype, padding, threaded(x_shape[0]))
        self.matrices = gemm_conv.Matrices(self.geometry, weight_shape, dtype)

    def forward(self, x, weight, bias):
        self.lay_out(x)
        self.matrices.forward(self.planes, weight, bias, self.rows)

    def backward(self, weight, grad_weight, grad_bias, need_input_grad):
        self.matrices.backward(self.planes, weight, self.grad_rows, grad_weight, grad_bias,
                               self.grad_planes if need_input_grad else None)
        if not need_input_grad:
            return None
        self.from_planes(self.grad_planes, self.geometry.padding, self.grad_x)
        return self.grad_x


def conv_workspace(x_shape, weight_shape, dtype, padding):
    """The workspace of a stride-1 convolution, on the route that runs it faster (``gemm_conv.wins``), where
    that route can run (``gemm_conv.available``)."""
    route = GemmConv if gemm_conv.wins(x_shape, weight_shape) and gemm_conv.available(dtype) else ShiftedConv
    return route(x_shape, weight_shape, dtype, padding)


class Conv2d:
    """``conv2d`` at stride 1: the convolution's workspace (``conv``) and the NCHW output."""

    def __init__(self, x_shape, weight_shape, dtype, padding):
        self.conv = conv_workspace(x_shape, weight_shape, dtype, padding)
        self.y = np.empty((x_shape[0], weight_shape[0]) + self.conv.geometry.out_hw, dtype)


class ConvReLUPool:
    """``conv2d_relu_max_pool2d`` at stride 1: the convolution's workspace (``conv``), and the pooled output and
    argmax."""

    def __init__(self, x_shape, weight_shape, dtype, padding, pool_kernel, pool_stride):
        self.conv = conv_workspace(x_shape, weight_shape, dtype, padding)
        out_h, out_w = self.conv.geometry.out_hw
        shape = (x_shape[0], weight_shape[0], conv_output_size(out_h, pool_kernel, pool_stride),
                 conv_output_size(out_w, pool_kernel, pool_stride))
        self.pool_2x2 = pool_kernel == pool_stride == 2
        parallel = threaded(x_shape[0])
        # Threaded 2x2 windows keep their argmax as a tap (a byte: a quarter of the pool's memory traffic at batch
        # 128), for a backward that writes the rows block by block; otherwise as a position in the rows, for the
        # serial scatter (at the tutorial's batch of 4, twice as fast).
        self.as_taps = self.pool_2x2 and parallel
        self.y, self.indices = np.empty(shape, dtype), np.empty(shape, np.int8 if self.as_taps else np.int64)
        self.pool = _pick(pooling.relu_max_pool_rows_2x2 if self.pool_2x2 else pooling.relu_max_pool_rows, parallel)
        self.grad_rows_from_pool_2x2 = _pick(pooling.grad_rows_from_pool_2x2, parallel)


class Linear:
    """``linear`` / ``linear_relu`` of (rows, in) inputs: the output; and, made on the first backward, the
    input gradient and stand-ins for a missing bias gradient or ReLU output."""

    def __init__(self, x_shape, weight_shape, dtype):
        rows, (out_features, in_features) = x_shape[0], weight_shape
        parallel = threaded(rows)
        self.forward_kernel = _pick(dense.linear_forward, parallel)
        self.backward_kernel = _pick(dense.linear_backward, parallel)
        self.x_shape, self.dtype = (rows, in_features), dtype
        self.y = np.empty((rows, out_features), dtype)
        self.zero_bias = np.zeros(out_features, dtype)  # for a linear layer without bias
        self.input_grad = None

    def backward_buffers(self, need_input_grad):
        """(grad_x, a spare bias gradient the kernel may add into, an empty ReLU output for no ReLU)."""
        if self.input_grad is None:
            rows, in_features = self.x_shape
            self.input_grad = np.empty((rows, in_features), self.dtype)
            self.no_input_grad = np.empty((0, in_features), self.dtype)
            self.spare_grad_bias = np.zeros(self.y.shape[1], self.dtype)  # nobody reads it
            self.no_relu = np.empty((0, 0), self.dtype)
        return self.input_grad if need_input_grad else self.no_input_grad, self.spare_grad_bias, self.no_relu
