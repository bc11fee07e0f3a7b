"""Layers with explicit forward and backward, named and shaped as in torch.nn.

A module remembers what its backward needs from the last forward call; calling
``backward(grad_out)`` returns the gradient for its input and *adds* the
parameter gradients to ``param.grad``, as torch's autograd accumulates them.
"""

import math

import numpy as np

from scratchnet import backends
from scratchnet.backends.base import check_class_indices, conv_output_size
from scratchnet.random import default_generator


class Parameter:
    """A trainable array and the gradient accumulated for it."""

    def __init__(self, data, backend=None):
        self.backend = backend or backends.get("numpy")  # where its optimizer step runs
        self.data = data
        self.grad = np.zeros_like(data)  # dispatches to cupy for cupy arrays

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameter bookkeeping, state_dict, backend and dtype moves."""

    def __init__(self):
        self.backend = backends.get("numpy")
        self._params = {}
        self._children = {}

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self.__dict__.setdefault("_params", {})[name] = value
        elif isinstance(value, Module):
            self.__dict__.setdefault("_children", {})[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    # ---- parameters ---------------------------------------------------------------

    def named_parameters(self, prefix=""):
        for name, param in self._params.items():
            yield prefix + name, param
        for name, child in self._children.items():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        for _, param in self.named_parameters():
            yield param

    def modules(self):
        yield self
        for child in self._children.values():
            yield from child.modules()

    def zero_grad(self):
        for param in self.parameters():
            param.grad[...] = 0

    def state_dict(self):
        """Parameters by torch name, as plain numpy arrays (copies)."""
        return {name: self.backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict):
        """Copy arrays in by name; keys and shapes must match exactly, as torch's strict load."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for name, param in own.items():
            value = np.asarray(self._host(state_dict[name]))
            if value.shape != param.data.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {name} has shape {value.shape}, "
                    f"expected {param.data.shape}"
                )
            param.data[...] = self.backend.asarray(value.astype(param.data.dtype))

    @staticmethod
    def _host(value):
        return value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else value

    # ---- moves ----------------------------------------------------------------------

    def to(self, target):
        """Move to a backend (``"numpy"``, ``"numba"``, ``"cupy"``) or cast to a float dtype."""
        dtype = _float_dtype(target)
        backend = backends.get(target) if dtype is None else None
        for module in self.modules():
            source = module.backend
            if backend is not None:
                module.backend = backend
            for param in module._params.values():
                host = source.to_numpy(param.data)
                param.data = module.backend.asarray(host, dtype=dtype or host.dtype)
                param.backend = module.backend
                param.grad = np.zeros_like(param.data)
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # ---- checks -----------------------------------------------------------------------

    def _check_input(self, x, rank, what):
        """Raise a ValueError naming this layer when ``x`` is not what it takes."""
        self.backend.check_array(x, self)  # the module itself: its repr is built only for an error message
        if x.ndim != rank:
            raise ValueError(f"{self!r} expects a {rank}-D input {what}, got shape {tuple(x.shape)}")
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


def _pair(value, what):
    if isinstance(value, int):
        return value, value
    pair = tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {value!r}")
    return pair


def _uniform(shape, bound, rng):
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Conv2d(Module):
    """2-D convolution (cross-correlation, like torch), square stride and padding."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, seed=None):
        super().__init__()
        kh, kw = _pair(kernel_size, "kernel_size")
        if min(in_channels, out_channels, kh, kw, stride) <= 0 or padding < 0:
            raise ValueError(
                f"Conv2d: sizes must be positive and padding non-negative, got in_channels={in_channels}, "
                f"out_channels={out_channels}, kernel_size={kernel_size}, stride={stride}, padding={padding}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        rng = default_generator(seed)
        # torch's default: kaiming_uniform_(a=sqrt(5)) gives U(+-1/sqrt(fan_in)); bias the same bound.
        bound = 1 / math.sqrt(in_channels * kh * kw)
        self.weight = Parameter(_uniform((out_channels, in_channels, kh, kw), bound, rng))
        self.bias = Parameter(_uniform((out_channels,), bound, rng)) if bias else None

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")

    def forward(self, x):
        self._y_shape = self.output_shape(x)
        self._x = x
        bias = self.bias.data if self.bias is not None else None
        return self.backend.conv2d_forward(x, self.weight.data, bias, self.stride, self.padding)

    def output_shape(self, x):
        """Check ``x`` as this layer's input (a ValueError names the layer); return the output's shape."""
        self._check_input(x, 4, "(N, C, H, W)")
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        if c != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} input channels, got input of shape {tuple(x.shape)}")
        if h + 2 * self.padding < kh or w + 2 * self.padding < kw:
            raise ValueError(
                f"{self!r}: input of shape {tuple(x.shape)} (padded to {h + 2 * self.padding}x"
                f"{w + 2 * self.padding}) is smaller than the kernel {kh}x{kw}"
            )
        return (n, self.out_channels, conv_output_size(h, kh, self.stride, self.padding),
                conv_output_size(w, kw, self.stride, self.padding))

    def backward(self, grad_out, need_input_grad=True):
        """The input gradient (None with ``need_input_grad=False``); parameter gradients added to ``.grad``."""
        x = self._saved("_x")
        grad_out = self._grad_out(grad_out, self._y_shape)
        return self.backend.conv2d_backward(x, self.weight.data, grad_out, self.stride, self.padding,
                                            *_param_grads(self), need_input_grad)


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, seed=None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: sizes must be positive, got {in_features} -> {out_features}")
        self.in_features, self.out_features = in_features, out_features
        rng = default_generator(seed)
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound, rng))
        self.bias = Parameter(_uniform((out_features,), bound, rng)) if bias else None

    def __repr__(self):
        return f"Linear(in_features={self.in_features}, out_features={self.out_features})"

    def forward(self, x):
        self.output_shape(x)
        self._x = x
        bias = self.bias.data if self.bias is not None else None
        return self.backend.linear_forward(x, self.weight.data, bias)

    def output_shape(self, x):
        """Check ``x`` as this layer's input (a ValueError names the layer); return the output's shape."""
        self._check_input(x, 2, "(N, features)")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects {self.in_features} input features, got input of shape {tuple(x.shape)}")
        return x.shape[0], self.out_features

    def backward(self, grad_out, need_input_grad=True):
        """The input gradient (None with ``need_input_grad=False``); parameter gradients added to ``.grad``."""
        x = self._saved("_x")
        grad_out = self._grad_out(grad_out, (x.shape[0], self.out_features))
        return self.backend.linear_backward(x, self.weight.data, grad_out, *_param_grads(self), need_input_grad)


class MaxPool2d(Module):
    """Max pooling in torch's floor mode; backward routes to torch's argmax."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        stride = kernel_size if stride is None else stride
        if not isinstance(kernel_size, int) or not isinstance(stride, int) or kernel_size <= 0 or stride <= 0:
            raise ValueError(f"MaxPool2d: kernel_size and stride must be positive ints, got {kernel_size}, {stride}")
        self.kernel_size, self.stride = kernel_size, stride

    def __repr__(self):
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride})"

    def forward(self, x):
        self._check_input(x, 4, "(N, C, H, W)")
        self.output_shape(x.shape)
        self._x_shape = x.shape
        y, self._indices = self.backend.max_pool2d_forward(x, self.kernel_size, self.stride)
        return y

    def output_shape(self, input_shape):
        """The output's shape for an input of ``input_shape``; a ValueError naming the layer if too small."""
        n, c, h, w = input_shape
        if min(h, w) < self.kernel_size:
            raise ValueError(f"{self!r}: input of shape {tuple(input_shape)} is smaller than the kernel")
        return (n, c, conv_output_size(h, self.kernel_size, self.stride),
                conv_output_size(w, self.kernel_size, self.stride))

    def backward(self, grad_out):
        indices = self._saved("_indices")
        grad_out = self._grad_out(grad_out, indices.shape)
        return self.backend.max_pool2d_backward(grad_out, indices, self._x_shape, self.kernel_size, self.stride)


class ReLU(Module):
    def __repr__(self):
        return "ReLU()"

    def forward(self, x):
        self.backend.check_array(x, self)
        self._y = self.backend.relu_forward(x)
        return self._y

    def backward(self, grad_out):
        y = self._saved("_y")
        return self.backend.relu_backward(self._grad_out(grad_out, y.shape), y)


class Flatten(Module):
    """Flatten every axis after the batch axis, as torch.flatten(x, 1)."""

    def __repr__(self):
        return "Flatten()"

    def forward(self, x):
        self.backend.check_array(x, self)
        if x.ndim < 1:
            raise ValueError(f"{self!r} needs a batch axis, got a scalar")
        self._x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        shape = self._saved("_x_shape")
        return self._grad_out(grad_out, (shape[0], math.prod(shape[1:]))).reshape(shape)


class Sequential(Module):
    """Layers run in order, as torch.nn.Sequential: ``Sequential(a, b, ...)`` names them
    "0", "1", ...; ``Sequential(OrderedDict(name=layer, ...))`` keeps the given names, which
    become the ``state_dict`` prefixes. Backends' ``compile_step`` fuses runs of its layers."""

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

    def __repr__(self):
        inner = ", ".join(repr(m) for m in self._children.values())
        return f"Sequential({inner})"

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

    def backward(self, grad_out):
        for module in reversed(self._children.values()):
            grad_out = module.backward(grad_out)
        return grad_out


class CrossEntropyLoss(Module):
    """Mean softmax cross-entropy over the batch, from logits and integer labels."""

    def __repr__(self):
        return "CrossEntropyLoss()"

    def forward(self, logits, labels):
        """The mean loss as a Python float."""
        return float(self.forward_array(logits, labels))

    __call__ = forward

    def forward_array(self, logits, labels, check_label_values=True):
        """The mean loss as a 0-d array on the logits' backend: no device-to-host copy.

        The label range check reads the labels on the host (a synchronization on a GPU);
        ``check_label_values=False`` skips it for CUDA graph capture, where that is not
        allowed, and the caller checks with ``check_class_indices`` before each replay.
        """
        self.backend = _backend_of(logits, self.backend)
        self._check_input(logits, 2, "of logits (N, classes)")
        self.backend.check_array(labels, f"{self!r} labels")
        if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"{self!r}: logits of shape {tuple(logits.shape)} need labels of shape ({logits.shape[0]},), "
                f"got {tuple(labels.shape)}"
            )
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{self!r}: labels must be integer class indices, got dtype {labels.dtype}")
        if check_label_values:
            check_class_indices(labels, logits.shape[1], repr(self))
        loss, self._probs = self.backend.cross_entropy_forward(logits, labels)
        self._labels = labels
        return loss

    def backward(self, grad_out=None):
        """d loss / d logits (the loss being a scalar, no incoming gradient is needed)."""
        probs = self._saved("_probs")
        return self.backend.cross_entropy_backward(probs, self._labels)


def _backend_of(array, current):
    """The loss has no parameters, so it follows whichever backend its logits live on."""
    if isinstance(array, np.ndarray):
        return current if current.xp is np else backends.get("numpy")
    return backends.get("cupy")
