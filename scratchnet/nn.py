"""Layers with explicit forward and backward, named and shaped as in torch.nn.

A module remembers what its backward needs from the last forward call; calling
``backward(grad_out)`` returns the gradient for its input and *adds* the
parameter gradients to ``param.grad``, as torch's autograd accumulates them.
"""

import functools
import math

import numpy as np

from scratchnet import backends, functional
from scratchnet import nn_utils as utils  # noqa: F401 -- torch's nn.utils: scratchnet.nn.utils.clip_grad_norm_
from scratchnet.geometry import check_class_indices
from scratchnet.random import default_generator


class Parameter:
    """A trainable array and the gradient accumulated for it."""

    def __init__(self, data, backend=None):
        self.backend = backend or backends.reference()  # where its optimizer step runs
        self.data = data
        self.grad = np.zeros_like(data)  # dispatches to cupy for cupy arrays

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameters, buffers, children, state_dict, train/eval mode, backend and dtype moves.

    As torch.nn.Module: a buffer (``register_buffer``) is state that is not trained, such as
    batch norm's running statistics; persistent ones are in the ``state_dict`` after the
    module's parameters and before its children's entries. ``training`` is the mode that
    ``train()`` / ``eval()`` set on the module and every child.
    """

    def __init__(self):
        self.backend = backends.reference()
        self.training = True
        self._params = {}
        self._buffers = {}
        self._non_persistent = set()
        self._children = {}

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self.__dict__.setdefault("_params", {})[name] = value
        elif isinstance(value, Module):
            self.__dict__.setdefault("_children", {})[name] = value
        elif name in self.__dict__.get("_buffers", ()):
            self._buffers[name] = value  # assigning to a buffer replaces it, as in torch
        object.__setattr__(self, name, value)

    def __call__(self, x):
        return self.forward(x)

    def extra_repr(self):
        """The layer's own arguments, as torch's ``extra_repr``: what its repr shows in the parentheses."""
        return ""

    def __repr__(self):
        """torch's: ``Conv2d(3, 6, kernel_size=(5, 5), stride=(1, 1))``, or the tree of named children, one a line."""
        extra = self.extra_repr()
        lines = (extra.split("\n") if extra else []) + [
            f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._children.items()]
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._children:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_out, need_input_grad=True):
        """The gradient for the input of the last forward call; parameter gradients added to ``.grad``.
        ``need_input_grad=False`` allows a module to skip its input gradient and return None."""
        raise NotImplementedError

    # ---- parameters and buffers -------------------------------------------------------------

    def named_parameters(self, prefix=""):
        for name, param in self._params.items():
            yield prefix + name, param
        for name, child in self._children.items():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        for _, param in self.named_parameters():
            yield param

    def register_buffer(self, name, array, persistent=True):
        """Add the array ``array`` (or None) as buffer ``name``, read and replaced as an attribute;
        ``persistent=False`` keeps it out of the ``state_dict``."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"buffer name must be a non-empty string without '.', got {name!r}")
        if name in self.__dict__ and name not in self._buffers:
            raise KeyError(f"attribute '{name}' already exists")
        self._buffers[name] = array
        (self._non_persistent.discard if persistent else self._non_persistent.add)(name)
        object.__setattr__(self, name, array)

    def named_buffers(self, prefix=""):
        """Every buffer that is not None, this module's first, by torch name."""
        for name, array in self._buffers.items():
            if array is not None:
                yield prefix + name, array
        for name, child in self._children.items():
            yield from child.named_buffers(f"{prefix}{name}.")

    def buffers(self):
        for _, array in self.named_buffers():
            yield array

    def modules(self):
        yield self
        for child in self._children.values():
            yield from child.modules()

    def named_modules(self, prefix=""):
        """(name, module) for this module ("") and every module inside it, depth first, named as torch names them."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def zero_grad(self):
        for param in self.parameters():
            param.grad[...] = 0

    # ---- modes ----------------------------------------------------------------------------------

    def train(self, mode=True):
        """Set training mode (``mode=False``: evaluation mode) on this module and every child; return self."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    # ---- state_dict -----------------------------------------------------------------------------

    def _state(self, prefix=""):
        """(name, owner, attribute) of every state_dict entry, in torch's order: per module its parameters,
        then its persistent buffers, then its children's entries."""
        for name in self._params:
            yield prefix + name, self, name
        for name, array in self._buffers.items():
            if array is not None and name not in self._non_persistent:
                yield prefix + name, self, name
        for name, child in self._children.items():
            yield from child._state(f"{prefix}{name}.")

    def _array(self, attribute):
        value = getattr(self, attribute)
        return value.data if isinstance(value, Parameter) else value

    def state_dict(self):
        """Parameters and persistent buffers by torch name, as plain numpy arrays (copies)."""
        return {name: owner.backend.to_numpy(owner._array(attribute)).copy() for name, owner, attribute in self._state()}

    def load_state_dict(self, state_dict):
        """Copy arrays in by name; keys and shapes must match exactly, as torch's strict load."""
        own = {name: (owner, attribute) for name, owner, attribute in self._state()}
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for name, (owner, attribute) in own.items():
            value = np.asarray(_host(state_dict[name]))
            target = owner._array(attribute)
            if value.shape != target.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {name} has shape {value.shape}, "
                    f"expected {target.shape}"
                )
            target[...] = owner.backend.asarray(value.astype(target.dtype))

    # ---- moves ----------------------------------------------------------------------

    def to(self, target):
        """Move to a backend (``"numpy"``, ``"numba"``, ``"cupy"``) or cast to a float dtype; as torch,
        a cast changes floating-point parameters and buffers only."""
        dtype = _float_dtype(target)
        backend = backends.get(target) if dtype is None else None
        for module in self.modules():
            source = module.backend
            if backend is not None:
                module.backend = backend
            for param in module._params.values():
                param.data = _moved(param.data, source, module.backend, dtype)
                param.backend = module.backend
                param.grad = np.zeros_like(param.data)
            for name, array in module._buffers.items():
                if array is not None:
                    setattr(module, name, _moved(array, source, module.backend, dtype))
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # ---- checks -----------------------------------------------------------------------

    def _check_input(self, x):
        """Raise naming this layer unless ``x`` lives on its backend and has its parameters' dtype."""
        self.backend.check_array(x, self)  # the module itself: its repr is built only for an error message
        dtype = self._dtype()
        if dtype is not None and x.dtype != dtype:
            raise ValueError(
                f"{self!r} has {dtype} parameters but got a {x.dtype} input of shape {tuple(x.shape)}; "
                f"cast the input or the model (.float() / .double())"
            )

    def _dtype(self):
        for param in self._params.values():  # own parameters first: no walk over children on every call
            return param.data.dtype
        for param in self.parameters():
            return param.data.dtype
        return None

    def _grad_out(self, grad_out, expected_shape):
        self.backend.check_array(grad_out, f"{self!r}.backward")
        if tuple(grad_out.shape) != tuple(expected_shape):
            raise ValueError(
                f"{self!r}.backward got a gradient of shape {tuple(grad_out.shape)}, "
                f"expected the output shape {tuple(expected_shape)}"
            )
        return grad_out

    def _saved(self, attr):
        value = getattr(self, attr, None)
        if value is None:
            raise RuntimeError(f"{self!r}.backward called before forward")
        return value


def _host(value):
    """A state_dict value as a host array: a backend's array copied over, anything else (numpy, lists) as is."""
    owner = backends.owner(value)
    return value if owner is None else owner.to_numpy(value)


def _moved(array, source, backend, dtype):
    """``array`` of ``source`` on ``backend``, cast to ``dtype`` if given and the array is floating point."""
    host = source.to_numpy(array)
    return backend.asarray(host, dtype=dtype if dtype is not None and host.dtype.kind == "f" else host.dtype)


def _float_dtype(target):
    """``target`` as a float dtype, or None when it names no dtype (then it is a backend name)."""
    try:
        dtype = np.dtype(target)
    except TypeError:
        return None
    if dtype.kind != "f":
        raise ValueError(f"Module.to: expected a backend name or a float dtype, got {target!r}")
    return dtype


def _param_grads(layer):
    """Where a backward adds ``layer``'s weight and bias gradients: straight into ``.grad``
    (accumulating, as autograd does)."""
    return layer.weight.grad, (layer.bias.grad if layer.bias is not None else None)


def _uniform(shape, bound, rng):
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Conv2d(Module):
    """2-D convolution (cross-correlation, like torch) with torch's arguments: ``stride``,
    ``padding`` (an int, a pair, ``'valid'`` or ``'same'``), ``dilation`` and ``groups``;
    zero padding only. Takes (N, C, H, W) or unbatched (C, H, W) input."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", seed=None):
        super().__init__()
        kh, kw = functional.positive_pair(kernel_size, "kernel_size", "Conv2d")
        if min(in_channels, out_channels) <= 0:
            raise ValueError(f"Conv2d: channel counts must be positive, got in_channels={in_channels}, "
                             f"out_channels={out_channels}")
        groups = functional.check_groups(groups, "Conv2d")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels={in_channels} and out_channels={out_channels} must both be "
                             f"divisible by groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: only padding_mode='zeros' is supported, got padding_mode={padding_mode!r}")
        self._args = functional.Conv2dArguments((out_channels, in_channels // groups, kh, kw), stride, padding,
                                                dilation, groups, "Conv2d")
        self._args.caller = self  # input errors name the layer; its repr is built only for the message
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.dilation, self.groups = self._args.stride, self._args.dilation, groups
        self.padding = padding if isinstance(padding, str) else functional.pair(padding, "padding", "Conv2d")
        self.padding_mode = padding_mode
        rng = default_generator(seed)
        # torch's default: kaiming_uniform_(a=sqrt(5)) gives U(+-1/sqrt(fan_in)); bias the same bound.
        bound = 1 / math.sqrt(in_channels // groups * kh * kw)
        self.weight = Parameter(_uniform((out_channels, in_channels // groups, kh, kw), bound, rng))
        self.bias = Parameter(_uniform((out_channels,), bound, rng)) if bias else None

    def extra_repr(self):
        extra = "" if self.padding == (0, 0) else f", padding={self.padding}"  # as torch: padding=same unquoted
        extra += "" if self.dilation == (1, 1) else f", dilation={self.dilation}"
        extra += "" if self.groups == 1 else f", groups={self.groups}"
        extra += "" if self.bias is not None else ", bias=False"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}{extra}"

    def plain_geometry(self):
        """(stride, padding) as ints when the fused ops take this layer (see ``Backend``), else None."""
        return self._args.plain()

    def forward(self, x):
        self._y_shape = self.output_shape(x)
        self._x = x
        x, unbatched = functional.batched(x, 3)
        args, bias = self._args, self.bias.data if self.bias is not None else None
        y = self.backend.conv2d_forward(x, self.weight.data, bias, args.stride, args.padding, args.dilation,
                                        args.groups)
        return y[0] if unbatched else y

    def output_shape(self, x):
        """Check ``x`` as this layer's input (a ValueError names the layer); return the output's shape."""
        self._check_input(x)
        self._args.check_input(x)
        return tuple(x.shape[:-3]) + (self.out_channels,) + self._args.output_hw(*x.shape[-2:])

    def backward(self, grad_out, need_input_grad=True):
        """The input gradient (None with ``need_input_grad=False``); parameter gradients added to ``.grad``."""
        x = self._saved("_x")
        grad_out = self._grad_out(grad_out, self._y_shape)
        (x, unbatched), grad_out = functional.batched(x, 3), functional.batched(grad_out, 3)[0]
        args = self._args
        grad_x = self.backend.conv2d_backward(x, self.weight.data, grad_out, args.stride, args.padding,
                                              args.dilation, args.groups, *_param_grads(self), need_input_grad)
        return grad_x[0] if unbatched and grad_x is not None else grad_x


class Linear(Module):
    """``x @ weight.T + bias`` over the last axis of ``x``: any leading axes, or an unbatched vector."""

    def __init__(self, in_features, out_features, bias=True, seed=None):
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Linear: sizes must not be negative, got {in_features} -> {out_features}")
        self.in_features, self.out_features = in_features, out_features
        rng = default_generator(seed)
        # torch: a layer without input features computes its bias alone, initialized to zero.
        bound = 1 / math.sqrt(in_features) if in_features else 0.0
        self.weight = Parameter(_uniform((out_features, in_features), bound, rng))
        self.bias = Parameter(_uniform((out_features,), bound, rng)) if bias else None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        shape = self.output_shape(x)
        self._x = x
        bias = self.bias.data if self.bias is not None else None
        return self.backend.linear_forward(self.rows(x), self.weight.data, bias).reshape(shape)

    def rows(self, x):
        """``x`` as the (N, in_features) rows the backends compute on (leading axes folded into N)."""
        return x.reshape(math.prod(x.shape[:-1]), self.in_features)  # not -1: in_features may be 0

    def output_shape(self, x):
        """Check ``x`` as this layer's input (a ValueError names the layer); return the output's shape."""
        self._check_input(x)
        functional.check_linear_input(x, self.in_features, self)
        return tuple(x.shape[:-1]) + (self.out_features,)

    def backward(self, grad_out, need_input_grad=True):
        """The input gradient (None with ``need_input_grad=False``); parameter gradients added to ``.grad``."""
        x = self._saved("_x")
        grad_out = self._grad_out(grad_out, tuple(x.shape[:-1]) + (self.out_features,))
        grad_x = self.backend.linear_backward(self.rows(x), self.weight.data,
                                              grad_out.reshape(math.prod(grad_out.shape[:-1]), self.out_features),
                                              *_param_grads(self), need_input_grad)
        return None if grad_x is None else grad_x.reshape(x.shape)


class MaxPool2d(Module):
    """Max pooling with torch's arguments (pairs or ints, -inf padding, dilation, ceil mode);
    ``return_indices`` returns torch's flat per-plane argmax too. Backward routes to torch's argmax."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self._args = functional.MaxPool2dArguments(kernel_size, stride, padding, dilation, ceil_mode, "MaxPool2d")
        self._args.caller = self  # input errors name the layer; its repr is built only for the message
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = bool(return_indices), bool(ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")

    def plain_geometry(self):
        """(kernel, stride) as ints when the fused ops take this pool (see ``Backend``), else None."""
        return None if self.return_indices else self._args.plain()

    def forward(self, x):
        self._check_input(x)
        self._args.check_input(x)
        self._x_shape = x.shape
        x, unbatched = functional.batched(x, 3)
        args = self._args
        y, self._indices = self.backend.max_pool2d_forward(x, args.kernel, args.stride, args.padding, args.dilation,
                                                           args.ceil_mode)
        if unbatched:
            y, self._indices = y[0], self._indices[0]
        return (y, self._indices) if self.return_indices else y

    def output_shape(self, input_shape):
        """The output's shape for an input of ``input_shape``; a ValueError naming the layer if too small."""
        return self._args.output_shape(input_shape)

    def backward(self, grad_out, need_input_grad=True):
        indices = self._saved("_indices")
        grad_out = self._grad_out(grad_out, indices.shape)
        (grad_out, unbatched), indices = functional.batched(grad_out, 3), functional.batched(indices, 3)[0]
        x_shape = (1,) * unbatched + tuple(self._x_shape)
        args = self._args
        grad_x = self.backend.max_pool2d_backward(grad_out, indices, x_shape, args.kernel, args.stride, args.padding,
                                                  args.dilation)
        return grad_x[0] if unbatched else grad_x


class ReLU(Module):
    """max(x, 0) on any shape and memory layout; NaN stays NaN and passes its gradient, as in torch."""

    def forward(self, x):
        self.backend.check_array(x, self)
        self._y = self.backend.relu_forward(x)
        return self._y

    def backward(self, grad_out, need_input_grad=True):
        y = self._saved("_y")
        return self.backend.relu_backward(self._grad_out(grad_out, y.shape), y)


class Flatten(Module):
    """Flatten every axis after the batch axis, as torch.flatten(x, 1)."""

    def extra_repr(self):
        return "start_dim=1, end_dim=-1"

    def forward(self, x):
        self.backend.check_array(x, self)
        if x.ndim < 1:
            raise ValueError(f"{self!r} needs a batch axis, got a scalar")
        self._x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out, need_input_grad=True):
        shape = self._saved("_x_shape")
        return self._grad_out(grad_out, (shape[0], math.prod(shape[1:]))).reshape(shape)


class Sequential(Module):
    """Layers run in order, as torch.nn.Sequential: ``Sequential(a, b, ...)`` names them
    "0", "1", ...; ``Sequential(OrderedDict(name=layer, ...))`` keeps the given names, which
    become the ``state_dict`` prefixes. ``step.compile_step`` fuses runs of its layers."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            named = modules[0].items()
        else:
            named = ((str(index), module) for index, module in enumerate(modules))
        for name, module in named:
            if not isinstance(module, Module):
                raise TypeError(f"Sequential: {name!r} is a {type(module).__name__}, not a scratchnet module")
            setattr(self, name, module)

    def __getitem__(self, index):
        return list(self._children.values())[index]

    def __iter__(self):
        return iter(self._children.values())

    def __len__(self):
        return len(self._children)

    def forward(self, x):
        for module in self._children.values():
            x = module(x)
        return x

    def backward(self, grad_out, need_input_grad=True):
        """Back through the layers in reverse; only the first is told ``need_input_grad``."""
        layers = list(self._children.values())
        for index in range(len(layers) - 1, -1, -1):
            grad_out = layers[index].backward(grad_out, need_input_grad or index > 0)
        return grad_out


class CrossEntropyLoss(Module):
    """torch's softmax cross-entropy from logits, with its options: class ``weight``, ``ignore_index``,
    ``reduction`` ('mean', 'sum', 'none') and ``label_smoothing``. Targets are class indices or
    class probabilities; logits (N, C), (N, C, d1, ...) or unbatched (C,)."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        self._args = functional.CrossEntropyArguments(None if weight is None else np.asarray(weight), ignore_index,
                                                      reduction, label_smoothing, "CrossEntropyLoss")
        self._args.caller = self  # input errors name the loss; its repr is built only for the message
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self._weights = {}  # (backend name, dtype) -> the class weights there, copied once
        self._checked = None  # the signature of the last input checked

    @property
    def weight(self):
        return self._args.weight

    def extra_repr(self):
        options = [f"{name}={value!r}" for name, value, default in (
            ("ignore_index", self.ignore_index, -100), ("reduction", self.reduction, "mean"),
            ("label_smoothing", self.label_smoothing, 0.0)) if value != default]
        if self.weight is not None:
            options.insert(0, f"weight of shape {tuple(self.weight.shape)}")
        return ", ".join(options)

    def forward(self, logits, target):
        """The loss: a Python float for 'mean' and 'sum', per element (target's shape) for 'none'."""
        loss = self.forward_array(logits, target)
        return loss if self.reduction == "none" else float(loss)

    __call__ = forward

    def forward_array(self, logits, target, check_label_values=True):
        """The loss as an array on the logits' backend (0-d for 'mean' and 'sum'): no device-to-host copy.

        The label range check reads the labels on the host (a synchronization on a GPU);
        ``check_label_values=False`` skips it for CUDA graph capture, where that is not
        allowed, and the caller checks with ``check_class_indices`` before each replay.
        """
        backend, args = self.backend, self._args
        if not backend.owns(logits):  # no parameters: it follows its logits
            backend = backends.for_array(logits)
        signature = (backend, type(logits), logits.shape, logits.dtype, type(target), target.shape, target.dtype)
        if signature != self._checked:  # the checks depend on nothing else: once per signature
            self.backend = backend
            backend.check_array(logits, self)
            backend.check_array(target, self._target_name)
            self._probabilities = args.check(logits, target)
            self._checked = signature
        logit_rows, target_rows = args.rows(logits, target, self._probabilities)
        if check_label_values and not self._probabilities:
            check_class_indices(target_rows, logit_rows.shape[1], self, args.ignore_index)
        loss, saved = backend.cross_entropy_forward(logit_rows, target_rows, self._weight_for(logits),
                                                    args.ignore_index, args.reduction, args.label_smoothing)
        self._saved_loss = saved, logits.shape
        return args.unrows(loss, logits.shape) if args.reduction == "none" else loss

    @functools.cached_property
    def _target_name(self):
        """Its targets' name in messages, formatted once (a loss's repr does not change)."""
        return f"{self!r} target"

    def _weight_for(self, logits):
        if self.weight is None:
            return None
        key = (self.backend.name, logits.dtype)
        if key not in self._weights:
            self._weights[key] = self.backend.asarray(self.weight, dtype=logits.dtype)
        return self._weights[key]

    def backward(self, grad_out=None):
        """d loss / d logits. ``grad_out`` is the upstream gradient: None (1) for 'mean' and 'sum',
        required for 'none', of the loss's shape."""
        saved, logits_shape = self._saved("_saved_loss")
        if self.reduction == "none":
            if grad_out is None:
                raise ValueError(f"{self!r}.backward needs the upstream gradient of the per-element loss")
            expected = logits_shape[:1] + logits_shape[2:] if len(logits_shape) > 1 else ()
            grad_out = self._grad_out(grad_out, expected).reshape(-1)
        grad = self.backend.cross_entropy_backward(saved, grad_out)
        return self._args.unrows(grad, logits_shape)



# ---- the next chapter: activations, dropout, average and adaptive pooling, batch norm ---------------


class _Activation(Module):
    """An element-wise activation (``Backend.activation_forward``) on any shape and memory layout."""

    kind, alpha = None, 0.0

    def forward(self, x):
        self.backend.check_array(x, self)
        self._x = x
        self._y = self.backend.activation_forward(x, self.kind, self.alpha)
        return self._y

    def backward(self, grad_out, need_input_grad=True):
        y = self._saved("_y")
        return self.backend.activation_backward(self._grad_out(grad_out, y.shape), self._x, y, self.kind, self.alpha)


class GELU(_Activation):
    """``x * Phi(x)``: exact (``approximate='none'``, erf) or by torch's tanh approximation."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.kind, self.approximate = functional.check_gelu_approximation(approximate), approximate

    def extra_repr(self):
        return f"approximate='{self.approximate}'"


class SiLU(_Activation):
    """``x * sigmoid(x)``."""

    kind = "silu"

    def __init__(self, inplace=False):
        super().__init__()


class LeakyReLU(_Activation):
    """``x`` where positive, else ``negative_slope * x``."""

    kind = "leaky_relu"

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.alpha = self.negative_slope = negative_slope

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Tanh(_Activation):
    kind = "tanh"


class Sigmoid(_Activation):
    kind = "sigmoid"


class Identity(Module):
    """Its input, unchanged (any arguments are accepted and ignored, as torch's)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, grad_out, need_input_grad=True):
        return grad_out


class Dropout(Module):
    """In training, each element zeroed with probability ``p`` and the rest scaled by 1 / (1 - p) (p = 1
    zeroes all, as torch); in evaluation the identity. The masks come from scratchnet's global generator
    (``scratchnet.manual_seed``), on the host, so runs repeat on any backend and thread count; such a step
    is never replayed from a CUDA graph (its masks would be the captured ones)."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        self.p = functional.check_dropout_probability(p)

    @property
    def replayable(self):
        return not self.training or self.p == 0

    def extra_repr(self):
        return f"p={self.p}, inplace=False"

    def forward(self, x):
        self.backend.check_array(x, self)
        self._shape = tuple(x.shape)
        if not self.training or self.p == 0:
            self._keep = None
            return x
        keep, self._scale = functional.dropout_mask(x.shape, self.p, default_generator())
        self._keep = self.backend.asarray(keep)
        return self.backend.dropout_forward(x, self._keep, self._scale)

    def backward(self, grad_out, need_input_grad=True):
        grad_out = self._grad_out(grad_out, self._saved("_shape"))
        return grad_out if self._keep is None else self.backend.dropout_backward(grad_out, self._keep, self._scale)


class AvgPool2d(Module):
    """Average pooling with torch's arguments: pairs or ints, zero padding, ``ceil_mode``,
    ``count_include_pad``, ``divisor_override``."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self._args = functional.AvgPool2dArguments(kernel_size, stride, padding, ceil_mode, count_include_pad,
                                                   divisor_override, "AvgPool2d")
        self._args.caller = self
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride
        self.padding, self.ceil_mode, self.count_include_pad = padding, bool(ceil_mode), bool(count_include_pad)
        self.divisor_override = divisor_override

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def output_shape(self, input_shape):
        return self._args.output_shape(input_shape)

    def forward(self, x):
        self._check_input(x)
        self._args.check_input(x)
        self._x_shape = tuple(x.shape)
        x, unbatched = functional.batched(x, 3)
        y = self.backend.avg_pool2d_forward(x, *self._args.options())
        return y[0] if unbatched else y

    def backward(self, grad_out, need_input_grad=True):
        x_shape = self._saved("_x_shape")
        grad_out, unbatched = functional.batched(self._grad_out(grad_out, self.output_shape(x_shape)), 3)
        grad_x = self.backend.avg_pool2d_backward(grad_out, (1,) * unbatched + x_shape, *self._args.options())
        return grad_x[0] if unbatched else grad_x


class _AdaptivePool2d(Module):
    mode = None

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size
        functional.adaptive_output_hw(output_size, (1, 1), self)

    def extra_repr(self):
        return f"output_size={self.output_size}"

    def forward(self, x):
        self._check_input(x)
        functional.check_float_input(x, (3, 4), "(C, H, W) or (N, C, H, W)", self)
        self._x_shape = tuple(x.shape)
        x, unbatched = functional.batched(x, 3)
        y, self._indices = self.backend.adaptive_pool2d_forward(
            x, functional.adaptive_output_hw(self.output_size, x.shape[2:], self), self.mode)
        self._y_shape = tuple(y.shape[unbatched:])
        return (y[0], self._indices if self._indices is None else self._indices[0]) if unbatched else (y, self._indices)

    def backward(self, grad_out, need_input_grad=True):
        x_shape = self._saved("_x_shape")
        grad_out, unbatched = functional.batched(self._grad_out(grad_out, self._y_shape), 3)
        grad_x = self.backend.adaptive_pool2d_backward(grad_out, (1,) * unbatched + x_shape, self.mode, self._indices)
        return grad_x[0] if unbatched else grad_x


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Average pooling to a fixed ``output_size`` (an int, a pair, None keeping the input's size)."""

    mode = "avg"

    def forward(self, x):
        return super().forward(x)[0]


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Max pooling to a fixed ``output_size``; ``return_indices`` returns torch's flat per-plane argmax too."""

    mode = "max"

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        self.return_indices = bool(return_indices)

    def forward(self, x):
        y, indices = super().forward(x)
        return (y, indices) if self.return_indices else y


class _BatchNorm(Module):
    """Batch norm over every axis but the channels (axis 1), as torch's ``_BatchNorm``: batch statistics in
    training (the biased variance normalizes, the unbiased one moves the running variance), the running
    ones in evaluation; ``momentum=None`` is a cumulative average; ``affine`` adds ``weight`` and ``bias``;
    ``track_running_stats=False`` keeps no running statistics and always uses the batch's."""

    ranks, form = (), ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        for name, value in (("running_mean", np.zeros(num_features, dtype=np.float32)),
                            ("running_var", np.ones(num_features, dtype=np.float32)),
                            ("num_batches_tracked", np.array(0, dtype=np.int64))):
            self.register_buffer(name, value if track_running_stats else None)

    @property
    def replayable(self):  # a cumulative average reads the batch count on the host
        return self.momentum is not None or not self.training

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def forward(self, x):
        self._check_input(x)
        functional.check_float_input(x, self.ranks, self.form, self)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{self!r} expects {self.num_features} channels, got input of shape {tuple(x.shape)}")
        use_batch_stats = self.training or not self.track_running_stats
        if self.training and x.size // x.shape[1] == 1:
            raise ValueError(f"{self!r}: expected more than 1 value per channel when training, got input of shape "
                             f"{tuple(x.shape)}")
        factor, update = 0.0, self.training and self.track_running_stats
        if update:
            self.num_batches_tracked += 1
            factor = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        weight = self.weight.data if self.affine else None
        bias = self.bias.data if self.affine else None
        self._x_shape = tuple(x.shape)
        y, self._saved_norm = self.backend.batch_norm_forward(
            x, weight, bias, self.running_mean if update or not use_batch_stats else None,
            self.running_var if update or not use_batch_stats else None, use_batch_stats, factor, self.eps)
        return y

    def backward(self, grad_out, need_input_grad=True):
        saved = self._saved("_saved_norm")
        grad_out = self._grad_out(grad_out, self._x_shape)
        weight, (grad_weight, grad_bias) = (self.weight.data, (self.weight.grad, self.bias.grad)) if self.affine \
            else (None, (None, None))
        return self.backend.batch_norm_backward(grad_out, saved, weight, grad_weight, grad_bias, need_input_grad)


class BatchNorm2d(_BatchNorm):
    ranks, form = (4,), "(N, C, H, W)"


class BatchNorm1d(_BatchNorm):
    ranks, form = (2, 3), "(N, C) or (N, C, L)"
