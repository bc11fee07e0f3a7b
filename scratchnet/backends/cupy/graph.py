"""A training step captured once as a CUDA graph and replayed: the cupy backend's cure for launch overhead.

At the tutorial's batch of 4 the GPU runs each of a step's ~40 kernels faster than
Python and CuPy can launch the next, so an eager step costs its host-side overhead
(about 1.7 ms on an H200), not its arithmetic. ``CapturedStep`` records one step
(zero_grad, forward, loss, backward, SGD update) into a CUDA graph and then runs each
later step as a single graph launch, after copying the batch into the static input
arrays the graph reads. The kernels, their order and their data are those of an eager
step, so the results are bit-identical.

What replaying relies on:

* Fixed shapes and addresses. The graph repeats the captured launches with the captured
  arguments, so it serves only batches laid out like the captured one (others, such as
  an epoch's last partial batch, run eagerly), and the model's parameter, gradient and
  momentum arrays must stay the same arrays: the step updates them in place; moving the
  model (``.to``) or resetting the optimizer after capture would leave the graph stale.
* Private memory. Every array allocated during capture comes from a ``MemoryPool`` owned
  by the ``CapturedStep`` and used for nothing else, so the addresses baked into the
  graph are never handed to other arrays (PyTorch's graphs keep a private pool for the
  same reason). The capture runs in CuPy's default relaxed mode, in which that pool may
  still call cudaMalloc; on one stream the graph is a chain, so memory freed and reused
  within the capture is ordered as it was when captured.
* No host synchronization inside. The step runs with ``check_label_values=False`` (the
  label range check reads the labels on the host). Each replayed batch has its labels
  checked before they are copied in, which waits for the GPU, unless the caller names the
  ``label_pool`` every batch's labels come from (``fit`` passes its DataLoader's labels):
  then the pool is checked once, at capture, and the host can queue steps ahead of the GPU.
* Our own kernels. CuPy refuses cuBLAS calls during capture, so only steps whose dense
  products and convolutions are small enough for the backend's direct kernels (the
  tutorial's batch 4, for one) are captured; larger ones fall back to eager steps.
* A steady-state step. The first full batch runs eagerly: it compiles and loads every
  kernel the step uses, so the capture only records launches, and it creates SGD's
  momentum buffers (torch's first step copies the gradient into them instead of
  decaying them), so the step captured next is the one every later step repeats.
"""

from scratchnet.backends.cupy.device import cp as cupy
from scratchnet.geometry import check_class_indices


class CapturedStep:
    """``step(images, labels)`` replayed from a CUDA graph for batches of ``batch_size``; others run eagerly.

    ``step(images, labels, check_label_values=True)`` takes cupy arrays (``labels`` class
    indices), returns (logits, loss) and, with ``check_label_values=False``, must neither
    synchronize with the host nor branch on GPU values (``scratchnet.step``'s steps qualify).
    A call returns the same pair. After a replay they are the graph's static outputs,
    which the next replay overwrites: copy what is to be kept (on the current stream, as
    ``fit`` does, the copy is ordered before that replay). ``label_pool``, when given, holds
    every label the batches will carry; it is checked once instead of each batch.
    """

    def __init__(self, step, batch_size, label_pool=None):
        self._step, self._batch_size, self._label_pool = step, batch_size, label_pool
        self._stream = cupy.cuda.Stream(non_blocking=True)  # capture needs a stream other than the legacy one
        self._warmed_up = False
        # An update whose scalars change every step (Adam's bias corrections) would replay the captured ones.
        self._capturable = getattr(getattr(step, "optimizer", None), "replayable", True)
        self._model = getattr(step, "model", None)
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
        return self._model is None or all(getattr(module, "replayable", True) for module in self._model.modules())

    def _on_device(self, images, labels):
        return isinstance(images, cupy.ndarray) and isinstance(labels, cupy.ndarray)

    def _fits_capture(self, images, labels):
        """Whether the batch is laid out as the captured one; anything else runs eagerly, through the step's checks."""
        return self._on_device(images, labels) and (
            (images.shape, images.dtype, labels.shape, labels.dtype)
            == (self._images.shape, self._images.dtype, self._labels.shape, self._labels.dtype))

    def _capture(self, images, labels):
        self._images = cupy.empty(images.shape, dtype=images.dtype)
        self._labels = cupy.empty(labels.shape, dtype=labels.dtype)
        self._pool = cupy.cuda.MemoryPool()  # lives as long as the graph that uses its memory
        with self._stream, cupy.cuda.using_allocator(self._pool.malloc):
            self._stream.begin_capture()
            try:
                outputs = self._step(self._images, self._labels, check_label_values=False)
            except NotImplementedError:
                # CuPy refuses cuBLAS calls during capture (before issuing them), and the backend uses
                # cuBLAS for large problems: nothing has run, so this and every later step run eagerly.
                self._capturable = False
                return
            finally:
                graph = self._stream.end_capture()  # leave capture mode even when the step failed
        self._logits, self._loss = outputs
        self._graph = graph
        if self._label_pool is not None:
            check_class_indices(self._label_pool, self._logits.shape[1], "CapturedStep label_pool")

    def _replay(self, images, labels):
        if self._label_pool is None:
            check_class_indices(labels, self._logits.shape[1], "CapturedStep")
        # On the current stream, as the graph launch: ordered after the batch was made and after
        # the previous replay's outputs were read.
        cupy.copyto(self._images, images)
        cupy.copyto(self._labels, labels)
        self._graph.launch()
        return self._logits, self._loss
