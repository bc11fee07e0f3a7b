"""Command-line plumbing shared by the tutorial CLIs: the common flags, run folders, and errors as one line."""

import argparse
import contextlib
import os
import sys

import numpy as np

DATA_ENV = "SCRATCHNET_DATA"  # where the data lives when --data is not given
SEED_LIMIT = 2**32  # seeds are what numpy's SeedSequence and torch.manual_seed both take: 0 <= seed < 2**32


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage dump) and whose description is plain text."""

    def __init__(self, *args, description=None, **kwargs):
        # Descriptions are module docstrings' first paragraphs, whose ``code`` marks are for readers of the source.
        super().__init__(*args, description=description and description.replace("``", ""), **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(text, minimum, wanted, maximum=None):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
    return value


def positive_int(text):
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text):
    return _int_at_least(text, 0, "an integer >= 0")


def seed(text):
    return _int_at_least(text, 0, f"a seed in 0..{SEED_LIMIT - 1}", maximum=SEED_LIMIT - 1)


def folder_name(text):
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a folder name, got {text!r}")
    return text


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def add_data_arguments(parser):
    parser.add_argument("--data", metavar="DIR", default=os.environ.get(DATA_ENV, "data"),
                        help=f"folder holding cifar-10-batches-py or cifar-10-python.tar.gz "
                             f"(default: ${DATA_ENV} or ./data)")
    parser.add_argument("--download", action="store_true", help="download the official CIFAR-10 archive if missing")
    parser.add_argument("--limit-test", type=positive_int, metavar="N", help="test on the first N test images only")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="mini-batch size (default 4)")


def add_training_arguments(parser):
    """The flags both tutorials share: data, schedule, seed, limits and output folder."""
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=positive_int, default=2, help="passes over the training set (default 2)")
    parser.add_argument("--test-batch-size", type=positive_int, metavar="N",
                        help="mini-batch size of the evaluation on the test set (default: --batch-size, as the "
                             "tutorial); larger is faster and gives the same predictions")
    parser.add_argument("--lr", type=non_negative_float, default=0.001, help="SGD learning rate (default 0.001)")
    parser.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--seed", type=seed,
                        help="seed for initialization and shuffling (default: a fresh one, recorded)")
    parser.add_argument("--limit-train", type=positive_int, metavar="N",
                        help="train on the first N training images only")
    parser.add_argument("--log-every", type=positive_int, default=2000, metavar="STEPS",
                        help="print the mean loss every STEPS mini-batches (default 2000)")
    parser.add_argument("--out", metavar="RUN_DIR", type=folder_name,
                        help="run folder for weights, metrics.json and plots (default: a new folder under runs/); "
                             "a folder that already holds a run is refused")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --out")


def resolve_seed(seed):
    """The given seed, or a fresh random one (so every run records the seed that reproduces it)."""
    return seed if seed is not None else int(np.random.SeedSequence().entropy % SEED_LIMIT)


def explicit_flags(parser, argv):
    """The destinations of the flags ``argv`` names itself (not left at their defaults)."""
    unset = object()
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in defaults:
            action.default = unset
        given = parser.parse_args(argv)
    finally:
        for action, default in defaults.items():
            action.default = default
    return {dest for dest, value in vars(given).items() if value is not unset}


def config(args, **extra):
    """The run's settings as recorded in metrics.json."""
    keys = ("epochs", "batch_size", "test_batch_size", "lr", "momentum", "log_every", "limit_train", "limit_test")
    return {**{key: getattr(args, key) for key in keys}, **extra}


@contextlib.contextmanager
def one_line_errors(prog, *expected):
    """Turn the ``expected`` exception types into one ``prog: error: ...`` line on stderr and exit status 1."""
    try:
        yield
    except expected as exc:
        is_file_error = isinstance(exc, OSError) and exc.filename is not None
        message = f"{exc.filename}: {exc.strerror}" if is_file_error else exc
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(1)
    except MemoryError:
        print(f"{prog}: error: out of memory (try a smaller --batch-size or --width)", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:  # its message, if any, says where the run's last checkpoint is
        print(f"{prog}: interrupted" + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        sys.exit(130)
