"""Test a trained network: ``python -m scratchnet.evaluate --weights RUN_DIR|FILE [--data DIR] [--limit-test N]``.

FILE is scratchnet's ``cifar_net.npz`` or the PyTorch tutorial's own ``cifar_net.pth``
(read without torch, through the allow-list unpickler); RUN_DIR is a run folder, whose
weights are tested. Without ``--data`` the data folder the run recorded is used.
Prints the tutorial's test report.
"""

import contextlib
import os
import sys

import numpy as np

from scratchnet import backends, checkpoint, cli, report
from scratchnet.data import CIFAR10, DataLoader
from scratchnet.download import DataError
from scratchnet.models import Net, parameter_shapes
from scratchnet.step import compile_forward

# The weights a run folder holds: scratchnet's, or the reference tutorial's.
RUN_WEIGHTS = ("cifar_net.npz", "cifar_net.pth")


def predict(net, loader):
    """Class predictions (host int64 array) for every image the loader yields, in order.

    The network runs in its backend's compiled forward (``step.compile_forward``: fused on numba),
    which gives ``net(x)``'s results; predictions stay on the backend until the end: one
    device-to-host copy in all.
    """
    xp = loader.backend.xp
    forward = compile_forward(net)
    predictions = xp.empty(len(loader.dataset), dtype=xp.int64)
    start = 0
    with evaluation_mode(net):
        for images, _ in loader:
            predictions[start:start + len(images)] = xp.argmax(forward(images), axis=1)
            start += len(images)
    return loader.backend.to_numpy(predictions)


@contextlib.contextmanager
def evaluation_mode(net):
    """``net.eval()`` for the block (batch norm's running statistics, no dropout), each module's mode restored after."""
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for module, training in modes:
            module.training = training


def class_probabilities(net, testset, batch_size, backend, dtype=None):
    """The softmax of ``net``'s logits for every image of ``testset``: a host float64 (N, classes) array."""
    loader = DataLoader(testset, batch_size, shuffle=False, backend=backend, dtype=dtype)
    forward = compile_forward(net)
    with evaluation_mode(net):
        logits = np.concatenate([loader.backend.to_numpy(forward(images)) for images, _ in loader]).astype(np.float64)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def evaluate(net, testset, batch_size, backend, dtype=None):
    """Predict the whole test set (cast to ``dtype`` if given); return (predictions, accuracy summary)."""
    loader = DataLoader(testset, batch_size, shuffle=False, backend=backend, dtype=dtype)
    predictions = predict(net, loader)
    return predictions, report.accuracy_summary(testset.targets, predictions, testset.classes)


def net_from_weights(path, allow_non_finite=False):
    """The tutorial Net (width read from the weights) holding the weights in ``path``.

    Every tensor must be a float of the shape the tutorial Net has at that width, and
    finite unless ``allow_non_finite``; all of it is checked before the Net is built.
    """
    state = checkpoint.load(path)
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4 or conv1.shape[1:] != (3, 5, 5) or not conv1.shape[0] or conv1.shape[0] % 6:
        got = "no conv1.weight" if conv1 is None else f"conv1.weight has shape {conv1.shape}"
        raise checkpoint.CheckpointError(f"{path} does not hold the tutorial Net's weights ({got}, expected "
                                         f"(6 * width, 3, 5, 5))")
    expected = parameter_shapes(conv1.shape[0] // 6)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise checkpoint.CheckpointError(f"{path} does not hold the tutorial Net's weights: missing {missing}, "
                                         f"unexpected {unexpected}")
    for name, shape in expected.items():
        value = state[name]
        if value.shape != shape:
            raise checkpoint.CheckpointError(f"{path}: {name} has shape {value.shape}, expected {shape}")
        if value.dtype.kind != "f":
            raise checkpoint.CheckpointError(f"{path}: {name} has dtype {value.dtype}; weights must be floats")
        bad = value.size - int(np.isfinite(value).sum())
        if bad and not allow_non_finite:
            raise checkpoint.CheckpointError(f"{path}: {name} holds {bad} non-finite values (NaN or Inf); "
                                             f"pass --allow-non-finite to evaluate it anyway")
    net = Net(width=conv1.shape[0] // 6, seed=0)
    net.load_state_dict(state)
    return net


def weights_of(path):
    """The weights file ``path`` names: itself, or the weights of the run folder it is."""
    if not os.path.isdir(path):
        return path
    found = [os.path.join(path, name) for name in RUN_WEIGHTS if os.path.isfile(os.path.join(path, name))]
    if not found:
        raise checkpoint.CheckpointError(f"cannot read {path}: it is a folder without a run's weights "
                                         f"({' or '.join(RUN_WEIGHTS)}); give a run folder or a weights file")
    return found[0]


def recorded_data_root(weights):
    """The data folder recorded by the run the ``weights`` file belongs to (its metrics.json), or None."""
    try:
        metrics = report.read_metrics(os.path.dirname(os.path.abspath(weights)))
        return metrics["data"]["root"]
    except (OSError, ValueError, KeyError, TypeError):  # no run beside the weights: the usual default applies
        return None


def main(argv=None):
    parser = cli.Parser(prog="python -m scratchnet.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, metavar="RUN_DIR|FILE",
                        help="a run folder, or cifar_net.npz (scratchnet) or cifar_net.pth (torch); without --data "
                             "the data folder the run recorded is used")
    parser.add_argument("--backend", choices=backends.names(), default="numba", help="engine backend (default numba)")
    parser.add_argument("--allow-non-finite", action="store_true",
                        help="evaluate weights holding NaN or Inf (refused by default)")
    cli.add_data_arguments(parser)
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser.prog, DataError, backends.BackendError, checkpoint.CheckpointError):
        backend = backends.get(args.backend)
        weights = weights_of(args.weights)
        if "data" not in cli.explicit_flags(parser, argv):
            args.data = recorded_data_root(weights) or args.data
        net = net_from_weights(weights, args.allow_non_finite).to(backend.name)
        testset = CIFAR10(args.data, train=False, download=args.download, limit=args.limit_test)
        predictions, summary = evaluate(net, testset, args.batch_size, backend)
        for line in report.test_report_lines(testset.targets, predictions, summary, testset.classes):
            print(line)


if __name__ == "__main__":
    sys.exit(main())
