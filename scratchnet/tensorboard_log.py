"""A run's TensorBoard log: ``python -m scratchnet.train --tensorboard [DIR]``, or ``fit(..., on_log=...)``.

``TensorBoardLog`` writes TensorBoard event files through TensorBoard's own event-file
writer (the optional ``tensorboard`` extra; neither torch nor TensorFlow is imported):
scalars, histograms, PNG images and precision-recall curves, in the formats TensorBoard's
scalar, histogram, image and PR-curve dashboards read. ``log_training`` is a ``fit``
callback (running loss, learning rate, weight and gradient histograms at each log point);
``log_test`` records a finished test (accuracy, per-class accuracy and precision-recall
curves, and the sample grid with predictions).
"""

import io
import time

import numpy as np

from scratchnet import plots
from scratchnet.data import normalize

PR_THRESHOLDS = 127  # thresholds per precision-recall curve (TensorBoard's default)


class TensorBoardMissing(ImportError):
    """The tensorboard package is not installed; the message says how to install it."""


class TensorBoardLog:
    """Event files in ``logdir``: ``scalar``, ``histogram``, ``figure``, ``pr_curve``; ``close()`` when done."""

    def __init__(self, logdir):
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.plugins.histogram import metadata as histogram_metadata
            from tensorboard.plugins.pr_curve import metadata as pr_curve_metadata
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
            from tensorboard.util import tensor_util
        except ImportError:
            raise TensorBoardMissing("--tensorboard needs the tensorboard package: pip install tensorboard "
                                     "(or the scratchnet[tensorboard] extra)") from None
        self.logdir = logdir
        self._event, self._summary, self._tensor = event_pb2.Event, summary_pb2.Summary, tensor_util.make_tensor_proto
        self._histogram_metadata = histogram_metadata.create_summary_metadata
        self._pr_curve_metadata = pr_curve_metadata.create_summary_metadata
        self._writer = EventFileWriter(logdir)

    def _add(self, step, **value):
        summary = self._summary(value=[self._summary.Value(**value)])
        self._writer.add_event(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def scalar(self, tag, value, step):
        self._add(step, tag=tag, simple_value=float(value))

    def histogram(self, tag, values, step, buckets=30):
        """Values (any shape) as ``buckets`` equal-width buckets; NaN and Inf are left out."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
        counts, edges = np.histogram(values, bins=buckets, range=(low, high) if high > low else (low - 0.5, low + 0.5))
        table = np.stack([edges[:-1], edges[1:], counts]).T  # TensorBoard's [left edge, right edge, count] rows
        self._add(step, tag=tag, metadata=self._histogram_metadata(tag, ""), tensor=self._tensor(table))

    def figure(self, tag, figure, step):
        """A matplotlib Figure, as a PNG image."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        width, height = (int(size) for size in figure.get_size_inches() * 100)
        self._add(step, tag=tag, image=self._summary.Image(height=height, width=width, colorspace=4,
                                                           encoded_image_string=buffer.getvalue()))

    def pr_curve(self, tag, is_positive, probability, step):
        """The precision-recall curve of scoring the examples ``probability`` (0..1) for being ``is_positive``."""
        thresholds = np.linspace(0, 1, PR_THRESHOLDS)
        # Counted at each threshold t: the examples scored >= t (t = 0 takes all, t = 1 the certain ones).
        taken = probability[None, :] >= thresholds[:, None]
        true_positive = (taken & is_positive).sum(axis=1)
        false_positive = (taken & ~is_positive).sum(axis=1)
        true_negative = (~taken & ~is_positive).sum(axis=1)
        false_negative = (~taken & is_positive).sum(axis=1)
        precision = true_positive / np.maximum(true_positive + false_positive, 1)
        recall = true_positive / np.maximum(true_positive + false_negative, 1)
        table = np.stack([true_positive, false_positive, true_negative, false_negative, precision, recall])
        self._add(step, tag=tag, metadata=self._pr_curve_metadata(tag, "", PR_THRESHOLDS),
                  tensor=self._tensor(table.astype(np.float32)))

    def log_training(self, model, optimizer):
        """A ``fit`` ``on_log`` callback: at each log point, the running loss, the learning rate, and a
        histogram of every parameter and of its gradient (the last step's), at the run's global step."""

        def on_log(state):
            point = state.loss_curve[-1]
            step = point["global_step"]
            self.scalar("train/loss", point["loss"], step)
            for index, group in enumerate(optimizer.param_groups):  # one curve per group, as schedules set them
                self.scalar("train/learning_rate" if index == 0 else f"train/learning_rate/group{index}", group["lr"],
                            step)
            for name, param in model.named_parameters():
                self.histogram(f"weights/{name}", param.backend.to_numpy(param.data), step)
                self.histogram(f"gradients/{name}", param.backend.to_numpy(param.grad), step)
            self._writer.flush()

        return on_log

    def log_test(self, step, summary, probabilities, testset, predictions):
        """A finished test at global step ``step``: overall and per-class accuracy (``summary``, as
        ``report.accuracy_summary`` gives it), each class's precision-recall curve from the test images'
        class ``probabilities`` (N, classes), and the sample grid of the first test images with predictions."""
        self.scalar("test/accuracy", summary["accuracy"], step)
        for index, name in enumerate(testset.classes):
            if summary["per_class_accuracy"][name] is not None:
                self.scalar(f"test_per_class/{name}", summary["per_class_accuracy"][name], step)
            self.pr_curve(f"pr_curve/{name}", testset.targets == index, probabilities[:, index], step)
        shown = normalize(testset.pixels[:plots.GRID_IMAGES])
        self.figure("test/predictions", plots.sample_grid(shown, testset.targets, predictions, testset.classes), step)
        self._writer.flush()

    def close(self):
        self._writer.close()
