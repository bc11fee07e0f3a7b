"""numba's training step, built once per input shape: every buffer allocated up front, the kernels called directly.

``FusedStep`` (``scratchnet.step``) reaches the kernels through the backend's ops, which
check their inputs, allocate their outputs and work out the shifted-plane layout on every
call; at batch 4 that Python costs about a fifth of the step. ``CompiledStep`` does that
work once for each input shape and dtype it meets: it runs one forward of ``FusedStep``'s
stages (which checks the input and reports as usual), learns each stage's input shape,
and then builds a block per stage: conv -> ReLU -> max-pool and linear (-> ReLU) stages
get their layouts and buffers, any other stage runs as itself. The tutorial's loss runs
its two kernels directly too. The kernels and their order are the backend's, so the
results are bit for bit ``FusedStep``'s; anything else (a model on another backend, mixed
dtypes) runs ``FusedStep`` itself.

Buffers are reused from step to step, so what a step returns is copied out of them.
"""

import math

import numpy as np

from scratchnet.backends.numba import conv, dense, layout, loss_sgd, pooling
from scratchnet.backends.numba.jit import threaded
from scratchnet.geometry import conv_output_size

# Input signatures whose blocks are kept: a full batch and an epoch's last, smaller one.
_SIGNATURES_KEPT = 4


class CompiledStep:
    """``step(images, labels, check_label_values=True) -> (logits, loss)``, as ``eager_step``, for the
    ``FusedStep`` ``fused``; its stages name their fused op in ``op``."""

    def __init__(self, fused):
        self.fused = fused
        self.criterion, self.optimizer = fused.criterion, fused.optimizer
        self._parameters = list(fused.model.parameters())
        self._plans = {}  # input signature -> its blocks

    def __call__(self, images, labels, check_label_values=True):
        signature = _signature(images, self._parameters)
        if signature is None:
            return self.fused(images, labels, check_label_values)
        blocks = self._plans.get(signature)
        if blocks is None:
            blocks = self._build(images, signature)
        self.optimizer.zero_grad()
        x = images
        for block in blocks:
            x = block.forward(x)
        loss, grad = self._loss(x, labels, check_label_values)
        for block in reversed(blocks):
            if not (block.need_input_grad or block.has_parameters):
                break
            grad = block.backward(grad)
        self.optimizer.step()
        return x.copy(), loss

    def _build(self, images, signature):
        """The blocks for inputs like ``images``, from one checked forward of the fused stages."""
        shapes, x = [], images
        for stage in self.fused.stages:
            shapes.append(x.shape)
            x = stage.forward(x)
        parallel = threaded(images.shape[0])
        blocks = []
        for index, (stage, shape) in enumerate(zip(self.fused.stages, shapes)):
            blocks.append(_block(stage, shape, images.dtype, self.fused.needs_input_grad[index], parallel))
        if len(self._plans) >= _SIGNATURES_KEPT:
            self._plans.clear()
        self._plans[signature] = blocks
        return blocks

    def _loss(self, logits, labels, check_label_values):
        """(loss, d loss / d logits): the tutorial's loss through its kernels, any other through the criterion."""
        criterion = self.criterion
        if _is_tutorial_loss(self.fused.loss_options, logits, labels):
            probs, grad = np.empty_like(logits), np.empty_like(logits)
            loss, every_label_a_class = loss_sgd.mean_cross_entropy_forward(logits, labels, probs)
            if every_label_a_class:  # the labels are checked: the kernel found each one a class index
                loss_sgd.mean_cross_entropy_backward(probs, labels, logits.dtype.type(1 / len(logits)), grad)
                return np.asarray(loss, dtype=logits.dtype), grad
        # Another loss, or a label that is ignored or wrong (which the criterion checks and names).
        loss = criterion.forward_array(logits, labels, check_label_values)
        return loss, criterion.backward()


def _signature(images, parameters):
    """What the blocks depend on; None where ``FusedStep`` must run (arrays not on the host, or
    parameters of another dtype than the images)."""
    if type(images) is not np.ndarray or not images.flags.c_contiguous:
        return None
    if any(type(param.data) is not np.ndarray or param.data.dtype != images.dtype for param in parameters):
        return None
    return images.shape, images.dtype


def _is_tutorial_loss(loss_options, logits, labels):
    """A plain CrossEntropyLoss (mean, unweighted, no smoothing) of (N, C) logits and N int64 class indices:
    the case the numba backend gives its own two kernels."""
    return (loss_options is not None and loss_sgd.is_mean_loss(*loss_options)
            and logits.ndim == 2 and logits.shape[0] > 0 and type(labels) is np.ndarray
            and labels.dtype == np.int64 and labels.shape == logits.shape[:1] and labels.flags.c_contiguous)


def _block(stage, shape, dtype, need_input_grad, parallel):
    if stage.op == "conv2d_relu_max_pool2d" and len(shape) == 4 and stage.geometry[0] == 1:
        return _ConvReLUPoolBlock(stage, shape, dtype, need_input_grad, parallel)
    if stage.op in ("linear", "linear_relu"):
        return _LinearBlock(stage.layer, shape, dtype, stage.op == "linear_relu", need_input_grad, parallel)
    if stage.op == "flatten" and len(shape) > 1:
        return _FlattenBlock(shape, need_input_grad)
    return _StageBlock(stage, need_input_grad)


def _pick(twin, parallel):
    return twin.parallel if parallel else twin.serial


class _StageBlock:
    """A stage without a block of its own: it runs as in ``FusedStep``."""

    def __init__(self, stage, need_input_grad):
        self.stage, self.need_input_grad, self.has_parameters = stage, need_input_grad, stage.has_parameters

    def forward(self, x):
        return self.stage.forward(x)

    def backward(self, grad):
        return self.stage.backward(grad, self.need_input_grad)


class _FlattenBlock:
    """``Flatten``: a view of each image as one row, and the gradient viewed back."""

    has_parameters = False

    def __init__(self, x_shape, need_input_grad):
        self.x_shape, self.need_input_grad = x_shape, need_input_grad
        self.y_shape = (x_shape[0], math.prod(x_shape[1:]))

    def forward(self, x):
        return x.reshape(self.y_shape)

    def backward(self, grad):
        return grad.reshape(self.x_shape)


class _ConvReLUPoolBlock:
    """``conv2d_relu_max_pool2d`` forward and backward on shifted planes (stride 1), as the backend computes it."""

    has_parameters = True

    def __init__(self, stage, x_shape, dtype, need_input_grad, parallel):
        self.conv, self.need_input_grad = stage.conv, need_input_grad
        _, padding, self.pool_kernel, self.pool_stride = stage.geometry
        weight_shape = self.conv.weight.shape
        geometry = self.geometry = layout.ShiftedGeometry(x_shape, weight_shape, padding)
        out_h, out_w = geometry.out_hw
        y_shape = (x_shape[0], weight_shape[0], conv_output_size(out_h, self.pool_kernel, self.pool_stride),
                   conv_output_size(out_w, self.pool_kernel, self.pool_stride))
        self.planes = np.empty(geometry.planes_shape, dtype)
        self.rows, self.grad_rows = np.empty(geometry.rows_shape, dtype), np.empty(geometry.rows_shape, dtype)
        self.y, self.indices = np.empty(y_shape, dtype), np.empty(y_shape, np.int64)
        self.partial = np.empty(geometry.partial_shape, dtype)
        self.zero_bias = np.zeros(weight_shape[0], dtype)  # for a conv without bias
        if need_input_grad:
            self.grad_planes, self.grad_x = np.empty_like(self.planes), np.empty(x_shape, dtype)
        self.to_planes = _pick(layout.to_shifted_planes, parallel)
        self.shifted_forward = _pick(conv.shifted_forward, parallel)
        self.pool_2x2 = self.pool_kernel == self.pool_stride == 2
        self.pool = _pick(pooling.relu_max_pool_rows_2x2 if self.pool_2x2 else pooling.relu_max_pool_rows, parallel)
        self.grad_weight = _pick(conv.shifted_grad_weight, parallel)
        self.grad_input = _pick(conv.shifted_grad_input, parallel)
        self.from_planes = _pick(layout.from_shifted_planes, parallel)

    def forward(self, x):
        conv_, geometry = self.conv, self.geometry
        self.to_planes(np.ascontiguousarray(x), geometry.padding, self.planes)
        bias = self.zero_bias if conv_.bias is None else conv_.bias.data
        self.shifted_forward(self.planes, conv_.weight.data, bias, geometry.span, self.rows)
        if self.pool_2x2:
            self.pool(self.rows, geometry.out_hw[1], self.y, self.indices)
        else:
            self.pool(self.rows, geometry.out_hw[1], self.pool_kernel, self.pool_stride, self.y, self.indices)
        return self.y

    def backward(self, grad):
        conv_, geometry = self.conv, self.geometry
        pooling.grad_rows_from_pool(np.ascontiguousarray(grad).reshape(self.y.shape), self.y, self.indices,
                                    self.grad_rows)
        self.grad_weight(self.planes, self.grad_rows, geometry.span, self.partial)
        conv.add_sum_leading(self.partial, conv_.weight.grad)
        if conv_.bias is not None:
            conv.add_row_sums(self.grad_rows, conv_.bias.grad)
        if not self.need_input_grad:
            return None
        self.grad_input(self.grad_rows, conv_.weight.data, geometry.span, self.grad_planes)
        self.from_planes(self.grad_planes, geometry.padding, self.grad_x)
        return self.grad_x


class _LinearBlock:
    """``linear`` (``relu``: ``linear_relu``) forward and backward over the input's rows, as the backend computes it."""

    has_parameters = True

    def __init__(self, linear, x_shape, dtype, relu, need_input_grad, parallel):
        self.linear, self.relu, self.need_input_grad = linear, relu, need_input_grad
        rows = math.prod(x_shape[:-1])
        self.x_shape, self.y_shape = x_shape, tuple(x_shape[:-1]) + (linear.out_features,)
        self.y = np.empty((rows, linear.out_features), dtype)
        self.grad_x = np.empty((rows if need_input_grad else 0, linear.in_features), dtype)
        self.no_relu = np.empty((0, 0), dtype)  # no ReLU output: nothing to mask
        self.zero_bias = np.zeros(linear.out_features, dtype)  # for a linear without bias
        self.spare_grad_bias = np.zeros(linear.out_features, dtype)  # the kernel adds into it; nobody reads it
        self.forward_kernel = _pick(dense.linear_forward, parallel)
        self.backward_kernel = _pick(dense.linear_backward, parallel)

    def forward(self, x):
        linear = self.linear
        self.x = np.ascontiguousarray(x).reshape(self.y.shape[0], linear.in_features)
        bias = self.zero_bias if linear.bias is None else linear.bias.data
        self.forward_kernel(self.x, linear.weight.data, bias, self.relu, self.y)
        return self.y.reshape(self.y_shape)

    def backward(self, grad):
        linear = self.linear
        grad_bias = self.spare_grad_bias if linear.bias is None else linear.bias.grad
        self.backward_kernel(self.x, linear.weight.data, self.y if self.relu else self.no_relu,
                             np.ascontiguousarray(grad).reshape(self.y.shape), self.need_input_grad, self.grad_x,
                             linear.weight.grad, grad_bias)
        return self.grad_x.reshape(self.x_shape) if self.need_input_grad else None
