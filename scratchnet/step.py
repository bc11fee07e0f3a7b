"""The training step: the plain eager form, the fused form, and the choice between them by backend capability.

``eager_step`` is the tutorial's loop body, module by module. ``FusedStep`` computes the
same step for any ``Sequential`` of our layers (nested ones included) with the fused
backend ops where the layers allow: each conv -> ReLU -> max-pool run becomes one
``conv2d_relu_max_pool2d`` stage (when its geometry is the plain one those ops take:
``geometry.plain_conv`` / ``plain_pool``) and each linear -> ReLU one ``linear_relu`` stage;
every other layer runs as itself. Its backward stops at the first layer with parameters,
which needs no input gradient (as torch skips it for an input that does not require one).
A model that is not a ``Sequential`` runs as one stage through its own forward/backward.

``compile_step`` and ``compile_forward`` pick the form from what the model's backend
advertises (``Backend.fused_training``, ``fused_inference``, ``accelerate_step``); the
backends import nothing of this module.
"""

import functools

from scratchnet import functional, nn


def compile_step(model, criterion, optimizer, batch_size, label_pool=None, capture=True):
    """The training step of ``model`` in its backend's fastest form.

    Returns ``step(images, labels, check_label_values=True) -> (logits, loss)``, which runs
    zero_grad, forward, loss, backward and the optimizer update, and gives the results of
    the plain eager step. ``batch_size`` is the size of the batches to come (an epoch's last
    batch may be smaller); ``label_pool``, when given, holds every label those batches carry;
    ``capture`` allows a backend to record the step once and replay it (CUDA graphs). On the
    reference backend it is the eager step itself: the reference computes exactly what it says.
    """
    backend = model.backend
    if not backend.fused_training:
        return functools.partial(eager_step, model, criterion, optimizer)
    return backend.accelerate_step(FusedStep(model, criterion, optimizer), batch_size, label_pool, capture)


def compile_forward(model):
    """``forward(x) -> model(x)`` in its backend's fastest form (for inference: no gradients follow), with the
    same results: the fused stages where the backend runs them faster, else the model itself."""
    return fused_forward(model) if model.backend.fused_inference else model


def eager_step(model, criterion, optimizer, images, labels, check_label_values=True):
    """zero_grad, forward, loss, backward, optimizer update. Return (logits, loss) on the backend
    (the loss a 0-d array). ``check_label_values=False`` skips the label range check, which
    reads the labels on the host (not allowed while a CUDA graph is captured)."""
    optimizer.zero_grad()
    logits = model(images)
    loss = criterion.forward_array(logits, labels, check_label_values)
    model.backward(criterion.backward())
    optimizer.step()
    return logits, loss


class FusedStep:
    """``step(images, labels, check_label_values=True) -> (logits, loss)``, as ``eager_step``."""

    def __init__(self, model, criterion, optimizer):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.stages = plan(model)
        # A backend may run a plain cross-entropy through kernels of its own: its options, else None.
        self.loss_options = ((criterion.weight, criterion.ignore_index, criterion.reduction, criterion.label_smoothing)
                             if type(criterion) is nn.CrossEntropyLoss else None)
        # A stage's input gradient is needed only when some stage before it has parameters.
        self.needs_input_grad = [any(stage.has_parameters for stage in self.stages[:index])
                                  for index in range(len(self.stages))]

    def __call__(self, images, labels, check_label_values=True):
        self.optimizer.zero_grad()
        x = images
        for stage in self.stages:
            x = stage.forward(x)
        loss = self.criterion.forward_array(x, labels, check_label_values)
        grad = self.criterion.backward()
        for stage, need_input_grad in zip(reversed(self.stages), reversed(self.needs_input_grad)):
            if not (need_input_grad or stage.has_parameters):
                break
            grad = stage.backward(grad, need_input_grad)
        self.optimizer.step()
        return x, loss


def fused_forward(model):
    """``forward(x)``: ``model(x)`` through the stages of ``plan(model)`` (fused runs where the layers allow)."""
    stages = plan(model)

    def forward(x):
        for stage in stages:
            x = stage.forward(x)
        return x

    return forward


def plan(model):
    """The stages of ``model``'s step: fused runs where the layers allow, single layers elsewhere."""
    if not isinstance(model, nn.Sequential):
        return [LayerStage(model)]
    layers = list(_leaves(model))
    stages, index = [], 0
    while index < len(layers):
        run = layers[index:index + 3]
        if _is_conv_relu_pool(run):
            stages.append(ConvReLUPoolStage(run[0], run[2]))
            index += 3
        elif _is_linear_relu(run[:2]):
            stages.append(LinearReLUStage(run[0]))
            index += 2
        else:
            stages.append(LayerStage(layers[index]))
            index += 1
    return stages


def _leaves(sequential):
    for layer in sequential:
        if isinstance(layer, nn.Sequential):
            yield from _leaves(layer)
        else:
            yield layer


def _is_conv_relu_pool(run):
    """A conv -> ReLU -> max-pool run of the plain geometry the fused ops take."""
    return (len(run) == 3 and type(run[0]) is nn.Conv2d and type(run[1]) is nn.ReLU
            and type(run[2]) is nn.MaxPool2d and run[0].plain_geometry() is not None
            and run[2].plain_geometry() is not None)


def _is_linear_relu(run):
    return len(run) == 2 and type(run[0]) is nn.Linear and type(run[1]) is nn.ReLU


# Stages name what they compute in ``op`` (the fused backend op, or the single layer's), so that a backend
# can lay out buffers for them without importing this module.
_LAYER_OPS = {nn.Linear: "linear", nn.Flatten: "flatten"}


class LayerStage:
    """One layer (or a whole model) through its own forward and backward."""

    def __init__(self, layer):
        self.layer = layer
        self.op = _LAYER_OPS.get(type(layer), "layer")
        self.has_parameters = any(True for _ in layer.parameters())

    def forward(self, x):
        return self.layer(x)

    def backward(self, grad, need_input_grad):
        return self.layer.backward(grad, need_input_grad)


class ConvReLUPoolStage:
    """``pool(relu(conv(x)))`` through one fused backend op each way; an unbatched (C, H, W)
    input runs as a batch of one."""

    has_parameters = True
    op = "conv2d_relu_max_pool2d"

    def __init__(self, conv, pool):
        self.conv, self.pool = conv, pool
        self.geometry = conv.plain_geometry() + pool.plain_geometry()  # stride, padding, pool kernel, pool stride
        self._checked = None

    def forward(self, x):
        conv, pool = self.conv, self.pool
        if _input_signature(x, conv) != self._checked:  # the checks depend on nothing else: once per signature
            pool.output_shape(conv.output_shape(x))  # checks the conv's output against the pool's window
            self._checked = _input_signature(x, conv)
        self._x, self._unbatched = functional.batched(x, 3)
        y, self._saved = conv.backend.conv2d_relu_max_pool2d_forward(self._x, conv.weight.data, _data(conv.bias),
                                                                     *self.geometry)
        return y[0] if self._unbatched else y

    def backward(self, grad, need_input_grad):
        conv = self.conv
        grad_x = conv.backend.conv2d_relu_max_pool2d_backward(
            self._x, conv.weight.data, self._saved, grad[None] if self._unbatched else grad, *self.geometry,
            conv.weight.grad, _grad(conv.bias), need_input_grad)
        return grad_x[0] if self._unbatched and grad_x is not None else grad_x


class LinearReLUStage:
    """``relu(linear(x))`` through one fused backend op each way."""

    has_parameters = True
    op = "linear_relu"

    def __init__(self, linear):
        self.layer = linear
        self._checked = None

    def forward(self, x):
        linear = self.layer
        if _input_signature(x, linear) != self._checked:
            self._shape = linear.output_shape(x)
            self._checked = _input_signature(x, linear)
        shape = self._shape
        self._x_shape, self._x = x.shape, linear.rows(x)
        self._y = linear.backend.linear_relu_forward(self._x, linear.weight.data, _data(linear.bias))
        return self._y.reshape(shape)

    def backward(self, grad, need_input_grad):
        linear = self.layer
        grad_x = linear.backend.linear_relu_backward(self._x, linear.weight.data, self._y,
                                                     grad.reshape(self._y.shape), linear.weight.grad,
                                                     _grad(linear.bias), need_input_grad)
        return None if grad_x is None else grad_x.reshape(self._x_shape)


def _input_signature(x, layer):
    """What a layer's input checks depend on: the input's array type, shape and dtype, and the layer's dtype."""
    return type(x), x.shape, x.dtype, type(layer.weight.data), layer.weight.data.dtype


def _data(param):
    return None if param is None else param.data


def _grad(param):
    return None if param is None else param.grad
