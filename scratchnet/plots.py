"""The run folder's PNG plots, drawn headless (matplotlib's object API: no pyplot, no display)."""

import os

import numpy as np

from scratchnet.files import atomic_open

GRID_IMAGES = 16  # test images in the labelled sample grid


def new_figure(**kwargs):
    """A new matplotlib Figure; matplotlib is imported on first use, as it takes longer than training starts in."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_all(run_dir, metrics, images, labels, predictions, classes):
    """Draw a run's plots into ``run_dir`` and return their paths.

    ``images`` are the first test images as the network saw them (normalized NCHW),
    ``labels`` and ``predictions`` their classes; ``metrics`` is the run's record.
    """
    return save_figures(run_dir, {
        "samples.png": sample_grid(images[:GRID_IMAGES], labels, predictions, classes),
        "loss_curve.png": loss_curve(metrics),
        "per_class_accuracy.png": per_class_accuracy(metrics),
        "confusion_matrix.png": confusion_matrix(metrics, classes),
    })


def save_training_plots(run_dir, metrics):
    """The plots of a run that stopped before its test (the loss so far); return their paths."""
    return save_figures(run_dir, {"loss_curve.png": loss_curve(metrics)})


def save_figures(run_dir, figures):
    """Write each {file name: Figure} into ``run_dir`` as a PNG, atomically; return the paths."""
    paths = []
    for name, figure in figures.items():
        path = os.path.join(run_dir, name)
        with atomic_open(path) as file:
            figure.savefig(file, format="png", dpi=100)
        paths.append(path)
    return paths


def sample_grid(images, labels, predictions, classes):
    """The tutorial's imshow: unnormalize (x / 2 + 0.5) and show each image with its true and predicted class.

    The images are tiled into one picture (one matplotlib image, not an axes each: a
    sixteenth of the drawing time), each captioned above its tile.
    """
    count = len(images)
    columns = min(count, 8)
    rows = -(-count // columns)
    size, gap, caption = images.shape[-1], 2, 14  # pixels: a tile, the white between tiles, a caption's band
    cell_w, cell_h = size + gap, size + caption
    montage = np.ones((rows * cell_h, columns * cell_w, 3))
    pictures = np.clip(np.transpose(images, (0, 2, 3, 1)) / 2 + 0.5, 0, 1)
    for index in range(count):
        top, left = (index // columns) * cell_h + caption, (index % columns) * cell_w
        montage[top:top + size, left:left + size] = pictures[index]
    figure = new_figure(figsize=(1.6 * columns, 2.2 * rows))
    axes = figure.add_axes((0.01, 0.01, 0.98, 0.90))
    axes.imshow(montage, interpolation="nearest")
    for index in range(count):
        truth, guess = classes[labels[index]], classes[predictions[index]]
        top, left = (index // columns) * cell_h, (index % columns) * cell_w
        axes.text(left + size / 2, top + caption - 1, f"{truth}\n→ {guess}", fontsize=8, ha="center", va="bottom",
                  color="black" if truth == guess else "red")
    axes.axis("off")
    figure.suptitle("Test images: true class → predicted", fontsize=9)
    return figure


def loss_curve(metrics):
    """Training loss: the logged window means over mini-batches, and each epoch's mean.

    An epoch's mean is drawn across the epoch it averages (not as a point at its end,
    where the loss has fallen below it and the mean would read as an outlier).
    """
    figure = new_figure(figsize=(6, 4))
    axes = figure.add_subplot()
    steps_per_epoch = metrics["data"]["steps_per_epoch"]  # of the global batch, in a data-parallel run
    points = metrics["loss_curve"]
    if points:
        axes.plot([p["global_step"] for p in points], [p["loss"] for p in points], marker=".", label="window mean")
    spans_x, spans_y = [], []
    for epoch, loss in enumerate(metrics["epoch_losses"]):
        spans_x += [epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch, np.nan]
        spans_y += [loss, loss, np.nan]
    axes.plot(spans_x, spans_y, color="tab:orange", linewidth=2, label="epoch mean (over the epoch)")
    axes.set_xlabel("mini-batch")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title(f"Training loss ({metrics['framework']}, {metrics['backend']})")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")  # the loss falls from the left: the upper right stays clear
    figure.tight_layout()
    return figure


def per_class_accuracy(metrics):
    figure = new_figure(figsize=(6, 4))
    axes = figure.add_subplot()
    names = list(metrics["per_class_accuracy"])
    values = [v if v is not None else 0.0 for v in metrics["per_class_accuracy"].values()]
    bars = axes.bar(names, values, color="tab:blue")
    # Whole percents cut down, as the printout's "Accuracy of cat : 52 %" (52.9 %) shows them.
    axes.bar_label(bars, labels=[str(int(value)) for value in values], fontsize=8)
    overall = 100 * metrics["correct"] // metrics["total"]
    axes.axhline(metrics["accuracy"], color="tab:red", linestyle="--", label=f"overall {overall} %")
    axes.set_ylim(0, 100)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"Per-class accuracy ({metrics['total']} test images)", loc="left")
    # Above the axes, beside the title: inside them it would cover bars of any height.
    axes.legend(loc="lower right", bbox_to_anchor=(1, 1), frameon=False, borderaxespad=0.2)
    figure.tight_layout()
    return figure


def confusion_matrix(metrics, classes):
    matrix = np.asarray(metrics["confusion_matrix"])
    figure = new_figure(figsize=(6, 5.5))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=45)
    axes.set_yticks(ticks, classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                  color="white" if count > threshold else "black")
    axes.set_title("Confusion matrix")
    figure.tight_layout()
    return figure
