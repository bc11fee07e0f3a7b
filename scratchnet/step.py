"""The training step: the plain eager form, the fused form, and the choice between them by backend capability.

``eager_step`` is the tutorial's loop body, module by module. ``FusedStep`` computes the
same step for any ``Sequential`` of our layers (nested ones included) with the fused
backend ops where the layers allow: each conv -> ReLU -> max-pool run becomes one
``conv2d_relu_max_pool2d`` stage (when its geometry is the plain one those ops take:
``geometry.plain_conv`` / ``plain_pool``), any other plain conv a ``conv2d`` stage, each
linear -> ReLU one ``linear_relu`` stage, a lone linear a ``linear`` stage and a flatten a
view (the table ``PATTERNS``); every other layer runs as itself. Its backward stops at the first layer with parameters,
which needs no input gradient (as torch skips it for an input that does not require one).
A model that is not a ``Sequential`` runs as one stage through its own forward/backward.

``compile_step`` and ``compile_forward`` pick the form from what the model's backend
advertises (``Backend.fused_training``, ``fused_inference``, ``has_workspaces``,
``captures_graphs``); the backends import nothing of this module. ``CapturedStep`` replays a
step recorded through the backend's ``capture`` hook (CUDA graphs on the GPU).
"""

import functools
import math

from scratchnet import functional, nn
from scratchnet.geometry import check_class_indices


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
    step = FusedStep(model, criterion, optimizer)
    if capture and backend.captures_graphs:
        return CapturedStep(step, backend, batch_size, label_pool)
    step.label_pool = label_pool  # no graph to check the pool once: the step does
    return step


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
    """``step(images, labels, check_label_values=True) -> (logits, loss)``, as ``eager_step``.

    On a backend with workspaces (``Backend.workspace``) each stage gets one per input
    signature: the first step of a signature runs without and shows every stage's input shape,
    and the workspaces made then serve the inputs to come (a full batch and an epoch's last,
    smaller one); the logits then come out of a workspace and are copied, as the next step
    overwrites them.

    ``label_pool``, when set, holds every label the batches will carry (class indices): it
    is checked once, at the next step, instead of each batch's labels.
    """

    def __init__(self, model, criterion, optimizer):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.label_pool = None
        self.stages = plan(model)
        # A stage's input gradient is needed only when some stage before it has parameters.
        needs_input_grad = [any(stage.has_parameters for stage in self.stages[:index])
                            for index in range(len(self.stages))]
        # The backward's stages, last first, down to the first that has parameters (it needs no input gradient).
        backward = [(index, need) for index, (stage, need) in enumerate(zip(self.stages, needs_input_grad))
                    if need or stage.has_parameters]
        self._backward = backward[::-1]
        self._parameters = list(model.parameters())
        self._check_labels = True
        self._workspaces = {}  # input signature -> a workspace or None per stage
        self._no_workspaces = [None] * len(self.stages)

    def __call__(self, images, labels, check_label_values=True):
        signature, workspaces, shapes = None, self._no_workspaces, None
        if self.model.backend.has_workspaces:
            first = self._parameters[0].data if self._parameters else images
            signature = (type(images), images.shape, images.dtype, type(first), first.dtype)
            workspaces = self._workspaces.get(signature)
            if workspaces is None:  # this step runs without, and shows each stage's input shape for the next
                workspaces, shapes = self._no_workspaces, []
        self.optimizer.zero_grad()
        x = images
        for stage, workspace in zip(self.stages, workspaces):
            if shapes is not None:
                shapes.append(x.shape)
            x = stage.forward(x, workspace)
        if self.label_pool is not None and check_label_values:
            check_class_indices(self.label_pool, x.shape[1 if x.ndim > 1 else 0], "label_pool")
            self.label_pool, self._check_labels = None, False  # checked: every batch's labels are in it
        loss = self.criterion.forward_array(x, labels, check_label_values and self._check_labels)
        grad = self.criterion.backward()
        stages = self.stages
        for index, need_input_grad in self._backward:
            grad = stages[index].backward(grad, need_input_grad, workspaces[index])
        self.optimizer.step()
        if shapes is not None:
            self._keep_workspaces(signature, shapes)
        return (x if workspaces is self._no_workspaces else x.copy()), loss

    def _keep_workspaces(self, signature, shapes):
        """Workspaces for the stages' input shapes, kept for the inputs to come with ``signature``. Made after
        a real step, not a forward of their own: a layer's forward may change its state (dropout's masks,
        batch norm's running statistics)."""
        backend = self.model.backend
        if len(self._workspaces) >= _SIGNATURES_KEPT:
            self._workspaces.clear()
        self._workspaces[signature] = [stage.workspace(shape, backend) for stage, shape in zip(self.stages, shapes)]


# Input signatures whose workspaces a step keeps: a full batch and an epoch's last, smaller one, with room.
_SIGNATURES_KEPT = 4


class CapturedStep:
    """``step(images, labels)`` recorded once through ``backend.capture`` and replayed for batches of
    ``batch_size``; others run eagerly. The cure for launch overhead: at the tutorial's batch of 4 a GPU
    runs each of a step's kernels faster than the host can launch the next.

    ``step`` is a step as ``eager_step`` that, with ``check_label_values=False``, neither waits for the
    device nor branches on its values (``FusedStep`` qualifies). A call returns (logits, loss); after
    a replay they are the recording's static outputs, which the next replay overwrites: copy what is
    to be kept (on the current stream, as ``fit`` does, the copy is ordered before that replay).

    What replaying relies on:

    * Fixed shapes and addresses. A replay repeats the recorded launches with the recorded
      arguments, so it serves only batches laid out like the recorded one (others, such as an
      epoch's last partial batch, run eagerly; so does every step when the backend refuses to
      record), and the model's parameter, gradient and momentum arrays must stay the same
      arrays: the step updates them in place; moving the model (``.to``) or resetting the
      optimizer after the recording would leave it stale.
    * No host synchronization inside. The step is recorded with ``check_label_values=False``.
      Each replayed batch has its labels checked before they are copied in, which waits for
      the device, unless ``label_pool`` names every label the batches will carry (``fit``
      passes its DataLoader's): then the pool is checked once, at the recording, and the host
      can queue steps ahead of the device.
    * A steady-state step. The first full batch runs eagerly: it loads every kernel the step
      uses, so the recording only records launches, and it creates SGD's momentum buffers
      (torch's first step copies the gradient into them instead of decaying them), so the step
      recorded next is the one every later step repeats.
    """

    def __init__(self, step, backend, batch_size, label_pool=None):
        self._step, self._backend, self._batch_size, self._label_pool = step, backend, batch_size, label_pool
        self._warmed_up = False
        # An update whose scalars change every step (Adam's bias corrections) would replay the recorded ones.
        self._capturable = getattr(getattr(step, "optimizer", None), "replayable", True)
        # The layers whose replay depends on their mode (dropout in training): checked before each step.
        model = getattr(step, "model", None)
        self._mode_dependent = [] if model is None else [
            module for module in model.modules() if hasattr(type(module), "replayable")]
        self._graph = None

    def __call__(self, images, labels):
        if not self._model_replayable():
            return self._step(images, labels)
        if self._graph is None:
            if (not self._capturable or not self._on_device(images, labels) or images.ndim == 0
                    or images.shape[0] != self._batch_size):
                return self._step(images, labels)
            if not self._warmed_up:
                outputs = self._step(images, labels)
                self._warmed_up = True
                return outputs
            self._capture(images, labels)
            if self._graph is None:
                return self._step(images, labels)
        elif not self._fits_capture(images, labels):
            return self._step(images, labels)
        return self._replay(images, labels)

    def _model_replayable(self):
        """Whether no layer draws on the host what each step must change (dropout's masks in training)."""
        return all(module.replayable for module in self._mode_dependent)

    def _on_device(self, images, labels):
        return self._backend.owns(images) and self._backend.owns(labels)

    def _fits_capture(self, images, labels):
        """Whether the batch is laid out as the recorded one; anything else runs eagerly, through the step's checks."""
        return self._on_device(images, labels) and (
            (images.shape, images.dtype, labels.shape, labels.dtype)
            == (self._images.shape, self._images.dtype, self._labels.shape, self._labels.dtype))

    def _capture(self, images, labels):
        xp = self._backend.xp
        self._images = xp.empty(images.shape, dtype=images.dtype)
        self._labels = xp.empty(labels.shape, dtype=labels.dtype)
        recorded = self._backend.capture(lambda: self._step(self._images, self._labels, check_label_values=False))
        if recorded is None:  # refused before anything ran: this and every later step run eagerly
            self._capturable = False
            return
        self._graph, (self._logits, self._loss) = recorded
        if self._label_pool is not None:
            check_class_indices(self._label_pool, self._logits.shape[1], "CapturedStep label_pool")

    def _replay(self, images, labels):
        if self._label_pool is None:
            check_class_indices(labels, self._logits.shape[1], "CapturedStep")
        # On the current stream, as the replay: ordered after the batch was made and after
        # the previous replay's outputs were read.
        xp = self._backend.xp
        xp.copyto(self._images, images)
        xp.copyto(self._labels, labels)
        self._graph.replay()
        return self._logits, self._loss


def fused_forward(model):
    """``forward(x)``: ``model(x)`` through the stages of ``plan(model)`` (fused runs where the layers allow)."""
    stages = plan(model)

    def forward(x):
        for stage in stages:
            x = stage.forward(x)
        return x

    return forward


def _plain_conv_relu_pool(run):
    return run[0].plain_geometry() is not None and run[2].plain_geometry() is not None


# The plan: runs of layer types, whether a run qualifies, and the stage it becomes; the first match wins, and a
# layer no pattern takes runs as itself. A new fused op is one row here and one stage class below.
PATTERNS = [
    ((nn.Conv2d, nn.ReLU, nn.MaxPool2d), _plain_conv_relu_pool, lambda run: ConvReLUPoolStage(run[0], run[2])),
    ((nn.Conv2d,), lambda run: run[0].plain_geometry() is not None, lambda run: ConvStage(run[0])),
    ((nn.Linear, nn.ReLU), None, lambda run: LinearStage(run[0], relu=True)),
    ((nn.Linear,), None, lambda run: LinearStage(run[0], relu=False)),
    ((nn.Flatten,), None, lambda run: FlattenStage(run[0])),
]


def plan(model):
    """The stages of ``model``'s step: fused runs where the layers allow, single layers elsewhere."""
    if not isinstance(model, nn.Sequential):
        return [LayerStage(model)]
    layers = list(_leaves(model))
    stages, index = [], 0
    while index < len(layers):
        for types, qualifies, stage in PATTERNS:
            run = layers[index:index + len(types)]
            if (len(run) == len(types) and all(type(layer) is kind for layer, kind in zip(run, types))
                    and (qualifies is None or qualifies(run))):
                stages.append(stage(run))
                index += len(types)
                break
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


# A stage: ``forward(x, workspace=None)``, ``backward(grad, need_input_grad, workspace=None)`` (the input gradient,
# or None when not needed), ``workspace(x_shape, backend)`` (one from the backend, or None) and ``has_parameters``.
# A stage checks its input as its layers would, once per input signature; a workspace is made only for inputs
# already checked (``FusedStep`` runs one checked forward first), so a call with one skips the checks. Stages
# hold their layers' Parameters, which a move (``.to``) keeps, putting new arrays inside.


class LayerStage:
    """One layer (or a whole model) through its own forward and backward."""

    def __init__(self, layer):
        self.layer = layer
        self.has_parameters = any(True for _ in layer.parameters())

    def workspace(self, x_shape, backend):
        return None

    def forward(self, x, workspace=None):
        return self.layer(x)

    def backward(self, grad, need_input_grad, workspace=None):
        return self.layer.backward(grad, need_input_grad)


class FlattenStage:
    """``Flatten``: the input's rows as a view, and the gradient viewed back."""

    has_parameters = False

    def __init__(self, flatten):
        self.layer, self._checked = flatten, None

    def workspace(self, x_shape, backend):
        return None

    def forward(self, x, workspace=None):
        if (type(x), x.shape) != self._checked:
            self.layer.forward(x)  # checks the input
            self._checked = type(x), x.shape
        self._x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad, need_input_grad, workspace=None):
        return grad.reshape(self._x_shape)


class _PlainConvStage:
    """What the convolution stages share: the layer's Parameters (a move, ``.to``, keeps them, new arrays
    inside), a workspace per input shape from the backend, and the input checked once per signature and
    batched (an unbatched (C, H, W) input runs as a batch of one)."""

    has_parameters = True

    def __init__(self, conv, geometry):
        self.conv, self.weight, self.bias = conv, conv.weight, conv.bias
        self.geometry = geometry
        self._checked = None

    def workspace(self, x_shape, backend):
        weight = self.weight.data
        return backend.workspace(self.op, x_shape, weight.shape, weight.dtype, self.geometry)

    def _take_input(self, x, workspace):
        if workspace is None and _input_signature(x, self.conv) != self._checked:  # once per signature (see above)
            self._check_input(x)
            self._checked = _input_signature(x, self.conv)
        self._x, self._unbatched = functional.batched(x, 3)
        return self._x


class ConvStage(_PlainConvStage):
    """A convolution of the plain geometry alone (one followed by batch norm, say), through the backend op, so
    that it can run in a workspace."""

    op = "conv2d"

    def __init__(self, conv):
        stride, padding = geometry = conv.plain_geometry()
        super().__init__(conv, geometry)
        self._args = (stride, stride), ((padding, padding), (padding, padding)), (1, 1), 1

    def _check_input(self, x):
        self.conv.output_shape(x)

    def forward(self, x, workspace=None):
        bias = self.bias
        y = self.conv.backend.conv2d_forward(self._take_input(x, workspace), self.weight.data,
                                             None if bias is None else bias.data, *self._args, workspace=workspace)
        return y[0] if self._unbatched else y

    def backward(self, grad, need_input_grad, workspace=None):
        weight, bias = self.weight, self.bias
        grad_x = self.conv.backend.conv2d_backward(
            self._x, weight.data, grad[None] if self._unbatched else grad, *self._args, weight.grad,
            None if bias is None else bias.grad, need_input_grad, workspace=workspace)
        return grad_x[0] if self._unbatched and grad_x is not None else grad_x


class ConvReLUPoolStage(_PlainConvStage):
    """``pool(relu(conv(x)))`` through one fused backend op each way."""

    op = "conv2d_relu_max_pool2d"

    def __init__(self, conv, pool):
        super().__init__(conv, conv.plain_geometry() + pool.plain_geometry())  # stride, padding, pool kernel, stride
        self.pool = pool

    def _check_input(self, x):
        self.pool.output_shape(self.conv.output_shape(x))  # checks the conv's output against the pool's window

    def forward(self, x, workspace=None):
        bias = self.bias
        y, self._saved = self.conv.backend.conv2d_relu_max_pool2d_forward(
            self._take_input(x, workspace), self.weight.data, None if bias is None else bias.data, *self.geometry,
            workspace)
        return y[0] if self._unbatched else y

    def backward(self, grad, need_input_grad, workspace=None):  # the forward's ``saved`` holds its workspace
        weight, bias = self.weight, self.bias
        grad_x = self.conv.backend.conv2d_relu_max_pool2d_backward(
            self._x, weight.data, self._saved, grad[None] if self._unbatched else grad, *self.geometry, weight.grad,
            None if bias is None else bias.grad, need_input_grad)
        return grad_x[0] if self._unbatched and grad_x is not None else grad_x


class LinearStage:
    """``linear(x)``, or ``relu(linear(x))`` through one fused backend op each way."""

    has_parameters = True

    def __init__(self, linear, relu):
        self.layer, self.relu = linear, relu
        self.weight, self.bias = linear.weight, linear.bias
        self.op = "linear_relu" if relu else "linear"
        self._checked = None

    def workspace(self, x_shape, backend):
        weight = self.weight.data
        rows = (math.prod(x_shape[:-1]), x_shape[-1])  # the backend computes on rows: leading axes folded
        return backend.workspace(self.op, rows, weight.shape, weight.dtype)

    def forward(self, x, workspace=None):
        linear, bias = self.layer, self.bias
        if workspace is None and _input_signature(x, linear) != self._checked:
            linear.output_shape(x)  # checks the input
            self._checked = _input_signature(x, linear)
        self._x_shape, self._x = x.shape, linear.rows(x)
        backend = linear.backend
        forward = backend.linear_relu_forward if self.relu else backend.linear_forward
        self._y = forward(self._x, self.weight.data, None if bias is None else bias.data, workspace)
        return self._y if x.ndim == 2 else self._y.reshape(x.shape[:-1] + (linear.out_features,))

    def backward(self, grad, need_input_grad, workspace=None):
        weight, bias, backend = self.weight, self.bias, self.layer.backend
        grad_bias = None if bias is None else bias.grad
        if grad.ndim != 2:
            grad = grad.reshape(self._y.shape)
        if self.relu:
            grad_x = backend.linear_relu_backward(self._x, weight.data, self._y, grad, weight.grad, grad_bias,
                                                  need_input_grad, workspace)
        else:
            grad_x = backend.linear_backward(self._x, weight.data, grad, weight.grad, grad_bias, need_input_grad,
                                             workspace)
        return grad_x if grad_x is None or len(self._x_shape) == 2 else grad_x.reshape(self._x_shape)


def _input_signature(x, layer):
    """What a layer's input checks depend on: the input's array type, shape and dtype, and the layer's dtype."""
    return type(x), x.shape, x.dtype, type(layer.weight.data), layer.weight.data.dtype

