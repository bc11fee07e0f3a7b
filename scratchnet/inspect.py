"""See what a network learned: ``python -m scratchnet.inspect RUN_DIR [--image N] [--data DIR]``.

Draws three PNGs into the run folder: ``filters.png`` (every conv layer's filters, the
first layer's in colour), ``feature_maps.png`` (one test image after each conv, ReLU and
pool stage) and ``histograms.png`` (each parameter's values and its gradient on a batch
of test images). The CLI inspects a tutorial run; ``save_inspection`` any ``Sequential``.
"""

import os
import sys

import numpy as np

from scratchnet import backends, checkpoint, cli, nn, plots
from scratchnet.data import CIFAR10, normalize
from scratchnet.download import DataError
from scratchnet.evaluate import net_from_weights, recorded_data_root, weights_of

FILES = ("filters.png", "feature_maps.png", "histograms.png")
GRADIENT_IMAGES = 64  # test images whose loss gradient the gradient histograms show
MAX_CHANNELS = 16  # feature maps shown per stage, filters per row and column: a wide network shows its first


def save_inspection(model, folder, testset, image=0):
    """Draw ``model``'s filters, the feature maps of ``testset``'s image number ``image`` and the
    parameter and gradient histograms into ``folder``; return the paths of the PNGs.

    ``model`` is any ``Sequential`` of scratchnet layers (nested ones too) on any backend;
    ``testset`` a ``scratchnet.data.CIFAR10`` split. The gradients are those of the mean
    cross-entropy on the split's first images, left in the parameters' ``.grad``.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"save_inspection: expected a Sequential of scratchnet layers, got {type(model).__name__}")
    if not 0 <= image < len(testset):
        raise ValueError(f"save_inspection: image {image} is not in the test set (images 0..{len(testset) - 1})")
    dtype = next(model.parameters()).data.dtype
    backend = model.backend
    shown = backend.asarray(normalize(testset.pixels[image:image + 1], dtype))
    batch = backend.asarray(normalize(testset.pixels[:GRADIENT_IMAGES], dtype))
    stages = feature_maps(model, shown)
    _gradients(model, batch, backend.asarray(testset.targets[:GRADIENT_IMAGES]))
    title = f"test image {image}: {testset.classes[testset.targets[image]]}"
    return plots.save_figures(folder, {
        "filters.png": filters_figure(model),
        "feature_maps.png": feature_maps_figure(stages, title),
        "histograms.png": histograms_figure(model),
    })


def layers(model):
    """The named layers of a ``Sequential`` in the order they run, nested ``Sequential``s opened."""
    return [(name, module) for name, module in model.named_modules() if not isinstance(module, nn.Sequential)]


def feature_maps(model, image):
    """[(stage name, (C, H, W) host array)]: the input, then the output of each conv, ReLU and pool layer
    while the activations are still images."""
    stages = [("input", model.backend.to_numpy(image)[0])]
    x = image
    for name, layer in layers(model):
        x = layer(x)
        if x.ndim != 4:
            break
        if isinstance(layer, (nn.Conv2d, nn.ReLU, nn.MaxPool2d)):
            stages.append((f"{name}: {type(layer).__name__}", model.backend.to_numpy(x)[0]))
    return stages


def _gradients(model, images, labels):
    criterion = nn.CrossEntropyLoss()
    model.zero_grad()
    criterion(model(images), labels)
    model.backward(criterion.backward())


def _montage(tiles, columns, gap=1, fill=np.nan):
    """Tiles (N, h, w) or (N, h, w, 3) laid out in rows of ``columns``, ``fill`` between them (NaN: blank)."""
    count, height, width = tiles.shape[:3]
    rows = -(-count // columns)
    canvas = np.full((rows * (height + gap), columns * (width + gap)) + tiles.shape[3:], fill)
    for index, tile in enumerate(tiles):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        canvas[top:top + height, left:left + width] = tile
    return canvas


def _scaled(array):
    """``array`` mapped onto 0..1 (a constant array onto 0.5)."""
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    return (array - low) / (high - low) if high > low else np.full_like(array, 0.5)


def filters_figure(model):
    """Every conv layer's filters: those on 3 input channels as colour pictures, the others as one grey tile
    per (input, output) channel pair."""
    convs = [(name, layer) for name, layer in layers(model) if isinstance(layer, nn.Conv2d)]
    figure = plots.new_figure(figsize=(8, 3 * max(len(convs), 1)), layout="constrained")
    for row, (name, conv) in enumerate(convs):
        axes = figure.add_subplot(len(convs), 1, row + 1)
        weight = conv.backend.to_numpy(conv.weight.data).astype(np.float64)[:2 * MAX_CHANNELS, :MAX_CHANNELS]
        if weight.shape[1] == 3:
            picture = _montage(_scaled(weight.transpose(0, 2, 3, 1)), columns=min(len(weight), MAX_CHANNELS), fill=1.0)
            note = "each filter as an RGB picture"
        else:
            out_channels, in_channels = weight.shape[:2]
            tiles = _scaled(weight).transpose(1, 0, 2, 3).reshape(-1, *weight.shape[2:])
            picture = _montage(tiles, columns=out_channels)
            note = f"a column per output channel ({out_channels} shown), a row per input channel ({in_channels})"
        axes.imshow(picture, cmap="gray", interpolation="nearest")
        axes.set_title(f"{name}: {conv!r}\n{note}", fontsize=8)
        axes.axis("off")
    return figure


def feature_maps_figure(stages, title):
    """One row per stage: the input image in colour, then each stage's channels (the first ``MAX_CHANNELS``)."""
    figure = plots.new_figure(figsize=(10, 1.2 * len(stages) + 0.6), layout="constrained")
    figure.suptitle(f"Feature maps of {title}", fontsize=10)
    for row, (name, maps) in enumerate(stages):
        axes = figure.add_subplot(len(stages), 1, row + 1)
        if row == 0:
            axes.imshow(np.clip(maps.transpose(1, 2, 0) / 2 + 0.5, 0, 1), interpolation="nearest")
        else:
            shown = maps[:MAX_CHANNELS].astype(np.float64)
            axes.imshow(_montage(np.stack([_scaled(plane) for plane in shown]), columns=len(shown)), cmap="viridis",
                        interpolation="nearest")
        channels, height, width = maps.shape
        axes.set_title(f"{name} ({channels} x {height} x {width})", fontsize=8, loc="left")
        axes.axis("off")
    return figure


def histograms_figure(model):
    """Each parameter's values and its gradient, side by side, a row per parameter."""
    named = list(model.named_parameters())
    figure = plots.new_figure(figsize=(8, 1.4 * len(named) + 0.6), layout="constrained")
    figure.suptitle(f"Parameters and their gradients on {GRADIENT_IMAGES} test images", fontsize=10)
    for row, (name, param) in enumerate(named):
        for column, (what, values) in enumerate((("values", param.data), ("gradient", param.grad))):
            axes = figure.add_subplot(len(named), 2, 2 * row + column + 1)
            values = param.backend.to_numpy(values).ravel()
            axes.hist(values[np.isfinite(values)], bins=50, color="tab:blue" if column == 0 else "tab:orange")
            axes.set_title(f"{name} {what} (std {np.std(values):.2g})", fontsize=8, loc="left")
            axes.tick_params(labelsize=7)
    return figure


def main(argv=None):
    parser = cli.Parser(prog="python -m scratchnet.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", metavar="RUN_DIR", type=cli.folder_name,
                        help="a tutorial run folder (its weights are inspected, the PNGs written there)")
    parser.add_argument("--image", type=cli.non_negative_int, default=0,
                        help="the test image whose feature maps are drawn (default 0, the tutorial's cat)")
    parser.add_argument("--backend", choices=backends.names(), default="numpy", help="engine backend (default numpy)")
    parser.add_argument("--data", metavar="DIR", help=f"folder holding cifar-10-batches-py (default: the one the run "
                                                      f"recorded, else ${cli.DATA_ENV} or ./data)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.run):
        parser.error(f"{args.run} is not a run folder: give the folder a training run wrote")
    with cli.one_line_errors(parser.prog, DataError, backends.BackendError, checkpoint.CheckpointError):
        weights = weights_of(args.run)
        net = net_from_weights(weights).to(args.backend)
        root = args.data or recorded_data_root(weights) or os.environ.get(cli.DATA_ENV, "data")
        testset = CIFAR10(root, train=False, limit=max(args.image + 1, GRADIENT_IMAGES))
        if args.image >= len(testset):
            parser.error(f"--image {args.image}: the test set holds images 0..{len(testset) - 1}")
        for path in save_inspection(net, args.run, testset, args.image):
            print(path)


if __name__ == "__main__":
    sys.exit(main())
