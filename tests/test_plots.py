"""The run folder's plots say what the printout and metrics.json say, readably."""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from scratchnet import plots, report
from scratchnet.data import CLASSES


def metrics_of(train_images=400, batch_size=4, steps_per_epoch=100, correct=529, total=1000):
    """A run's record: two epochs whose loss falls within each, and a per-class accuracy reaching 100 %."""
    confusion = np.zeros((10, 10), dtype=np.int64)
    confusion[np.arange(10), np.arange(10)] = [100, 100, 52, 53, 40, 40, 40, 40, 32, 32]
    confusion[2, 0], confusion[3, 0] = 48, 47
    confusion[4:, 1] = [60, 60, 60, 60, 68, 68]
    summary = report.summary_of_confusion(confusion, CLASSES)
    summary["per_class_accuracy"]["cat"] = 52.9  # the printout shows 52 % for it
    summary["correct"], summary["total"], summary["accuracy"] = correct, total, 100 * correct / total
    loss_curve = [{"epoch": epoch, "step": step, "global_step": (epoch - 1) * steps_per_epoch + step,
                   "loss": 2.3 - 0.001 * ((epoch - 1) * steps_per_epoch + step)}
                  for epoch in (1, 2) for step in range(25, steps_per_epoch + 1, 25)]
    return report.run_metrics(framework="scratchnet", backend="numpy", seed=0,
                              config={"batch_size": batch_size, "epochs": 2}, data_root=".",
                              train_images=train_images, steps_per_epoch=steps_per_epoch, summary=summary,
                              loss_curve=loss_curve, epoch_losses=[2.25, 2.15], wall_time_s={}, versions={})


def epoch_mean_line(figure):
    (line,) = [line for line in figure.axes[0].lines if line.get_label().startswith("epoch mean")]
    return line


def test_epoch_means_span_the_epoch_they_average():
    x, y = epoch_mean_line(plots.loss_curve(metrics_of())).get_data()
    np.testing.assert_array_equal(x, [0, 100, np.nan, 100, 200, np.nan])
    np.testing.assert_array_equal(y, [2.25, 2.25, np.nan, 2.15, 2.15, np.nan])


def test_a_data_parallel_runs_epoch_means_sit_at_its_global_steps():
    # 2 workers at batch 4 over 400 images: 50 steps of the global batch 8 per epoch, not 400 / 4.
    metrics = metrics_of(train_images=400, batch_size=4, steps_per_epoch=50)
    x, _ = epoch_mean_line(plots.loss_curve(metrics)).get_data()
    assert np.nanmax(x) == metrics["loss_curve"][-1]["global_step"] == 100


def test_per_class_bars_read_as_the_printout_and_the_legend_covers_none():
    metrics = metrics_of()
    figure = plots.per_class_accuracy(metrics)
    axes = figure.axes[0]
    printed = [int(value) for value in metrics["per_class_accuracy"].values()]
    labels = [text.get_text() for text in axes.texts]
    assert labels == [str(value) for value in printed] and labels[3] == "52"
    assert axes.get_legend().get_texts()[0].get_text() == "overall 52 %"
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    legend = axes.get_legend().get_window_extent(renderer)
    covered = [artist for artist in [*axes.patches, *axes.texts] if artist.get_window_extent(renderer).overlaps(legend)]
    assert not covered
