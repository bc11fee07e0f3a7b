"""Test a trained network: ``python -m scratchnet.evaluate --weights FILE [--data DIR] [--limit-test N]``.

FILE is scratchnet's ``cifar_net.npz`` or the PyTorch tutorial's own ``cifar_net.pth``
(read without torch, through the allow-list unpickler). Prints the tutorial's test report.
"""

import sys

from scratchnet import backends, checkpoint, cli, report
from scratchnet.data import CIFAR10, DataError, DataLoader
from scratchnet.models import Net


def predict(net, loader):
    """Class predictions (host int64 array) for every image the loader yields, in order.

    Predictions stay on the backend until the end: one device-to-host copy in all.
    """
    xp = loader.backend.xp
    predictions = xp.empty(len(loader.dataset), dtype=xp.int64)
    start = 0
    for images, _ in loader:
        predictions[start:start + len(images)] = xp.argmax(net(images), axis=1)
        start += len(images)
    return loader.backend.to_numpy(predictions)


def evaluate(net, testset, batch_size, backend, dtype=None):
    """Predict the whole test set (cast to ``dtype`` if given); return (predictions, accuracy summary)."""
    loader = DataLoader(testset, batch_size, shuffle=False, backend=backend, dtype=dtype)
    predictions = predict(net, loader)
    return predictions, report.accuracy_summary(testset.targets, predictions, testset.classes)


def net_from_weights(path):
    """The tutorial Net (width read from the weights) holding the weights in ``path``."""
    state = checkpoint.load(path)
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4 or conv1.shape[0] % 6:
        raise checkpoint.CheckpointError(f"{path} does not hold the tutorial Net's weights (no usable conv1.weight)")
    net = Net(width=conv1.shape[0] // 6, seed=0)
    try:
        net.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if exc.args else exc
        raise checkpoint.CheckpointError(f"{path} does not hold the tutorial Net's weights: {message}") from None
    return net


def main(argv=None):
    parser = cli.Parser(prog="python -m scratchnet.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, metavar="FILE",
                        help="cifar_net.npz (scratchnet) or cifar_net.pth (torch)")
    parser.add_argument("--backend", choices=backends.names(), default="numba", help="engine backend (default numba)")
    cli.add_data_arguments(parser)
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser.prog, DataError, backends.BackendError, checkpoint.CheckpointError):
        backend = backends.get(args.backend)
        net = net_from_weights(args.weights).to(backend.name)
        testset = CIFAR10(args.data, train=False, download=args.download, limit=args.limit_test)
        predictions, summary = evaluate(net, testset, args.batch_size, backend)
        for line in report.test_report_lines(testset.targets, predictions, summary, testset.classes):
            print(line)


if __name__ == "__main__":
    sys.exit(main())
